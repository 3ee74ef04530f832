//! The network edge. This file: who the client is — the peer address, or, only when the peer is a
//! trusted proxy, the address its `X-Forwarded-For` / `Forwarded` header names. Rate limits and
//! logs key on this, so a client cannot pick its own identity by sending a header.
//! `ssrf`: which addresses a URL a client gives us may reach. `fetch`: bounded outgoing HTTP
//! (audio from a URL, webhooks) that only ever connects to addresses `ssrf` allows.

use std::net::IpAddr;
use std::str::FromStr;

pub mod fetch;
pub mod ssrf;

/// An address range from the config: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet(ipnet::IpNet);

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<ipnet::IpNet>() {
            return Ok(IpNet(n));
        }
        s.parse::<IpAddr>()
            .map(|a| IpNet(ipnet::IpNet::from(a)))
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
    }
}

impl IpNet {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(&canonical(*ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as a dual-stack socket reports IPv4 peers)
/// compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address. `forwarded_for` is the `X-Forwarded-For` header and `forwarded` the
    /// RFC 7239 `Forwarded` header, if sent. Hops are read right to left (nearest first): the first
    /// address that is not a trusted proxy is the client. Headers from an untrusted peer, and
    /// entries that do not parse, are never believed.
    pub fn client_ip(
        &self,
        peer: IpAddr,
        forwarded_for: Option<&str>,
        forwarded: Option<&str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(&peer) {
            return peer;
        }
        let hops: Vec<&str> = match (forwarded_for, forwarded) {
            (Some(xff), _) => xff.split(',').collect(),
            (None, Some(fwd)) => fwd
                .split(',')
                .filter_map(|element| {
                    element.split(';').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then_some(v)
                    })
                })
                .collect(),
            (None, None) => return peer,
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.trusts(&ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// One hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`, optionally quoted.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let h = hop.trim().trim_matches('"');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    let (addr, port) = h.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_are_believed_only_from_trusted_proxies() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.5".into()]).unwrap();
        // From an untrusted peer the header is ignored, whatever it says.
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), Some("1.1.1.1"), None),
            ip("203.0.113.9")
        );
        // From a trusted proxy: the nearest untrusted hop.
        assert_eq!(
            t.client_ip(
                ip("10.1.2.3"),
                Some("6.6.6.6, 198.51.100.7, 10.9.9.9"),
                None
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            t.client_ip(ip("192.168.1.5"), Some("198.51.100.7:4321"), None),
            ip("198.51.100.7")
        );
        // Forwarded (RFC 7239), quoted IPv6 with a port.
        assert_eq!(
            t.client_ip(
                ip("10.0.0.1"),
                None,
                Some(r#"for=192.0.2.60;proto=http, For="[2001:db8:cafe::17]:4711""#)
            ),
            ip("2001:db8:cafe::17")
        );
        // Garbage in the header: stop at the last address that parsed.
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), Some("nonsense"), None),
            ip("10.0.0.1")
        );
        // An IPv4 peer seen through a dual-stack socket.
        assert_eq!(
            t.client_ip(ip("::ffff:10.0.0.1"), Some("198.51.100.7"), None),
            ip("198.51.100.7")
        );
        // Nobody trusted (the default): always the peer.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("127.0.0.1"), Some("1.2.3.4"), Some("for=5.6.7.8")),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ranges_parse_as_cidrs_or_addresses() {
        for good in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "fd00::/8",
            "127.0.0.1",
            "::1",
        ] {
            assert!(good.parse::<IpNet>().is_ok(), "{good}");
        }
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        let n: IpNet = "172.16.0.0/12".parse().unwrap();
        assert!(n.contains(&ip("172.31.255.255")) && !n.contains(&ip("172.32.0.1")));
    }
}
