//! The engine end to end on real audio: every container format, bad inputs, silence and noise,
//! long-form audio, and both model layouts.

mod common;

use common::*;
use whisperd::audio::AudioError;
use whisperd::{EngineError, TranscribeOptions};

fn transcribe(bytes: Vec<u8>) -> Result<whisperd::Transcript, EngineError> {
    engine().transcribe_bytes(bytes, &TranscribeOptions::default())
}

#[test]
fn every_container_format_gives_the_text_of_its_source() {
    let refs = manifest();
    let dir = shared().join("eval/formats");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 14, "expected the 14 files of eval/formats");
    let mut sources = std::collections::HashMap::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let source_id = name.split('.').next().unwrap();
        let entry = refs
            .iter()
            .find(|e| e.id == source_id)
            .unwrap_or_else(|| panic!("no reference for {name}"));
        // The transcript of the original recording, against which the re-encoded copy is held.
        let source = sources
            .entry(source_id.to_string())
            .or_insert_with(|| {
                transcribe(read(&format!("eval/{}", entry.path)))
                    .unwrap()
                    .text
            })
            .clone();
        let t = transcribe(std::fs::read(&f).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (vs_source, vs_reference) = (wer(&source, &t.text), wer(&entry.text, &t.text));
        eprintln!(
            "{name}: WER vs source transcript {vs_source:.3}, vs reference {vs_reference:.3}: {}",
            t.text
        );
        assert!(
            vs_source <= 0.10,
            "{name}: {:?} differs from the source's {source:?}",
            t.text
        );
        assert!(
            vs_reference <= 0.15,
            "{name}: WER {vs_reference:.3} for {:?}",
            t.text
        );
        assert!(
            (t.duration - 11.0).abs() < 0.2,
            "{name}: duration {}",
            t.duration
        );
    }
}

fn audio_error(bytes: Vec<u8>) -> AudioError {
    match transcribe(bytes) {
        Err(EngineError::Audio(e)) => e,
        other => panic!("expected an audio error, got {other:?}"),
    }
}

#[test]
fn each_bad_input_gets_its_own_error() {
    assert!(matches!(audio_error(vec![]), AudioError::Empty));
    assert!(matches!(
        audio_error(b"this is plain text, not audio\n".repeat(40)),
        AudioError::NotAudio(_)
    ));
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(noise(256, 1.0).iter().map(|x| (x * 100.0) as u8));
    assert!(matches!(audio_error(png), AudioError::NotAudio(_)));

    // A clip cut in half: the container declares 11 s.
    let wav = read("eval/jfk.wav");
    match audio_error(wav[..wav.len() / 2].to_vec()) {
        AudioError::Truncated {
            declared_s,
            decoded_s,
        } => assert!(declared_s > 10.9 && decoded_s < 6.0),
        e => panic!("truncated wav gave {e:?}"),
    }
    let flac = read("eval/formats/jfk.flac");
    assert!(matches!(
        audio_error(flac[..flac.len() / 2].to_vec()),
        AudioError::Truncated { .. }
    ));
    // Cut inside the header.
    assert!(matches!(
        audio_error(wav[..30].to_vec()),
        AudioError::Corrupt(_)
    ));

    // Garbage over the middle of an mp3 stream.
    let mut mp3 = read("eval/formats/jfk.mp3");
    let n = mp3.len();
    mp3[n / 5..n * 4 / 5].copy_from_slice(
        &noise(n * 4 / 5 - n / 5, 1.0)
            .iter()
            .map(|x| (x * 127.0) as i8 as u8)
            .collect::<Vec<_>>(),
    );
    assert!(matches!(
        audio_error(mp3),
        AudioError::Corrupt(_) | AudioError::Truncated { .. }
    ));

    // A WAV holding a codec we do not decode (GSM 6.10, format tag 0x0031), named in the error.
    let mut gsm = wav_bytes(&noise(1600, 0.1), 8000);
    gsm[20..22].copy_from_slice(&0x0031u16.to_le_bytes());
    match audio_error(gsm) {
        AudioError::UnsupportedCodec(name) => assert!(name.contains("GSM"), "{name}"),
        e => panic!("gsm gave {e:?}"),
    }

    // A valid header with no samples.
    assert!(matches!(
        audio_error(wav_bytes(&[], 16_000)),
        AudioError::NoSamples | AudioError::Corrupt(_)
    ));
}

