//! The models one server answers for (`models`, `model_aliases`). The first is the default and
//! loads at start; the others load on first use. Each loaded model has its own job queue,
//! transcription threads and scheduler (so batches never mix models), and unloads after
//! `model_ttl_s` idle or when a model that does not fit `models_memory_mb` needs its room —
//! the idle one used longest ago goes first; when every loaded model is busy the request that
//! needed the room gets 503 with Retry-After.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::error::ApiError;
use super::worker::{self, Job, Shared};
use crate::admission::JobQueue;
use crate::audio::Pcm;
use crate::engine::{Engine, EngineError};
use crate::vad::SileroVad;
use crate::TranscribeOptions;

/// A configured model: the name requests use (its directory's name) and where it lives.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub dir: PathBuf,
    /// What loading it is expected to add to the process's memory (see [`memory_estimate`]).
    pub memory: u64,
}

/// How every model loads and runs (from the config).
pub struct LoadSettings {
    pub device: candle_core::Device,
    pub precision: crate::model::Precision,
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// 0: never unload an idle model.
    pub ttl: Duration,
    /// 0: no memory budget.
    pub budget: u64,
    /// The uploads' default beam search: the warm-up runs it, so the multi-row decoder paths
    /// the default takes (5-row tiles, lanes sharing the audio) have run once before `/ready`.
    pub beam: crate::decode::BeamOptions,
}

/// Resident memory per byte of a model's weight files, measured with `/usr/bin/time` on
/// `whisperd transcribe jfk.wav` (peak RSS less the ~50 MB a process holds without a model):
/// tiny.en and base, fp16 CTranslate2 files, f32 and q8 alike, 3.3–3.4 (f32 weights, the
/// decoder's row-major copies and the working buffers). A Hugging Face file already in f32
/// is over-counted, on the safe side.
const MEMORY_PER_WEIGHT_BYTE: f64 = 3.4;

/// Memory a model directory is expected to take once loaded: its weight files' size times
/// [`MEMORY_PER_WEIGHT_BYTE`]. Known before loading, so the budget decides before any memory is
/// spent, and the same on every run.
pub fn memory_estimate(dir: &Path) -> std::io::Result<u64> {
    let mut bytes = 0u64;
    for name in ["model.bin", "model.safetensors"] {
        match std::fs::metadata(dir.join(name)) {
            Ok(m) => bytes += m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if bytes == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no model.bin or model.safetensors in {} (run `make model`, or check the path)",
                dir.display()
            ),
        ));
    }
    Ok((bytes as f64 * MEMORY_PER_WEIGHT_BYTE) as u64)
}

/// The model's name as requests give it: its directory's name.
pub fn model_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "whisper".into())
}

enum Slot {
    Unloaded,
    /// `done` turns `Some` when the load ends (`Err`: why it failed).
    Loading {
        done: watch::Receiver<Option<Result<(), String>>>,
    },
    Loaded(Arc<Loaded>),
}

/// A model in memory with its queue; dropping the last reference stops its threads.
pub struct Loaded {
    pub engine: Arc<Engine>,
    pub name: String,
    /// The model's part of cache keys: its name, and with the Redis cache its files' identity.
    pub cache_name: String,
    queue: SyncSender<Job>,
    busy: AtomicUsize,
    last_used: Mutex<Instant>,
}

impl Loaded {
    pub fn queue(&self) -> SyncSender<Job> {
        self.queue.clone()
    }
}

/// A model in use: while one exists the model is busy and stays loaded.
pub struct Lease(Arc<Loaded>);

