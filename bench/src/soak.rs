//! Issue 14: the soak. `--soak-minutes` (default 30) of random trouble while LAN
//! traffic flows, with the router's figures taken at the start and at the end.
//!
//! Lab: 2 ISPs (icmp checks every 200 ms), `flush_on_down = false` so that a connection
//! lost at the end was lost to multiwan, not deleted by design; 10,000 main-table routes
//! (`dev lan0`, 100.96.0.0 upwards). Traffic: a new TCP connection to a whoami server
//! every 100 ms from the LAN client (the success ratio is reported), and 8 long-lived
//! connections opened at the start, each exchanging 1 KiB at every checkpoint (once a
//! minute, after the current trouble is healed) and at the end.
//!
//! Every 2–4 s one of, at random (a fixed-seed generator, so runs are alike): a
//! blackhole of one ISP for 2 s; a carrier loss of one ISP for 1 s; `multiwan reload`;
//! `multiwan link ispK down`, 1 s, `auto`; a firewall reload (`nft flush ruleset` in the
//! router, then a firewall table of its own); route churn (2,000 of the 10,000 routes
//! deleted, or added back).
//!
//! Figures at start and end: daemon VmRSS, its open fds, ip rules, routes tagged `proto
//! 77` (multiwan's), rules in multiwan's nft table, conntrack entries, and whether the
//! multiwan table is there at all.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use netns_lab::whoami::LongLivedConnection;
use netns_lab::{Lab, Netns, Traffic};

use crate::mwan::{self, Instance};
use crate::report::Report;
use crate::rss::status_kb;
use crate::util;

const SCENARIO: &str = "soak";
const ROUTES: u32 = 10_000;
const CHURN: u32 = 2_000;
const LONG_LIVED: usize = 8;
const PORT: u16 = 8099;

fn route_cmds(verb: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range
        .map(|i| {
            let a =
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 96, 0, 0)) + 2 * i);
            format!("route {verb} {a}/32 dev lan0")
        })
        .collect()
}

/// xorshift64: reproducible trouble, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The figures compared between start and end.
#[derive(Debug, Clone, Default)]
struct Figures {
    rss_kb: u64,
    fds: usize,
    rules: usize,
    routes77: usize,
    nft_rules: usize,
    conntrack: usize,
    table: bool,
}

fn lines_of(ns: &Netns, program: &str, args: &[&str]) -> usize {
    ns.exec(program, args)
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

fn figures(router: &Netns, pid: u32, nft_table: &str) -> Figures {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let nft = router
        .exec("nft", &["list", "table", "inet", nft_table])
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    // Rules: lines inside chains that are neither declarations nor braces.
    let nft_rules = nft.as_deref().map_or(0, |t| {
        t.lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("table ")
                    && !l.starts_with("chain ")
                    && !l.starts_with("set ")
                    && !l.starts_with("counter ")
                    && !l.starts_with("type ")
                    && !l.starts_with("flags ")
                    && !l.starts_with("elements ")
                    && !l.starts_with("packets ")
                    && !l.starts_with('}')
                    && !l.contains(", ")
                    && !l.ends_with(',')
            })
            .count()
    });
    let conntrack = router
        .exec("conntrack", &["-C"])
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0);
    Figures {
        rss_kb: status_kb(pid, "VmRSS:").unwrap_or(0),
        fds,
        rules: lines_of(router, "ip", &["rule"]) + lines_of(router, "ip", &["-6", "rule"]),
        routes77: lines_of(
            router,
            "ip",
            &["route", "show", "table", "all", "proto", "77"],
        ) + lines_of(
            router,
            "ip",
            &["-6", "route", "show", "table", "all", "proto", "77"],
        ),
        nft_rules,
        conntrack,
        table: nft.is_some(),
    }
}

/// Records a failed control command (its first line) instead of ending the soak.
fn note<T>(refused: &mut Vec<String>, r: Result<T>) {
    if let Err(e) = r {
        let text = format!("{e:#}");
        refused.push(
            text.lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        );
    }
}

/// Exchanges 1 KiB on every connection still alive; returns how many are alive.
fn checkpoint(conns: &mut [Option<LongLivedConnection>]) -> usize {
    for slot in conns.iter_mut() {
        if let Some(c) = slot {
            if c.exchange(1024).is_err() {
                *slot = None;
            }
        }
    }
    conns.iter().filter(|c| c.is_some()).count()
}

