//! Two replicas sharing a real `redis-server` on loopback: the Redis result cache, one inference
//! for the same audio sent to both at once, a job finished by B after A is SIGKILLed mid-job, and
//! requests that still succeed after Redis stops.

mod common;

use std::time::Duration;

use common::read;
use common::redis::Redis;
use common::server::{json, Server};

const LONG: &str = "eval/longform/librispeech-test-clean-237-134500-full-chapter.wav";

fn replica(redis: &Redis, extra: &[(&str, &str)]) -> Server {
    let url = redis.url();
    let mut env = vec![
        ("WHISPERD_REDIS_URL", url.as_str()),
        ("WHISPERD_VAD", "false"),
    ];
    env.extend_from_slice(extra);
    Server::start(&env)
}

fn inferences(s: &Server) -> f64 {
    s.metric("whisperd_inference_jobs_total{result=\"ok\"}")
}

#[test]
fn replicas_share_results_run_once_and_survive_redis_going_away() {
    let mut redis = Redis::start();
    let a = replica(&redis, &[]);
    let b = replica(&redis, &[]);
    let (a0, b0) = (inferences(&a), inferences(&b));

    // Transcribed on A, a hit on B.
    let jfk = read("eval/jfk.wav");
    let ra = a.post_form("/v1/audio/transcriptions", Some(("file", &jfk)), &[], &[]);
    assert_eq!(ra.0, 200, "{}", String::from_utf8_lossy(&ra.2));
    let rb = b.post_form("/v1/audio/transcriptions", Some(("file", &jfk)), &[], &[]);
    assert_eq!(rb.0, 200);
    assert_eq!(json(&ra)["text"], json(&rb)["text"]);
    assert_eq!(
        (inferences(&a) - a0, inferences(&b) - b0),
        (1.0, 0.0),
        "B ran it again"
    );
    assert_eq!(
        b.metric("whisperd_cache_shared_lookups_total{result=\"hit\"}"),
        1.0
    );

    // The same audio to both at once: one inference, both answered.
    let other = read("eval/librispeech/test-clean/237-134500-0001.flac");
    let (a1, b1) = (inferences(&a), inferences(&b));
    let (ad, bd) = (a.addr.clone(), b.addr.clone());
    let send = |addr: String, audio: Vec<u8>| {
        std::thread::spawn(move || {
            let (ct, body) = common::server::multipart(Some(("file", &audio)), &[]);
            common::server::request(
                &addr,
                "POST",
                "/v1/audio/transcriptions",
                &[("Content-Type", &ct)],
                &body,
            )
        })
    };
    let (ta, tb) = (send(ad, other.clone()), send(bd, other.clone()));
    let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!((ra.0, rb.0), (200, 200));
    assert_eq!(json(&ra)["text"], json(&rb)["text"]);
    assert_eq!(
        (inferences(&a) - a1) + (inferences(&b) - b1),
        1.0,
        "both replicas ran the same audio:\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    // The replica that did not run it either waited for the other's result or, when it came
    // second, found it in Redis.
    let shared = |s: &Server| {
        s.metric("whisperd_cache_shared_waits_total{outcome=\"result\"}")
            + s.metric("whisperd_cache_shared_lookups_total{result=\"hit\"}")
    };
    assert_eq!(
        shared(&a) + shared(&b),
        2.0,
        "one from the first part, one now"
    );

    // Redis stops: requests still succeed, as on a lone replica.
    redis.stop();
    let third = read("eval/librispeech/test-clean/237-134500-0002.flac");
    for s in [&a, &b] {
        let r = s.post_form("/v1/audio/transcriptions", Some(("file", &third)), &[], &[]);
        assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
        assert!(!json(&r)["text"].as_str().unwrap().is_empty());
        assert_eq!(s.metric("whisperd_redis_up"), 0.0);
        assert!(s.metric("whisperd_redis_errors_total") >= 1.0);
        assert_eq!(
            s.log().matches("redis unavailable").count(),
            1,
            "one log line per incident"
        );
    }
}

#[test]
fn a_job_outlives_the_replica_that_was_running_it() {
    let redis = Redis::start();
    let fast = [("WHISPERD_JOB_VISIBILITY_TIMEOUT_S", "3")];
    let mut a = replica(&redis, &fast);
    let long = read(LONG);
    let r = a.post_form("/v1/jobs", Some(("file", &long)), &[], &[]);
    assert_eq!(r.0, 202, "{}", String::from_utf8_lossy(&r.2));
    let id = json(&r)["id"].as_str().unwrap().to_string();
    a.wait_for_job(&id, &[], Duration::from_secs(60), |j| {
        j["status"] == "running"
    });
    a.kill();

    let b = replica(&redis, &fast);
    let done = b.wait_for_job(&id, &[], Duration::from_secs(300), |j| {
        j["status"] == "succeeded"
    });
    assert_eq!(done["attempts"], 2, "{done}");
    assert!(
        done["result"]["text"].as_str().unwrap().len() > 1000,
        "{done}"
    );
    assert_eq!(b.metric("whisperd_async_job_reclaims_total"), 1.0);
    // Nothing left: the stream entry is acknowledged and removed (just after the result is
    // written), and the gauges say so.
    let t0 = std::time::Instant::now();
    loop {
        let queued = b.metric("whisperd_async_jobs{state=\"queued\"}");
        let running = b.metric("whisperd_async_jobs{state=\"running\"}");
        if redis.command("XLEN whisperd:jobs") == ":0" && queued == 0.0 && running == 0.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "left over: queued {queued}, running {running}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
