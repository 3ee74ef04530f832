//! `whisperd transcribe FILE…`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use whisperd::batch::{self, InputFile};
use whisperd::{Engine, Format, TranscribeOptions};

#[derive(clap::Args)]
pub struct TranscribeArgs {
    /// Audio files (wav, flac, mp3, ogg, opus, m4a, …); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    common: super::ModelArgs,
    /// text, json, verbose_json, srt, vtt or tsv.
    #[arg(long, default_value = "text")]
    format: Format,
    /// Write one output per input here, as DIR/<input file name>.<ext> (DIR/<input path>.<ext>
    /// where two names are the same; `-` writes DIR/stdin.<ext>).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Inputs larger than this many MB (MiB) fail without being read.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    max_input_mb: u64,
    /// No timestamps: one segment per 30-s window, no seeking by timestamps.
    #[arg(long)]
    no_timestamps: bool,
    /// Text that precedes the audio (names, spelling, style).
    #[arg(long)]
    prompt: Option<String>,
    #[command(flatten)]
    decoding: super::DecodingArgs,
}

pub fn run(args: TranscribeArgs) -> anyhow::Result<ExitCode> {
    // One run, then exit: freed memory is reused, never handed back (see `FreedMemory`).
    crate::keep_freed_memory(crate::FreedMemory::Keep);
    if args.files.len() > 1 && args.output_dir.is_none() {
        anyhow::bail!("several input files need --output-dir DIR (one output per input)");
    }
    if args.files.iter().filter(|f| is_stdin(f)).count() > 1 {
        anyhow::bail!("`-` (standard input) can be given only once");
    }
    // Output names (same rule as `batch`), then a writable directory, before the model loads.
    let mut outputs = None;
    if let Some(dir) = &args.output_dir {
        let mut named: Vec<InputFile> = args
            .files
            .iter()
            .map(|f| {
                let (relative, qualified) = if is_stdin(f) {
                    (PathBuf::from("stdin"), PathBuf::from("stdin"))
                } else {
                    let contained = batch::inputs::contained(f);
                    let name = f
                        .file_name()
                        .map_or_else(|| contained.clone(), PathBuf::from);
                    (name, contained)
                };
                InputFile {
                    path: f.clone(),
                    relative,
                    qualified,
                }
            })
            .collect();
        batch::assign_outputs(&mut named, &[&format!(".{}", args.format.extension())])?;
        batch::check_output_dir(dir).map_err(anyhow::Error::msg)?;
        outputs = Some(
            named
                .into_iter()
                .map(|f| {
                    let mut name = f.relative.into_os_string();
                    name.push(format!(".{}", args.format.extension()));
                    dir.join(name)
                })
                .collect::<Vec<_>>(),
        );
    }
    let options = TranscribeOptions {
        language: args.common.language.clone(),
        task: args.common.task,
        timestamps: !args.no_timestamps,
        initial_prompt: args.prompt.clone(),
        diarize: args.decoding.diarize(args.format.needs_speakers()),
        ..args.decoding.options()
    };
    let engine = args.common.load_engine_for(&options)?;
    // Checked once, before any file is read; every file is transcribed with the checked options.
    let options = engine.check_options(&options)?;
    let limit = args.max_input_mb.saturating_mul(batch::inputs::MB);
    let mut failed = 0usize;
    for (i, file) in args.files.iter().enumerate() {
        let output = outputs.as_ref().map(|o| o[i].as_path());
        let render = whisperd::output::RenderOptions {
            subtitles: args.decoding.subtitles(),
            file_id: file.file_stem().map(|s| s.to_string_lossy().into_owned()),
            ..Default::default()
        };
        match transcribe_one(&engine, file, limit, &options, args.format, &render, output) {
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

fn is_stdin(file: &Path) -> bool {
    file.as_os_str() == "-"
}

fn transcribe_one(
    engine: &Engine,
    file: &Path,
    limit: u64,
    o: &whisperd::CheckedOptions,
    format: Format,
    render: &whisperd::output::RenderOptions,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let bytes = if is_stdin(file) {
        batch::inputs::read_bounded(std::io::stdin().lock(), limit, 0)?
    } else {
        batch::read_input(file, limit)?
    };
    let t0 = std::time::Instant::now();
    let transcript = engine.transcribe_prepared(&engine.prepare_bytes(bytes, None, o)?, o)?;
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(file = %file.display(), audio_s = transcript.duration, seconds = secs, speed = transcript.duration / secs.max(1e-9), "transcribed");
    let rendered = transcript.render_with(format, o.task, render);
    match output {
        None => {
            use std::io::Write;
            std::io::stdout().write_all(rendered.as_bytes())?;
        }
        Some(path) => {
            use anyhow::Context;
            batch::write_atomic(path, rendered.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
