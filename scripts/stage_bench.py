#!/usr/bin/env python3
"""Where the time goes, stage by stage: whisperd (f32 and q8) beside CTranslate2 int8 (what
faster-whisper runs), same model, same threads, same machine, one run.

usage: stage_bench.py [--models models/whisper-tiny.en,models/whisper-base] [--threads 2]
                      [--runs 7] [--out benches/RESULTS.md]

whisperd's side is `cargo bench --bench stages` (benches/stages.rs, JSON lines). CTranslate2's side
is measured here through faster-whisper's objects:
- model load: `WhisperModel(...)` (CTranslate2 model, tokenizer, feature extractor);
- log-mel of 30 s: faster-whisper's FeatureExtractor (NumPy);
- encoder: `Whisper.encode` on one window and on a batch of eight;
- one decoder step at position P, alone and for eight sequences: CTranslate2 has no step API, so
  `generate` runs from the same P-token prompt to two lengths (end-of-text suppressed) and the
  difference in time is divided by the difference in tokens (the prompt's cost cancels);
  the output projection and the logit rules are inside that step.
Prints a markdown table (milliseconds, median of --runs) and writes it to --out between
`<!-- stages:start -->` and `<!-- stages:end -->` when given. Long: `make bench`, never tests.
"""
import argparse, json, os, statistics, subprocess, sys, time

from benchlib import cpu_name, fetched_models, write_between_markers


def median_ms(f, runs):
    f()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = f()
        t.append((time.perf_counter() - t0) * 1e3)
        # Freed outside the timing (a loaded model's teardown is not its load), as on whisperd's side.
        del r
    return statistics.median(t)


def ct2_stages(model_dir, threads, runs):
    import numpy as np
    import ctranslate2
    from faster_whisper import WhisperModel
    out = {}
    out["model_load"] = median_ms(lambda: WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads), min(runs, 3))
    m = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(480_000) * 0.05).astype(np.float32)
    out["mel_30s"] = median_ms(lambda: m.feature_extractor(audio), runs)
    feats = m.feature_extractor(audio)[:, :3000]
    n_mels = feats.shape[0]
    one = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None]))
    eight = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(feats[None], 8, axis=0)))
    out["encoder_window"] = median_ms(lambda: m.model.encode(one, to_cpu=True), runs)
    out["encoder_batch_8"] = median_ms(lambda: m.model.encode(eight, to_cpu=True), min(runs, 3))
    enc1 = m.model.encode(one, to_cpu=True)
    enc8 = m.model.encode(eight, to_cpu=True)
    tok = m.hf_tokenizer
    sot = tok.token_to_id("<|startoftranscript|>")
    eot = tok.token_to_id("<|endoftext|>")
    no_ts = tok.token_to_id("<|notimestamps|>")
    # No prompt stage: CTranslate2's generate() took the same time for a prompt of 1, 50 or 200
    # tokens (36-48 ms, noise), so its prompt pass cannot be isolated from outside.
    for position in (1, 100, 200):
        prompt = ([sot, no_ts] + [440] * max(position - 2, 0))[:max(position, 1)]
        for n, enc in ((1, enc1), (8, enc8)):
            def gen(k):
                # CTranslate2 4.x generates max_length // 2 tokens here (measured); ask for k.
                return lambda: m.model.generate(enc, [prompt] * n, beam_size=1, max_length=2 * k,
                                                suppress_tokens=[-1, eot], suppress_blank=False)
            short, long = median_ms(gen(1), runs), median_ms(gen(11), runs)
            name = f"decoder_step_at_{position}" if n == 1 else f"decoder_step_batch_{n}_at_{position}"
            out[name] = (long - short) / 10
    return out


def ours(model_dir, runs):
    env = dict(os.environ, WHISPERD_BENCH_MODEL=model_dir, WHISPERD_STAGE_RUNS=str(runs))
    p = subprocess.run(["cargo", "bench", "--locked", "--bench", "stages"], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(p.stderr[-3000:])
    rows = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    return {(r["precision"], r["stage"]): r["ms"] for r in rows}


STAGES = ["model_load", "mel_30s", "encoder_window", "encoder_batch_8", "decoder_prompt_50", "decoder_prompt_200",
          "decoder_step_at_1", "decoder_step_at_100", "decoder_step_at_200",
          "decoder_step_batch_8_at_1", "decoder_step_batch_8_at_100", "decoder_step_batch_8_at_200",
          "output_projection", "logit_rules"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models/whisper-tiny.en,models/whisper-base")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out")
    a = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(a.threads))
    lines = [f"{a.threads} threads, median of {a.runs}, milliseconds; {time.strftime('%Y-%m-%d')}; CPU: {cpu_name()}", "",
             "| model | stage | CTranslate2 int8 | whisperd f32 | ratio | whisperd q8 | ratio |",
             "|---|---|---|---|---|---|---|"]
    for model, name in fetched_models(a.models):
        ct2 = ct2_stages(model, a.threads, a.runs)
        we = ours(os.path.abspath(model), a.runs)
        fmt = lambda v: "–" if v is None else (f"{v:.1f}" if v >= 1 else f"{v:.3f}")
        ratio = lambda c, w: "–" if c is None or w is None or w <= 0 else f"{c / w:.2f}×"
        for s in STAGES:
            c, f, q = ct2.get(s), we.get(("f32", s)), we.get(("q8", s))
            if s == "mel_30s":
                q = None
            missing = "not isolated" if s.startswith("decoder_prompt") else "inside the step"
            lines.append(f"| {name} | {s} | {fmt(c) if c is not None else missing} | {fmt(f)} | {ratio(c, f)} | {fmt(q)} | {ratio(c, q)} |")
    lines += ["", "ratio = CTranslate2's time / whisperd's (above 1: whisperd is faster)."]
    text = "\n".join(lines)
    print(text)
    if a.out:
        write_between_markers(a.out, "stages", text)


if __name__ == "__main__":
    main()
