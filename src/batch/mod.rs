//! `whisperd batch`: many files through one engine. Reading, hashing, decoding and the log-mel of
//! upcoming files run on `jobs` threads while `batch_size` files are transcribed at once through
//! the same scheduler as the server (their windows share encoder batches and decoder steps); the
//! pipeline is bounded, so memory stays flat however many inputs. Identical inputs are
//! transcribed once (the others wait for it and reuse the transcript). Outputs are written to
//! temporary files and renamed; a sidecar `<output>.whisperd.json` records the input's hash, so a
//! re-run skips finished inputs and a changed input is redone.

pub mod inputs;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::admission::{Admission, Answered, JobQueue};
use crate::cache::{audio_hash, cache_key, ResultCache};
use crate::decode::ModelRunner;
use crate::engine::{Engine, EngineError, Prepared};
use crate::output::Format;
use crate::transcript::Transcript;
pub use inputs::{
    assign_outputs, check_output_dir, expand, read_input, InputError, InputFile, Shard,
};

pub struct BatchOptions {
    pub output_dir: PathBuf,
    pub formats: Vec<Format>,
    pub jobs: usize,
    /// Files transcribed at once through the scheduler (1: one at a time, no scheduler).
    pub batch_size: usize,
    pub overwrite: bool,
    pub fail_fast: bool,
    /// Inputs larger than this (bytes) fail without being read.
    pub max_input_bytes: u64,
    pub transcribe: crate::CheckedOptions,
    /// srt/vtt layout from word timings.
    pub subtitles: crate::output::SubtitleOptions,
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
    Skip {
        sha: String,
        outputs: Vec<PathBuf>,
    },
    Ready {
        sha: String,
        prepared: Box<Prepared>,
    },
    Failed {
        sha: Option<String>,
        error: String,
    },
}

/// What `output_paths` and `sidecar_path` append to an input's relative path, for
/// `assign_outputs`.
pub fn output_suffixes(formats: &[Format]) -> Vec<String> {
    formats
        .iter()
        .map(|f| format!(".{}", f.extension()))
        .chain([".whisperd.json".to_string()])
        .collect()
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
    let bytes = match read_input(&input.path, o.max_input_bytes) {
        Ok(b) => b,
        Err(e) => {
            return Prepped::Failed {
                sha: None,
                error: e.to_string(),
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
    match engine.prepare_bytes(bytes, None, &o.transcribe) {
        Ok(prepared) => Prepped::Ready {
            prepared: Box::new(prepared),
            sha,
        },
        Err(e) => Prepped::Failed {
            sha: Some(sha),
            error: e.to_string(),
        },
    }
}

/// What the transcription threads share: finished transcripts, those in progress (each with
/// the input that runs it), and which input first had each content.
struct Shared {
    /// The result cache and single flight; a flight's extra is the path of the input that runs it.
    admission: Admission<String, String>,
    first_with_hash: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Transcribe `inputs`; `on_record` sees each result as it completes. Returns the records.
/// Setting `stop` finishes the files being transcribed and ends the run.
pub fn run(
    engine: &Engine,
    inputs: &[InputFile],
    o: &BatchOptions,
    stop: &AtomicBool,
    on_record: &mut dyn FnMut(&Record),
) -> Vec<Record> {
    let next = AtomicUsize::new(0);
    let shared = Shared {
        admission: Admission::new(ResultCache::default()),
        first_with_hash: Mutex::new(HashMap::new()),
    };
    let mut records = Vec::with_capacity(inputs.len());
    let jobs = o.jobs.max(1);
    let batch = o.batch_size.max(1);
    let scheduler = if batch > 1 {
        let config = crate::scheduler::SchedulerConfig {
            max_batch: batch,
            ..Default::default()
        };
        match crate::scheduler::start(engine.model.clone(), config, None) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "no scheduler thread; transcribing one file at a time");
                None
            }
        }
    } else {
        None
    };
    let runner: &dyn ModelRunner = match &scheduler {
        Some(h) => h,
        None => &*engine.model,
    };
    let workers = if scheduler.is_some() { batch } else { 1 };
    tracing::info!(
        inputs = inputs.len(),
        jobs,
        batch_size = workers,
        "batch started"
    );
    let (rec_tx, rec_rx) = channel::<Record>();
    std::thread::scope(|scope| {
        // Prepared inputs wait in one job queue (at most `jobs` of them) for the transcription threads.
        let shared = &shared;
        let queue = JobQueue::new(jobs).start_scoped(
            scope,
            "batch-transcribe",
            workers,
            move |(i, p, prep_s): (usize, Prepped, f64)| {
                if stop.load(Ordering::SeqCst) {
                    return; // what is not started yet, a re-run picks up
                }
                let t0 = Instant::now();
                let input = &inputs[i];
                let finished = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    finish(engine, runner, shared, o, input, p)
                }));
                let mut rec = finished.unwrap_or_else(|_| {
                    tracing::error!(path = %input.path.display(), "transcription panicked (a bug: please report it)");
                    failed(input, Some("internal error during transcription".into()))
                });
                rec.seconds = prep_s + t0.elapsed().as_secs_f64();
                if rec.status == Status::Failed && o.fail_fast {
                    stop.store(true, Ordering::SeqCst);
                }
                let _ = rec_tx.send(rec);
            },
        );
        let tx = match queue {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a transcription thread");
                let error = format!("cannot start a transcription thread: {e}");
                records.extend(
                    inputs
                        .iter()
                        .map(|input| failed(input, Some(error.clone()))),
                );
                return;
            }
        };
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
        for rec in rec_rx.iter() {
            on_record(&rec);
            records.push(rec);
        }
    });
    records
}

