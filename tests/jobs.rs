//! Async jobs on a lone replica (the SQLite store), URL input, webhooks and the address rules,
//! against the real server. Every URL points at a stub on 127.0.0.1: no test connects anywhere
//! else (the address classifier itself is unit-tested in src/net/ssrf.rs).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::http_stub::Stub;
use common::read;
use common::server::{json, Server};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const LONG: &str = "eval/longform/librispeech-test-clean-237-134500-full-chapter.wav";

fn text_of(job: &serde_json::Value) -> String {
    job["result"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn jobs_from_upload_and_url_with_signed_retried_webhooks_and_owners() {
    let jfk = read("eval/jfk.wav");
    let stub = Stub::start(
        HashMap::from([("/jfk.wav".to_string(), jfk.clone())]),
        vec![500], // the first webhook call fails, the retry succeeds
    );
    let secret = "whsec-test";
    let s = Server::start(&[
        ("WHISPERD_ALLOW_PRIVATE_URLS", "true"),
        ("WHISPERD_WEBHOOK_SECRET", secret),
        ("WHISPERD_API_KEYS", "key-a,key-b"),
    ]);
    let a = [("Authorization", "Bearer key-a")];
    let b = [("Authorization", "Bearer key-b")];

    // An upload, with a webhook.
    let r = s.post_form(
        "/v1/jobs",
        Some(("file", &jfk)),
        &[("webhook_url", &stub.url("/hook")), ("language", "en")],
        &a,
    );
    assert_eq!(r.0, 202, "{}", String::from_utf8_lossy(&r.2));
    let created = json(&r);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "queued");
    assert_eq!(id.len(), 36, "job_ + 128 bits in hex: {id}");
    let done = s.wait_for_job(&id, &a, Duration::from_secs(120), |j| {
        j["status"] == "succeeded" && j["webhook"]["status"] == "delivered"
    });
    assert!(
        text_of(&done).contains("ask not what your country can do for you"),
        "{done}"
    );
    assert_eq!(done["webhook"]["attempts"], 2, "{done}");

    // Another key does not see it; the result comes in every format.
    assert_eq!(s.get_with(&format!("/v1/jobs/{id}"), &b).0, 404);
    assert_eq!(
        s.get_with(&format!("/v1/jobs/{id}/result?response_format=srt"), &b)
            .0,
        404
    );
    let srt = s.get_with(&format!("/v1/jobs/{id}/result?response_format=srt"), &a);
    assert_eq!(srt.0, 200);
    assert!(
        String::from_utf8_lossy(&srt.2).contains("00:00:00,000 --> "),
        "{srt:?}"
    );
    let vtt = s.get_with(&format!("/v1/jobs/{id}/result?response_format=vtt"), &a);
    assert!(String::from_utf8_lossy(&vtt.2).starts_with("WEBVTT"));
    assert_eq!(
        s.delete(&format!("/v1/jobs/{id}"), &a).0,
        409,
        "a finished job cannot be cancelled"
    );

    // Two webhook calls: the failed one and its retry, same delivery id, each validly signed.
    let hooks: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    for h in &hooks {
        let ts = &h.headers["x-whisperd-timestamp"];
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&h.body);
        let want = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(h.headers["x-whisperd-signature"], want);
        let body: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(body["type"], "job.succeeded");
        assert_eq!(body["job"]["id"], id.as_str());
        assert_eq!(body["delivery_id"], done["webhook"]["delivery_id"]);
        assert_eq!(
            h.headers["x-whisperd-delivery"],
            body["delivery_id"].as_str().unwrap()
        );
        assert!(text_of(&body["job"]).contains("ask not"));
    }

    // Audio by URL, as a JSON job and on /transcribe.
    let r = s.post_json(
        "/v1/jobs",
        &serde_json::json!({"url": stub.url("/jfk.wav")}),
        &b,
    );
    assert_eq!(r.0, 202, "{}", String::from_utf8_lossy(&r.2));
    let id2 = json(&r)["id"].as_str().unwrap().to_string();
    let done = s.wait_for_job(&id2, &b, Duration::from_secs(60), |j| {
        j["status"] == "succeeded"
    });
    assert!(text_of(&done).contains("ask not"), "{done}");
    let r = s.post_form("/transcribe", None, &[("url", &stub.url("/jfk.wav"))], &a);
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    assert!(String::from_utf8_lossy(&r.2).contains("ask not"));
    let r = s.post_form(
        "/transcribe",
        None,
        &[("url", &stub.url("/missing.wav"))],
        &a,
    );
    assert_eq!(
        (r.0, json(&r)["error"]["code"].as_str()),
        (400, Some("url_http_error"))
    );
    // A job whose URL fails is a failed job with the reason.
    let r = s.post_json(
        "/v1/jobs",
        &serde_json::json!({"url": stub.url("/missing.wav")}),
        &b,
    );
    let id3 = json(&r)["id"].as_str().unwrap().to_string();
    let failed = s.wait_for_job(&id3, &b, Duration::from_secs(60), |j| {
        j["status"] == "failed"
    });
    assert_eq!(failed["error"]["code"], "url_http_error", "{failed}");
    assert_eq!(s.get_with(&format!("/v1/jobs/{id3}/result"), &b).0, 409);

    // Bad requests are refused at once.
    for (fields, code) in [
        (serde_json::json!({}), "missing_file"),
        (
            serde_json::json!({"url": "ftp://127.0.0.1/a.wav"}),
            "invalid_url",
        ),
        (
            serde_json::json!({"url": stub.url("/jfk.wav"), "temperature": "9"}),
            "",
        ),
    ] {
        let r = s.post_json("/v1/jobs", &fields, &a);
        assert_eq!(r.0, 400, "{fields}: {}", String::from_utf8_lossy(&r.2));
        if !code.is_empty() {
            assert_eq!(json(&r)["error"]["code"], code, "{fields}");
        }
    }
    assert_eq!(
        s.get_with("/v1/jobs/job_00000000000000000000000000000000", &a)
            .0,
        404
    );
    assert_eq!(s.get_with("/v1/jobs/../../etc/passwd", &a).0, 404);
    assert!(s.metric("whisperd_webhook_deliveries_total{outcome=\"retry\"}") >= 1.0);
    assert!(s.metric("whisperd_async_jobs_finished_total{state=\"succeeded\"}") >= 2.0);
}

