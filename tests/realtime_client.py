"""Drives whisperd's GET /v1/realtime?intent=transcription with the official `openai` Python
client's realtime connection (unchanged), and a raw WebSocket for malformed input. Every server
event is validated against OpenAI's spec (realtime_validate.py).

usage: python realtime_client.py HOST:PORT API_KEY AUDIO_WAV [--latency FILE...]
  AUDIO_WAV: a 16-bit mono WAV (jfk.wav). The server must run with API_KEY as its only key.
  --latency: instead of the checks, send each FILE in real time with server VAD and print one
  JSON line per file (first delta after speech start, completed after speech stopped).
On success the last line is "realtime client: all ok".
"""
import base64
import io
import json
import os
import sys
import threading
import time
import traceback
import wave

import numpy as np
import websockets.sync.client as wsc
from openai import OpenAI, omit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realtime_validate import validate  # noqa: E402

ADDR, KEY = sys.argv[1], sys.argv[2]
RATE = 24000
CHUNK = RATE // 10 * 2  # 100 ms of PCM16 = 4800 bytes
failures = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def case(name):
    def run(fn):
        try:
            fn()
            print(f"ok   {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - any surprise fails this case, not the run
            failures.append(f"{name}: {e!r}")
            print(f"FAIL {name}: {e!r}\n{traceback.format_exc()}", flush=True)
    return run


def pcm16(path, rate=RATE):
    """A WAV's samples as PCM16 LE mono at `rate` (linear interpolation: a test fixture)."""
    with wave.open(path) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32)
        sr = w.getframerate()
    if sr != rate:
        n = int(round(len(x) * rate / sr))
        x = np.interp(np.arange(n) * (sr / rate), np.arange(len(x)), x)
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def wav_bytes(pcm, rate=RATE):
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate); w.writeframes(pcm)
    return b.getvalue()


def client():
    return OpenAI(api_key=KEY, base_url=f"http://{ADDR}/v1", max_retries=0, timeout=120)


def connect(**kw):
    return client().realtime.connect(extra_query={"intent": "transcription"}, **kw)


def configure(conn, turn_detection, rate=RATE):
    created = conn.recv().to_dict()
    validate(created)
    check(created["type"] == "session.created", created)
    conn.session.update(session={"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": rate},
        "transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": turn_detection,
    }}})
    updated = conn.recv().to_dict()
    validate(updated)
    check(updated["type"] == "session.updated", updated)
    return updated


def until(conn, want, log, stop_on_error=True):
    """Events (validated, appended to log) until one of type `want`; returns it."""
    for ev in conn:
        d = ev.to_dict()
        validate(d)
        log.append((time.monotonic(), d))
        if stop_on_error and d["type"] in ("error", "conversation.item.input_audio_transcription.failed"):
            raise AssertionError(f"server sent {d}")
        if d["type"] == want:
            return d
    raise AssertionError(f"closed before {want}: {[d['type'] for _, d in log]}")


def words(text):
    return ["".join(c for c in w.lower() if c.isalnum()) for w in text.split()]


def send_audio(conn, audio, realtime=False):
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(audio), CHUNK)):
        if realtime:
            time.sleep(max(0.0, t0 + k * 0.1 - time.monotonic()))
        conn.input_audio_buffer.append(audio=base64.b64encode(audio[i:i + CHUNK]).decode())


AUDIO = pcm16(sys.argv[3])
SILENCE_1S = b"\x00\x00" * RATE


# A session's final pass decodes at realtime_beam_size (1, greedy, by default), uploads at
# beam_size (5): compare with an upload at the session's width (an extra form field, as
# speaches takes them). (jfk sent at 24 kHz gives the same text either way; which width a session
# uses is pinned by src/server/realtime.rs's unit tests.)
REALTIME_BEAM_SIZE = 1


def upload_text(pcm, rate=RATE):
    return client().audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(pcm, rate)),
                                                extra_body={"beam_size": REALTIME_BEAM_SIZE}).text


