//! whisperd's own OpenAPI document (`GET /openapi.json`, generated from the handlers' types)
//! describes every route the server registers, and real responses validate against it
//! (tests/openapi_validate.py, jsonschema in the test venv).

mod common;

use std::time::Duration;

use common::server::{json, Server};
use common::{read, root};

struct Sample {
    method: &'static str,
    path: &'static str,
    response: common::server::Response,
    component: Option<&'static str>,
}

#[test]
fn every_route_is_documented_and_real_responses_match_the_document() {
    let s = Server::start(&[]);
    let doc = s.get("/openapi.json");
    assert_eq!(doc.0, 200);
    let doc = json(&doc);
    assert_eq!(doc["openapi"], "3.1.0");

    // Every route the server registers is in the document.
    let server_src = std::fs::read_to_string(root().join("src/server/mod.rs")).unwrap();
    let routes: Vec<&str> = server_src
        .split(".route(")
        .skip(1)
        .filter_map(|r| r.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    assert!(routes.len() >= 15, "{routes:?}");
    for r in &routes {
        assert!(
            doc["paths"][*r].is_object(),
            "route {r} is not in /openapi.json"
        );
    }

    // /info says what runs here.
    let info = s.get("/info");
    let i = json(&info);
    assert_eq!(i["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(i["model"]["name"], "whisper-tiny.en");
    assert_eq!(i["model"]["multilingual"], false);
    assert_eq!(i["model"]["dims"]["n_text_layer"], 4);
    assert_eq!(
        (
            i["limits"]["max_upload_mb"].as_u64(),
            i["limits"]["queue_size"].as_u64()
        ),
        (Some(25), Some(32))
    );
    assert_eq!(
        (
            i["features"]["cache"].as_str(),
            i["features"]["jobs"].as_str(),
            i["features"]["auth"].as_bool()
        ),
        (Some("memory"), Some("sqlite"), Some(false))
    );
    assert!(["portable", "avx2", "avx512", "avx512-bf16", "amx"]
        .contains(&i["numerics"]["instruction_set"].as_str().unwrap()));

    let jfk = read("eval/jfk.wav");
    let post =
        |path: &str, fields: &[(&str, &str)]| s.post_form(path, Some(("file", &jfk)), fields, &[]);
    let mut samples = vec![
        Sample {
            method: "get",
            path: "/health",
            response: s.get("/health"),
            component: None,
        },
        Sample {
            method: "get",
            path: "/info",
            response: info,
            component: Some("Info"),
        },
        Sample {
            method: "get",
            path: "/ready",
            response: s.get("/ready"),
            component: None,
        },
        Sample {
            method: "get",
            path: "/v1/models",
            response: s.get("/v1/models"),
            component: None,
        },
        Sample {
            method: "get",
            path: "/v1/models/{model}",
            response: s.get("/v1/models/whisper-1"),
            component: None,
        },
        Sample {
            method: "get",
            path: "/v1/models/{model}",
            response: s.get("/v1/models/nope"),
            component: Some("ErrorResponse"),
        },
        Sample {
            method: "get",
            path: "/metrics",
            response: s.get("/metrics"),
            component: None,
        },
        Sample {
            method: "post",
            path: "/transcribe",
            response: post("/transcribe", &[]),
            component: Some("TranscriptionJson"),
        },
        Sample {
            method: "post",
            path: "/transcribe",
            response: post(
                "/transcribe",
                &[
                    ("response_format", "verbose_json"),
                    ("word_timestamps", "true"),
                ],
            ),
            component: Some("VerboseTranscription"),
        },
        Sample {
            method: "post",
            path: "/transcribe",
            response: post("/transcribe", &[("response_format", "srt")]),
            component: None,
        },
        Sample {
            method: "post",
            path: "/transcribe",
            response: post("/transcribe", &[("langauge", "en")]),
            component: Some("ErrorResponse"),
        },
        Sample {
            method: "post",
            path: "/v1/audio/transcriptions",
            response: post(
                "/v1/audio/transcriptions",
                &[("model", "whisper-1"), ("include[]", "logprobs")],
            ),
            component: Some("OpenAiTranscription"),
        },
        Sample {
            method: "post",
            path: "/v1/audio/transcriptions",
            response: post(
                "/v1/audio/transcriptions",
                &[
                    ("response_format", "verbose_json"),
                    ("timestamp_granularities[]", "word"),
                ],
            ),
            component: Some("VerboseTranscription"),
        },
        Sample {
            method: "post",
            path: "/v1/audio/translations",
            response: post("/v1/audio/translations", &[]),
            component: Some("OpenAiTranscription"),
        },
        Sample {
            method: "post",
            path: "/detect-language",
            response: post("/detect-language", &[]),
            component: None,
        },
    ];
    let created = post("/v1/jobs", &[("response_format", "json")]);
    let id = json(&created)["id"].as_str().unwrap().to_string();
    samples.push(Sample {
        method: "post",
        path: "/v1/jobs",
        response: created,
        component: Some("JobView"),
    });
    s.wait_for_job(&id, &[], Duration::from_secs(60), |j| {
        j["status"] == "succeeded"
    });
    for (path, url, component) in [
        ("/v1/jobs/{id}", format!("/v1/jobs/{id}"), Some("JobView")),
        (
            "/v1/jobs/{id}/result",
            format!("/v1/jobs/{id}/result?response_format=verbose_json"),
            Some("VerboseTranscription"),
        ),
        (
            "/v1/jobs/{id}/result",
            format!("/v1/jobs/{id}/result?response_format=text"),
            None,
        ),
        (
            "/v1/jobs/{id}",
            "/v1/jobs/job_00000000000000000000000000000000".to_string(),
            Some("ErrorResponse"),
        ),
    ] {
        samples.push(Sample {
            method: "get",
            path,
            response: s.get(&url),
            component,
        });
    }
    samples.push(Sample {
        method: "delete",
        path: "/v1/jobs/{id}",
        response: s.delete(&format!("/v1/jobs/{id}"), &[]),
        component: Some("ErrorResponse"),
    });
    let unknown = &samples[10].response;
    assert_eq!(
        (unknown.0, json(unknown)["error"]["code"].as_str()),
        (400, Some("unknown_parameter"))
    );

    let list: Vec<serde_json::Value> = samples
        .iter()
        .map(|x| {
            let ct = common::server::header(&x.response, "content-type")
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let body: serde_json::Value = if ct == "application/json" {
                serde_json::from_slice(&x.response.2).unwrap()
            } else {
                serde_json::Value::Null
            };
            serde_json::json!({
                "method": x.method, "path": x.path, "status": x.response.0,
                "content_type": ct, "body": body, "component": x.component,
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (doc_path, samples_path) = (dir.path().join("doc.json"), dir.path().join("samples.json"));
    std::fs::write(&doc_path, doc.to_string()).unwrap();
    std::fs::write(&samples_path, serde_json::Value::Array(list).to_string()).unwrap();
    let out = std::process::Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/openapi_validate.py"))
        .args([&doc_path, &samples_path])
        .output()
        .expect("the test venv (make venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(", 0 failures"), "{stdout}");
}
