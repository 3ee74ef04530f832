//! Deterministic fuzzing of the audio entry the server and the CLI share (probe → decode →
//! resample → log-mel): a fixed-seed mutator (byte flips, truncations, inserted junk, boundary
//! values in header fields, repeated slices) over small real files of every container we accept.
//! Every case must end in samples or a typed error, never a panic escaping the entry point, in
//! bounded time and memory. A handful of mutants also go through the whole server.
//!
//! `make test` runs `WHISPERD_FUZZ_CASES` (default 300) cases; `make fuzz N=10000` runs more.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use common::*;
use whisperd::audio::{load_pcm, AudioError};

const LIMIT_S: f64 = 600.0;

/// xorshift64*: the same cases on every machine and every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Small real files, one per container the server accepts (plus float WAV and AIFF).
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = [
        "jfk.flac",
        "jfk.mp3",
        "jfk.ogg",
        "jfk.opus",
        "jfk.m4a",
        "jfk.8k.wav",
        "jfk.44k1-stereo.wav",
    ]
    .iter()
    .map(|f| (f.to_string(), read(&format!("eval/formats/{f}"))))
    .collect();
    // Float WAV and AIFF are built here: a second of tone.
    let tone: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.07).sin() * 0.3).collect();
    let mut float_wav = wav_bytes(&tone, 16_000);
    let data: Vec<u8> = tone.iter().flat_map(|x| x.to_le_bytes()).collect();
    float_wav.truncate(44);
    float_wav[20..22].copy_from_slice(&3u16.to_le_bytes()); // IEEE float
    float_wav[28..32].copy_from_slice(&(16_000u32 * 4).to_le_bytes());
    float_wav[32..34].copy_from_slice(&4u16.to_le_bytes());
    float_wav[34..36].copy_from_slice(&32u16.to_le_bytes());
    float_wav[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
    float_wav[4..8].copy_from_slice(&(36 + data.len() as u32).to_le_bytes());
    float_wav.extend_from_slice(&data);
    out.push(("float.wav".into(), float_wav));
    let pcm: Vec<u8> = tone
        .iter()
        .flat_map(|x| ((x * 32767.0) as i16).to_be_bytes())
        .collect();
    let mut comm = vec![0, 1];
    comm.extend_from_slice(&(tone.len() as u32).to_be_bytes());
    comm.extend_from_slice(&16i16.to_be_bytes());
    comm.extend_from_slice(&[0x40, 0x0c, 0xfa, 0, 0, 0, 0, 0, 0, 0]); // 16000.0 as 80-bit
    let mut form = b"AIFFCOMM".to_vec();
    form.extend_from_slice(&(comm.len() as u32).to_be_bytes());
    form.extend_from_slice(&comm);
    form.extend_from_slice(b"SSND");
    form.extend_from_slice(&(pcm.len() as u32 + 8).to_be_bytes());
    form.extend_from_slice(&[0; 8]);
    form.extend_from_slice(&pcm);
    let mut aiff = b"FORM".to_vec();
    aiff.extend_from_slice(&(form.len() as u32).to_be_bytes());
    aiff.extend_from_slice(&form);
    out.push(("tone.aiff".into(), aiff));
    out
}

const BOUNDARY_BYTES: &[&[u8]] = &[
    &[0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0x7f],
    &[0, 0, 0, 0x80],
    &[1, 0, 0, 0],
    &[0, 0],
    &[0xff, 0xff],
    &[0x01],
];

/// One to four random edits of `seed`.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            break;
        }
        match rng.below(6) {
            0 => {
                for _ in 0..1 + rng.below(16) {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let at = rng.below(b.len());
                b.truncate(at.max(1));
            }
            2 => {
                let at = rng.below(b.len());
                let junk: Vec<u8> = (0..1 + rng.below(64)).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            }
            3 | 4 => {
                // Header fields live near the start of every container (and at page starts).
                let v = BOUNDARY_BYTES[rng.below(BOUNDARY_BYTES.len())];
                let span = if rng.below(2) == 0 { 128 } else { b.len() };
                let at = rng.below(b.len().min(span));
                let end = (at + v.len()).min(b.len());
                b[at..end].copy_from_slice(&v[..end - at]);
            }
            _ => {
                let from = rng.below(b.len());
                let len = rng.below(4096).min(b.len() - from);
                let slice = b[from..from + len].to_vec();
                let at = rng.below(b.len());
                b.splice(at..at, slice);
            }
        }
    }
    b
}

fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[test]
fn mutated_files_end_in_samples_or_a_typed_error() {
    let cases: usize = std::env::var("WHISPERD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("WHISPERD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let seeds = seeds();
    let mel = whisperd::mel::MelSpectrogram::new(80);
    let mut rng = Rng(seed);
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    let mut slowest = (Duration::ZERO, String::new());
    let t_all = Instant::now();
    for case in 0..cases {
        let (name, bytes) = &seeds[case % seeds.len()];
        let mutant = mutate(bytes, &mut rng);
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(|| load_pcm(mutant.clone(), Some(LIMIT_S)));
        let outcome = match result {
            Err(_) => panic!("case {case} ({name}): a panic escaped load_pcm"),
            Ok(Ok(pcm)) => {
                assert!(
                    pcm.samples.to_vec().unwrap().iter().all(|x| x.is_finite()),
                    "case {case} ({name}): non-finite samples came through"
                );
                assert!(pcm.duration_s() <= LIMIT_S + 1.0);
                let m = mel
                    .compute_from(&pcm.samples, whisperd::mel::N_SAMPLES)
                    .unwrap();
                assert!(m.window(0, 100).unwrap().iter().all(|x| x.is_finite()));
                "samples".to_string()
            }
            Ok(Err(AudioError::Internal(e))) => {
                panic!("case {case} ({name}): an internal error for bad input: {e}")
            }
            Ok(Err(e)) => {
                let dbg = format!("{e:?}");
                dbg.split(['(', ' ', '{']).next().unwrap_or("").to_string()
            }
        };
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "case {case} ({name}) took {took:?}"
        );
        if took > slowest.0 {
            slowest = (took, format!("case {case} ({name})"));
        }
        *outcomes.entry(outcome).or_default() += 1;
    }
    let hwm = vm_hwm_mb();
    println!(
        "{cases} mutants (seed {seed}) in {:.1} s: {outcomes:?}; slowest {:?} ({}); peak RSS {hwm:.0} MB",
        t_all.elapsed().as_secs_f64(),
        slowest.0,
        slowest.1
    );
    assert!(
        hwm < 1500.0,
        "peak RSS {hwm:.0} MB: memory is not bounded by the limit"
    );
}

#[test]
fn a_handful_of_mutants_through_the_whole_server() {
    let s = Server::start(&[("WHISPERD_MAX_AUDIO_S", "60")]);
    let seeds = seeds();
    let mut rng = Rng(0xfeed_beef);
    for case in 0..10 {
        let (name, bytes) = &seeds[case % seeds.len()];
        let mutant = mutate(bytes, &mut rng);
        let r = s.post_form("/transcribe", Some(("file", &mutant)), &[], &[]);
        assert!(
            r.0 == 200 || (400..500).contains(&r.0),
            "case {case} ({name}): {} {}",
            r.0,
            String::from_utf8_lossy(&r.2)
        );
        if r.0 != 200 {
            assert!(json(&r)["error"]["code"].is_string());
        }
    }
    assert_eq!(s.get("/health").0, 200);
}
