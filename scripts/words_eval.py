#!/usr/bin/env python3
"""Word-level timestamps of whisperd, measured: against faster-whisper, against spliced audio, and their cost.

usage: words_eval.py [--whisperd target/release/whisperd] [--model models/whisper-tiny.en] [--shared ../shared]
                     [--sets jfk,librispeech,longform] [--threads 2] [--skip-peer] [--skip-whisperd]
                     [--splices 6] [--gaps 1.0,1.5,2.0] [--trim-db -35] [--core-db -20] [--noise-dbfs X]
                     [--tolerance 0.2]
                     [--keep-clip OUT.wav] [--cost-runs 2] [--json OUT.json]
Run with the project's venv (`make venv`): .venv/bin/python scripts/words_eval.py …
(faster-whisper 1.2.1; audio is read with its decode_audio, so no extra packages are needed).

1. Agreement with faster-whisper 1.2.1 (int8, beam 1, greedy, word_timestamps=True, vad_filter=False,
   language en, same model directory, same threads) on the English eval files of the manifest:
   the two word sequences (lower-cased, punctuation stripped) are aligned with difflib and only
   `equal` blocks are compared. Prints count, median, p90, p95, max of |Δstart| and |Δend| in ms,
   the signed median (whisperd − faster-whisper) and the mean |Δprobability|, overall and per set,
   plus sanity counts for each system's words (zero/negative duration, a file's first word at 0.0,
   probability outside [0, 1], words outside their segment or the audio, overlapping words).
2. Splice check, an independent reference: N LibriSpeech eval utterances, each trimmed of its own
   leading/trailing silence (20-ms frame RMS relative to the loudest frame: from the first/last frame
   above --core-db, extended over contiguous frames above --trim-db, so a breath before the first
   word is not taken for its onset), joined with digital silence (gaps cycle through --gaps; lead-in
   and tail as long as the first gap). Every boundary's true onset/offset is known; for each system, the first word after the
   boundary must start, and the last word before it must end, within --tolerance s of the truth.
   With digital silence, any word-edge snapping to detected pauses finds the splices exactly, so
   that check then tests the snapping, not the alignment; --noise-dbfs -45 (white noise over the
   clip, ~30 dB under the speech) hides the pauses from such a detector and tests the alignment.
   --keep-clip writes the WAV and OUT.json (true times, texts) for reuse by a Rust test.
3. Cost: wall time of `whisperd transcribe` over the same eval files without and with
   --word-timestamps, alternately, --cost-runs times each (model load subtracted, from the log).

Exit status 1 when whisperd fails the splice check, 2 on a usage or run error.
"""
import argparse, atexit, difflib, json, os, re, resource, shutil, subprocess, sys, tempfile, time, wave

import numpy as np

SR = 16000


