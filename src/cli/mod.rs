//! Command line: `transcribe`, `convert`. Thin over `whisperd::Engine`.

mod batch;
mod serve;
mod transcribe;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Where the default model lives, relative to the working directory (`make model` puts it there).
pub const DEFAULT_MODEL_DIR: &str = "models/whisper-tiny.en";

#[derive(Parser)]
#[command(
    name = "whisperd",
    version,
    about = "Whisper speech-to-text: CLI and HTTP service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transcribe audio files; one file prints to stdout, several write into --output-dir.
    Transcribe(transcribe::TranscribeArgs),
    /// Transcribe a backlog: files, folders, globs or lists into a mirrored output tree.
    Batch(batch::BatchArgs),
    /// Run the HTTP service.
    Serve(serve::ServeArgs),
    /// Convert a model directory to another layout.
    Convert(ConvertArgs),
}

/// Model and decoding flags shared by `transcribe` and `batch`.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Model directory (CTranslate2 or Hugging Face layout).
    #[arg(long, env = "WHISPERD_MODEL", default_value = DEFAULT_MODEL_DIR)]
    pub model: PathBuf,
    /// Spoken language (code or name); detected when omitted (multilingual models).
    #[arg(long)]
    pub language: Option<String>,
    /// transcribe, or translate to English.
    #[arg(long, default_value = "transcribe")]
    pub task: whisperd::Task,
    /// Compute threads (default: all cores).
    #[arg(long, env = "WHISPERD_THREADS")]
    pub threads: Option<usize>,
    /// f32, or q8 (decoder weights quantized to Q8_0 at load: faster, slightly less exact).
    #[arg(long, env = "WHISPERD_PRECISION", default_value = "f32")]
    pub precision: whisperd::model::Precision,
    /// cpu, cuda, cuda:N or auto (CUDA needs a `--features cuda` build).
    #[arg(long, env = "WHISPERD_DEVICE", default_value = "cpu")]
    pub device: whisperd::engine::DeviceSpec,
    /// Silero VAD v6 ONNX file (default: silero-vad/silero_vad_v6.onnx beside the model directory).
    #[arg(long, env = "WHISPERD_VAD_MODEL")]
    pub vad_model: Option<PathBuf>,
}

impl ModelArgs {
    /// Size the thread pool, then load the model.
    pub fn load_engine(&self) -> anyhow::Result<whisperd::Engine> {
        use anyhow::Context;
        set_threads(self.threads);
        let device = whisperd::engine::select_device(self.device)?;
        let mut engine = whisperd::Engine::load_with(&self.model, &device, self.precision)
            .with_context(|| format!("loading model {}", self.model.display()))?;
        if let Some(p) = &self.vad_model {
            engine
                .load_vad(p)
                .with_context(|| format!("loading VAD model {}", p.display()))?;
        }
        Ok(engine)
    }

    /// Load the model, and refuse to start when the options need VAD and there is no VAD model.
    pub fn load_engine_for(
        &self,
        o: &whisperd::TranscribeOptions,
    ) -> anyhow::Result<whisperd::Engine> {
        let engine = self.load_engine()?;
        if o.vad.enabled && engine.vad.is_none() {
            anyhow::bail!(
                "VAD is on (the default) but no Silero VAD model was found in {:?}: run `make model` (or python3 models/fetch.py silero-vad), pass --vad-model, or pass --vad false",
                whisperd::engine::vad_model_candidates(&self.model)
            );
        }
        Ok(engine)
    }
}

/// A fallback threshold flag: a number, or `none` (the check is off).
#[derive(Clone, Copy, Debug)]
pub struct Threshold(pub Option<f32>);

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        whisperd::decode::parse_threshold(s).map(Threshold)
    }
}

/// A length-penalty flag: a number, or `none` (divide by the length).
#[derive(Clone, Copy, Debug)]
pub struct LengthPenalty(pub Option<f32>);

impl std::str::FromStr for LengthPenalty {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        whisperd::decode::parse_length_penalty(s).map(LengthPenalty)
    }
}

