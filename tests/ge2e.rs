//! The GE2E speaker encoder in Rust against the Python package's own numbers
//! (`../shared/reference/ge2e/`): mel frames of three 1.6-s windows of mix01.flac to 1e-4
//! relative, embeddings to cosine ≥ 0.999.

mod common;

use common::*;
use whisperd::diarize::{cosine, SpeakerEncoder};

/// A float32 `.npy` file: its shape and values.
fn npy(rel: &str) -> (Vec<usize>, Vec<f32>) {
    let b = read(rel);
    assert_eq!(&b[..6], b"\x93NUMPY", "{rel}: not an npy file");
    let (len, at) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[at..at + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let values = b[at + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

fn encoder() -> Option<SpeakerEncoder> {
    let path = root().join("models/ge2e/ge2e.safetensors");
    if !path.is_file() {
        eprintln!(
            "SKIPPED: no GE2E model at {} — run `make model-ge2e`",
            path.display()
        );
        return None;
    }
    Some(SpeakerEncoder::load(&path).expect("load the GE2E model"))
}

fn reference() -> serde_json::Value {
    serde_json::from_slice(&read("reference/ge2e/reference.json")).unwrap()
}

fn windows() -> Vec<Vec<f32>> {
    let r = reference();
    let audio = whisperd::audio::load_pcm(read(r["audio"].as_str().unwrap()), None).unwrap();
    let samples = audio.samples.to_vec().unwrap();
    let n = r["window_samples"].as_u64().unwrap() as usize;
    r["window_start_samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let s = s.as_u64().unwrap() as usize;
            samples[s..s + n].to_vec()
        })
        .collect()
}

#[test]
fn mel_frames_match_resemblyzer() {
    let Some(enc) = encoder() else { return };
    let (shape, want) = npy("reference/ge2e/mix01_mels.npy");
    assert_eq!(shape, [3, 161, 40]);
    let mut worst = 0f32;
    for (w, samples) in windows().iter().enumerate() {
        let got = enc.mel().frames(samples);
        assert_eq!(got.len(), 161 * 40);
        let want = &want[w * 161 * 40..(w + 1) * 161 * 40];
        // relative to the window's largest value (tiny powers carry no weight in the model)
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (g, e) in got.iter().zip(want) {
            worst = worst.max((g - e).abs() / scale);
        }
    }
    eprintln!("mel: worst difference {worst:e} of the window's peak");
    assert!(
        worst <= 1e-4,
        "mel frames differ by {worst} of the window's peak"
    );
}

#[test]
fn embeddings_match_resemblyzer() {
    let Some(enc) = encoder() else { return };
    let (shape, want) = npy("reference/ge2e/mix01_embeddings.npy");
    assert_eq!(shape, [3, 256]);
    let w = windows();
    let refs: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
    let got = enc.embed(&refs).unwrap();
    for (i, g) in got.iter().enumerate() {
        let c = cosine(g, &want[i * 256..(i + 1) * 256]);
        eprintln!("window {i}: cosine {c}");
        assert!(c >= 0.999, "window {i}: cosine {c}");
    }
    // Batched equals alone.
    let alone = enc.embed(&refs[1..2]).unwrap();
    assert!(cosine(&alone[0], &got[1]) > 0.99999);
}

/// Windows inside each reference turn of mix01 (two voices), clustered into two speakers:
/// the encoder and the clustering together tell the voices apart.
#[test]
fn two_voices_cluster_apart() {
    let Some(enc) = encoder() else { return };
    let audio = whisperd::audio::load_pcm(read("eval/diarization/mix01.flac"), None).unwrap();
    let samples = audio.samples.to_vec().unwrap();
    let rttm = String::from_utf8(read("eval/diarization/mix01.rttm")).unwrap();
    let (mut windows, mut truth) = (Vec::new(), Vec::new());
    let mut names: Vec<String> = Vec::new();
    for line in rttm.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (start, dur): (f64, f64) = (f[3].parse().unwrap(), f[4].parse().unwrap());
        let who = match names.iter().position(|n| n == f[7]) {
            Some(i) => i,
            None => {
                names.push(f[7].to_string());
                names.len() - 1
            }
        };
        let mut t = start;
        while t + 1.6 <= start + dur {
            let s = (t * 16_000.0) as usize;
            windows.push(samples[s..s + 25_600].to_vec());
            truth.push(who);
            t += 0.8;
        }
    }
    let refs: Vec<&[f32]> = windows.iter().map(Vec::as_slice).collect();
    let emb = enc.embed(&refs).unwrap();
    let labels = whisperd::diarize::cluster(
        &emb,
        &whisperd::diarize::ClusterOptions {
            threshold: 0.5,
            num_speakers: Some(2),
            min_speakers: 1,
            max_speakers: 32,
        },
    );
    // labels and truth are both numbered by first appearance
    let right = labels.iter().zip(&truth).filter(|(l, t)| l == t).count();
    let share = right as f64 / labels.len() as f64;
    eprintln!(
        "{} windows, {:.1} % labelled right",
        labels.len(),
        100.0 * share
    );
    assert!(share >= 0.95, "{share}");
}