def checks():
    @case("manual commit: committed, then completed equal to an upload of the same audio")
    def _():
        log = []
        with connect() as conn:
            configure(conn, None)
            send_audio(conn, AUDIO)
            conn.input_audio_buffer.commit()
            committed = until(conn, "input_audio_buffer.committed", log)
            done = until(conn, "conversation.item.input_audio_transcription.completed", log)
        check(done["item_id"] == committed["item_id"], (done, committed))
        check("fellow Americans" in done["transcript"], done)
        check(done["transcript"] == upload_text(AUDIO), f"{done['transcript']!r} vs upload")
        deltas = "".join(d["delta"] for _, d in log if d["type"].endswith(".delta"))
        check(deltas == done["transcript"], f"deltas {deltas!r} vs {done['transcript']!r}")
        check(done["usage"]["type"] == "duration" and abs(done["usage"]["seconds"] - 11.0) < 0.1, done["usage"])

    @case("server VAD in real time: speech_started/stopped, agreed partial deltas, completed")
    def _():
        # 2 s of silence ends an utterance: jfk twice is one, 22 s, long enough for partial
        # passes even on a loaded machine
        items, log = vad_session(SILENCE_1S + AUDIO + AUDIO + SILENCE_1S + SILENCE_1S, 2000)
        first, last = items[0], items[-1]
        check(600 <= first["started"]["audio_start_ms"] <= 1200, first["started"])
        check(22_000 <= last["stopped"]["audio_end_ms"] <= 23_600, last["stopped"])
        for it in items:
            # equal up to case and punctuation: the partial passes may agree on a period the final
            # decode of the whole utterance drops, and sent text never changes
            check(words("".join(it["deltas"])) == words(it["done"]["transcript"]),
                  f"{it['deltas']} vs {it['done']['transcript']!r}")
        check(sum(len(it["deltas"]) for it in items) > len(items), f"no partial text while speaking: {items}")
        text = " ".join(it["done"]["transcript"] for it in items)
        check("fellow Americans" in text and "your country" in text, text)

    @case("browser auth: key as the openai-insecure-api-key subprotocol; bad key refused")
    def _():
        log = []
        with connect(extra_headers={"Authorization": omit},
                     websocket_connection_options={"subprotocols": ["realtime", f"openai-insecure-api-key.{KEY}"]}) as conn:
            check(conn._connection.subprotocol == "realtime", conn._connection.subprotocol)
            configure(conn, None)
            send_audio(conn, AUDIO)
            conn.input_audio_buffer.commit()
            until(conn, "conversation.item.input_audio_transcription.completed", log)
        try:
            with wsc.connect(f"ws://{ADDR}/v1/realtime?intent=transcription",
                             additional_headers={"Authorization": "Bearer wrong"}) as ws:
                ws.recv(timeout=5)
            raise AssertionError("a wrong key was accepted")
        except websockets_invalid_status() as e:
            check(e.response.status_code == 401, e.response.status_code)

    @case("malformed input: an error event each, and the session goes on")
    def _():
        with wsc.connect(f"ws://{ADDR}/v1/realtime?intent=transcription",
                         additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            def event():
                d = json.loads(ws.recv(timeout=30))
                validate(d)
                return d
            check(event()["type"] == "session.created", "session.created first")
            for bad, code in [
                ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "session_not_configured"),
                ("this is not json", "invalid_json"),
                ('["a list"]', "invalid_event"),
                ('{"no": "type"}', "missing_type"),
                ('{"type": "response.create"}', "unknown_event"),
                ('{"type": "session.update", "session": {"type": "realtime"}}', "invalid_value"),
                ('{"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}}}', "invalid_value"),
                ('{"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"transcription": {"model": "no-such-model"}}}}}', "invalid_value"),
            ]:
                ws.send(bad)
                d = event()
                check(d["type"] == "error" and d["error"]["code"] == code, f"{bad}: {d}")
            ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}, "event_id": "e1"}))
            check(event()["type"] == "session.updated", "session.updated")
            for bad, code in [
                ('{"type": "input_audio_buffer.append", "audio": "%%%not base64"}', "invalid_base64"),
                ('{"type": "input_audio_buffer.append", "audio": "AA=="}', "invalid_audio"),
                ('{"type": "input_audio_buffer.append"}', "missing_audio"),
                ('{"type": "input_audio_buffer.commit", "event_id": "c1"}', "input_audio_buffer_commit_empty"),
            ]:
                ws.send(bad)
                d = event()
                check(d["type"] == "error" and d["error"]["code"] == code, f"{bad}: {d}")
            check(d["error"]["event_id"] == "c1", d)
            ws.send(b"\x00binary")
            check(event()["error"]["code"] == "binary_not_supported", "binary frame")
            ws.send('{"type": "input_audio_buffer.clear"}')
            check(event()["type"] == "input_audio_buffer.cleared", "cleared")

    @case("wrong intent and plain GET are refused")
    def _():
        try:
            with wsc.connect(f"ws://{ADDR}/v1/realtime", additional_headers={"Authorization": f"Bearer {KEY}"}):
                pass
            raise AssertionError("no intent accepted")
        except websockets_invalid_status() as e:
            check(e.response.status_code == 400, e.response.status_code)


