//! Silero VAD parity with faster-whisper 1.2.1 (`../shared/reference/silero/`): per-frame speech
//! probabilities within 1e-3 and the same speech regions, on jfk and a 2-minute conversation.
//! Then what VAD is for: silence and noise produce no text and cost no decoding, speech between
//! long silences is transcribed once each at its true time, and the energy gate never touches
//! the eval set's speech. The full-length (1 h) figures are measured by `scripts/vad_bench.py`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::*;
use common::*;
use whisperd::audio::{Pcm, SpillBuffer};
use whisperd::vad::{self, SileroVad, VadOptions};
use whisperd::TranscribeOptions;

fn model() -> SileroVad {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(vad::MODEL_DIR)
        .join(vad::MODEL_FILE);
    SileroVad::load(&p).unwrap_or_else(|e| panic!("{e} (run `make model`)"))
}

/// A little-endian float32 `.npy` vector.
fn npy_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + header_len]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    b[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn check(name: &str, audio: &str) {
    let dir = shared().join("reference/silero");
    let bytes = read(&format!("eval/{audio}"));
    let pcm = whisperd::audio::load_pcm(bytes, None).unwrap();
    let want = npy_f32(&dir.join(format!("{name}_probs.npy")));
    let got = model().speech_probs(&pcm.samples, |_| false).unwrap();
    assert_eq!(got.len(), want.len(), "{name}: frame count");
    let (worst_i, worst) = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    eprintln!(
        "{name}: {} frames, max |Δ| {worst:.2e} at frame {worst_i}",
        got.len()
    );
    assert!(worst <= 1e-3, "{name}: frame {worst_i} differs by {worst}");

    let regions = vad::speech_timestamps(&got, pcm.samples.len(), &VadOptions::default());
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}_speech.json"))).unwrap(),
    )
    .unwrap();
    let want: Vec<(u64, u64)> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["start"].as_u64().unwrap(), r["end"].as_u64().unwrap()))
        .collect();
    let got: Vec<(u64, u64)> = regions
        .iter()
        .map(|r| (r.start as u64, r.end as u64))
        .collect();
    assert_eq!(got, want, "{name}: speech regions");
}

#[test]
fn silero_matches_faster_whisper_on_jfk() {
    check("jfk", "jfk.wav");
}

#[test]
fn silero_matches_faster_whisper_on_a_conversation() {
    check("mix01", "diarization/mix01.flac");
}

#[test]
fn silero_on_a_live_stream_matches_the_whole_file() {
    // Audio arriving in uneven pieces (as over a WebSocket) gives the probabilities of the
    // whole-file pass, frame for frame (the last frame aside: the file pass zeroes its tail).
    let x = jfk();
    let whole = model().speech_probs(&x, |_| false).unwrap();
    let m = model();
    let mut live = vad::silero::SileroStream::default();
    let mut got = Vec::new();
    for piece in x.chunks(1234) {
        got.extend(live.push(&m, piece).unwrap());
    }
    assert_eq!(got.len(), x.len() / vad::FRAME);
    for (i, (a, b)) in got.iter().zip(&whole).enumerate().take(got.len() - 1) {
        assert!((a - b).abs() < 1e-5, "frame {i}: live {a} vs file {b}");
    }
}

#[test]
fn gate_never_takes_what_silero_calls_speech() {
    // mix01 has digital silence between turns: the gate skips it, and Silero over the rest finds
    // the same speech regions as faster-whisper running Silero over everything.
    for (name, audio) in [("jfk", "jfk.wav"), ("mix01", "diarization/mix01.flac")] {
        let pcm = whisperd::audio::load_pcm(read(&format!("eval/{audio}")), None).unwrap();
        let o = VadOptions {
            enabled: true,
            ..VadOptions::default()
        };
        let map = vad::analyze(&pcm.samples, &o, Some(&model())).unwrap();
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(shared().join(format!("reference/silero/{name}_speech.json")))
                .unwrap(),
        )
        .unwrap();
        let want: Vec<(usize, usize)> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["start"].as_u64().unwrap() as usize,
                    r["end"].as_u64().unwrap() as usize,
                )
            })
            .collect();
        let got: Vec<(usize, usize)> = map.regions.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(got, want, "{name}");
    }
}

const SR: usize = 16_000;
const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

fn jfk() -> Vec<f32> {
    whisperd::audio::load_pcm(read("eval/jfk.wav"), None)
        .unwrap()
        .samples
        .to_vec()
        .unwrap()
}

