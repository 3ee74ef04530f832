#!/usr/bin/env python3
"""Translation check: every non-English clip of ../shared/eval translated to English by whisperd and
by faster-whisper (float32, same weights, greedy with its default temperature fallback, language
detected), in the same run.

usage: translate_eval.py --bin target/release/whisperd --model models/whisper-base --shared ../shared
                         [--threads 2] [--min-chrf 50] [--json OUT.json] [--no-peer REF.jsonl]

A clip passes when whisperd's English has no character outside Latin script, digits, spaces and
punctuation, and its chrF (character n-grams 1..6, beta 2, as sacrebleu's chrF) against
faster-whisper's translation of the same clip is at least --min-chrf, against the closer of two
faster-whisper references: its default (greedy + fallback, sampler seeded) and greedy only — where
faster-whisper's own greedy text fails its checks, its default output is one random sample among
many and no reference on its own. Prints a Markdown table
(the one in the README) and exits 1 if any clip fails. `--no-peer REF.jsonl` scores against
stored {"id", "text"} translations instead of running faster-whisper.
"""
import argparse, json, os, subprocess, sys, tempfile, unicodedata
from collections import Counter


def chrf(hyp: str, ref: str, order: int = 6, beta: float = 2.0) -> float:
    """sacrebleu's sentence chrF (sacrebleu.sentence_chrf: char order 6, word order 0, beta 2,
    whitespace removed, precision and recall averaged over the orders both sides have)."""
    hyp, ref = "".join(hyp.split()), "".join(ref.split())
    prec = rec = 0.0
    effective = 0
    for n in range(1, order + 1):
        h = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        if h and r:
            match = sum((h & r).values())
            prec += match / sum(h.values()); rec += match / sum(r.values())
            effective += 1
    if effective == 0:
        return 0.0
    prec, rec = prec / effective, rec / effective
    if prec + rec == 0:
        return 0.0
    b2 = beta * beta
    return 100.0 * (1 + b2) * prec * rec / (b2 * prec + rec)


def non_latin(text: str) -> str:
    """Characters outside Latin script, digits, spaces and punctuation (empty when clean)."""
    bad = []
    for ch in text:
        if ch.isascii() or ch.isspace():
            continue
        cat = unicodedata.category(ch)
        if cat.startswith("P") or cat.startswith("Z") or "LATIN" in unicodedata.name(ch, ""):
            continue
        bad.append(ch)
    return "".join(dict.fromkeys(bad))


def clips(shared):
    rows = [json.loads(l) for l in open(os.path.join(shared, "eval/manifest.jsonl"))]
    return [r for r in rows if r.get("lang") != "en"]


def whisperd(bin_, model, shared, rows, threads):
    out = tempfile.mkdtemp(prefix="whisperd-translate-")
    files = [os.path.join(shared, "eval", r["path"]) for r in rows]
    p = subprocess.run([bin_, "transcribe", "--model", model, "--task", "translate", "--threads", str(threads),
                        "--beam-size", "1", "--format", "json", "--output-dir", out, *files], text=True, capture_output=True)
    if p.returncode != 0:
        sys.exit(f"whisperd failed:\n{p.stderr}")
    return {r["id"]: json.load(open(os.path.join(out, os.path.basename(f) + ".json")))["text"].strip()
            for r, f in zip(rows, files)}


def faster_whisper(model, shared, rows, threads):
    """Two references per clip from faster-whisper float32: its default (greedy with temperature
    fallback, sampler seeded) and pure greedy (temperature 0 only). Where its greedy text fails the
    fallback checks, the default reference is one random sample among many, so a clip is scored
    against the closer of the two."""
    import ctranslate2
    from faster_whisper import WhisperModel
    ctranslate2.set_random_seed(0)  # its fallback samples: the same reference every run
    m = WhisperModel(model, device="cpu", compute_type="float32", cpu_threads=threads)
    out = {}
    for r in rows:
        path = os.path.join(shared, "eval", r["path"])
        segs, _ = m.transcribe(path, task="translate", beam_size=1)
        default = "".join(s.text for s in segs).strip()
        segs, _ = m.transcribe(path, task="translate", beam_size=1, temperature=0.0)
        out[r["id"]] = (default, "".join(s.text for s in segs).strip())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True); ap.add_argument("--model", required=True)
    ap.add_argument("--shared", default="../shared"); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-chrf", type=float, default=50.0)
    ap.add_argument("--json", help="write per-clip results here")
    ap.add_argument("--no-peer", metavar="REF.jsonl", help="score against stored translations")
    a = ap.parse_args()
    if not os.path.isdir(a.model):
        sys.exit(f"no model at {a.model}: run `python3 models/fetch.py base`")
    rows = clips(a.shared)
    ours = whisperd(a.bin, a.model, a.shared, rows, a.threads)
    if a.no_peer:
        peer = {j["id"]: (j["text"], j.get("greedy", j["text"])) for j in map(json.loads, open(a.no_peer))}
    else:
        peer = faster_whisper(a.model, a.shared, rows, a.threads)
    results, failed = [], 0
    print(f"\n{len(rows)} non-English clips translated to English with {os.path.basename(a.model.rstrip('/'))}; "
          f"chrF against faster-whisper float32 (the closer of: default fallback, greedy only), "
          f"pass: Latin-only and chrF >= {a.min_chrf:g}")
    print("| clip | lang | chrF | vs default | vs greedy | Latin | whisperd | faster-whisper (default) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o = ours[r["id"]]
        p, greedy = peer.get(r["id"], ("", ""))
        s_default, s_greedy = chrf(o, p), chrf(o, greedy)
        score, bad = max(s_default, s_greedy), non_latin(o)
        ok = not bad and score >= a.min_chrf
        failed += not ok
        results.append({"id": r["id"], "lang": r["lang"], "chrf": round(score, 1),
                        "chrf_default": round(s_default, 1), "chrf_greedy": round(s_greedy, 1), "non_latin": bad,
                        "whisperd": o, "faster_whisper": p, "faster_whisper_greedy": greedy, "pass": ok})
        print(f"| {r['id']} | {r['lang']} | {score:.1f}{'' if ok else ' ✗'} | {s_default:.1f} | {s_greedy:.1f} | "
              f"{'yes' if not bad else 'no: ' + bad} | {o} | {p} |")
    mean = sum(x["chrf"] for x in results) / max(len(results), 1)
    print(f"\nmean chrF {mean:.1f}; {len(rows) - failed}/{len(rows)} clips pass")
    if a.json:
        json.dump(results, open(a.json, "w"), ensure_ascii=False, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
