//! `whisperd batch` on a generated tree: nested folders, a duplicate, bad files, a symlink loop,
//! names with spaces and non-ASCII; re-runs skip, --overwrite redoes, SIGINT leaves no partial output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn batch(args: &[&str], inputs: &[&Path], out: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whisperd"));
    c.env("WHISPERD_MODEL", model_dir())
        .env("RUST_LOG", "info")
        .arg("batch");
    for i in inputs {
        c.arg(i);
    }
    c.arg("--output-dir").arg(out).args(args).output().unwrap()
}

fn copy(rel: &str, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(shared().join(rel), to).unwrap();
}

fn records(report: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_tree_with_duplicates_bad_files_and_loops() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    copy("eval/jfk.wav", &input.join("a/jfk.wav"));
    copy(
        "eval/librispeech/test-clean/237-134500-0000.flac",
        &input.join("a/b/frank.flac"),
    );
    copy("eval/jfk.wav", &input.join("dup/jfk copy.wav"));
    copy(
        "eval/librispeech/test-clean/237-134500-0003.flac",
        &input.join("été/ça va.flac"),
    );
    let mp3 = std::fs::read(shared().join("eval/formats/jfk.mp3")).unwrap();
    std::fs::create_dir_all(input.join("bad")).unwrap();
    std::fs::write(input.join("bad/corrupt.mp3"), &mp3[..mp3.len() / 2]).unwrap();
    std::fs::write(input.join("bad/fake.wav"), b"plain text with a .wav name").unwrap();
    std::fs::write(
        input.join("README.txt"),
        b"not picked up: not an audio extension",
    )
    .unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&input, input.join("a/loop")).unwrap();
    let out = d.path().join("out");
    let report = d.path().join("report.jsonl");

    let r = batch(
        &[
            "--format",
            "srt,json",
            "--report",
            report.to_str().unwrap(),
            "--jobs",
            "2",
        ],
        &[&input],
        &out,
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad/corrupt.mp3") && stderr.contains("bad/fake.wav"),
        "{stderr}"
    );
    assert!(
        stderr.contains("4 succeeded, 0 skipped, 2 failed"),
        "{stderr}"
    );
    let srt = std::fs::read_to_string(out.join("a/jfk.wav.srt")).unwrap();
    assert!(srt.contains("fellow Americans"), "{srt}");
    let frank: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("a/b/frank.flac.json")).unwrap())
            .unwrap();
    let reference = "FRANK READ ENGLISH SLOWLY AND THE MORE HE READ ABOUT THIS DIVORCE CASE THE ANGRIER HE GREW";
    assert!(
        wer(reference, frank["text"].as_str().unwrap()) <= 0.25,
        "{frank}"
    );
    assert!(out.join("été/ça va.flac.srt").exists());
    let dup = std::fs::read_to_string(out.join("dup/jfk copy.wav.srt")).unwrap();
    assert_eq!(dup, srt, "duplicate content gives the same transcript");
    let recs = records(&report);
    assert_eq!(recs.len(), 6);
    // Whichever copy of jfk came second reused the first one's transcript.
    let dups: Vec<_> = recs
        .iter()
        .filter(|r| r["duplicate_of"].as_str().is_some())
        .collect();
    assert_eq!(dups.len(), 1, "{recs:?}");
    assert!(
        dups[0]["path"].as_str().unwrap().contains("jfk")
            && dups[0]["duplicate_of"].as_str().unwrap().contains("jfk")
    );
    assert!(recs
        .iter()
        .filter(|r| r["status"] == "failed")
        .all(|r| r["error"].as_str().is_some_and(|e| !e.is_empty())));
    assert!(recs
        .iter()
        .filter(|r| r["status"] == "ok")
        .all(|r| r["sha256"].as_str().unwrap().len() == 64
            && r["outputs"].as_array().unwrap().len() == 2));
    assert!(!all_files(&out)
        .iter()
        .any(|p| p.to_string_lossy().contains(".tmp-")));

    // Second run: everything that succeeded is skipped.
    let r = batch(
        &["--format", "srt,json", "--report", report.to_str().unwrap()],
        &[&input],
        &out,
    );
    // Nothing transcribed is 0.0 min, not the -0.0 of an empty f64 sum.
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("0 succeeded, 4 skipped, 2 failed; 0.0 min"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // A changed input is redone even without --overwrite.
    copy(
        "eval/librispeech/test-clean/237-134500-0002.flac",
        &input.join("a/b/frank.flac"),
    );
    let r = batch(
        &["--format", "srt,json", "--report", report.to_str().unwrap()],
        &[&input],
        &out,
    );
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("1 succeeded, 3 skipped, 2 failed"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // --overwrite redoes it all.
    let r = batch(&["--format", "srt,json", "--overwrite"], &[&input], &out);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("4 succeeded, 0 skipped, 2 failed"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // --fail-fast stops at the first failure.
    let r = batch(
        &["--format", "txt", "--fail-fast", "--jobs", "1"],
        &[&input.join("bad/fake.wav"), &input.join("a/jfk.wav")],
        &d.path().join("out3"),
    );
    assert_eq!(r.status.code(), Some(1));
    assert!(
        !d.path().join("out3/a/jfk.wav.txt").exists()
            || String::from_utf8_lossy(&r.stderr).contains("1 failed")
    );
}

#[test]
fn lists_globs_stdin_and_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let list = d.path().join("list.txt");
    // Absolute paths in a list cannot escape the output directory.
    std::fs::write(
        &list,
        format!(
            "{}\n",
            shared()
                .join("eval/librispeech/test-clean/237-134500-0001.flac")
                .display()
        ),
    )
    .unwrap();
    let out = d.path().join("out");
    let r = batch(
        &["--format", "txt"],
        &[Path::new(&format!("@{}", list.display()))],
        &out,
    );
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let files = all_files(&out);
    assert!(
        files.iter().all(|p| p.starts_with(&out))
            && files
                .iter()
                .any(|p| p.to_string_lossy().ends_with("0001.flac.txt")),
        "{files:?}"
    );

    let pattern = format!(
        "{}/237-134500-000[12].flac",
        shared().join("eval/librispeech/test-clean").display()
    );
    let r = batch(
        &["--format", "vtt"],
        &[Path::new(&pattern)],
        &d.path().join("glob"),
    );
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        all_files(&d.path().join("glob"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "vtt"))
            .count(),
        2
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_whisperd"))
        .env("WHISPERD_MODEL", model_dir())
        .args(["batch", "-", "--format", "tsv", "--output-dir"])
        .arg(d.path().join("stdin"))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(
        child.stdin.take().unwrap(),
        "{}",
        shared().join("eval/jfk.wav").display()
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());

    for bad in [vec!["/no/such/dir"], vec!["--format", "docx", "x.wav"]] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_whisperd"));
        let r = c
            .args(["batch", "--output-dir"])
            .arg(d.path().join("x"))
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(
            r.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

#[test]
fn sigint_midway_leaves_no_partial_outputs_and_a_rerun_completes() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let mut n = 0;
    for f in std::fs::read_dir(shared().join("eval/formats"))
        .unwrap()
        .flatten()
    {
        copy(
            &format!("eval/formats/{}", f.file_name().to_string_lossy()),
            &input.join(f.file_name()),
        );
        n += 1;
    }
    let out = d.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_whisperd"))
        .env("WHISPERD_MODEL", model_dir())
        .args([
            "batch",
            "--format",
            "json,srt",
            "--jobs",
            "1",
            "--output-dir",
        ])
        .arg(&out)
        .arg(&input)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !all_files(&out)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".whisperd.json"))
    {
        assert!(t0.elapsed().as_secs() < 120, "no output appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let r = child.wait_with_output().unwrap();
    assert_eq!(
        r.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let files = all_files(&out);
    assert!(
        !files.iter().any(|p| p.to_string_lossy().contains(".tmp-")),
        "{files:?}"
    );
    let done = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".whisperd.json"))
        .count();
    assert!(done < n, "interrupted run finished everything ({done})");
    for p in files.iter().filter(|p| {
        p.extension().is_some_and(|e| e == "json")
            && !p.to_string_lossy().ends_with(".whisperd.json")
    }) {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).expect("complete JSON");
        assert!(v["text"].as_str().is_some_and(|t| !t.is_empty()));
    }
    let r = batch(&["--format", "json,srt"], &[&input], &out);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("{} succeeded, {done} skipped, 0 failed", n - done)),
        "{stderr}"
    );
}

