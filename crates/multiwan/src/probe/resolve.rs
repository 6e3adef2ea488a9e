//! Host names of `http`/`https` probe URLs, resolved through the link being probed.
//!
//! The question an URL probe asks is "does this link reach that web site", so the name
//! is resolved the way a client behind that link alone would: a DNS query (`A`, and
//! `AAAA` when the link has an IPv6 address) sent through the link (bound to its device
//! and address, carrying its mark, like every probe) to the nameservers of
//! `/etc/resolv.conf`. Loopback nameservers (a local dnsmasq, unbound or
//! systemd-resolved stub) cannot be reached through a link, so they are skipped, and
//! systemd-resolved's upstream list (`/run/systemd/resolve/resolv.conf`) is used when
//! `/etc/resolv.conf` lists only local ones. When no nameserver is left, the system
//! resolver answers (not pinned to the link), as before this existed.
//!
//! Answers are cached per link for their TTL (clamped to [`MIN_TTL`]..[`MAX_TTL`]).
//! When the link's resolver fails (no answer, SERVFAIL, unreachable), the last good
//! answer is kept and the query retried [`RETRY_AFTER`] later: the probe then says
//! whether the web site is reachable, which is what it is for. A name that does not
//! resolve at all (NXDOMAIN, no address, or no answer and no earlier one) fails the
//! probe with "… does not resolve through <link>". Each link has its own cache, so one
//! link's DNS trouble never fails another link's probes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::time::Instant;

use super::{dns, ProbeEndpoint};

/// Shortest time an answer is reused: a TTL of 0 must not mean a query every round.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest time an answer is reused without asking again.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// After a failed query, how long the last good answer is used before asking again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

const RESOLV_CONF: &str = "/etc/resolv.conf";
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// Where a link's probe URLs are resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Nameservers {
    /// The nameservers of `/etc/resolv.conf` (see the module docs), re-read whenever a
    /// name is looked up again, so a DHCP client rewriting it is followed.
    #[default]
    System,
    /// These, in this order (tests, and callers that know better).
    Fixed(Vec<IpAddr>),
}

/// One link's resolver and answer cache; lives as long as the link's prober, across
/// endpoint changes.
#[derive(Debug)]
pub(crate) struct LinkResolver {
    link: String,
    nameservers: Nameservers,
    /// Per host name (from the config: bounded by the number of URLs). The inner lock
    /// makes concurrent probes of one name wait for one query instead of each sending
    /// their own.
    names: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Entry>>>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    addrs: Vec<IpAddr>,
    fresh_until: Instant,
    /// After a failed query: not before this.
    retry_at: Option<Instant>,
}

/// A query that did not give an address.
enum Miss {
    /// The name has no address (NXDOMAIN, or no A/AAAA record): an answer, not a
    /// failure of the resolver.
    NoAddress(String),
    /// The resolver failed: the last good answer stays usable.
    Failed(String),
}

