//! whisperd's side of the per-stage comparison with CTranslate2 (`scripts/stage_bench.py` runs
//! both and prints the table): one JSON line per stage with the median milliseconds.
//!
//! `WHISPERD_BENCH_MODEL=models/whisper-base cargo bench --bench stages`; `WHISPERD_STAGE_RUNS`
//! sets the repetitions (default 7), `WHISPERD_STAGE_STEPS` the decoder steps' sequence counts
//! (default `1,8`; `1,5,10` times a beam of 5 alone and two side by side; `scripts/
//! stage_bench.py` tabulates only 1 and 8). Stages: model load, log-mel of 30 s, the encoder on
//! one 30-s window and on eight, one decoder step (output projection included) at positions 1,
//! 100 and 200 for each of those sequence counts, the output projection alone and the logit
//! rules of a step — in f32 and in q8.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use whisperd::decode::filters::{apply_timestamp_rules, log_softmax, suppress};
use whisperd::mel::{MelSpectrogram, N_FRAMES, N_SAMPLES};
use whisperd::model::Precision;
use whisperd::Engine;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Median wall milliseconds of `runs` calls of `f` after one warm-up; `setup` (untimed) makes
/// each call's input.
fn median_ms<S, T>(runs: usize, mut setup: impl FnMut() -> S, mut f: impl FnMut(S) -> T) -> f64 {
    std::hint::black_box(f(setup()));
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = setup();
            let t0 = Instant::now();
            let out = std::hint::black_box(f(s));
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            // Dropped outside the timing (a loaded model's teardown is not its load), as the
            // CTranslate2 side does.
            drop(out);
            ms
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn emit(model: &str, precision: &str, stage: &str, ms: f64) {
    println!(
        "{}",
        serde_json::json!({"system": "whisperd", "model": model, "precision": precision, "stage": stage, "ms": (ms * 1000.0).round() / 1000.0})
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let model_dir = std::env::var_os("WHISPERD_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/whisper-tiny.en"));
    let runs: usize = std::env::var("WHISPERD_STAGE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
        .max(1);
    let step_sizes: Vec<usize> = match std::env::var("WHISPERD_STAGE_STEPS") {
        Err(_) => vec![1, 8],
        Ok(v) => v
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => panic!("WHISPERD_STAGE_STEPS={v:?}: expected sequence counts like 1,5,8"),
            })
            .collect(),
    };
    let name = model_dir
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("whisper-")
                .to_string()
        })
        .unwrap_or_default();
    let jfk = std::fs::read(root().join("../shared/eval/jfk.wav")).expect("../shared/eval/jfk.wav");
    let samples = whisperd::audio::load_pcm(jfk, None)
        .expect("jfk")
        .samples
        .to_vec()
        .expect("samples");
    let thirty_s: Vec<f32> = samples.iter().cycle().take(N_SAMPLES).copied().collect();

    for precision in [Precision::F32, Precision::Q8] {
        let p = match precision {
            Precision::F32 => "f32",
            _ => "q8",
        };
        let load = median_ms(
            runs.min(3),
            || (),
            |_| Engine::load_with(&model_dir, &Device::Cpu, precision).expect("model"),
        );
        emit(&name, p, "model_load", load);
        let engine = Engine::load_with(&model_dir, &Device::Cpu, precision).expect("model");
        let n_mels = engine.model.dims.n_mels;
        let mel = MelSpectrogram::new(n_mels);
        if precision == Precision::F32 {
            emit(
                &name,
                p,
                "mel_30s",
                median_ms(runs, || (), |_| mel.compute(&thirty_s, 0).expect("mel")),
            );
        }
        let window = Tensor::from_vec(
            mel.compute(&thirty_s, 0)
                .expect("mel")
                .window(0, N_FRAMES)
                .expect("window"),
            (1, n_mels, N_FRAMES),
            &Device::Cpu,
        )
        .expect("tensor");
        let m = &engine.model;
        emit(
            &name,
            p,
            "encoder_window",
            median_ms(runs, || (), |_| m.encode(&window).expect("encode")),
        );
        let eight = Tensor::cat(&[&window; 8], 0).expect("cat");
        emit(
            &name,
            p,
            "encoder_batch_8",
            median_ms(runs.min(3), || (), |_| m.encode(&eight).expect("encode")),
        );

        let features = m.encode(&window).expect("encode");
        let dec = &m.decoder;
        let sp = &engine.tokenizer.specials;
        let text_token = 440u32;
        // A window's prompt: start-of-transcript after up to 223 tokens of previous text
        // (the previous window's), decoded in one pass before the first step.
        for prompt in [50usize, 200] {
            let ms = median_ms(
                runs.min(10),
                || dec.prepare(&features).expect("prepare"),
                |mut state| {
                    let ids = Tensor::from_vec(vec![text_token; prompt], (1, prompt), &Device::Cpu)
                        .expect("prompt");
                    dec.forward(&ids, &mut state).expect("forward")
                },
            );
            emit(&name, p, &format!("decoder_prompt_{prompt}"), ms);
        }
        for position in [1usize, 100, 200] {
            // a state holding `position` tokens (start-of-transcript, then text)
            let mut base = dec.prepare(&features).expect("prepare");
            let mut prefix = vec![sp.sot];
            prefix.resize(position, text_token);
            let prefix_t = Tensor::from_vec(prefix, (1, position), &Device::Cpu).expect("prefix");
            dec.forward(&prefix_t, &mut base).expect("forward");
            // Forks share the prefix (as beam lanes do) instead of copying it into a vector
            // that the step's append would then reallocate: the step is timed, not the copy.
            base.share_prefix();
            for &n in &step_sizes {
                let ms = median_ms(
                    runs,
                    || (0..n).map(|_| base.fork()).collect::<Vec<_>>(),
                    |mut states| {
                        let mut refs: Vec<_> = states.iter_mut().collect();
                        dec.step(&mut refs, &vec![text_token; n]).expect("step")
                    },
                );
                let stage = if n == 1 {
                    format!("decoder_step_at_{position}")
                } else {
                    format!("decoder_step_batch_{n}_at_{position}")
                };
                emit(&name, p, &stage, ms);
            }
        }
        let hidden = Tensor::zeros(
            (1, m.dims.n_text_state),
            candle_core::DType::F32,
            &Device::Cpu,
        )
        .expect("hidden");
        emit(
            &name,
            p,
            "output_projection",
            median_ms(runs, || (), |_| dec.logits(&hidden).expect("logits")),
        );
        if precision == Precision::F32 {
            let logits: Vec<f32> = dec
                .logits(&hidden)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .expect("logits");
            let sampled = vec![sp.timestamp_begin, text_token, text_token];
            let rules = median_ms(
                runs * 10,
                || logits.clone(),
                |mut l| {
                    suppress(&mut l, &engine.suppress.always);
                    apply_timestamp_rules(&mut l, &sampled, sp, Some(50));
                    log_softmax(&l)
                },
            );
            emit(&name, p, "logit_rules", rules);
        }
    }
}
