//! The real server on an ephemeral port with the real tiny.en model, over real HTTP.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use common::*;

const JFK_TEXT: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

/// `bytes` of a WAV with one sample changed, so the upload is new to the cache but sounds the same.
fn distinct(bytes: &[u8], n: u16) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let i = b.len() - 2;
    b[i..].copy_from_slice(&n.to_le_bytes());
    b
}

#[test]
fn every_endpoint_and_format() {
    let s = Server::start(&[]);
    assert_eq!(s.get("/health").0, 200);
    let ready = s.get("/ready");
    assert_eq!(
        (ready.0, json(&ready)["ready"].as_bool()),
        (200, Some(true))
    );
    let models = json(&s.get("/v1/models"));
    assert_eq!(models["data"][0]["id"], "whisper-tiny.en");
    let jfk = read("eval/jfk.wav");

    let r = s.post_form("/transcribe", Some(("file", &jfk)), &[], &[]);
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    assert!(header(&r, "x-request-id").is_some_and(|v| v.starts_with("req_")));
    let v = json(&r);
    assert!(wer(JFK_TEXT, v["text"].as_str().unwrap()) < 0.1);
    assert_eq!(v["language"], "en");
    assert_eq!(v["duration"], 11.0);
    assert!(!v["segments"].as_array().unwrap().is_empty());

    // `audio` is accepted as the file field; options also as query parameters.
    let r = s.post_form(
        "/transcribe?response_format=text",
        Some(("audio", &jfk)),
        &[],
        &[],
    );
    assert_eq!(r.0, 200);
    assert!(header(&r, "content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(String::from_utf8_lossy(&r.2).contains("fellow Americans"));

    for (fmt, starts) in [
        ("srt", "1\n00:00:00,000 --> "),
        ("vtt", "WEBVTT\n\n00:00:00.000 --> "),
        ("tsv", "start\tend\ttext\n0\t"),
    ] {
        let r = s.post_form(
            "/transcribe",
            Some(("file", &jfk)),
            &[("response_format", fmt)],
            &[],
        );
        assert_eq!(r.0, 200);
        assert!(
            String::from_utf8_lossy(&r.2).starts_with(starts),
            "{fmt}: {}",
            String::from_utf8_lossy(&r.2)
        );
    }
    let r = s.post_form(
        "/transcribe",
        Some(("file", &jfk)),
        &[("response_format", "json"), ("timestamps", "false")],
        &[],
    );
    assert_eq!(json(&r)["segments"].as_array().unwrap().len(), 1);

    // OpenAI contract: json is {"text", "usage"} only; verbose_json has OpenAI's fields.
    let r = s.post_form(
        "/v1/audio/transcriptions",
        Some(("file", &jfk)),
        &[("model", "whisper-1")],
        &[],
    );
    let v = json(&r);
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["text", "usage"]
    );
    let r = s.post_form(
        "/v1/audio/transcriptions",
        Some(("file", &jfk)),
        &[
            ("model", "whisper-1"),
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "segment"),
        ],
        &[],
    );
    let v = json(&r);
    assert_eq!(
        (v["task"].as_str(), v["language"].as_str()),
        (Some("transcribe"), Some("english"))
    );
    for key in [
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    ] {
        assert!(v["segments"][0].get(key).is_some(), "segment lacks {key}");
    }
    // English-only model: translation transcribes (English either way).
    let r = s.post_form(
        "/v1/audio/translations",
        Some(("file", &jfk)),
        &[("model", "whisper-1"), ("response_format", "text")],
        &[],
    );
    assert_eq!(r.0, 200);
    assert!(String::from_utf8_lossy(&r.2).contains("your country"));

    let metrics = String::from_utf8(s.get("/metrics").2).unwrap();
    for name in [
        "whisperd_http_requests_total",
        "whisperd_http_request_duration_seconds",
        "whisperd_queue_wait_seconds",
        "whisperd_inference_seconds",
        "whisperd_audio_seconds_total",
        "whisperd_realtime_factor",
        "whisperd_decoded_tokens_total",
        "whisperd_queue_depth",
        "whisperd_in_flight_requests",
        "whisperd_cache_hits_total",
        "whisperd_cache_misses_total",
        "whisperd_cache_entries",
        "whisperd_cache_bytes",
        "whisperd_model_load_seconds",
        "whisperd_build_info",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
    s.wait_for_log("transcription served", Duration::from_secs(5));
}

/// Word timestamps on both APIs: OpenAI's `timestamp_granularities[]` shapes, `/transcribe`'s
/// per-segment words with probabilities, subtitles laid out by words, and the cache telling a
/// request with words from one without.
#[test]
fn word_timestamps_on_every_interface() {
    let s = Server::start(&[]);
    let jfk = read("eval/jfk.wav");
    let v1 = |fields: &[(&str, &str)]| {
        let mut f = vec![("model", "whisper-1"), ("response_format", "verbose_json")];
        f.extend_from_slice(fields);
        let r = s.post_form("/v1/audio/transcriptions", Some(("file", &jfk)), &f, &[]);
        assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
        json(&r)
    };
    let check_words = |words: &serde_json::Value| {
        let w = words.as_array().expect("words");
        assert_eq!(w.len(), 22, "{words}");
        assert_eq!(w[0]["word"], "And");
        assert_eq!(w[4]["word"], "Americans");
        let mut last = 0.0;
        for x in w {
            let (a, b) = (x["start"].as_f64().unwrap(), x["end"].as_f64().unwrap());
            assert!(last <= a + 1e-9 && a <= b && b <= 11.0, "{x}");
            last = b;
        }
        // "Americans" is around 1.8–2.3 s in jfk.wav (faster-whisper: 1.76–2.28).
        let am = &w[4];
        assert!((am["start"].as_f64().unwrap() - 1.76).abs() < 0.1, "{am}");
    };
    // Words only: top-level words (word, start, end), no segments.
    let v = v1(&[("timestamp_granularities[]", "word")]);
    check_words(&v["words"]);
    assert!(v.get("segments").is_none(), "{v}");
    assert_eq!(
        v["words"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["end", "start", "word"]
    );
    // Both: segments (without per-segment words) and words.
    let v = v1(&[
        ("timestamp_granularities[]", "segment"),
        ("timestamp_granularities[]", "word"),
    ]);
    check_words(&v["words"]);
    let segs = v["segments"].as_array().unwrap();
    assert!(!segs.is_empty() && segs[0].get("words").is_none());

    // /transcribe: each segment carries its words with probabilities.
    let r = s.post_form(
        "/transcribe",
        Some(("file", &jfk)),
        &[("word_timestamps", "true")],
        &[],
    );
    assert_eq!(r.0, 200);
    assert_eq!(header(&r, "x-cache"), Some("miss"));
    let v = json(&r);
    let mut all = Vec::new();
    for seg in v["segments"].as_array().unwrap() {
        let w = seg["words"].as_array().expect("segment words");
        assert_eq!(seg["start"], w[0]["start"]);
        assert_eq!(seg["end"], w[w.len() - 1]["end"]);
        for x in w {
            let p = x["probability"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p), "{x}");
            all.push(x["word"].as_str().unwrap().trim().to_string());
        }
    }
    assert_eq!(all.len(), 22);
    // Without the option: no words, and not the cached transcript with words.
    let r = s.post_form("/transcribe", Some(("file", &jfk)), &[], &[]);
    assert_eq!(header(&r, "x-cache"), Some("miss"));
    assert!(json(&r)["segments"][0].get("words").is_none());

    // Subtitles by words: lines of at most 20 characters, one line per cue.
    let r = s.post_form(
        "/transcribe",
        Some(("file", &jfk)),
        &[
            ("response_format", "srt"),
            ("max_line_width", "20"),
            ("max_line_count", "1"),
        ],
        &[],
    );
    assert_eq!(r.0, 200);
    let srt = String::from_utf8_lossy(&r.2).to_string();
    let cues: Vec<&str> = srt
        .split(
            "

",
        )
        .filter(|c| !c.trim().is_empty())
        .collect();
    assert!(cues.len() >= 4, "{srt}");
    for c in &cues {
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 3, "one text line per cue: {c:?}");
        assert!(lines[2].chars().count() <= 20, "{c:?}");
    }
    // Highlighted words: a cue per word, the word underlined.
    let r = s.post_form(
        "/v1/audio/transcriptions",
        Some(("file", &jfk)),
        &[
            ("model", "whisper-1"),
            ("response_format", "vtt"),
            ("highlight_words", "true"),
        ],
        &[],
    );
    let vtt = String::from_utf8_lossy(&r.2).to_string();
    assert!(vtt.contains("<u>Americans</u>"), "{vtt}");
    assert!(vtt.matches("<u>").count() >= 22, "{vtt}");
}

