//! `whisperd transcribe FILE…`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use whisperd::{Engine, Format, TranscribeOptions};

#[derive(clap::Args)]
pub struct TranscribeArgs {
    /// Audio files (wav, flac, mp3, ogg, opus, m4a, …).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    common: super::ModelArgs,
    /// text, json, verbose_json, srt, vtt or tsv.
    #[arg(long, default_value = "text")]
    format: Format,
    /// Write one output per input here, as DIR/<input file name>.<ext>.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// No timestamps: one segment per 30-s window, no seeking by timestamps.
    #[arg(long)]
    no_timestamps: bool,
    /// Text that precedes the audio (names, spelling, style).
    #[arg(long)]
    prompt: Option<String>,
    /// Do not feed each window's text to the next as its prompt.
    #[arg(long)]
    no_condition_on_previous_text: bool,
}

pub fn run(args: TranscribeArgs) -> anyhow::Result<ExitCode> {
    if args.files.len() > 1 && args.output_dir.is_none() {
        anyhow::bail!("several input files need --output-dir DIR (one output per input)");
    }
    // A directory that cannot take the outputs fails now, not after every file is transcribed.
    if let Some(dir) = &args.output_dir {
        whisperd::batch::check_output_dir(dir).map_err(anyhow::Error::msg)?;
    }
    let engine = args.common.load_engine()?;
    let options = TranscribeOptions {
        language: args.common.language.clone(),
        task: args.common.task,
        timestamps: !args.no_timestamps,
        initial_prompt: args.prompt.clone(),
        condition_on_previous_text: !args.no_condition_on_previous_text,
        ..Default::default()
    };
    // Reject bad options once, before any file is read.
    engine.check_options(&options)?;
    let mut failed = 0usize;
    for file in &args.files {
        match transcribe_one(
            &engine,
            file,
            &options,
            args.format,
            args.output_dir.as_deref(),
        ) {
            Ok(()) => {}
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e:#}", file.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn transcribe_one(
    engine: &Engine,
    file: &Path,
    o: &TranscribeOptions,
    format: Format,
    out_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| "cannot read file")?;
    let t0 = std::time::Instant::now();
    let transcript = engine.transcribe_bytes(bytes, o)?;
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(file = %file.display(), audio_s = transcript.duration, seconds = secs, speed = transcript.duration / secs.max(1e-9), "transcribed");
    let rendered = transcript.render(format, o.task);
    match out_dir {
        None => {
            use std::io::Write;
            std::io::stdout().write_all(rendered.as_bytes())?;
        }
        Some(dir) => {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "audio".into());
            let path = dir.join(format!("{name}.{}", format.extension()));
            let tmp = dir.join(format!(".{name}.{}.tmp", format.extension()));
            std::fs::write(&tmp, rendered).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
