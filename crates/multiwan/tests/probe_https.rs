//! https probes against real TLS servers (`openssl s_server -WWW`) in the lab's inet
//! namespace, with certificates from a test CA generated at test time (rcgen), and URL
//! host names resolved through the link by a DNS responder that only ISP 1 can reach.
//! Needs root and the `openssl` program; never skipped.
//!
//! Layout: the web site `probe.example` is 198.18.0.1 (inet), reachable through both
//! links. Its name is known only to ISP 1's resolver, 198.51.100.53 on ISP 1's
//! loopback: inet has no route to it, so a query sent through link 2 goes nowhere.

use std::future::Future;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use multiwan::config::{Check, Probe};
use multiwan::probe::{
    check_supported, spawn_link_prober_with, Nameservers, ProbeEndpoint, ProbeOptions,
    ProbeOutcome, RoundReport,
};
use netns_lab::Lab;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

mod tls_lab;
use tls_lab::{pki, require_openssl, tls_server, TempDir};

const SITE: &str = "probe.example";
const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// Ports of the three servers: a good certificate, one for another name, one from a CA
/// the probe does not know.
const GOOD: u16 = 8443;
const OTHER_NAME: u16 = 8444;
const UNKNOWN_CA: u16 = 8445;

/// Answer modes of the resolver.
const ANSWER: u16 = 0;
const SERVFAIL: u16 = 2;

