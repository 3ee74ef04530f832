#!/usr/bin/env python3
"""Async job throughput: N jobs (distinct LibriSpeech utterances, so no cache hit) submitted at
once to replicas sharing a fresh redis-server, timed from the first submission to the last
success, with 1 replica and then 2 (each replica with --threads split so both runs use the same
cores). Prints both times and the ratio; loopback only.

usage: jobs_bench.py [--binary target/release/whisperd] [--model models/whisper-tiny.en] [--jobs 24]
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import cpu_name, free_port, start_server  # noqa: E402

SHARED = os.environ.get("WHISPERD_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


def multipart(path):
    boundary = "jobsbench7MA4YWxkTrZu0gW"
    with open(path, "rb") as f:
        data = f.read()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def submit(port, path):
    body, ct = multipart(path)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/jobs", data=body, headers={"Content-Type": ct})
    return json.load(urllib.request.urlopen(req))["id"]


def status(port, job):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/jobs/{job}"))["status"]


def run(binary, model, files, replicas, threads, tmp):
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
                              "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    env = dict(os.environ, WHISPERD_REDIS_URL=f"redis://127.0.0.1:{rport}/0", WHISPERD_THREADS=str(threads),
               WHISPERD_VAD="false", RUST_LOG="warn")
    servers = []
    try:
        for i in range(replicas):
            log = open(os.path.join(tmp, f"replica{replicas}-{i}.log"), "w")
            servers.append(start_server(binary, model, env, log))
        ports = [p for _, p in servers]
        t0 = time.time()
        jobs = [submit(ports[i % len(ports)], f) for i, f in enumerate(files)]
        pending = set(jobs)
        while pending:
            time.sleep(0.2)
            for j in list(pending):
                s = status(ports[0], j)
                if s == "succeeded":
                    pending.discard(j)
                elif s in ("failed", "cancelled"):
                    sys.exit(f"job {j} {s}")
        return time.time() - t0
    finally:
        for p, _ in servers:
            p.kill()
        redis.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/whisperd")
    ap.add_argument("--model", default="models/whisper-tiny.en")
    ap.add_argument("--jobs", type=int, default=24)
    a = ap.parse_args()
    manifest = [json.loads(l) for l in open(os.path.join(SHARED, "eval", "manifest.jsonl"))]
    files = [os.path.join(SHARED, "eval", e["path"]) for e in manifest if e["path"].startswith("librispeech/")][: a.jobs]
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        one = run(a.binary, a.model, files, 1, cores, tmp)
        two = run(a.binary, a.model, files, 2, max(1, cores // 2), tmp)
    print(f"{cpu_name()}, {cores} cores, {len(files)} jobs: 1 replica {one:.1f} s "
          f"({len(files) / one:.2f} jobs/s), 2 replicas {two:.1f} s ({len(files) / two:.2f} jobs/s), "
          f"ratio {one / two:.2f}x")


if __name__ == "__main__":
    main()