/// Temperature fallback and the checks that trigger it, shared by `transcribe` and `batch`.
#[derive(clap::Args)]
pub struct DecodingArgs {
    /// Temperatures tried in order while a window's text fails the checks below (comma-separated;
    /// 0 = deterministic: beam search at --beam-size, greedy at 1). If every one fails, the
    /// attempt with the best average log-probability is kept.
    #[arg(long, value_delimiter = ',', default_value = "0,0.2,0.4,0.6,0.8,1.0", value_parser = temperature)]
    pub temperature: Vec<f32>,
    /// Retry when the text's zlib compression ratio is above this (repetitive); `none`: no check.
    #[arg(long, default_value = "2.4")]
    pub compression_ratio_threshold: Threshold,
    /// Retry when the average token log-probability is below this; `none`: no check.
    #[arg(long, default_value = "-1.0", allow_hyphen_values = true)]
    pub logprob_threshold: Threshold,
    /// No-speech probability above which a window that fails --logprob-threshold is silence.
    #[arg(long, default_value = "0.6")]
    pub no_speech_threshold: Threshold,
    /// Samples drawn at each temperature above 0; the best-scoring one is that temperature's attempt.
    #[arg(long, default_value_t = 5)]
    pub best_of: usize,
    /// Beam search width at temperature 0 (1 = greedy, at most 16).
    #[arg(long, default_value_t = whisperd::decode::DEFAULT_BEAM_SIZE)]
    pub beam_size: usize,
    /// Beam search: finished candidates collected before a window stops, × beam size.
    #[arg(long, default_value_t = 1.0)]
    pub patience: f32,
    /// Beam search ranking: `none` divides by the length; a number α by ((5 + length) / 6)^α.
    #[arg(long, default_value = "none")]
    pub length_penalty: LengthPenalty,
    /// Do not feed each window's text to the next as its prompt.
    #[arg(long)]
    pub no_condition_on_previous_text: bool,
    /// Silero VAD: transcribe only the speech it finds (true or false).
    #[arg(long, env = "WHISPERD_VAD", default_value_t = whisperd::vad::DEFAULT_ON, action = clap::ArgAction::Set)]
    pub vad: bool,
    /// Speech probability at or above which a 32-ms frame is speech.
    #[arg(long, default_value_t = VAD.threshold)]
    pub vad_threshold: f32,
    /// Probability below which a frame is silence even inside speech (default: threshold − 0.15).
    #[arg(long)]
    pub vad_neg_threshold: Option<f32>,
    /// Speech regions shorter than this are dropped.
    #[arg(long, default_value_t = VAD.min_speech_duration_ms)]
    pub vad_min_speech_ms: u32,
    /// Longer speech regions are split at their last short pause (inf: never).
    #[arg(long, default_value_t = VAD.max_speech_duration_s)]
    pub vad_max_speech_s: f32,
    /// Silence shorter than this does not end a speech region.
    #[arg(long, default_value_t = VAD.min_silence_duration_ms)]
    pub vad_min_silence_ms: u32,
    /// Audio kept on each side of a speech region.
    #[arg(long, default_value_t = VAD.speech_pad_ms)]
    pub vad_speech_pad_ms: u32,
    /// Energy gate level in dBFS (runs of 1 s+ quieter than this, and 50 dB under the loudest
    /// frame, are skipped); `none` turns the gate off.
    #[arg(long, default_value = "-60", allow_hyphen_values = true)]
    pub vad_gate_db: Threshold,
    /// Languages detection chooses among (comma-separated codes, e.g. `en,de`; multilingual
    /// models). One language is the same as --language.
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<String>,
    /// Words or phrases that guide the transcription (names, jargon; comma-separated): they
    /// lead every window's prompt, as faster-whisper's hotwords.
    #[arg(long, value_delimiter = ',')]
    pub keywords: Vec<String>,
    /// Word-level timestamps: each segment gets `words` (word, start, end, probability) in json
    /// and verbose_json; srt/vtt can then be laid out by words (below).
    #[arg(long)]
    pub word_timestamps: bool,
    /// srt/vtt: at most this many characters per line (turns word timestamps on).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_line_width: Option<u64>,
    /// srt/vtt: at most this many lines per cue, with --max-line-width (turns word timestamps on).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_line_count: Option<u64>,
    /// srt/vtt: at most this many words per line (turns word timestamps on).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_words_per_line: Option<u64>,
    /// srt/vtt: one cue per word with the word underlined (turns word timestamps on).
    #[arg(long)]
    pub highlight_words: bool,
    /// Who spoke when: segments (and words) get `speaker` (SPEAKER_00, … in order of first
    /// appearance); srt/vtt/tsv/text show it. Needs the speaker model (`make model-ge2e`).
    #[arg(long)]
    pub diarize: bool,
    /// Diarization: exactly this many speakers (turns --diarize on).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=32))]
    pub num_speakers: Option<u64>,
    /// Diarization: at least this many speakers (turns --diarize on).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=32))]
    pub min_speakers: Option<u64>,
    /// Diarization: at most this many speakers (turns --diarize on).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=32))]
    pub max_speakers: Option<u64>,
    /// mix: the channels averaged into one signal; split: each channel transcribed alone, its
    /// segments labelled CHANNEL_0, CHANNEL_1, … on one timeline (call recordings with each
    /// party on its own channel; at most 8; not with --diarize).
    #[arg(long, default_value = "mix", value_parser = |s: &str| s.parse::<whisperd::audio::Channels>())]
    pub channels: whisperd::audio::Channels,
}

