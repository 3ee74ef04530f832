//! The web page at `/`, in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven by tests/web_ui.py through selenium) uploads jfk.wav, checks the
//! transcript, seeks by clicking a word, downloads subtitles, checks phone width and transcribes
//! a recording from Chromium's fake microphone, against a server that wants an API key and runs
//! two models (tiny.en and base, when base is fetched): the upload goes to base through the
//! page's model picker, the recording to the default. Screenshots go to target/web_ui/.

mod common;

use common::server::{header, Server};
use common::{base_model, model_dir, output_within, root, shared};

#[test]
fn the_page_transcribes_an_upload_and_a_recording_in_a_real_browser() {
    let models = base_model().map(|b| format!("{},{}", model_dir().display(), b.display()));
    let mut env = vec![("WHISPERD_API_KEYS", "ui-test-key")];
    if let Some(m) = &models {
        env.push(("WHISPERD_MODELS", m));
    }
    let s = Server::start(&env);
    // The page and its files load without a key (the page asks for it), with a strict CSP.
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/capture-worklet.js", "text/javascript"),
    ] {
        let r = s.get(path);
        assert_eq!(r.0, 200, "{path}");
        assert!(header(&r, "content-type").is_some_and(|v| v.starts_with(kind)));
        let csp = header(&r, "content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
    }
    let out = root().join("target/web_ui");
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = std::process::Command::new(root().join(".venv/bin/python"));
    cmd.arg(root().join("tests/web_ui.py"))
        .arg("--base-url")
        .arg(format!("http://{}", s.addr))
        .arg("--audio")
        .arg(shared().join("eval/jfk.wav"))
        .arg("--out")
        .arg(&out)
        .args(["--api-key", "ui-test-key"]);
    if models.is_some() {
        cmd.args(["--model", "whisper-base"]);
    }
    let o = output_within(&mut cmd, 240);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && text.contains("web ui ok"),
        "{text}\nserver log:\n{}",
        s.log()
    );
    for shot in ["desktop-transcript.png", "phone-transcript.png"] {
        assert!(out.join(shot).is_file(), "{shot} missing");
    }
    if models.is_some() {
        // The picker's choice reached the server: the upload ran on base, the recording on tiny.en.
        for m in ["whisper-base", "whisper-tiny.en"] {
            assert!(
                s.metric(&format!(
                    "whisperd_inference_jobs_total{{model=\"{m}\",result=\"ok\"}}"
                )) >= 1.0,
                "no job ran on {m}:\n{}",
                s.log()
            );
        }
    }
}

#[test]
fn ui_false_serves_no_page() {
    let s = Server::start(&[("WHISPERD_UI", "false")]);
    for path in ["/", "/ui/app.js"] {
        assert_eq!(s.get(path).0, 404, "{path}");
    }
    assert_eq!(s.get("/health").0, 200);
}
