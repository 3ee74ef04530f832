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