impl LinkResolver {
    pub(crate) fn new(link: String, nameservers: Nameservers) -> LinkResolver {
        LinkResolver {
            link,
            nameservers,
            names: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `host`, asking through the link when the cached answer is stale,
    /// never past `deadline`. The error is a probe's failure reason.
    pub(crate) async fn resolve(
        &self,
        ep: &ProbeEndpoint,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<IpAddr>, String> {
        let slot = Arc::clone(
            self.names
                .lock()
                .expect("resolver cache poisoned")
                .entry(host.to_string())
                .or_default(),
        );
        let mut entry = slot.lock().await;
        let now = Instant::now();
        if let Some(e) = entry.as_ref() {
            let retry_later = e.retry_at.is_some_and(|at| now < at);
            if now < e.fresh_until || retry_later {
                return Ok(e.addrs.clone());
            }
        }
        let servers = match &self.nameservers {
            Nameservers::Fixed(list) => list.clone(),
            Nameservers::System => system_nameservers().await,
        };
        let result = if servers.is_empty() {
            system_lookup(host, port).await
        } else {
            match tokio::time::timeout_at(deadline, self.query(ep, &servers, host)).await {
                Ok(result) => result,
                Err(_) => Err(Miss::Failed(format!(
                    "no answer from {} in time",
                    list(&servers)
                ))),
            }
        };
        let now = Instant::now();
        match result {
            Ok((addrs, ttl)) => {
                *entry = Some(Entry {
                    addrs: addrs.clone(),
                    fresh_until: now + ttl.clamp(MIN_TTL, MAX_TTL),
                    retry_at: None,
                });
                Ok(addrs)
            }
            // The probe itself tells whether the site is still there.
            Err(Miss::Failed(_)) if entry.is_some() => {
                let e = entry.as_mut().expect("checked");
                e.retry_at = Some(now + RETRY_AFTER);
                Ok(e.addrs.clone())
            }
            Err(Miss::Failed(why) | Miss::NoAddress(why)) => {
                *entry = None;
                Err(format!(
                    "{host} does not resolve through {}: {why}",
                    self.link
                ))
            }
        }
    }

    /// Asks every nameserver at once (through the link); the first conclusive answer
    /// wins.
    async fn query(
        &self,
        ep: &ProbeEndpoint,
        servers: &[IpAddr],
        host: &str,
    ) -> Result<(Vec<IpAddr>, Duration), Miss> {
        let mut name = Name::from_ascii(host)
            .map_err(|e| Miss::NoAddress(format!("{host:?} is not a DNS name: {e}")))?;
        // As written in the URL, no search domains.
        name.set_fqdn(true);
        let mut types = Vec::new();
        if ep.source4.is_some() {
            types.push(RecordType::A);
        }
        if ep.source6.is_some() {
            types.push(RecordType::AAAA);
        }
        // A nameserver of a family the link has no address in cannot be asked through it.
        let mut asks: FuturesUnordered<_> = servers
            .iter()
            .filter(|server| match server {
                IpAddr::V4(_) => ep.source4.is_some(),
                IpAddr::V6(_) => ep.source6.is_some(),
            })
            .map(|&server| ask(ep, server, &name, &types))
            .collect();
        if asks.is_empty() {
            return Err(Miss::Failed(format!(
                "no nameserver ({}) in a family {} has an address in",
                list(servers),
                ep.ifname
            )));
        }
        let mut failures = Vec::new();
        while let Some(result) = asks.next().await {
            match result {
                Err(Miss::Failed(why)) => failures.push(why),
                conclusive => return conclusive,
            }
        }
        Err(Miss::Failed(failures.join("; ")))
    }
}

/// One nameserver: the wanted record types in parallel.
async fn ask(
    ep: &ProbeEndpoint,
    server: IpAddr,
    name: &Name,
    types: &[RecordType],
) -> Result<(Vec<IpAddr>, Duration), Miss> {
    let answers =
        futures::future::join_all(types.iter().map(|&t| dns::query(ep, server, name, t))).await;
    let mut addrs = Vec::new();
    let mut ttl: Option<u32> = None;
    let mut nxdomain = false;
    let mut failure = None;
    for answer in answers {
        let message = match answer {
            Ok(message) => message,
            Err(why) => {
                failure = Some(why);
                continue;
            }
        };
        match message.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => {
                nxdomain = true;
                continue;
            }
            code => {
                failure = Some(format!("{server} answered {}", dns::rcode_text(code)));
                continue;
            }
        }
        // A CNAME chain comes with its addresses: take every address record.
        for record in &message.answers {
            let addr = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            addrs.push(addr);
            ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        }
    }
    if !addrs.is_empty() {
        return Ok((addrs, Duration::from_secs(ttl.unwrap_or(0).into())));
    }
    match failure {
        Some(why) if !nxdomain => Err(Miss::Failed(why)),
        _ if nxdomain => Err(Miss::NoAddress(format!("{server} answered NXDOMAIN"))),
        _ => Err(Miss::NoAddress(format!("{server} knows no address for it"))),
    }
}

fn list(servers: &[IpAddr]) -> String {
    servers
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The nameservers the link's queries go to (module docs): non-loopback ones of
/// `/etc/resolv.conf`, else of systemd-resolved's upstream list.
async fn system_nameservers() -> Vec<IpAddr> {
    for path in [RESOLV_CONF, RESOLVED_UPSTREAMS] {
        let found = read_nameservers(Path::new(path)).await;
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

async fn read_nameservers(path: &Path) -> Vec<IpAddr> {
    // tokio::fs reads on the blocking pool, off the event loop.
    match tokio::fs::read_to_string(path).await {
        Ok(text) => parse_nameservers(&text),
        Err(_) => Vec::new(),
    }
}

/// `nameserver` lines that can be reached through a link: loopback addresses and
/// scoped (`%if`) ones are left out.
pub(crate) fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<IpAddr>().ok()
        })
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect()
}

/// No nameserver reachable through a link: the system resolver, on tokio's blocking
/// pool. Its answers carry no TTL; they count as fresh for [`MIN_TTL`] × 12 (a minute).
async fn system_lookup(host: &str, port: u16) -> Result<(Vec<IpAddr>, Duration), Miss> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if addrs.is_empty() {
                Err(Miss::NoAddress("the system resolver has no address".into()))
            } else {
                Ok((addrs, MIN_TTL * 12))
            }
        }
        Err(e) => Err(Miss::Failed(format!("the system resolver failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_reachable_through_a_link() {
        let text = "# generated\nsearch lan\nnameserver 127.0.0.53\nnameserver 198.51.100.53\n\
                    nameserver ::1\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\n\
                    options edns0\n";
        let expected: Vec<IpAddr> = vec![
            "198.51.100.53".parse().unwrap(),
            "2001:db8::53".parse().unwrap(),
        ];
        assert_eq!(parse_nameservers(text), expected);
        assert!(parse_nameservers("nameserver 127.0.0.1\n").is_empty());
    }
}
