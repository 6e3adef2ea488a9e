//! Issue #10, acceptance 4: the IPv6 outage of a silent failure (blackhole) beside the
//! IPv4 one, in one dual-stack lab under one daemon config; target: the same median
//! within 20 %.
//!
//! Lab: ISPs 1 and 2 with IPv6 (radvd, BCP 38), fibre (wan1, priority 1) and cable
//! (wan2, priority 2), both `masquerade6`, both probed with icmp at one IPv4 and one
//! IPv6 target (198.18.0.1, 2001:db8:ee::1), interval 200 ms, timeout 200 ms,
//! down_after 3, min_targets 1. A whoami server on `[::]` in inet.
//!
//! One trial, per family, the families alternating first: heal ISP 1; a fresh
//! `multiwan run` (links start `up`); wait until a new connection of that family leaves
//! through ISP 1, then 1 s (five rounds); a new TCP connection of that family every
//! 20 ms from the LAN client; 200 ms (+ i/N of a probe interval) later ISP 1 drops
//! everything it forwards, both families ([`Lab::blackhole_isp`]); the failure counts
//! from when that `nft` returned (so both families are measured alike; a few ms later
//! than the outage scenario's injector, which times the write); until the first
//! connection through ISP 2; stop, flush, heal.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_lab::lab::addr6;
use netns_lab::{tcp_whoami, Lab, WhoAmIServer};

use crate::mwan::Instance;
use crate::report::Report;
use crate::traffic::{self, Traffic};
use crate::util::{self, fmt_num, max, median, ms};

const SCENARIO: &str = "outage6";
const PORT: u16 = 7110;
const EVERY: Duration = Duration::from_millis(20);
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
const WARM: Duration = Duration::from_millis(1000);
const PRE: Duration = Duration::from_millis(200);
const MAX_WAIT: Duration = Duration::from_secs(5);
const INTERVAL_MS: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

struct Outage6Lab {
    lab: Lab,
    mw: Instance,
    _server: WhoAmIServer,
}

fn links_toml() -> String {
    let targets = format!("\"198.18.0.1\", \"{}\"", addr6::server(1));
    let link = |name: &str, id: usize, prio: u32| {
        format!(
            "[links.{name}]\nid = {id}\ninterface = \"wan{id}\"\npriority = {prio}\n\
             masquerade6 = true\n\n[links.{name}.check]\nmethod = \"icmp\"\n\
             targets = [{targets}]\ninterval = \"{INTERVAL_MS}ms\"\n\
             timeout = \"{INTERVAL_MS}ms\"\ndown_after = 3\nmin_targets = 1\n\n"
        )
    };
    link("fibre", 1, 1) + &link("cable", 2, 2)
}

