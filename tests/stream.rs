//! Streamed transcripts (server-sent events) from a real server: segments arrive while the rest
//! of the file is still decoding, the streamed text equals the plain response, a cache hit
//! streams at once, errors before the stream are plain 4xx and errors after it are events.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::read;
use common::server::{
    header, json, metric, multipart, parse_response, send_request, Response, Server,
};

/// One server-sent event: its `event:` name (if any) and its data, parsed.
#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: serde_json::Value,
}

fn parse_events(body: &str) -> Vec<Event> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter(|block| !block.starts_with(':')) // keep-alive comments
        .map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {block}"));
            Event { name, data }
        })
        .collect()
}

/// A streamed POST to the server at `addr`: the response, and how long after sending the first
/// `needle` came in (`on_first` runs at that moment).
fn post_stream(
    addr: &str,
    path: &str,
    file: &[u8],
    fields: &[(&str, &str)],
    needle: &str,
    mut on_first: impl FnMut(),
) -> (Response, Option<Duration>) {
    let (ct, body) = multipart(Some(("file", file)), fields);
    let t0 = Instant::now();
    let mut stream = send_request(addr, "POST", path, &[("Content-Type", &ct)], &body);
    let mut raw = Vec::new();
    let mut first = None;
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first.is_none() && String::from_utf8_lossy(&raw).contains(needle) {
            first = Some(t0.elapsed());
            on_first();
        }
    }
    (parse_response(raw), first)
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.2).into_owned()
}

#[test]
fn transcribe_streams_segments_while_the_rest_decodes() {
    // One transcription at a time and a 3-s queue limit: a request queued behind the long file
    // expires there, after its stream has started.
    let s = Server::start(&[
        ("WHISPERD_BATCH_SIZE", "1"),
        ("WHISPERD_REQUEST_TIMEOUT_S", "3"),
    ]);
    let long = read("eval/longform/librispeech-test-clean-237-134500-full-chapter.wav");
    let addr = s.addr.clone();
    let long2 = long.clone();
    let streamed = std::thread::spawn(move || {
        let fields = [("response_format", "verbose_json"), ("stream", "true")];
        // when the first segment arrives, has the job finished?
        let mut ok_then = None;
        let r = post_stream(
            &addr,
            "/transcribe",
            &long2,
            &fields,
            "event: segment",
            || {
                ok_then = Some(metric(
                    &addr,
                    "whisperd_inference_jobs_total{result=\"ok\"}",
                ))
            },
        );
        (r, ok_then)
    });
    // Queue a short stream behind the long job; it expires in the queue after 3 s.
    s.wait_for_metric(
        "whisperd_queue_wait_seconds_count",
        1.0,
        Duration::from_secs(60),
        "the long request never reached inference",
    );
    let jfk = read("eval/jfk.wav");
    let (expired, _) = post_stream(
        &s.addr,
        "/transcribe",
        &jfk,
        &[("stream", "true")],
        "event: error",
        || {},
    );
    assert_eq!(expired.0, 200, "{}", body(&expired));
    let events = parse_events(&body(&expired));
    let last = events.last().expect("events");
    assert_eq!(last.name.as_deref(), Some("error"), "{events:?}");
    assert!(
        last.data["error"]["message"]
            .as_str()
            .unwrap()
            .contains("waited too long"),
        "{:?}",
        last.data
    );

    let ((r, first), ok_then) = streamed.join().unwrap();
    assert_eq!(
        ok_then,
        Some(0.0),
        "the first segment came before the job finished"
    );
    assert_eq!(r.0, 200, "{}", body(&r));
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&r, "x-cache"), Some("miss"));
    let events = parse_events(&body(&r));
    let segments: Vec<&Event> = events
        .iter()
        .filter(|e| e.name.as_deref() == Some("segment"))
        .collect();
    assert!(segments.len() > 20, "{} segments", segments.len());
    let last = events.last().unwrap();
    assert_eq!(last.name.as_deref(), Some("transcript"));
    let joined: String = segments
        .iter()
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined.trim(), last.data["text"].as_str().unwrap());
    for (i, e) in segments.iter().enumerate() {
        assert_eq!(e.data["id"], i, "segments in order, as in verbose_json");
        assert_eq!(e.data, last.data["segments"][i]);
    }
    let first = first.expect("a segment event");
    eprintln!("first segment event after {first:?}");

    // The plain request for the same file is a cache hit with the same text, and a stream of
    // it comes at once.
    let plain = s.post_form(
        "/transcribe",
        Some(("file", &long)),
        &[("response_format", "verbose_json")],
        &[],
    );
    assert_eq!(header(&plain, "x-cache"), Some("hit"));
    assert_eq!(json(&plain)["text"], last.data["text"]);
    let (hit, _) = post_stream(
        &s.addr,
        "/transcribe",
        &long,
        &[("response_format", "verbose_json"), ("stream", "true")],
        "event: transcript",
        || {},
    );
    assert_eq!(header(&hit, "x-cache"), Some("hit"));
    let again = parse_events(&body(&hit));
    assert_eq!(again.len(), events.len());
    assert_eq!(again.last().unwrap().data, last.data);
}

