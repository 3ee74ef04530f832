//! Beam search against an independent implementation: faster-whisper float32 with
//! `beam_size=5` on the same weights (`tests/data/beam5_faster_whisper.jsonl`, written by
//! `scripts/beam_reference.py`), on clips where its beam and greedy texts differ.

mod common;

use common::{engine, read, root};
use whisperd::decode::BeamOptions;
use whisperd::{Engine, TranscribeOptions};

#[derive(serde::Deserialize)]
struct Run {
    text: String,
}

#[derive(serde::Deserialize)]
struct Reference {
    id: String,
    path: String,
    duration_s: f64,
    greedy: Run,
    beam5: Run,
}

fn references() -> Vec<Reference> {
    let p = root().join("tests/data/beam5_faster_whisper.jsonl");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("reference line"))
        .collect()
}

/// As the reference ran: temperature 0 only (no fallback), no VAD, timestamps on.
fn options(beam_size: usize) -> TranscribeOptions {
    TranscribeOptions {
        temperatures: vec![0.0],
        beam: BeamOptions {
            beam_size,
            ..Default::default()
        },
        vad: whisperd::vad::VadOptions {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn transcribe(path: &str, o: &TranscribeOptions) -> whisperd::transcript::Transcript {
    let e = engine();
    let pcm = Engine::load_audio(read(&format!("eval/{path}"))).expect("audio");
    let p = e.prepare(&pcm, &o.vad).expect("prepare");
    e.transcribe_prepared(&p, &e.check_options(o).expect("options"))
        .expect("transcribe")
}

#[test]
fn beam_five_gives_faster_whispers_text_where_it_differs_from_greedy() {
    // The short clips where faster-whisper's beam 5 and greedy disagree (jfk among them).
    let cases: Vec<Reference> = references()
        .into_iter()
        .filter(|r| r.greedy.text != r.beam5.text && r.duration_s <= 11.0)
        .collect();
    assert!(cases.len() >= 6, "only {} differing clips", cases.len());
    for r in &cases {
        let beam = transcribe(&r.path, &options(5));
        assert_eq!(
            beam.text.trim(),
            r.beam5.text,
            "{}: beam 5 differs from faster-whisper's",
            r.id
        );
        let greedy = transcribe(&r.path, &options(1));
        assert_eq!(
            greedy.text.trim(),
            r.greedy.text,
            "{}: greedy differs from faster-whisper's",
            r.id
        );
    }
}

#[test]
fn beam_with_word_timestamps_times_the_chosen_beams_words() {
    // "Aren't you splashed? ..." with beam 5, "Archie is flashed. ..." greedy.
    let r = references()
        .into_iter()
        .find(|r| r.id == "237-134500-0011")
        .expect("clip in the reference");
    let o = TranscribeOptions {
        word_timestamps: true,
        ..options(5)
    };
    let t = transcribe(&r.path, &o);
    assert_eq!(t.text.trim(), r.beam5.text);
    let words: String = t
        .segments
        .iter()
        .flat_map(|s| s.words.iter().flatten())
        .map(|w| w.word.as_str())
        .collect();
    assert_eq!(words.trim(), r.beam5.text, "words are the chosen beam's");
    let mut last = 0.0;
    for s in &t.segments {
        for w in s.words.iter().flatten() {
            assert!(w.start >= last - 1e-9 && w.end >= w.start, "{w:?}");
            last = w.end;
        }
    }
}

#[test]
fn wider_beams_and_patience_still_end_and_never_score_worse_than_greedy_on_jfk() {
    // Patience 2 collects ten finished candidates; beam 8 runs eight lanes. Both finish the
    // sentence, and the kept text is at least as likely per token as greedy's.
    let greedy = transcribe("jfk.wav", &options(1));
    for o in [
        TranscribeOptions {
            beam: BeamOptions {
                beam_size: 3,
                patience: 2.0,
                length_penalty: Some(1.0),
            },
            ..options(1)
        },
        options(8),
    ] {
        let t = transcribe("jfk.wav", &o);
        assert!(
            t.text.contains("ask what you can do for your country"),
            "{o:?}: {}",
            t.text
        );
        let avg = |t: &whisperd::transcript::Transcript| {
            t.segments.iter().map(|s| s.avg_logprob).sum::<f32>() / t.segments.len() as f32
        };
        assert!(
            avg(&t) >= avg(&greedy) - 0.05,
            "{:?}: {} vs greedy {}",
            o.beam,
            avg(&t),
            avg(&greedy)
        );
    }
}

#[test]
fn beam_five_on_the_multilingual_base_model_gives_faster_whispers_text() {
    // The start sequence carries language and task tokens here; the clips are those where
    // faster-whisper's beam 5 and greedy disagree on base.
    let Some(dir) = common::base_model() else {
        return;
    };
    let e = Engine::load(&dir).expect("load base");
    let p = root().join("tests/data/beam5_faster_whisper_base.jsonl");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let cases: Vec<Reference> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("reference line"))
        .filter(|r: &Reference| r.greedy.text != r.beam5.text)
        .collect();
    assert!(cases.len() >= 5, "only {} differing clips", cases.len());
    for r in &cases {
        let o = TranscribeOptions {
            language: Some("en".into()),
            ..options(5)
        };
        let pcm = Engine::load_audio(read(&format!("eval/{}", r.path))).expect("audio");
        let prepared = e.prepare(&pcm, &o.vad).expect("prepare");
        let o = e.check_options(&o).expect("options");
        let t = e.transcribe_prepared(&prepared, &o).expect("transcribe");
        assert_eq!(t.text.trim(), r.beam5.text, "{}: base beam 5", r.id);
    }
}
