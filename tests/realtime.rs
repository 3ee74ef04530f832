//! Live transcription over `GET /v1/realtime?intent=transcription`, driven by the official
//! `openai` Python client's realtime connection (pinned in the Makefile: openai 3.57.0,
//! websockets 15.0.1) and a raw WebSocket for malformed input; every server event is validated
//! against OpenAI's spec (tests/realtime_client.py, tests/realtime_validate.py).

mod common;

use common::server::Server;
use common::*;

#[test]
fn official_openai_realtime_client_transcribes_live_audio() {
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
