"""Drives a running whisperd with the official `openai` Python client, unchanged, and validates every
JSON body it gets against OpenAI's published OpenAPI description.

usage: python openai_client.py BASE_URL AUDIO_FILE SPEC
  SPEC: ../shared/reference/openai-audio-openapi.json (OpenAPI 3.1; its schemas are JSON Schema 2020-12)
AUDIO_FILE is jfk.wav (11 s). Every check runs; the failures are listed at the end and the exit status is
non-zero if there is any. On success the last line is "openai client: all formats ok".
"""
import json
import sys
import traceback
import urllib.error
import urllib.request

import jsonschema
import referencing
import referencing.jsonschema
from openai import OpenAI

base, audio, spec_path = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base + "/v1", api_key="test-key", max_retries=0, timeout=120)

with open(spec_path) as f:
    SPEC = json.load(f)
SPEC_URI = "urn:openai-audio-openapi"
REGISTRY = referencing.Registry().with_resource(
    SPEC_URI, referencing.jsonschema.DRAFT202012.create_resource(SPEC))


def validate(body, schema_name):
    """Validate a decoded JSON body against components/schemas/NAME (Draft 2020-12, refs into the spec)."""
    check(schema_name in SPEC["components"]["schemas"], f"no schema {schema_name} in the spec")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    errors = sorted(jsonschema.Draft202012Validator(schema, registry=REGISTRY).iter_errors(body),
                    key=lambda e: list(e.absolute_path))
    check(not errors, f"{schema_name}: " + "; ".join(
        f"at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:5]))


class Failed(Exception):
    pass


class Skipped(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


failures = []


def case(name):
    """Run the decorated function now; record a failure (or an unexpected exception) under NAME."""
    def run(fn):
        try:
            fn()
            print(f"ok   {name}")
        except Skipped as e:
            print(f"skip {name}: {e}")
        except Failed as e:
            failures.append(f"{name}: {e}")
            print(f"FAIL {name}: {e}")
        except Exception as e:  # noqa: BLE001 - any surprise is a failure of this case, not of the run
            failures.append(f"{name}: {e!r}")
            print(f"FAIL {name}: {e!r}\n{traceback.format_exc()}")
    return run


def transcribe(**kw):
    """(raw JSON or text, the client's parsed object) for one /v1/audio/transcriptions request."""
    with open(audio, "rb") as f:
        r = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f, **kw)
    check(r.status_code == 200, f"status {r.status_code}: {r.text[:300]}")
    return r, r.parse()


def body_json(r):
    check("application/json" in r.headers.get("content-type", ""), f"content-type {r.headers.get('content-type')}")
    return json.loads(r.text)


def http_get(path):
    try:
        with urllib.request.urlopen(base + path, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def expect_400(what, param=None, message=None, **kw):
    """A request the server must refuse with 400 and an ErrorResponse body (param naming the field)."""
    try:
        with open(audio, "rb") as f:
            kw.setdefault("file", f)
            client.audio.transcriptions.create(model="whisper-1", **kw)
    except Exception as e:  # openai.BadRequestError
        check(getattr(e, "status_code", None) == 400, f"{what}: expected 400, got {e!r}")
        body = e.response.json()
        validate(body, "ErrorResponse")
        if message:
            check(message in body["error"]["message"], f"{what}: message {body['error']['message']!r}")
        if param:
            check(param in (body["error"]["param"] or ""), f"{what}: param {body['error']['param']!r}, not {param}")
        return
    check(False, f"{what}: succeeded")


DURATION_USAGE = {"type": "duration", "seconds": 11.0}


@case("json")
def _():
    r, t = transcribe()
    check("fellow Americans" in t.text, f"json: {t.text!r}")
    body = body_json(r)
    validate(body, "CreateTranscriptionResponseJson")
    check("logprobs" not in body, "logprobs without include[]=logprobs")


@case("json usage")
def _():
    r, _t = transcribe(response_format="json")
    check(body_json(r).get("usage") == DURATION_USAGE, f"usage: {body_json(r).get('usage')!r}")


@case("diarized_json")
def _():
    r, _t = transcribe(response_format="diarized_json")
    body = body_json(r)
    validate(body, "CreateTranscriptionResponseDiarizedJson")
    check(body["segments"] and all(s["speaker"] == "A" for s in body["segments"]),
          f"one voice, speaker A: {body['segments']!r}")
    check("your country" in body["text"], f"diarized text: {body['text']!r}")
    check(body.get("usage") == DURATION_USAGE, f"usage: {body.get('usage')!r}")


@case("text")
def _():
    _r, text = transcribe(response_format="text")
    check(isinstance(text, str) and "your country" in text, f"text: {text!r}")


@case("srt")
def _():
    _r, srt = transcribe(response_format="srt")
    check(isinstance(srt, str) and srt.startswith("1\n00:00:00,000 --> "), f"srt: {srt!r}")


@case("vtt")
def _():
    _r, vtt = transcribe(response_format="vtt")
    check(isinstance(vtt, str) and vtt.startswith("WEBVTT"), f"vtt: {vtt!r}")


@case("verbose_json segment")
def _():
    r, v = transcribe(response_format="verbose_json", timestamp_granularities=["segment"], language="en",
                      temperature=0.0, prompt="JFK inaugural address.")
    check(v.language == "english" and v.duration == 11.0, f"verbose_json: {v.language} {v.duration}")
    check(len(v.segments) >= 1 and v.segments[0].start == 0.0 and v.segments[-1].end > 5, f"segments: {v.segments}")
    validate(body_json(r), "CreateTranscriptionResponseVerboseJson")


@case("verbose_json usage")
def _():
    r, _v = transcribe(response_format="verbose_json")
    body = body_json(r)
    validate(body, "CreateTranscriptionResponseVerboseJson")
    check(body.get("usage") == DURATION_USAGE, f"usage: {body.get('usage')!r}")


@case("verbose_json word")
def _():
    r, v = transcribe(response_format="verbose_json", timestamp_granularities=["word"])
    check(v.words is not None and len(v.words) >= 20 and v.words[0].word == "And", f"words: {v.words}")
    check(all(w.start <= w.end for w in v.words) and v.words[-1].end <= 11.0, f"word times: {v.words}")
    check(not getattr(v, "segments", None), f"segments without being asked: {v.segments}")
    validate(body_json(r), "CreateTranscriptionResponseVerboseJson")


@case("verbose_json word+segment")
def _():
    r, v = transcribe(response_format="verbose_json", timestamp_granularities=["word", "segment"])
    check(v.words and v.segments and v.segments[0].end >= v.words[0].end, f"words+segments: {v}")
    validate(body_json(r), "CreateTranscriptionResponseVerboseJson")


@case("include[]=logprobs")
def _():
    r, t = transcribe(response_format="json", include=["logprobs"])
    body = body_json(r)
    validate(body, "CreateTranscriptionResponseJson")
    lp = body.get("logprobs")
    check(isinstance(lp, list) and len(lp) >= 10, f"logprobs: {lp!r}")
    for item in lp:
        validate(item, "LogProbProperties")
        check(item["logprob"] <= 0.0, f"logprob > 0: {item}")
        check(bytes(item["bytes"]) == item["token"].encode("utf-8"), f"bytes do not spell the token: {item}")
    joined = "".join(item["token"] for item in lp)
    check(joined.strip() == body["text"].strip(), f"tokens spell {joined!r}, text is {body['text']!r}")
    check(t.logprobs is not None and len(t.logprobs) == len(lp), "the client does not see logprobs")


@case("languages=[en] accepted")
def _():
    r, t = transcribe(response_format="json", languages=["en"])
    check("fellow Americans" in t.text, f"languages=[en]: {t.text!r}")
    validate(body_json(r), "CreateTranscriptionResponseJson")


@case("languages=[xx] -> 400")
def _():
    expect_400("languages=[xx]", param="languages", languages=["xx"])


@case("keywords=[Kennedy]")
def _():
    r, t = transcribe(response_format="json", keywords=["Kennedy"])
    check("fellow Americans" in t.text, f"keywords: {t.text!r}")
    validate(body_json(r), "CreateTranscriptionResponseJson")


@case("translation json")
def _():
    with open(audio, "rb") as f:
        r = client.audio.translations.with_raw_response.create(model="whisper-1", file=f)
    t = r.parse()
    check("country" in t.text, f"translation: {t.text!r}")
    validate(body_json(r), "CreateTranslationResponseJson")


@case("translation verbose_json")
def _():
    with open(audio, "rb") as f:
        r = client.audio.translations.with_raw_response.create(model="whisper-1", file=f,
                                                                response_format="verbose_json")
    t = r.parse()
    check(t.language == "english" and t.duration == 11.0 and t.segments, f"translation verbose_json: {t}")
    validate(body_json(r), "CreateTranslationResponseVerboseJson")


@case("models list")
def _():
    r = client.models.with_raw_response.list()
    models = r.parse()
    check(any(m.id == "whisper-tiny.en" for m in models.data), f"models: {models}")
    validate(body_json(r), "ListModelsResponse")


@case("models list has whisper-1")
def _():
    models = client.models.list()
    m = [m for m in models.data if m.id == "whisper-1"]
    check(m and m[0].object == "model", f"no whisper-1 Model in {[m.id for m in models.data]}")


@case("stream=true: transcript.text.delta events, then transcript.text.done")
def _():
    with open(audio, "rb") as f:
        stream = client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        events = list(stream)
    check(len(events) >= 2, f"{len(events)} events")
    deltas, done = events[:-1], events[-1]
    for e in events:
        validate(e.to_dict(), "CreateTranscriptionResponseStreamEvent")
    check(all(e.type == "transcript.text.delta" for e in deltas), [e.type for e in deltas])
    check(done.type == "transcript.text.done", done.type)
    validate(done.to_dict(), "TranscriptTextDoneEvent")
    check("".join(e.delta for e in deltas) == done.text, f"deltas {[e.delta for e in deltas]} vs {done.text!r}")
    _, plain = transcribe()
    check(done.text == plain.text, f"streamed {done.text!r} vs plain {plain.text!r}")
    check(done.usage.type == "tokens" and done.usage.input_tokens > 0, f"usage {done.usage!r}")


@case("GET /v1/models/{id}")
def _():
    status, body = http_get("/v1/models/whisper-1")
    if status == 404:
        raise Skipped("not served (404)")
    check(status == 200, f"status {status}: {body}")
    validate(body, "Model")
    check(body["id"] == "whisper-1", f"id {body['id']!r}")
    check(client.models.retrieve("whisper-1").id == "whisper-1", "client.models.retrieve")


@case("non-audio upload -> 400")
def _():
    expect_400("non-audio upload", param="file", message="not a recognised audio file", file=("x.wav", b"not audio"))


@case("unknown option value -> 400")
def _():
    expect_400("response_format=bogus", param="response_format", extra_body={"response_format": "bogus"})
    expect_400("timestamp_granularities=[sentence]", param="timestamp_granularities",
               response_format="verbose_json", timestamp_granularities=["sentence"])


if failures:
    sys.exit("FAILED:\n" + "\n".join(f"  {f}" for f in failures))
print("openai client: all formats ok")