#[test]
fn silence_and_low_noise_give_empty_text() {
    for (what, samples) in [
        ("silence", vec![0.0f32; 16_000 * 8]),
        ("noise", noise(16_000 * 8, 0.003)),
    ] {
        let t = transcribe(wav_bytes(&samples, 16_000)).unwrap();
        assert_eq!(t.text, "", "{what} gave {:?}", t.text);
        assert!(t.segments.is_empty(), "{what}: {:?}", t.segments);
    }
}

#[test]
fn long_audio_is_complete_with_non_decreasing_timestamps() {
    let entry = manifest()
        .into_iter()
        .find(|e| e.category == "longform" && e.lang == "en")
        .expect("English long-form entry");
    assert!(entry.duration_s > 60.0);
    let t = transcribe(read(&format!("eval/{}", entry.path))).unwrap();
    let w = wer(&entry.text, &t.text);
    eprintln!("long-form WER {w:.3}, {} segments", t.segments.len());
    assert!(w < 0.12, "long-form WER {w:.3}");
    let mut last_end = 0.0;
    for s in &t.segments {
        assert!(
            s.start >= last_end - 1e-6 && s.end >= s.start,
            "segment {} [{}, {}] after {}",
            s.id,
            s.start,
            s.end,
            last_end
        );
        last_end = s.end;
    }
    assert!(
        last_end > entry.duration_s - 15.0 && last_end <= entry.duration_s + 0.5,
        "last segment ends at {last_end}"
    );
    // Segments tile the text: nothing said twice at a window boundary.
    let joined: String = t.segments.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(joined.trim(), t.text);
}

#[test]
fn both_model_layouts_give_identical_tokens() {
    let dst = tempfile::tempdir().unwrap();
    let hf_dir = dst.path().join("whisper-tiny.en-hf");
    whisperd::convert_to_safetensors(&model_dir(), &hf_dir).unwrap();
    assert!(hf_dir.join("model.safetensors").exists() && hf_dir.join("config.json").exists());
    let hf = whisperd::Engine::load(&hf_dir).unwrap();
    assert_eq!(hf.model.layout, whisperd::model::Layout::HuggingFace);
    assert_eq!(hf.model.dims, engine().model.dims);
    let bytes = read("eval/jfk.wav");
    let a = engine()
        .transcribe_bytes(bytes.clone(), &TranscribeOptions::default())
        .unwrap();
    let b = hf
        .transcribe_bytes(bytes, &TranscribeOptions::default())
        .unwrap();
    let tokens = |t: &whisperd::Transcript| {
        t.segments
            .iter()
            .flat_map(|s| s.tokens.clone())
            .collect::<Vec<_>>()
    };
    assert!(!tokens(&a).is_empty());
    assert_eq!(tokens(&a), tokens(&b));

    // A config.json that disagrees with the weights is reported, naming the file.
    let cfg = hf_dir.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"decoder_layers\": 4", "\"decoder_layers\": 6");
    std::fs::write(&cfg, text).unwrap();
    let err = whisperd::Engine::load(&hf_dir)
        .err()
        .expect("mismatched config must fail")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("decoder_layers"),
        "{err}"
    );
}