/// OpenAI conformance fields (issue #21) on the wire: usage, logprobs, languages[], keywords[],
/// the model list and `/detect-language`. (Schemas: tests/openai_client.py and .mjs.)
#[test]
fn openai_fields_usage_logprobs_languages_keywords_models() {
    let s = Server::start(&[]);
    let jfk = read("eval/jfk.wav");
    let post =
        |path: &str, fields: &[(&str, &str)]| s.post_form(path, Some(("file", &jfk)), fields, &[]);
    let v = json(&post(
        "/v1/audio/transcriptions",
        &[("model", "whisper-1"), ("include[]", "logprobs")],
    ));
    assert_eq!(
        v["usage"],
        serde_json::json!({"type": "duration", "seconds": 11.0})
    );
    let lp = v["logprobs"].as_array().expect("logprobs");
    let joined: String = lp.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(joined.trim(), v["text"].as_str().unwrap());
    for t in lp {
        let l = t["logprob"].as_f64().unwrap();
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert!(
            l <= 0.0 && bytes == t["token"].as_str().unwrap().as_bytes(),
            "{t}"
        );
    }
    // logprobs only with json; unknown include values are refused.
    let r = post(
        "/v1/audio/transcriptions",
        &[("include[]", "logprobs"), ("response_format", "text")],
    );
    assert_eq!(
        (r.0, json(&r)["error"]["param"].as_str()),
        (400, Some("include[]"))
    );
    let r = post("/v1/audio/transcriptions", &[("include[]", "everything")]);
    assert_eq!(r.0, 400);
    // languages[]: an English-only model takes lists with en, refuses others by name.
    let r = post(
        "/v1/audio/transcriptions",
        &[("languages[]", "en"), ("languages[]", "de")],
    );
    assert_eq!(r.0, 200);
    for bad in ["xx", "de"] {
        let r = post("/v1/audio/transcriptions", &[("languages[]", bad)]);
        assert_eq!(
            (r.0, json(&r)["error"]["param"].as_str()),
            (400, Some("languages"))
        );
    }
    // keywords[] is accepted on both APIs and covered by the cache key.
    let r = post("/transcribe", &[("keywords", "Kennedy,Americans")]);
    assert_eq!((r.0, header(&r, "x-cache")), (200, Some("miss")));
    let r = post("/transcribe", &[]);
    assert_eq!(header(&r, "x-cache"), Some("miss"));
    // Models: the model and its aliases (OpenAI's names) are listed and can be fetched; an
    // unknown one is a 404.
    let ids = s.model_ids();
    assert_eq!(
        ids,
        vec![
            "whisper-tiny.en",
            "whisper-1",
            "gpt-4o-transcribe",
            "gpt-4o-mini-transcribe",
            "gpt-transcribe"
        ]
    );
    let m = s.get("/v1/models/whisper-1");
    assert_eq!((m.0, json(&m)["object"].as_str()), (200, Some("model")));
    assert_eq!(s.get("/v1/models/gpt-9").0, 404);
    // Language identification: an English-only model knows only English.
    let r = post("/detect-language", &[]);
    assert_eq!(r.0, 200);
    let v = json(&r);
    assert_eq!(
        (v["language"].as_str(), v["probability"].as_f64()),
        (Some("en"), Some(1.0))
    );
    assert_eq!(v["top"][0]["language"], "en");
    let r = s.post_form("/detect-language", None, &[], &[]);
    assert_eq!(r.0, 400);
}

