//! Health-check probes and the per-link round scheduler.
//!
//! # What leaves the box
//!
//! Every probe is pinned to its link, whatever the routing tables say (SPEC §2.6): its
//! socket is bound to the link's device (`SO_BINDTODEVICE`), to the link's own source
//! address, and carries the link's firewall mark (`SO_MARK`), so the `fwmark … lookup
//! <link table>` rule routes it through the link even while the link is out of service
//! and the main table points elsewhere. The mark alone would not be enough (the source
//! address is chosen at `connect()`, before any mark-based re-routing), and the device
//! binding alone would not be either: a socket bound to a device whose route lookup
//! fails assumes the target is on-link and ARPs for it (KERNEL-NOTES).
//!
//! Methods ([`crate::config::Probe`]):
//! - `icmp`: echo requests on **one raw socket per link and family**, shared by all
//!   targets of the link. A raw socket sees every ICMP packet arriving on its device
//!   for its address, so a classic BPF filter in the kernel passes only echo replies
//!   carrying this socket's ICMP id (and ICMP errors, matched in user space by the
//!   id/sequence quoted inside them): other links' and other programs' pings never
//!   wake the daemon. Replies are matched by id + sequence + source address.
//! - `tcp`: a connect to `target:port` must complete; a refused connection (RST) or an
//!   ICMP error concludes the probe at once as failed. The probe connection is closed
//!   with an RST (`SO_LINGER` 0) so probing leaves no `TIME_WAIT` behind.
//! - `http`: `GET` the URL over such a connection; a status below 400 is good.
//! - `https`: the same over TLS (rustls): SNI and the certificate verified for the URL's
//!   host against the system's trust anchors or the check's `ca_file`; a certificate
//!   that does not verify fails the probe with the reason ("certificate not valid for
//!   name X", "… unknown issuer"). An `https://` URL under method `http` is probed the
//!   same way, against the system's anchors.
//!
//!   URL host names are resolved through the link itself ([`resolve`]: a DNS query
//!   pinned like a probe, to `/etc/resolv.conf`'s nameservers), cached per link for the
//!   answer's TTL, the last good answer kept while the link's resolver fails.
//! - `dns`: an `A` query for the configured name, sent to the resolver on a fresh UDP
//!   socket (random port and id each time); a `NOERROR` answer is good, any other
//!   response code fails the probe, an ICMP port unreachable fails it at once.
//! - `arp`: an ARP request for the link's IPv4 gateway on an `AF_PACKET` socket bound to
//!   the interface; a reply from the gateway answers every request still pending (they
//!   all ask the same question). Routing and marks do not apply at this layer.
//! - `none`: nothing is probed.
//!
//! An immediate error (`ENETUNREACH`, `EHOSTUNREACH` at send, an ICMP error reply, a
//! refused connection) concludes a probe at once as [`ProbeOutcome::Failed`] with the
//! reason, without waiting for the timeout; silence until the timeout is
//! [`ProbeOutcome::Lost`].
//!
//! # Rounds, and fast failure detection
//!
//! [`spawn_link_prober`] runs one task per link. Every `interval` it starts a *round*:
//! one probe to every target. Rounds overlap when `timeout > interval`. A round is
//! reported on the channel as soon as its outcome is decided: good as soon as
//! `min_targets` targets answered, bad as soon as too many were lost or failed for it to
//! become good, and never later than `timeout` after it started (what is still
//! unanswered then is lost). Probes still in flight when their round is decided keep
//! running, and their outcomes follow in a *late* report of the same round
//! ([`RoundReport::late`]), so that loss and RTT count every probe sent.
//!
//! Detecting a dead link needs `down_after` consecutive bad rounds. At the normal pace
//! that takes `down_after × interval` after the first loss, plus the timeout. To do
//! better, the scheduler gets *suspicious*:
//!
//! - `suspect_after = clamp(4 × recent mean RTT, 10 ms, timeout / 2)`, where the RTT is
//!   the time recent rounds took to become good (an EWMA; `timeout / 2` before any round
//!   was good);
//! - when the newest round is still undecided `suspect_after` after it started, or a
//!   round was decided bad, the scheduler starts extra rounds spaced by `suspect_after`
//!   (not by `interval`), until enough rounds are in flight to confirm `down_after` bad
//!   rounds in a row (`down_after − consecutive bad rounds so far`);
//! - as soon as a round is good again, or once `down_after` bad rounds in a row have been
//!   reported (the link is down; recovery is counted at the normal pace), it goes back to
//!   one round per `interval`.
//!
//! The `down_after` rounds needed then all time out within a few `suspect_after` of
//! each other, about one `timeout` after the first loss. Example: interval 200 ms,
//! timeout 200 ms, down_after 3, RTT below 2.5 ms (suspect_after 10 ms). A blackhole
//! starts at t; the next round starts at t + 0…200 ms, is suspicious 10 ms later, two
//! extra rounds follow 10 ms apart, and the three rounds time out 200, 210 and 220 ms
//! after the first one started: the third bad round is reported ~250–450 ms after the
//! blackhole began, instead of ~650–850 ms at the normal pace. A single lost packet on a
//! healthy link costs one or two extra rounds, which end as soon as one is good.
//!
//! Reports are sent in the order rounds are decided (which can differ from the order
//! they started). Round numbers (`seq`) increase over the prober's life, across
//! endpoint changes.
//!
//! # Endpoints
//!
//! The prober follows a [`tokio::sync::watch`] of [`ProbeEndpoint`]: `None` pauses it
//! (the link is waiting for an interface, address or gateway); any change (new address,
//! ifindex or gateway after a PPP reconnect or DHCP renew) closes the sockets, abandons
//! the rounds in flight without reporting them (they were probing something that no
//! longer exists) and starts over at once with sockets opened for the new endpoint.
//!
//! Sockets are created in the network namespace of the thread that opens them, i.e. of
//! the runtime thread running the prober.