#[test]
fn missing_and_truncated_model_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = whisperd::Engine::load(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.bin") && err.contains("model.safetensors"),
        "{err}"
    );

    let bin = std::fs::read(model_dir().join("model.bin")).unwrap();
    std::fs::write(dir.path().join("model.bin"), &bin[..bin.len() / 3]).unwrap();
    let err = whisperd::Engine::load(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.bin") && err.contains("truncated"),
        "{err}"
    );

    std::fs::write(dir.path().join("model.bin"), &bin).unwrap();
    let err = whisperd::Engine::load(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn options_are_checked_against_the_model() {
    let e = engine();
    let bad_lang = TranscribeOptions {
        language: Some("klingon".into()),
        ..Default::default()
    };
    assert!(matches!(
        e.check_options(&bad_lang),
        Err(EngineError::InvalidOption { .. })
    ));
    let german = TranscribeOptions {
        language: Some("de".into()),
        ..Default::default()
    };
    assert!(matches!(
        e.check_options(&german),
        Err(EngineError::InvalidOption { .. })
    ));
    let english = TranscribeOptions {
        language: Some("English".into()),
        task: whisperd::Task::Translate,
        ..Default::default()
    };
    let o = e.check_options(&english).unwrap();
    assert_eq!(o.language.as_deref(), Some("en"));
    assert_eq!(
        o.task,
        whisperd::Task::Transcribe,
        "English-only models transcribe when asked to translate"
    );
}

#[test]
fn initial_prompt_is_not_part_of_the_text() {
    let o = TranscribeOptions {
        initial_prompt: Some("President Kennedy's inaugural address.".into()),
        ..Default::default()
    };
    let t = engine().transcribe_bytes(read("eval/jfk.wav"), &o).unwrap();
    assert!(!t.text.contains("inaugural"), "{}", t.text);
    assert!(wer("And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.", &t.text) < 0.1, "{}", t.text);
}

#[test]
fn q8_precision_transcribes_like_f32() {
    let q8 = whisperd::Engine::load_with(
        &model_dir(),
        &candle_core::Device::Cpu,
        whisperd::model::Precision::Q8,
    )
    .unwrap();
    for rel in [
        "eval/jfk.wav",
        "eval/librispeech/test-clean/237-134500-0000.flac",
    ] {
        let a = engine()
            .transcribe_bytes(read(rel), &TranscribeOptions::default())
            .unwrap();
        let b = q8
            .transcribe_bytes(read(rel), &TranscribeOptions::default())
            .unwrap();
        assert!(
            wer(&a.text, &b.text) <= 0.1,
            "{rel}: f32 {:?} vs q8 {:?}",
            a.text,
            b.text
        );
    }
}

/// OpenAI's `keywords[]` (faster-whisper's hotwords): tiny.en hears the name Marie as "Paris" in
/// this LibriSpeech utterance; with the name as a keyword it writes it, and nothing else changes.
#[test]
fn keywords_fix_a_misheard_name_and_change_nothing_else() {
    let audio = read("eval/librispeech/test-clean/237-134500-0027.flac");
    let plain = TranscribeOptions {
        vad: whisperd::vad::VadOptions {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let words = |t: &str| -> Vec<String> {
        t.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
                    .to_lowercase()
            })
            .collect()
    };
    let without = engine()
        .transcribe_bytes(audio.clone(), &plain)
        .unwrap()
        .text;
    let with = engine()
        .transcribe_bytes(
            audio,
            &TranscribeOptions {
                keywords: vec!["Marie".into(), "Emil".into()],
                ..plain.clone()
            },
        )
        .unwrap()
        .text;
    eprintln!("without: {without}\nwith: {with}");
    let (a, b) = (words(&without), words(&with));
    assert!(!a.iter().any(|w| w.starts_with("marie")), "{without}");
    assert_eq!(b[0], "marie's", "{with}");
    assert_eq!(a[1..], b[1..], "the rest changed");
    // The keywords are not part of the text, and too many are refused.
    let too_many = TranscribeOptions {
        keywords: vec!["x".into(); 101],
        ..Default::default()
    };
    assert!(matches!(
        engine().check_options(&too_many),
        Err(EngineError::InvalidOption {
            param: "keywords",
            ..
        })
    ));
}