#[test]
fn urls_inside_the_network_are_refused_by_default() {
    let stub = Stub::start(
        HashMap::from([("/jfk.wav".to_string(), read("eval/jfk.wav"))]),
        vec![],
    );
    let s = Server::start(&[("WHISPERD_WEBHOOK_SECRET", "x")]);
    let port = stub.port;
    for url in [
        format!("http://127.0.0.1:{port}/jfk.wav"),
        format!("http://localhost:{port}/jfk.wav"), // a name that resolves to loopback
        format!("http://[::1]:{port}/jfk.wav"),
        format!("http://2130706433:{port}/jfk.wav"), // 127.0.0.1 as a number
    ] {
        let r = s.post_form("/transcribe", None, &[("url", &url)], &[]);
        assert_eq!(r.0, 400, "{url}: {}", String::from_utf8_lossy(&r.2));
        assert_eq!(json(&r)["error"]["code"], "url_not_allowed", "{url}");
    }
    let jfk = read("eval/jfk.wav");
    let r = s.post_form(
        "/v1/jobs",
        Some(("file", &jfk)),
        &[("webhook_url", &format!("http://localhost:{port}/hook"))],
        &[],
    );
    // `localhost` is only resolved when the webhook is called: accepted now, refused then.
    assert_eq!(r.0, 202, "{}", String::from_utf8_lossy(&r.2));
    let id = json(&r)["id"].as_str().unwrap().to_string();
    let done = s.wait_for_job(&id, &[], Duration::from_secs(60), |j| {
        j["webhook"]["status"] == "failed"
    });
    assert!(
        done["webhook"]["last_error"]
            .as_str()
            .unwrap()
            .contains("loopback"),
        "{done}"
    );
    let r = s.post_form(
        "/v1/jobs",
        Some(("file", &jfk)),
        &[("webhook_url", &format!("http://127.0.0.1:{port}/hook"))],
        &[],
    );
    assert_eq!(
        (r.0, json(&r)["error"]["code"].as_str()),
        (400, Some("url_not_allowed"))
    );
    assert!(
        stub.requests().is_empty(),
        "whisperd connected: {:?}",
        stub.requests()
    );
}

#[test]
fn queued_and_running_jobs_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.sqlite");
    let db = db.to_str().unwrap();
    let env = [("WHISPERD_JOBS_DB", db), ("WHISPERD_JOB_WORKERS", "1")];
    let mut s = Server::start(&env);
    let long = read(LONG);
    let jfk = read("eval/jfk.wav");
    let running = json(&s.post_form("/v1/jobs", Some(("file", &long)), &[], &[]))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = json(&s.post_form("/v1/jobs", Some(("file", &jfk)), &[], &[]))["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_for_job(&running, &[], Duration::from_secs(60), |j| {
        j["status"] == "running"
    });
    assert_eq!(
        json(&s.get(&format!("/v1/jobs/{queued}")))["status"],
        "queued"
    );
    s.kill();

    let s = Server::start(&env);
    let first = s.wait_for_job(&running, &[], Duration::from_secs(300), |j| {
        j["status"] == "succeeded"
    });
    assert_eq!(first["attempts"], 2, "run again after the kill: {first}");
    assert!(text_of(&first).len() > 1000, "{first}");
    let second = s.wait_for_job(&queued, &[], Duration::from_secs(60), |j| {
        j["status"] == "succeeded"
    });
    assert_eq!(second["attempts"], 1);
    assert_eq!(s.metric("whisperd_async_job_reclaims_total"), 1.0);

    // A cancelled job stops and stays cancelled.
    let id = json(&s.post_form(
        "/v1/jobs",
        Some(("file", &long)),
        &[("prompt", "A chapter.")],
        &[],
    ))["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_for_job(&id, &[], Duration::from_secs(60), |j| {
        j["status"] == "running"
    });
    let r = s.delete(&format!("/v1/jobs/{id}"), &[]);
    assert_eq!((r.0, json(&r)["status"].as_str()), (200, Some("cancelled")));
    s.wait_for_metric(
        "whisperd_async_jobs_finished_total{state=\"cancelled\"}",
        1.0,
        Duration::from_secs(30),
        "the running job did not stop",
    );
    assert_eq!(
        json(&s.get(&format!("/v1/jobs/{id}")))["status"],
        "cancelled"
    );
}
