//! Issue 14: a main table of 100,000 routes (a VPN's or a bypass list's) changing by
//! 20,000 routes at a time. Lab: 2 ISPs, both probed (icmp, 2 targets, 200 ms). Before
//! the daemon starts, `ip -batch` puts 100,000 /32 routes `dev lan0` into the router's
//! main table (every other address from 100.96.0.0 (in 100.64.0.0/10, clear of the lab's 100.64.k.0/24), so no two
//! aggregate: the bypass set holds 100,000 elements). Then `--bursts` bursts (default
//! 10): odd ones delete 20,000 of them, even ones add those back, each one `ip -batch`,
//! each followed by a wait until the daemon has logged no apply for 1.5 s.
//!
//! Reported: the daemon's largest VmRSS (sampled every 100 ms over the bursts) and VmHWM
//! (which includes its start with the 100k routes); its CPU (utime+stime) per 10,000
//! changes; probe round lateness p99 over the bursts (the daemon's debug line "probe
//! round of X started N us late", `MULTIWAN_LOG=info,multiwan::probe::lateness=debug`);
//! the number of nft table rewrites (log "written (digest") and of element-only updates
//! (log "set elements") during the bursts; and, as a check, the number of elements in
//! the bypass set at the end against the routes in the main table.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use netns_lab::Lab;

use crate::mwan::{self, Instance};
use crate::report::Report;
use crate::rss::{cpu_ticks, status_kb};
use crate::util::{self, fmt_num};

const SCENARIO: &str = "bigtables";
const ROUTES: u32 = 100_000;
const BURST: u32 = 20_000;

/// The i-th bench route: every other address from 100.96.0.0.
fn route_addr(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 96, 0, 0)) + 2 * i)
}

fn batch(verb: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range
        .map(|i| format!("route {verb} {}/32 dev lan0", route_addr(i)))
        .collect()
}