impl std::ops::Deref for Lease {
    type Target = Loaded;
    fn deref(&self) -> &Loaded {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.0.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What `/info` shows of one model.
pub struct Status {
    pub name: String,
    pub state: &'static str,
    pub busy: usize,
    pub memory: u64,
    pub engine: Option<Arc<Engine>>,
}

pub struct Models {
    specs: Vec<ModelSpec>,
    /// Other names for the default model (`model_aliases`).
    aliases: Vec<String>,
    settings: LoadSettings,
    /// Silero VAD, one for every model (`vad_model`, or found beside the default model).
    pub vad: Option<Arc<SileroVad>>,
    vad_file: Option<PathBuf>,
    /// The speaker model for diarization, one for every model (found beside the default model
    /// or in `models/ge2e/`).
    pub diarizer: Option<Arc<crate::diarize::Diarizer>>,
    slots: Mutex<Vec<Slot>>,
}

impl Models {
    /// Check every model directory now (a typo fails at start, not at the first request) and
    /// that each model fits the memory budget on its own.
    pub fn new(
        dirs: &[PathBuf],
        aliases: Vec<String>,
        settings: LoadSettings,
        vad_file: Option<PathBuf>,
        speaker_file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut specs: Vec<ModelSpec> = Vec::new();
        for dir in dirs {
            let name = model_name(dir);
            if specs.iter().any(|s| s.name == name) {
                anyhow::bail!("models: two directories are named `{name}`; a request could not tell them apart");
            }
            let memory = memory_estimate(dir)
                .map_err(|e| anyhow::anyhow!("model `{name}` ({}): {e}", dir.display()))?;
            if !dir.join("tokenizer.json").is_file() {
                anyhow::bail!(
                    "model `{name}`: no tokenizer.json in {} (run `make model`, or check the path)",
                    dir.display()
                );
            }
            if settings.budget > 0 && memory > settings.budget {
                anyhow::bail!(
                    "model `{name}` is expected to take {} MB, more than models_memory_mb = {}: raise the budget or drop the model",
                    memory >> 20,
                    settings.budget >> 20
                );
            }
            specs.push(ModelSpec {
                name,
                dir: dir.clone(),
                memory,
            });
        }
        if specs.is_empty() {
            anyhow::bail!("no model configured: set model (or models)");
        }
        let aliases = aliases
            .into_iter()
            .filter(|a| !specs.iter().any(|s| s.name == *a))
            .collect();
        let vad = match &vad_file {
            Some(p) => Some(Arc::new(SileroVad::load(p).map_err(|e| {
                anyhow::anyhow!("cannot load the VAD model {}: {e}", p.display())
            })?)),
            None => None,
        };
        let diarizer = match &speaker_file {
            Some(p) => {
                let d = crate::diarize::Diarizer::load(p).map_err(|e| {
                    anyhow::anyhow!("cannot load the speaker model {}: {e}", p.display())
                })?;
                tracing::info!(speaker_model = %p.display(), "speaker model loaded: diarization available");
                Some(Arc::new(d))
            }
            None => {
                tracing::info!(
                    "no speaker model: diarization requests get 400 (run `make model-ge2e`)"
                );
                None
            }
        };
        Ok(Self {
            slots: Mutex::new(specs.iter().map(|_| Slot::Unloaded).collect()),
            specs,
            aliases,
            settings,
            vad,
            vad_file,
            diarizer,
        })
    }

    pub fn specs(&self) -> &[ModelSpec] {
        &self.specs
    }

    /// Every name a request's `model` may use: the models', then the default model's aliases.
    pub fn names(&self) -> Vec<String> {
        self.specs
            .iter()
            .map(|s| s.name.clone())
            .chain(self.aliases.iter().cloned())
            .collect()
    }

    /// The model a request asks for: by name or alias; none (or empty) is the default.
    pub fn resolve(&self, asked: Option<&str>) -> Option<usize> {
        match asked.map(str::trim).filter(|m| !m.is_empty()) {
            None => Some(0),
            Some(m) => self
                .specs
                .iter()
                .position(|s| s.name == m)
                .or_else(|| self.aliases.iter().any(|a| a == m).then_some(0)),
        }
    }

    /// The engine of model `index` if it is in memory now (loads nothing).
    pub fn loaded_engine(&self, index: usize) -> Option<Arc<Engine>> {
        match self.lock().get(index) {
            Some(Slot::Loaded(l)) => Some(l.engine.clone()),
            _ => None,
        }
    }

    pub fn status(&self) -> Vec<Status> {
        let slots = self.lock();
        self.specs
            .iter()
            .zip(slots.iter())
            .map(|(spec, slot)| {
                let (state, busy, engine) = match slot {
                    Slot::Unloaded => ("unloaded", 0, None),
                    Slot::Loading { .. } => ("loading", 0, None),
                    Slot::Loaded(l) => (
                        "loaded",
                        l.busy.load(Ordering::SeqCst),
                        Some(l.engine.clone()),
                    ),
                };
                Status {
                    name: spec.name.clone(),
                    state,
                    busy,
                    memory: spec.memory,
                    engine,
                }
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Model `index`, loading it first when needed (making room under the memory budget). The
/// lease keeps it loaded until dropped.
pub async fn acquire(shared: &Arc<Shared>, index: usize) -> Result<Lease, ApiError> {
    let models = &shared.models;
    let spec = models
        .specs
        .get(index)
        .ok_or_else(|| ApiError::unavailable("no such model slot", 1))?;
    loop {
        let mut done = {
            let mut slots = models.lock();
            match &slots[index] {
                Slot::Loaded(l) => {
                    l.busy.fetch_add(1, Ordering::SeqCst);
                    return Ok(Lease(l.clone()));
                }
                Slot::Loading { done } => done.clone(),
                Slot::Unloaded => {
                    make_room(shared, &mut slots, index)?;
                    let (tx, rx) = watch::channel(None);
                    if let Err(e) = start_loading(shared.clone(), index, tx) {
                        tracing::error!(model = %spec.name, error = %e, "cannot start a model loader thread");
                        return Err(ApiError::unavailable("cannot start loading the model", 5));
                    }
                    slots[index] = Slot::Loading { done: rx.clone() };
                    rx
                }
            }
        };
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ApiError::unavailable("the model loader stopped", 5))?
            .clone();
        if let Some(Err(e)) = outcome {
            return Err(ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("the model `{}` could not be loaded: {e}", spec.name),
            ));
        }
    }
}

/// Before loading model `index`: unload idle models, least recently used first, until it fits
/// the budget; 503 when only busy models could make room.
fn make_room(shared: &Shared, slots: &mut [Slot], index: usize) -> Result<(), ApiError> {
    let models = &shared.models;
    let budget = models.settings.budget;
    if budget == 0 {
        return Ok(());
    }
    let need = models.specs[index].memory;
    let used = |slots: &[Slot]| -> u64 {
        slots
            .iter()
            .zip(&models.specs)
            .filter(|(s, _)| !matches!(s, Slot::Unloaded))
            .map(|(_, spec)| spec.memory)
            .sum()
    };
    while used(slots) + need > budget {
        let victim = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Loaded(l) if l.busy.load(Ordering::SeqCst) == 0 => {
                    Some((i, *l.last_used.lock().unwrap_or_else(|p| p.into_inner())))
                }
                _ => None,
            })
            .min_by_key(|&(_, t)| t)
            .map(|(i, _)| i);
        let Some(v) = victim else {
            let name = &models.specs[index].name;
            shared
                .metrics
                .model_load_refused
                .with_label_values(&[name])
                .inc();
            tracing::warn!(
                model = %name,
                need_mb = need >> 20,
                used_mb = used(slots) >> 20,
                budget_mb = budget >> 20,
                "no room to load the model: every loaded model is busy; answering 503 (raise models_memory_mb or add replicas)"
            );
            return Err(ApiError::unavailable(
                format!(
                    "the model `{name}` is not loaded and every loaded model is busy (models_memory_mb); try again shortly"
                ),
                5,
            )
            .code("model_busy"));
        };
        unload(shared, slots, v, "evicted");
    }
    Ok(())
}

fn unload(shared: &Shared, slots: &mut [Slot], index: usize, reason: &'static str) {
    let spec = &shared.models.specs[index];
    let idle_s = match &slots[index] {
        Slot::Loaded(l) => l
            .last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            .as_secs_f64(),
        _ => return,
    };
    // Dropping the slot's reference closes the model's queue: its threads finish and the
    // weights are freed with the last reference.
    slots[index] = Slot::Unloaded;
    let m = &shared.metrics;
    m.model_loaded.with_label_values(&[&spec.name]).set(0);
    m.model_memory_bytes.with_label_values(&[&spec.name]).set(0);
    m.model_unloads
        .with_label_values(&[&spec.name, reason])
        .inc();
    tracing::info!(model = %spec.name, reason, idle_s, memory_mb = spec.memory >> 20, "model unloaded");
}

/// Unload models idle for `model_ttl_s` (checked every second; nothing to do when it is 0).
pub async fn unload_idle(shared: Arc<Shared>) {
    let ttl = shared.models.settings.ttl;
    if ttl.is_zero() {
        return;
    }
    loop {
        actix_web::rt::time::sleep(Duration::from_secs(1).min(ttl)).await;
        let mut slots = shared.models.lock();
        for i in 0..slots.len() {
            let expired = match &slots[i] {
                Slot::Loaded(l) => {
                    l.busy.load(Ordering::SeqCst) == 0
                        && l.last_used
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .elapsed()
                            >= ttl
                }
                _ => false,
            };
            if expired {
                unload(&shared, &mut slots, i, "idle");
            }
        }
    }
}

/// Load model `index` on a thread of its own; the slot becomes `Loaded` or (on failure, a
/// panic included) `Unloaded` again, and `done` tells the waiters. The caller marks the slot
/// `Loading` once the thread runs.
fn start_loading(
    shared: Arc<Shared>,
    index: usize,
    done: watch::Sender<Option<Result<(), String>>>,
) -> std::io::Result<()> {
    let name = shared.models.specs[index].name.clone();
    std::thread::Builder::new()
        .name(format!("load-{name}"))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                load(&shared, index, false)
            }))
            .unwrap_or_else(|_| Err("the loader panicked".to_string()));
            let mut slots = shared.models.lock();
            let report = match outcome {
                Ok(loaded) => {
                    slots[index] = Slot::Loaded(loaded);
                    Ok(())
                }
                Err(e) => {
                    slots[index] = Slot::Unloaded;
                    shared
                        .metrics
                        .model_loads
                        .with_label_values(&[&name, "error"])
                        .inc();
                    tracing::error!(model = %name, error = %e, "cannot load the model");
                    Err(e)
                }
            };
            drop(slots);
            done.send_replace(Some(report));
        })
        .map(|_| ())
}