#[test]
fn cache_hit_and_single_flight() {
    let s = Server::start(&[]);
    let flac = read("eval/formats/jfk.flac");
    let r1 = s.post_form(
        "/transcribe",
        Some(("file", &flac)),
        &[],
        &[("X-Request-Id", "test-123")],
    );
    assert_eq!(header(&r1, "x-cache"), Some("miss"));
    assert_eq!(header(&r1, "x-request-id"), Some("test-123"));
    let r2 = s.post_form("/transcribe", Some(("file", &flac)), &[], &[]);
    assert_eq!(header(&r2, "x-cache"), Some("hit"));
    assert_eq!(r1.2, r2.2);
    // Other options are another cache entry.
    let r3 = s.post_form(
        "/transcribe",
        Some(("file", &flac)),
        &[("timestamps", "false")],
        &[],
    );
    assert_eq!(header(&r3, "x-cache"), Some("miss"));
    assert!(s.metric("whisperd_cache_hits_total") >= 1.0);

    // Two identical uploads at once: one inference.
    let jobs_before = s.metric("whisperd_inference_jobs_total{result=\"ok\"}");
    let ogg = read("eval/formats/jfk.ogg");
    let results: Vec<Response> = [&ogg, &ogg]
        .iter()
        .map(|f| post_in_background(&s, f, &[]))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(results.iter().all(|r| r.0 == 200));
    assert_eq!(results[0].2, results[1].2);
    assert_eq!(
        s.metric("whisperd_inference_jobs_total{result=\"ok\"}") - jobs_before,
        1.0,
        "identical concurrent uploads ran twice"
    );
}

