//! `channels=split` (issue #25): a call recording with each party on its own channel is
//! transcribed channel by channel and merged on one timeline, segments labelled `CHANNEL_<n>` —
//! through the real binary and the real server, with a stereo file built from two dev voices.

mod common;

use std::process::Command;

use common::server::{json, speaker_names, Server};
use common::*;

/// Left: jfk (0–11 s), then quiet. Right: quiet, then a LibriSpeech speaker from 11.5 s
/// ("Frank read English slowly and the more he read about this divorce case …").
fn call() -> Vec<u8> {
    let load = |rel: &str| {
        whisperd::audio::load_pcm(read(rel), None)
            .unwrap()
            .samples
            .to_vec()
            .unwrap()
    };
    let jfk = load("eval/jfk.wav");
    let other = load("eval/librispeech/test-clean/237-134500-0000.flac");
    let n = 16_000 * 19;
    let mut left = vec![0f32; n];
    let mut right = vec![0f32; n];
    left[..jfk.len()].copy_from_slice(&jfk);
    let at = 16_000 * 23 / 2;
    let k = other.len().min(n - at);
    right[at..at + k].copy_from_slice(&other[..k]);
    multichannel_wav(&[&left, &right], 16_000)
}

/// Segments as (speaker, start, end, text).
fn segments(v: &serde_json::Value) -> Vec<(String, f64, f64, String)> {
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["speaker"].as_str().unwrap_or("").to_string(),
                s["start"].as_f64().unwrap(),
                s["end"].as_f64().unwrap(),
                s["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Both parties' words under their own channel, in time order.
fn check_call(v: &serde_json::Value) {
    let segs = segments(v);
    assert!(
        segs.windows(2).all(|w| w[0].1 <= w[1].1),
        "not in time order: {v}"
    );
    let said = |who: &str| -> String {
        segs.iter()
            .filter(|s| s.0 == who)
            .map(|s| s.3.as_str())
            .collect()
    };
    assert!(said("CHANNEL_0").contains("your country"), "{v}");
    assert!(said("CHANNEL_1").contains("divorce"), "{v}");
    assert!(!said("CHANNEL_0").contains("divorce"), "{v}");
    for (who, start, end, _) in &segs {
        match who.as_str() {
            "CHANNEL_0" => assert!(*end <= 12.0, "{v}"),
            "CHANNEL_1" => assert!(*start >= 11.0, "{v}"),
            other => panic!("speaker {other:?}: {v}"),
        }
    }
}

#[test]
fn the_server_splits_a_call_by_channel_and_names_bad_values() {
    let s = Server::start(&[]);
    let audio = call();
    let post = |path: &str, bytes: &[u8], fields: &[(&str, &str)]| {
        s.post_form(path, Some(("file", bytes)), fields, &[])
    };
    let r = post(
        "/transcribe",
        &audio,
        &[("channels", "split"), ("response_format", "verbose_json")],
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    let v = json(&r);
    check_call(&v);
    let names = speaker_names(&v);
    assert_eq!(names, ["CHANNEL_0", "CHANNEL_1"], "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(
        text.find("country").unwrap() < text.find("divorce").unwrap(),
        "{text}"
    );

    // OpenAI's diarized_json (an extra form field, as speaches takes them): the channels are
    // the speakers.
    let r = post(
        "/v1/audio/transcriptions",
        &audio,
        &[
            ("model", "whisper-1"),
            ("channels", "split"),
            ("response_format", "diarized_json"),
        ],
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    check_call(&json(&r));

    // Mixed (the default): one signal, no labels.
    let r = post(
        "/transcribe",
        &audio,
        &[("response_format", "verbose_json")],
    );
    assert_eq!(r.0, 200);
    let v = json(&r);
    assert!(v.get("speakers").is_none(), "{v}");
    assert!(v["segments"][0].get("speaker").is_none(), "{v}");

    // Bad values: 400 naming `channels`.
    let nine: Vec<Vec<f32>> = (0..9).map(|_| noise(16_000, 0.1)).collect();
    let nine: Vec<&[f32]> = nine.iter().map(|c| c.as_slice()).collect();
    let nine = multichannel_wav(&nine, 16_000);
    for (bytes, fields) in [
        (&audio, vec![("channels", "left")]),
        (&audio, vec![("channels", "split"), ("diarize", "true")]),
        (&audio, vec![("channels", "split"), ("num_speakers", "2")]),
        (&nine, vec![("channels", "split")]),
    ] {
        let r = post("/transcribe", bytes, &fields);
        assert_eq!(r.0, 400, "{fields:?}: {}", String::from_utf8_lossy(&r.2));
        assert_eq!(json(&r)["error"]["param"], "channels", "{}", json(&r));
    }
    // Nine channels mixed are fine.
    assert_eq!(post("/transcribe", &nine, &[]).0, 200);
}

#[test]
fn the_cli_splits_a_call_by_channel() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("call.wav");
    std::fs::write(&wav, call()).unwrap();
    let run = |args: &[&str]| {
        output_within(
            Command::new(env!("CARGO_BIN_EXE_whisperd"))
                .env("WHISPERD_MODEL", model_dir())
                .env("RUST_LOG", "warn")
                .arg("transcribe")
                .arg(&wav)
                .args(args),
            120,
        )
    };
    let out = run(&["--channels", "split", "--format", "verbose_json"]);
    assert_success(&out);
    check_call(&serde_json::from_slice(&out.stdout).unwrap());
    // RTTM without --diarize: the channels are the speakers.
    let out = run(&["--channels", "split", "--format", "rttm"]);
    assert_success(&out);
    let rttm = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(rttm.lines().any(|l| l.contains(" CHANNEL_0 ")), "{rttm}");
    assert!(rttm.lines().any(|l| l.contains(" CHANNEL_1 ")), "{rttm}");
    assert!(
        rttm.lines().all(|l| l.starts_with("SPEAKER call 1 ")),
        "{rttm}"
    );
    let out = run(&["--channels", "split", "--diarize"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("channels=split"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
