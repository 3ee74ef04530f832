//! Cross-request batching: one thread runs the batchable model calls (encoder windows, decoder
//! steps) of every transcription in flight (HTTP requests, batch files), each of which runs its
//! own decoding loop on its own thread and talks to this one through a [`SchedulerHandle`] (a
//! `ModelRunner`). A window's cross-attention setup and its start sequence have nothing to batch
//! with and run on the transcription's own thread, overlapping the scheduler's work.
//!
//! - **Decoder (continuous batching):** every sequence that is decoding contributes one token per
//!   lane to one batched step ([`TextDecoder::step`](crate::model::TextDecoder::step)): one lane
//!   when greedy or sampling, `beam_size` lanes in a beam search (its beams share the window's
//!   audio keys/values and the start sequence's cache, see `DecoderState::fork`); sequences join
//!   after their start sequence and leave at end-of-text, between steps, each with its own KV
//!   cache, position, options and stopping point (all of which stay in its own thread). A step
//!   waits (at most `STEP_WAIT`) until every decoding sequence has sent its token.
//! - **Encoder:** 30-s windows waiting from different transcriptions run as one batch of up to
//!   `max_batch`. While sequences are decoding, new windows wait (at most `max_wait`) for the batch
//!   to fill, so that they then decode together: on a CPU a batch's windows run side by side
//!   (~1.15–1.3× per window for eight, see `AudioEncoder::forward`), and decoder steps share their
//!   weight reads across sequences, so throughput comes from keeping both batches full. When nothing is decoding, a window
//!   waits only `IDLE_FILL_WAIT` for company.
//! - **Alignment passes** (word timestamps): one decoder run over a window's text per window;
//!   those of several transcriptions run as one batch (rows of different sequences do not mix),
//!   waiting at most `ALIGN_WAIT` for company.
//! - **Fairness:** a transcription has at most one call outstanding (its windows are sequential:
//!   each starts where the previous one's last timestamp ended), so a long file holds one slot of
//!   an encoder batch and one row of a decoder step, never more, and windows of different requests
//!   interleave: a short request waits at most `max_wait` plus one encoder batch before it decodes
//!   alongside the long one.
//!
//! Results are the same as decoding alone: rows of a batched matmul do not mix, and attention runs
//! per sequence (tests/scheduler.rs compares tokens).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use prometheus::{CounterVec, HistogramOpts, HistogramVec, IntGauge, Opts, Registry};

use crate::decode::{DecodeError, ModelRunner};
use crate::model::{AlignOutput, AlignRequest, DecoderState, Whisper};

/// How the scheduler batches.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Most windows per encoder batch and most sequences per decoder step.
    pub max_batch: usize,
    /// Longest a window is held back, while other sequences decode, for its batch to fill.
    pub max_wait: Duration,
}

/// The one default of each setting: `serve` (`batch_size`, `batch_wait_ms`), `batch` and tests
/// all start from here.
pub const DEFAULT_MAX_BATCH: usize = 8;
pub const DEFAULT_MAX_WAIT_MS: u64 = 20;

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            max_wait: Duration::from_millis(DEFAULT_MAX_WAIT_MS),
        }
    }
}

/// Batch sizes and waits, registered into the server's registry (`/metrics`).
#[derive(Clone)]
pub struct SchedulerMetrics {
    pub batch_size: HistogramVec,
    pub wait_seconds: HistogramVec,
    pub active_sequences: IntGauge,
    pub busy_seconds: CounterVec,
}