#[test]
fn every_bad_input_gets_a_clear_4xx() {
    let s = Server::start(&[
        ("WHISPERD_MAX_UPLOAD_MB", "1"),
        ("WHISPERD_MAX_AUDIO_S", "8"),
    ]);
    let check = |r: Response, status: u16, needle: &str, param: Option<&str>| {
        assert_eq!(r.0, status, "{}", String::from_utf8_lossy(&r.2));
        let v = json(&r);
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            msg.to_lowercase().contains(needle),
            "`{msg}` lacks `{needle}`"
        );
        assert!(
            !msg.contains("/work") && !msg.contains(".rs:"),
            "leaks internals: {msg}"
        );
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p);
        }
    };
    let wav = read("eval/jfk.wav");
    let short = read("eval/librispeech/test-clean/237-134500-0001.flac");
    check(
        s.post_form("/transcribe", None, &[("language", "en")], &[]),
        400,
        "no audio",
        Some("file"),
    );
    check(
        s.post_form("/transcribe", Some(("file", b"")), &[], &[]),
        400,
        "empty",
        Some("file"),
    );
    check(
        s.post_form(
            "/transcribe",
            Some(("file", b"just some text, definitely not audio")),
            &[],
            &[],
        ),
        400,
        "not a recognised audio file",
        Some("file"),
    );
    // Beam search settings out of range or not numbers, on both APIs.
    for (path, field, value) in [
        ("/transcribe", "beam_size", "0"),
        ("/transcribe", "beam_size", "17"),
        ("/v1/audio/transcriptions", "beam_size", "five"),
        ("/v1/audio/transcriptions", "patience", "0"),
        ("/transcribe", "length_penalty", "long"),
    ] {
        check(
            s.post_form(path, Some(("file", &short)), &[(field, value)], &[]),
            400,
            field,
            Some(field),
        );
    }
    // A 6-s WAV cut in half (jfk's declared 11 s is over this server's 8-s limit, which the
    // declared length now answers first with a 413).
    let six = wav_bytes(&noise(16_000 * 6, 0.1), 16_000);
    check(
        s.post_form(
            "/transcribe",
            Some(("file", &six[..six.len() / 2])),
            &[],
            &[],
        ),
        400,
        "truncated",
        Some("file"),
    );
    check(
        s.post_form(
            "/transcribe",
            Some(("file", &wav[..wav.len() / 2])),
            &[],
            &[],
        ),
        413,
        "over the limit",
        Some("file"),
    );
    let mut gsm = wav_bytes(&noise(1600, 0.1), 8000);
    gsm[20..22].copy_from_slice(&0x0031u16.to_le_bytes());
    check(
        s.post_form("/transcribe", Some(("file", &gsm)), &[], &[]),
        415,
        "gsm",
        Some("file"),
    );
    // Bad options on a valid upload: (endpoint, field, value, message fragment, param).
    let bad_options = [
        (
            "/transcribe",
            "response_format",
            "docx",
            "unknown format",
            Some("response_format"),
        ),
        (
            "/v1/audio/transcriptions",
            "response_format",
            "tsv",
            "response_format",
            Some("response_format"),
        ),
        (
            "/transcribe",
            "language",
            "xx",
            "unknown language",
            Some("language"),
        ),
        (
            "/transcribe",
            "temperature",
            "7",
            "temperature",
            Some("temperature"),
        ),
        ("/transcribe", "task", "summarize", "task", Some("task")),
        (
            "/v1/audio/transcriptions",
            "timestamp_granularities[]",
            "sentence",
            "granularity",
            Some("timestamp_granularities[]"),
        ),
        (
            "/transcribe",
            "word_timestamps",
            "maybe",
            "true or false",
            Some("word_timestamps"),
        ),
        (
            "/transcribe",
            "max_line_width",
            "0",
            "max_line_width",
            Some("max_line_width"),
        ),
    ];
    for (path, field, value, needle, param) in bad_options {
        check(
            s.post_form(path, Some(("file", &short)), &[(field, value)], &[]),
            400,
            needle,
            param,
        );
    }
    check(
        request(
            &s.addr,
            "POST",
            "/transcribe",
            &[("Content-Type", "application/json")],
            b"{}",
        ),
        400,
        "multipart",
        None,
    );
    check(
        s.post_form("/transcribe", Some(("file", &wav)), &[], &[]),
        413,
        "over the limit",
        Some("file"),
    ); // 11 s > 8 s
    let big = vec![0u8; 1_200_000];
    check(
        s.post_form("/transcribe", Some(("file", &big)), &[], &[]),
        413,
        "upload over the limit",
        Some("file"),
    );
    check(s.get("/nope"), 404, "no such endpoint", None);
    // Still serving after all of that.
    assert_eq!(
        s.post_form("/transcribe", Some(("file", &short)), &[], &[])
            .0,
        200
    );
}

