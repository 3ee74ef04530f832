#!/usr/bin/env python3
"""Server throughput and latency under concurrency, next to faster-whisper int8, in one run.

usage: bench_server.py --bin target/release/whisperd --model models/whisper-tiny.en
                       [--shared ../shared] [--precision f32|q8] [--seconds 20] [--clients 1,4,8,16]

Starts `whisperd serve` on a free loopback port (result cache off, so every request runs the model)
and measures, with distinct uploads (each request's WAV gets a different number of trailing zero
samples, so neither the cache nor single flight can answer it):
  1. single-request latency of jfk (11 s), one request at a time;
  2. aggregate throughput (audio seconds per second) with 1, 4, 8 and 16 clients, each sending the
     eval set's short files (jfk + LibriSpeech) back to back for --seconds;
  3. latency of short requests sent while a 200-s file is being transcribed (fairness), as p99
     over the short requests and as a ratio to (1);
  4. the server's peak RSS, and at each level the server's CPU time per request and how many
     cores it kept busy (from /proc), which bound what more clients can give: at full load
     throughput is at most cores / (CPU per request);
then runs ../shared/scripts/peer_baseline.py (faster-whisper int8, same threads) over the same short
files for the peer's single-process throughput. Prints a markdown table.
"""
import argparse, io, json, os, subprocess, sys, tempfile, threading, time, wave, http.client

from benchlib import start_server


def to_wav16(src, dst):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", src, "-ac", "1", "-ar", "16000",
                    "-sample_fmt", "s16", dst], check=True)


class Audio:
    """A 16-kHz WAV whose bytes can be made unique by appending zero samples."""

    def __init__(self, path, duration):
        with wave.open(path, "rb") as w:
            self.frames = w.readframes(w.getnframes())
        self.duration = duration

    def variant(self, n):
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
            w.writeframes(self.frames + b"\0\0" * (1 + n % 4000))
        return buf.getvalue()


counter = iter(range(10**9))
counter_lock = threading.Lock()


def unique():
    with counter_lock:
        return next(counter)