fn vad_on() -> TranscribeOptions {
    TranscribeOptions {
        vad: VadOptions {
            enabled: true,
            ..VadOptions::default()
        },
        ..Default::default()
    }
}

/// tiny.en ends the first window of this conversation after its first sentence, with 25 s of
/// three other voices still in it (faster-whisper float32 with its VAD does the same). OpenAI's
/// loop would then seek past the whole window and drop them; over VAD speech decoding resumes
/// where the model stopped.
#[test]
fn a_window_the_model_ends_early_is_resumed_over_vad_speech() {
    let pcm = whisperd::audio::load_pcm(read("eval/diarization/mix05.flac"), None).unwrap();
    let t = engine().transcribe_pcm(&pcm, &vad_on()).unwrap();
    let spans: Vec<(f64, f64)> = t.segments.iter().map(|s| (s.start, s.end)).collect();
    // The second voice speaks from 6.1 s to 24.3 s, the third from 25.0 s.
    assert!(
        t.segments.iter().any(|s| s.start > 5.0 && s.start < 12.0),
        "{spans:?}: {}",
        t.text
    );
    let gap = spans[..spans.len().min(8)]
        .windows(2)
        .map(|w| w[1].0 - w[0].1)
        .fold(0.0f64, f64::max);
    assert!(gap < 3.0, "longest gap {gap:.1} s: {spans:?}");
    assert!(t.text.contains("Egypt"), "{}", t.text);
    assert!(t.fallbacks.iter().any(|w| w.resumed_early_end));
}

/// jfk + `gap` s of digital silence + jfk + `gap` s of white noise at -40 dBFS RMS + jfk.
fn jfk_three_times(gap: usize) -> Vec<f32> {
    let j = jfk();
    let mut x = j.clone();
    x.extend(vec![0.0; gap * SR]);
    x.extend_from_slice(&j);
    x.extend(noise(gap * SR, 0.01 * 3f32.sqrt()));
    x.extend_from_slice(&j);
    x
}

#[test]
fn speech_between_silence_and_noise_is_transcribed_once_each_at_its_time() {
    let gap = 60;
    let t = engine()
        .transcribe_pcm(
            &Pcm {
                samples: SpillBuffer::from_vec(jfk_three_times(gap)).unwrap(),
            },
            &vad_on(),
        )
        .unwrap();
    let want = [JFK, JFK, JFK].join(" ");
    let w = wer(&want, &t.text);
    assert!(w <= 0.02, "WER {w:.3}: {}", t.text);
    assert_eq!(
        t.text
            .to_lowercase()
            .matches("ask not what your country")
            .count(),
        3,
        "{}",
        t.text
    );
    let sp = t.speech.expect("speech stats");
    assert!(sp.vad);
    assert!(sp.skipped_duration > 2.0 * gap as f64 - 5.0, "{sp:?}");
    // the second jfk starts at 11 s + gap in the recording
    let second = 11.0 + gap as f64;
    let first_after = t
        .segments
        .iter()
        .find(|s| s.start > 20.0)
        .expect("segments after the first jfk");
    assert!(
        (first_after.start - second).abs() <= 0.5,
        "second occurrence starts at {} (true {second}); segments {:?}",
        first_after.start,
        t.segments
            .iter()
            .map(|s| (s.start, s.end, s.text.as_str()))
            .collect::<Vec<_>>()
    );
    let third = 22.0 + 2.0 * gap as f64;
    assert!(
        t.segments.iter().any(|s| (s.start - third).abs() <= 0.5),
        "third occurrence at {third}: {:?}",
        t.segments
            .iter()
            .map(|s| (s.start, s.end))
            .collect::<Vec<_>>()
    );
    assert!(t.segments.iter().all(|s| s.end <= t.duration + 0.01));
}

#[test]
fn silence_costs_nothing_and_says_nothing() {
    let silence = Pcm {
        samples: SpillBuffer::from_vec(vec![0.0; 600 * SR]).unwrap(),
    };
    for o in [vad_on(), TranscribeOptions::default()] {
        let t0 = Instant::now();
        let t = engine().transcribe_pcm(&silence, &o).unwrap();
        assert_eq!(t.text, "");
        assert!(t.segments.is_empty());
        let sp = t.speech.unwrap();
        // nothing reached the decoder: the gate dropped it all
        assert_eq!(sp.speech_duration, 0.0, "{sp:?}");
        assert_eq!(sp.skipped_duration, 600.0);
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    }
}