impl SchedulerMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            batch_size: HistogramVec::new(
                HistogramOpts::new(
                    "whisperd_batch_size",
                    "Windows per encoder batch, rows per decoder step (a beam search's beams are a row each), sequences per alignment pass",
                )
                .buckets(vec![
                    1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0,
                ]),
                &["stage"],
            )?,
            wait_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "whisperd_batch_wait_seconds",
                    "Time a model call waited in the scheduler before it ran",
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
                &["stage"],
            )?,
            active_sequences: IntGauge::new(
                "whisperd_decoding_sequences",
                "Sequences currently decoding (rows of the next decoder step)",
            )?,
            busy_seconds: CounterVec::new(
                Opts::new(
                    "whisperd_scheduler_busy_seconds_total",
                    "Seconds the scheduler spent running encoder batches and decoder steps; a \
                     summed rate near 1 means the model is saturated (scale out)",
                ),
                &["stage"],
            )?,
        };
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.wait_seconds.clone()))?;
        registry.register(Box::new(m.active_sequences.clone()))?;
        registry.register(Box::new(m.busy_seconds.clone()))?;
        Ok(m)
    }
}

/// Longest a decoder step waits for the tokens of sequences still choosing theirs.
const STEP_WAIT: Duration = Duration::from_millis(2);
/// Longest an alignment pass waits for others to batch with while sequences are decoding (their
/// windows end soon and may want theirs); with nothing decoding it waits `IDLE_FILL_WAIT`.
const ALIGN_WAIT: Duration = Duration::from_millis(20);
/// Longest a window waits for company when nothing is decoding.
const IDLE_FILL_WAIT: Duration = Duration::from_millis(5);

type Reply<T> = Sender<Result<T, DecodeError>>;
/// A decoder state comes back with the result of the call it travelled with.
type StateReply<T> = Sender<(DecoderState, Result<T, DecodeError>)>;
/// A sequence's lanes come back with their logits.
type LanesReply = Sender<(Vec<DecoderState>, Result<Vec<Vec<f32>>, DecodeError>)>;

enum Call {
    Encode {
        mel: Tensor,
        reply: Reply<Tensor>,
    },
    /// A sequence's prefill is done: its steps follow.
    BeginSequence,
    /// One token for each lane of a sequence (several for a beam search).
    Step {
        lanes: Vec<DecoderState>,
        tokens: Vec<u32>,
        reply: LanesReply,
    },
    EndSequence,
    /// A window's alignment pass (word timestamps): several run as one decoder batch.
    Align {
        state: DecoderState,
        req: AlignRequest,
        reply: StateReply<AlignOutput>,
    },
}

struct Queued<T> {
    call: T,
    since: Instant,
}

/// Starts the scheduler thread for `model`; it runs until every handle is dropped.
pub fn start(
    model: Arc<Whisper>,
    config: SchedulerConfig,
    metrics: Option<SchedulerMetrics>,
) -> std::io::Result<SchedulerHandle> {
    let (tx, rx) = channel();
    let worker_model = model.clone();
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || Loop::new(worker_model, config, metrics).run(rx))?;
    Ok(SchedulerHandle { model, tx })
}

/// A transcription's way to the scheduler. Cheap to clone; one per decoding thread.
#[derive(Clone)]
pub struct SchedulerHandle {
    model: Arc<Whisper>,
    tx: Sender<Call>,
}

fn stopped() -> DecodeError {
    DecodeError::Candle(candle_core::Error::Msg(
        "the model scheduler stopped".into(),
    ))
}

impl SchedulerHandle {
    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Call) -> Result<T, DecodeError> {
        let (reply, rx) = channel();
        self.tx.send(make(reply)).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())
    }
}

impl ModelRunner for SchedulerHandle {
    fn dims(&self) -> &crate::model::ModelDims {
        &self.model.dims
    }

    fn device(&self) -> &candle_core::Device {
        &self.model.device
    }

    fn encode(&self, mel: Tensor) -> Result<Tensor, DecodeError> {
        self.call(|reply| Call::Encode { mel, reply })?
    }

    fn prepare(&self, features: &Tensor) -> Result<DecoderState, DecodeError> {
        // On the calling thread (its work still runs on the shared compute pool): a window's
        // setup needs no batching, and this way the setups of windows encoded together overlap
        // each other and the scheduler's steps instead of queuing on its thread one by one.
        guarded("cross-attention setup", || {
            Ok(self.model.decoder.prepare(features)?)
        })
    }