mod arp;
mod dns;
mod http;
mod icmp;
mod resolve;
mod rounds;
mod tcp;
mod tls;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

pub use resolve::Nameservers;
pub use rounds::{
    spawn_link_prober, spawn_link_prober_with, ProbeOptions, ProbeOutcome, RoundReport,
};

use crate::config::{Check, Probe};

/// Where and how a link's probes leave: everything the kernel needs to pin them to the
/// link. Built by the daemon from the link's interface facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEndpoint {
    pub ifname: String,
    pub ifindex: u32,
    /// Source of IPv4 probes; `None`: IPv4 targets fail ("no IPv4 address").
    pub source4: Option<Ipv4Addr>,
    /// Source of IPv6 probes (a link-local one is scoped to `ifindex`).
    pub source6: Option<Ipv6Addr>,
    /// The link's firewall mark (`SO_MARK`); 0 sets none.
    pub mark: u32,
    /// The IPv4 next hop, probed by `arp`.
    pub gateway4: Option<Ipv4Addr>,
}

/// Why a probe (or every probe to a target) cannot be sent. Its text becomes the reason
/// of [`ProbeOutcome::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot {what} on {ifname}: {source}")]
    Io {
        what: &'static str,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("{ifname} has no {family} address to probe {target} from")]
    NoAddress {
        family: &'static str,
        ifname: String,
        target: String,
    },
    #[error("{ifname} has no IPv4 gateway for the arp probe")]
    NoGateway { ifname: String },
    #[error("{ifname} is not an Ethernet-like interface; arp probes need one")]
    NotEthernet { ifname: String },
    #[error("cannot verify https certificates: {reason}")]
    TrustAnchors { reason: String },
    #[error("cannot probe {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("dns query name {name:?} is not a valid name: {reason}")]
    BadQueryName { name: String, reason: String },
}

impl ProbeError {
    fn io(what: &'static str, ifname: &str, source: io::Error) -> ProbeError {
        ProbeError::Io {
            what,
            ifname: ifname.to_string(),
            source,
        }
    }
}

/// Checks, at start-up, what cannot be probed at all (whatever the endpoint): URLs and
/// DNS names that do not parse, and a `ca_file` that cannot be read. The daemon should
/// log the error; the prober still runs and reports such targets as failed every round.
/// (The system's trust store is not read here: that is done off the event loop, by the
/// first https probe.)
pub fn check_supported(check: &Check) -> Result<(), ProbeError> {
    match &check.probe {
        Probe::Http { urls } => urls
            .iter()
            .try_for_each(|url| http::HttpTarget::parse(url).map(drop)),
        Probe::Https { urls, ca_file } => {
            urls.iter()
                .try_for_each(|url| http::HttpTarget::parse(url).map(drop))?;
            match ca_file {
                Some(path) => tls::check_anchors(Some(path))
                    .map_err(|reason| ProbeError::TrustAnchors { reason }),
                None => Ok(()),
            }
        }
        Probe::Dns { query, .. } => dns::query_name(query).map(drop),
        _ => Ok(()),
    }
}