/// Deterministic Gaussian noise with standard deviation `std` (what `sox synth whitenoise` makes).
fn gaussian_noise(n: usize, std: f32) -> Vec<f32> {
    // Box-Muller over independent pairs of uniform samples
    let u = noise(n + 1, 0.5);
    u.chunks_exact(2)
        .flat_map(|w| {
            let (a, b) = (w[0] + 0.5 + 1e-7, w[1] + 0.5);
            let r = (-2.0 * a.ln()).sqrt() * std;
            let t = std::f32::consts::TAU * b;
            [r * t.cos(), r * t.sin()]
        })
        .take(n)
        .collect()
}

#[test]
fn silero_does_not_drift_into_calling_minutes_of_noise_after_speech_speech() {
    // Speech, then five minutes of steady noise at -45 dBFS RMS. A Silero whose LSTM state runs
    // on unreset from the speech creeps from ~0.1 to over 0.5 after two or three minutes of the
    // noise (faster-whisper's does), and Whisper then fills the "speech" with dots or made-up
    // text.
    let mut x = jfk();
    x.extend(gaussian_noise(300 * SR, 0.0056));
    let probs = model().speech_probs(&x, |_| false).unwrap();
    let noise_from = 12 * SR / vad::FRAME;
    let over = probs[noise_from..].iter().filter(|&&p| p >= 0.5).count();
    let max = probs.iter().copied().fold(0f32, f32::max);
    assert!(
        over < 5,
        "{over} frames of noise called speech (max {max:.2})"
    );
    let o = VadOptions {
        enabled: true,
        ..VadOptions::default()
    };
    let map = vad::analyze(&x, &o, Some(&model())).unwrap();
    assert_eq!(map.regions.len(), 1, "{:?}", map.regions);
    assert!(map.regions[0].end < 12 * SR, "{:?}", map.regions);
}

#[test]
fn noise_without_vad_gives_no_dots() {
    // With VAD off, Whisper writes " . ." over this noise: segments without a letter or digit
    // are dropped, and never prompt the next window.
    let x = Pcm {
        samples: SpillBuffer::from_vec(gaussian_noise(60 * SR, 0.0056)).unwrap(),
    };
    let t = engine()
        .transcribe_pcm(&x, &TranscribeOptions::default())
        .unwrap();
    assert!(
        t.segments
            .iter()
            .all(|s| s.text.chars().any(char::is_alphanumeric)),
        "{:?}",
        t.segments.iter().map(|s| &s.text).collect::<Vec<_>>()
    );
    assert!(t.segments.iter().all(|s| s.end <= t.duration));
}

#[test]
fn low_noise_gives_no_text_with_vad() {
    // -53 dBFS RMS white noise: above the gate, so Silero decides
    let x = Pcm {
        samples: SpillBuffer::from_vec(noise(120 * SR, 0.0037)).unwrap(),
    };
    let t = engine().transcribe_pcm(&x, &vad_on()).unwrap();
    assert_eq!(t.text, "", "{:?}", t.segments);
    assert_eq!(t.speech.unwrap().speech_duration, 0.0);
}

#[test]
fn gate_leaves_the_english_eval_set_whole() {
    // VAD off, the gate on: every eval recording reaches the decoder unchanged, so transcripts are
    // identical to running without the gate (the same samples, the same code path).
    let mut n = 0;
    for m in manifest()
        .into_iter()
        .filter(|m| m.lang == "en" && m.category != "format")
    {
        let pcm = whisperd::audio::load_pcm(read(&format!("eval/{}", m.path)), None).unwrap();
        let map = vad::analyze(&pcm.samples, &VadOptions::default(), None).unwrap();
        assert!(map.is_whole(), "{}: gate cut {:?}", m.id, map.regions);
        n += 1;
    }
    assert!(n >= 40, "eval set not found");
}

