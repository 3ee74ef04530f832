//! Criterion benches of each pipeline stage on tiny.en: log-mel of 30 s, one encoder window and
//! a batch of eight, one decoder step at positions 1 and 200 (KV cache: the later step must not
//! cost much more), and jfk end to end. `make bench` runs them; end-to-end speed vs faster-whisper is scripts/eval.py.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use whisperd::mel::{MelSpectrogram, N_FRAMES, N_SAMPLES};
use whisperd::{Engine, TranscribeOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn benches(c: &mut Criterion) {
    let model = std::env::var_os("WHISPERD_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/whisper-tiny.en"));
    let engine = Engine::load(&model).expect("model (run `make model`)");
    let jfk = std::fs::read(root().join("../shared/eval/jfk.wav")).expect("../shared/eval/jfk.wav");
    let pcm = whisperd::audio::load_pcm(jfk.clone(), None).unwrap();

    let mel = MelSpectrogram::new(80);
    let thirty_s: Vec<f32> = pcm
        .samples
        .to_vec()
        .unwrap()
        .iter()
        .cycle()
        .take(N_SAMPLES)
        .copied()
        .collect();
    c.bench_function("mel_30s", |b| b.iter(|| mel.compute(&thirty_s, 0)));

    let window = Tensor::from_vec(
        mel.compute(&thirty_s, 0)
            .unwrap()
            .window(0, N_FRAMES)
            .unwrap(),
        (1, 80, N_FRAMES),
        &Device::Cpu,
    )
    .unwrap();
    let mut g = c.benchmark_group("model");
    g.sample_size(10);
    g.bench_function("encoder_window", |b| {
        b.iter(|| engine.model.encode(&window).unwrap())
    });
    // Eight windows in one call, as the scheduler batches them (on a CPU they run side by side).
    let eight = Tensor::cat(&[&window; 8], 0).unwrap();
    g.bench_function("encoder_batch_8", |b| {
        b.iter(|| engine.model.encode(&eight).unwrap())
    });
    let features = engine.model.encode(&window).unwrap();
    let dec = &engine.model.decoder;
    let token = Tensor::new(&[[440u32]], &Device::Cpu).unwrap();
    for position in [1usize, 200] {
        g.bench_function(format!("decoder_step_at_{position}"), |b| {
            b.iter_batched(
                || {
                    let mut state = dec.prepare(&features).unwrap();
                    let prefix =
                        Tensor::from_vec(vec![50257u32; position], (1, position), &Device::Cpu)
                            .unwrap();
                    dec.forward(&prefix, &mut state).unwrap();
                    state
                },
                |mut state| {
                    let h = dec.forward(&token, &mut state).unwrap();
                    dec.last_logits(&h).unwrap()
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    // Continuous batching: one step for n sequences at position 20, each with its own audio.
    for n in [1usize, 4, 8] {
        g.bench_function(format!("decoder_step_batch_{n}"), |b| {
            b.iter_batched(
                || {
                    (0..n)
                        .map(|_| {
                            let mut state = dec.prepare(&features).unwrap();
                            let prefix =
                                Tensor::from_vec(vec![50257u32; 20], (1, 20), &Device::Cpu)
                                    .unwrap();
                            dec.forward(&prefix, &mut state).unwrap();
                            state
                        })
                        .collect::<Vec<_>>()
                },
                |mut states| {
                    let mut refs: Vec<_> = states.iter_mut().collect();
                    dec.step(&mut refs, &vec![440u32; n]).unwrap()
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    let hidden = Tensor::zeros((1, 384), candle_core::DType::F32, &Device::Cpu).unwrap();
    g.bench_function("logits_one_row", |b| {
        b.iter(|| dec.logits(&hidden).unwrap())
    });
    g.bench_function("jfk_end_to_end", |b| {
        b.iter(|| {
            engine
                .transcribe_bytes(jfk.clone(), &TranscribeOptions::default())
                .unwrap()
        })
    });
    let q8 = Engine::load_with(&model, &Device::Cpu, whisperd::model::Precision::Q8).unwrap();
    // bf16 on AMX where the CPU has it (see core/src/model/bf16.rs), else the same f32 path.
    g.bench_function("encoder_window_q8", |b| {
        b.iter(|| q8.model.encode(&window).unwrap())
    });
    g.bench_function("encoder_batch_8_q8", |b| {
        b.iter(|| q8.model.encode(&eight).unwrap())
    });
    let q8_features = q8.model.encode(&window).unwrap();
    for n in [1usize, 8] {
        g.bench_function(format!("decoder_step_batch_{n}_q8"), |b| {
            b.iter_batched(
                || {
                    (0..n)
                        .map(|_| {
                            let mut state = q8.model.decoder.prepare(&q8_features).unwrap();
                            let prefix =
                                Tensor::from_vec(vec![50257u32; 20], (1, 20), &Device::Cpu)
                                    .unwrap();
                            q8.model.decoder.forward(&prefix, &mut state).unwrap();
                            state
                        })
                        .collect::<Vec<_>>()
                },
                |mut states| {
                    let mut refs: Vec<_> = states.iter_mut().collect();
                    q8.model.decoder.step(&mut refs, &vec![440u32; n]).unwrap()
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.bench_function("jfk_end_to_end_q8", |b| {
        b.iter(|| {
            q8.transcribe_bytes(jfk.clone(), &TranscribeOptions::default())
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