#[test]
fn openai_stream_events_and_errors() {
    let s = Server::start(&[]);
    let jfk = read("eval/jfk.wav");
    let v1 = "/v1/audio/transcriptions";
    let (r, _) = post_stream(
        &s.addr,
        v1,
        &jfk,
        &[("model", "whisper-1"), ("stream", "true")],
        "transcript.text.done",
        || {},
    );
    assert_eq!(r.0, 200, "{}", body(&r));
    let events = parse_events(&body(&r));
    assert!(events.iter().all(|e| e.name.is_none()), "data-only events");
    let (deltas, done) = events.split_at(events.len() - 1);
    assert!(!deltas.is_empty());
    let mut joined = String::new();
    for d in deltas {
        assert_eq!(d.data["type"], "transcript.text.delta");
        joined.push_str(d.data["delta"].as_str().unwrap());
    }
    let done = &done[0].data;
    assert_eq!(done["type"], "transcript.text.done");
    assert_eq!(joined, done["text"].as_str().unwrap());
    assert_eq!(done["usage"]["type"], "tokens");
    assert_eq!(done["usage"]["input_token_details"]["audio_tokens"], 550);
    let plain = s.post_form(v1, Some(("file", &jfk)), &[("model", "whisper-1")], &[]);
    assert_eq!(json(&plain)["text"], done["text"]);

    // logprobs ride on the deltas and the done event
    let (r, _) = post_stream(
        &s.addr,
        v1,
        &jfk,
        &[
            ("model", "whisper-1"),
            ("stream", "true"),
            ("include[]", "logprobs"),
        ],
        "transcript.text.done",
        || {},
    );
    let events = parse_events(&body(&r));
    assert!(events[0].data["logprobs"].as_array().unwrap().len() > 3);
    assert!(
        events.last().unwrap().data["logprobs"]
            .as_array()
            .unwrap()
            .len()
            > 10
    );

    // Requests that cannot be streamed, or fail before the stream starts, are plain 4xx.
    for (path, fields) in [
        (
            v1,
            vec![("stream", "true"), ("response_format", "verbose_json")],
        ),
        (v1, vec![("stream", "maybe")]),
        ("/v1/audio/translations", vec![("stream", "true")]),
        (
            "/transcribe",
            vec![("stream", "true"), ("response_format", "srt")],
        ),
    ] {
        let r = s.post_form(path, Some(("file", &jfk)), &fields, &[]);
        assert_eq!(r.0, 400, "{path} {fields:?}: {}", body(&r));
        assert_eq!(json(&r)["error"]["param"], "stream");
    }
    let r = s.post_form(
        v1,
        Some(("file", b"definitely not audio".as_slice())),
        &[("stream", "true")],
        &[],
    );
    assert_eq!(r.0, 400, "{}", body(&r));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
}

#[test]
fn a_client_that_leaves_a_stream_cancels_the_job() {
    let s = Server::start(&[]);
    let long = read("eval/longform/librispeech-test-clean-237-134500-full-chapter.wav");
    let (ct, body) = multipart(Some(("file", &long)), &[("stream", "true")]);
    let mut stream = send_request(
        &s.addr,
        "POST",
        "/transcribe",
        &[("Content-Type", &ct)],
        &body,
    );
    // wait for the first segment, then hang up
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("event: segment") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    s.wait_for_metric(
        "whisperd_inference_jobs_total{result=\"cancelled\"}",
        1.0,
        Duration::from_secs(30),
        "the job kept running after its only client left",
    );
    assert_eq!(
        s.metric("whisperd_inference_jobs_total{result=\"ok\"}"),
        0.0
    );
    assert_eq!(s.metric("whisperd_streams_open"), 0.0);
    assert!(s.metric("whisperd_stream_first_text_seconds_count") >= 1.0);
}
