//! Outgoing HTTP for things a client names by URL: audio to transcribe (`url` on `/transcribe`
//! and `/v1/jobs`) and webhooks. Every request is bounded (total time, redirects, response size)
//! and may only connect to addresses [`super::ssrf`] allows unless `allow_private_urls` is set:
//! the check runs in the resolver, on the very addresses the connection will use, for the first
//! request and for every redirect, and again on the address actually connected to.
//! Blocking (ureq): callers run it on a blocking thread.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::ssrf;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Redirects followed when fetching audio (none for webhooks).
pub const MAX_REDIRECTS: u32 = 5;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    BadUrl(String),
    #[error("`{host}` is {addr}, a {reason} address: URLs may not point inside the server's network (the operator can set allow_private_urls)")]
    Blocked {
        host: String,
        addr: IpAddr,
        reason: &'static str,
    },
    #[error("the response is over the limit of {limit_mb} MiB")]
    TooLarge { limit_mb: usize },
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("no answer within {0} s")]
    Timeout(u64),
    #[error("{0}")]
    Transport(String),
}

impl FetchError {
    /// A stable code for API errors and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::BadUrl(_) => "invalid_url",
            FetchError::Blocked { .. } => "url_not_allowed",
            FetchError::TooLarge { .. } => "url_too_large",
            FetchError::Status(_) => "url_http_error",
            FetchError::Timeout(_) => "url_timeout",
            FetchError::Transport(_) => "url_unreachable",
        }
    }
}

/// How outgoing requests are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub allow_private: bool,
    pub timeout: Duration,
    pub max_bytes: usize,
}

/// Check a client-given URL before anything is fetched: http or https, a host, not too long,
/// and — when the host is an address literal — an address that may be reached. (Names are
/// checked when they are resolved, at fetch time.)
pub fn parse(raw: &str, allow_private: bool) -> Result<url::Url, FetchError> {
    if raw.len() > MAX_URL_LEN {
        return Err(FetchError::BadUrl(format!(
            "the URL is {} characters long, over the limit of {MAX_URL_LEN}",
            raw.len()
        )));
    }
    let u = url::Url::parse(raw.trim())
        .map_err(|e| FetchError::BadUrl(format!("`{raw}` is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(FetchError::BadUrl(format!(
            "only http and https URLs are accepted, not `{}:`",
            u.scheme()
        )));
    }
    let literal = match u.host() {
        None => return Err(FetchError::BadUrl(format!("`{raw}` has no host"))),
        Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
        Some(url::Host::Domain(_)) => None,
    };
    if let (Some(addr), false) = (literal, allow_private) {
        if let Some(reason) = ssrf::blocked_reason(addr) {
            return Err(FetchError::Blocked {
                host: u.host_str().unwrap_or_default().to_string(),
                addr,
                reason,
            });
        }
    }
    Ok(u)
}

/// The refusal a resolver returns; found again in ureq's error chain.
#[derive(Debug)]
struct Refused {
    host: String,
    addr: IpAddr,
    reason: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {}, a {} address",
            self.host, self.addr, self.reason
        )
    }
}

impl std::error::Error for Refused {}

/// Resolves names as the system does, then keeps only the addresses that may be reached.
struct GuardedResolver {
    allow_private: bool,
}

impl ureq::Resolver for GuardedResolver {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
        if self.allow_private {
            return Ok(addrs);
        }
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| ssrf::is_public(a.ip()))
            .collect();
        if allowed.is_empty() {
            if let Some(a) = addrs.first() {
                let host = netloc
                    .rsplit_once(':')
                    .map_or(netloc, |(h, _)| h)
                    .to_string();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    Refused {
                        host,
                        addr: a.ip(),
                        reason: ssrf::blocked_reason(a.ip()).unwrap_or("private"),
                    },
                ));
            }
        }
        Ok(allowed)
    }
}

fn agent(limits: &Limits, redirects: u32) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(limits.timeout)
        .timeout_connect(limits.timeout.min(Duration::from_secs(10)))
        .redirects(redirects)
        .user_agent(concat!("whisperd/", env!("CARGO_PKG_VERSION")))
        .resolver(GuardedResolver {
            allow_private: limits.allow_private,
        })
        .build()
}

