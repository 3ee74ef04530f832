//! Hostile input against the real server: one case per class of attack that once cost memory,
//! time or correctness (decompression bombs, decoder panics, non-finite samples, truncated Ogg,
//! multipart edge cases, spoofed forwarding headers, per-key floods, client departures, drain).
//! Each asserts the status, the error's `code`/`param`, the time taken and, where memory is the
//! point, the server's peak RSS (`VmHWM`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::server::*;
use common::*;

/// Peak resident memory of a process in MB.
fn vm_hwm_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// A WAV whose `fmt ` chunk says what the test wants, with `data` as its samples.
fn wav_with(format_tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut b = b"RIFF".to_vec();
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&format_tag.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate.wrapping_mul(block as u32)).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b
}

/// An AIFF file of 16-bit mono silence with `rate_bytes` as its 80-bit sample rate.
fn aiff_with_rate(rate_bytes: [u8; 10], frames: u32) -> Vec<u8> {
    let mut comm = Vec::new();
    comm.extend_from_slice(&1i16.to_be_bytes());
    comm.extend_from_slice(&frames.to_be_bytes());
    comm.extend_from_slice(&16i16.to_be_bytes());
    comm.extend_from_slice(&rate_bytes);
    let data_len = frames as usize * 2;
    let mut body = b"AIFF".to_vec();
    body.extend_from_slice(b"COMM");
    body.extend_from_slice(&(comm.len() as u32).to_be_bytes());
    body.extend_from_slice(&comm);
    body.extend_from_slice(b"SSND");
    body.extend_from_slice(&(data_len as u32 + 8).to_be_bytes());
    body.extend_from_slice(&[0u8; 8]);
    body.extend(std::iter::repeat_n(0u8, data_len));
    let mut b = b"FORM".to_vec();
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(&body);
    b
}

/// `seconds` of 48 kHz digital silence as FLAC (sox), optionally with the declared length erased
/// from STREAMINFO, so only counting while decoding can stop it.
fn flac_silence(seconds: u32, declare_length: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.flac");
    let st = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "1"])
        .arg(&path)
        .args(["trim", "0", &seconds.to_string()])
        .status()
        .expect("sox (Debian package `sox`; .ci/run installs it)");
    assert!(st.success());
    let mut b = std::fs::read(&path).unwrap();
    if !declare_length {
        // STREAMINFO starts at byte 8; total samples are its 36 low bits at bytes 21..26.
        assert_eq!(&b[..4], b"fLaC");
        b[21] &= 0xf0;
        b[22..26].fill(0);
    }
    b
}

/// POST `file` and return (response, seconds taken, growth of the server's peak RSS in MB).
fn post_timed(s: &Server, file: &[u8], headers: &[(&str, &str)]) -> (Response, f64, f64) {
    let before = vm_hwm_mb(s.pid());
    let t0 = Instant::now();
    let r = s.post_form("/transcribe", Some(("file", file)), &[], headers);
    let secs = t0.elapsed().as_secs_f64();
    (r, secs, vm_hwm_mb(s.pid()) - before)
}

fn assert_error(r: &Response, status: u16, code: &str, param: Option<&str>) {
    assert_eq!(r.0, status, "{}", String::from_utf8_lossy(&r.2));
    let j = json(r);
    assert_eq!(j["error"]["code"], code, "{j}");
    if let Some(p) = param {
        assert_eq!(j["error"]["param"], p, "{j}");
    }
}