PREFIX_PADDING_MS = 300  # OpenAI's default


def vad_session(audio, silence_ms, realtime=True):
    """Send `audio` with server VAD; every utterance's events: started, stopped, committed, the
    deltas and completed (in order), and the timed event log."""
    log = []
    with connect() as conn:
        configure(conn, {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": PREFIX_PADDING_MS,
                         "silence_duration_ms": silence_ms})
        t0 = time.monotonic()

        def sender():
            send_audio(conn, audio, realtime)
            # `clear` is a fence: its reply follows every VAD event of the audio before it;
            # then each committed utterance's transcript is awaited.
            conn.input_audio_buffer.clear()
        threading.Thread(target=sender, daemon=True).start()
        items, cleared = {}, False
        for ev in conn:
            d = ev.to_dict()
            validate(d)
            log.append((time.monotonic() - t0, d))
            t = d["type"]
            check(t not in ("error", "conversation.item.input_audio_transcription.failed"), d)
            if t == "input_audio_buffer.cleared":
                cleared = True
            elif "item_id" in d:
                it = items.setdefault(d["item_id"], {"deltas": []})
                key = {"input_audio_buffer.speech_started": "started", "input_audio_buffer.speech_stopped": "stopped",
                       "input_audio_buffer.committed": "committed",
                       "conversation.item.input_audio_transcription.completed": "done"}.get(t)
                if key:
                    it[key] = d
                    it[key + "_at"] = log[-1][0]
                else:
                    it["deltas"].append(d["delta"])
                    it.setdefault("first_delta_at", log[-1][0])
            if cleared and items and all("done" in it for it in items.values() if "committed" in it):
                break
    done = [it for it in items.values() if "done" in it]
    check(done and all(k in it for it in done for k in ("started", "stopped", "committed")), items)
    return done, log


def websockets_invalid_status():
    from websockets.exceptions import InvalidStatus
    return InvalidStatus


def latency(files):
    """Each file in real time with server VAD (OpenAI's defaults): per utterance, the first
    delta after its speech started, and completed after its speech stopped (both at the client,
    on the audio clock: speech times are where the audio was when sent). The speech start is
    `audio_start_ms`, which includes the prefix padding before the speech the VAD heard; the
    first delta is also given after that onset (`audio_start_ms` + the padding)."""
    for f in files:
        items, _ = vad_session(SILENCE_1S + pcm16(f) + SILENCE_1S, 500)
        for it in items:
            start = it["started"]["audio_start_ms"] / 1000
            stop = it["stopped"]["audio_end_ms"] / 1000
            print(json.dumps({
                "file": os.path.basename(f), "speech_s": round(stop - start, 2),
                "first_delta_after_speech_start_s": round(it["first_delta_at"] - start, 3) if "first_delta_at" in it else None,
                "first_delta_after_speech_onset_s": round(it["first_delta_at"] - start - PREFIX_PADDING_MS / 1000, 3) if "first_delta_at" in it else None,
                "completed_after_speech_end_s": round(it["done_at"] - stop, 3),
                "completed_after_stopped_event_s": round(it["done_at"] - it["stopped_at"], 3),
            }), flush=True)


if "--latency" in sys.argv:
    latency(sys.argv[sys.argv.index("--latency") + 1:])
    sys.exit(0)
checks()
if failures:
    sys.exit("FAILED:\n" + "\n".join(f"  {f}" for f in failures))
print("realtime client: all ok")
