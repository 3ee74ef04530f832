//! Numeric parity with the reference implementations (../shared/reference).

mod common;

use candle_core::{Device, Tensor};
use common::*;
use whisperd::decode::{decode_window, WindowOptions};
use whisperd::mel::{MelSpectrogram, N_FRAMES, N_SAMPLES};
use whisperd::Task;

fn reference_tokens() -> serde_json::Value {
    serde_json::from_slice(&read("reference/jfk_tokens.json")).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn jfk_pcm() -> whisperd::audio::Pcm {
    whisperd::audio::load_pcm(read("eval/jfk.wav"), None).unwrap()
}

fn reference_mel() -> Tensor {
    Tensor::read_npy(shared().join("reference/jfk_mel.npy")).unwrap()
}

#[test]
fn log_mel_matches_hugging_face_feature_extractor() {
    let pcm = jfk_pcm();
    // The reference pads the clip with zeros to 30 s before the STFT.
    let samples = pcm.samples.to_vec().unwrap();
    let mel = MelSpectrogram::new(80)
        .compute(&samples, N_SAMPLES - samples.len())
        .unwrap();
    assert_eq!((mel.n_mels, mel.n_frames), (80, N_FRAMES));
    let reference: Vec<f32> = reference_mel().flatten_all().unwrap().to_vec1().unwrap();
    let max_diff = mel
        .window(0, N_FRAMES)
        .unwrap()
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("mel max abs difference vs jfk_mel.npy: {max_diff:e}");
    assert!(max_diff <= 2e-3, "max abs difference {max_diff}");
}

/// Greedy tokens without timestamps for a `(1, 80, 3000)` mel.
fn greedy_tokens(mel: &Tensor) -> Vec<u32> {
    greedy_tokens_with(engine(), mel)
}

fn greedy_tokens_with(e: &whisperd::Engine, mel: &Tensor) -> Vec<u32> {
    let features = e.model.encode(mel).unwrap();
    let mut state = e.model.decoder.prepare(&features).unwrap();
    let o = WindowOptions {
        language_token: None,
        task: Task::Transcribe,
        timestamps: false,
        prompt: vec![],
        keywords: vec![],
        text_probs: false,
    };
    let rules = whisperd::decode::window::FallbackRules {
        beam: Default::default(),
        compression_ratio_threshold: None,
        logprob_threshold: None,
        no_speech_threshold: None,
        best_of: 1,
    };
    let r = decode_window(
        &*e.model,
        &e.tokenizer,
        &e.suppress,
        &mut state,
        &o,
        &[0.0],
        rules,
        &mut whisperd::decode::window::new_rng(),
    )
    .unwrap();
    r.result.tokens
}

#[test]
fn start_sequence_of_english_only_model() {
    let e = engine();
    let o = WindowOptions {
        language_token: None,
        task: Task::Transcribe,
        timestamps: false,
        prompt: vec![],
        keywords: vec![],
        text_probs: false,
    };
    let (start, sot_index) = whisperd::decode::window::initial_tokens(&e.tokenizer, false, &o, 448);
    assert_eq!(start, ids(&reference_tokens()["prompt"]));
    assert_eq!(sot_index, 0);
}

#[test]
fn tokens_match_reference_on_audio_padded_mel() {
    let tokens = greedy_tokens(&reference_mel().unsqueeze(0).unwrap());
    assert_eq!(tokens, ids(&reference_tokens()["tokens"]));
}

#[test]
fn tokens_match_reference_on_log_mel_padded_window() {
    // transcribe()'s way: the content frames, then zeros in the log-mel domain.
    let r = reference_tokens();
    let pcm = jfk_pcm();
    let mel = MelSpectrogram::new(80)
        .compute_from(&pcm.samples, N_SAMPLES)
        .unwrap();
    let content = pcm.samples.len() / 160;
    assert_eq!(content, 1100);
    let window = Tensor::from_vec(
        mel.window(0, content).unwrap(),
        (1, 80, N_FRAMES),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        greedy_tokens(&window),
        ids(&r["transcribe_style"]["tokens"])
    );

    // And the same through the whole engine (timestamps off).
    let o = whisperd::TranscribeOptions {
        timestamps: false,
        ..Default::default()
    };
    let t = engine().transcribe_pcm(&pcm, &o).unwrap();
    let all: Vec<u32> = t.segments.iter().flat_map(|s| s.tokens.clone()).collect();
    assert_eq!(all, ids(&r["transcribe_style"]["tokens"]));
    assert_eq!(t.text, r["transcribe_style"]["text"].as_str().unwrap());
}

/// q8: int8 decoder weights, and a bf16 encoder (AMX) or an integer one (ten bits on AVX2, bytes
/// on AVX-512 VNNI). Lossy by design, yet close enough that the reference tokens come out
/// unchanged, and the audio features stay within a few percent of f32.
#[test]
fn q8_gives_reference_tokens_and_features_close_to_f32() {
    let q8 =
        whisperd::Engine::load_with(&model_dir(), &Device::Cpu, whisperd::model::Precision::Q8)
            .unwrap();
    let mel = reference_mel().unsqueeze(0).unwrap();
    assert_eq!(
        greedy_tokens_with(&q8, &mel),
        ids(&reference_tokens()["tokens"])
    );
    let features = |e: &whisperd::Engine| -> Vec<f32> {
        e.model
            .encode(&mel)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (exact, fast) = (features(engine()), features(&q8));
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let diff: Vec<f32> = exact.iter().zip(&fast).map(|(a, b)| a - b).collect();
    let rel = norm(&diff) / norm(&exact);
    eprintln!(
        "q8 encoder (AMX: {}) relative L2 difference vs f32: {rel:e}",
        whisperd::model::bf16::amx_available()
    );
    // bf16 (AMX) or ten-bit integers (AVX2): under 2 %. Bytes (AVX-512 VNNI): 3.6 % on jfk with
    // the first convolution in ten bits, 5.3 % had it been in bytes too.
    let bytes = whisperd_kernels::intgemm::WeightBits::for_tier(whisperd_kernels::isa::Tier::best())
        == whisperd_kernels::intgemm::WeightBits::Eight
        && !whisperd::model::bf16::amx_available();
    let bound = if bytes { 4.5e-2 } else { 2e-2 };
    assert!(rel < bound, "relative difference {rel} (bound {bound})");
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A batch of windows (run side by side on a CPU) gives each window the features it gets alone,
/// in order: two different windows, batched both ways round.
#[test]
fn encoder_batch_gives_each_window_its_own_features() {
    let e = engine();
    let a = reference_mel().unsqueeze(0).unwrap();
    // A second, different window: the same audio a second later.
    let pcm = jfk_pcm();
    let samples = pcm.samples.to_vec().unwrap();
    let b = MelSpectrogram::new(80)
        .compute(&samples[16_000..], N_SAMPLES - samples.len() + 16_000)
        .unwrap();
    let b = Tensor::from_vec(
        b.window(0, N_FRAMES).unwrap(),
        (1, 80, N_FRAMES),
        &Device::Cpu,
    )
    .unwrap();
    let alone = |m: &Tensor| e.model.encode(m).unwrap();
    let (fa, fb) = (alone(&a), alone(&b));
    for (first, second, want) in [(&a, &b, [&fa, &fb]), (&b, &a, [&fb, &fa])] {
        let batch = e
            .model
            .encode(&Tensor::cat(&[first, second], 0).unwrap())
            .unwrap();
        for (i, w) in want.into_iter().enumerate() {
            let got = batch.narrow(0, i, 1).unwrap();
            let diff = max_abs_diff(&got, w);
            assert!(
                diff <= 1e-5,
                "window {i} differs from its features alone by {diff}"
            );
        }
    }
    let diff = max_abs_diff(&fa, &fb);
    assert!(diff > 1e-2, "the two test windows should differ");
}

#[test]
fn computed_suppress_list_matches_the_model_config() {
    // The fallback for model directories without a suppress list must equal what CTranslate2 ships.
    let e = engine();
    let computed = whisperd::engine::computed_suppress_tokens(&e.tokenizer).unwrap();
    assert_eq!(computed, e.suppress);
}

/// The decoder's device backend (candle ops end to end, the GPU's path) run on candle's CPU
/// device gives the host backend's transcript of jfk token for token: greedy with timestamps,
/// beam 5 (forked lanes), and word timestamps (the alignment pass) within 20 ms.
#[test]
fn device_decoder_on_the_cpu_matches_the_host_decoder() {
    use whisperd::model::{DecoderPath, Numerics, Precision};
    let numerics = Numerics::choose(Precision::F32, &Device::Cpu)
        .unwrap()
        .with_decoder(DecoderPath::Device, &Device::Cpu)
        .unwrap();
    let device = whisperd::Engine::load_numerics(&model_dir(), &Device::Cpu, numerics, None)
        .expect("tiny.en with the device decoder");
    assert_eq!(device.model.decoder.path(), DecoderPath::Device);
    assert_eq!(engine().model.decoder.path(), DecoderPath::Host);
    // The device decoder is f32 only.
    let q8 = Numerics::choose(Precision::Q8, &Device::Cpu).unwrap();
    let e = q8
        .with_decoder(DecoderPath::Device, &Device::Cpu)
        .unwrap_err();
    assert!(e.to_string().contains("f32 only"), "{e}");

    let pcm = jfk_pcm();
    let tokens = |t: &whisperd::Transcript| -> Vec<u32> {
        t.segments.iter().flat_map(|s| s.tokens.clone()).collect()
    };
    let greedy = whisperd::TranscribeOptions::default();
    let mut beam = whisperd::TranscribeOptions::default();
    beam.beam.beam_size = 5;
    let words = whisperd::TranscribeOptions {
        word_timestamps: true,
        ..Default::default()
    };
    for (what, o) in [("greedy", &greedy), ("beam 5", &beam), ("words", &words)] {
        let host = engine().transcribe_pcm(&pcm, o).unwrap();
        let dev = device.transcribe_pcm(&pcm, o).unwrap();
        assert_eq!(tokens(&dev), tokens(&host), "{what}");
        assert_eq!(dev.text, host.text, "{what}");
        let w = |t: &whisperd::Transcript| -> Vec<whisperd::transcript::Word> {
            t.segments
                .iter()
                .flat_map(|s| s.words.clone().unwrap_or_default())
                .collect()
        };
        let (hw, dw) = (w(&host), w(&dev));
        assert_eq!(hw.len(), dw.len(), "{what}");
        for (h, d) in hw.iter().zip(&dw) {
            assert_eq!(h.word, d.word);
            assert!(
                (h.start - d.start).abs() <= 0.02 && (h.end - d.end).abs() <= 0.02,
                "{what}: {h:?} vs {d:?}"
            );
            assert!(
                (h.probability - d.probability).abs() < 1e-2,
                "{h:?} vs {d:?}"
            );
        }
        if what == "words" {
            assert!(!dw.is_empty(), "word timestamps came back empty");
        }
    }
}
