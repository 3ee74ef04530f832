//! `whisperd batch`: many files through one engine. Reading, hashing, decoding and the log-mel of
//! upcoming files run on `jobs` threads while the model transcribes the current one (a bounded
//! pipeline, so memory stays flat however many inputs). Outputs are written to temporary files
//! and renamed; a sidecar `<output>.whisperd.json` records the input's hash, so a re-run skips
//! finished inputs and a changed input is redone.

pub mod inputs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cache::{audio_hash, cache_key, ResultCache};
use crate::engine::{Engine, EngineError, Prepared};
use crate::output::{Format, Transcript};
use crate::TranscribeOptions;
pub use inputs::{expand, InputError, InputFile};

pub struct BatchOptions {
    pub output_dir: PathBuf,
    pub formats: Vec<Format>,
    pub jobs: usize,
    pub overwrite: bool,
    pub fail_fast: bool,
    pub transcribe: TranscribeOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Failed,
}

/// One line of the `--report` JSON Lines file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub path: String,
    pub sha256: Option<String>,
    pub status: Status,
    pub error: Option<String>,
    pub duration: Option<f64>,
    pub language: Option<String>,
    pub outputs: Vec<String>,
    pub seconds: f64,
    /// Same content as this earlier input: its transcript was reused.
    pub duplicate_of: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    sha256: String,
    outputs: Vec<String>,
}

/// What a prep thread hands to the model thread.
enum Prepped {
    Skip { sha: String, outputs: Vec<PathBuf> },
    Ready { sha: String, prepared: Prepared },
    Failed { sha: Option<String>, error: String },
}

fn output_paths(o: &BatchOptions, input: &InputFile) -> Vec<PathBuf> {
    o.formats
        .iter()
        .map(|f| {
            let mut name = input.relative.as_os_str().to_owned();
            name.push(format!(".{}", f.extension()));
            o.output_dir.join(name)
        })
        .collect()
}

fn sidecar_path(o: &BatchOptions, input: &InputFile) -> PathBuf {
    let mut name = input.relative.as_os_str().to_owned();
    name.push(".whisperd.json");
    o.output_dir.join(name)
}

/// Finished before with the same content and every requested output present.
fn already_done(o: &BatchOptions, input: &InputFile, sha: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(sidecar_path(o, input)) else {
        return false;
    };
    let Ok(side) = serde_json::from_str::<Sidecar>(&text) else {
        return false;
    };
    side.sha256 == sha && output_paths(o, input).iter().all(|p| p.is_file())
}

/// Write `contents` to `path` through a temporary file and a rename, so readers never see half.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn prep(engine: &Engine, o: &BatchOptions, input: &InputFile) -> Prepped {
    let bytes = match std::fs::read(&input.path) {
        Ok(b) => b,
        Err(e) => {
            return Prepped::Failed {
                sha: None,
                error: format!("cannot read: {e}"),
            }
        }
    };
    let sha = audio_hash(&bytes);
    if !o.overwrite && already_done(o, input, &sha) {
        return Prepped::Skip {
            sha,
            outputs: output_paths(o, input),
        };
    }
    match Engine::load_audio(bytes) {
        Ok(pcm) => Prepped::Ready {
            prepared: engine.prepare(&pcm),
            sha,
        },
        Err(e) => Prepped::Failed {
            sha: Some(sha),
            error: e.to_string(),
        },
    }
}

/// Transcribe `inputs`; `on_record` sees each result as it completes. Returns the records.
/// Setting `stop` finishes the file being transcribed and ends the run.
pub fn run(
    engine: &Engine,
    inputs: &[InputFile],
    o: &BatchOptions,
    stop: &AtomicBool,
    on_record: &mut dyn FnMut(&Record),
) -> Vec<Record> {
    let next = AtomicUsize::new(0);
    let cache = ResultCache::new(256, 64 << 20);
    let mut first_with_hash: std::collections::HashMap<String, String> =
        std::collections::HashMap::new();
    let mut records = Vec::with_capacity(inputs.len());
    let jobs = o.jobs.max(1);
    let (tx, rx) = sync_channel::<(usize, Prepped, f64)>(jobs);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(input) = inputs.get(i) else { break };
                let t0 = Instant::now();
                let p = prep(engine, o, input);
                if tx.send((i, p, t0.elapsed().as_secs_f64())).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, p, prep_s) in rx.iter() {
            if stop.load(Ordering::SeqCst) {
                break; // not started: a re-run picks it up
            }
            let input = &inputs[i];
            let t0 = Instant::now();
            let mut rec = Record {
                path: input.path.display().to_string(),
                sha256: None,
                status: Status::Failed,
                error: None,
                duration: None,
                language: None,
                outputs: vec![],
                seconds: 0.0,
                duplicate_of: None,
            };
            match p {
                Prepped::Skip { sha, outputs } => {
                    rec.sha256 = Some(sha);
                    rec.status = Status::Skipped;
                    rec.outputs = outputs.iter().map(|p| p.display().to_string()).collect();
                }
                Prepped::Failed { sha, error } => {
                    rec.sha256 = sha;
                    rec.error = Some(error);
                }
                Prepped::Ready { sha, prepared } => {
                    rec.sha256 = Some(sha.clone());
                    let key = cache_key(&sha, &engine.model_name, &o.transcribe);
                    let result: Result<Arc<Transcript>, EngineError> = match cache.get(&key) {
                        Some(t) => {
                            rec.duplicate_of = first_with_hash.get(&sha).cloned();
                            Ok(t)
                        }
                        None => engine
                            .transcribe_prepared(&prepared, &o.transcribe)
                            .map(Arc::new),
                    };
                    match result
                        .map_err(|e| e.to_string())
                        .and_then(|t| write_outputs(o, input, &sha, &t).map(|outs| (t, outs)))
                    {
                        Ok((t, outs)) => {
                            cache.put(key, t.clone());
                            first_with_hash
                                .entry(sha)
                                .or_insert_with(|| rec.path.clone());
                            rec.status = Status::Ok;
                            rec.duration = Some(t.duration);
                            rec.language = Some(t.language.clone());
                            rec.outputs = outs;
                        }
                        Err(e) => rec.error = Some(e),
                    }
                }
            }
            rec.seconds = prep_s + t0.elapsed().as_secs_f64();
            if rec.status == Status::Failed && o.fail_fast {
                stop.store(true, Ordering::SeqCst);
            }
            on_record(&rec);
            records.push(rec);
        }
        // Let prep threads blocked on a full channel finish.
        for _ in rx.try_iter() {}
    });
    records
}

fn write_outputs(
    o: &BatchOptions,
    input: &InputFile,
    sha: &str,
    t: &Transcript,
) -> Result<Vec<String>, String> {
    let paths = output_paths(o, input);
    for (f, p) in o.formats.iter().zip(&paths) {
        write_atomic(p, t.render(*f, o.transcribe.task).as_bytes())
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    let outputs: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let side = serde_json::to_vec_pretty(&Sidecar {
        sha256: sha.to_string(),
        outputs: outputs.clone(),
    })
    .map_err(|e| e.to_string())?;
    let sp = sidecar_path(o, input);
    write_atomic(&sp, &side).map_err(|e| format!("writing {}: {e}", sp.display()))?;
    Ok(outputs)
}