#[test]
fn server_vad_settings_and_metrics() {
    let s = Server::start(&[]);
    let mut x = jfk();
    x.extend(vec![0.0; 20 * SR]);
    x.extend(jfk());
    let wav = wav_bytes(&x, 16_000);
    let file = Some(("file", wav.as_slice()));
    let post = |path: &str, fields: &[(&str, &str)]| {
        let mut f = vec![("response_format", "verbose_json")];
        f.extend_from_slice(fields);
        s.post_form(path, file, &f, &[])
    };
    // /transcribe: VAD on by default
    let r = post("/transcribe", &[]);
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    let v = json(&r);
    assert_eq!(v["speech"]["vad"], true, "{v}");
    assert!(
        v["speech"]["skipped_duration"].as_f64().unwrap() > 15.0,
        "{v}"
    );
    assert_eq!(
        v["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .matches("ask not")
            .count(),
        2,
        "{v}"
    );
    let second = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["start"].as_f64().unwrap())
        .find(|&t| t > 15.0)
        .unwrap();
    assert!((second - 31.0).abs() <= 0.5, "{v}");
    let r = post("/transcribe", &[("vad", "false")]);
    assert_eq!(json(&r)["speech"]["vad"], false);
    // /v1: one block unless chunking_strategy asks (the gate still drops the digital silence)
    let v1 = "/v1/audio/transcriptions";
    let v = json(&post(v1, &[("model", "whisper-1")]));
    assert_eq!(v["speech"]["vad"], false, "{v}");
    assert!(
        v["speech"]["skipped_duration"].as_f64().unwrap() > 15.0,
        "{v}"
    );
    for fields in [
        vec![("chunking_strategy", "auto")],
        vec![(
            "chunking_strategy",
            r#"{"type": "server_vad", "threshold": 0.6}"#,
        )],
        vec![
            ("chunking_strategy[type]", "server_vad"),
            ("chunking_strategy[silence_duration_ms]", "500"),
            ("chunking_strategy[prefix_padding_ms]", "300"),
        ],
    ] {
        let r = post(v1, &fields);
        assert_eq!(r.0, 200, "{fields:?}: {}", String::from_utf8_lossy(&r.2));
        assert_eq!(json(&r)["speech"]["vad"], true, "{fields:?}");
    }
    for (k, v) in [
        ("chunking_strategy", "sometimes"),
        ("chunking_strategy", r#"{"type": "client_vad"}"#),
        (
            "chunking_strategy",
            r#"{"type": "server_vad", "threshold": 2}"#,
        ),
        (
            "chunking_strategy",
            r#"{"type": "server_vad", "eagerness": "high"}"#,
        ),
    ] {
        let r = post(v1, &[(k, v)]);
        assert_eq!(r.0, 400, "{v}");
        assert_eq!(json(&r)["error"]["param"], "chunking_strategy", "{v}");
    }
    let r = post("/transcribe", &[("vad_threshold", "3")]);
    assert_eq!(
        (r.0, json(&r)["error"]["param"].clone()),
        (400, "vad_threshold".into())
    );
    assert!(s.metric("whisperd_vad_speech_seconds_total{detector=\"silero\"}") > 20.0);
    let metrics = String::from_utf8(s.get("/metrics").2).unwrap();
    assert!(metrics.contains("whisperd_window_early_end_resumes_total"));
    assert!(s.metric("whisperd_vad_skipped_seconds_total{detector=\"gate\"}") > 15.0);
    assert!(s.log().contains("speech detected"));
}

#[test]
fn cli_vad_flags_and_a_missing_vad_model() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("two.wav");
    let mut x = jfk();
    x.extend(vec![0.0; 10 * SR]);
    x.extend(jfk());
    std::fs::write(&wav, wav_bytes(&x, 16_000)).unwrap();
    let run = |args: &[&str], model: &std::path::Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_whisperd"));
        // a working directory without models/silero-vad, so only the model's own neighbours count
        c.current_dir(dir.path())
            .arg("transcribe")
            .arg("--model")
            .arg(model)
            .args(args)
            .arg(&wav);
        output_within(&mut c, 120)
    };
    let out = run(&["--format", "verbose_json"], &model_dir());
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["speech"]["vad"], true);
    let out = run(
        &[
            "--format",
            "verbose_json",
            "--vad",
            "false",
            "--vad-gate-db",
            "none",
        ],
        &model_dir(),
    );
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["speech"]["vad"], false);
    assert_eq!(v["speech"]["skipped_duration"], 0.0);
    // a model directory with no VAD model beside it: VAD on refuses to start, naming the fix
    let lone = dir.path().join("models/tiny");
    std::fs::create_dir_all(&lone).unwrap();
    for f in std::fs::read_dir(model_dir()).unwrap() {
        let f = f.unwrap();
        std::os::unix::fs::symlink(f.path(), lone.join(f.file_name())).unwrap();
    }
    let out = run(&[], &lone);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("make model") && err.contains("--vad false"),
        "{err}"
    );
    assert_success(&run(&["--vad", "false"], &lone));
}
