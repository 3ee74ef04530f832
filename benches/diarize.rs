//! Diarization alone (no transcription) over a diarization manifest: one RTTM per file for each
//! clustering threshold, and one with the true speaker count, for `../shared/scripts/der.py`;
//! then the embedding throughput. `scripts/diarize_eval.py --calibrate` runs it over the
//! calibration set and scores every threshold.
//!
//! `cargo bench --bench diarize -- MANIFEST OUT_DIR [THRESHOLD,…]` writes
//! `OUT_DIR/t0.40/ID.rttm`, …, and `OUT_DIR/oracle/ID.rttm`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use whisperd::diarize::{DiarizeOptions, Diarizer};
use whisperd::vad::SileroVad;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rttm(id: &str, d: &whisperd::diarize::Diarization) -> String {
    d.turns
        .iter()
        .map(|t| {
            format!(
                "SPEAKER {id} 1 {:.3} {:.3} <NA> <NA> {} <NA> <NA>\n",
                t.start,
                t.end - t.start,
                whisperd::diarize::speaker_label(t.speaker)
            )
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(manifest), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: cargo bench --bench diarize -- MANIFEST OUT_DIR [THRESHOLD,…]");
        return Ok(());
    };
    let thresholds: Vec<f32> = args.get(2).map_or_else(
        || vec![whisperd::diarize::pipeline::DEFAULT_THRESHOLD],
        |s| s.split(',').filter_map(|t| t.parse().ok()).collect(),
    );
    let models = root().join("models");
    let diarizer = Diarizer::load(&models.join("ge2e/ge2e.safetensors"))?;
    let vad = SileroVad::load(
        &models
            .join(whisperd::vad::MODEL_DIR)
            .join(whisperd::vad::MODEL_FILE),
    )?;
    let base = Path::new(manifest).parent().unwrap_or(Path::new("."));
    let (mut windows, mut embed_s, mut total_s, mut audio_s) = (0usize, 0f64, 0f64, 0f64);
    for line in std::fs::read_to_string(manifest)?.lines() {
        let row: serde_json::Value = serde_json::from_str(line)?;
        let id = row["id"].as_str().ok_or("a manifest row without id")?;
        let bytes =
            std::fs::read(base.join(row["path"].as_str().ok_or("a manifest row without path")?))?;
        let pcm = whisperd::audio::load_pcm(bytes, None)?;
        let t0 = Instant::now();
        let f = diarizer.features(&pcm.samples, Some(&vad))?;
        let e = diarizer.embed(&f)?;
        let features_s = t0.elapsed().as_secs_f64() - e.seconds;
        total_s += t0.elapsed().as_secs_f64();
        windows += e.starts.len();
        embed_s += e.seconds;
        audio_s += pcm.duration_s();
        let mut found = Vec::new();
        for &t in &thresholds {
            let d = diarizer.decide(&f, &e, &DiarizeOptions::default(), t);
            found.push(d.speakers);
            let dir = Path::new(out).join(format!("t{t:.2}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("{id}.rttm")), rttm(id, &d))?;
        }
        let n = row["speakers"].as_u64().map(|n| n as usize);
        let d = diarizer.decide(
            &f,
            &e,
            &DiarizeOptions {
                num_speakers: n,
                ..Default::default()
            },
            diarizer.threshold,
        );
        let dir = Path::new(out).join("oracle");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{id}.rttm")), rttm(id, &d))?;
        println!(
            "{id}: {:.1} s audio, {} windows in {:.2} s ({:.0}/s), features {:.2} s, speakers true {:?} found {found:?}",
            pcm.duration_s(),
            e.starts.len(),
            e.seconds,
            e.starts.len() as f64 / e.seconds.max(1e-9),
            features_s,
            n
        );
    }
    println!(
        "total: {audio_s:.1} s audio, {windows} windows, embedding {embed_s:.2} s ({:.0} windows/s), diarization {total_s:.2} s",
        windows as f64 / embed_s.max(1e-9)
    );
    Ok(())
}