def die(msg):
    print(f"words_eval: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- words, normalisation, alignment

def norm_word(w):
    w = w.lower().replace("\u2019", "'")
    w = re.sub(r"[^\w']+", "", w)
    return w.strip("'")


def clean_words(raw):
    """[{word, start, end, probability}] → same with `norm`, dropping words that are only punctuation."""
    out = []
    for w in raw:
        n = norm_word(w["word"])
        if n:
            out.append({**w, "norm": n})
    return out


def match(ours, peer):
    """Pairs (i, j) of words in `equal` blocks of the normalised sequences."""
    sm = difflib.SequenceMatcher(a=[w["norm"] for w in ours], b=[w["norm"] for w in peer], autojunk=False)
    pairs = []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            pairs.extend(zip(range(i1, i2), range(j1, j2)))
    return pairs


def dist(values_s):
    a = np.abs(np.asarray(values_s, dtype=float)) * 1000.0
    if a.size == 0:
        return {"n": 0, "median": None, "p90": None, "p95": None, "max": None}
    return {"n": int(a.size), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def summarize(pairs_rows):
    """pairs_rows: list of (ours_word, peer_word)."""
    ds = [o["start"] - p["start"] for o, p in pairs_rows]
    de = [o["end"] - p["end"] for o, p in pairs_rows]
    dp = [abs(o["probability"] - p["probability"]) for o, p in pairs_rows
          if o.get("probability") is not None and p.get("probability") is not None]
    return {"start": dist(ds), "end": dist(de),
            "signed_median_ms": {"start": float(np.median(ds) * 1000) if ds else None,
                                 "end": float(np.median(de) * 1000) if de else None},
            "mean_abs_dprob": float(np.mean(dp)) if dp else None,
            "within_100ms": {"start": float(np.mean(np.abs(ds) <= 0.1)) if ds else None,
                             "end": float(np.mean(np.abs(de) <= 0.1)) if de else None}}


def sanity(files_words, durations):
    """Counts of implausible word timings for one system. files_words: {id: (words_with_seg, text_mismatch)}."""
    c = dict(words=0, zero_or_negative_duration=0, first_word_at_0=0, files=0, prob_out_of_range=0,
             prob_missing=0, outside_segment=0, beyond_audio=0, overlaps_previous=0, longer_than_3s=0,
             segment_text_mismatch=0)
    for fid, (words, mism) in files_words.items():
        c["files"] += 1
        c["segment_text_mismatch"] += mism
        if words and words[0]["start"] <= 0.0:
            c["first_word_at_0"] += 1
        prev_end = None
        for w in words:
            c["words"] += 1
            if w["end"] <= w["start"]:
                c["zero_or_negative_duration"] += 1
            if w["end"] - w["start"] > 3.0:
                c["longer_than_3s"] += 1
            p = w.get("probability")
            if p is None:
                c["prob_missing"] += 1
            elif not (0.0 <= p <= 1.0) or p != p:
                c["prob_out_of_range"] += 1
            ss, se = w.get("seg_start"), w.get("seg_end")
            if ss is not None and (w["start"] < ss - 1e-3 or w["end"] > se + 1e-3):
                c["outside_segment"] += 1
            if w["end"] > durations[fid] + 0.05:
                c["beyond_audio"] += 1
            if prev_end is not None and w["start"] < prev_end - 1e-3:
                c["overlaps_previous"] += 1
            prev_end = w["end"]
    return c


# ---------------------------------------------------------------- the two systems

def words_from_verbose(doc):
    """Words of a whisperd verbose_json document, with their segment's bounds; and how many segments'
    text differs from the concatenation of their words (normalised)."""
    words, mism = [], 0
    segs = doc.get("segments") or []
    for s in segs:
        sw = s.get("words")
        if sw is None:
            continue
        for w in sw:
            words.append({"word": w["word"], "start": float(w["start"]), "end": float(w["end"]),
                          "probability": None if w.get("probability") is None else float(w["probability"]),
                          "seg_start": float(s["start"]), "seg_end": float(s["end"])})
        if " ".join(norm_word(x) for x in "".join(w["word"] for w in sw).split()) != \
           " ".join(norm_word(x) for x in s.get("text", "").split()):
            mism += 1
    if not words and doc.get("words"):  # OpenAI-style top-level words only
        words = [{"word": w["word"], "start": float(w["start"]), "end": float(w["end"]),
                  "probability": w.get("probability")} for w in doc["words"]]
    return words, mism


def find_output(out_dir, path):
    base = os.path.basename(path)
    for ext in ("verbose.json", "verbose_json", "json"):
        f = os.path.join(out_dir, f"{base}.{ext}")
        if os.path.exists(f):
            return f
    cands = [f for f in os.listdir(out_dir) if f.startswith(base + ".") and f.endswith("json")]
    if len(cands) == 1:
        return os.path.join(out_dir, cands[0])
    die(f"no verbose_json output for {path} in {out_dir} (have: {sorted(os.listdir(out_dir))[:5]} …)")


def whisperd_run(a, files, out_dir, words_on):
    """One `whisperd transcribe` process over all files; returns (wall s, model load s, CPU s incl. load)."""
    cmd = [a.whisperd, "transcribe", "--model", a.model, "--threads", str(a.threads), "--language", "en",
           "--vad", "false", "--beam-size", "1", "--format", "verbose_json"]
    if words_on:
        cmd.append("--word-timestamps")
    single = len(files) == 1  # one file prints to stdout
    if not single:
        cmd += ["--output-dir", out_dir]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd + files, text=True, capture_output=True, env={**os.environ, "RUST_LOG": "info"})
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if single and p.returncode == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, os.path.basename(files[0]) + ".verbose.json"), "w") as f:
            f.write(p.stdout)
    if p.returncode != 0:
        die(f"whisperd failed ({p.returncode}): {' '.join(cmd)} …\n{p.stderr[-3000:]}")
    load = next((float(l.split("load_seconds=")[1].split()[0]) for l in p.stderr.splitlines() if "load_seconds=" in l), 0.0)
    return wall, load, cpu