/// Elements of the bench range (100.96.0.0 upwards) in the router's bypass4 set.
fn bench_elements(router: &netns_lab::Netns, nft_table: &str) -> usize {
    let Ok(out) = router.exec("nft", &["list", "set", "inet", nft_table, "bypass4"]) else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(start) = text.find("elements = {") else {
        return 0;
    };
    let body = &text[start..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(|c: char| c == ',' || c == '{' || c.is_whitespace())
        .filter(|e| e.starts_with("100.9"))
        .count()
}

/// p-th percentile (0..=100) of `v` (sorted here).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Lateness (ms) of the probe rounds logged at or after `since`.
fn lateness(lines: &[(Instant, String)], since: Instant, until: Instant) -> Vec<f64> {
    lines
        .iter()
        .filter(|(t, _)| *t >= since && *t <= until)
        .filter_map(|(_, l)| {
            let rest = l.split_once(" started ")?.1;
            let us: f64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(us / 1000.0)
        })
        .collect()
}

// long-fn: one scenario, read top to bottom: set up, bursts, then one report row each.
pub fn run(report: &mut Report, bin: &Path, bursts: usize) -> Result<()> {
    eprintln!("multiwan-bench: bigtables: building the lab and {ROUTES} main-table routes");
    let lab = Lab::builder("big")
        .prefix("mwb")
        .isps(2)
        .servers(2)
        .build()?;
    let router = lab.router();
    let t = Instant::now();
    router.ip_batch(&batch("add", 0..ROUTES))?;
    report.detail(
        SCENARIO,
        format!(
            "{ROUTES} routes added with ip -batch in {:.1} s",
            t.elapsed().as_secs_f64()
        ),
    );
    let mw = Instance::new(bin, "big");
    let targets = lab.servers();
    let links: String = (1..=2)
        .map(|k| mwan::link_toml(&format!("isp{k}"), k, &format!("wan{k}"), "", &targets, 200))
        .collect();
    mw.write_config("lan = [\"lan0\"]", &links)?;
    mw.reset_state();
    // Inherited by the daemon: its probe-lateness debug lines, nothing else at debug.
    std::env::set_var("MULTIWAN_LOG", "info,multiwan::probe::lateness=debug");
    let started = Instant::now();
    let daemon = mw.start_daemon(router);
    std::env::remove_var("MULTIWAN_LOG");
    let mut daemon = daemon?;
    let start_secs = started.elapsed().as_secs_f64();
    let pid = daemon.pid();
    util::sleep(Duration::from_secs(3))?;
    let rss_at_rest = status_kb(pid, "VmRSS:")?;
    let hwm_after_start = status_kb(pid, "VmHWM:")?;

    // VmRSS every 100 ms while the bursts run.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(kb) = status_kb(pid, "VmRSS:") {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let (c0, _) = cpu_ticks(pid)?;
    let t0 = Instant::now();
    let mut changes = 0u64;
    let mut burst_secs = Vec::new();
    let mut settle_secs = Vec::new();
    let window = BURST.min(ROUTES);
    for b in 0..bursts {
        util::check_interrupted()?;
        // Bursts come in pairs over the same 20,000 routes: delete, then add back.
        let pair = (b / 2) as u32;
        let lo = (pair * window) % ROUTES;
        let verb = if b % 2 == 0 { "del" } else { "add" };
        let tb = Instant::now();
        router.ip_batch(&batch(verb, lo..lo + window))?;
        burst_secs.push(tb.elapsed().as_secs_f64());
        changes += u64::from(window);
        // Settled: the bypass set holds what the main table does (at most 60 s).
        let expected = if verb == "del" {
            ROUTES - window
        } else {
            ROUTES
        };
        let settled = util::wait_until(Duration::from_secs(60), || {
            // Listing 100,000 elements costs nft itself a while: look twice a second.
            std::thread::sleep(Duration::from_millis(500));
            bench_elements(router, &mw.nft_table) == expected as usize
        })?;
        settle_secs.push(if settled {
            tb.elapsed().as_secs_f64()
        } else {
            f64::NAN
        });
        if !daemon.alive() {
            bail!("the daemon exited:\n{}", daemon.log.text());
        }
    }
    let t1 = Instant::now();
    let (c1, _) = cpu_ticks(pid)?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm = status_kb(pid, "VmHWM:")?;
    let in_set = bench_elements(router, &mw.nft_table);
    let log = daemon.stop();
    let _ = mw.flush(router);

    let lines = log.lines();
    let in_window = |needle: &str| {
        lines
            .iter()
            .filter(|(t, l)| *t >= t0 && *t <= t1 && l.contains(needle))
            .count()
    };
    let rewrites = in_window("written (digest");
    let element_updates = in_window("set elements");
    let full_reads = in_window("reading the main table again");
    let mut late = lateness(&lines, t0, t1);
    let mut late_rest = lateness(&lines, started, t0);
    let p99 = percentile(&mut late, 99.0);
    let max_late = late.last().copied().unwrap_or(f64::NAN);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_secs = (c1 - c0) as f64 / hz;
    let per_10k = cpu_secs / (changes as f64 / 10_000.0);
    let peak_mb = peak.load(Ordering::Relaxed) as f64 / 1024.0;

    report.at_most(
        SCENARIO,
        format!("daemon RSS, {ROUTES} main routes, {bursts} bursts of {window} changes (largest VmRSS, 100 ms samples)"),
        format!(
            "{} MB (at rest before the bursts {} MB; VmHWM incl. start {} MB)",
            fmt_num(peak_mb),
            fmt_num(rss_at_rest as f64 / 1024.0),
            fmt_num(hwm as f64 / 1024.0)
        ),
        peak_mb.max(hwm as f64 / 1024.0),
        15.0,
        "MB",
        "≤ 15 MB",
    );
    report.info(
        SCENARIO,
        "daemon CPU per 10k route changes (utime+stime over the bursts)",
        format!(
            "{} ms ({} s for {changes} changes)",
            fmt_num(per_10k * 1000.0),
            fmt_num(cpu_secs)
        ),
    );
    report.at_most(
        SCENARIO,
        "probe round lateness p99 during the bursts",
        format!(
            "{} ms (max {} ms, {} rounds; at rest p99 {} ms)",
            fmt_num(p99),
            fmt_num(max_late),
            late.len(),
            fmt_num(percentile(&mut late_rest, 99.0))
        ),
        p99,
        10.0,
        "ms",
        "≤ 10 ms",
    );
    report.at_most(
        SCENARIO,
        "nft table rewrites during the bursts",
        format!("{rewrites} (element-only updates: {element_updates})"),
        rewrites as f64,
        0.0,
        "",
        "0 (the bypass set changes by element)",
    );
    report.detail(
        SCENARIO,
        format!(
            "daemon start with {ROUTES} routes: {start_secs:.1} s to \"running\"; VmHWM after start {} MB",
            fmt_num(hwm_after_start as f64 / 1024.0)
        ),
    );
    report.detail(
        SCENARIO,
        format!(
            "ip -batch per burst (s): {}; from each burst's start until the set matched the main table (s): {}",
            util::fmt_list(&burst_secs),
            util::fmt_list(&settle_secs)
        ),
    );
    let applied: Vec<String> = lines
        .iter()
        .filter(|(_, l)| !l.contains(" us late"))
        .map(|(t, l)| {
            let at = if *t >= t0 {
                format!("+{:.2}s", (*t - t0).as_secs_f64())
            } else {
                format!("-{:.2}s", (t0 - *t).as_secs_f64())
            };
            let short: String = l.chars().take(160).collect();
            format!("{at} {short}")
        })
        .collect();
    report.detail(
        SCENARIO,
        format!(
            "daemon log (without lateness lines, relative to the first burst): {}",
            applied.join(" / ")
        ),
    );
    let expected = if bursts % 2 == 0 {
        ROUTES
    } else {
        ROUTES - window
    };
    report.detail(
        SCENARIO,
        format!(
            "bypass4 elements at the end: {in_set} (main-table bench routes: {expected}); whole main-table re-reads on overflow: {full_reads}"
        ),
    );
    Ok(())
}
