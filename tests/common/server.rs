//! A real `whisperd serve` on an ephemeral port, and a minimal HTTP/1.1 client over TcpStream
//! (so tests can also drop a connection mid-request).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
    /// Its own job database (unless the test names one), removed with it.
    _data: tempfile::TempDir,
}

impl Server {
    /// Start with extra `WHISPERD_*` settings and wait until /ready says yes.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_whisperd"));
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0", "--model"])
            .arg(super::model_dir())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let data = tempfile::tempdir().expect("temporary directory");
        cmd.env("WHISPERD_JOBS_DB", data.path().join("jobs.sqlite"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start whisperd serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("whisperd listening on http://") {
                    let _ = tx.send(addr.trim().to_string());
                }
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not report its address");
        let s = Server {
            child,
            addr,
            log,
            _data: data,
        };
        let t0 = Instant::now();
        while s.get("/ready").0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "not ready: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the server's log contains `needle`; after `within`, fail with the log. The log
    /// is read from a pipe by another thread, so a line written just before a metric moved can
    /// reach us a moment after the metric does.
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let t0 = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                t0.elapsed() < within,
                "the log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(&self.addr, "GET", path, &[], &[])
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(&self.addr, "GET", path, headers, &[])
    }

    /// POST a multipart form with `file` (if any) and text fields.
    pub fn post_form(
        &self,
        path: &str,
        file: Option<(&str, &[u8])>,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Response {
        let (ct, body) = multipart(file, fields);
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        h.push(("Content-Type", &ct));
        request(&self.addr, "POST", path, &h, &body)
    }

    /// The ids `GET /v1/models` lists, in its order.
    pub fn model_ids(&self) -> Vec<String> {
        json(&self.get("/v1/models"))["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A metric's value (summed over its label sets) from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.addr, name)
    }

    /// Wait until metric `name` reaches `at_least`; after `within`, fail with `what` and /metrics.
    pub fn wait_for_metric(&self, name: &str, at_least: f64, within: Duration, what: &str) {
        let t0 = Instant::now();
        while self.metric(name) < at_least {
            assert!(
                t0.elapsed() < within,
                "{what}:\n{}",
                String::from_utf8_lossy(&self.get("/metrics").2)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it at once (SIGKILL): nothing is flushed, no drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        h.push(("Content-Type", "application/json"));
        request(&self.addr, "POST", path, &h, body.to_string().as_bytes())
    }

    pub fn delete(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(&self.addr, "DELETE", path, headers, &[])
    }

    /// Poll `GET /v1/jobs/{id}` until `done` says so; fail after `within` with the last answer.
    pub fn wait_for_job(
        &self,
        id: &str,
        headers: &[(&str, &str)],
        within: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let r = self.get_with(&format!("/v1/jobs/{id}"), headers);
            let v: serde_json::Value = serde_json::from_slice(&r.2).unwrap_or_default();
            if r.0 == 200 && done(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < within,
                "job {id} not there in {within:?}: {} {v}\n{}",
                r.0,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value from the /metrics of the server at `addr`, summed over the series whose
/// labels include every `label="value"` pair `name` gives (`m{result="ok"}` counts the series
/// `m{model="x",result="ok"}` too).
pub fn metric(addr: &str, name: &str) -> f64 {
    let text = String::from_utf8(request(addr, "GET", "/metrics", &[], &[]).2).unwrap();
    let (base, want) = match name.split_once('{') {
        Some((b, rest)) => (b, labels(rest.trim_end_matches('}'))),
        None => (name, Vec::new()),
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, have) = match series.split_once('{') {
                Some((n, rest)) => (n, labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            (n == base && want.iter().all(|w| have.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// `a="x",b="y"` as pairs (values in these tests hold no commas or quotes).
fn labels(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

/// (status, headers lower-cased, body)
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

pub fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.2)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.2)))
}

/// The `speakers[].speaker` names of a diarized (or channel-split) verbose_json answer, in order.
pub fn speaker_names(v: &serde_json::Value) -> Vec<&str> {
    v["speakers"]
        .as_array()
        .unwrap_or_else(|| panic!("no speakers: {v}"))
        .iter()
        .map(|x| x["speaker"].as_str().unwrap_or_default())
        .collect()
}

pub fn multipart(file: Option<(&str, &[u8])>, fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "whisperdtestboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((field, bytes)) = file {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"audio.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn send_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    s
}

pub fn read_response(mut s: TcpStream) -> Response {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(raw)
}

/// A whole HTTP/1.1 response already read: status, headers, body (de-chunked).
pub fn parse_response(raw: Vec<u8>) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 2 + size + 2..];
    }
    out
}

pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    read_response(send_request(addr, method, path, headers, body))
}
