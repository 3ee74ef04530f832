"""Validate OpenAI Realtime (transcription subset) events against the spec file.

Usage from tests:

    from realtime_validate import validate, validate_client

    validate(event_dict)            # server -> client event; raises jsonschema.ValidationError / ValueError
    validate_client(event_dict)     # client -> server event (for server-side fuzz/negative tests)

Schemas come from /work/shared/reference/openai-audio-openapi.json (OpenAPI 3.1,
components.schemas.*), resolved in place with a referencing.Registry so every
"#/components/schemas/X" $ref works.

The spec subset has NO GA `session.created` / `session.updated` schema.  For those two
events a schema is synthesized here: {event_id, type, session} all required (as in the
GA spec and the SDK's SessionCreatedEvent/SessionUpdatedEvent), with `session` validated
against RealtimeTranscriptionSessionCreateRequestGA (what the SDK types it as) AND, when
strict_session=True (default), also against RealtimeTranscriptionSessionCreateResponseGA
(which additionally requires `id` and `object`).  `conversation.item.added/done` are also
synthesized (SDK-derived: event_id, type, item required) because the real GA API emits them
after a commit; they are optional for our server.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any, Mapping

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = os.environ.get(
    "OPENAI_AUDIO_SPEC",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/reference/openai-audio-openapi.json"),
)
SPEC_URI = "urn:openai-audio-openapi"

# GA server event type -> components.schemas name
SERVER_EVENTS: dict[str, str] = {
    "input_audio_buffer.committed": "RealtimeServerEventInputAudioBufferCommitted",
    "input_audio_buffer.cleared": "RealtimeServerEventInputAudioBufferCleared",
    "input_audio_buffer.speech_started": "RealtimeServerEventInputAudioBufferSpeechStarted",
    "input_audio_buffer.speech_stopped": "RealtimeServerEventInputAudioBufferSpeechStopped",
    "input_audio_buffer.timeout_triggered": "RealtimeServerEventInputAudioBufferTimeoutTriggered",
    "input_audio_buffer.dtmf_event_received": "RealtimeServerEventInputAudioBufferDtmfEventReceived",
    "conversation.item.input_audio_transcription.delta": "RealtimeServerEventConversationItemInputAudioTranscriptionDelta",
    "conversation.item.input_audio_transcription.completed": "RealtimeServerEventConversationItemInputAudioTranscriptionCompleted",
    "conversation.item.input_audio_transcription.failed": "RealtimeServerEventConversationItemInputAudioTranscriptionFailed",
    "conversation.item.input_audio_transcription.segment": "RealtimeServerEventConversationItemInputAudioTranscriptionSegment",
    "error": "RealtimeServerEventError",
    # legacy/beta names (only if the server chooses to speak the beta dialect)
    "transcription_session.updated": "RealtimeServerEventTranscriptionSessionUpdated",
    "transcription_session.created": "RealtimeBetaServerEventTranscriptionSessionCreated",
}

CLIENT_EVENTS: dict[str, str] = {
    "session.update": "RealtimeClientEventSessionUpdate",
    "transcription_session.update": "RealtimeClientEventTranscriptionSessionUpdate",
    "input_audio_buffer.append": "RealtimeClientEventInputAudioBufferAppend",
    "input_audio_buffer.commit": "RealtimeClientEventInputAudioBufferCommit",
    "input_audio_buffer.clear": "RealtimeClientEventInputAudioBufferClear",
}


def _ref(name: str) -> dict:
    return {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}


def _session_event(type_: str, strict_session: bool) -> dict:
    session: dict[str, Any] = _ref("RealtimeTranscriptionSessionCreateRequestGA")
    if strict_session:
        session = {"allOf": [session, _ref("RealtimeTranscriptionSessionCreateResponseGA")]}
    return {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "type": {"const": type_},
            "session": session,
        },
        "required": ["event_id", "type", "session"],
    }


def _item_event(type_: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "type": {"const": type_},
            "previous_item_id": {"type": ["string", "null"]},
            "item": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "type": {"type": "string"}},
                "required": ["type"],
            },
        },
        "required": ["event_id", "type", "item"],
    }


@lru_cache(maxsize=1)
def _spec_and_registry() -> tuple[dict, Registry]:
    with open(SPEC_PATH, "rb") as f:
        spec = json.load(f)
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry = Registry().with_resource(SPEC_URI, resource)
    return spec, registry


def schema_for(event_type: str, *, client: bool = False, strict_session: bool = True) -> dict:
    """Return a (self-contained via registry) JSON schema for an event type."""
    if not client:
        if event_type in ("session.created", "session.updated"):
            return _session_event(event_type, strict_session)
        if event_type in ("conversation.item.added", "conversation.item.done", "conversation.item.created"):
            return _item_event(event_type)
        table = SERVER_EVENTS
    else:
        table = CLIENT_EVENTS
    name = table.get(event_type)
    if name is None:
        raise ValueError(f"no schema for {'client' if client else 'server'} event type {event_type!r}")
    # wrap the $ref and pin the discriminator (several spec schemas use enum for `type`)
    return {"allOf": [_ref(name)], "properties": {"type": {"const": event_type}}, "required": ["type"]}


def _top_level_props(event_type: str, client: bool) -> set[str] | None:
    spec, _ = _spec_and_registry()
    name = (CLIENT_EVENTS if client else SERVER_EVENTS).get(event_type)
    if name is None:
        return None
    return set(spec["components"]["schemas"][name].get("properties", {}))


def _validate(event: Mapping[str, Any], client: bool, strict_session: bool, no_extra: bool) -> None:
    if not isinstance(event, Mapping):
        raise ValueError(f"event must be a JSON object, got {type(event).__name__}")
    event_type = event.get("type")
    if not isinstance(event_type, str):
        raise ValueError(f"event has no string 'type': {event!r}")
    schema = schema_for(event_type, client=client, strict_session=strict_session)
    _, registry = _spec_and_registry()
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(dict(event)), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise jsonschema.ValidationError(
            f"{event_type}: {best.message} at {'/'.join(map(str, best.absolute_path)) or '<root>'}"
            f" ({len(errors)} error(s))"
        )
    if no_extra:
        allowed = _top_level_props(event_type, client)
        if allowed is not None:
            extra = set(event) - allowed
            if extra:
                raise jsonschema.ValidationError(f"{event_type}: unexpected top-level keys {sorted(extra)}")


def validate(event: Mapping[str, Any], *, strict_session: bool = True, no_extra: bool = False) -> None:
    """Validate a server->client event dict against the spec schema chosen by its `type`.

    strict_session: session.created/updated must also satisfy ...CreateResponseGA (id+object required).
    no_extra: reject top-level keys not declared by the spec schema (catches typos; the real API
              sometimes adds keys such as `obfuscation`, so this is off by default).
    Raises ValueError for unknown types, jsonschema.ValidationError on schema violations.
    """
    _validate(event, client=False, strict_session=strict_session, no_extra=no_extra)


def validate_client(event: Mapping[str, Any], *, no_extra: bool = False) -> None:
    """Validate a client->server event dict (session.update, input_audio_buffer.*)."""
    _validate(event, client=True, strict_session=True, no_extra=no_extra)


def is_valid(event: Mapping[str, Any], **kw: Any) -> bool:
    try:
        validate(event, **kw)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


if __name__ == "__main__":  # quick CLI: python validate.py file.jsonl  (one server event per line)
    import sys

    for line in open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin:
        line = line.strip()
        if line:
            ev = json.loads(line)
            validate(ev)
            print("ok", ev["type"])
