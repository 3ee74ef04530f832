//! The real `whisperd` binary: transcribe to stdout, several files into --output-dir, bad files,
//! usage errors, convert.

mod common;

use std::process::Command;

use common::*;

fn whisperd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whisperd"));
    c.env("WHISPERD_MODEL", model_dir()).env("RUST_LOG", "warn");
    c
}

#[test]
fn one_file_prints_its_transcript() {
    let out = whisperd()
        .args(["transcribe"])
        .arg(shared().join("eval/jfk.wav"))
        .output()
        .unwrap();
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(wer("And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.", &text) < 0.1, "{text}");
}

#[test]
fn several_files_write_one_output_each_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let bad = dir.path().join("notes.wav");
    std::fs::write(
        &bad,
        b"not audio at all, just text pretending to be a wav file",
    )
    .unwrap();
    let out = whisperd()
        .args(["transcribe", "--format", "srt", "--output-dir"])
        .arg(&out_dir)
        .arg(shared().join("eval/jfk.wav"))
        .arg(&bad)
        .arg(shared().join("eval/formats/jfk.flac"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(
        error_lines[0].contains("notes.wav")
            && error_lines[0].contains("not a recognised audio file"),
        "{stderr}"
    );
    // Inputs that differ only in extension do not collide.
    for name in ["jfk.wav.srt", "jfk.flac.srt"] {
        let srt =
            std::fs::read_to_string(out_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(srt.starts_with("1\n00:00:00,000 --> "), "{srt}");
        assert!(srt.contains("fellow Americans"), "{srt}");
    }
    assert!(!out_dir.join("notes.wav.srt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn every_format_writes_its_extension() {
    let dir = tempfile::tempdir().unwrap();
    for (format, ext) in [
        ("json", "json"),
        ("verbose_json", "verbose.json"),
        ("vtt", "vtt"),
        ("tsv", "tsv"),
        ("text", "txt"),
    ] {
        let out = whisperd()
            .args(["transcribe", "--format", format, "--output-dir"])
            .arg(dir.path())
            .arg(shared().join("eval/jfk.wav"))
            .arg(shared().join("eval/formats/jfk.mp3"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = std::fs::read_to_string(dir.path().join(format!("jfk.mp3.{ext}"))).unwrap();
        assert!(body.contains("country"), "{format}: {body}");
        if format.contains("json") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["segments"].as_array().is_some_and(|s| !s.is_empty()));
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = whisperd()
        .args(["transcribe", "a.wav", "b.wav"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--output-dir"));
    let out = whisperd()
        .args(["transcribe", "--format", "docx", "a.wav"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = whisperd()
        .args(["transcribe", "--model", "/nonexistent/model"])
        .arg(shared().join("eval/jfk.wav"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn beam_size_flag_decodes_with_beams_and_bad_values_exit_2() {
    // Greedy hears "Paris face fell…"; beam 5 (as faster-whisper's beam 5, and the default)
    // "Marie's face…".
    let clip = shared().join("eval/librispeech/test-clean/237-134500-0027.flac");
    let text = |beam: &[&str]| {
        let out = whisperd()
            .args(["transcribe", "--format", "text", "--temperature", "0"])
            .args(["--vad", "false"])
            .args(beam)
            .arg(&clip)
            .output()
            .unwrap();
        assert_success(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(text(&["--beam-size", "5"]).contains("Marie's face"));
    assert!(text(&["--beam-size", "1"]).contains("Paris face"));
    assert!(text(&[]).contains("Marie's face"), "beam 5 by default");
    for bad in [
        ["--beam-size", "0"],
        ["--beam-size", "x"],
        ["--patience", "0"],
    ] {
        let out = whisperd()
            .arg("transcribe")
            .args(bad)
            .arg(&clip)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&bad[0][2..].replace('-', "_")) || err.contains(bad[0]),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn no_timestamps_and_prompt_flags() {
    let out = whisperd()
        .args([
            "transcribe",
            "--no-timestamps",
            "--format",
            "json",
            "--threads",
            "1",
            "--prompt",
            "Kennedy speech.",
        ])
        .arg(shared().join("eval/jfk.wav"))
        .output()
        .unwrap();
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let segs = v["segments"].as_array().unwrap();
    assert_eq!(
        segs.len(),
        1,
        "without timestamps a short clip is one segment"
    );
    assert!(segs[0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.as_u64().unwrap() < 50257));
}

#[test]
fn convert_writes_a_loadable_hugging_face_directory() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("hf");
    let out = whisperd()
        .args(["convert", "--to", "safetensors"])
        .arg(model_dir())
        .arg(&dst)
        .output()
        .unwrap();
    assert_success(&out);
    // The alignment heads (word timestamps) travel with the model.
    let heads = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap()
            ["alignment_heads"]
            .clone()
    };
    let h = heads(dst.join("generation_config.json"));
    assert!(h.as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(h, heads(model_dir().join("config.json")));
    let out = whisperd()
        .args(["transcribe", "--model"])
        .arg(&dst)
        .arg(shared().join("eval/jfk.wav"))
        .output()
        .unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fellow Americans"));
}

#[test]
fn print_config_equals_the_default_config_file() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_whisperd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WHISPERD_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(["serve", "--print-config"]).output().unwrap();
    assert_success(&out);
    let file = std::fs::read_to_string(root().join("config/default.toml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), file, "config/default.toml drifted from the code: regenerate it with `whisperd serve --print-config`");

    // The production example parses, and env and flags override it in that order.
    let out = whisperd()
        .env("WHISPERD_PORT", "9001")
        .args(["serve", "--print-config", "--config"])
        .arg(root().join("config/production.toml"))
        .args(["--host", "127.0.0.1"])
        .output()
        .unwrap();
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("port = 9001")
            && text.contains("host = \"127.0.0.1\"")
            && text.contains("log_format = \"json\""),
        "{text}"
    );
    let out = whisperd()
        .env("WHISPERD_QUEUE_SIZE", "lots")
        .args(["serve", "--print-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WHISPERD_QUEUE_SIZE"));
}

fn copy(rel: &str, to: &std::path::Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(shared().join(rel), to).unwrap();
}

/// Inputs with the same file name do not overwrite each other's output: those two are written
/// under their (contained) paths, the others keep the plain file name.
#[test]
fn same_file_names_in_different_folders_get_one_output_each() {
    let d = tempfile::tempdir().unwrap();
    copy("eval/jfk.wav", &d.path().join("a/x.wav"));
    copy("eval/formats/jfk.8k.wav", &d.path().join("b/x.wav"));
    copy("eval/jfk.wav", &d.path().join("c/y.wav"));
    let out = whisperd()
        .current_dir(d.path())
        .args([
            "transcribe",
            "--format",
            "text",
            "--output-dir",
            "o",
            "a/x.wav",
            "b/x.wav",
            "c/y.wav",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    for name in ["o/a/x.wav.txt", "o/b/x.wav.txt", "o/y.wav.txt"] {
        let text =
            std::fs::read_to_string(d.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains("country"), "{name}: {text}");
    }
    assert!(!d.path().join("o/x.wav.txt").exists());

    // Nothing tells `../a/x.wav` from `a/x.wav` apart: refused before any work.
    copy("eval/jfk.wav", &d.path().join("w/a/x.wav"));
    let out = whisperd()
        .current_dir(d.path().join("w"))
        .args(["transcribe", "--output-dir", "o2", "../a/x.wav", "a/x.wav"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("../a/x.wav and a/x.wav would both write"),
        "{stderr}"
    );
    assert!(!d.path().join("w/o2/a").exists());
}

/// An output directory that cannot be written is an error (exit 2) before any file is
/// transcribed, not one error per file afterwards.
#[test]
fn an_unwritable_output_dir_fails_before_transcribing() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let mut dirs = vec![file.join("sub")];
    // Exists, but not even root can create files in it.
    if cfg!(target_os = "linux") {
        dirs.push("/proc".into());
    }
    for dir in dirs {
        let t0 = std::time::Instant::now();
        let out = output_within(
            whisperd()
                .args(["transcribe", "--output-dir"])
                .arg(&dir)
                .arg(shared().join("eval/jfk.wav"))
                .arg(shared().join("eval/formats/jfk.flac")),
            60,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", dir.display());
        assert!(
            stderr.contains(&format!(
                "output directory {} is not writable",
                dir.display()
            )),
            "{stderr}"
        );
        assert!(t0.elapsed().as_secs() < 5, "{:?}", t0.elapsed());
    }
}

/// /dev/zero (endless) and a FIFO without a writer (blocks on open) are refused per file, fast;
/// the other files are still transcribed.
#[cfg(unix)]
#[test]
fn devices_and_fifos_are_refused_per_file_without_hanging() {
    let t0 = std::time::Instant::now();
    let out = output_within(whisperd().args(["transcribe", "/dev/zero"]), 5);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: /dev/zero: not a regular file (a character device)"),
        "{stderr}"
    );
    assert!(t0.elapsed().as_secs() < 5, "{:?}", t0.elapsed());

    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("pipe.wav");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out_dir = d.path().join("out");
    let out = output_within(
        whisperd()
            .args(["transcribe", "--output-dir"])
            .arg(&out_dir)
            .arg(&fifo)
            .arg(shared().join("eval/jfk.wav")),
        120,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: {}: not a regular file (a FIFO)",
            fifo.display()
        )),
        "{stderr}"
    );
    assert!(std::fs::read_to_string(out_dir.join("jfk.wav.txt"))
        .unwrap()
        .contains("country"));
}

/// `-` reads standard input; inputs over --max-input-mb fail without being read whole.
#[test]
fn stdin_and_the_input_size_limit() {
    let out = whisperd()
        .args(["transcribe", "-"])
        .stdin(std::fs::File::open(shared().join("eval/jfk.wav")).unwrap())
        .output()
        .unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fellow Americans"));

    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.wav");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let out = whisperd()
        .args(["transcribe", "--max-input-mb", "2"])
        .arg(&big)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("3.0 MB is over the --max-input-mb limit of 2 MB"),
        "{stderr}"
    );
    let out = whisperd()
        .args(["transcribe", "--max-input-mb", "2", "-"])
        .stdin(std::fs::File::open(&big).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: -: the input is over the --max-input-mb limit of 2 MB"),
        "{stderr}"
    );
}

/// A WAV whose header says 0 Hz (symphonia panicked on it) is one bad file among good ones.
#[test]
fn a_zero_sample_rate_wav_fails_alone() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("bad.wav"), wav_bytes(&noise(16000, 0.1), 0)).unwrap();
    copy("eval/jfk.wav", &d.path().join("good.wav"));
    let out = output_within(
        whisperd().current_dir(d.path()).args([
            "transcribe",
            "--output-dir",
            "o",
            "bad.wav",
            "good.wav",
        ]),
        120,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with("error: bad.wav: ") && errors[0].contains("sample rate"),
        "{stderr}"
    );
    assert!(std::fs::read_to_string(d.path().join("o/good.wav.txt"))
        .unwrap()
        .contains("country"));
}

#[test]
fn word_timestamps_and_subtitle_layout_in_transcribe_and_batch() {
    let out = whisperd()
        .args([
            "transcribe",
            "--word-timestamps",
            "--format",
            "verbose_json",
        ])
        .arg(shared().join("eval/jfk.wav"))
        .output()
        .unwrap();
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let words: Vec<&serde_json::Value> = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["words"].as_array().expect("words").iter())
        .collect();
    assert_eq!(words.len(), 22);
    assert_eq!(words[1]["word"], " so,"); // beam 5 (the default) punctuates "And so, my"
    assert!(words.iter().all(|w| w["probability"].as_f64().is_some()));

    // openai-whisper's subtitle options: at most 3 words per line, one line per cue.
    let out = whisperd()
        .args(["transcribe", "--format", "srt", "--max-words-per-line", "3"])
        .arg(shared().join("eval/jfk.wav"))
        .output()
        .unwrap();
    assert_success(&out);
    let srt = String::from_utf8(out.stdout).unwrap();
    let cues: Vec<&str> = srt.split("\n\n").filter(|c| !c.trim().is_empty()).collect();
    assert_eq!(cues.len(), 8, "22 words in lines of 3, per segment: {srt}");
    assert!(cues
        .iter()
        .all(|c| c.lines().nth(2).unwrap().split_whitespace().count() <= 3));

    // batch takes the same flags.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_whisperd"))
        .env("WHISPERD_MODEL", model_dir())
        .env("RUST_LOG", "warn")
        .arg("batch")
        .arg(shared().join("eval/jfk.wav"))
        .arg("--output-dir")
        .arg(dir.path())
        .args(["--format", "vtt", "--highlight-words"])
        .output()
        .unwrap();
    assert_success(&out);
    // (batch mirrors the input's path under the output directory)
    fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let p = e.path();
            if p.is_dir() {
                find(&p, name)
            } else {
                (p.file_name()? == name).then_some(p)
            }
        })
    }
    let vtt =
        std::fs::read_to_string(find(dir.path(), "jfk.wav.vtt").expect("jfk.wav.vtt")).unwrap();
    assert!(vtt.contains("<u>fellow</u>"), "{vtt}");
}

#[test]
fn long_audio_with_no_usable_temporary_directory_is_a_clear_per_file_error() {
    // Six minutes is more than a request keeps in memory; the rest needs TMPDIR.
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("six-minutes.wav");
    std::fs::write(&long, wav_bytes(&noise(360 * 16_000, 0.1), 16_000)).unwrap();
    let out = whisperd()
        .env("TMPDIR", dir.path().join("missing"))
        .args(["transcribe", "--vad", "false"])
        .arg(&long)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("six-minutes.wav")
            && stderr.contains("temporary storage for long audio failed"),
        "{stderr}"
    );
}