/// Files transcribed together through the scheduler (`--batch-size 4`) give exactly the
/// outputs of one at a time (`--batch-size 1`), and the log says which ran.
#[test]
fn batched_files_give_the_same_transcripts_as_one_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    for (i, name) in [
        "237-134500-0000",
        "237-134500-0001",
        "237-134500-0002",
        "237-134500-0003",
    ]
    .iter()
    .enumerate()
    {
        copy(
            &format!("eval/librispeech/test-clean/{name}.flac"),
            &input.join(format!("{i}.flac")),
        );
    }
    copy("eval/jfk.wav", &input.join("jfk.wav"));
    let mut outputs = Vec::new();
    for size in ["1", "4"] {
        let out = d.path().join(format!("out{size}"));
        let r = batch(&["--format", "json", "--batch-size", size], &[&input], &out);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains(&format!("batch_size={size}")), "{stderr}");
        let mut texts = Vec::new();
        for f in ["0", "1", "2", "3"] {
            let v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join(format!("{f}.flac.json"))).unwrap(),
            )
            .unwrap();
            texts.push(v["segments"].clone());
        }
        outputs.push(texts);
    }
    assert!(outputs[0][0].as_array().is_some_and(|s| !s.is_empty()));
    assert_eq!(outputs[0], outputs[1]);
}

