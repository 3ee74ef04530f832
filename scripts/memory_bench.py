#!/usr/bin/env python3
"""Peak memory against audio length: whisperd's memory should not grow with the recording.

usage: memory_bench.py --bin target/release/whisperd --model models/whisper-tiny.en
                       [--shared ../shared] [--minutes 10,40] [--precision f32]
                       [--server-clients 8] [--server-minutes 60] [--server-seconds 120]

1. Builds Opus files (32 kb/s, as a phone or a meeting recorder writes them) of each length in
   --minutes by repeating the eval set's 200-s chapter, and runs `whisperd transcribe` on each;
   reports each run's wall time and peak RSS (from wait4, per process).
2. Starts `whisperd serve` on a free loopback port and sends --server-clients concurrent uploads of
   a --server-minutes Opus file (each slightly different, so neither the cache nor single flight
   merges them); samples the server's peak RSS (VmHWM) for --server-seconds, which covers every
   upload's decoding and the start of their transcription, then disconnects (which cancels the
   work). 0 clients skips this part.
Prints a markdown table. Long measurements: run from `make bench`, never from tests.
"""
import argparse, os, subprocess, sys, tempfile, threading, time, http.client

from benchlib import start_server


def make_opus(chapter, minutes, dst):
    """`minutes` of the chapter on repeat, as 32 kb/s Opus."""
    if os.path.exists(dst):
        return dst
    chapter_s = 200.0
    loops = int(minutes * 60 / chapter_s) + 1
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", str(loops), "-i", chapter,
                    "-t", str(minutes * 60), "-ac", "1", "-c:a", "libopus", "-b:a", "32k", dst],
                   check=True)
    return dst


def tagged(src, tag, dst):
    """`src` with a different comment tag: the same audio in different bytes (no cache, no
    single flight between them)."""
    if not os.path.exists(dst):
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", src, "-c", "copy",
                        "-metadata", f"comment=whisperd memory bench {tag}", dst], check=True)
    return dst


def run_cli(a, path):
    t0 = time.perf_counter()
    p = subprocess.Popen([a.bin, "transcribe", "--model", a.model, "--precision", a.precision,
                          "--threads", str(a.threads), "--format", "text", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    if status != 0:
        sys.exit(f"whisperd failed on {path}:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # KiB → MiB


def vm_hwm_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def upload(port, data, results, i):
    boundary = f"whisperdmem{i}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.opus\"\r\n"
            f"Content-Type: audio/ogg\r\n\r\n").encode() + data + \
        (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\ntext"
         f"\r\n--{boundary}--\r\n").encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    results[i] = c
    try:
        c.request("POST", "/transcribe", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = c.getresponse()
        results[i] = r.status
    except OSError:
        pass  # closed by us at the end of the sampling window


def run_server(a, tmp):
    base = make_opus(a.chapter, a.server_minutes, os.path.join(tmp, f"{a.server_minutes:g}min.opus"))
    files = [tagged(base, i, os.path.join(tmp, f"server{i}.opus")) for i in range(a.server_clients)]
    env = dict(os.environ, WHISPERD_CACHE_ENTRIES="0", WHISPERD_THREADS=str(a.threads),
               WHISPERD_PRECISION=a.precision, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
    log = open(os.path.join(tmp, "server.log"), "w")
    server, port = start_server(a.bin, a.model, env, log)
    try:
        idle = vm_hwm_mb(server.pid)
        results = [None] * len(files)
        threads = [threading.Thread(target=upload, args=(port, open(f, "rb").read(), results, i), daemon=True)
                   for i, f in enumerate(files)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < a.server_seconds and any(t.is_alive() for t in threads):
            time.sleep(0.5)
        peak = vm_hwm_mb(server.pid)
        for c in results:
            if isinstance(c, http.client.HTTPConnection):
                c.close()
        answered = [r for r in results if isinstance(r, int)]
        bad = [r for r in answered if r != 200]
        if bad:
            sys.exit(f"server answered {bad}; log in {log.name}")
        return idle, peak, len(answered)
    finally:
        server.kill()  # the measurement is done; a graceful drain would finish the hours of audio
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/whisperd")
    ap.add_argument("--model", default="models/whisper-tiny.en")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--precision", default="f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minutes", default="10,40")
    ap.add_argument("--server-clients", type=int, default=8)
    ap.add_argument("--server-minutes", type=float, default=60)
    ap.add_argument("--server-seconds", type=float, default=120)
    a = ap.parse_args()
    a.chapter = os.path.join(a.shared, "eval", "longform", "librispeech-test-clean-237-134500-full-chapter.wav")
    tmp = os.environ.get("WHISPERD_MEMORY_BENCH_DIR") or tempfile.mkdtemp(prefix="whisperd-mem-")
    os.makedirs(tmp, exist_ok=True)
    model = os.path.basename(a.model.rstrip("/"))
    print(f"| audio | whisperd {model} {a.precision}: wall | peak RSS |")
    print("|---|---|---|")
    for m in [float(x) for x in a.minutes.split(",") if x.strip()]:
        path = make_opus(a.chapter, m, os.path.join(tmp, f"{m:g}min.opus"))
        wall, rss = run_cli(a, path)
        print(f"| {m:g} min (Opus), `transcribe` | {wall:.1f} s | {rss:.0f} MB |", flush=True)
    if a.server_clients > 0:
        idle, peak, done = run_server(a, tmp)
        print(f"| {a.server_clients} concurrent {a.server_minutes:g}-min uploads to `serve` "
              f"(first {a.server_seconds:g} s, {done} finished) | idle {idle:.0f} MB | {peak:.0f} MB |")


if __name__ == "__main__":
    main()