pub fn run(report: &mut Report, bin: &Path, trials: usize) -> Result<()> {
    eprintln!("multiwan-bench: outage6: building the dual-stack lab (2 ISPs)");
    let lab = Lab::builder("outage6")
        .prefix("mwb")
        .isps(2)
        .servers(2)
        .ipv6(&[1, 2])
        .build()?;
    let server = lab.whoami_tcp6(PORT)?;
    let mw = Instance::new(bin, "out6");
    mw.write_config("lan = [\"lan0\"]", &links_toml())?;
    let o = Outage6Lab {
        lab,
        mw,
        _server: server,
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for i in 0..trials {
        let order = if i % 2 == 0 {
            [Fam::V4, Fam::V6]
        } else {
            [Fam::V6, Fam::V4]
        };
        let phase = Duration::from_millis(INTERVAL_MS * i as u64 / trials as u64);
        for fam in order {
            util::check_interrupted()?;
            eprintln!("multiwan-bench: outage6: trial {}/{trials}: {fam:?}", i + 1);
            let value = match o.trial(fam, phase) {
                Ok(v) => v,
                Err(e) => {
                    if util::check_interrupted().is_err() {
                        return Err(e);
                    }
                    report.detail(SCENARIO, format!("trial {} {fam:?} failed: {e:#}", i + 1));
                    let _ = o.lab.blackhole_isp(1, false);
                    let _ = o.mw.flush(o.lab.router());
                    None
                }
            };
            match fam {
                Fam::V4 => v4.push(value.unwrap_or(f64::NAN)),
                Fam::V6 => v6.push(value.unwrap_or(f64::NAN)),
            }
        }
    }
    summarize(report, &v4, &v6);
    Ok(())
}

/// "412 / 530 ms (n=10)", with the count of trials that never reached the backup.
fn med_worst(v: &[f64]) -> String {
    let ok = v.iter().filter(|x| x.is_finite()).count();
    let mut s = format!("{} / {} ms (n={ok})", fmt_num(median(v)), fmt_num(max(v)));
    if ok < v.len() {
        s.push_str(&format!(", {} never", v.len() - ok));
    }
    s
}

fn summarize(report: &mut Report, v4: &[f64], v6: &[f64]) {
    report.info(
        SCENARIO,
        "blackhole, IPv4: failure → first new connection via backup, median / worst",
        med_worst(v4),
    );
    report.info(
        SCENARIO,
        "blackhole, IPv6: failure → first new connection via backup, median / worst",
        med_worst(v6),
    );
    let (m4, m6) = (median(v4), median(v6));
    let off = (m6 / m4 - 1.0).abs() * 100.0;
    report.at_most(
        SCENARIO,
        "IPv6 median against IPv4's (same run, lab and daemon config)",
        format!(
            "{} vs {} ms ({:+.0} %)",
            fmt_num(m6),
            fmt_num(m4),
            (m6 / m4 - 1.0) * 100.0
        ),
        off,
        20.0,
        "%",
        "within 20 %",
    );
    report.detail(
        SCENARIO,
        format!("IPv4 trials (ms): {}", crate::util::fmt_list(v4)),
    );
    report.detail(
        SCENARIO,
        format!("IPv6 trials (ms): {}", crate::util::fmt_list(v6)),
    );
}

impl Outage6Lab {
    fn server(&self, fam: Fam) -> IpAddr {
        match fam {
            Fam::V4 => IpAddr::V4(self.lab.server(1)),
            Fam::V6 => IpAddr::V6(self.lab.server6(1)),
        }
    }

    fn current_isp(&self, fam: Fam) -> Option<usize> {
        tcp_whoami(
            self.lab.lan(),
            self.server(fam),
            PORT,
            None,
            ATTEMPT_TIMEOUT,
        )
        .ok()
        .and_then(|a| self.lab.isp_of(a))
    }

    /// One failover of `fam`'s traffic: failure → first new connection via ISP 2, ms.
    fn trial(&self, fam: Fam, phase: Duration) -> Result<Option<f64>> {
        let router = self.lab.router();
        self.lab.blackhole_isp(1, false)?;
        self.mw.reset_state();
        let daemon = self.mw.start_daemon(router)?;
        let result = (|| -> Result<Option<f64>> {
            if !util::wait_until(Duration::from_secs(5), || self.current_isp(fam) == Some(1))? {
                bail!(
                    "new {fam:?} connections do not leave through ISP 1 before the failure (now: {:?})",
                    self.current_isp(fam)
                );
            }
            util::sleep(WARM)?;
            let traffic = Traffic::start(
                self.lab.lan(),
                self.server(fam),
                PORT,
                EVERY,
                ATTEMPT_TIMEOUT,
            );
            util::sleep(PRE + phase)?;
            self.lab.blackhole_isp(1, true)?;
            let cut = Instant::now();
            util::wait_until(MAX_WAIT, || {
                traffic
                    .snapshot()
                    .iter()
                    .any(|a| a.at >= cut && a.isp == Some(2))
            })?;
            let attempts = traffic.finish();
            Ok(traffic::to_backup(&attempts, cut, 2).map(ms))
        })();
        let log = daemon.stop();
        let healed = self.lab.blackhole_isp(1, false);
        let flushed = self.mw.flush(router);
        let v = result.with_context(|| format!("daemon log:\n{}", log.text()))?;
        healed?;
        flushed?;
        Ok(v)
    }
}
