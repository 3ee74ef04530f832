#!/usr/bin/env python3
"""Diarization on ../shared/eval/diarization (`make eval`): DER of the transcript's own segments
(`whisperd transcribe --diarize --format verbose_json`, then with the true speaker count) scored by
../shared/scripts/der.py (0.25-s collar), and the cost: wall time of the same transcriptions
with and without --diarize, pair by pair (A B A B), on this machine.

  scripts/diarize_eval.py --bin target/release/whisperd --model models/whisper-tiny.en --shared ../shared
  scripts/diarize_eval.py --calibrate   # thresholds on calib/ only (cargo bench --bench diarize)
"""
import argparse, json, os, subprocess, sys, tempfile, time


def run(cmd, out=None):
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr.decode(errors='replace')}")
    if out:
        open(out, "wb").write(r.stdout)
    return time.monotonic() - t0


def der(shared, manifest, hyp):
    r = subprocess.run([sys.executable, os.path.join(shared, "scripts/der.py"), manifest, hyp, "--json"],
                       stdout=subprocess.PIPE, check=True)
    return json.loads(r.stdout)


def report(title, d):
    print(f"\n{title}: overall DER {d['der']:.2f} %, speaker count right in {d['speaker_count_correct']}/{d['files']}")
    for f in d["per_file"]:
        print(f"  {f['id']}: DER {f['der']:.2f} % (miss {f['miss']:.2f}, fa {f['false_alarm']:.2f}, "
              f"confusion {f['confusion']:.2f}); speakers {f['hyp_speakers']}/{f['ref_speakers']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/whisperd")
    ap.add_argument("--model", default="models/whisper-tiny.en")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--pairs", type=int, default=1, help="timing pairs per file for the cost figure")
    a = ap.parse_args()
    set_dir = os.path.join(a.shared, "eval/diarization")
    if a.calibrate:
        manifest = os.path.join(set_dir, "calib/manifest.jsonl")
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(["cargo", "bench", "--locked", "--bench", "diarize", "--", manifest, out,
                            "0.30,0.35,0.40,0.45,0.50"], check=True)
            for t in sorted(os.listdir(out)):
                report(f"calib, {t}", der(a.shared, manifest, os.path.join(out, t)))
        return
    manifest = os.path.join(set_dir, "manifest.jsonl")
    rows = [json.loads(l) for l in open(manifest)]
    with tempfile.TemporaryDirectory() as auto, tempfile.TemporaryDirectory() as oracle:
        with_s = without_s = 0.0
        for r in rows:
            audio = os.path.join(set_dir, r["path"])
            base = [a.bin, "transcribe", "--model", a.model, "--format", "verbose_json"]
            for _ in range(a.pairs):
                with_s += run(base + ["--diarize", audio], os.path.join(auto, r["id"] + ".json"))
                without_s += run(base + [audio])
            run(base + ["--num-speakers", str(r["speakers"]), audio], os.path.join(oracle, r["id"] + ".json"))
        report("automatic speaker count", der(a.shared, manifest, auto))
        report("speaker count given (--num-speakers)", der(a.shared, manifest, oracle))
        print(f"\ncost: transcription {without_s:.1f} s, with --diarize {with_s:.1f} s: "
              f"+{100 * (with_s / without_s - 1):.1f} % ({a.pairs} pair(s) per file, whole processes)")


if __name__ == "__main__":
    main()