def whisperd_words(out_dir, path):
    return words_from_verbose(json.load(open(find_output(out_dir, path))))


class Peer:
    def __init__(self, model, threads):
        from faster_whisper import WhisperModel
        self.m = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads)

    def words(self, path, word_timestamps=True):
        segs, _ = self.m.transcribe(path, beam_size=1, word_timestamps=word_timestamps, vad_filter=False, language="en")
        words, mism = [], 0
        for s in segs:
            if not word_timestamps:
                continue
            for w in s.words or []:
                words.append({"word": w.word, "start": float(w.start), "end": float(w.end),
                              "probability": float(w.probability), "seg_start": float(s.start), "seg_end": float(s.end)})
            if " ".join(norm_word(x) for x in "".join(w.word for w in (s.words or [])).split()) != \
               " ".join(norm_word(x) for x in s.text.split()):
                mism += 1
        return words, mism


# ---------------------------------------------------------------- audio and the splice clip

def read_audio(path):
    from faster_whisper import decode_audio
    return decode_audio(path, sampling_rate=SR).astype(np.float32)


def write_wav(path, x):
    pcm = (np.clip(x, -1.0, 1.0 - 1.0 / 32768) * 32768.0).round().astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(SR)
        w.writeframes(pcm.tobytes())


def trim(x, rel_db, core_db=-20.0, frame_ms=20):
    """Indices [a, b) of the utterance in x, by 20-ms frame RMS relative to the loudest frame, with
    hysteresis: from the first (last) frame louder than core_db, extend outwards over the contiguous
    frames louder than rel_db. A breath or click before the first word, separated from it by a quieter
    frame, stays out (a single threshold puts the onset there). Also returns the noise floor
    (10th-percentile frame RMS) relative to the peak, in dB."""
    n = int(SR * frame_ms / 1000)
    frames = len(x) // n
    rms = np.sqrt(np.mean(x[: frames * n].reshape(frames, n).astype(np.float64) ** 2, axis=1) + 1e-20)
    db = 20 * np.log10(rms / rms.max())
    core = np.nonzero(db >= core_db)[0]
    first, last = int(core[0]), int(core[-1])
    while first > 0 and db[first - 1] >= rel_db:
        first -= 1
    while last < frames - 1 and db[last + 1] >= rel_db:
        last += 1
    floor_db = float(np.percentile(db, 10))
    return first * n, min((last + 1) * n, len(x)), floor_db


def build_splice(rows, shared, n, gaps, rel_db, core_db, noise_dbfs=None, min_s=2.0, max_s=12.0):
    """Concatenate n trimmed LibriSpeech utterances with digital silence. Returns (audio, meta)."""
    chosen = [r for r in rows if r["category"] == "librispeech" and min_s <= r["duration_s"] <= max_s][:n]
    if len(chosen) < n:
        die(f"only {len(chosen)} LibriSpeech utterances of {min_s}–{max_s} s in the manifest, need {n}")
    parts, utts, t = [], [], 0.0
    lead = np.zeros(int(round(gaps[0] * SR)), np.float32)
    parts.append(lead); t = len(lead) / SR
    for i, r in enumerate(chosen):
        x = read_audio(os.path.join(shared, "eval", r["path"]))
        a, b, floor_db = trim(x, rel_db, core_db)
        seg = x[a:b]
        utts.append({"id": r["id"], "text": r["text"], "onset": round(t, 4), "offset": round(t + len(seg) / SR, 4),
                     "trimmed_head_s": round(a / SR, 3), "trimmed_tail_s": round((len(x) - b) / SR, 3),
                     "noise_floor_db": round(floor_db, 1)})
        parts.append(seg); t += len(seg) / SR
        g = gaps[i % len(gaps)] if i < n - 1 else gaps[0]  # gap after this one (the last: the tail)
        parts.append(np.zeros(int(round(g * SR)), np.float32)); t += round(g * SR) / SR
    audio = np.concatenate(parts)
    if noise_dbfs is not None:  # steady white noise over the whole clip, gaps and speech alike
        rms = 10 ** (noise_dbfs / 20)
        audio = audio + np.random.default_rng(0).normal(0.0, rms, len(audio)).astype(np.float32)
    return audio, {"sample_rate": SR, "duration_s": round(len(audio) / SR, 4), "trim_db": rel_db,
                   "core_db": core_db, "noise_dbfs": noise_dbfs, "gaps_s": gaps, "utterances": utts}