#[test]
fn bombs_bad_headers_and_broken_streams_get_their_4xx_fast_with_bounded_memory() {
    let s = Server::start(&[("WHISPERD_MAX_AUDIO_S", "60")]);
    let auth: &[(&str, &str)] = &[];

    // 1. A 32 KB WAV whose header says 1 Hz: nine hours of audio once resampled (2.4 GB before).
    let (r, secs, grew) = post_timed(&s, &wav_with(1, 1, 1, 16, &[0u8; 32_000]), auth);
    assert_error(&r, 400, "invalid_audio", Some("file"));
    assert!(secs < 2.0 && grew < 200.0, "{secs:.2} s, +{grew:.0} MB");

    // 30 min of 48 kHz silence in ~0.3 MB of FLAC, declared in STREAMINFO: refused from the header.
    let (r, secs, grew) = post_timed(&s, &flac_silence(1800, true), auth);
    assert_error(&r, 413, "payload_too_large", Some("file"));
    assert!(secs < 2.0 && grew < 200.0, "{secs:.2} s, +{grew:.0} MB");

    // The same with its length erased: decoding stops once it passes 60 s. Decoding it whole
    // took ~460 MB (345 MB at 48 kHz, 115 MB resampled).
    let (r, secs, grew) = post_timed(&s, &flac_silence(1800, false), auth);
    assert_error(&r, 413, "payload_too_large", Some("file"));
    assert!(secs < 2.0 && grew < 200.0, "{secs:.2} s, +{grew:.0} MB");

    // 2. Sample rate 0 panicked inside symphonia (503 + Retry-After): WAV and AIFF.
    let (r, secs, _) = post_timed(&s, &wav_with(1, 1, 0, 16, &[0u8; 3200]), auth);
    assert_error(&r, 400, "invalid_audio", Some("file"));
    assert!(header(&r, "retry-after").is_none() && secs < 2.0);
    let (r, _, _) = post_timed(&s, &aiff_with_rate([0; 10], 1600), auth);
    assert_error(&r, 400, "invalid_audio", Some("file"));
    // A sane AIFF (16 kHz = 0x400C FA00…) still decodes.
    let mut rate16k = [0u8; 10];
    rate16k[..4].copy_from_slice(&[0x40, 0x0c, 0xfa, 0x00]);
    assert_eq!(
        post_timed(&s, &aiff_with_rate(rate16k, 16_000), auth).0 .0,
        200
    );

    // 3. Non-finite samples gave 200 after 7.7 s of fallback and "!!!!!".
    let mut floats = Vec::new();
    for i in 0..16_000 {
        let x = if i % 100 == 7 { f32::NAN } else { 0.01 };
        floats.extend_from_slice(&x.to_le_bytes());
    }
    let (r, secs, _) = post_timed(&s, &wav_with(3, 1, 16_000, 32, &floats), auth);
    assert_error(&r, 400, "invalid_audio", Some("file"));
    assert!(secs < 2.0, "{secs:.2} s");
    let inf: Vec<u8> = (0..16_000)
        .flat_map(|i| if i == 9000 { f32::INFINITY } else { 0.0 }.to_le_bytes())
        .collect();
    assert_error(
        &post_timed(&s, &wav_with(3, 1, 16_000, 32, &inf), auth).0,
        400,
        "invalid_audio",
        Some("file"),
    );

    // 4. A truncated Ogg was accepted with half a transcript; like WAV/FLAC/MP3 it is now refused.
    let ogg = read("eval/formats/jfk.ogg");
    for cut in [ogg.len() / 2, ogg.len() - 100] {
        let (r, _, _) = post_timed(&s, &ogg[..cut], auth);
        assert_error(&r, 400, "truncated_audio", Some("file"));
    }
    assert_eq!(
        post_timed(&s, &ogg, auth).0 .0,
        200,
        "the whole Ogg still works"
    );

    // 10. The unsupported-codec message named the container twice ("MP3 in WAV in WAV").
    let (r, _, _) = post_timed(&s, &wav_with(0x55, 1, 16_000, 16, &[0u8; 3200]), auth);
    assert_eq!(r.0, 415);
    let msg = json(&r)["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("MP3 in WAV") && !msg.contains("in WAV in WAV"),
        "{msg}"
    );

    // Nothing above took the server down or counted as a server error.
    assert_eq!(s.get("/health").0, 200);
    let metrics = String::from_utf8(s.get("/metrics").2).unwrap();
    let fives: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("whisperd_http_requests_total{route=\"/transcribe\"")
                && l.contains("status=\"5")
        })
        .collect();
    assert!(
        fives.is_empty(),
        "a hostile input was answered with a 5xx: {fives:?}"
    );
}

