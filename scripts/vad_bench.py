#!/usr/bin/env python3
"""Voice activity detection, full length, whisperd next to faster-whisper (vad_filter=True), one run.

usage: vad_bench.py --bin target/release/whisperd --model models/whisper-tiny.en --shared ../shared
                    [--threads 2] [--long-s 3600] [--gap-s 300] [--skip-eval]

Builds with sox (in a temp dir):
  silence.flac  LONG s of digital silence            (whisperd: POSTed to a real `whisperd serve`)
  pink.flac     LONG s of pink noise at vol 0.01      (whisperd transcribe)
  mix.wav       jfk + GAP s silence + jfk + GAP s white noise (sox, -45 dBFS RMS) + jfk
and reports for each: wall seconds, text, segments; for mix also whether the jfk sentence comes out
exactly three times and where the second one starts (true position: 11 + GAP s).
Then the English eval set (jfk, librispeech, longform) with VAD on and off: WER of both (scored by
../shared/scripts/score.py) and the 200-s chapter's time on/off. faster-whisper 1.2.1 (int8, beam 1,
timestamps on, same threads, same model) runs every file with vad_filter=True, and the eval set with
vad_filter False and True. Prints one JSON object last.
"""
import argparse, json, os, re, subprocess, sys, tempfile, time, urllib.request, uuid

JFK_WORDS = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def norm(t):
    return " ".join(re.sub(r"[^a-z' ]", " ", t.lower()).split())


def build_files(shared, tmp, long_s, gap_s):
    jfk = os.path.join(shared, "eval/jfk.wav")
    f = {k: os.path.join(tmp, v) for k, v in
         dict(silence="silence.flac", pink="pink.flac", mix="mix.wav").items()}
    fmt = ["-r", "16000", "-c", "1", "-b", "16"]
    sh(["sox", "-n", *fmt, f["silence"], "trim", "0", str(long_s)])
    sh(["sox", "-n", *fmt, f["pink"], "synth", str(long_s), "pinknoise", "vol", "0.01"])
    gap = os.path.join(tmp, "gap.wav"); noise = os.path.join(tmp, "noise.wav")
    sh(["sox", "-n", *fmt, gap, "trim", "0", str(gap_s)])
    # sox's whitenoise is Gaussian: at vol 0.0173 its RMS is 0.0056 (-45 dBFS)
    sh(["sox", "-n", *fmt, noise, "synth", str(gap_s), "whitenoise", "vol", str(0.01 * 3 ** 0.5)])
    sh(["sox", jfk, gap, jfk, noise, jfk, f["mix"]])
    return f


def start_server(binary, model, threads):
    p = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", "0", "--model", model,
                          "--threads", str(threads)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         text=True, env={**os.environ, "RUST_LOG": "info", "WHISPERD_BEAM_SIZE": "1"})
    addr = None
    for line in p.stderr:
        if "whisperd listening on http://" in line:
            addr = line.split("http://", 1)[1].strip()
            break
    if not addr:
        p.kill(); sys.exit("server did not start")
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://{addr}/ready", timeout=2).status == 200:
                return p, addr
        except Exception:
            time.sleep(0.1)
    p.kill(); sys.exit("server not ready")


def post(addr, path, file, fields):
    boundary = uuid.uuid4().hex
    body = b""
    for k, v in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{os.path.basename(file)}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n").encode() + open(file, "rb").read() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"http://{addr}{path}", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=3600) as r:
        out = json.loads(r.read())
    return out, time.perf_counter() - t0


def ours_cli(binary, model, threads, path, *extra):
    t0 = time.perf_counter()
    p = sh([binary, "transcribe", "--model", model, "--threads", str(threads), "--beam-size", "1", "--format", "verbose_json", *extra, path])
    return json.loads(p.stdout), time.perf_counter() - t0


