//! Speaker diarization (issue #25) through the real binary and the real server: DER of the
//! transcript's own segments on three conversations of the dev set (`../shared/scripts/der.py`,
//! 0.25-s collar; the whole set is `make eval`), the speaker count, the OpenAI `diarized_json`
//! shape, and 400s naming the bad parameter.

mod common;

use std::process::Command;

use common::server::{json, speaker_names, Server};
use common::*;

fn speaker_model_or_skip() -> bool {
    let p = root().join("models/ge2e/ge2e.safetensors");
    if !p.is_file() {
        eprintln!(
            "SKIPPED: no speaker model at {} — run `make model-ge2e`",
            p.display()
        );
        return false;
    }
    true
}

/// `der.py --json` over `ids` of the dev set with hypotheses in `dir` (ID.json or ID.rttm).
fn der(ids: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let set = shared().join("eval/diarization");
    let rows: String = std::fs::read_to_string(set.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            ids.contains(&v["id"].as_str().unwrap())
        })
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let rttm = set.join(v["rttm"].as_str().unwrap());
            v["rttm"] = rttm.display().to_string().into();
            format!("{v}\n")
        })
        .collect();
    let manifest = dir.join("manifest.jsonl");
    std::fs::write(&manifest, rows).unwrap();
    let out = Command::new("python3")
        .arg(shared().join("scripts/der.py"))
        .arg(&manifest)
        .arg(dir)
        .arg("--json")
        .output()
        .expect("python3 runs der.py");
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_cli_diarizes_three_dev_conversations_with_the_right_speaker_counts() {
    if !speaker_model_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ids = ["mix01", "mix04", "mix05"];
    for id in ids {
        let out = output_within(
            Command::new(env!("CARGO_BIN_EXE_whisperd"))
                .env("WHISPERD_MODEL", model_dir())
                .env("RUST_LOG", "warn")
                .args(["transcribe", "--diarize", "--format", "verbose_json"])
                .arg(shared().join(format!("eval/diarization/{id}.flac"))),
            300,
        );
        assert_success(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["segments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["speaker"]
                .as_str()
                .is_some_and(|x| x.starts_with("SPEAKER_"))));
        let talk: f64 = v["speakers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["talk_time"].as_f64().unwrap())
            .sum();
        assert!(talk > 60.0, "{}", v["speakers"]);
        std::fs::write(dir.path().join(format!("{id}.json")), &out.stdout).unwrap();
    }
    let r = der(&ids, dir.path());
    eprintln!("{r}");
    assert_eq!(r["speaker_count_correct"], 3, "{r}");
    for f in r["per_file"].as_array().unwrap() {
        // Measured 4.4, 1.0 and 1.9 % (tiny.en, VAD on). mix01 was 8.9 % before one speaker's
        // pauses counted as their turn, mix05 21.7 % before a window the model ended early
        // was resumed (25 s of speech went untranscribed); confusion is the clustering's part.
        assert!(f["der"].as_f64().unwrap() < 7.0, "{f}");
        assert!(f["confusion"].as_f64().unwrap() < 3.0, "{f}");
    }
}

#[test]
fn the_server_labels_speakers_on_both_apis_and_names_bad_values() {
    if !speaker_model_or_skip() {
        return;
    }
    let s = Server::start(&[]);
    let audio = std::fs::read(shared().join("eval/diarization/mix04.flac")).unwrap();
    let post = |path: &str, fields: &[(&str, &str)]| {
        s.post_form(path, Some(("file", &audio)), fields, &[])
    };
    // Bad values: 400 naming the parameter, before any work.
    for (fields, param) in [
        (vec![("num_speakers", "0")], "num_speakers"),
        (vec![("max_speakers", "33")], "max_speakers"),
        (
            vec![("min_speakers", "3"), ("max_speakers", "2")],
            "min_speakers",
        ),
        (vec![("num_speakers", "two")], "num_speakers"),
        (
            vec![("diarize", "false"), ("response_format", "rttm")],
            "diarize",
        ),
    ] {
        let r = post("/transcribe", &fields);
        assert_eq!(r.0, 400, "{fields:?}: {}", String::from_utf8_lossy(&r.2));
        assert_eq!(
            json(&r)["error"]["param"],
            param,
            "{fields:?}: {}",
            json(&r)
        );
    }
    let r = post("/v1/audio/transcriptions", &[("response_format", "rttm")]);
    assert_eq!(r.0, 400);
    assert_eq!(json(&r)["error"]["param"], "response_format");

    // OpenAI's diarized_json: speakers A, B, C in order of first appearance.
    let r = post(
        "/v1/audio/transcriptions",
        &[("model", "whisper-1"), ("response_format", "diarized_json")],
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    let v = json(&r);
    assert_eq!(v["task"], "transcribe");
    assert_eq!(v["usage"]["type"], "duration");
    let segs = v["segments"].as_array().unwrap();
    let mut seen: Vec<String> = Vec::new();
    for seg in segs {
        assert_eq!(seg["type"], "transcript.text.segment");
        for k in ["id", "text", "speaker"] {
            assert!(seg[k].is_string(), "{seg}");
        }
        assert!(seg["start"].as_f64().unwrap() <= seg["end"].as_f64().unwrap());
        let who = seg["speaker"].as_str().unwrap().to_string();
        if !seen.contains(&who) {
            seen.push(who);
        }
    }
    assert_eq!(seen, ["A", "B", "C"], "{v}");

    // /transcribe with a given count: segments and the summary use SPEAKER_nn.
    let r = post(
        "/transcribe",
        &[("num_speakers", "3"), ("response_format", "verbose_json")],
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    let v = json(&r);
    let names = speaker_names(&v);
    assert_eq!(names, ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"], "{v}");
    // The same request is a cache hit; RTTM is another rendering of it.
    let r = post(
        "/transcribe",
        &[("num_speakers", "3"), ("response_format", "rttm")],
    );
    assert_eq!(r.0, 200);
    let rttm = String::from_utf8_lossy(&r.2).to_string();
    assert!(
        rttm.lines()
            .all(|l| l.starts_with("SPEAKER audio 1 ") && l.contains(" SPEAKER_0")),
        "{rttm}"
    );
    assert!(s.metric("whisperd_diarization_seconds_count") >= 2.0);
    assert!(s.metric("whisperd_diarization_speakers_sum") >= 6.0);
    assert!(s.metric("whisperd_diarization_windows_total") > 100.0);
}

#[test]
fn known_speakers_are_named_by_their_reference_clips() {
    if !speaker_model_or_skip() {
        return;
    }
    use base64::Engine as _;
    let set = shared().join("eval/diarization");
    let audio = std::fs::read(set.join("mix04.flac")).unwrap();
    let samples = whisperd::audio::load_pcm(audio.clone(), None)
        .unwrap()
        .samples
        .to_vec()
        .unwrap();
    // The reference turns: (start, end, speaker).
    let turns: Vec<(f64, f64, String)> = std::fs::read_to_string(set.join("mix04.rttm"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (s, d) = (
                f.get(3)?.parse::<f64>().ok()?,
                f.get(4)?.parse::<f64>().ok()?,
            );
            Some((s, s + d, f.get(7)?.to_string()))
        })
        .collect();
    let mut voices: Vec<&str> = Vec::new();
    for t in &turns {
        if !voices.contains(&t.2.as_str()) {
            voices.push(&t.2);
        }
    }
    // 6 s from the first long turn of each of the first two voices.
    let clip = |who: &str| {
        let t = turns
            .iter()
            .find(|t| t.2 == who && t.1 - t.0 > 7.0)
            .expect("a turn of 7 s or more");
        let a = ((t.0 + 0.5) * 16_000.0) as usize;
        let wav = wav_bytes(&samples[a..a + 6 * 16_000], 16_000);
        format!(
            "data:audio/wav;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(wav)
        )
    };
    let (ra, rb) = (clip(voices[0]), clip(voices[1]));
    let s = Server::start(&[]);
    let post = |fields: &[(&str, &str)]| {
        s.post_form(
            "/v1/audio/transcriptions",
            Some(("file", &audio)),
            fields,
            &[],
        )
    };
    for (fields, param) in [
        (
            vec![("known_speaker_names[]", "alice")],
            "known_speaker_references",
        ),
        (
            vec![
                ("known_speaker_names[]", "alice"),
                ("known_speaker_references[]", "data:audio/wav;base64,@@@"),
            ],
            "known_speaker_references",
        ),
        (
            vec![
                ("known_speaker_names[]", "alice"),
                ("known_speaker_references[]", "data:audio/wav;base64,AAAA"),
            ],
            "known_speaker_references",
        ),
    ] {
        let r = post(&fields);
        assert_eq!(r.0, 400, "{}", String::from_utf8_lossy(&r.2));
        assert_eq!(json(&r)["error"]["param"], param, "{}", json(&r));
    }
    let r = post(&[
        ("model", "whisper-1"),
        ("response_format", "diarized_json"),
        ("known_speaker_names[]", "alice"),
        ("known_speaker_names[]", "bob"),
        ("known_speaker_references[]", &ra),
        ("known_speaker_references[]", &rb),
    ]);
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    let v = json(&r);
    // Each segment's speaker against the reference voice at its midpoint.
    let (mut right, mut all) = (0, 0);
    let mut others: Vec<String> = Vec::new();
    for seg in v["segments"].as_array().unwrap() {
        let mid = (seg["start"].as_f64().unwrap() + seg["end"].as_f64().unwrap()) / 2.0;
        let Some(t) = turns.iter().find(|t| t.0 <= mid && mid < t.1) else {
            continue;
        };
        let who = seg["speaker"].as_str().unwrap().to_string();
        let want = if t.2 == voices[0] {
            "alice"
        } else if t.2 == voices[1] {
            "bob"
        } else {
            assert!(who != "alice" && who != "bob", "{seg}");
            others.push(who);
            continue;
        };
        all += 1;
        right += usize::from(who == want);
    }
    assert!(
        all > 10 && right * 10 >= all * 9,
        "{right}/{all} named right: {v}"
    );
    assert!(
        !others.is_empty() && others.iter().all(|o| o.len() == 1),
        "the third voice gets a letter: {others:?}"
    );
}
