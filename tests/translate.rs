//! Translation to English with the multilingual base model (issue #17): two of the shared
//! non-English clips must come out as readable English — Latin script only — scoring chrF ≥ 50
//! against faster-whisper's translation of the same clip.
//!
//! The references (`tests/data/translations_faster_whisper.jsonl`, every non-English clip of
//! `../shared/eval`) are faster-whisper 1.2.1's output: `WhisperModel("models/whisper-base",
//! compute_type="float32").transcribe(clip, task="translate", beam_size=1)`, default temperature
//! fallback, language detected — what `scripts/translate_eval.py` (`make eval`) computes in each
//! run, from one run before the script seeded CTranslate2's sampler (only clips whose every
//! temperature fails, zh here, depend on the seed). The test skips, saying so, only when
//! `models/whisper-base` is missing (`make model-base` fetches it; `make test` runs that first).

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use whisperd::{Engine, Task, TranscribeOptions};

/// The two clips the issue reported as garbage ("The 레", …) that faster-whisper translates well.
const CLIPS: [&str; 2] = ["leopard-es", "leopard-de"];

fn references() -> HashMap<String, String> {
    let text = std::fs::read_to_string(root().join("tests/data/translations_faster_whisper.jsonl"))
        .expect("reference translations");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// sacrebleu's sentence chrF: character n-grams 1..=6 without whitespace, precision and recall
/// averaged over the orders both sides have, F-beta with beta = 2.
fn chrf(hyp: &str, reference: &str) -> f64 {
    let squash = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<Vec<char>>()
    };
    let (h, r) = (squash(hyp), squash(reference));
    fn grams(s: &[char], n: usize) -> HashMap<&[char], usize> {
        let mut m: HashMap<&[char], usize> = HashMap::new();
        for w in s.windows(n) {
            *m.entry(w).or_default() += 1;
        }
        m
    }
    let (mut p, mut rc, mut orders) = (0.0, 0.0, 0);
    for n in 1..=6 {
        let (hg, rg) = (grams(&h, n), grams(&r, n));
        if hg.is_empty() || rg.is_empty() {
            continue;
        }
        let matched: usize = hg
            .iter()
            .map(|(g, c)| (*c).min(rg.get(g).copied().unwrap_or(0)))
            .sum();
        p += matched as f64 / hg.values().sum::<usize>() as f64;
        rc += matched as f64 / rg.values().sum::<usize>() as f64;
        orders += 1;
    }
    if orders == 0 || p + rc == 0.0 {
        return 0.0;
    }
    let (p, rc) = (p / orders as f64, rc / orders as f64);
    100.0 * 5.0 * p * rc / (4.0 * p + rc)
}

/// Characters outside Latin script, spaces and punctuation (ASCII, Latin-1 and Latin Extended
/// letters, general punctuation).
fn non_latin(text: &str) -> String {
    let mut seen = HashSet::new();
    text.chars()
        .filter(|&c| {
            let u = c as u32;
            !(c.is_ascii()
                || c.is_whitespace()
                || (0xA0..=0x24F).contains(&u)
                || (0x1E00..=0x1EFF).contains(&u)
                || (0x2000..=0x206F).contains(&u))
        })
        .filter(|c| seen.insert(*c))
        .collect()
}

#[test]
fn chrf_matches_sacrebleu() {
    // Values from sacrebleu 2.x `sentence_chrf(hyp, [ref]).score`.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
    assert!(close(
        chrf(
            "The sands are whitish with medium grain.",
            "The sands are whitish, of medium grain and have very little assistance."
        ),
        47.2538
    ));
    assert!(close(chrf("Hello world", "hello World!"), 34.3999));
    assert!(close(chrf("a", "a"), 100.0));
    assert_eq!(non_latin("The 레 café, “quoted” — 3%"), "레");
}

#[test]
fn translations_are_latin_english_close_to_faster_whisper() {
    let Some(dir) = base_model() else { return };
    let engine = Engine::load(&dir).expect("load the base model");
    let refs = references();
    let entries = manifest();
    let o = TranscribeOptions {
        task: Task::Translate,
        ..Default::default()
    };
    for id in CLIPS {
        let e = entries
            .iter()
            .find(|e| e.id == id)
            .expect("clip in manifest");
        let t = engine
            .transcribe_bytes(read(&format!("eval/{}", e.path)), &o)
            .unwrap();
        let score = chrf(&t.text, &refs[id]);
        eprintln!("{id}: chrF {score:.1}: {:?} vs {:?}", t.text, refs[id]);
        assert_eq!(non_latin(&t.text), "", "{id}: not English: {:?}", t.text);
        assert!(score >= 50.0, "{id}: chrF {score:.1}: {:?}", t.text);
    }
}

