//! Shared helpers for the integration tests: paths to ../shared and the model, one engine per
//! test binary, and a small word error rate for comparing transcripts.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use whisperd::scheduler::{self, SchedulerConfig, SchedulerHandle, SchedulerMetrics};
use whisperd::Engine;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the checkout (override with WHISPERD_SHARED).
pub fn shared() -> PathBuf {
    std::env::var_os("WHISPERD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"))
}

/// The tiny.en model directory (`make model` fetches it; override with WHISPERD_TEST_MODEL).
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("WHISPERD_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/whisper-tiny.en"));
    assert!(
        dir.join("model.bin").exists() || dir.join("model.safetensors").exists(),
        "no model in {} — run `make model`",
        dir.display()
    );
    dir
}

/// The multilingual base model directory (`make model-base`; override with
/// WHISPERD_TEST_BASE_MODEL), or `None` (the test then says SKIPPED) when it is missing.
pub fn base_model() -> Option<PathBuf> {
    let dir = std::env::var_os("WHISPERD_TEST_BASE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/whisper-base"));
    if dir.join("model.bin").exists() || dir.join("model.safetensors").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: no multilingual base model in {} — run `make model-base` \
             (python3 models/fetch.py base)",
            dir.display()
        );
        None
    }
}

pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load(&model_dir()).expect("load tiny.en"))
}

pub fn read(rel: &str) -> Vec<u8> {
    let p = shared().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Entry {
    pub id: String,
    pub path: String,
    pub text: String,
    pub lang: String,
    pub category: String,
    pub duration_s: f64,
}

pub fn manifest() -> Vec<Entry> {
    let text = std::fs::read_to_string(shared().join("eval/manifest.jsonl")).expect("manifest");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("manifest line"))
        .collect()
}

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Word error rate of `hyp` against `reference`, case and punctuation ignored.
pub fn wer(reference: &str, hyp: &str) -> f64 {
    let r = words(reference);
    let h = words(hyp);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for i in 1..=r.len() {
        let mut cur = vec![i; h.len() + 1];
        for j in 1..=h.len() {
            let sub = prev[j - 1] + usize::from(r[i - 1] != h[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

/// A 16-bit mono WAV file of `samples` at `rate`.
pub fn wav_bytes(samples: &[f32], rate: u32) -> Vec<u8> {
    multichannel_wav(&[samples], rate)
}

/// A 16-bit WAV file with one channel per signal (the shortest sets the length), at `rate`.
pub fn multichannel_wav(channels: &[&[f32]], rate: u32) -> Vec<u8> {
    let n = channels.iter().map(|c| c.len()).min().unwrap_or(0);
    let ch = channels.len() as u16;
    let data_len = (n * 2 * ch as usize) as u32;
    let mut b = Vec::with_capacity(44 + data_len as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&ch.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2 * ch as u32).to_le_bytes());
    b.extend_from_slice(&(2 * ch).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        for c in channels {
            b.extend_from_slice(&((c[i].clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
        }
    }
    b
}

/// Deterministic white noise with the given peak amplitude.
pub fn noise(n: usize, amplitude: f32) -> Vec<f32> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amplitude
        })
        .collect()
}
pub mod http_stub;
pub mod redis;
pub mod server;

/// Run `c` with a deadline, so that a hang fails the test instead of blocking the suite.
pub fn output_within(c: &mut std::process::Command, secs: u64) -> std::process::Output {
    use std::process::Stdio;
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{c:?} still running after {secs} s");
        }
    }
}

/// Assert a finished command succeeded, showing its stderr when it did not.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scheduler over the engine's model (batches of up to 8, waiting `max_wait_ms` for more) and
/// its metrics.
pub fn start_scheduler(e: &Engine, max_wait_ms: u64) -> (SchedulerHandle, SchedulerMetrics) {
    let registry = prometheus::Registry::new();
    let metrics = SchedulerMetrics::new(&registry).unwrap();
    let handle = scheduler::start(
        e.model.clone(),
        SchedulerConfig {
            max_batch: 8,
            max_wait: std::time::Duration::from_millis(max_wait_ms),
        },
        Some(metrics.clone()),
    )
    .unwrap();
    (handle, metrics)
}
