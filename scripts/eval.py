#!/usr/bin/env python3
"""Accuracy and speed of whisperd next to faster-whisper (int8, same weights), in one run.

usage: eval.py --bin target/release/whisperd --model models/whisper-tiny.en --shared ../shared [--speed]
               [--keywords "Frank,Marie,…"] [--skip-peer] [--beam N]

Transcribes every English file of ../shared/eval/manifest.jsonl with `whisperd transcribe` (one
process, model loaded once, timestamps on as OpenAI's transcribe()), scores it with
../shared/scripts/score.py, then does the same with ../shared/scripts/peer_baseline.py.
With --speed, also times the 10-minute file for peak RSS. Prints a table.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time, wave


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def score(shared, hyps, category):
    out = run([sys.executable, os.path.join(shared, "scripts/score.py"), os.path.join(shared, "eval/manifest.jsonl"), hyps, "--json", "--category", category])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True); ap.add_argument("--model", required=True)
    ap.add_argument("--shared", default="../shared"); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", action="store_true", help="also measure peak RSS on a 10-minute file")
    ap.add_argument("--category", default="jfk,librispeech,longform")
    ap.add_argument("--precision", default="f32", help="whisperd --precision (f32 or q8)")
    ap.add_argument("--keywords", help="whisperd --keywords (comma-separated; the peer runs without)")
    ap.add_argument("--skip-peer", action="store_true", help="whisperd only")
    ap.add_argument("--beam", type=int, default=1, help="beam size for both (whisperd --beam-size, peer --beam); 1 = greedy")
    a = ap.parse_args()
    extra = ["--keywords", a.keywords] if a.keywords else []
    extra += ["--beam-size", str(a.beam)]
    manifest = os.path.join(a.shared, "eval/manifest.jsonl")
    rows = [json.loads(l) for l in open(manifest)]
    rows = [r for r in rows if r["lang"] == "en" and r["category"] in a.category.split(",")]
    audio = sum(r["duration_s"] for r in rows)
    tmp = tempfile.mkdtemp(prefix="whisperd-eval-")
    out_dir = os.path.join(tmp, "out")
    files = [os.path.join(a.shared, "eval", r["path"]) for r in rows]
    # Warm-up (page cache, allocator), then the timed run; model load is reported separately by the log.
    run([a.bin, "transcribe", "--model", a.model, "--threads", str(a.threads), files[0]])
    t0 = time.perf_counter()
    p = subprocess.run([a.bin, "transcribe", "--model", a.model, "--threads", str(a.threads), "--precision", a.precision, "--format", "json", *extra, "--output-dir", out_dir, *files],
                       text=True, capture_output=True, env={**os.environ, "RUST_LOG": "info"})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(p.stderr)
    load = next((float(l.split("load_seconds=")[1].split()[0]) for l in p.stderr.splitlines() if "load_seconds=" in l), 0.0)
    hyps = os.path.join(tmp, "whisperd.jsonl")
    with open(hyps, "w") as f:
        for r, path in zip(rows, files):
            t = json.load(open(os.path.join(out_dir, os.path.basename(path) + ".json")))
            f.write(json.dumps({"id": r["id"], "text": t["text"]}) + "\n")
    ours = score(a.shared, hyps, a.category)
    ours_speed = audio / max(wall - load, 1e-9)

    peer_out = os.path.join(tmp, "peer.jsonl")
    peer = None
    try:
        if a.skip_peer:
            raise FileNotFoundError("--skip-peer")
        pr = run([sys.executable, os.path.join(a.shared, "scripts/peer_baseline.py"), manifest, a.model, peer_out,
                  "--compute-type", "int8", "--threads", str(a.threads), "--category", a.category, "--beam", str(a.beam)])
        summary = json.loads(pr.stdout.strip().splitlines()[-1])
        peer = (score(a.shared, peer_out, a.category), summary)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        print(f"peer (faster-whisper) not run: {getattr(e, 'stderr', e)}", file=sys.stderr)

    print(f"\n{len(rows)} English files, {audio:.0f} s of audio, {a.threads} threads, categories {a.category}, beam {a.beam}")
    print(f"| system | WER | by category | speed (x real time) |")
    print(f"|---|---|---|---|")
    print(f"| whisperd {a.precision} | {ours['wer']:.2f}% | {ours['by_category']} | {ours_speed:.1f}x |")
    if peer:
        ps = peer[1].get("speed_x") or audio / max(peer[1].get("wall_s", 1e9), 1e-9)
        print(f"| faster-whisper int8 | {peer[0]['wer']:.2f}% | {peer[0]['by_category']} | {float(ps):.1f}x |")
        print(f"\nWER difference whisperd − peer: {ours['wer'] - peer[0]['wer']:+.2f} points; speed ratio whisperd/peer: {ours_speed / float(ps):.2f}")
        print(f"peer summary: {json.dumps(peer[1])}")

    if a.speed:
        # Batch (decoding overlapped with inference) vs. transcribe over the same files.
        t0 = time.perf_counter()
        run([a.bin, "batch", "--model", a.model, "--threads", str(a.threads), "--precision", a.precision, "--format", "json", "--beam-size", str(a.beam), "--output-dir", os.path.join(tmp, "batch"), *files])
        batch_wall = time.perf_counter() - t0
        print(f"\nwhisperd batch over the same files: {batch_wall:.1f} s wall incl. model load ({audio / batch_wall:.1f}x real time); "
              f"transcribe: {wall:.1f} s ({audio / wall:.1f}x)")
        chapter = os.path.join(a.shared, "eval/longform/librispeech-test-clean-237-134500-full-chapter.wav")
        long_file = os.path.join(tmp, "ten-minutes.wav")
        # Three copies back to back, with the standard library (no sox needed on a fresh machine).
        with wave.open(chapter, "rb") as src:
            params, frames = src.getparams(), src.readframes(src.getnframes())
        with wave.open(long_file, "wb") as dst:
            dst.setparams(params)
            dst.writeframes(frames * 3)
        t0 = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-f", "%M", a.bin, "transcribe", "--model", a.model, "--threads", str(a.threads), "--precision", a.precision, "--beam-size", str(a.beam), long_file],
                           text=True, capture_output=True, env={**os.environ, "RUST_LOG": "warn"})
        secs = time.perf_counter() - t0
        rss_mb = int(r.stderr.strip().splitlines()[-1]) / 1024
        print(f"\n10-minute file (3 × long-form chapter, 598.5 s): {secs:.1f} s wall, peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