/// The library's VAD defaults (faster-whisper's), for the flags above.
const VAD: whisperd::vad::VadOptions = whisperd::vad::VadOptions::DEFAULT;

fn temperature(s: &str) -> Result<f32, String> {
    whisperd::decode::parse_temperatures(s)?
        .first()
        .copied()
        .ok_or_else(|| "needs a temperature".to_string())
}

impl DecodingArgs {
    /// How srt/vtt are laid out.
    pub fn subtitles(&self) -> whisperd::output::SubtitleOptions {
        whisperd::output::SubtitleOptions {
            max_line_width: self.max_line_width.map(|n| n as usize),
            max_line_count: self.max_line_count.map(|n| n as usize),
            max_words_per_line: self.max_words_per_line.map(|n| n as usize),
            highlight_words: self.highlight_words,
        }
    }

    /// Diarization as the flags ask (`None`: off); `format` may ask for it too (rttm).
    pub fn diarize(&self, format_needs_it: bool) -> Option<whisperd::diarize::DiarizeOptions> {
        let o = whisperd::diarize::DiarizeOptions {
            num_speakers: self.num_speakers.map(|n| n as usize),
            min_speakers: self.min_speakers.map(|n| n as usize),
            max_speakers: self.max_speakers.map(|n| n as usize),
            known: Vec::new(),
        };
        // With split channels the channels are the speakers: a format made of speaker labels
        // (rttm) needs no diarization.
        let split = self.channels == whisperd::audio::Channels::Split;
        let on = self.diarize || (format_needs_it && !split) || o != Default::default();
        on.then_some(o)
    }

    /// Default options with these flags applied.
    pub fn options(&self) -> whisperd::TranscribeOptions {
        whisperd::TranscribeOptions {
            diarize: self.diarize(false),
            channels: self.channels,
            word_timestamps: self.word_timestamps || self.subtitles().needs_words(),
            languages: self.languages.clone(),
            keywords: self.keywords.clone(),
            temperatures: self.temperature.clone(),
            compression_ratio_threshold: self.compression_ratio_threshold.0,
            logprob_threshold: self.logprob_threshold.0,
            no_speech_threshold: self.no_speech_threshold.0,
            best_of: self.best_of,
            beam: whisperd::decode::BeamOptions {
                beam_size: self.beam_size,
                patience: self.patience,
                length_penalty: self.length_penalty.0,
            },
            condition_on_previous_text: !self.no_condition_on_previous_text,
            vad: whisperd::vad::VadOptions {
                enabled: self.vad,
                threshold: self.vad_threshold,
                neg_threshold: self.vad_neg_threshold,
                min_speech_duration_ms: self.vad_min_speech_ms,
                max_speech_duration_s: self.vad_max_speech_s,
                min_silence_duration_ms: self.vad_min_silence_ms,
                speech_pad_ms: self.vad_speech_pad_ms,
                gate_db: self.vad_gate_db.0,
            },
            ..Default::default()
        }
    }
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// Target layout (only `safetensors`, the Hugging Face layout, for now).
    #[arg(long = "to", value_parser = ["safetensors"])]
    to: String,
    /// Source model directory (either layout).
    src: PathBuf,
    /// Destination directory (created).
    dst: PathBuf,
}

/// Log to stderr at `level` (`RUST_LOG` overrides), as text or JSON lines (no trace export:
/// that is `serve`'s, see [`whisperd::telemetry`]).
pub fn init_logging(format: &str, level: &str) {
    let _ = whisperd::telemetry::init(format, level, None);
}

/// Size the compute thread pool before any tensor code runs.
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads.filter(|&n| n > 0) {
        // Read by candle's CPU kernels when they size their own pool.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        // The pool gemm and whisperd's kernels run on, sized explicitly rather than through
        // the variable (which only works if nothing touched rayon yet).
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("compute-{i}"))
            .build_global()
        {
            tracing::warn!(error = %e, threads = n, "compute pool was already started; thread count unchanged");
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        init_logging(
            &env("WHISPERD_LOG_FORMAT", "text"),
            &env("WHISPERD_LOG_LEVEL", "info"),
        );
    }
    let result = match cli.command {
        Command::Transcribe(args) => transcribe::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Batch(args) => batch::run(args),
        Command::Convert(args) => {
            let _ = &args.to;
            whisperd::convert_to_safetensors(&args.src, &args.dst)
                .map(|_| {
                    eprintln!("wrote {}", args.dst.display());
                    ExitCode::SUCCESS
                })
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