def splice_check(words, meta, tol):
    """For each boundary k (0..n): onset of utterance k (first word whose midpoint is past the middle of
    the silence before it) and offset of utterance k-1 (last word before that middle)."""
    utts = meta["utterances"]
    mids = [0.0] + [(utts[k - 1]["offset"] + utts[k]["onset"]) / 2 for k in range(1, len(utts))] + [meta["duration_s"] + 1]
    rows, ok = [], True
    for k, u in enumerate(utts):
        mine = [w for w in words if mids[k] <= (w["start"] + w["end"]) / 2 < mids[k + 1]]
        first = mine[0]["start"] if mine else None
        last = mine[-1]["end"] if mine else None
        don = None if first is None else first - u["onset"]
        doff = None if last is None else last - u["offset"]
        good = don is not None and abs(don) <= tol + 1e-6 and abs(doff) <= tol + 1e-6  # times are in 10 ms
        ok &= good
        rows.append({"utt": k, "id": u["id"], "onset": u["onset"], "first_start": first, "d_onset": don,
                     "offset": u["offset"], "last_end": last, "d_offset": doff, "n_words": len(mine),
                     "first_word": mine[0]["word"].strip() if mine else None,
                     "last_word": mine[-1]["word"].strip() if mine else None, "pass": good})
    return ok, rows


def print_splice(name, ok, rows, tol):
    print(f"\nsplice check, {name}: {'PASS' if ok else 'FAIL'} (all within ±{tol:.2f} s)")
    print(f"{'utt':>3} {'id':<16} {'onset':>7} {'1st.start':>9} {'Δon ms':>7} {'offset':>7} {'last.end':>8} {'Δoff ms':>7} {'words':>5}  first … last")
    for r in rows:
        f = lambda v: "—" if v is None else f"{v:.2f}"
        g = lambda v: "—" if v is None else f"{v * 1000:+.0f}"
        print(f"{r['utt']:>3} {r['id']:<16} {r['onset']:>7.2f} {f(r['first_start']):>9} {g(r['d_onset']):>7} "
              f"{r['offset']:>7.2f} {f(r['last_end']):>8} {g(r['d_offset']):>7} {r['n_words']:>5}  "
              f"{r['first_word']} … {r['last_word']}{'' if r['pass'] else '   <-- FAIL'}")


# ---------------------------------------------------------------- main

def fmt_ms(v):
    return "—" if v is None else f"{v:.0f}"


def print_table(res):
    print(f"\n{'set':<12} {'files':>5} {'ours':>6} {'peer':>6} {'match':>6} | "
          f"{'|Δstart| ms  med':>16} {'p90':>4} {'p95':>4} {'max':>5} | {'|Δend| ms  med':>14} {'p90':>4} {'p95':>4} {'max':>5} | "
          f"{'signed med s/e':>14} | {'≤100ms s/e':>10} | {'mean|Δp|':>8}")
    for name, r in res.items():
        s, e = r["start"], r["end"]
        sm = r["signed_median_ms"]
        w = r["within_100ms"]
        within = "—" if w["start"] is None else f"{w['start']:.0%}/{w['end']:.0%}"
        print(f"{name:<12} {r['files']:>5} {r['words_ours']:>6} {r['words_peer']:>6} {s['n']:>6} | "
              f"{fmt_ms(s['median']):>16} {fmt_ms(s['p90']):>4} {fmt_ms(s['p95']):>4} {fmt_ms(s['max']):>5} | "
              f"{fmt_ms(e['median']):>14} {fmt_ms(e['p90']):>4} {fmt_ms(e['p95']):>4} {fmt_ms(e['max']):>5} | "
              f"{(fmt_ms(sm['start']) + '/' + fmt_ms(sm['end'])):>14} | "
              f"{within:>10} | "
              f"{('—' if r['mean_abs_dprob'] is None else format(r['mean_abs_dprob'], '.3f')):>8}")