    fn prefill(
        &self,
        state: &mut DecoderState,
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>, DecodeError> {
        // On the calling thread, like `prepare`: a start sequence is one sequence's rows (no
        // batching to gain), and run here it overlaps the scheduler's encoder batches and steps
        // instead of taking ~8 ms of its thread per request (a loaded server's scheduler
        // thread was busy ~98 % of the time, 8 % of it in prefills).
        let logits = guarded("decoder prefill", || {
            self.model.prefill(state, tokens, rows)
        })?;
        self.tx.send(Call::BeginSequence).map_err(|_| stopped())?;
        Ok(logits)
    }

    fn step(
        &self,
        lanes: &mut [DecoderState],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, DecodeError> {
        if lanes.is_empty() || lanes.len() != tokens.len() {
            return Err(DecodeError::Candle(candle_core::Error::Msg(format!(
                "a step needs one token per lane ({} for {})",
                tokens.len(),
                lanes.len()
            ))));
        }
        // The lanes travel to the scheduler's thread and back (moved, not copied).
        let taken: Vec<DecoderState> = lanes
            .iter_mut()
            .map(|l| std::mem::replace(l, DecoderState::empty()))
            .collect();
        let (back, result) = self.call(|reply| Call::Step {
            lanes: taken,
            tokens: tokens.to_vec(),
            reply,
        })?;
        for (slot, lane) in lanes.iter_mut().zip(back) {
            *slot = lane;
        }
        result
    }

    fn end_sequence(&self) {
        let _ = self.tx.send(Call::EndSequence);
    }

    fn align(
        &self,
        state: &mut DecoderState,
        req: AlignRequest,
    ) -> Result<AlignOutput, DecodeError> {
        let taken = std::mem::replace(state, DecoderState::empty());
        let (back, result) = self.call(|reply| Call::Align {
            state: taken,
            req,
            reply,
        })?;
        *state = back;
        result
    }
}

/// Runs `f`, turning a panic into an error so one bad batch never stops the scheduler.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(
                stage = what,
                "model computation panicked; failing this batch"
            );
            Err(DecodeError::Candle(candle_core::Error::Msg(format!(
                "internal error in the {what}"
            ))))
        }
    }
}

fn copy_err(e: &DecodeError) -> DecodeError {
    DecodeError::Candle(candle_core::Error::Msg(e.to_string()))
}

struct Loop {
    model: Arc<Whisper>,
    config: SchedulerConfig,
    metrics: Option<SchedulerMetrics>,
    encodes: VecDeque<Queued<(Tensor, Reply<Tensor>)>>,
    steps: Vec<Queued<Call>>,
    /// Alignment passes waiting (at most `ALIGN_WAIT`) for company.
    aligns: Vec<Queued<Call>>,
    /// Sequences between their prefill and their end: the rows a decoder step waits for.
    active: usize,
}

impl Loop {
    fn new(
        model: Arc<Whisper>,
        config: SchedulerConfig,
        metrics: Option<SchedulerMetrics>,
    ) -> Self {
        Self {
            model,
            config: SchedulerConfig {
                max_batch: config.max_batch.max(1),
                ..config
            },
            metrics,
            encodes: VecDeque::new(),
            steps: Vec::new(),
            aligns: Vec::new(),
            active: 0,
        }
    }