/// The labels under which a probe's targets appear in [`RoundReport::outcomes`], in
/// target order: addresses as written (`tcp`: without the port), URLs for `http`, and
/// `gateway` for `arp` (the gateway's address changes with the endpoint).
pub fn target_labels(probe: &Probe) -> Vec<String> {
    match probe {
        Probe::Icmp { targets } | Probe::Tcp { targets, .. } => {
            targets.iter().map(IpAddr::to_string).collect()
        }
        Probe::Http { urls } | Probe::Https { urls, .. } => urls.clone(),
        Probe::Dns { resolvers, .. } => resolvers.iter().map(IpAddr::to_string).collect(),
        Probe::Arp => vec!["gateway".to_string()],
        Probe::None => Vec::new(),
    }
}

/// One link's probing resources for one endpoint: the shared sockets (ICMP, ARP) and the
/// parsed targets. Opened for an endpoint, dropped (closing its sockets) when the
/// endpoint changes. Must be opened inside a tokio runtime.
pub struct LinkProber {
    endpoint: ProbeEndpoint,
    kind: Kind,
    shared: Arc<LinkShared>,
}

/// What a link's probing keeps across endpoint changes: the resolver cache of its URL
/// host names and its TLS trust anchors.
pub(crate) struct LinkShared {
    resolver: resolve::LinkResolver,
    trust: tls::Trust,
}

impl LinkShared {
    pub(crate) fn new(link: &str, probe: &Probe, options: &ProbeOptions) -> LinkShared {
        let ca_file = match probe {
            Probe::Https { ca_file, .. } => ca_file.clone(),
            _ => None,
        };
        LinkShared {
            resolver: resolve::LinkResolver::new(link.to_string(), options.nameservers.clone()),
            trust: tls::Trust::new(ca_file),
        }
    }
}

enum Kind {
    Icmp(icmp::IcmpProber),
    Tcp {
        targets: Vec<IpAddr>,
        port: u16,
    },
    Http(Vec<Result<http::HttpTarget, String>>),
    Dns {
        resolvers: Vec<IpAddr>,
        query: Result<hickory_proto::rr::Name, String>,
    },
    Arp(Result<arp::ArpProber, String>),
    None,
}

impl LinkProber {
    /// Opens the link's shared sockets. Never fails as a whole: what cannot be opened
    /// makes the probes that need it fail with the reason, so a broken link shows up as
    /// bad rounds (and the next endpoint change retries).
    pub(crate) fn open(
        probe: &Probe,
        endpoint: &ProbeEndpoint,
        shared: Arc<LinkShared>,
    ) -> LinkProber {
        let kind = match probe {
            Probe::Icmp { targets } => Kind::Icmp(icmp::IcmpProber::open(targets, endpoint)),
            Probe::Tcp { targets, port } => Kind::Tcp {
                targets: targets.clone(),
                port: *port,
            },
            Probe::Http { urls } | Probe::Https { urls, .. } => Kind::Http(
                urls.iter()
                    .map(|u| http::HttpTarget::parse(u).map_err(|e| e.to_string()))
                    .collect(),
            ),
            Probe::Dns { resolvers, query } => Kind::Dns {
                resolvers: resolvers.clone(),
                query: dns::query_name(query).map_err(|e| e.to_string()),
            },
            Probe::Arp => Kind::Arp(arp::ArpProber::open(endpoint).map_err(|e| e.to_string())),
            Probe::None => Kind::None,
        };
        LinkProber {
            endpoint: endpoint.clone(),
            kind,
            shared,
        }
    }

    pub fn endpoint(&self) -> &ProbeEndpoint {
        &self.endpoint
    }

    /// Probes target `index` (in config order) once. The outcome is decided by
    /// `deadline` at the latest ([`ProbeOutcome::Lost`] then). The future owns what it
    /// needs, so many can run at once (overlapping rounds).
    pub fn probe(
        self: &Arc<Self>,
        index: usize,
        deadline: Instant,
    ) -> impl std::future::Future<Output = ProbeOutcome> + Send + 'static {
        let this = Arc::clone(self);
        async move {
            match tokio::time::timeout_at(deadline, this.probe_inner(index, deadline)).await {
                Ok(outcome) => outcome,
                Err(_) => ProbeOutcome::Lost,
            }
        }
    }

    async fn probe_inner(&self, index: usize, deadline: Instant) -> ProbeOutcome {
        let ep = &self.endpoint;
        match &self.kind {
            Kind::Icmp(icmp) => icmp.ping(index).await,
            Kind::Tcp { targets, port } => match targets.get(index) {
                Some(ip) => tcp::probe(ep, SocketAddr::new(*ip, *port)).await,
                None => no_such_target(index),
            },
            Kind::Http(targets) => match targets.get(index) {
                Some(Ok(target)) => {
                    let cx = http::Context {
                        resolver: &self.shared.resolver,
                        trust: &self.shared.trust,
                    };
                    target.probe(ep, &cx, deadline).await
                }
                Some(Err(reason)) => ProbeOutcome::Failed(reason.clone()),
                None => no_such_target(index),
            },
            Kind::Dns { resolvers, query } => match (resolvers.get(index), query) {
                (Some(resolver), Ok(name)) => dns::probe(ep, *resolver, name).await,
                (Some(_), Err(reason)) => ProbeOutcome::Failed(reason.clone()),
                (None, _) => no_such_target(index),
            },
            Kind::Arp(Ok(arp)) if index == 0 => arp.probe().await,
            Kind::Arp(Err(reason)) if index == 0 => ProbeOutcome::Failed(reason.clone()),
            Kind::Arp(_) | Kind::None => no_such_target(index),
        }
    }
}