def arbitrate(pairs_all, paths, over_ms=100, quiet_db=6.0):
    """The audio as referee where the two systems disagree by more than `over_ms` on an edge: if
    the audio between the two candidate times is quiet (its 20-ms levels, median, within
    `quiet_db` of the file's floor, its 10th percentile), the candidate on the speech side of
    that quiet stretch is right (a word does not start or end in a pause). Otherwise undecided."""
    levels = {}
    out = {"edges": 0, "whisperd": 0, "faster-whisper": 0, "undecided": 0}
    for fid, o, p in pairs_all:
        for edge in ("start", "end"):
            a, b = o[edge], p[edge]
            if abs(a - b) * 1000 <= over_ms:
                continue
            out["edges"] += 1
            if fid not in levels:
                x = read_audio(paths[fid])
                n = len(x) // 320
                db = 10 * np.log10((x[: n * 320].reshape(n, 320) ** 2).mean(1) + 1e-12)
                levels[fid] = (db, float(np.percentile(db, 10)))
            db, floor = levels[fid]
            lo, hi = sorted((a, b))
            seg = db[int(lo * 50): max(int(hi * 50), int(lo * 50) + 1)]
            if len(seg) == 0 or float(np.median(seg)) > floor + quiet_db:
                out["undecided"] += 1
                continue
            # Quiet between: a start belongs after the quiet stretch, an end before it.
            later_is_right = edge == "start"
            ours_later = a > b
            out["whisperd" if ours_later == later_is_right else "faster-whisper"] += 1
    return out