#[test]
fn api_keys_and_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# one per line\nfile-key\n").unwrap();
    let s = Server::start(&[
        ("WHISPERD_API_KEYS", "k1"),
        ("WHISPERD_API_KEYS_FILE", keys.to_str().unwrap()),
        ("WHISPERD_RATE_LIMIT_PER_MINUTE", "3"),
    ]);
    for public in ["/health", "/ready", "/metrics", "/openapi.json", "/info"] {
        assert_eq!(s.get(public).0, 200, "{public}");
    }
    assert_eq!(json(&s.get("/info"))["features"]["auth"], true);
    let r = s.get("/v1/models");
    assert_eq!(r.0, 401);
    assert_eq!(json(&r)["error"]["code"], "invalid_api_key");
    assert_eq!(
        s.get_with("/v1/models", &[("Authorization", "Bearer wrong")])
            .0,
        401
    );
    let short = read("eval/librispeech/test-clean/237-134500-0001.flac");
    assert_eq!(
        s.post_form(
            "/transcribe",
            Some(("file", &short)),
            &[],
            &[("Authorization", "Bearer k1")]
        )
        .0,
        200
    );
    assert_eq!(
        s.get_with("/v1/models", &[("Authorization", "Bearer file-key")])
            .0,
        200
    );
    // Third and fourth request of key k1 within the minute: the limit is 3.
    assert_eq!(
        s.get_with("/v1/models", &[("Authorization", "Bearer k1")])
            .0,
        200
    );
    assert_eq!(
        s.get_with("/v1/models", &[("Authorization", "Bearer k1")])
            .0,
        200
    );
    let r = s.get_with("/v1/models", &[("Authorization", "Bearer k1")]);
    assert_eq!(r.0, 429);
    assert!(header(&r, "retry-after").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
}

