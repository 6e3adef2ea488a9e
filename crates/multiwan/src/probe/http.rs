//! HTTP probes: `GET` over a pinned TCP connection, good when the status is below 400.
//!
//! Deliberately minimal (HTTP/1.1, `Connection: close`, only the status line is read):
//! the probe asks "does the link reach this web server", not "is the page right".

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{tcp, ProbeEndpoint, ProbeError, ProbeOutcome};

/// How long a resolved host name is reused.
const RESOLVE_TTL: Duration = Duration::from_secs(60);
/// A status line longer than this is not HTTP.
const MAX_HEAD: usize = 4096;

/// A parsed `http://` URL.
#[derive(Debug)]
pub(crate) struct HttpTarget {
    url: String,
    host: Host,
    port: u16,
    /// The `Host` header: the authority as written.
    authority: String,
    /// Path and query, at least `/`.
    path: String,
    /// Addresses a host name resolved to, and when.
    resolved: Mutex<Option<(Vec<IpAddr>, Instant)>>,
}

#[derive(Debug, PartialEq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl HttpTarget {
    pub(crate) fn parse(url: &str) -> Result<HttpTarget, ProbeError> {
        let bad = |reason: &str| ProbeError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(ProbeError::HttpsUnsupported {
                url: url.to_string(),
            });
        }
        if !lower.starts_with("http://") {
            return Err(bad("not an http:// URL"));
        }
        let rest = &url["http://".len()..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let tail = tail.split('#').next().unwrap_or("");
        let path = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let addr = addr.parse().map_err(|_| bad("bad IPv6 address"))?;
            (Host::Ip(IpAddr::V6(addr)), after.strip_prefix(':'))
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let host = match host.parse() {
                Ok(ip) => Host::Ip(ip),
                Err(_) if valid_name(host) => Host::Name(host.to_string()),
                Err(_) => return Err(bad("bad host")),
            };
            (host, port)
        };
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("spaces or control characters in the path"));
        }
        Ok(HttpTarget {
            url: url.to_string(),
            host,
            port,
            authority: authority.to_string(),
            path,
            resolved: Mutex::new(None),
        })
    }

    pub(crate) async fn probe(&self, ep: &ProbeEndpoint) -> ProbeOutcome {
        let ip = match self.address(ep).await {
            Ok(ip) => ip,
            Err(reason) => return ProbeOutcome::Failed(reason),
        };
        // The RTT covers connect, request and status line, not name resolution.
        let started = Instant::now();
        let target = SocketAddr::new(ip, self.port);
        let mut stream = match tcp::connect(ep, target).await {
            Ok(stream) => stream,
            Err(reason) => return ProbeOutcome::Failed(reason),
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: multiwan-probe\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n",
            self.path, self.authority
        );
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return ProbeOutcome::Failed(format!("{}: cannot send the request: {e}", self.url));
        }
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        let line = loop {
            match stream.read(&mut buf).await {
                Ok(0) => {
                    return ProbeOutcome::Failed(format!(
                        "{}: connection closed before a response",
                        self.url
                    ))
                }
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => return ProbeOutcome::Failed(format!("{}: {e}", self.url)),
            }
            if let Some(end) = head.iter().position(|&b| b == b'\n') {
                break String::from_utf8_lossy(&head[..end]).into_owned();
            }
            if head.len() > MAX_HEAD {
                return ProbeOutcome::Failed(format!("{}: no HTTP status line", self.url));
            }
        };
        match status_code(&line) {
            Some(code) if code < 400 => ProbeOutcome::Answered(started.elapsed()),
            Some(code) => ProbeOutcome::Failed(format!("{}: HTTP status {code}", self.url)),
            None => ProbeOutcome::Failed(format!("{}: not an HTTP response", self.url)),
        }
    }

    /// The address to connect to: the literal, or the host name resolved by the system
    /// resolver (cached), in a family the link has a source address for.
    async fn address(&self, ep: &ProbeEndpoint) -> Result<IpAddr, String> {
        let usable = |ip: &IpAddr| match ip {
            IpAddr::V4(_) => ep.source4.is_some(),
            IpAddr::V6(_) => ep.source6.is_some(),
        };
        let name = match &self.host {
            Host::Ip(ip) => return Ok(*ip),
            Host::Name(name) => name,
        };
        let cached = self
            .resolved
            .lock()
            .expect("http resolve cache poisoned")
            .as_ref()
            .filter(|(_, at)| at.elapsed() < RESOLVE_TTL)
            .map(|(ips, _)| ips.clone());
        let ips = match cached {
            Some(ips) => ips,
            None => {
                // getaddrinfo on tokio's blocking pool, never on the runtime thread.
                let ips: Vec<IpAddr> = tokio::net::lookup_host((name.as_str(), self.port))
                    .await
                    .map_err(|e| format!("{}: cannot resolve {name}: {e}", self.url))?
                    .map(|a| a.ip())
                    .collect();
                *self.resolved.lock().expect("http resolve cache poisoned") =
                    Some((ips.clone(), Instant::now()));
                ips
            }
        };
        ips.iter()
            .copied()
            .find(|ip| ip.is_ipv4() && usable(ip))
            .or_else(|| ips.iter().copied().find(usable))
            .ok_or_else(|| {
                format!(
                    "{}: {name} has no address in a family {} has an address for",
                    self.url, ep.ifname
                )
            })
    }
}

fn valid_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// `HTTP/1.1 204 No Content` → 204.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = HttpTarget::parse("http://198.18.0.1:8080/health?x=1#frag").unwrap();
        assert_eq!(t.host, Host::Ip("198.18.0.1".parse().unwrap()));
        assert_eq!((t.port, t.path.as_str()), (8080, "/health?x=1"));
        assert_eq!(t.authority, "198.18.0.1:8080");

        let t = HttpTarget::parse("http://[2001:db8::1]").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = HttpTarget::parse("http://example.com?q").unwrap();
        assert_eq!(t.host, Host::Name("example.com".into()));
        assert_eq!(t.path, "/?q");

        assert!(matches!(
            HttpTarget::parse("https://example.com/"),
            Err(ProbeError::HttpsUnsupported { .. })
        ));
        assert!(HttpTarget::parse("http://a@b/").is_err());
        assert!(HttpTarget::parse("http://host:99999/").is_err());
    }

    #[test]
    fn reads_status_codes() {
        assert_eq!(status_code("HTTP/1.1 204 No Content\r"), Some(204));
        assert_eq!(status_code("HTTP/1.0 503"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
    }
}
