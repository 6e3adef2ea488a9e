//! Issue 3: what the daemon costs at rest. 8 links × 3 icmp targets, interval 200 ms
//! (5 rounds per second per link: 120 probes/s), in a lab with 8 real ISPs, all links
//! healthy. After a 3 s warm-up, `/proc/<pid>/stat` utime+stime is read at the start and
//! the end of the window (CPU = their difference / window, in % of one core), and
//! `/proc/<pid>/status` VmRSS every second (the largest is reported, with VmHWM).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_lab::Lab;

use crate::mwan::{self, Instance};
use crate::report::Report;
use crate::util::{self, fmt_num};

const SCENARIO: &str = "rss";
const LINKS: usize = 8;
const WARMUP: Duration = Duration::from_secs(3);

/// (utime + stime, cutime + cstime) in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = text.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, so index 11.
    let n = |i: usize| -> Result<u64> {
        f.get(i)
            .context("short stat")?
            .parse::<u64>()
            .context("stat field")
    };
    Ok((n(11)? + n(12)?, n(13)? + n(14)?))
}

/// A `kB` field of /proc/<pid>/status.
pub(crate) fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn threads(pid: u32) -> u64 {
    status_kb(pid, "Threads:").unwrap_or(0)
}

pub fn run(report: &mut Report, bin: &Path, seconds: u64) -> Result<()> {
    eprintln!("multiwan-bench: rss: building the lab ({LINKS} ISPs)");
    let lab = Lab::builder("rss")
        .prefix("mwb")
        .isps(LINKS)
        .servers(3)
        .build()?;
    let mw = Instance::new(bin, "rss");
    let targets = lab.servers();
    let links: String = (1..=LINKS)
        .map(|k| mwan::link_toml(&format!("isp{k}"), k, &format!("wan{k}"), "", &targets, 200))
        .collect();
    mw.write_config("lan = [\"lan0\"]", &links)?;
    mw.reset_state();
    let mut daemon = mw.start_daemon(lab.router())?;
    let pid = daemon.pid();
    util::sleep(WARMUP)?;
    eprintln!("multiwan-bench: rss: measuring the daemon (pid {pid}) for {seconds} s");
    let (c0, k0) = cpu_ticks(pid)?;
    let t0 = Instant::now();
    let mut rss_max = 0;
    let mut rss_samples = Vec::new();
    for _ in 0..seconds {
        util::sleep(Duration::from_secs(1))?;
        if !daemon.alive() {
            bail!("the daemon exited:\n{}", daemon.log.text());
        }
        let rss = status_kb(pid, "VmRSS:")?;
        rss_max = rss_max.max(rss);
        rss_samples.push(rss);
    }
    let (c1, k1) = cpu_ticks(pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let hwm = status_kb(pid, "VmHWM:")?;
    let nthreads = threads(pid);
    let log = daemon.stop();
    let _ = mw.flush(lab.router());

    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_pct = (c1 - c0) as f64 / hz / wall * 100.0;
    let child_pct = (k1 - k0) as f64 / hz / wall * 100.0;
    let rss_mb = rss_max as f64 / 1024.0;
    report.at_most(
        SCENARIO,
        format!(
            "daemon RSS, {LINKS} links × 3 targets at 5 rounds/s (largest VmRSS over {seconds} s)"
        ),
        format!(
            "{} MB (VmHWM {} MB)",
            fmt_num(rss_mb),
            fmt_num(hwm as f64 / 1024.0)
        ),
        rss_mb,
        15.0,
        "MB",
        "≤ 15 MB",
    );
    report.at_most(
        SCENARIO,
        format!("daemon CPU, same load (utime+stime over {seconds} s)"),
        format!("{cpu_pct:.2} % of a core"),
        cpu_pct,
        1.0,
        "%",
        "≤ 1 %",
    );
    report.detail(
        SCENARIO,
        format!(
            "{} ticks of {hz} Hz over {wall:.1} s; waited-for children (nft) {child_pct:.2} %; {nthreads} threads",
            c1 - c0
        ),
    );
    report.detail(
        SCENARIO,
        format!(
            "VmRSS each second (kB): {}",
            rss_samples
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let transitions: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|(t, l)| *t >= t0 && l.contains(": link ") && l.contains(" -> "))
        .map(|(_, l)| l)
        .collect();
    report.detail(
        SCENARIO,
        format!(
            "link state changes logged during the window (expect none): {}",
            if transitions.is_empty() {
                "none".to_string()
            } else {
                transitions.join(" / ")
            }
        ),
    );
    Ok(())
}