fn batch_in(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whisperd"));
    c.env("WHISPERD_MODEL", model_dir())
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .arg("batch")
        .args(args);
    output_within(&mut c, 300)
}

/// `batch d1 d2` with `d1/x.wav` and `d2/x.wav`: two outputs (under `d1/` and `d2/`, since the
/// relative paths collide), and a re-run finds both done.
#[test]
fn same_relative_paths_under_two_folders_get_two_outputs() {
    let d = tempfile::tempdir().unwrap();
    copy("eval/jfk.wav", &d.path().join("d1/x.wav"));
    copy("eval/formats/jfk.8k.wav", &d.path().join("d2/x.wav"));
    copy("eval/jfk.wav", &d.path().join("d2/y.wav"));
    let args = [
        "d1",
        "d2",
        "-o",
        "out",
        "--format",
        "txt",
        "--batch-size",
        "1",
    ];
    let r = batch_in(d.path(), &args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("3 succeeded, 0 skipped, 0 failed"),
        "{stderr}"
    );
    for name in ["out/d1/x.wav.txt", "out/d2/x.wav.txt", "out/y.wav.txt"] {
        let text =
            std::fs::read_to_string(d.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains("country"), "{name}: {text}");
    }
    assert!(!d.path().join("out/x.wav.txt").exists());
    let r = batch_in(d.path(), &args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("0 succeeded, 3 skipped, 0 failed"),
        "{stderr}"
    );

    // `../a/x.wav` and `a/x.wav` would still share an output: refused, naming both.
    copy("eval/jfk.wav", &d.path().join("w/a/x.wav"));
    copy("eval/jfk.wav", &d.path().join("a/x.wav"));
    let r = batch_in(&d.path().join("w"), &["../a/x.wav", "a/x.wav", "-o", "out"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("../a/x.wav and a/x.wav would both write a/x.wav.srt"),
        "{stderr}"
    );
    assert!(!d.path().join("w/out").exists());
}

/// An output directory that cannot be written stops the run before the model loads.
#[test]
fn an_unwritable_output_dir_fails_before_any_transcription() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("file"), b"x").unwrap();
    let mut dirs = vec!["file/sub"];
    // Exists, but not even root can create files in it.
    if cfg!(target_os = "linux") {
        dirs.push("/proc");
    }
    let jfk = shared().join("eval/jfk.wav");
    for dir in dirs {
        let t0 = std::time::Instant::now();
        let r = batch_in(d.path(), &[jfk.to_str().unwrap(), "-o", dir]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{dir}: {stderr}");
        assert!(
            stderr.contains(&format!("output directory {dir} is not writable")),
            "{stderr}"
        );
        assert!(!stderr.contains("succeeded"), "{stderr}");
        assert!(t0.elapsed().as_secs() < 5, "{:?}", t0.elapsed());
    }
}

