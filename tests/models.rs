//! Several models in one server (tiny.en and the multilingual base): picked by `model`, loaded
//! on first use, batched apart, unloaded when idle (`model_ttl_s`) or to make room under
//! `models_memory_mb`, and 503 with Retry-After when only busy models could make room.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use common::*;

const TINY: &str = "whisper-tiny.en";
const BASE: &str = "whisper-base";

fn both_models() -> Option<String> {
    let base = base_model()?;
    Some(format!("{},{}", model_dir().display(), base.display()))
}

/// `/info`'s entry for model `name`.
fn model_info(s: &Server, name: &str) -> serde_json::Value {
    let info = json(&s.get("/info"));
    info["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} not in /info: {info}"))
}

fn wait_for_state(s: &Server, name: &str, state: &str, within: Duration) {
    let t0 = Instant::now();
    while model_info(s, name)["state"] != state {
        assert!(
            t0.elapsed() < within,
            "{name} not {state} within {within:?}: {}\n{}",
            model_info(s, name),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn transcribe(s: &Server, audio: &[u8], model: &str) -> Response {
    s.post_form(
        "/v1/audio/transcriptions",
        Some(("file", audio)),
        &[("model", model), ("language", "en")],
        &[],
    )
}

fn text(r: &Response) -> String {
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    json(r)["text"].as_str().unwrap_or_default().to_string()
}

/// The first `seconds` of a 16-bit mono 16-kHz WAV (any chunks before `data`), as a WAV.
fn excerpt(wav: &[u8], seconds: usize) -> Vec<u8> {
    let mut at = 12;
    while at + 8 <= wav.len() {
        let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
        if &wav[at..at + 4] == b"data" {
            let data = &wav[at + 8..(at + 8 + len).min(wav.len())];
            let samples: Vec<f32> = data
                .chunks_exact(2)
                .take(seconds * 16_000)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0)
                .collect();
            return wav_bytes(&samples, 16_000);
        }
        at += 8 + len + (len & 1);
    }
    panic!("no data chunk");
}

#[test]
fn two_models_answer_by_name_and_batch_apart() {
    let Some(models) = both_models() else { return };
    let s = Server::start(&[
        ("WHISPERD_MODELS", &models),
        ("WHISPERD_CACHE_ENTRIES", "0"),
    ]);
    let ids = s.model_ids();
    assert_eq!(&ids[..3], [TINY, BASE, "whisper-1"], "{ids:?}");
    // The default loads at start, the other on first use.
    let info = json(&s.get("/info"));
    assert_eq!(info["model"]["name"], TINY);
    assert_eq!(model_info(&s, TINY)["state"], "loaded");
    assert_eq!(model_info(&s, BASE)["state"], "unloaded");
    assert_eq!(
        model_info(&s, BASE)["multilingual"],
        serde_json::Value::Null
    );

    // Both at once: each model's scheduler batches its own requests, and each answer is the
    // one the model gives alone.
    let jfk = read("eval/jfk.wav");
    let (tiny, base) = std::thread::scope(|sc| {
        let t = sc.spawn(|| text(&transcribe(&s, &jfk, TINY)));
        let b = sc.spawn(|| text(&transcribe(&s, &jfk, BASE)));
        (t.join().unwrap(), b.join().unwrap())
    });
    for t in [&tiny, &base] {
        assert!(
            t.to_lowercase()
                .contains("ask not what your country can do for you"),
            "{t}"
        );
    }
    assert_eq!(text(&transcribe(&s, &jfk, BASE)), base, "base alone");
    assert_eq!(
        text(&transcribe(&s, &jfk, "whisper-1")),
        tiny,
        "alias → default"
    );
    let jobs = |m: &str| {
        s.metric(&format!(
            "whisperd_inference_jobs_total{{model=\"{m}\",result=\"ok\"}}"
        ))
    };
    assert_eq!((jobs(TINY), jobs(BASE)), (2.0, 2.0));
    assert!(s.metric(&format!("whisperd_audio_seconds_total{{model=\"{BASE}\"}}")) > 21.0);
    assert_eq!(
        s.metric(&format!("whisperd_model_loaded{{model=\"{BASE}\"}}")),
        1.0
    );
    let b = model_info(&s, BASE);
    assert_eq!(
        (b["state"].as_str(), b["multilingual"].as_bool()),
        (Some("loaded"), Some(true))
    );
    assert!(
        s.log().contains("model=whisper-base"),
        "logs name the model:\n{}",
        s.log()
    );

    // What only the multilingual model can do, on the same server.
    let r = s.post_form(
        "/detect-language",
        Some(("file", &jfk)),
        &[("model", BASE)],
        &[],
    );
    assert_eq!((r.0, json(&r)["language"].as_str()), (200, Some("en")));
    let r = s.post_form(
        "/v1/audio/transcriptions",
        Some(("file", &jfk)),
        &[("model", TINY), ("language", "de")],
        &[],
    );
    assert_eq!(r.0, 400, "tiny.en is English-only");
    let r = transcribe(&s, &jfk, "whisper-large-v3");
    assert_eq!(
        (r.0, json(&r)["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[test]
fn memory_budget_evicts_the_idle_model_and_refuses_when_all_are_busy() {
    let Some(models) = both_models() else { return };
    // tiny.en counts ~245 MB, base ~470 MB: either fits 600, both do not.
    let s = Server::start(&[
        ("WHISPERD_MODELS", &models),
        ("WHISPERD_MODELS_MEMORY_MB", "600"),
    ]);
    let jfk = read("eval/jfk.wav");
    assert_eq!(
        model_info(&s, TINY)["memory_mb"].as_u64().map(|m| m > 200),
        Some(true)
    );
    text(&transcribe(&s, &jfk, BASE));
    assert_eq!(
        model_info(&s, TINY)["state"],
        "unloaded",
        "tiny.en (idle) made room"
    );
    assert_eq!(model_info(&s, BASE)["state"], "loaded");
    assert_eq!(
        s.metric(&format!(
            "whisperd_model_unloads_total{{model=\"{TINY}\",reason=\"evicted\"}}"
        )),
        1.0
    );

    // base busy with 40 s of speech: tiny.en cannot be loaded, the request gets 503.
    let minute = excerpt(
        &read("eval/longform/librispeech-test-clean-237-134500-full-chapter.wav"),
        40,
    );
    std::thread::scope(|sc| {
        let long = sc.spawn(|| transcribe(&s, &minute, BASE));
        let t0 = Instant::now();
        while model_info(&s, BASE)["busy"].as_u64() == Some(0) {
            assert!(t0.elapsed() < Duration::from_secs(20), "base never busy");
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = transcribe(&s, &jfk, TINY);
        assert_eq!(
            (r.0, json(&r)["error"]["code"].as_str()),
            (503, Some("model_busy")),
            "{}",
            String::from_utf8_lossy(&r.2)
        );
        assert!(header(&r, "retry-after").is_some(), "{:?}", r.1);
        assert!(
            !long.is_finished(),
            "the long request ended before the check: the test proves nothing"
        );
        assert_eq!(long.join().unwrap().0, 200);
    });
    assert_eq!(
        s.metric(&format!(
            "whisperd_model_load_refused_total{{model=\"{TINY}\"}}"
        )),
        1.0
    );
    // Once base is idle again it gives way.
    assert!(text(&transcribe(&s, &jfk, TINY)).contains("ask not"));
    assert_eq!(model_info(&s, BASE)["state"], "unloaded");
}

#[test]
fn idle_models_unload_after_the_ttl_and_load_again() {
    let Some(models) = both_models() else { return };
    let s = Server::start(&[("WHISPERD_MODELS", &models), ("WHISPERD_MODEL_TTL_S", "1")]);
    let jfk = read("eval/jfk.wav");
    text(&transcribe(&s, &jfk, BASE));
    wait_for_state(&s, BASE, "unloaded", Duration::from_secs(10));
    wait_for_state(&s, TINY, "unloaded", Duration::from_secs(10));
    assert!(
        s.metric(&format!(
            "whisperd_model_unloads_total{{model=\"{BASE}\",reason=\"idle\"}}"
        )) >= 1.0
    );
    s.wait_for_log("model unloaded", Duration::from_secs(5));
    // Still ready, and the next request loads the model again.
    assert_eq!(s.get("/ready").0, 200);
    assert!(text(&transcribe(&s, &jfk, TINY)).contains("ask not"));
    assert_eq!(
        s.metric(&format!(
            "whisperd_model_loads_total{{model=\"{TINY}\",result=\"ok\"}}"
        )),
        2.0
    );
}

#[test]
fn a_model_that_cannot_load_answers_500_each_time_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("whisper-broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.bin"), vec![7u8; 4096]).unwrap();
    std::fs::copy(
        model_dir().join("tokenizer.json"),
        broken.join("tokenizer.json"),
    )
    .unwrap();
    let models = format!("{},{}", model_dir().display(), broken.display());
    let s = Server::start(&[("WHISPERD_MODELS", &models)]);
    let jfk = read("eval/jfk.wav");
    for _ in 0..2 {
        let r = transcribe(&s, &jfk, "whisper-broken");
        let v = json(&r);
        assert_eq!(r.0, 500, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not be loaded")),
            "{v}"
        );
        assert_eq!(model_info(&s, "whisper-broken")["state"], "unloaded");
    }
    assert_eq!(
        s.metric("whisperd_model_loads_total{model=\"whisper-broken\",result=\"error\"}"),
        2.0
    );
    assert!(text(&transcribe(&s, &jfk, TINY)).contains("ask not"));
}