    fn run(mut self, rx: Receiver<Call>) {
        loop {
            // Block while there is nothing to do; otherwise only until the oldest call's wait
            // is over.
            let first = match self.deadline() {
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                },
                Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) if self.is_idle() => return,
                    Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            if let Some(c) = first {
                self.accept(c);
            }
            while let Ok(c) = rx.try_recv() {
                self.accept(c);
            }
            if self.decoder_ready(Instant::now()) {
                let t = Instant::now();
                self.run_step();
                self.observe_busy("decoder", t);
            }
            if self.align_ready(Instant::now()) {
                let t = Instant::now();
                self.run_align();
                self.observe_busy("align", t);
            }
            if self.encoder_ready(Instant::now()) {
                let t = Instant::now();
                self.run_encoder();
                self.observe_busy("encoder", t);
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.encodes.is_empty() && self.steps.is_empty() && self.aligns.is_empty()
    }

    /// How long the oldest window may wait, given what is decoding.
    fn encoder_wait(&self) -> Duration {
        if self.active == 0 {
            IDLE_FILL_WAIT.min(self.config.max_wait)
        } else {
            self.config.max_wait
        }
    }

    /// When the oldest waiting call must run at the latest.
    fn deadline(&self) -> Option<Instant> {
        let oldest = [
            self.encodes.front().map(|q| q.since + self.encoder_wait()),
            self.steps.first().map(|q| q.since + STEP_WAIT),
            self.aligns.first().map(|q| q.since + self.align_wait()),
        ];
        oldest.into_iter().flatten().min()
    }

    fn encoder_ready(&self, now: Instant) -> bool {
        match self.encodes.front() {
            None => false,
            Some(q) => {
                self.encodes.len() >= self.config.max_batch || now >= q.since + self.encoder_wait()
            }
        }
    }

    fn align_wait(&self) -> Duration {
        if self.active == 0 {
            IDLE_FILL_WAIT
        } else {
            ALIGN_WAIT
        }
        .min(self.config.max_wait)
    }

    fn align_ready(&self, now: Instant) -> bool {
        match self.aligns.first() {
            None => false,
            Some(q) => {
                self.aligns.len() >= self.config.max_batch || now >= q.since + self.align_wait()
            }
        }
    }

    fn decoder_ready(&self, now: Instant) -> bool {
        match self.steps.first() {
            None => false,
            Some(q) => {
                self.steps.len() >= self.active.min(self.config.max_batch)
                    || now >= q.since + STEP_WAIT
            }
        }
    }

    /// Cheap calls run at once; batchable ones queue.
    fn accept(&mut self, call: Call) {
        let since = Instant::now();
        match call {
            Call::Encode { mel, reply } => self.encodes.push_back(Queued {
                call: (mel, reply),
                since,
            }),
            Call::BeginSequence => {
                self.active += 1;
                self.observe_active();
            }
            c @ Call::Step { .. } => self.steps.push(Queued { call: c, since }),
            c @ Call::Align { .. } => self.aligns.push(Queued { call: c, since }),
            Call::EndSequence => {
                self.active = self.active.saturating_sub(1);
                self.observe_active();
            }
        }
    }

    fn observe_active(&self) {
        if let Some(m) = &self.metrics {
            m.active_sequences.set(self.active as i64);
        }
    }

    /// The scheduler's thread runs every batch in turn: its busy time is the serving capacity
    /// in use.
    fn observe_busy(&self, stage: &str, since: Instant) {
        if let Some(m) = &self.metrics {
            m.busy_seconds
                .with_label_values(&[stage])
                .inc_by(since.elapsed().as_secs_f64());
        }
    }

    fn observe(&self, stage: &str, waits: impl Iterator<Item = Instant>, n: usize) {
        if let Some(m) = &self.metrics {
            m.batch_size.with_label_values(&[stage]).observe(n as f64);
            let h = m.wait_seconds.with_label_values(&[stage]);
            waits.for_each(|t| h.observe(t.elapsed().as_secs_f64()));
        }
    }

    fn run_encoder(&mut self) {
        let n = self.encodes.len().min(self.config.max_batch);
        let batch: Vec<_> = self.encodes.drain(..n).collect();
        self.observe("encoder", batch.iter().map(|q| q.since), n);
        let _span = tracing::debug_span!("encoder_batch", windows = n).entered();
        let mels: Vec<&Tensor> = batch.iter().map(|q| &q.call.0).collect();
        let result = guarded("encoder", || {
            let input = Tensor::cat(&mels, 0)?;
            let features = self.model.encoder.forward(&input)?;
            Ok((0..n)
                .map(|i| features.narrow(0, i, 1))
                .collect::<Result<Vec<_>, _>>()?)
        });
        match result {
            Ok(features) => {
                for (q, f) in batch.into_iter().zip(features) {
                    let _ = q.call.1.send(Ok(f));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, windows = n, "encoder batch failed");
                for q in batch {
                    let _ = q.call.1.send(Err(copy_err(&e)));
                }
            }
        }
    }

    /// Alignment passes of several windows as one decoder run (rows of different sequences do
    /// not mix: `TextDecoder::align`).
    fn run_align(&mut self) {
        let n = self.aligns.len().min(self.config.max_batch);
        let batch: Vec<_> = self.aligns.drain(..n).collect();
        self.observe("align", batch.iter().map(|q| q.since), n);
        let _span = tracing::debug_span!("align_batch", sequences = n).entered();
        let mut states = Vec::with_capacity(n);
        let mut reqs = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        for q in batch {
            if let Call::Align { state, req, reply } = q.call {
                states.push(state);
                reqs.push(req);
                replies.push(reply);
            }
        }
        let result = guarded("alignment pass", || {
            let mut refs: Vec<&mut DecoderState> = states.iter_mut().collect();
            Ok(self
                .model
                .decoder
                .align(&mut refs, &reqs, &self.model.alignment_heads)?)
        });
        match result {
            Ok(outs) => {
                for ((state, reply), out) in states.into_iter().zip(replies).zip(outs) {
                    let _ = reply.send((state, Ok(out)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, sequences = n, "alignment batch failed");
                for (state, reply) in states.into_iter().zip(replies) {
                    let _ = reply.send((state, Err(copy_err(&e))));
                }
            }
        }
    }

    fn run_step(&mut self) {
        let n = self.steps.len().min(self.config.max_batch);
        let batch: Vec<_> = self.steps.drain(..n).collect();
        let mut calls = Vec::with_capacity(n);
        for q in batch {
            if let Call::Step {
                lanes,
                tokens,
                reply,
            } = q.call
            {
                calls.push((q.since, lanes, tokens, reply));
            }
        }
        // Rows of the step: every lane of every sequence (a beam search brings several).
        let rows: usize = calls.iter().map(|c| c.1.len()).sum();
        self.observe("decoder", calls.iter().map(|c| c.0), rows);
        let tokens: Vec<u32> = calls.iter().flat_map(|c| c.2.iter().copied()).collect();
        let result = guarded("decoder step", || {
            let mut refs: Vec<&mut DecoderState> =
                calls.iter_mut().flat_map(|c| c.1.iter_mut()).collect();
            let logits = self.model.decoder.step(&mut refs, &tokens)?;
            Ok(logits.to_vec2::<f32>()?)
        });
        match result {
            Ok(rows) => {
                let mut rows = rows.into_iter();
                for (_, lanes, _, reply) in calls {
                    let mine: Vec<Vec<f32>> = rows.by_ref().take(lanes.len()).collect();
                    let _ = reply.send((lanes, Ok(mine)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, sequences = n, rows, "decoder step failed");
                for (_, lanes, _, reply) in calls {
                    let _ = reply.send((lanes, Err(copy_err(&e))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full batch of default beam searches (8 requests × 5 beams = 40 rows a step) lands in a
    /// bucket of its own, not in +Inf.
    #[test]
    fn batch_size_buckets_cover_a_full_batch_of_beams() -> Result<(), prometheus::Error> {
        let m = SchedulerMetrics::new(&Registry::new())?;
        let rows = (DEFAULT_MAX_BATCH * crate::decode::DEFAULT_BEAM_SIZE) as f64;
        m.batch_size.with_label_values(&["decoder"]).observe(rows);
        use prometheus::core::Collector;
        let families = m.batch_size.collect();
        let bounds: Vec<f64> = families
            .iter()
            .flat_map(|f| f.get_metric())
            .flat_map(|m| m.get_histogram().get_bucket())
            .filter(|b| b.cumulative_count() == 1)
            .map(|b| b.upper_bound())
            .collect();
        assert!(
            bounds.first().is_some_and(|&b| b < 2.0 * rows),
            "{rows} rows fall in a bucket at most twice as wide"
        );
        Ok(())
    }
}
