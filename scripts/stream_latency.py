#!/usr/bin/env python3
"""First-event latency of streamed transcription (server-sent events) on the 200-s chapter.

Starts `whisperd serve` (result cache off, so every request decodes), then for each of N rounds:
  - POST /transcribe stream=true: seconds to the first `segment` event and to the end;
  - POST /v1/audio/transcriptions stream=true: seconds to the first `transcript.text.delta`;
  - POST /transcribe without stream: seconds to the whole answer.
Prints one JSON line with the lists and their medians. Loopback only.

usage: stream_latency.py --bin target/release/whisperd --model models/whisper-tiny.en [--shared ../shared]
"""
import argparse, http.client, json, os, statistics, subprocess, sys, time, uuid

FILE = "eval/longform/librispeech-test-clean-237-134500-full-chapter.wav"


def start(binary, model, threads):
    env = {**os.environ, "RUST_LOG": "info", "WHISPERD_CACHE_ENTRIES": "0"}
    p = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", "0", "--model", model,
                          "--threads", str(threads)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         text=True, env=env)
    for line in p.stderr:
        if "whisperd listening on http://" in line:
            addr = line.split("http://", 1)[1].strip()
            break
    else:
        sys.exit("server did not start")
    host, port = addr.rsplit(":", 1)
    for _ in range(600):
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=2)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return p, host, int(port)
        except OSError:
            pass
        time.sleep(0.1)
    p.kill(); sys.exit("server not ready")


def post(host, port, path, audio, fields, needle=None):
    """(seconds to the first line containing `needle`, seconds to the end)."""
    b = uuid.uuid4().hex
    body = b"".join(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in fields.items())
    body += (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n").encode() + audio + f"\r\n--{b}--\r\n".encode()
    c = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={b}"})
    r = c.getresponse()
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {r.read()[:300]!r}")
    first = None
    while True:
        line = r.readline()
        if not line:
            break
        if first is None and needle and needle in line:
            first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True); ap.add_argument("--model", required=True)
    ap.add_argument("--shared", default="../shared"); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    audio = open(os.path.join(a.shared, FILE), "rb").read()
    p, host, port = start(a.bin, a.model, a.threads)
    out = {"file": FILE, "native_first": [], "native_total": [], "openai_first": [], "plain_total": []}
    try:
        for _ in range(a.rounds):
            f, t = post(host, port, "/transcribe", audio, {"stream": "true"}, b"event: segment")
            out["native_first"].append(round(f, 3)); out["native_total"].append(round(t, 3))
            f, _ = post(host, port, "/v1/audio/transcriptions", audio, {"model": "whisper-1", "stream": "true"},
                        b"transcript.text.delta")
            out["openai_first"].append(round(f, 3))
            _, t = post(host, port, "/transcribe", audio, {})
            out["plain_total"].append(round(t, 3))
    finally:
        p.kill()
    out["medians"] = {k: statistics.median(v) for k, v in out.items() if isinstance(v, list)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