fn no_such_target(index: usize) -> ProbeOutcome {
    ProbeOutcome::Failed(format!("no target #{index}"))
}

/// The local address a probe to `target` is sent from (port 0: any).
fn source_for(ep: &ProbeEndpoint, target: IpAddr) -> Result<SocketAddr, ProbeError> {
    let missing = |family| ProbeError::NoAddress {
        family,
        ifname: ep.ifname.clone(),
        target: target.to_string(),
    };
    match target {
        IpAddr::V4(_) => ep
            .source4
            .map(|a| SocketAddr::V4(SocketAddrV4::new(a, 0)))
            .ok_or_else(|| missing("IPv4")),
        IpAddr::V6(_) => ep
            .source6
            .map(|a| {
                // A link-local source only means something together with its interface.
                let scope = if a.is_unicast_link_local() {
                    ep.ifindex
                } else {
                    0
                };
                SocketAddr::V6(SocketAddrV6::new(a, 0, 0, scope))
            })
            .ok_or_else(|| missing("IPv6")),
    }
}

/// A non-blocking socket pinned to the link: bound to its device and to `local`, and
/// carrying its mark (see the module docs for why all three are needed).
fn link_socket(
    ep: &ProbeEndpoint,
    local: SocketAddr,
    ty: Type,
    protocol: Protocol,
) -> Result<Socket, ProbeError> {
    let ifname = &ep.ifname;
    let socket = Socket::new(Domain::for_address(local), ty, Some(protocol))
        .map_err(|e| ProbeError::io("open a probe socket", ifname, e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| ProbeError::io("make a probe socket non-blocking", ifname, e))?;
    socket
        .bind_device(Some(ifname.as_bytes()))
        .map_err(|e| ProbeError::io("bind a probe socket to the device", ifname, e))?;
    if ep.mark != 0 {
        socket
            .set_mark(ep.mark)
            .map_err(|e| ProbeError::io("set the link's mark on a probe socket", ifname, e))?;
    }
    socket
        .bind(&local.into())
        .map_err(|e| ProbeError::io("bind a probe socket to the link's address", ifname, e))?;
    Ok(socket)
}

/// Hands a socket over to the runtime's reactor (for the shared ICMP and ARP sockets,
/// which tokio has no type for).
fn register(socket: Socket, ifname: &str) -> Result<AsyncFd<Socket>, ProbeError> {
    // SAFETY: the `Socket` owns its descriptor and is moved into the `AsyncFd`, which
    // never replaces it: the descriptor stays open and the same for the AsyncFd's life.
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|e| ProbeError::io("register a probe socket with the runtime", ifname, e.into()))
}

/// Random bits for ICMP ids, DNS ids: unpredictable values make spoofed answers
/// (which would keep a dead link "up") hard to produce.
fn random_u16() -> u16 {
    let mut buf = [0u8; 2];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if n == 2 {
        u16::from_ne_bytes(buf)
    } else {
        // Entropy pool not ready this early in boot: uniqueness is what matters most.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        (t ^ std::process::id() ^ (t >> 16)) as u16
    }
}

/// Reads one datagram into `buf` (socket2 reads into uninitialised memory).
fn recv_from(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>)> {
    // SAFETY: `[u8]` is valid as `[MaybeUninit<u8>]`, and recv only writes initialised
    // bytes into it.
    let uninit = unsafe {
        std::slice::from_raw_parts_mut(
            buf.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
            buf.len(),
        )
    };
    let (n, from) = socket.recv_from(uninit)?;
    Ok((n, from.as_socket()))
}

/// A short description of an I/O error for a probe's reason (no "os error N" noise).
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let text = io::Error::from_raw_os_error(code).to_string();
            text.split(" (os error").next().unwrap_or(&text).to_string()
        }
        None => e.to_string(),
    }
}