def mix_verdict(text, segments, gap_s):
    n = norm(text)
    three = n == " ".join([JFK_WORDS] * 3)
    second = next((s["start"] for s in segments if s["start"] > 20.0), None)
    return {"exactly_three_jfk": three, "second_start": second, "second_true": 11.0 + gap_s,
            "second_error_s": None if second is None else round(abs(second - (11.0 + gap_s)), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True); ap.add_argument("--model", required=True)
    ap.add_argument("--shared", default="../shared"); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--long-s", type=int, default=3600); ap.add_argument("--gap-s", type=int, default=300)
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="whisperd-vad-")
    files = build_files(a.shared, tmp, a.long_s, a.gap_s)
    report = {"long_s": a.long_s, "gap_s": a.gap_s, "cpu": cpu_name()}

    # whisperd: silence through the server (both APIs), noise and the mix through the CLI
    proc, addr = start_server(a.bin, a.model, a.threads)
    try:
        v, dt = post(addr, "/transcribe", files["silence"], {"response_format": "verbose_json"})
        report["ours_silence_server"] = {"seconds": round(dt, 2), "text": v["text"], "segments": len(v["segments"]), "speech": v.get("speech")}
        v, dt = post(addr, "/v1/audio/transcriptions", files["silence"], {"model": "whisper-1", "response_format": "verbose_json"})
        report["ours_silence_server_v1_no_vad"] = {"seconds": round(dt, 2), "text": v["text"], "segments": len(v["segments"]), "speech": v.get("speech")}
    finally:
        proc.kill()
    v, dt = ours_cli(a.bin, a.model, a.threads, files["pink"])
    report["ours_pink"] = {"seconds": round(dt, 2), "text": v["text"], "segments": len(v["segments"]), "speech": v.get("speech")}
    v, dt = ours_cli(a.bin, a.model, a.threads, files["mix"])
    report["ours_mix"] = {"seconds": round(dt, 2), "text": v["text"], "speech": v.get("speech"),
                          **mix_verdict(v["text"], v["segments"], a.gap_s),
                          "segments": [(s["start"], s["end"], s["text"]) for s in v["segments"]]}

    from faster_whisper import WhisperModel
    fw = WhisperModel(a.model, device="cpu", compute_type="int8", cpu_threads=a.threads)
    list(fw.transcribe(os.path.join(a.shared, "eval/jfk.wav"), beam_size=1, language="en")[0])

    def peer(path, vad):
        t0 = time.perf_counter()
        segs, _ = fw.transcribe(path, beam_size=1, language="en", vad_filter=vad)
        segs = list(segs)
        return "".join(s.text for s in segs).strip(), segs, time.perf_counter() - t0

    for k in ("silence", "pink", "mix"):
        text, segs, dt = peer(files[k], True)
        r = {"seconds": round(dt, 2), "text": text, "segments": len(segs)}
        if k == "mix":
            r.update(mix_verdict(text, [{"start": s.start} for s in segs], a.gap_s))
        report[f"peer_vad_{k}"] = r

    if not a.skip_eval:
        report["eval"] = eval_set(a, fw)
    print(json.dumps(report))


def eval_set(a, fw):
    manifest = os.path.join(a.shared, "eval/manifest.jsonl")
    cats = "jfk,librispeech,longform"
    rows = [json.loads(l) for l in open(manifest)]
    rows = [r for r in rows if r["lang"] == "en" and r["category"] in cats.split(",")]
    files = [os.path.join(a.shared, "eval", r["path"]) for r in rows]
    tmp = tempfile.mkdtemp(prefix="whisperd-vad-eval-")
    out = {}

    def score(hyps):
        p = sh([sys.executable, os.path.join(a.shared, "scripts/score.py"), manifest, hyps, "--json", "--category", cats])
        return json.loads(p.stdout.strip().splitlines()[-1])

    for vad in ("true", "false"):
        d = os.path.join(tmp, vad)
        sh([a.bin, "transcribe", "--model", a.model, "--threads", str(a.threads), "--vad", vad, "--beam-size", "1", "--format", "json", "--output-dir", d, *files])
        hyps = os.path.join(tmp, f"ours-{vad}.jsonl")
        with open(hyps, "w") as f:
            for r, path in zip(rows, files):
                t = json.load(open(os.path.join(d, os.path.basename(path) + ".json")))
                f.write(json.dumps({"id": r["id"], "text": t["text"]}) + "\n")
        out[f"ours_vad_{vad}"] = score(hyps)
    longform = next(p for r, p in zip(rows, files) if r["category"] == "longform")
    times = {"true": [], "false": []}
    for _ in range(3):
        for vad in ("true", "false"):
            _, dt = ours_cli(a.bin, a.model, a.threads, longform, "--vad", vad)
            times[vad].append(round(dt, 2))
    out["ours_longform_seconds"] = times
    for vad in (False, True):
        hyps = os.path.join(tmp, f"peer-{vad}.jsonl")
        with open(hyps, "w") as f:
            for r, path in zip(rows, files):
                segs, _ = fw.transcribe(path, beam_size=1, language="en", vad_filter=vad)
                f.write(json.dumps({"id": r["id"], "text": "".join(s.text for s in segs).strip()}) + "\n")
        out[f"peer_vad_{str(vad).lower()}"] = score(hyps)
    return out


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