def print_arbiter(r):
    print(f"\nedges where the two differ by > 100 ms: {r['edges']}; the audio between the two times is a pause "
          f"(median 20-ms level within 6 dB of the file's floor) and puts the edge where whisperd has it: "
          f"{r['whisperd']}, where faster-whisper has it: {r['faster-whisper']}; not a pause (undecided): {r['undecided']}")


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--whisperd", default=os.path.join(here, "target/release/whisperd"))
    ap.add_argument("--model", default=os.path.join(here, "models/whisper-tiny.en"))
    ap.add_argument("--shared", default=os.path.join(here, "../shared"))
    ap.add_argument("--sets", default="jfk,librispeech,longform", help="manifest categories (English)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-peer", action="store_true", help="no faster-whisper (no agreement figures)")
    ap.add_argument("--skip-whisperd", action="store_true", help="faster-whisper and the splice clip only")
    ap.add_argument("--splices", type=int, default=6, help="utterances in the splice clip (0: no splice check)")
    ap.add_argument("--gaps", default="1.0,1.5,2.0", help="silence between utterances, s (cycled)")
    ap.add_argument("--trim-db", type=float, default=-35.0, help="trim: frames this loud (dB re the loudest 20-ms frame) extend an utterance")
    ap.add_argument("--core-db", type=float, default=-20.0, help="trim: an utterance starts/ends from frames this loud, extended by --trim-db")
    ap.add_argument("--noise-dbfs", type=float, default=None,
                    help="add steady white noise at this RMS level (dBFS) over the whole splice clip (default: none, "
                         "gaps are digital silence; an energy-based pause detector then finds every splice exactly)")
    ap.add_argument("--tolerance", type=float, default=0.2, help="splice check tolerance, s")
    ap.add_argument("--keep-clip", metavar="WAV", help="write the splice clip here and its true times to WAV's stem + .json")
    ap.add_argument("--cost-runs", type=int, default=2, help="timed whisperd runs with and without words (alternating)")
    ap.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    a = ap.parse_args()

    manifest = os.path.join(a.shared, "eval/manifest.jsonl")
    all_rows = [json.loads(l) for l in open(manifest)]
    rows = [r for r in all_rows if r["lang"] == "en" and r["category"] in a.sets.split(",")]
    if not rows:
        die(f"no English files of categories {a.sets} in {manifest}")
    files = [os.path.join(a.shared, "eval", r["path"]) for r in rows]
    durations = {r["id"]: r["duration_s"] for r in rows}
    audio_s = sum(durations.values())
    gaps = [float(g) for g in a.gaps.split(",")]
    if not a.skip_whisperd:
        if not os.access(a.whisperd, os.X_OK):
            die(f"{a.whisperd} is not an executable (build it, or --skip-whisperd)")
        h = subprocess.run([a.whisperd, "transcribe", "--help"], text=True, capture_output=True).stdout
        if "--word-timestamps" not in h:
            die(f"{a.whisperd} transcribe has no --word-timestamps yet")
    tmp = tempfile.mkdtemp(prefix="whisperd-words-")
    atexit.register(shutil.rmtree, tmp, True)
    report = {"files": len(rows), "audio_s": round(audio_s, 2), "sets": a.sets, "model": a.model, "threads": a.threads,
              "loadavg_at_start": os.getloadavg()}
    print(f"{len(rows)} English files ({a.sets}), {audio_s:.0f} s of audio; model {a.model}; {a.threads} threads; "
          f"load average at start {os.getloadavg()[0]:.2f}")

    # -- whisperd: cost runs (alternating off/on), the first `on` run's output is the one compared
    ours = {}
    if not a.skip_whisperd:
        whisperd_run(a, files[:1], os.path.join(tmp, "warm"), True)  # page cache, allocator
        off, on = [], []
        on_dir = os.path.join(tmp, "on0")
        for i in range(max(a.cost_runs, 1)):
            if a.cost_runs > 0:
                off.append(whisperd_run(a, files, os.path.join(tmp, f"off{i}"), False))
            on.append(whisperd_run(a, files, os.path.join(tmp, f"on{i}"), True))
        for r, f in zip(rows, files):
            ours[r["id"]] = whisperd_words(on_dir, f)
        if a.cost_runs > 0:
            net = lambda runs: [w - l for w, l, _ in runs]
            cpu = lambda runs: [c for _, _, c in runs]
            m_off, m_on = float(np.mean(net(off))), float(np.mean(net(on)))
            report["cost"] = {"off_wall_s": [round(w, 2) for w, _, _ in off], "on_wall_s": [round(w, 2) for w, _, _ in on],
                              "off_load_s": [round(l, 2) for _, l, _ in off], "on_load_s": [round(l, 2) for _, l, _ in on],
                              "off_cpu_s": [round(c, 2) for c in cpu(off)], "on_cpu_s": [round(c, 2) for c in cpu(on)],
                              "off_mean_net_s": round(m_off, 2), "on_mean_net_s": round(m_on, 2),
                              "ratio_mean": round(m_on / m_off, 3),
                              "ratio_best": round(min(net(on)) / min(net(off)), 3),
                              "cpu_ratio_mean": round(float(np.mean(cpu(on)) / np.mean(cpu(off))), 3),
                              "loadavg_after": os.getloadavg()}

    # -- faster-whisper
    peer, peer_m = {}, None
    if not a.skip_peer:
        peer_m = Peer(a.model, a.threads)
        peer_m.words(files[0])  # warm-up
        t0 = time.perf_counter()
        for r, f in zip(rows, files):
            peer[r["id"]] = peer_m.words(f)
        report["peer_wall_s_words"] = round(time.perf_counter() - t0, 2)

    # -- agreement
    if ours and peer:
        by_set, pairs_all = {}, []
        for r in rows:
            ow, pw = clean_words(ours[r["id"]][0]), clean_words(peer[r["id"]][0])
            pairs = [(ow[i], pw[j]) for i, j in match(ow, pw)]
            d = by_set.setdefault(r["category"], {"pairs": [], "files": 0, "ours": 0, "peer": 0})
            d["pairs"] += pairs; d["files"] += 1; d["ours"] += len(ow); d["peer"] += len(pw)
            pairs_all += [(r["id"], o, p) for o, p in pairs]
        res = {}
        for name, d in list(by_set.items()) + [("all", {"pairs": [(o, p) for _, o, p in pairs_all],
                                                           "files": len(rows),
                                                           "ours": sum(v["ours"] for v in by_set.values()),
                                                           "peer": sum(v["peer"] for v in by_set.values())})]:
            res[name] = {**summarize(d["pairs"]), "files": d["files"], "words_ours": d["ours"], "words_peer": d["peer"]}
        report["agreement"] = res
        print("\nword timings, whisperd vs faster-whisper 1.2.1 (int8, greedy), words in equal blocks only; "
              "signed = whisperd − faster-whisper")
        print_table(res)
        worst = sorted(pairs_all, key=lambda t: -max(abs(t[1]["start"] - t[2]["start"]), abs(t[1]["end"] - t[2]["end"])))[:8]
        report["worst"] = [{"id": i, "word": o["word"], "ours": [o["start"], o["end"]], "peer": [p["start"], p["end"]]} for i, o, p in worst]
        print("\nlargest disagreements (file, word, whisperd start–end, faster-whisper start–end):")
        for i, o, p in worst:
            print(f"  {i:<44} {o['word'].strip():<14} {o['start']:7.2f}–{o['end']:<7.2f} {p['start']:7.2f}–{p['end']:<7.2f}")
        report["arbiter"] = arbitrate(pairs_all, {r["id"]: f for r, f in zip(rows, files)})
        print_arbiter(report["arbiter"])

    for name, data in (("whisperd", ours), ("faster-whisper", peer)):
        if data:
            report.setdefault("sanity", {})[name] = sanity(data, durations)
    if "sanity" in report:
        print("\nword sanity counts (per system):")
        for name, c in report["sanity"].items():
            print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in c.items()))

    if "cost" in report:
        c = report["cost"]
        print(f"\ncost, whisperd over the {len(rows)} files ({audio_s:.0f} s), VAD off, verbose_json, model load subtracted:")
        print(f"  without --word-timestamps: wall {', '.join(f'{w - l:.2f}' for w, l in zip(c['off_wall_s'], c['off_load_s']))} s, "
              f"CPU {', '.join(f'{x:.1f}' for x in c['off_cpu_s'])} s")
        print(f"  with    --word-timestamps: wall {', '.join(f'{w - l:.2f}' for w, l in zip(c['on_wall_s'], c['on_load_s']))} s, "
              f"CPU {', '.join(f'{x:.1f}' for x in c['on_cpu_s'])} s")
        print(f"  ratio with/without: wall {c['ratio_mean']:.3f} (means), {c['ratio_best']:.3f} (best of each) "
              f"[{(c['ratio_mean'] - 1) * 100:+.1f} %]; CPU time {c['cpu_ratio_mean']:.3f} [{(c['cpu_ratio_mean'] - 1) * 100:+.1f} %]; "
              f"load average after {c['loadavg_after'][0]:.2f} (a busy machine makes wall times noisy)")

    # -- splice check
    failed = False
    if a.splices > 0:
        audio, meta = build_splice(all_rows, a.shared, a.splices, gaps, a.trim_db, a.core_db, a.noise_dbfs)
        clip = a.keep_clip or os.path.join(tmp, "splice.wav")
        os.makedirs(os.path.dirname(os.path.abspath(clip)), exist_ok=True)
        write_wav(clip, audio)
        if a.keep_clip:
            with open(os.path.splitext(a.keep_clip)[0] + ".json", "w") as f:
                json.dump({**meta, "wav": os.path.basename(a.keep_clip)}, f, indent=1)
        report["splice"] = {"clip": meta}
        print(f"\nsplice clip: {a.splices} LibriSpeech utterances trimmed (20-ms frames ≥ {a.core_db:g} dB re peak, extended over contiguous frames ≥ {a.trim_db:g} dB), "
              f"digital-silence gaps {a.gaps} s, lead-in/tail {gaps[0]:g} s, {meta['duration_s']:.2f} s total"
              + ("" if a.noise_dbfs is None else f", white noise {a.noise_dbfs:g} dBFS over all of it")
              + (f" → {a.keep_clip}" if a.keep_clip else ""))
        for u in meta["utterances"]:
            print(f"  {u['id']:<16} {u['onset']:7.3f}–{u['offset']:<7.3f} trimmed head {u['trimmed_head_s']:.2f} s, "
                  f"tail {u['trimmed_tail_s']:.2f} s, noise floor {u['noise_floor_db']:.0f} dB")
        if not a.skip_whisperd:
            d = os.path.join(tmp, "splice_out")
            whisperd_run(a, [clip], d, True)
            ok, rr = splice_check(whisperd_words(d, clip)[0], meta, a.tolerance)
            print_splice("whisperd", ok, rr, a.tolerance)
            report["splice"]["whisperd"] = {"pass": ok, "rows": rr}
            failed = not ok
        if peer_m:
            ok, rr = splice_check(peer_m.words(clip)[0], meta, a.tolerance)
            print_splice("faster-whisper", ok, rr, a.tolerance)
            report["splice"]["faster-whisper"] = {"pass": ok, "rows": rr}

    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