#[test]
fn multipart_edge_cases_keep_the_json_error_contract() {
    let s = Server::start(&[("WHISPERD_API_KEYS", "k1")]);
    let auth = ("Authorization", "bearer k1"); // scheme names are case-insensitive (RFC 7235)
    let jfk = read("eval/jfk.wav");

    // A complete body without its closing boundary was held for 120 s.
    let (ct, mut body) = multipart(Some(("file", &jfk)), &[]);
    let close = body.iter().rposition(|&b| b == b'-').unwrap();
    body.truncate(close - "whisperdtestboundary7MA4YWxkTrZu0gW--".len() + 1);
    assert!(!String::from_utf8_lossy(&body[body.len() - 60..]).contains("--\r\n"));
    let t0 = Instant::now();
    let r = request(
        &s.addr,
        "POST",
        "/transcribe",
        &[("Content-Type", &ct), auth],
        &body,
    );
    assert_error(&r, 400, "malformed_multipart", None);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // Two audio files in one form: the last used to win silently.
    let (ct, mut two) = multipart(Some(("file", &jfk)), &[]);
    let (_, second) = multipart(Some(("file", &jfk)), &[]);
    two.truncate(two.len() - "--whisperdtestboundary7MA4YWxkTrZu0gW--\r\n".len());
    two.extend_from_slice(&second);
    let r = request(
        &s.addr,
        "POST",
        "/transcribe",
        &[("Content-Type", &ct), auth],
        &two,
    );
    assert_error(&r, 400, "duplicate_file", Some("file"));

    // A long query string got a 400 with an empty body.
    let long = format!("/transcribe?{}", "a".repeat(20_000));
    let r = s.post_form(&long, Some(("file", &jfk)), &[], &[auth]);
    assert_error(&r, 414, "query_too_long", None);

    // The same key with every capitalisation of the scheme works; other schemes do not.
    for scheme in ["Bearer", "BEARER"] {
        let h = format!("{scheme} k1");
        assert_eq!(s.get_with("/v1/models", &[("Authorization", &h)]).0, 200);
    }
    assert_eq!(
        s.get_with("/v1/models", &[("Authorization", "Basic k1")]).0,
        401
    );
}

#[test]
fn forwarded_headers_do_not_bypass_the_rate_limit_and_one_key_cannot_fill_the_server() {
    // No trusted proxies: X-Forwarded-For / Forwarded from the client are ignored.
    let s = Server::start(&[
        ("WHISPERD_RATE_LIMIT_PER_MINUTE", "3"),
        ("WHISPERD_API_KEYS", "alice,bob"),
        ("WHISPERD_MAX_IN_FLIGHT_PER_KEY", "1"),
    ]);
    // Rate limit per key: spoofed forwarding headers change nothing.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let xff = format!("10.0.0.{i}");
        let fwd = format!("for=192.0.2.{i}");
        statuses.push(
            s.get_with(
                "/v1/models",
                &[
                    ("Authorization", "Bearer bob"),
                    ("X-Forwarded-For", &xff),
                    ("Forwarded", &fwd),
                ],
            )
            .0,
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429]);

    // alice: one request in progress at a time; a second gets 429 with Retry-After at once, and
    // another key is not affected by alice's work.
    let long: Vec<u8> = {
        let jfk = whisperd::audio::load_pcm(read("eval/jfk.wav"), None).unwrap();
        wav_bytes(&jfk.samples.to_vec().unwrap().repeat(4), 16_000)
    };
    let addr = s.addr.clone();
    let (ct, body) = multipart(Some(("file", &long)), &[]);
    let busy = std::thread::spawn(move || {
        request(
            &addr,
            "POST",
            "/transcribe",
            &[("Content-Type", &ct), ("Authorization", "Bearer alice")],
            &body,
        )
    });
    s.wait_for_metric(
        "whisperd_in_flight_requests",
        1.0,
        Duration::from_secs(20),
        "alice's request never started",
    );
    let r = s.get_with("/v1/models", &[("Authorization", "Bearer alice")]);
    assert_error(&r, 429, "too_many_requests_in_flight", None);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(busy.join().unwrap().0, 200);
    // Audio served is counted per key, under a hash prefix (never the key itself).
    let metrics = String::from_utf8(s.get("/metrics").2).unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("whisperd_client_audio_seconds_total{client=\"key:"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!line.contains("alice"), "{line}");
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((secs - 44.0).abs() < 0.5, "{line}");
    // Once it finished, alice may send again.
    assert_eq!(
        s.get_with("/v1/models", &[("Authorization", "Bearer alice")])
            .0,
        200
    );
}