/// `warm_up`: one inference before the model takes requests (first-call allocations happen
/// there) — for the default model before `/ready`; a model loaded on demand goes straight to the
/// request waiting for it, which would wait for the warm-up too.
fn load(shared: &Arc<Shared>, index: usize, warm_up: bool) -> Result<Arc<Loaded>, String> {
    let models = &shared.models;
    let spec = &models.specs[index];
    let s = &models.settings;
    let _span = tracing::info_span!("model_load", model = %spec.name).entered();
    // One VAD model for the server, whichever Whisper model runs.
    let mut engine = Engine::load_with_vad(&spec.dir, &s.device, s.precision, models.vad.clone())
        .map_err(|e| e.to_string())?;
    engine.diarizer = models.diarizer.clone();
    let cache_name = match &shared.shared_cache {
        None => spec.name.clone(),
        Some(_) => {
            let mut files = vec![spec.dir.as_path()];
            files.extend(models.vad_file.as_deref());
            let id = crate::cluster::cache::model_identity(&files, &format!("{:?}", s.precision))
                .map_err(|e| {
                format!("cannot hash the model files for the shared cache key: {e}")
            })?;
            tracing::info!(model = %spec.name, identity = %id, "shared result cache keyed by this model's identity");
            format!("{}|{id}", spec.name)
        }
    };
    let warm = Instant::now();
    if warm_up {
        let tone: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
        Pcm::from_samples(tone)
            .map_err(EngineError::from)
            .and_then(|pcm| {
                let o = TranscribeOptions {
                    beam: s.beam,
                    ..TranscribeOptions::default()
                };
                engine.transcribe_pcm(&pcm, &o)
            })
            .map_err(|e| format!("warm-up inference failed: {e}"))?;
    }
    let engine = Arc::new(engine);
    let handle = crate::scheduler::start(
        engine.model.clone(),
        s.scheduler,
        Some(shared.metrics.scheduler.clone()),
    )
    .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
    let queue = {
        let (shared, engine, model) = (shared.clone(), engine.clone(), spec.name.clone());
        JobQueue::new(shared.queue_size)
            .start("transcribe", s.scheduler.max_batch, move |job| {
                worker::run_job(&shared, &model, &engine, &handle, job)
            })
            .map_err(|e| format!("cannot start a transcription thread: {e}"))?
    };
    let m = &shared.metrics;
    m.model_load_seconds
        .with_label_values(&[&spec.name])
        .set(engine.load_seconds);
    m.model_loads.with_label_values(&[&spec.name, "ok"]).inc();
    m.model_loaded.with_label_values(&[&spec.name]).set(1);
    m.model_memory_bytes
        .with_label_values(&[&spec.name])
        .set(spec.memory as i64);
    tracing::info!(
        model = %spec.name,
        load_s = engine.load_seconds,
        warm_up_s = warm.elapsed().as_secs_f64(),
        memory_mb = spec.memory >> 20,
        batch_size = s.scheduler.max_batch,
        batch_wait_ms = s.scheduler.max_wait.as_millis() as u64,
        "model ready"
    );
    Ok(Arc::new(Loaded {
        engine,
        name: spec.name.clone(),
        cache_name,
        queue,
        busy: AtomicUsize::new(0),
        last_used: Mutex::new(Instant::now()),
    }))
}

