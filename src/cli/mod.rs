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
    pub device: String,
}

impl ModelArgs {
    /// Size the thread pool, then load the model.
    pub fn load_engine(&self) -> anyhow::Result<whisperd::Engine> {
        use anyhow::Context;
        set_threads(self.threads);
        let device = whisperd::engine::select_device(&self.device)?;
        whisperd::Engine::load_with(&self.model, &device, self.precision)
            .with_context(|| format!("loading model {}", self.model.display()))
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

/// Temperature fallback and the checks that trigger it, shared by `transcribe` and `batch`.
#[derive(clap::Args)]
pub struct DecodingArgs {
    /// Temperatures tried in order while a window's text fails the checks below (comma-separated;
    /// 0 = greedy). If every one fails, the attempt with the best average log-probability is kept.
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
    /// Do not feed each window's text to the next as its prompt.
    #[arg(long)]
    pub no_condition_on_previous_text: bool,
}

fn temperature(s: &str) -> Result<f32, String> {
    whisperd::decode::parse_temperatures(s)?
        .first()
        .copied()
        .ok_or_else(|| "needs a temperature".to_string())
}

impl DecodingArgs {
    /// Default options with these flags applied.
    pub fn options(&self) -> whisperd::TranscribeOptions {
        whisperd::TranscribeOptions {
            temperatures: self.temperature.clone(),
            compression_ratio_threshold: self.compression_ratio_threshold.0,
            logprob_threshold: self.logprob_threshold.0,
            no_speech_threshold: self.no_speech_threshold.0,
            best_of: self.best_of,
            condition_on_previous_text: !self.no_condition_on_previous_text,
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

/// Log to stderr at `level` (`RUST_LOG` overrides), as text or JSON lines.
pub fn init_logging(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // symphonia logs every damaged packet at error level; the reason reaches the user through our own errors.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},symphonia_core=off,symphonia_bundle_mp3=off,symphonia_bundle_flac=off,symphonia_format_ogg=off,symphonia_format_isomp4=off,symphonia_format_riff=off,symphonia_codec_aac=off,symphonia_codec_vorbis=off")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
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
