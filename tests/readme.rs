//! Runs every example command of README.md (the `curl`, `whisperd` and Python blocks) against a
//! real server and the real binary, so the documentation cannot rot. Sample files named in the
//! examples (jfk.wav, talk.*, a.wav, b.flac, recordings/) are copies of ../shared/eval audio.

mod common;

use std::process::Command;

use common::server::Server;
use common::*;

fn blocks(readme: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in readme.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l == format!("```{lang}") => cur = Some(String::new()),
            (Some(_), "```") => out.push(cur.take().unwrap_or_default()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_readme_example_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    for (name, src) in [
        ("jfk.wav", "eval/jfk.wav"),
        ("talk.wav", "eval/jfk.wav"),
        ("talk.mp3", "eval/formats/jfk.mp3"),
        ("talk.m4a", "eval/formats/jfk.m4a"),
        ("a.wav", "eval/formats/jfk.8k.wav"),
        ("b.flac", "eval/formats/jfk.flac"),
        ("recordings/jfk.wav", "eval/jfk.wav"),
        (
            "recordings/day 2/frank.flac",
            "eval/librispeech/test-clean/237-134500-0000.flac",
        ),
    ] {
        let to = dir.path().join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(shared().join(src), to).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_whisperd");
    let mut ran = 0;
    for block in blocks(&readme, "sh") {
        for line in block.lines().map(str::trim) {
            let cmd = line.split(" #").next().unwrap_or("").trim();
            if cmd.is_empty() || cmd.starts_with('#') || cmd.starts_with("make ") {
                continue; // the two make commands are what CI itself runs
            }
            let cmd = cmd.replace("http://localhost:8080", &format!("http://{}", s.addr));
            let cmd = match cmd.strip_prefix("whisperd ") {
                Some(rest) => format!("{bin} {rest}"),
                None => cmd,
            };
            // `convert` writes to /tmp in the README; keep it inside the test's directory.
            let cmd = cmd
                .replace("/tmp/tiny-hf", "tiny-hf")
                .replace("models/whisper-tiny.en", &model_dir().display().to_string());
            let out = Command::new("bash")
                .args(["-c", &format!("set -o pipefail; {cmd}")])
                .current_dir(dir.path())
                .env("WHISPERD_MODEL", model_dir())
                .env("RUST_LOG", "warn")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "README command failed: {line}\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if cmd.contains("word") {
                assert!(
                    stdout.contains("\"words\"") || stdout.contains("<u>"),
                    "{line}: no word timings: {stdout}"
                );
            }
            if cmd.contains("stream=true") {
                assert!(
                    stdout.contains("event: segment") || stdout.contains("transcript.text.delta"),
                    "{line}: not a stream: {stdout}"
                );
            }
            if cmd.starts_with("curl") {
                assert!(!stdout.contains("\"error\""), "{line}: {stdout}");
                assert!(
                    stdout.contains("country")
                        || stdout.contains("whisper-tiny.en")
                        || (cmd.contains("/detect-language")
                            && stdout.contains("\"language\":\"en\"")),
                    "{line}: {stdout}"
                );
            }
            ran += 1;
        }
    }
    assert!(ran >= 9, "only {ran} README commands found");
    assert!(
        dir.path().join("subs/a.wav.srt").exists() && dir.path().join("subs/b.flac.srt").exists()
    );
    // `whisperd batch recordings/ --output-dir out/ …` mirrors the tree.
    assert!(
        dir.path().join("out/jfk.wav.srt").exists()
            && dir.path().join("out/day 2/frank.flac.json").exists()
            && dir.path().join("report.jsonl").exists()
    );

    let python = root().join(".venv/bin/python");
    for block in blocks(&readme, "python") {
        let code = block.replace("http://localhost:8080", &format!("http://{}", s.addr));
        let out = Command::new(&python)
            .args(["-c", &code])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README python failed:\n{code}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if code.contains(&s.addr) {
            // A client example: it printed the transcript.
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("country"),
                "{code}"
            );
        }
    }
}
