//! `whisperd batch INPUT… --output-dir DIR`: a backlog through one engine, resumable and
//! interruptible, with progress on a terminal and periodic log lines elsewhere.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use whisperd::batch::{self, BatchOptions, Record, Status};
use whisperd::{Format, TranscribeOptions};

#[derive(clap::Args)]
pub struct BatchArgs {
    /// Files, directories (recursive, audio extensions), glob patterns, @list.txt, or - (list on stdin).
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Outputs go to DIR/<relative path>.<ext>, mirroring the inputs (see README, "Output names").
    #[arg(long, short = 'o')]
    output_dir: PathBuf,
    /// Comma-separated: text, json, verbose_json, srt, vtt, tsv.
    #[arg(long, default_value = "srt,json", value_delimiter = ',')]
    format: Vec<Format>,
    /// Threads reading and decoding upcoming files while the model works.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Files transcribed at once; their windows and tokens share model batches (1: one at a time).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    batch_size: u16,
    #[command(flatten)]
    common: super::ModelArgs,
    #[command(flatten)]
    decoding: super::DecodingArgs,
    /// Redo inputs whose outputs already exist.
    #[arg(long)]
    overwrite: bool,
    /// Stop at the first failed input.
    #[arg(long)]
    fail_fast: bool,
    /// Write one JSON line per input here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Take only shard I of N (0 ≤ I < N) of the inputs: N workers given the same inputs and output
    /// directory cover them exactly once between them (see README, "Operating at scale").
    #[arg(long, env = "WHISPERD_SHARD", value_name = "I/N")]
    shard: Option<batch::Shard>,
    /// Print the inputs this run takes (after --shard), one per line: the input, a tab, and the
    /// name its outputs take under the output directory; then exit without loading the model.
    #[arg(long)]
    list: bool,
    /// Inputs larger than this many MB (MiB) fail without being read.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    max_input_mb: u64,
}

pub fn run(args: BatchArgs) -> anyhow::Result<ExitCode> {
    // One run, then exit: freed memory is reused, never handed back (see `FreedMemory`).
    crate::keep_freed_memory(crate::FreedMemory::Keep);
    let stdin = std::io::stdin();
    let mut inputs = match batch::expand(&args.inputs, &mut stdin.lock()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if inputs.is_empty() {
        eprintln!("error: no audio files in the inputs");
        return Ok(ExitCode::from(2));
    }
    // Everything that would fail every input is checked before the model loads.
    let suffixes = batch::output_suffixes(&args.format);
    let suffixes: Vec<&str> = suffixes.iter().map(String::as_str).collect();
    if let Err(e) = batch::assign_outputs(&mut inputs, &suffixes) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    if let Some(shard) = args.shard {
        let all = inputs.len();
        inputs = shard.select(inputs);
        tracing::info!(%shard, files = inputs.len(), of = all, "shard selected");
        if !args.list {
            eprintln!("shard {shard}: {} of {all} input files", inputs.len());
        }
    }
    if args.list {
        let mut out = std::io::stdout().lock();
        for f in &inputs {
            writeln!(out, "{}\t{}", f.path.display(), f.relative.display())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(e) = batch::check_output_dir(&args.output_dir) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    if inputs.is_empty() {
        // A small backlog split many ways: an empty shard has nothing to do, which is no failure
        // (its report, if asked for, exists and is empty).
        if let Some(p) = &args.report {
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let transcribe = TranscribeOptions {
        language: args.common.language.clone(),
        task: args.common.task,
        diarize: args
            .decoding
            .diarize(args.format.iter().any(|f| f.needs_speakers())),
        ..args.decoding.options()
    };
    let engine = args.common.load_engine_for(&transcribe)?;
    // Checked once here; every file's transcription takes the checked options.
    let transcribe = engine.check_options(&transcribe)?;
    let mut report = match &args.report {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    let o = BatchOptions {
        output_dir: args.output_dir.clone(),
        formats: args.format.clone(),
        jobs: args.jobs,
        batch_size: args.batch_size as usize,
        overwrite: args.overwrite,
        fail_fast: args.fail_fast,
        max_input_bytes: args.max_input_mb.saturating_mul(batch::inputs::MB),
        transcribe,
        subtitles: args.decoding.subtitles(),
    };

    // First Ctrl-C: finish the file being transcribed, then stop. Second: abort now.
    let stop = Arc::new(AtomicBool::new(false));
    let presses = Arc::new(AtomicUsize::new(0));
    {
        let (stop, presses) = (stop.clone(), presses.clone());
        ctrlc::set_handler(move || {
            if presses.fetch_add(1, Ordering::SeqCst) == 0 {
                eprintln!("\ninterrupted: finishing the file in progress (Ctrl-C again to abort)");
                stop.store(true, Ordering::SeqCst);
            } else {
                eprintln!("\naborted");
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }

    let total = inputs.len();
    let t0 = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut done = 0usize;
    let mut audio_done = 0f64;
    let mut last_log = Instant::now();
    let mut on_record = |r: &Record| {
        done += 1;
        audio_done += r.duration.unwrap_or(0.0);
        let wall = t0.elapsed().as_secs_f64();
        let speed = audio_done / wall.max(1e-9);
        if r.status == Status::Failed {
            let msg = format!(
                "error: {}: {}",
                r.path,
                r.error.as_deref().unwrap_or("failed")
            );
            match &bar {
                Some(b) => b.println(msg),
                None => eprintln!("{msg}"),
            }
        }
        match &bar {
            Some(b) => {
                b.set_position(done as u64);
                b.set_message(format!(
                    "{:.2} h audio  {speed:.1}x real time",
                    audio_done / 3600.0
                ));
            }
            None => {
                if last_log.elapsed() >= Duration::from_secs(10) || done == total {
                    let eta = wall / done as f64 * (total - done) as f64;
                    tracing::info!(
                        done,
                        total,
                        audio_hours = audio_done / 3600.0,
                        speed_x = speed,
                        eta_s = eta.round(),
                        "batch progress"
                    );
                    last_log = Instant::now();
                }
            }
        }
        if let Some(f) = report.as_mut() {
            if let Ok(line) = serde_json::to_string(r) {
                let _ = writeln!(f, "{line}");
            }
        }
    };
    let records = batch::run(&engine, &inputs, &o, &stop, &mut on_record);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    let count = |s: Status| records.iter().filter(|r| r.status == s).count();
    let (ok, skipped, failed) = (
        count(Status::Ok),
        count(Status::Skipped),
        count(Status::Failed),
    );
    let not_started = total - records.len();
    let wall = t0.elapsed().as_secs_f64();
    // Not `sum()`: over no records that is -0.0, printed "-0.0 min".
    let audio = records
        .iter()
        .filter(|r| r.status == Status::Ok)
        .filter_map(|r| r.duration)
        .fold(0.0, |a, d| a + d);
    eprintln!(
        "batch: {ok} succeeded, {skipped} skipped, {failed} failed{}; {:.1} min of audio in {:.1} s ({:.1}x real time)",
        if not_started > 0 { format!(", {not_started} not started") } else { String::new() },
        audio / 60.0,
        wall,
        audio / wall.max(1e-9)
    );
    for r in records.iter().filter(|r| r.status == Status::Failed) {
        eprintln!("  failed: {}: {}", r.path, r.error.as_deref().unwrap_or(""));
    }
    Ok(if stop.load(Ordering::SeqCst) && !o.fail_fast {
        ExitCode::from(130)
    } else if failed == 0 && not_started == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