def post(port, body_wav):
    boundary = "whisperdbench%d" % unique()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + body_wav + \
        (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\ntext"
         f"\r\n--{boundary}--\r\n").encode()
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        c.request("POST", "/transcribe", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = c.getresponse()
        r.read()
        return r.status, time.perf_counter() - t0
    except OSError as e:  # a lost request counts as an error, and the run goes on
        print(f"  request failed after {time.perf_counter() - t0:.0f} s: {e!r}", file=sys.stderr)
        return 0, time.perf_counter() - t0
    finally:
        c.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port, clips, clients, seconds):
    """`clients` threads post clips back to back for `seconds`; returns (audio_s/s, lat list, errors,
    audio seconds transcribed)."""
    stop = time.perf_counter() + seconds
    lat, audio, errors = [], [0.0], [0]
    lock = threading.Lock()

    def client(k):
        i = k * 7
        while time.perf_counter() < stop:
            clip = clips[i % len(clips)]; i += 1
            status, dt = post(port, clip.variant(unique()))
            with lock:
                if status == 200:
                    lat.append(dt); audio[0] += clip.duration
                else:
                    errors[0] += 1

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    [t.start() for t in ts]; [t.join() for t in ts]
    return audio[0] / (time.perf_counter() - t0), lat, errors[0], audio[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True); ap.add_argument("--model", required=True)
    ap.add_argument("--shared", default="../shared"); ap.add_argument("--precision", default="f32")
    ap.add_argument("--seconds", type=float, default=20); ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args()
    manifest = os.path.join(a.shared, "eval/manifest.jsonl")
    rows = [json.loads(l) for l in open(manifest)]
    short = [r for r in rows if r["lang"] == "en" and r["category"] in ("jfk", "librispeech")]
    long_row = next(r for r in rows if r["lang"] == "en" and r["category"] == "longform")
    tmp = tempfile.mkdtemp(prefix="whisperd-bench-")

    def wav(r):
        dst = os.path.join(tmp, r["id"] + ".wav")
        to_wav16(os.path.join(a.shared, "eval", r["path"]), dst)
        return Audio(dst, r["duration_s"])

    clips = [wav(r) for r in short]
    jfk = clips[0]
    long_clip = wav(long_row)

    env = dict(os.environ, WHISPERD_CACHE_ENTRIES="0", WHISPERD_QUEUE_SIZE="64", WHISPERD_BEAM_SIZE="1",
               WHISPERD_THREADS=str(a.threads), WHISPERD_PRECISION=a.precision, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
    log = open(os.path.join(tmp, "server.log"), "w")
    server, port = start_server(a.bin, a.model, env, log)
    try:
        post(port, jfk.variant(unique()))  # warm-up
        alone = [post(port, jfk.variant(unique()))[1] for _ in range(5)]
        jfk_alone = pct(alone, 50)

        results = []
        for n in [int(x) for x in a.clients.split(",")]:
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            rate, lat, errors, audio_s = load(port, clips, n, a.seconds)
            cpu = cpu_seconds(server.pid) - cpu0
            busy = cpu / (time.perf_counter() - t0)
            results.append((n, rate, pct(lat, 50), pct(lat, 99), len(lat), errors, busy,
                            cpu / max(len(lat), 1), audio_s / max(len(lat), 1)))
            print(f"  {n} clients: {rate:.1f} audio s/s, {busy:.2f} cores busy", file=sys.stderr)

        # Fairness: short requests while a long file is in progress.
        long_done = []
        lt = threading.Thread(target=lambda: long_done.append(post(port, long_clip.variant(unique()))))
        lt.start()
        time.sleep(1.0)
        under = []
        while lt.is_alive():
            under.append(post(port, jfk.variant(unique()))[1])
        lt.join()
        rss_mb = 0
        with open(f"/proc/{server.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    rss_mb = int(line.split()[1]) // 1024
    finally:
        server.terminate()
        server.wait(timeout=60)

    peer = None
    if not a.no_peer:
        out = subprocess.run([sys.executable, os.path.join(a.shared, "scripts/peer_baseline.py"), manifest,
                              a.model, os.path.join(tmp, "peer.jsonl"), "--compute-type", "int8",
                              "--threads", str(a.threads), "--category", "jfk,librispeech"],
                             check=True, text=True, capture_output=True)
        peer = json.loads(out.stdout.strip().splitlines()[-1])

    one = results[0][1]
    print(f"\nwhisperd serve --precision {a.precision}, {a.threads} compute threads, batch_size default; "
          f"{len(clips)} short files (jfk + LibriSpeech), {a.seconds:.0f} s per level\n")
    print(f"single request (jfk, 11 s): median {jfk_alone * 1000:.0f} ms "
          f"({jfk.duration / jfk_alone:.1f}x real time)\n")
    print("| clients | audio s / s | vs 1 client | vs faster-whisper int8 | p50 ms | p99 ms | requests | errors "
          "| server cores busy | server CPU ms / request |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, rate, p50, p99, count, errors, busy, cpu_per, _ in results:
        vs_peer = f"{rate / peer['speed_x']:.2f}x" if peer else "-"
        print(f"| {n} | {rate:.1f} | {rate / one:.2f}x | {vs_peer} | {p50 * 1000:.0f} | {p99 * 1000:.0f} | {count} "
              f"| {errors} | {busy:.2f} | {cpu_per * 1000:.0f} |")
    if peer:
        print(f"| faster-whisper int8 (one process, files in sequence) | {peer['speed_x']:.1f} | | 1.00x | | | "
              f"{peer['files']} | | | |")
    # At full load throughput cannot pass (cores) / (CPU per request). One client's requests
    # already keep `busy` cores working, so more clients can add at most cores / busy, times
    # what batching saves of each request's CPU. Uses the cheapest loaded level (optimistic).
    loaded = [r for r in results if r[0] > 1] or results
    n, _, _, _, _, _, _, cpu_per, mean_audio = min(loaded, key=lambda r: r[7])
    cores = os.cpu_count() or 1
    bound = cores / cpu_per * mean_audio if cpu_per > 0 else float("nan")
    print(f"\nceiling at full load, from the CPU per request at {n} clients: {cores} cores / "
          f"{cpu_per * 1000:.0f} ms per {mean_audio:.1f}-s request = {bound:.1f} audio s/s = "
          f"{bound / one:.2f}x the 1-client figure (one client kept {results[0][6]:.2f} cores busy)")
    if under:
        print(f"\nshort request (jfk) while a {long_clip.duration:.0f}-s file is transcribed: "
              f"{len(under)} requests, p50 {pct(under, 50) * 1000:.0f} ms, p99 {pct(under, 99) * 1000:.0f} ms "
              f"= {pct(under, 99) / jfk_alone:.2f}x its latency alone (long file: {long_done[0][1]:.1f} s)")
    print(f"server peak RSS: {rss_mb} MB")


if __name__ == "__main__":
    main()
