//! HTTP and HTTPS probes: `GET` over a pinned TCP connection (TLS on top for
//! `https://`), good when the status is below 400.
//!
//! Deliberately minimal (HTTP/1.1, `Connection: close`, only the status line is read):
//! the probe asks "does the link reach this web server", not "is the page right".
//! Not hyper: a probe needs one request and one status line, and hyper's client would
//! add a connection task per probe and four crates to read it; the request written here
//! is a fixed string, and the status line is all that is parsed.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::resolve::LinkResolver;
use super::tls::Trust;
use super::{tcp, ProbeEndpoint, ProbeError, ProbeOutcome};

/// A status line longer than this is not HTTP.
const MAX_HEAD: usize = 4096;

/// A parsed `http://` or `https://` URL.
#[derive(Debug)]
pub(crate) struct HttpTarget {
    url: String,
    tls: bool,
    host: Host,
    port: u16,
    /// The `Host` header: the authority as written.
    authority: String,
    /// Path and query, at least `/`.
    path: String,
}

#[derive(Debug, PartialEq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// What a link's URL probes share: its resolver and its TLS trust anchors.
pub(crate) struct Context<'a> {
    pub(crate) resolver: &'a LinkResolver,
    pub(crate) trust: &'a Trust,
}

impl HttpTarget {
    pub(crate) fn parse(url: &str) -> Result<HttpTarget, ProbeError> {
        let bad = |reason: &str| ProbeError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let lower = url.to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("https://") {
            (true, &url["https://".len()..])
        } else if lower.starts_with("http://") {
            (false, &url["http://".len()..])
        } else {
            return Err(bad("not an http:// or https:// URL"));
        };
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
            None if tls => 443,
            None => 80,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("spaces or control characters in the path"));
        }
        Ok(HttpTarget {
            url: url.to_string(),
            tls,
            host,
            port,
            authority: authority.to_string(),
            path,
        })
    }

    /// One probe. Name resolution (through the link, [`LinkResolver`]) gets at most half
    /// of the time left until `deadline`, so that a slow resolver with a good cached
    /// answer still leaves time to probe.
    pub(crate) async fn probe(
        &self,
        ep: &ProbeEndpoint,
        cx: &Context<'_>,
        deadline: Instant,
    ) -> ProbeOutcome {
        match self.exchange(ep, cx, deadline).await {
            Ok(outcome) => outcome,
            Err(reason) => ProbeOutcome::Failed(format!("{}: {reason}", self.url)),
        }
    }

    async fn exchange(
        &self,
        ep: &ProbeEndpoint,
        cx: &Context<'_>,
        deadline: Instant,
    ) -> Result<ProbeOutcome, String> {
        let ip = self.address(ep, cx.resolver, deadline).await?;
        // The RTT covers connect, TLS handshake, request and status line, not name
        // resolution.
        let started = Instant::now();
        let stream = tcp::connect(ep, SocketAddr::new(ip, self.port)).await?;
        let line = if self.tls {
            let host = match &self.host {
                Host::Ip(ip) => ip.to_string(),
                Host::Name(name) => name.clone(),
            };
            let stream = cx.trust.handshake(stream, &host).await?;
            self.status_line(stream).await?
        } else {
            self.status_line(stream).await?
        };
        Ok(match status_code(&line) {
            Some(code) if code < 400 => ProbeOutcome::Answered(started.elapsed()),
            Some(code) => ProbeOutcome::Failed(format!("{}: HTTP status {code}", self.url)),
            None => ProbeOutcome::Failed(format!("{}: not an HTTP response", self.url)),
        })
    }

    /// Sends the request and reads the response's first line.
    async fn status_line<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
    ) -> Result<String, String> {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: multiwan-probe\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n",
            self.path, self.authority
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Err("connection closed before a response".to_string()),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
            if let Some(end) = head.iter().position(|&b| b == b'\n') {
                return Ok(String::from_utf8_lossy(&head[..end]).into_owned());
            }
            if head.len() > MAX_HEAD {
                return Err("no HTTP status line".to_string());
            }
        }
    }

    /// The address to connect to: the literal, or the host name resolved through the
    /// link, in a family the link has a source address for (IPv4 first).
    async fn address(
        &self,
        ep: &ProbeEndpoint,
        resolver: &LinkResolver,
        deadline: Instant,
    ) -> Result<IpAddr, String> {
        let name = match &self.host {
            Host::Ip(ip) => return Ok(*ip),
            Host::Name(name) => name,
        };
        let now = Instant::now();
        let dns_deadline = now + deadline.saturating_duration_since(now) / 2;
        let ips = resolver.resolve(ep, name, self.port, dns_deadline).await?;
        let usable = |ip: &IpAddr| match ip {
            IpAddr::V4(_) => ep.source4.is_some(),
            IpAddr::V6(_) => ep.source6.is_some(),
        };
        ips.iter()
            .copied()
            .find(|ip| ip.is_ipv4() && usable(ip))
            .or_else(|| ips.iter().copied().find(usable))
            .ok_or_else(|| {
                format!(
                    "{name} has no address in a family {} has an address for",
                    ep.ifname
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

        let t = HttpTarget::parse("https://example.com/x").unwrap();
        assert!(t.tls);
        assert_eq!((t.port, t.path.as_str()), (443, "/x"));
        assert!(HttpTarget::parse("ftp://example.com/").is_err());
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
