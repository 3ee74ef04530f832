#!/usr/bin/env python3
"""The performance matrix: model × precision × kernel tier, each against faster-whisper int8 in
the same run.

usage: bench_matrix.py [--bin target/release/whisperd] [--models models/whisper-tiny.en,models/whisper-base]
                       [--precisions f32,q8] [--tiers best,avx2] [--shared ../shared] [--threads 2]
                       [--repeats 1] [--out benches/matrix.md]

For each model, runs ../shared/scripts/peer_baseline.py (faster-whisper 1.2.1 int8, beam 1,
timestamps on, the same threads, `--lang en`) and, in turn with it (peer, whisperd, peer, whisperd … when
--repeats > 1), `whisperd transcribe --language en --beam-size 1` over the English eval files (jfk, LibriSpeech, the long-form
chapter) for each precision and tier. `avx2` sets WHISPERD_MAX_TIER=avx2, so whisperd's own kernels
run as on an AVX2-only CPU (candle's f32 GEMM still picks its own instruction set); a tier the CPU
does not exceed is the same run as `best` and is not repeated. Reports per row:

- speed: audio seconds / transcribe seconds (whisperd: wall minus model load, from its log;
  the peer: its own per-file timing, load and warm-up excluded), and the ratio to the peer;
- whole process: wall of each process from outside (the peer's includes one warm-up file);
- WER (../shared/scripts/score.py), peak RSS (wait4), model load seconds.
The best (fastest) of --repeats is kept. Prints a markdown table with the CPU it ran on, and
writes it to --out when given (between `<!-- matrix:start -->` and `<!-- matrix:end -->`
when the file has them). Long: run from `make bench-matrix`, never from tests.
"""
import argparse, json, os, subprocess, sys, tempfile, time

from benchlib import cpu_name, fetched_models, write_between_markers


def rss_of(cmd, env=None):
    """Run `cmd`, returning (stdout, stderr, wall, peak RSS MB) with the child's own rusage."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as o, tempfile.TemporaryFile("w+") as e:
        p = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        o.seek(0); e.seek(0)
        out, err = o.read(), e.read()
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return out, err, wall, usage.ru_maxrss / 1024


def score(shared, hyps):
    out = subprocess.run([sys.executable, os.path.join(shared, "scripts/score.py"),
                          os.path.join(shared, "eval/manifest.jsonl"), hyps, "--json", "--category",
                          "jfk,librispeech,longform"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["wer"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/whisperd")
    ap.add_argument("--models", default="models/whisper-tiny.en,models/whisper-base")
    ap.add_argument("--precisions", default="f32,q8")
    ap.add_argument("--tiers", default="best,avx2")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()

    manifest = os.path.join(a.shared, "eval/manifest.jsonl")
    rows = [json.loads(l) for l in open(manifest)]
    rows = [r for r in rows if r["lang"] == "en" and r["category"] in ("jfk", "librispeech", "longform")]
    files = [os.path.join(a.shared, "eval", r["path"]) for r in rows]
    audio = sum(r["duration_s"] for r in rows)
    tmp = tempfile.mkdtemp(prefix="whisperd-matrix-")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    has_more_than_avx2 = "avx512f" in flags or "amx_tile" in flags

    def peer(model, k):
        out_path = os.path.join(tmp, f"peer-{os.path.basename(model)}-{k}.jsonl")
        out, _, whole, _ = rss_of([sys.executable, os.path.join(a.shared, "scripts/peer_baseline.py"), manifest,
                                   model, out_path, "--compute-type", "int8", "--threads", str(a.threads),
                                   "--category", "jfk,librispeech,longform"])
        s = json.loads(out.strip().splitlines()[-1])
        return {"speed": audio / s["wall_s"], "whole": whole, "wer": score(a.shared, out_path),
                "rss": s["peak_rss_mb"], "load": None}

    def ours(model, precision, tier, k):
        env = dict(os.environ, RUST_LOG="info")
        if tier != "best":
            env["WHISPERD_MAX_TIER"] = tier
        out_dir = os.path.join(tmp, f"ours-{os.path.basename(model)}-{precision}-{tier}-{k}")
        _, err, whole, rss = rss_of([a.bin, "transcribe", "--model", model, "--threads", str(a.threads),
                                     "--precision", precision, "--language", "en",
                                     "--beam-size", "1",  # greedy, as the peer runs
                                     "--format", "json", "--output-dir", out_dir,
                                     *files], env=env)
        load = next((float(l.split("load_seconds=")[1].split()[0]) for l in err.splitlines() if "load_seconds=" in l), 0.0)
        hyps = os.path.join(out_dir, "hyps.jsonl")
        with open(hyps, "w") as f:
            for r, path in zip(rows, files):
                t = json.load(open(os.path.join(out_dir, os.path.basename(path) + ".json")))
                f.write(json.dumps({"id": r["id"], "text": t["text"]}) + "\n")
        return {"speed": audio / max(whole - load, 1e-9), "whole": whole, "wer": score(a.shared, hyps),
                "rss": rss, "load": load}

    def best(runs):
        return max(runs, key=lambda r: r["speed"])

    lines = [f"CPU: {cpu_name()}; {a.threads} threads; {len(rows)} English files, {audio:.0f} s of audio; "
             f"best of {a.repeats}; {time.strftime('%Y-%m-%d')}", "",
             "| model | system | tier | speed (× real time) | vs peer | whole process (s) | vs peer | WER | peak RSS (MB) | load (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, name in fetched_models(a.models):
        configs = [(p, t) for p in a.precisions.split(",") for t in a.tiers.split(",")
                   if t == "best" or has_more_than_avx2]
        # warm the page cache for both systems once
        subprocess.run([a.bin, "transcribe", "--model", model, "--threads", str(a.threads), files[0]],
                       capture_output=True)
        peer_runs, our_runs = [], {c: [] for c in configs}
        for k in range(a.repeats):
            peer_runs.append(peer(model, k))
            for c in configs:
                our_runs[c].append(ours(model, c[0], c[1], k))
                print(f"  {name} {c}: {our_runs[c][-1]['speed']:.1f}x (peer {peer_runs[-1]['speed']:.1f}x)", file=sys.stderr)
        p = best(peer_runs)
        lines.append(f"| {name} | faster-whisper int8 | – | {p['speed']:.1f} | 1 | {p['whole']:.1f} | 1 | "
                     f"{p['wer']:.2f} % | {p['rss']:.0f} | – |")
        for (precision, tier), runs in our_runs.items():
            o = best(runs)
            tier_name = tier if tier != "best" else "best"
            lines.append(f"| {name} | whisperd {precision} | {tier_name} | {o['speed']:.1f} | {o['speed'] / p['speed']:.2f}× | "
                         f"{o['whole']:.1f} | {p['whole'] / o['whole']:.2f}× | {o['wer']:.2f} % | {o['rss']:.0f} | {o['load']:.2f} |")
    if not has_more_than_avx2 and "avx2" in a.tiers.split(","):
        lines.append("")
        lines.append("(This CPU's best tier is AVX2: the `avx2` rows would repeat the `best` ones.)")
    text = "\n".join(lines)
    print(text)
    if a.out:
        write_between_markers(a.out, "matrix", text)


if __name__ == "__main__":
    main()