/// `model` picks by name: the model's own or an alias (OpenAI's names by default); any other
/// name is OpenAI's 404 `model_not_found`, on every route that takes a model.
#[test]
fn model_names_aliases_and_unknown_models() {
    let s = Server::start(&[]);
    let listed: Vec<String> = json(&s.get("/v1/models"))["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let own = listed[0].clone();
    assert!(own.contains("tiny"), "{listed:?}");
    for alias in [
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-transcribe",
    ] {
        assert!(listed.iter().any(|m| m == alias), "{alias}: {listed:?}");
        assert_eq!(s.get(&format!("/v1/models/{alias}")).0, 200);
    }
    let wav = read("eval/jfk.wav");
    for name in [own.as_str(), "gpt-4o-mini-transcribe", "whisper-1"] {
        let r = s.post_form(
            "/v1/audio/transcriptions",
            Some(("file", &wav)),
            &[("model", name)],
            &[],
        );
        assert_eq!(r.0, 200, "{name}");
    }
    assert_eq!(
        s.post_form("/transcribe", Some(("file", &wav)), &[], &[]).0,
        200
    );
    for (path, fields) in [
        (
            "/v1/audio/transcriptions",
            vec![("model", "gpt-5-transcribe")],
        ),
        ("/v1/audio/translations", vec![("model", "whisper-2")]),
        ("/transcribe", vec![("model", "large-v3")]),
        ("/detect-language", vec![("model", "large-v3")]),
        ("/v1/jobs", vec![("model", "large-v3")]),
    ] {
        let r = s.post_form(path, Some(("file", &wav)), &fields, &[]);
        assert_eq!(r.0, 404, "{path}: {}", String::from_utf8_lossy(&r.2));
        let e = json(&r);
        assert_eq!(e["error"]["code"], "model_not_found", "{path}");
        assert_eq!(e["error"]["param"], "model", "{path}");
    }
    assert_eq!(s.get("/v1/models/large-v3").0, 404);
}

/// The chart's Grafana dashboard and alert rules use only metrics `/metrics` really exports
/// (`scripts/check_dashboard.py` parses every PromQL expression in them).
#[test]
fn dashboard_and_alerts_reference_exported_metrics() {
    let s = Server::start(&[]);
    let wav = read("eval/jfk.wav");
    assert_eq!(
        s.post_form("/transcribe", Some(("file", &wav)), &[], &[]).0,
        200
    );
    assert_eq!(s.post_form("/transcribe", None, &[], &[]).0, 400);
    let metrics = s.get("/metrics").2;
    let mut child = std::process::Command::new(root().join(".venv/bin/python"))
        .current_dir(root())
        .args(["scripts/check_dashboard.py", "--metrics", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/check_dashboard.py (make venv)");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&metrics).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("dashboard ok"),
        "{text}"
    );
}

#[test]
fn api_keys_file_is_reloaded_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "old-key\n").unwrap();
    let s = Server::start(&[("WHISPERD_API_KEYS_FILE", keys.to_str().unwrap())]);
    let models = |key: &str| {
        s.get_with("/v1/models", &[("Authorization", &format!("Bearer {key}"))])
            .0
    };
    assert_eq!(models("old-key"), 200);
    assert_eq!(models("new-key"), 401);
    assert_eq!(s.metric("whisperd_api_keys"), 1.0);

    // A transcription admitted with the old key is under way when the key is removed.
    // The chapter's first 90 s (16-bit mono, a 44-byte header): long enough to outlast the swap.
    let chapter = read("eval/longform/librispeech-test-clean-237-134500-full-chapter.wav");
    let samples: Vec<f32> = chapter[44..44 + 90 * 16_000 * 2]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect();
    let long = wav_bytes(&samples, 16_000);
    let (ct, body) = multipart(Some(("file", &long)), &[]);
    let addr = s.addr.clone();
    let in_flight = std::thread::spawn(move || {
        request(
            &addr,
            "POST",
            "/transcribe",
            &[("Content-Type", &ct), ("Authorization", "Bearer old-key")],
            &body,
        )
    });
    s.wait_for_metric(
        "whisperd_in_flight_requests",
        1.0,
        Duration::from_secs(30),
        "the long request to start",
    );

    // Replaced the way an editor or a Kubernetes Secret update does: write a new file, rename.
    let tmp = dir.path().join("keys.new");
    std::fs::write(&tmp, "# rotated\nnew-key\n").unwrap();
    std::fs::rename(&tmp, &keys).unwrap();
    let t0 = Instant::now();
    while models("new-key") != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the added key did not work within 10 s\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(models("old-key"), 401, "a removed key keeps working");
    assert!(
        !in_flight.is_finished(),
        "the request finished before the keys changed: the test proves nothing"
    );
    let r = in_flight.join().unwrap();
    assert_eq!(
        r.0,
        200,
        "the request in flight was dropped: {}",
        String::from_utf8_lossy(&r.2)
    );
    assert!(s.metric("whisperd_api_key_reloads_total") >= 1.0);

    // SIGHUP re-reads at once (the 2-s poll may not have come round yet).
    std::fs::write(&tmp, "third-key\n").unwrap();
    std::fs::rename(&tmp, &keys).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let t0 = Instant::now();
    while models("third-key") != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(models("new-key"), 401);
    // The log line follows the switch (and reaches us through a reader thread): wait for it. In
    // the rare case the 2-s poll ran between the rename and the signal, the signal still shows
    // in the log as a re-read that found nothing new.
    let t0 = Instant::now();
    while !(s.log().contains("by_signal=true")
        || s.log().contains("SIGHUP: API keys file unchanged"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the reload came from the 2-s poll, not SIGHUP:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.get("/health").0, 200, "SIGHUP must not stop the server");

    // A broken file keeps the keys in force, and says so.
    std::fs::remove_file(&keys).unwrap();
    let t0 = Instant::now();
    while !s.log().contains("API keys file not reloaded") {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", s.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(models("third-key"), 200);
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    // One transcription at a time, so requests really queue.
    let s = Server::start(&[("WHISPERD_QUEUE_SIZE", "1"), ("WHISPERD_BATCH_SIZE", "1")]);
    let wav = read("eval/jfk.wav");
    let handles: Vec<_> = (0..6)
        .map(|i| post_in_background(&s, &distinct(&wav, 100 + i), &[]))
        .collect();
    let results: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<&Response> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok + busy.len(), 6, "only 200 or 503 expected");
    assert!(ok >= 1 && !busy.is_empty(), "{ok} ok, {} busy", busy.len());
    assert!(busy.iter().all(|r| header(r, "retry-after").is_some()
        && json(r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("busy")));
}

/// POST `file` to /transcribe from another thread.
fn post_in_background(
    s: &Server,
    file: &[u8],
    fields: &[(&str, &str)],
) -> std::thread::JoinHandle<Response> {
    let (ct, body) = multipart(Some(("file", file)), fields);
    let addr = s.addr.clone();
    std::thread::spawn(move || {
        request(
            &addr,
            "POST",
            "/transcribe",
            &[("Content-Type", &ct)],
            &body,
        )
    })
}

/// Send the 200-s chapter from another thread and return once the server is working on it.
fn start_long_request(s: &Server) -> std::thread::JoinHandle<Response> {
    let long = read("eval/longform/librispeech-test-clean-237-134500-full-chapter.wav");
    let h = post_in_background(s, &long, &[("response_format", "text")]);
    let t0 = std::time::Instant::now();
    while s.metric("whisperd_in_flight_requests") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the long request never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Decoding and speech detection done, inference under way: the job has left the queue.
    s.wait_for_metric(
        "whisperd_queue_wait_seconds_count",
        1.0,
        Duration::from_secs(60),
        "the long request never reached inference",
    );
    h
}

#[test]
fn sigterm_lets_the_request_in_flight_finish() {
    let mut s = Server::start(&[("WHISPERD_DRAIN_TIMEOUT_S", "60")]);
    let h = start_long_request(&s);
    // The job is running: ask the server to stop.
    let status = Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let r = h.join().unwrap();
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    assert!(String::from_utf8_lossy(&r.2).split_whitespace().count() > 300);
    let code = s.child.wait().unwrap();
    assert!(code.success(), "exit {code:?}\n{}", s.log());
    assert!(s.log().contains("draining"));
}

use std::process::Command;

#[test]
fn a_queued_request_whose_client_left_is_dropped_before_inference() {
    // One transcription at a time, so the second job has to wait in the queue.
    let s = Server::start(&[("WHISPERD_BATCH_SIZE", "1")]);
    let busy = start_long_request(&s);
    let t0 = std::time::Instant::now();
    // Queue a second job behind the long one, then hang up.
    let (ct, body) = multipart(Some(("file", &distinct(&read("eval/jfk.wav"), 7))), &[]);
    let stream = send_request(
        &s.addr,
        "POST",
        "/transcribe",
        &[("Content-Type", &ct)],
        &body,
    );
    while s.metric("whisperd_queue_depth") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "second job never queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stream);
    assert_eq!(busy.join().unwrap().0, 200);
    s.wait_for_metric(
        "whisperd_inference_jobs_total{result=\"cancelled\"}",
        1.0,
        Duration::from_secs(10),
        "the abandoned job was not dropped",
    );
    assert_eq!(
        s.metric("whisperd_inference_jobs_total{result=\"ok\"}"),
        1.0,
        "only the long job ran"
    );
}

#[test]
fn short_requests_are_not_stuck_behind_a_long_file() {
    let s = Server::start(&[]);
    let long = start_long_request(&s);
    // While the 200-s chapter is being transcribed, short requests are served alongside it: each
    // finishes while the long one is still running (a first-come queue would hold them all
    // until the chapter is done).
    let jfk = read("eval/jfk.wav");
    for n in 0..3u16 {
        let t0 = std::time::Instant::now();
        let (status, _, body) = s.post_form(
            "/transcribe",
            Some(("file", &distinct(&jfk, 100 + n))),
            &[("response_format", "text")],
            &[],
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("country"));
        assert!(
            !long.is_finished(),
            "short request {n} ({:?}) only finished after the long file",
            t0.elapsed()
        );
    }
    let r = long.join().unwrap();
    assert_eq!(r.0, 200);
    assert!(String::from_utf8_lossy(&r.2).split_whitespace().count() > 300);
    // Their tokens shared decoder steps with the chapter's.
    let steps = s.metric("whisperd_batch_size_count{stage=\"decoder\"}");
    let rows = s.metric("whisperd_batch_size_sum{stage=\"decoder\"}");
    assert!(
        rows > steps,
        "decoder steps never held two sequences ({rows} rows in {steps} steps)"
    );
    assert!(s.metric("whisperd_batch_wait_seconds_count") > 0.0);
    // The scheduler's busy time covers at least the chapter's encoder windows and steps.
    let encoding = s.metric("whisperd_scheduler_busy_seconds_total{stage=\"encoder\"}");
    let decoding = s.metric("whisperd_scheduler_busy_seconds_total{stage=\"decoder\"}");
    assert!(
        encoding > 0.0 && decoding > 0.0,
        "busy seconds: encoder {encoding}, decoder {decoding}"
    );
}

#[test]
fn beam_five_is_the_default_and_the_config_or_a_field_changes_it() {
    // Beam 5 unless configured: the OpenAI endpoint (which has no beam field of its own) gives
    // "Marie's face…", faster-whisper's beam-5 text, and `beam_size=1` asks for greedy ("Paris
    // face…"); WHISPERD_BEAM_SIZE=1 makes greedy the default. `/info` shows the defaults, the
    // realtime sessions' own width among them (greedy unless configured).
    let clip = read("eval/librispeech/test-clean/237-134500-0027.flac");
    for (env, beam, realtime_beam, default_text, other) in [
        (vec![], 5, 1, "Marie's face", ("1", "Paris face")),
        (
            vec![
                ("WHISPERD_BEAM_SIZE", "1"),
                ("WHISPERD_REALTIME_BEAM_SIZE", "3"),
            ],
            1,
            3,
            "Paris face",
            ("5", "Marie's face"),
        ),
    ] {
        let s = Server::start(&env);
        let info = json(&s.get("/info"));
        assert_eq!(info["decoding"]["beam_size"], beam);
        assert_eq!(info["decoding"]["realtime_beam_size"], realtime_beam);
        let text = |fields: &[(&str, &str)]| {
            let r = s.post_form(
                "/v1/audio/transcriptions",
                Some(("file", &clip)),
                fields,
                &[],
            );
            assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
            json(&r)["text"].as_str().unwrap_or_default().to_string()
        };
        let t = text(&[("model", "whisper-1")]);
        assert!(t.contains(default_text), "beam {beam} by default: {t}");
        let t = text(&[("model", "whisper-1"), ("beam_size", other.0)]);
        assert!(t.contains(other.1), "beam_size={}: {t}", other.0);
    }
}

/// Transparent huge pages are off for the whole process (7 % of a q8 run went to zeroing huge
/// pages; `src/main.rs`), unless `MIMALLOC_ALLOW_THP` says otherwise. Linux reports the
/// process's setting as `THP_enabled` in /proc/PID/status (kernels since 5.0).
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let thp = |s: &Server| {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
    };
    let s = Server::start(&[]);
    let Some(off) = thp(&s) else {
        eprintln!("this kernel does not report THP_enabled; nothing to check");
        return;
    };
    assert_eq!(off, "0", "THP is still on for whisperd serve");
    let s = Server::start(&[("MIMALLOC_ALLOW_THP", "1")]);
    assert_eq!(
        thp(&s).as_deref(),
        Some("1"),
        "MIMALLOC_ALLOW_THP=1 must win"
    );
}
