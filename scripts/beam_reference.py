#!/usr/bin/env python3
"""Reference data for whisperd's beam search test: faster-whisper (CTranslate2, float32, CPU) on
the same weights, every English clip of ../shared/eval shorter than 30 s (categories jfk and
librispeech; longform and formats skipped), decoded twice in one window:

  greedy  beam_size=1
  beam5   beam_size=5, patience=1, length_penalty=1

both with temperature=[0.0] only (no fallback), language="en", task transcribe, timestamps on
(without_timestamps=False), word_timestamps=False, vad_filter=False,
condition_on_previous_text=True (moot for a single window); every other option at
faster-whisper 1.2.1's default.

usage (from the repository root):
  .venv/bin/python scripts/beam_reference.py [--model models/whisper-tiny.en] [--shared ../shared]
                                             [--out tests/data/beam5_faster_whisper.jsonl]
                                             [--ids jfk,237-134500-0000,...] [--threads 2]

Writes one JSON line per clip:
  {"id", "path", "duration_s", "reference",
   "greedy": {"text", "tokens", "avg_logprob", "segments"},
   "beam5":  {"text", "tokens", "avg_logprob", "segments"}}
where "text" is the segments' text concatenated with "" and stripped, "tokens" is the list of each
segment's token ids (segment.tokens, timestamp tokens included as faster-whisper returns them),
"avg_logprob" the list of each segment's avg_logprob, and "segments" each segment's
{start, end, text, tokens, avg_logprob}. Prints the clips where beam5 and greedy texts differ.
"""
import argparse, json, os, sys, time


def english_clips(shared, ids=None):
    rows = [json.loads(l) for l in open(os.path.join(shared, "eval/manifest.jsonl")) if l.strip()]
    out = [r for r in rows
           if r.get("lang") == "en" and r.get("category") in ("jfk", "librispeech")
           and float(r.get("duration_s", 0)) < 30.0]
    if ids is not None:
        out = [r for r in out if r["id"] in ids]
    return out


def decode(model, audio, beam_size):
    kw = dict(language="en", task="transcribe", beam_size=beam_size, temperature=[0.0],
              condition_on_previous_text=True, without_timestamps=False,
              word_timestamps=False, vad_filter=False)
    if beam_size > 1:
        kw.update(patience=1, length_penalty=1)
    segments, _info = model.transcribe(audio, **kw)
    segs = [dict(start=round(s.start, 3), end=round(s.end, 3), text=s.text,
                 tokens=list(s.tokens), avg_logprob=s.avg_logprob) for s in segments]
    return dict(text="".join(s["text"] for s in segs).strip(),
                tokens=[s["tokens"] for s in segs],
                avg_logprob=[s["avg_logprob"] for s in segs],
                segments=segs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/whisper-tiny.en")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="tests/data/beam5_faster_whisper.jsonl")
    ap.add_argument("--ids", default=None, help="comma-separated clip ids to keep (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    ids = set(i.strip() for i in a.ids.split(",") if i.strip()) if a.ids else None
    clips = english_clips(a.shared, ids)
    if ids is not None:
        missing = ids - {c["id"] for c in clips}
        if missing:
            sys.exit(f"unknown or non-eligible ids: {sorted(missing)}")
    model = WhisperModel(a.model, device="cpu", compute_type="float32", cpu_threads=a.threads)

    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    differ = []
    t0 = time.time()
    with open(a.out, "w") as f:
        for c in clips:
            audio = decode_audio(os.path.join(a.shared, "eval", c["path"]), sampling_rate=16000)
            g = decode(model, audio, 1)
            b = decode(model, audio, 5)
            row = dict(id=c["id"], path=c["path"], duration_s=c["duration_s"],
                       reference=c["text"], greedy=g, beam5=b)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            if g["text"] != b["text"]:
                differ.append(row)
            print(f"{c['id']}\t{'DIFF' if g['text'] != b['text'] else 'same'}\t{b['text']}",
                  file=sys.stderr)
    print(f"{len(clips)} clips -> {a.out} ({time.time() - t0:.1f}s); "
          f"{len(differ)} where beam5 != greedy")
    for r in differ:
        print(f"- {r['id']} ({r['duration_s']} s)\n  greedy: {r['greedy']['text']}\n"
              f"  beam5:  {r['beam5']['text']}")


if __name__ == "__main__":
    main()