/// A failed record for `input`.
fn failed(input: &InputFile, error: Option<String>) -> Record {
    Record {
        path: input.path.display().to_string(),
        sha256: None,
        status: Status::Failed,
        error,
        duration: None,
        language: None,
        outputs: vec![],
        seconds: 0.0,
        duplicate_of: None,
    }
}

/// One prepared input to its record: transcribe (or reuse an identical input's transcript) and
/// write the outputs.
fn finish(
    engine: &Engine,
    runner: &dyn ModelRunner,
    shared: &Shared,
    o: &BatchOptions,
    input: &InputFile,
    p: Prepped,
) -> Record {
    let mut rec = failed(input, None);
    let (sha, prepared) = match p {
        Prepped::Skip { sha, outputs } => {
            rec.sha256 = Some(sha);
            rec.status = Status::Skipped;
            rec.outputs = outputs.iter().map(|p| p.display().to_string()).collect();
            return rec;
        }
        Prepped::Failed { sha, error } => {
            rec.sha256 = sha;
            rec.error = Some(error);
            return rec;
        }
        Prepped::Ready { sha, prepared } => (sha, prepared),
    };
    rec.sha256 = Some(sha.clone());
    let key = cache_key(&sha, &engine.model_name, &o.transcribe);
    // The first input with this content transcribes it; identical ones wait for its result.
    let (result, answered) = shared.admission.run_blocking(
        &key,
        || rec.path.clone(),
        String::clone,
        || {
            let r = engine
                .transcribe_prepared_with(runner, &prepared, &o.transcribe)
                .map(Arc::new)
                .map_err(|e: EngineError| e.to_string());
            if r.is_ok() {
                // Before the result is cached: a later identical input names this one.
                lock(&shared.first_with_hash)
                    .entry(sha.clone())
                    .or_insert_with(|| rec.path.clone());
            }
            r
        },
        || "the identical input's transcription stopped".into(),
    );
    match answered {
        Answered::Hit => rec.duplicate_of = lock(&shared.first_with_hash).get(&sha).cloned(),
        Answered::Joined(first) if result.is_ok() => rec.duplicate_of = Some(first),
        _ => {}
    }
    match result.and_then(|t| write_outputs(o, input, &sha, &t).map(|outs| (t, outs))) {
        Ok((t, outs)) => {
            rec.status = Status::Ok;
            rec.duration = Some(t.duration);
            rec.language = Some(t.language.clone());
            rec.outputs = outs;
        }
        Err(e) => rec.error = Some(e),
    }
    rec
}

fn write_outputs(
    o: &BatchOptions,
    input: &InputFile,
    sha: &str,
    t: &Transcript,
) -> Result<Vec<String>, String> {
    let paths = output_paths(o, input);
    for (f, p) in o.formats.iter().zip(&paths) {
        let render = crate::output::RenderOptions {
            subtitles: o.subtitles,
            file_id: input
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned()),
            ..Default::default()
        };
        write_atomic(p, t.render_with(*f, o.transcribe.task, &render).as_bytes())
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
