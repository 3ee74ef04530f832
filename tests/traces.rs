//! OpenTelemetry traces over OTLP/HTTP: a local receiver (tests/otlp_receiver.py, decoding with
//! the `opentelemetry-proto` package) gets whisperd's spans, and the span tree of a transcription
//! is checked: the caller's `traceparent` continued, the request id on the request span, and
//! decode, mel, inference → transcribe → window → encoder + decoder, render beneath it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{header, multipart, request, Server};
use common::{read, root};

struct Receiver {
    child: Child,
    port: u16,
    out: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_receiver() -> Receiver {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/otlp_receiver.py"))
        .arg(out.path().join("spans.jsonl"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver (make venv)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("receiver said {line:?}"));
    Receiver { child, port, out }
}

fn spans(r: &Receiver) -> Vec<serde_json::Value> {
    std::fs::read_to_string(r.out.path().join("spans.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A span's role: `request` for the server span (named `METHOD route` for trace viewers),
/// otherwise its name.
fn role(s: &serde_json::Value) -> &str {
    if s["kind"] == 2 {
        "request"
    } else {
        s["name"].as_str().unwrap_or_default()
    }
}

/// The spans of `trace` once its request span (which ends last) has arrived.
fn wait_for_trace(r: &Receiver, trace: &str) -> Vec<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let found: Vec<_> = spans(r)
            .into_iter()
            .filter(|s| s["trace_id"] == trace)
            .collect();
        if found.iter().any(|s| role(s) == "request") {
            return found;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no request span for trace {trace} within 30 s; got {:?}",
            spans(r)
                .iter()
                .map(|s| s["name"].clone())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_transcription_exports_its_span_tree_over_otlp() {
    let rx = start_receiver();
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    let s = Server::start(&[
        ("WHISPERD_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let (ct, body) = multipart(
        Some(("file", &read("eval/jfk.wav"))),
        &[("model", "whisper-1"), ("response_format", "srt")],
    );
    let r = request(
        &s.addr,
        "POST",
        "/v1/audio/transcriptions",
        &[
            ("Content-Type", &ct),
            ("traceparent", &format!("00-{trace}-{caller}-01")),
            ("X-Request-Id", "req-trace-test"),
        ],
        &body,
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    assert_eq!(header(&r, "x-request-id"), Some("req-trace-test"));

    let tree = wait_for_trace(&rx, trace);
    let by_id: HashMap<&str, &serde_json::Value> = tree
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap(), s))
        .collect();
    let named =
        |n: &str| -> Vec<&serde_json::Value> { tree.iter().filter(|s| role(s) == n).collect() };
    let parent_name = |s: &serde_json::Value| -> String {
        by_id
            .get(s["parent_span_id"].as_str().unwrap())
            .map_or("<none>".into(), |p| role(p).to_string())
    };
    let names: Vec<String> = tree
        .iter()
        .map(|s| format!("{} <- {}", role(s), parent_name(s)))
        .collect();

    // The request span continues the caller's trace and carries the request id.
    let req = named("request");
    assert_eq!(req.len(), 1, "{names:?}");
    let req = req[0];
    assert_eq!(req["parent_span_id"], caller, "traceparent not continued");
    assert_eq!(req["service"], "whisperd");
    assert_eq!(req["name"], "POST /v1/audio/transcriptions");
    assert_eq!(req["attributes"]["request_id"], "req-trace-test");
    assert_eq!(req["attributes"]["http.route"], "/v1/audio/transcriptions");
    assert_eq!(req["attributes"]["http.response.status_code"], 200);

    // Where each stage hangs.
    for (child, parent) in [
        ("decode", "request"),
        ("mel", "request"),
        ("inference", "request"),
        ("transcribe", "inference"),
        ("window", "transcribe"),
        ("encoder", "window"),
        ("decoder", "window"),
        ("render", "request"),
    ] {
        let found = named(child);
        assert!(!found.is_empty(), "no {child} span: {names:?}");
        for s in found {
            assert_eq!(parent_name(s), parent, "{child}'s parent: {names:?}");
        }
    }
    // Decoder steps are aggregated per window, never a span per token.
    let windows = named("window").len();
    assert_eq!(named("decoder").len(), windows, "{names:?}");
    let tokens: i64 = named("decoder")
        .iter()
        .map(|d| d["attributes"]["tokens"].as_i64().unwrap_or(0))
        .sum();
    assert!(tokens > 10, "decoder spans without token counts: {names:?}");
    assert!(
        tree.len() < 40,
        "too many spans for 11 s of audio: {names:?}"
    );

    // A streamed request's span lasts until its last event: it encloses the transcription.
    let streamed = "0af7651916cd43dd8448eb211c80319c";
    let (ct, body) = multipart(
        Some((
            "file",
            &read("eval/librispeech/test-clean/237-134500-0001.flac"),
        )),
        &[("stream", "true")],
    );
    let r = request(
        &s.addr,
        "POST",
        "/transcribe",
        &[
            ("Content-Type", &ct),
            ("traceparent", &format!("00-{streamed}-{caller}-01")),
        ],
        &body,
    );
    assert_eq!(r.0, 200);
    assert!(String::from_utf8_lossy(&r.2).contains("event: transcript"));
    let tree = wait_for_trace(&rx, streamed);
    let end = |n: &str| {
        tree.iter()
            .find(|s| role(s) == n)
            .and_then(|s| s["end_ns"].as_u64())
            .unwrap_or_else(|| panic!("no {n} span in the streamed trace"))
    };
    assert!(
        end("request") >= end("transcribe"),
        "the streamed request's span ended before its transcription: {:?}",
        tree.iter()
            .map(|s| format!("{} {}..{}", role(s), s["start_ns"], s["end_ns"]))
            .collect::<Vec<_>>()
    );

    // Without a traceparent a request starts its own trace; probes are not traced.
    assert_eq!(s.get("/health").0, 200);
    assert_eq!(s.get("/v1/models").0, 200);
    let t0 = Instant::now();
    loop {
        let all = spans(&rx);
        let models: Vec<_> = all
            .iter()
            .filter(|s| s["attributes"]["http.route"] == "/v1/models")
            .collect();
        if let Some(m) = models.first() {
            assert_eq!(m["parent_span_id"], "", "a new trace has no parent");
            assert_ne!(m["trace_id"], trace);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no /v1/models span");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !spans(&rx)
            .iter()
            .any(|s| s["attributes"]["http.route"] == "/health"),
        "probes must not be traced"
    );
}