/// Language identification (issue #21): `/detect-language`'s engine path, and OpenAI's
/// `languages[]` restricting detection before a transcription.
#[test]
fn language_detection_and_possible_languages() {
    let Some(dir) = base_model() else { return };
    let engine = Engine::load(&dir).expect("load the base model");
    let ja = read("eval/multilingual/ja/picovoice-leopard-test_ja.wav");
    let detect = |languages: &[&str]| {
        engine
            .transcribe_bytes(
                ja.clone(),
                &TranscribeOptions {
                    language_detection_only: true,
                    languages: languages.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            )
            .expect("detect")
    };
    let t = detect(&[]);
    let probs = t.language_probabilities.expect("probabilities");
    assert_eq!(
        (t.language.as_str(), probs[0].language.as_str()),
        ("ja", "ja")
    );
    assert!(probs[0].probability > 0.9 && t.text.is_empty() && t.segments.is_empty());
    assert!(probs
        .windows(2)
        .all(|w| w[0].probability >= w[1].probability));
    let total: f32 = probs.iter().map(|p| p.probability).sum();
    assert!((total - 1.0).abs() < 1e-3, "{total}");
    // Among English and Chinese only: one of those, and the two sum to 1.
    let t = detect(&["en", "Chinese"]);
    let probs = t.language_probabilities.unwrap();
    assert_eq!(probs.len(), 2);
    assert!(["en", "zh"].contains(&t.language.as_str()));
    // A transcription restricted the same way is in that language.
    let t = engine
        .transcribe_bytes(
            ja.clone(),
            &TranscribeOptions {
                languages: vec!["zh".into(), "ko".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        ["zh", "ko"].contains(&t.language.as_str()),
        "{}",
        t.language
    );
    // An unknown code names the parameter.
    let e = engine
        .check_options(&TranscribeOptions {
            languages: vec!["xx".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(
        e,
        whisperd::EngineError::InvalidOption {
            param: "languages",
            ..
        }
    ));
}

use whisperd::decode::{DecodeError, ModelRunner};
use whisperd::model::{AlignOutput, AlignRequest, DecoderState, Whisper};

/// Counts the network calls a transcription makes, passing them on to the model.
struct Counting<'a> {
    model: &'a Whisper,
    encodes: std::sync::atomic::AtomicUsize,
    prepares: std::sync::atomic::AtomicUsize,
}

impl ModelRunner for Counting<'_> {
    fn dims(&self) -> &whisperd::model::ModelDims {
        &self.model.dims
    }
    fn device(&self) -> &candle_core::Device {
        &self.model.device
    }
    fn encode(&self, mel: candle_core::Tensor) -> Result<candle_core::Tensor, DecodeError> {
        self.encodes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        <Whisper as ModelRunner>::encode(self.model, mel)
    }
    fn prepare(&self, features: &candle_core::Tensor) -> Result<DecoderState, DecodeError> {
        self.prepares
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        <Whisper as ModelRunner>::prepare(self.model, features)
    }
    fn prefill(
        &self,
        state: &mut DecoderState,
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>, DecodeError> {
        <Whisper as ModelRunner>::prefill(self.model, state, tokens, rows)
    }
    fn step(
        &self,
        lanes: &mut [DecoderState],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, DecodeError> {
        <Whisper as ModelRunner>::step(self.model, lanes, tokens)
    }
    fn align(
        &self,
        state: &mut DecoderState,
        req: AlignRequest,
    ) -> Result<AlignOutput, DecodeError> {
        <Whisper as ModelRunner>::align(self.model, state, req)
    }
}

/// Detecting the language reads the first window's audio keys and values that decoding then
/// uses: computed once per window (they cost ~9 GFLOP a window on base), not again for the
/// detection; the transcript is the same as with the language given.
#[test]
fn language_detection_reuses_the_windows_audio_keys_and_values() {
    let Some(dir) = base_model() else { return };
    let engine = Engine::load(&dir).expect("load the base model");
    let es = read("eval/multilingual/es/picovoice-leopard-test_es.wav");
    let detect = engine
        .check_options(&TranscribeOptions::default())
        .expect("options");
    let prepared = engine.prepare_bytes(es, None, &detect).expect("prepare");
    let counting = Counting {
        model: &engine.model,
        encodes: Default::default(),
        prepares: Default::default(),
    };
    let detected = engine
        .transcribe_prepared_with(&counting, &prepared, &detect)
        .expect("transcribe");
    assert_eq!(detected.language, "es");
    let (encodes, prepares) = (
        counting.encodes.into_inner(),
        counting.prepares.into_inner(),
    );
    assert!(encodes >= 1);
    assert_eq!(prepares, encodes, "one cross-attention setup per window");
    let given = engine
        .transcribe_prepared(
            &prepared,
            &engine
                .check_options(&TranscribeOptions {
                    language: Some("es".into()),
                    ..Default::default()
                })
                .expect("options"),
        )
        .expect("transcribe");
    assert_eq!(detected.text, given.text);
}
