//! The official OpenAI clients against the real server, unchanged: the `openai` Python package (needs
//! `make venv`: the virtualenv at .venv) and the `openai` Node SDK (needs `make node-deps`:
//! tests/node/node_modules); `make test` runs both. Each script also validates every JSON body it
//! gets against OpenAI's published OpenAPI description (`../shared/reference/openai-audio-openapi.json`).

mod common;

use common::server::Server;
use common::*;

fn spec() -> std::path::PathBuf {
    shared().join("reference/openai-audio-openapi.json")
}

/// Run `program script BASE_URL AUDIO SPEC` against a fresh server; fail with its output and the
/// server log unless it succeeds and prints `ok_line`.
fn run_client(program: &std::ffi::OsStr, script: &str, ok_line: &str) {
    let s = Server::start(&[]);
    let out = std::process::Command::new(program)
        .arg(root().join(script))
        .arg(format!("http://{}", s.addr))
        .arg(shared().join("eval/jfk.wav"))
        .arg(spec())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.to_string_lossy()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(ok_line),
        "{script} failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
}

#[test]
fn official_openai_python_client_works_unchanged() {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make venv` (make test does)",
        python.display()
    );
    run_client(
        python.as_os_str(),
        "tests/openai_client.py",
        "openai client: all formats ok",
    );
}

#[test]
fn official_openai_node_sdk_works_unchanged() {
    let modules = root().join("tests/node/node_modules/openai");
    assert!(
        modules.exists(),
        "{} missing: run `make node-deps` (make test does; it runs `npm ci` in tests/node)",
        modules.display()
    );
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    run_client(
        &node,
        "tests/openai_client.mjs",
        "node openai client: all ok",
    );
}