/// A DNS responder on ISP 1's loopback: `probe.example A` → 198.18.0.1 (TTL 1 s, which
/// the probe stretches to its minimum), NXDOMAIN for other names. Counts queries.
struct Resolver {
    mode: Arc<AtomicU16>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    control: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on a descriptor we own; wakes the blocked recv.
        unsafe { libc::shutdown(self.control.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn resolver(lab: &Lab, site: Ipv4Addr) -> Resolver {
    lab.isp(1)
        .ip(&["addr", "add", &format!("{RESOLVER}/32"), "dev", "lo"])
        .unwrap();
    let socket = lab
        .isp(1)
        .run(|| UdpSocket::bind((RESOLVER, 53)))
        .unwrap()
        .unwrap();
    let control = OwnedFd::from(socket.try_clone().unwrap());
    let (mode, queries, stop) = (
        Arc::new(AtomicU16::new(ANSWER)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (m, q, s) = (Arc::clone(&mode), Arc::clone(&queries), Arc::clone(&stop));
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !s.load(Ordering::SeqCst) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            q.fetch_add(1, Ordering::SeqCst);
            if let Some(answer) = answer(&query, site, m.load(Ordering::SeqCst)) {
                let _ = socket.send_to(&answer, from);
            }
        }
    });
    Resolver {
        mode,
        queries,
        stop,
        control,
        thread: Some(thread),
    }
}

fn answer(query: &Message, site: Ipv4Addr, mode: u16) -> Option<Vec<u8>> {
    let question = query.queries.first()?.clone();
    let known = question.name().to_string() == format!("{SITE}.");
    let code = match (mode, known) {
        (SERVFAIL, _) => ResponseCode::ServFail,
        (_, true) => ResponseCode::NoError,
        (_, false) => ResponseCode::NXDomain,
    };
    let mut answer = Message::error_msg(query.metadata.id, OpCode::Query, code);
    answer.metadata.message_type = MessageType::Response;
    answer.add_query(question.clone());
    if code == ResponseCode::NoError && question.query_type() == hickory_proto::rr::RecordType::A {
        answer.add_answer(Record::from_rdata(
            question.name().clone(),
            1,
            RData::A(A(site)),
        ));
    }
    answer.to_vec().ok()
}

fn check(urls: Vec<String>, ca_file: Option<PathBuf>) -> Check {
    Check {
        probe: Probe::Https { urls, ca_file },
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(1000),
        min_targets: 1,
        down_after: 3,
        up_after: 2,
        max_loss: 0,
        max_rtt: Duration::ZERO,
        window: 20,
    }
}

fn endpoint(lab: &Lab, k: usize) -> ProbeEndpoint {
    ProbeEndpoint {
        ifname: lab.wan_if(k),
        ifindex: lab.wan_ifindex(k).unwrap(),
        source4: Some(lab.wan_addr(k)),
        source6: None,
        mark: 0x100 * k as u32,
        gateway4: Some(lab.gateway(k)),
    }
}

/// Runs `body` on a current-thread runtime in a thread inside the router's namespace.
fn in_router<Fut: Future<Output = ()>>(lab: &Lab, body: impl FnOnce() -> Fut + Send + 'static) {
    let thread = lab
        .router()
        .spawn_thread(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(body())
        })
        .unwrap();
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

struct Prober {
    _endpoint: watch::Sender<Option<ProbeEndpoint>>,
    reports: mpsc::Receiver<RoundReport>,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    fn start(link: &str, check: Check, ep: ProbeEndpoint) -> Prober {
        let (endpoint, rx) = watch::channel(Some(ep));
        let (tx, reports) = mpsc::channel(64);
        let options = ProbeOptions {
            nameservers: Nameservers::Fixed(vec![RESOLVER.into()]),
        };
        let task = spawn_link_prober_with(link.to_string(), check, rx, tx, options);
        Prober {
            _endpoint: endpoint,
            reports,
            task,
        }
    }

    /// The next decided round.
    async fn next(&mut self) -> RoundReport {
        loop {
            let r = tokio::time::timeout(Duration::from_secs(10), self.reports.recv())
                .await
                .expect("no round within 10 s")
                .expect("prober ended");
            if !r.late {
                return r;
            }
        }
    }

    /// Decided rounds until `n` in a row are `good` (or bad); returns the last.
    async fn until(&mut self, good: bool, n: usize, within: Duration) -> RoundReport {
        let deadline = Instant::now() + within;
        let mut run = 0;
        let mut seen = Vec::new();
        loop {
            let r = tokio::time::timeout_at(deadline, self.reports.recv())
                .await
                .unwrap_or_else(|_| panic!("no {n} rounds good={good} in a row; saw {seen:#?}"))
                .expect("prober ended");
            if r.late {
                continue;
            }
            run = if r.good == good { run + 1 } else { 0 };
            if run == n {
                return r;
            }
            seen.push(r);
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn failure(r: &RoundReport) -> String {
    match &r.outcomes[..] {
        [(_, ProbeOutcome::Failed(why))] => why.clone(),
        other => panic!("expected one failed probe, got {other:?}"),
    }
}

#[test]
fn https_probe_verifies_the_certificate_and_resolves_through_its_link() {
    require_openssl();
    let lab = Arc::new(
        Lab::builder("probe-https")
            .isps(2)
            .servers(1)
            .build()
            .unwrap(),
    );
    let dir = TempDir::new("https");
    std::fs::write(dir.0.join("health"), "ok\n").unwrap();
    let pki = pki(&dir.0, SITE);
    let _servers = [
        tls_server(&lab, &dir.0, GOOD, &pki.good),
        tls_server(&lab, &dir.0, OTHER_NAME, &pki.other_name),
        tls_server(&lab, &dir.0, UNKNOWN_CA, &pki.unknown_ca),
    ];
    let dns = resolver(&lab, lab.server(1));
    let url = |port: u16| format!("https://{SITE}:{port}/health");
    let ca_file = Some(pki.ca_file.clone());
    assert!(check_supported(&check(vec![url(GOOD)], ca_file.clone())).is_ok());
    let missing = check(vec![url(GOOD)], Some(dir.0.join("missing.pem")));
    let err = check_supported(&missing).unwrap_err().to_string();
    assert!(err.contains("cannot read ca_file"), "{err}");

    let (ep1, ep2) = (endpoint(&lab, 1), endpoint(&lab, 2));
    let (mode, queries) = (Arc::clone(&dns.mode), Arc::clone(&dns.queries));
    in_router(&lab, move || async move {
        let within = Duration::from_secs(10);
        // Up: the certificate verifies for the name, from the test CA.
        let mut good = Prober::start("isp1", check(vec![url(GOOD)], ca_file.clone()), ep1.clone());
        let r = good.until(true, 3, within).await;
        assert_eq!(r.outcomes[0].0, url(GOOD));

        // Down, with the reason: a certificate for another name…
        let mut p = Prober::start(
            "isp1",
            check(vec![url(OTHER_NAME)], ca_file.clone()),
            ep1.clone(),
        );
        let why = failure(&p.until(false, 2, within).await);
        eprintln!("reason: {why}");
        assert!(
            why.contains("certificate not valid for name probe.example"),
            "{why}"
        );
        drop(p);
        // … one from a CA the probe does not trust …
        let mut p = Prober::start(
            "isp1",
            check(vec![url(UNKNOWN_CA)], ca_file.clone()),
            ep1.clone(),
        );
        let why = failure(&p.until(false, 2, within).await);
        eprintln!("reason: {why}");
        assert!(why.contains("unknown issuer"), "{why}");
        drop(p);
        // … and the good server checked against the system's store, which does not
        // hold the test CA.
        let mut p = Prober::start("isp1", check(vec![url(GOOD)], None), ep1.clone());
        let why = failure(&p.until(false, 2, within).await);
        eprintln!("reason: {why}");
        assert!(why.contains("unknown issuer"), "{why}");
        assert!(why.contains("system's trust store"), "{why}");
        drop(p);

        // The name resolves only through isp1: isp2's probe of the same good server
        // fails with that reason, while isp1's stays up.
        let mut p2 = Prober::start("isp2", check(vec![url(GOOD)], ca_file.clone()), ep2);
        let why = failure(&p2.until(false, 2, within).await);
        eprintln!("reason: {why}");
        assert!(
            why.contains("probe.example does not resolve through isp2"),
            "{why}"
        );
        good.until(true, 3, within).await;

        // isp1's resolver fails: the last good answer is kept (past its TTL, so the
        // probe did ask again) and the link stays up.
        mode.store(SERVFAIL, Ordering::SeqCst);
        let asked = queries.load(Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(7);
        while Instant::now() < until {
            let r = good.next().await;
            assert!(r.good, "{r:?}");
        }
        assert!(
            queries.load(Ordering::SeqCst) > asked,
            "the cached answer was never refreshed"
        );
    });
    drop(dns);
}