fn map_error(e: ureq::Error, limits: &Limits) -> FetchError {
    match e {
        ureq::Error::Status(code, _) => FetchError::Status(code),
        ureq::Error::Transport(t) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> =
                std::error::Error::source(&t);
            while let Some(s) = source {
                if let Some(r) = s.downcast_ref::<Refused>() {
                    return FetchError::Blocked {
                        host: r.host.clone(),
                        addr: r.addr,
                        reason: r.reason,
                    };
                }
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<Refused>()) {
                        return FetchError::Blocked {
                            host: r.host.clone(),
                            addr: r.addr,
                            reason: r.reason,
                        };
                    }
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) {
                        return FetchError::Timeout(limits.timeout.as_secs());
                    }
                }
                source = s.source();
            }
            FetchError::Transport(t.to_string())
        }
    }
}

/// Refuse a response that came from an address the resolver should never have given out.
fn check_peer(resp: &ureq::Response, limits: &Limits) -> Result<(), FetchError> {
    let peer = resp.remote_addr().ip();
    match (limits.allow_private, ssrf::blocked_reason(peer)) {
        (false, Some(reason)) => Err(FetchError::Blocked {
            host: resp.get_url().to_string(),
            addr: peer,
            reason,
        }),
        _ => Ok(()),
    }
}

/// GET `url` and return its body (at most `limits.max_bytes`).
pub fn get(url: &url::Url, limits: &Limits) -> Result<Vec<u8>, FetchError> {
    let resp = agent(limits, MAX_REDIRECTS)
        .request_url("GET", url)
        .call()
        .map_err(|e| map_error(e, limits))?;
    check_peer(&resp, limits)?;
    let limit_mb = limits.max_bytes / (1 << 20);
    if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if len > limits.max_bytes {
            return Err(FetchError::TooLarge { limit_mb });
        }
    }
    let mut body = Vec::new();
    resp.into_reader()
        .take(limits.max_bytes as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                FetchError::Timeout(limits.timeout.as_secs())
            }
            _ => FetchError::Transport(format!("reading the body: {e}")),
        })?;
    if body.len() > limits.max_bytes {
        return Err(FetchError::TooLarge { limit_mb });
    }
    Ok(body)
}

/// POST `body` as JSON to `url` with extra headers, following no redirect; Ok(status) for any
/// answer (the caller decides what counts as delivered), Err when no answer came.
pub fn post_json(
    url: &url::Url,
    headers: &[(&str, String)],
    body: &[u8],
    limits: &Limits,
) -> Result<u16, FetchError> {
    let mut req = agent(limits, 0)
        .request_url("POST", url)
        .set("content-type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_bytes(body) {
        Ok(resp) => {
            check_peer(&resp, limits)?;
            Ok(resp.status())
        }
        Err(ureq::Error::Status(code, _)) => Ok(code),
        Err(e) => Err(map_error(e, limits)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(allow_private: bool) -> Limits {
        Limits {
            allow_private,
            timeout: Duration::from_secs(5),
            max_bytes: 1 << 20,
        }
    }

    #[test]
    fn only_http_urls_with_a_host_pass() {
        assert!(parse("https://example.com/a.mp3", false).is_ok());
        assert!(parse("HTTP://example.com/a.mp3", false).is_ok());
        for bad in [
            "ftp://example.com/a",
            "file:///etc/passwd",
            "gopher://x",
            "not a url",
            "http://",
        ] {
            assert!(
                matches!(parse(bad, false), Err(FetchError::BadUrl(_))),
                "{bad}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(parse(&long, false), Err(FetchError::BadUrl(_))));
    }

    #[test]
    fn address_literals_inside_the_network_are_refused_before_any_request() {
        for bad in [
            "http://127.0.0.1:8080/a.wav",
            "http://[::1]/a.wav",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://0x7f000001/", // the URL parser reads hex and decimal forms as IPv4
            "http://2130706433/",
            "http://[::ffff:192.168.0.1]/",
        ] {
            let e = parse(bad, false).unwrap_err();
            assert!(matches!(e, FetchError::Blocked { .. }), "{bad}: {e:?}");
            assert_eq!(e.code(), "url_not_allowed");
        }
        assert!(parse("http://127.0.0.1:8080/a.wav", true).is_ok());
    }

    #[test]
    fn names_are_checked_where_they_resolve() {
        // `localhost` resolves to loopback: refused in the resolver, with no connection made.
        let r = GuardedResolver {
            allow_private: false,
        };
        let e = ureq::Resolver::resolve(&r, "localhost:9").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        let e = get(
            &parse("http://localhost:9/a.wav", false).unwrap(),
            &limits(false),
        )
        .unwrap_err();
        assert!(matches!(e, FetchError::Blocked { .. }), "{e:?}");
        let ok = GuardedResolver {
            allow_private: true,
        };
        assert!(!ureq::Resolver::resolve(&ok, "localhost:9")
            .unwrap()
            .is_empty());
    }
}