/// A device, a FIFO, and a file over --max-input-mb each fail on their own (a FIFO met in a
/// folder is skipped); the run carries on, and a summary over no transcribed audio says 0.0 min.
#[cfg(unix)]
#[test]
fn devices_fifos_and_oversized_files_fail_per_file() {
    let d = tempfile::tempdir().unwrap();
    copy("eval/jfk.wav", &d.path().join("in/jfk.wav"));
    for fifo in ["in/walked.wav", "pipe.wav"] {
        assert!(Command::new("mkfifo")
            .arg(d.path().join(fifo))
            .status()
            .unwrap()
            .success());
    }
    std::fs::File::create(d.path().join("in/big.wav"))
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let report = d.path().join("report.jsonl");
    let args = [
        "in",
        "/dev/zero",
        "pipe.wav",
        "-o",
        "out",
        "--format",
        "txt",
        "--max-input-mb",
        "2",
        "--report",
        report.to_str().unwrap(),
    ];
    let r = batch_in(d.path(), &args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 succeeded, 0 skipped, 3 failed"),
        "{stderr}"
    );
    for line in [
        "error: /dev/zero: not a regular file (a character device)",
        "error: pipe.wav: not a regular file (a FIFO)",
        "error: in/big.wav: 3.0 MB is over the --max-input-mb limit of 2 MB",
    ] {
        assert!(stderr.contains(line), "{line}\n{stderr}");
    }
    assert!(stderr.contains("in/walked.wav"), "{stderr}");
    assert!(d.path().join("out/jfk.wav.txt").exists());
    let recs = records(&report);
    assert_eq!(recs.len(), 4, "{recs:?}");
    let r = batch_in(d.path(), &args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("0 succeeded, 1 skipped, 3 failed; 0.0 min of audio"),
        "{stderr}"
    );
}

/// A WAV whose header says 0 Hz (symphonia panicked on it) in a folder: that file fails with
/// its reason in the report, the run finishes with its summary, and a re-run does too.
#[test]
fn a_zero_sample_rate_wav_in_a_folder_fails_alone() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("in")).unwrap();
    std::fs::write(
        d.path().join("in/bad.wav"),
        wav_bytes(&noise(16000, 0.1), 0),
    )
    .unwrap();
    copy("eval/jfk.wav", &d.path().join("in/good.wav"));
    let report = d.path().join("report.jsonl");
    let args = [
        "in",
        "-o",
        "out",
        "--format",
        "txt",
        "--report",
        report.to_str().unwrap(),
    ];
    for summary in [
        "1 succeeded, 0 skipped, 1 failed",
        "0 succeeded, 1 skipped, 1 failed",
    ] {
        let r = batch_in(d.path(), &args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(summary), "{summary}\n{stderr}");
        assert!(stderr.contains("error: in/bad.wav: "), "{stderr}");
        let recs = records(&report);
        let bad: Vec<_> = recs.iter().filter(|r| r["path"] == "in/bad.wav").collect();
        assert_eq!(bad.len(), 1, "{recs:?}");
        assert_eq!(bad[0]["status"], "failed");
        assert!(
            bad[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("sample rate")),
            "{recs:?}"
        );
    }
    assert!(d.path().join("out/good.wav.txt").exists());
}

#[test]
fn shards_cover_a_backlog_exactly_once_and_resume() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    // Twelve names (the listing is cheap: no model), three of them real audio to transcribe.
    for i in 0..9 {
        copy("eval/jfk.wav", &input.join(format!("list-only/{i}.wav")));
    }
    copy("eval/jfk.wav", &input.join("run/jfk.wav"));
    copy(
        "eval/librispeech/test-clean/237-134500-0000.flac",
        &input.join("run/frank.flac"),
    );
    copy(
        "eval/librispeech/test-clean/237-134500-0001.flac",
        &input.join("run/frank-1.flac"),
    );
    let out = d.path().join("out");
    let listed = |shard: &str| -> Vec<String> {
        let o = batch(&["--list", "--shard", shard], &[&input], &out);
        assert_success(&o);
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let all = listed("0/1");
    assert_eq!(all.len(), 12);
    let mut union: Vec<String> = (0..3).flat_map(|i| listed(&format!("{i}/3"))).collect();
    union.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(
        union, want,
        "three shards must list every input exactly once"
    );
    // A bad shard is a usage error before anything runs.
    let o = batch(&["--shard", "3/3"], &[&input], &out);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be below the count"));

    // Two workers (here one after the other) on the real files, then a re-run of each: every
    // file transcribed once, and the re-runs skip.
    let run = input.join("run");
    for shard in ["0/2", "1/2"] {
        let o = batch(&["--format", "text", "--shard", shard], &[&run], &out);
        assert_success(&o);
    }
    let mut texts: Vec<PathBuf> = all_files(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    texts.sort();
    assert_eq!(texts.len(), 3, "{texts:?}");
    for shard in ["0/2", "1/2"] {
        let report = d.path().join(format!("report-{}.jsonl", &shard[..1]));
        let o = batch(
            &[
                "--format",
                "text",
                "--shard",
                shard,
                "--report",
                report.to_str().unwrap(),
            ],
            &[&run],
            &out,
        );
        assert_success(&o);
        let r = records(&report);
        assert!(
            r.iter().all(|x| x["status"] == "skipped"),
            "a re-run of shard {shard} redid work: {r:?}"
        );
    }
}