// long-fn: one scenario, read top to bottom: set up, the trouble loop, then the report.
pub fn run(report: &mut Report, bin: &Path, minutes: u64) -> Result<()> {
    eprintln!("multiwan-bench: soak: {minutes} min of trouble under traffic");
    let lab = Lab::builder("soak")
        .prefix("mwb")
        .isps(2)
        .servers(2)
        .build()?;
    let router = lab.router();
    router.ip_batch(&route_cmds("add", 0..ROUTES))?;
    let _server = lab.whoami_tcp(PORT)?;
    let mw = Instance::new(bin, "soak");
    let targets = lab.servers();
    let links: String = (1..=2)
        .map(|k| {
            mwan::link_toml(
                &format!("isp{k}"),
                k,
                &format!("wan{k}"),
                "flush_on_down = false",
                &targets,
                200,
            )
        })
        .collect();
    mw.write_config("lan = [\"lan0\"]", &links)?;
    mw.reset_state();
    let mut daemon = mw.start_daemon(router)?;
    let pid = daemon.pid();
    util::sleep(Duration::from_secs(3))?;

    let server = IpAddr::V4(lab.server(1));
    let mut conns: Vec<Option<LongLivedConnection>> = (0..LONG_LIVED)
        .map(|_| {
            LongLivedConnection::open(lab.lan(), server, PORT, None, Duration::from_secs(10)).ok()
        })
        .collect();
    let opened = checkpoint(&mut conns);
    let traffic = Traffic::start(
        lab.lan(),
        server,
        PORT,
        Duration::from_millis(100),
        Duration::from_secs(1),
    );
    let start = figures(router, pid, &mw.nft_table);

    let mut rng = Rng(0x5eed_50a4_0000_0001);
    let mut counts = [0usize; 6];
    let mut churned_out = false;
    let mut churn_at = 0u32;
    let mut alive_log = Vec::new();
    // Control commands the daemon did not answer (or refused): counted, not fatal.
    let mut refused: Vec<String> = Vec::new();
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let mut next_checkpoint = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        util::check_interrupted()?;
        let k = 1 + rng.next(2) as usize;
        let action = rng.next(6) as usize;
        counts[action] += 1;
        match action {
            0 => {
                lab.blackhole_isp(k, true)?;
                util::sleep(Duration::from_secs(2))?;
                lab.blackhole_isp(k, false)?;
            }
            1 => {
                lab.carrier(k, false)?;
                util::sleep(Duration::from_secs(1))?;
                lab.carrier(k, true)?;
            }
            2 => {
                note(&mut refused, mw.cli(router, &["reload"]));
            }
            3 => {
                let link = format!("isp{k}");
                note(&mut refused, mw.cli(router, &["link", &link, "down"]));
                util::sleep(Duration::from_secs(1))?;
                note(&mut refused, mw.cli(router, &["link", &link, "auto"]));
            }
            4 => {
                router.nft(
                    "flush ruleset\n\
                     table inet soak_firewall {\n\
                     \tchain input {\n\
                     \t\ttype filter hook input priority 0; policy accept;\n\
                     \t\tct state established,related accept\n\
                     \t}\n\
                     }\n",
                )?;
            }
            _ => {
                let lo = churn_at % ROUTES;
                if churned_out {
                    router.ip_batch(&route_cmds("add", lo..lo + CHURN))?;
                    churn_at += CHURN;
                } else {
                    router.ip_batch(&route_cmds("del", lo..lo + CHURN))?;
                }
                churned_out = !churned_out;
            }
        }
        if !daemon.alive() {
            bail!("the daemon exited:\n{}", daemon.log.text());
        }
        if Instant::now() >= next_checkpoint {
            util::sleep(Duration::from_secs(2))?;
            alive_log.push(checkpoint(&mut conns));
            next_checkpoint += Duration::from_secs(60);
        }
        util::sleep(Duration::from_millis(2000 + rng.next(2000)))?;
    }
    // Heal everything, let the daemon settle (and its periodic check run if due).
    if churned_out {
        let lo = churn_at % ROUTES;
        router.ip_batch(&route_cmds("add", lo..lo + CHURN))?;
    }
    util::sleep(Duration::from_secs(5))?;
    let survived = checkpoint(&mut conns);
    let finish = figures(router, pid, &mw.nft_table);
    let attempts = traffic.finish();
    let ok = attempts.iter().filter(|a| a.isp.is_some()).count();
    let log = daemon.stop();
    let _ = mw.flush(router);

    let pair = |a: String, b: String| format!("{a} → {b}");
    report.info(
        SCENARIO,
        format!("daemon VmRSS, start → end ({minutes} min)"),
        pair(
            format!("{} MB", util::fmt_num(start.rss_kb as f64 / 1024.0)),
            format!("{} MB", util::fmt_num(finish.rss_kb as f64 / 1024.0)),
        ),
    );
    report.info(
        SCENARIO,
        "daemon open fds, start → end",
        pair(start.fds.to_string(), finish.fds.to_string()),
    );
    report.info(
        SCENARIO,
        "ip rules (v4+v6), start → end",
        pair(start.rules.to_string(), finish.rules.to_string()),
    );
    report.info(
        SCENARIO,
        "routes tagged proto 77 (all tables), start → end",
        pair(start.routes77.to_string(), finish.routes77.to_string()),
    );
    report.info(
        SCENARIO,
        "rules in multiwan's nft table (table present), start → end",
        pair(
            format!("{} ({})", start.nft_rules, start.table),
            format!("{} ({})", finish.nft_rules, finish.table),
        ),
    );
    report.info(
        SCENARIO,
        "conntrack entries, start → end",
        pair(start.conntrack.to_string(), finish.conntrack.to_string()),
    );
    report.at_least(
        SCENARIO,
        "long-lived LAN connections alive at the end",
        format!(
            "{survived} of {opened} (after each minute: {})",
            alive_log
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        survived as f64 / opened.max(1) as f64,
        1.0,
        "all",
    );
    report.info(
        SCENARIO,
        "new LAN connections that succeeded (every 100 ms, 1 s timeout)",
        format!(
            "{ok} of {} ({:.1} %)",
            attempts.len(),
            100.0 * ok as f64 / attempts.len().max(1) as f64
        ),
    );
    report.detail(
        SCENARIO,
        format!(
            "actions: blackhole {} · carrier {} · reload {} · override {} · firewall reload {} · route churn {}",
            counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]
        ),
    );
    report.info(
        SCENARIO,
        "control commands (reload, link) that failed",
        format!(
            "{}{}",
            refused.len(),
            refused
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
    );
    let errors: Vec<String> = log
        .lines()
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.contains("failed") || l.contains("ERROR") || l.contains("error"))
        .take(5)
        .collect();
    report.detail(
        SCENARIO,
        format!(
            "daemon log: {} lines; first error lines: {}",
            log.lines().len(),
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors.join(" / ")
            }
        ),
    );
    Ok(())
}
