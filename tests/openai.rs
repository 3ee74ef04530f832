//! The official `openai` Python client against the real server, unchanged (needs `make venv`,
//! which `make test` runs: the virtualenv at .venv with `openai` installed).

mod common;

use common::server::Server;
use common::*;

#[test]
fn official_openai_python_client_works_unchanged() {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make venv` (make test does)",
        python.display()
    );
    let s = Server::start(&[]);
    let out = std::process::Command::new(python)
        .arg(root().join("tests/openai_client.py"))
        .arg(format!("http://{}", s.addr))
        .arg(shared().join("eval/jfk.wav"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all formats ok"));
}
