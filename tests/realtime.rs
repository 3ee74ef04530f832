//! Live transcription over `GET /v1/realtime?intent=transcription`, driven by the official
//! `openai` Python client's realtime connection (pinned in the Makefile: openai 3.57.0,
//! websockets 15.0.1) and a raw WebSocket for malformed input; every server event is validated
//! against OpenAI's spec (tests/realtime_client.py, tests/realtime_validate.py).

mod common;

use common::server::Server;
use common::*;

/// The two tests run one at a time: each starts a server, and partial text while speaking
/// depends on the CPU the decoding gets.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn official_openai_realtime_client_transcribes_live_audio() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make venv` (make test does)",
        python.display()
    );
    let s = Server::start(&[("WHISPERD_API_KEYS", "k")]);
    let out = std::process::Command::new(&python)
        .arg(root().join("tests/realtime_client.py"))
        .arg(&s.addr)
        .arg("k")
        .arg(shared().join("eval/jfk.wav"))
        .env(
            "OPENAI_AUDIO_SPEC",
            shared().join("reference/openai-audio-openapi.json"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("realtime client: all ok"),
        "realtime_client.py failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let m = |name: &str| s.metric(name);
    assert_eq!(m("whisperd_realtime_sessions_open"), 0.0);
    assert!(m("whisperd_realtime_latency_seconds_count") >= 3.0);
    assert!(m("whisperd_realtime_first_delta_seconds_count") >= 1.0);
}

/// A session open when the server is told to stop: it hears why, still gets the transcript of
/// the utterance it committed, then a 1001 close (all within the drain grace period).
#[test]
fn sigterm_finishes_committed_utterances_then_closes_sessions() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let python = root().join(".venv/bin/python");
    let mut s = Server::start(&[]);
    let script = r#"
import base64, json, os, signal, sys, wave
import websockets.sync.client as wsc
addr, pid, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with wave.open(path) as w:
    pcm = w.readframes(w.getnframes())
with wsc.connect(f"ws://{addr}/v1/realtime?intent=transcription") as ws:
    assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
    ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}}))
    assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"
    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
    ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    assert json.loads(ws.recv(timeout=30))["type"] == "input_audio_buffer.committed"
    os.kill(pid, signal.SIGTERM)
    seen = []
    try:
        while True:
            seen.append(json.loads(ws.recv(timeout=60)))
    except Exception as e:
        code = getattr(getattr(e, "rcvd", None), "code", None)
    types = [d["type"] for d in seen]
    assert any(d["type"] == "error" and d["error"]["code"] == "server_shutting_down" for d in seen), seen
    done = [d for d in seen if d["type"] == "conversation.item.input_audio_transcription.completed"]
    assert done and "country" in done[0]["transcript"], seen
    assert code == 1001, (code, types)
print("drain ok")
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&s.addr)
        .arg(s.pid().to_string())
        .arg(shared().join("eval/jfk.wav"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("drain ok"),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert!(s.child.wait().unwrap().success());
}

/// A session opened with a key that is then removed from `api_keys_file` is closed within
/// seconds (an `invalid_api_key` error event, then close code 1008), not left open until its
/// 30-minute limit.
#[test]
fn a_revoked_key_closes_its_open_session() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let python = root().join(".venv/bin/python");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "doomed-key\nother-key\n").unwrap();
    let s = Server::start(&[("WHISPERD_API_KEYS_FILE", keys.to_str().unwrap())]);
    let script = r#"
import json, os, sys, time
import websockets.sync.client as wsc
addr, keys = sys.argv[1], sys.argv[2]
with wsc.connect(f"ws://{addr}/v1/realtime?intent=transcription",
                 additional_headers={"Authorization": "Bearer doomed-key"}) as ws:
    assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
    with open(keys + ".new", "w") as f:
        f.write("other-key\n")
    os.rename(keys + ".new", keys)
    t0 = time.monotonic()
    seen, code = [], None
    try:
        while True:
            seen.append(json.loads(ws.recv(timeout=15)))
    except Exception as e:
        code = getattr(getattr(e, "rcvd", None), "code", None)
    took = time.monotonic() - t0
    assert any(d["type"] == "error" and d["error"]["code"] == "invalid_api_key" for d in seen), seen
    assert code == 1008, (code, seen)
    assert took < 10, took
print("revoked ok")
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&s.addr)
        .arg(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("revoked ok"),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert_eq!(s.metric("whisperd_realtime_sessions_open"), 0.0);
}
