"""Drives a running whisperd with the official `openai` Python client, unchanged.

usage: python openai_client.py BASE_URL AUDIO_FILE
Exits non-zero (with the reason) if any response is not what the client and OpenAI's contract expect.
"""
import sys

from openai import OpenAI

base, audio = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="test-key")


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


with open(audio, "rb") as f:
    r = client.audio.transcriptions.create(model="whisper-1", file=f)
check("fellow Americans" in r.text, f"json: {r.text!r}")

with open(audio, "rb") as f:
    text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
check(isinstance(text, str) and "your country" in text, f"text: {text!r}")

with open(audio, "rb") as f:
    srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
check(srt.startswith("1\n00:00:00,000 --> "), f"srt: {srt!r}")

with open(audio, "rb") as f:
    vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
check(vtt.startswith("WEBVTT"), f"vtt: {vtt!r}")

with open(audio, "rb") as f:
    v = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                           timestamp_granularities=["segment"], language="en", temperature=0.0,
                                           prompt="JFK inaugural address.")
check(v.language == "english" and v.duration == 11.0, f"verbose_json: {v.language} {v.duration}")
check(len(v.segments) >= 1 and v.segments[0].start == 0.0 and v.segments[-1].end > 5, f"segments: {v.segments}")

with open(audio, "rb") as f:
    v = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                           timestamp_granularities=["word"])
check(v.words is not None and len(v.words) >= 20 and v.words[0].word == "And", f"words: {v.words}")
check(all(w.start <= w.end for w in v.words) and v.words[-1].end <= 11.0, f"word times: {v.words}")
check(not getattr(v, "segments", None), f"segments without being asked: {v.segments}")

with open(audio, "rb") as f:
    v = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                           timestamp_granularities=["word", "segment"])
check(v.words and v.segments and v.segments[0].end >= v.words[0].end, f"words+segments: {v}")

with open(audio, "rb") as f:
    t = client.audio.translations.create(model="whisper-1", file=f)
check("country" in t.text, f"translation: {t.text!r}")

models = client.models.list()
check(any(m.id == "whisper-tiny.en" for m in models.data), f"models: {models}")

try:
    client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio"))
    check(False, "non-audio upload succeeded")
except Exception as e:  # openai.BadRequestError
    check(getattr(e, "status_code", None) == 400 and "not a recognised audio file" in str(e), f"error: {e!r}")

print("openai client: all formats ok")
