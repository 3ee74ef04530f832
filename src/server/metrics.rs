//! Prometheus metrics of the service (`GET /metrics`).

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub queue_wait_seconds: Histogram,
    pub inference_seconds: HistogramVec,
    pub realtime_factor: HistogramVec,
    pub audio_seconds: prometheus::CounterVec,
    pub client_audio_seconds: prometheus::CounterVec,
    pub decoded_tokens: IntCounter,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    pub jobs: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_coalesced: IntCounter,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub model_load_seconds: GaugeVec,
    pub build_info: IntGaugeVec,
    /// Per model: in memory now (1/0), its memory estimate while loaded, loads by result,
    /// unloads by reason (`idle`: model_ttl_s; `evicted`: room for another under
    /// models_memory_mb), and loads refused because every loaded model was busy.
    pub model_loaded: IntGaugeVec,
    pub model_memory_bytes: IntGaugeVec,
    pub model_loads: IntCounterVec,
    pub model_unloads: IntCounterVec,
    pub model_load_refused: IntCounterVec,
    pub scheduler: crate::scheduler::SchedulerMetrics,
    /// Redis and the shared cache.
    pub cluster: crate::cluster::ClusterMetrics,
    /// Async jobs and webhooks.
    pub async_jobs: crate::jobs::JobMetrics,
    /// Windows by how temperature fallback ended (`passed` at a temperature, or
    /// `best_of_failed`: every temperature failed, the best-scoring attempt was kept).
    pub fallbacks: IntCounterVec,
    /// Windows the model ended early with VAD speech left in them, decoding resuming there.
    pub early_end_resumes: IntCounter,
    pub vad_speech_seconds: prometheus::CounterVec,
    pub vad_skipped_seconds: prometheus::CounterVec,
    /// Diarization: seconds per recording (embedding + clustering), speakers found, windows.
    pub diarize_seconds: Histogram,
    pub diarize_speakers: Histogram,
    pub diarize_windows: IntCounter,
    /// Streamed responses (SSE) open now, and the time from request to the first text.
    pub streams_open: IntGauge,
    pub stream_first_text_seconds: Histogram,
    /// Realtime (WebSocket) transcription sessions open now; seconds from speech start to the
    /// first partial text; seconds from a commit (or the end of speech) to `completed`.
    pub realtime_sessions_open: IntGauge,
    pub realtime_first_delta_seconds: Histogram,
    pub realtime_latency_seconds: Histogram,
    /// Utterances whose final transcript did not start with the partial text already sent.
    pub realtime_partial_mismatches: IntCounter,
    /// Long audio's samples and log-mel moved to temporary files (`audio::spill`), counted there
    /// and copied in at each scrape.
    pub audio_spills: IntCounter,
    pub audio_spilled_bytes: IntCounter,
    /// Keys in force, and re-reads of `api_keys_file` that changed them or failed.
    pub api_keys: IntGauge,
    pub api_key_reloads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let latency = exponential_buckets(0.01, 2.0, 16)?;
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "whisperd_http_requests_total",
                    "HTTP requests by route and status",
                ),
                &["route", "status"],
            )?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "whisperd_http_request_duration_seconds",
                    "HTTP request latency",
                )
                .buckets(latency.clone()),
                &["route"],
            )?,
            queue_wait_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "whisperd_queue_wait_seconds",
                    "Time a job waited for the inference worker",
                )
                .buckets(latency.clone()),
            )?,
            inference_seconds: HistogramVec::new(
                HistogramOpts::new("whisperd_inference_seconds", "Model time per job, by model")
                    .buckets(latency.clone()),
                &["model"],
            )?,
            realtime_factor: HistogramVec::new(
                HistogramOpts::new(
                    "whisperd_realtime_factor",
                    "Inference seconds per audio second, by model",
                )
                .buckets(exponential_buckets(0.005, 2.0, 12)?),
                &["model"],
            )?,
            audio_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "whisperd_audio_seconds_total",
                    "Seconds of audio transcribed, by model",
                ),
                &["model"],
            )?,
            client_audio_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "whisperd_client_audio_seconds_total",
                    "Seconds of audio served per API key (`key:<sha256 prefix>`; `anonymous` without keys), cache hits included",
                ),
                &["client"],
            )?,
            decoded_tokens: IntCounter::new(
                "whisperd_decoded_tokens_total",
                "Tokens produced by the decoder",
            )?,
            queue_depth: IntGauge::new(
                "whisperd_queue_depth",
                "Jobs waiting for the inference worker",
            )?,
            in_flight: IntGauge::new(
                "whisperd_in_flight_requests",
                "Transcription requests being handled",
            )?,
            jobs: IntCounterVec::new(
                Opts::new(
                    "whisperd_inference_jobs_total",
                    "Inference jobs by model and result",
                ),
                &["model", "result"],
            )?,
            cache_hits: IntCounter::new(
                "whisperd_cache_hits_total",
                "Requests answered from the result cache",
            )?,
            cache_misses: IntCounter::new(
                "whisperd_cache_misses_total",
                "Requests not in the result cache",
            )?,
            cache_coalesced: IntCounter::new(
                "whisperd_cache_coalesced_total",
                "Requests that waited for an identical request in flight",
            )?,
            cache_entries: IntGauge::new(
                "whisperd_cache_entries",
                "Transcripts in the result cache",
            )?,
            cache_bytes: IntGauge::new(
                "whisperd_cache_bytes",
                "Approximate bytes held by the result cache",
            )?,
            model_load_seconds: GaugeVec::new(
                Opts::new(
                    "whisperd_model_load_seconds",
                    "Seconds each model's last load took",
                ),
                &["model"],
            )?,
            model_loaded: IntGaugeVec::new(
                Opts::new("whisperd_model_loaded", "1 while the model is in memory"),
                &["model"],
            )?,
            model_memory_bytes: IntGaugeVec::new(
                Opts::new(
                    "whisperd_model_memory_bytes",
                    "Memory the model is estimated to take while loaded (what models_memory_mb counts)",
                ),
                &["model"],
            )?,
            model_loads: IntCounterVec::new(
                Opts::new("whisperd_model_loads_total", "Model loads by result (ok, error)"),
                &["model", "result"],
            )?,
            model_unloads: IntCounterVec::new(
                Opts::new(
                    "whisperd_model_unloads_total",
                    "Model unloads by reason (idle: model_ttl_s; evicted: room for another model under models_memory_mb)",
                ),
                &["model", "reason"],
            )?,
            model_load_refused: IntCounterVec::new(
                Opts::new(
                    "whisperd_model_load_refused_total",
                    "Requests answered 503 because their model was not loaded and every loaded model was busy",
                ),
                &["model"],
            )?,
            build_info: IntGaugeVec::new(
                Opts::new("whisperd_build_info", "Build and model information"),
                &["version", "model"],
            )?,
            scheduler: crate::scheduler::SchedulerMetrics::new(&registry)?,
            cluster: crate::cluster::ClusterMetrics::new(&registry)?,
            async_jobs: crate::jobs::JobMetrics::new(&registry)?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "whisperd_fallback_total",
                    "Decoded windows by fallback outcome (passed, best_of_failed) and the \
                     temperature of the kept text",
                ),
                &["outcome", "temperature"],
            )?,
            early_end_resumes: IntCounter::new(
                "whisperd_window_early_end_resumes_total",
                "Windows the model ended after a sentence with more VAD speech in them: decoding \
                 resumed where it ended instead of skipping the rest of the window",
            )?,
            vad_speech_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "whisperd_vad_speech_seconds_total",
                    "Seconds of audio that reached the decoder after speech detection, by \
                     detector (`silero`: VAD on; `gate`: only the energy gate)",
                ),
                &["detector"],
            )?,
            vad_skipped_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "whisperd_vad_skipped_seconds_total",
                    "Seconds of audio skipped as silence or non-speech before decoding, by \
                     detector (`silero`, `gate`)",
                ),
                &["detector"],
            )?,
            diarize_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "whisperd_diarization_seconds",
                    "Seconds diarization took per recording (speaker embeddings and clustering; \
                     it runs beside the transcription)",
                )
                .buckets(latency.clone()),
            )?,
            diarize_speakers: Histogram::with_opts(
                HistogramOpts::new(
                    "whisperd_diarization_speakers",
                    "Speakers found per diarized recording",
                )
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 32.0]),
            )?,
            diarize_windows: IntCounter::new(
                "whisperd_diarization_windows_total",
                "Speaker-embedding windows (1.6 s) computed",
            )?,
            streams_open: IntGauge::new(
                "whisperd_streams_open",
                "Streamed (server-sent events) transcription responses open now",
            )?,
            stream_first_text_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "whisperd_stream_first_text_seconds",
                    "Seconds from a streamed request's admission to its first text event",
                )
                .buckets(exponential_buckets(0.05, 2.0, 12)?),
            )?,
            realtime_sessions_open: IntGauge::new(
                "whisperd_realtime_sessions_open",
                "Realtime (WebSocket) transcription sessions open now",
            )?,
            realtime_first_delta_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "whisperd_realtime_first_delta_seconds",
                    "Realtime: seconds from the start of an utterance to its first partial text",
                )
                .buckets(exponential_buckets(0.05, 2.0, 12)?),
            )?,
            realtime_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "whisperd_realtime_latency_seconds",
                    "Realtime: seconds from a commit (or the end of speech) to the utterance's completed transcript",
                )
                .buckets(exponential_buckets(0.05, 2.0, 12)?),
            )?,
            realtime_partial_mismatches: IntCounter::new(
                "whisperd_realtime_partial_mismatches_total",
                "Realtime: utterances whose final transcript does not start with the partial text already sent as deltas",
            )?,
            api_keys: IntGauge::new(
                "whisperd_api_keys",
                "API keys in force (api_keys plus the lines of api_keys_file)",
            )?,
            api_key_reloads: IntCounterVec::new(
                Opts::new(
                    "whisperd_api_key_reloads_total",
                    "Re-reads of api_keys_file by result: changed (new keys in force) or error (old keys kept)",
                ),
                &["result"],
            )?,
            registry,
            audio_spills: IntCounter::new(
                "whisperd_audio_spills_total",
                "Buffers of long audio (decoded samples or log-mel) moved from memory to a temporary file",
            )?,
            audio_spilled_bytes: IntCounter::new(
                "whisperd_audio_spilled_bytes_total",
                "Bytes of long audio written to temporary files",
            )?,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.request_seconds.clone()))?;
        m.registry
            .register(Box::new(m.queue_wait_seconds.clone()))?;
        m.registry.register(Box::new(m.inference_seconds.clone()))?;
        m.registry.register(Box::new(m.realtime_factor.clone()))?;
        m.registry.register(Box::new(m.audio_seconds.clone()))?;
        m.registry
            .register(Box::new(m.client_audio_seconds.clone()))?;
        m.registry.register(Box::new(m.decoded_tokens.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.in_flight.clone()))?;
        m.registry.register(Box::new(m.jobs.clone()))?;
        m.registry.register(Box::new(m.cache_hits.clone()))?;
        m.registry.register(Box::new(m.cache_misses.clone()))?;
        m.registry.register(Box::new(m.cache_coalesced.clone()))?;
        m.registry.register(Box::new(m.cache_entries.clone()))?;
        m.registry.register(Box::new(m.cache_bytes.clone()))?;
        m.registry
            .register(Box::new(m.model_load_seconds.clone()))?;
        m.registry.register(Box::new(m.build_info.clone()))?;
        m.registry.register(Box::new(m.model_loaded.clone()))?;
        m.registry
            .register(Box::new(m.model_memory_bytes.clone()))?;
        m.registry.register(Box::new(m.model_loads.clone()))?;
        m.registry.register(Box::new(m.model_unloads.clone()))?;
        m.registry
            .register(Box::new(m.model_load_refused.clone()))?;
        m.registry.register(Box::new(m.fallbacks.clone()))?;
        m.registry.register(Box::new(m.early_end_resumes.clone()))?;
        m.registry
            .register(Box::new(m.vad_speech_seconds.clone()))?;
        m.registry
            .register(Box::new(m.vad_skipped_seconds.clone()))?;
        m.registry.register(Box::new(m.diarize_seconds.clone()))?;
        m.registry.register(Box::new(m.diarize_speakers.clone()))?;
        m.registry.register(Box::new(m.diarize_windows.clone()))?;
        m.registry.register(Box::new(m.streams_open.clone()))?;
        m.registry
            .register(Box::new(m.realtime_sessions_open.clone()))?;
        m.registry
            .register(Box::new(m.realtime_first_delta_seconds.clone()))?;
        m.registry
            .register(Box::new(m.realtime_latency_seconds.clone()))?;
        m.registry
            .register(Box::new(m.realtime_partial_mismatches.clone()))?;
        m.registry
            .register(Box::new(m.stream_first_text_seconds.clone()))?;
        m.registry.register(Box::new(m.audio_spills.clone()))?;
        m.registry
            .register(Box::new(m.audio_spilled_bytes.clone()))?;
        m.registry.register(Box::new(m.api_keys.clone()))?;
        m.registry.register(Box::new(m.api_key_reloads.clone()))?;
        Ok(m)
    }

    pub fn render(&self) -> String {
        use crate::audio::spill::{SPILLED_BYTES, SPILLS};
        use std::sync::atomic::Ordering::Relaxed;
        // One scrape at a time catches up, or two at once would both add the difference.
        static CATCH_UP: std::sync::Mutex<()> = std::sync::Mutex::new(());
        {
            let _one = CATCH_UP.lock().unwrap_or_else(|p| p.into_inner());
            let catch_up = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
            catch_up(&self.audio_spills, SPILLS.load(Relaxed));
            catch_up(&self.audio_spilled_bytes, SPILLED_BYTES.load(Relaxed));
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