/// Load the default model at start; the server is ready once it is. A failure ends the process:
/// a server that cannot run its default model should not pass its readiness probe.
pub fn load_default(shared: Arc<Shared>) {
    let (tx, rx) = watch::channel(None);
    shared.models.lock()[0] = Slot::Loading { done: rx };
    let spawned = std::thread::Builder::new()
        .name("model-loader".into())
        .spawn(move || match load(&shared, 0, true) {
            Ok(l) => {
                shared.models.lock()[0] = Slot::Loaded(l);
                shared.ready.store(true, Ordering::SeqCst);
                tx.send_replace(Some(Ok(())));
                tracing::info!("ready");
            }
            Err(e) => {
                tracing::error!(model = %shared.models.specs[0].name, error = %e, "cannot load the default model; exiting");
                std::process::exit(1);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the model loader thread; exiting");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_estimate_follows_the_weight_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(memory_estimate(dir.path()).is_err(), "no weights: an error");
        std::fs::write(dir.path().join("model.bin"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), vec![0u8; 5000]).unwrap();
        assert_eq!(memory_estimate(dir.path()).unwrap(), 3400);
    }

    fn models(names: &[&str], aliases: &[&str], budget: u64) -> anyhow::Result<Models> {
        // (Models::new reads the directories only while it runs.)
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dirs: Vec<PathBuf> = names
            .iter()
            .map(|n| {
                let d = root.join(n);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("model.bin"), vec![0u8; 1 << 20]).unwrap();
                std::fs::write(d.join("tokenizer.json"), b"{}").unwrap();
                d
            })
            .collect();
        Models::new(
            &dirs,
            aliases.iter().map(|a| a.to_string()).collect(),
            LoadSettings {
                device: candle_core::Device::Cpu,
                precision: crate::model::Precision::F32,
                scheduler: Default::default(),
                ttl: Duration::ZERO,
                budget,
                beam: Default::default(),
            },
            None,
            None,
        )
    }

    #[test]
    fn names_resolve_to_models_and_aliases_to_the_default() {
        let m = models(&["tiny", "base"], &["whisper-1", "base"], 0).unwrap();
        assert_eq!(m.names(), ["tiny", "base", "whisper-1"]);
        assert_eq!(m.resolve(None), Some(0));
        assert_eq!(m.resolve(Some("  ")), Some(0));
        assert_eq!(
            m.resolve(Some("base")),
            Some(1),
            "a model's own name wins over an alias"
        );
        assert_eq!(m.resolve(Some("whisper-1")), Some(0));
        assert_eq!(m.resolve(Some("large-v3")), None);
    }

    #[test]
    fn bad_model_lists_fail_at_start() {
        let e = models(&["tiny", "tiny"], &[], 0).err().unwrap().to_string();
        assert!(e.contains("two directories"), "{e}");
        let e = models(&["tiny"], &[], 1 << 20).err().unwrap().to_string();
        assert!(e.contains("models_memory_mb"), "{e}");
        let e = Models::new(
            &[PathBuf::from("/nonexistent/whisper-x")],
            vec![],
            LoadSettings {
                device: candle_core::Device::Cpu,
                precision: crate::model::Precision::F32,
                scheduler: Default::default(),
                ttl: Duration::ZERO,
                budget: 0,
                beam: Default::default(),
            },
            None,
            None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("whisper-x") && e.contains("model.bin"), "{e}");
    }
}