#[test]
fn a_client_that_leaves_is_a_499_and_its_running_job_stops() {
    let s = Server::start(&[]);
    // 200 s of speech: long enough that it is still running when the client hangs up.
    let long = read("eval/longform/librispeech-test-clean-237-134500-full-chapter.wav");
    let (ct, body) = multipart(Some(("file", &long)), &[]);
    let stream = send_request(
        &s.addr,
        "POST",
        "/transcribe",
        &[("Content-Type", &ct)],
        &body,
    );
    // The job leaves the queue (its wait is observed) when a transcription thread starts it.
    s.wait_for_metric(
        "whisperd_queue_wait_seconds_count",
        1.0,
        Duration::from_secs(30),
        "the job never started",
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
    let t1 = Instant::now();
    s.wait_for_metric(
        "whisperd_inference_jobs_total{result=\"cancelled\"}",
        1.0,
        Duration::from_secs(15),
        "the running job was not stopped",
    );
    // Stopped within a few windows, not after the whole 200 s; recorded as 499, not 503.
    assert!(t1.elapsed() < Duration::from_secs(10));
    s.wait_for_log("stopped a running job", Duration::from_secs(5));
    assert_eq!(s.metric("whisperd_audio_seconds_total"), 0.0);
    assert_eq!(
        s.metric("whisperd_http_requests_total{route=\"/transcribe\",status=\"499\"}"),
        1.0,
        "{}",
        String::from_utf8(s.get("/metrics").2).unwrap()
    );
    assert_eq!(
        s.metric("whisperd_http_requests_total{route=\"/transcribe\",status=\"503\"}"),
        0.0
    );
}

#[test]
fn sigterm_keeps_serving_through_the_grace_period_then_stops_accepting() {
    let mut s = Server::start(&[("WHISPERD_DRAIN_GRACE_S", "8")]);
    let t0 = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap()
        .success());
    // /ready flips to 503 so Kubernetes takes the pod out; /health stays 200; uploads still work.
    let mut ready = 200;
    while ready != 503 {
        assert!(t0.elapsed() < Duration::from_secs(2));
        ready = s.get("/ready").0;
    }
    assert_eq!(s.get("/health").0, 200);
    let r = s.post_form(
        "/transcribe",
        Some(("file", &read("eval/jfk.wav"))),
        &[],
        &[],
    );
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "test too slow to check the grace"
    );
    // After the grace the listener closes and the process exits cleanly.
    let code = s.child.wait().unwrap();
    assert!(code.success(), "{}", s.log());
    assert!(t0.elapsed() >= Duration::from_secs(8));
    assert!(std::net::TcpStream::connect(&s.addr).is_err());
}

/// Ten minutes of tone bursts and pauses: longer than what a request keeps in memory
/// (`SPILL_AFTER`) both as samples and as log-mel.
fn ten_minutes() -> Vec<f32> {
    (0..600 * 16_000)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            let on = (t as usize) % 7 < 4;
            if on {
                0.3 * (t * 440.0 * std::f32::consts::TAU).sin() * (1.0 + (t * 0.1).sin()) / 2.0
            } else {
                0.0
            }
        })
        .collect()
}

#[test]
fn long_audio_goes_to_temporary_files_and_reads_back_exactly() {
    use whisperd::mel::{MelSpectrogram, N_FRAMES, N_SAMPLES};
    let e = engine();
    let pcm = whisperd::Engine::load_audio(wav_bytes(&ten_minutes(), 16_000)).unwrap();
    assert!(
        pcm.samples.is_spilled(),
        "ten minutes of samples stayed in memory"
    );
    let off = whisperd::vad::VadOptions {
        enabled: false,
        gate_db: None,
        ..Default::default()
    };
    let p = e.prepare(&pcm, &off).unwrap();
    assert!(
        p.mel.is_spilled(),
        "ten minutes of log-mel stayed in memory"
    );
    // The same log-mel as computed from the samples in memory, bit for bit, at the start, deep
    // inside and at the end (the floor is the whole recording's).
    let samples = pcm.samples.to_vec().unwrap();
    let in_memory = MelSpectrogram::new(80)
        .compute(&samples, N_SAMPLES)
        .unwrap();
    assert_eq!(p.mel.n_frames, in_memory.n_frames);
    for start in [0, 31_234, p.content_frames - 100] {
        assert!(
            p.mel.window(start, N_FRAMES).unwrap() == in_memory.window(start, N_FRAMES).unwrap(),
            "window at frame {start} differs"
        );
    }
    // With the energy gate on, the joined audio (pauses of 3 s cut) is read through the map.
    let gated = e
        .prepare(
            &pcm,
            &whisperd::vad::VadOptions {
                enabled: false,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        !gated.speech.is_whole(),
        "the gate cut nothing: {:?}",
        gated.speech.regions.len()
    );
    let mut joined = Vec::new();
    for r in &gated.speech.regions {
        joined.extend_from_slice(&samples[r.clone()]);
    }
    let want = MelSpectrogram::new(80).compute(&joined, N_SAMPLES).unwrap();
    assert_eq!(gated.mel.n_frames, want.n_frames);
    let last = gated.content_frames.saturating_sub(N_FRAMES);
    for start in [0, last / 2, last] {
        assert!(
            gated.mel.window(start, N_FRAMES).unwrap() == want.window(start, N_FRAMES).unwrap()
        );
    }
}
