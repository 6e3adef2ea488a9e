//! Issue 4: what multiwan's ruleset costs the datapath. The same lab (3 ISPs), two
//! router setups, alternated ABBA so drift on the shared machine hits both alike:
//!
//! - baseline: plain masquerade on every wan (`oifname { wan1, wan2, wan3 }
//!   masquerade`), the main table's default route via isp1; no multiwan;
//! - multiwan: `multiwan apply` of 3 links (equal priority, so new connections are
//!   spread by `numgen`) and 1000 `[[rules]]` with destination prefixes in
//!   198.18.0.0/15 (/24../32) that never match the test traffic, so every new
//!   connection walks all of them before the `default` policy picks its link.
//!
//! Throughput: `iperf3 -c 198.18.0.1 -t T -O 1` (one TCP stream, first second
//! omitted) from the LAN client to `iperf3 -s` in inet; received bits/s.
//! Connection rate: 4 client threads in the LAN namespace open short TCP connections to
//! a server in inet (it writes 3 bytes and closes; the client reads to EOF and closes
//! with an RST, so no TIME_WAIT piles up) for a fixed time; completed per second. The
//! router's conntrack table is flushed before each run.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_lab::{ChildGuard, Lab};

use crate::mwan::{self, Instance};
use crate::report::Report;
use crate::util::{self, fmt_list, fmt_num, median};

const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 7200;
const CLASSIC_TABLE: &str = "mwbench_masq";
const CLIENT_THREADS: usize = 4;
const RULES: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Baseline,
    /// 3 links and the 1000 rules.
    Multiwan,
    /// 3 links, no rules: separates multiwan's fixed cost from the rules'.
    MultiwanNoRules,
}

pub struct PolicyLab {
    lab: Lab,
    mw: Instance,
    links: String,
    rules: String,
    setup: Option<Setup>,
    _iperf: Option<ChildGuard>,
}

impl PolicyLab {
    pub fn build(bin: &Path) -> Result<PolicyLab> {
        eprintln!("multiwan-bench: policies: building the lab (3 ISPs)");
        let lab = Lab::builder("policies")
            .prefix("mwb")
            .isps(3)
            .servers(2)
            .build()?;
        let mw = Instance::new(bin, "pol");
        let names: Vec<String> = (1..=3).map(|k| format!("isp{k}")).collect();
        let links: String = (1..=3)
            .map(|k| mwan::link_toml(&names[k - 1], k, &format!("wan{k}"), "", &[], 0))
            .collect();
        let rules = mwan::rules_toml(RULES, &names);
        // Written before the first `flush` (which only needs the names and ranges); each
        // multiwan setup rewrites it with or without the rules.
        mw.write_config("lan = [\"lan0\"]", &format!("{links}{rules}"))?;
        Ok(PolicyLab {
            lab,
            mw,
            links,
            rules,
            setup: None,
            _iperf: None,
        })
    }

    fn server(&self) -> IpAddr {
        IpAddr::V4(self.lab.server(1))
    }

    fn set(&mut self, setup: Setup) -> Result<()> {
        let router = self.lab.router();
        if self.setup != Some(setup) {
            match setup {
                Setup::Baseline => {
                    self.mw.flush(router)?;
                    router.nft(&format!(
                        "table ip {CLASSIC_TABLE} {{\n\
                         \tchain postrouting {{\n\
                         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                         \t\toifname {{ \"wan1\", \"wan2\", \"wan3\" }} masquerade\n\
                         \t}}\n\
                         }}\n"
                    ))?;
                }
                Setup::Multiwan | Setup::MultiwanNoRules => {
                    router.nft(&format!(
                        "table ip {CLASSIC_TABLE} {{\n}}\ndelete table ip {CLASSIC_TABLE}\n"
                    ))?;
                    let rest = if setup == Setup::Multiwan {
                        format!("{}{}", self.links, self.rules)
                    } else {
                        self.links.clone()
                    };
                    self.mw.write_config("lan = [\"lan0\"]", &rest)?;
                    self.mw.cli(router, &["apply"])?;
                }
            }
            self.setup = Some(setup);
        }
        // A clean conntrack table for every run (`conntrack -F` exits 0 when empty).
        let _ = router.exec("conntrack", &["-F"]);
        Ok(())
    }

    fn iperf_server(&mut self) -> Result<()> {
        if self._iperf.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-B", &self.server().to_string(), "-p"])
            .arg(IPERF_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self._iperf = Some(self.lab.inet().spawn(&mut cmd)?);
        util::sleep(Duration::from_millis(300))?;
        Ok(())
    }

    /// One iperf3 run; received bits per second.
    fn iperf(&mut self, seconds: u64) -> Result<f64> {
        self.iperf_server()?;
        let bound = (seconds + 15).to_string();
        let (_, out) = util::timed(self.lab.lan().command("timeout").args([
            bound.as_str(),
            "iperf3",
            "-c",
            &self.server().to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-O",
            "1",
            "-J",
        ]))?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("iperf3 -J output is not JSON")?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("no end.sum_received.bits_per_second in iperf3's output")
    }
}

/// Closes with an RST: no TIME_WAIT on the client, conntrack sees the end at once.
fn close_with_rst(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a properly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Waits up to `ms` for the listener to be readable.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// A connection-rate run: (completed per second, failed attempts, other processes' share
/// of the machine's CPU meanwhile, %).
fn conn_rate(pl: &PolicyLab, seconds: u64) -> Result<(f64, u64, f64)> {
    let addr = SocketAddr::new(pl.server(), CONN_PORT);
    let listener = pl
        .lab
        .inet()
        .run(move || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr} in inet"))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for _ in 0..2 {
        let l = listener.try_clone()?;
        let stop = stop.clone();
        servers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if !readable(l.as_raw_fd(), 100) {
                    continue;
                }
                if let Ok((mut s, _)) = l.accept() {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"ok\n");
                }
            }
        }));
    }

    let cpu0 = util::cpu_sample();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut clients = Vec::new();
    for _ in 0..CLIENT_THREADS {
        let (done, failed) = (done.clone(), failed.clone());
        clients.push(pl.lab.lan().spawn_thread(move || {
            let mut buf = [0u8; 16];
            while Instant::now() < deadline {
                let ok = (|| -> std::io::Result<bool> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    let mut got = 0;
                    loop {
                        let n = s.read(&mut buf[got..])?;
                        if n == 0 {
                            break;
                        }
                        got += n;
                        if got == buf.len() {
                            break;
                        }
                    }
                    let good = &buf[..got] == b"ok\n";
                    close_with_rst(s);
                    Ok(good)
                })();
                match ok {
                    Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })?);
    }
    for c in clients {
        let _ = c.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let foreign = util::cpu_sample().foreign_pct_since(&cpu0);
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    Ok((
        done.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
        foreign,
    ))
}

/// Runs `measure` `repeats` times on each of `setups`, the order reversed every other
/// round (ABBA), and returns the values per setup.
fn alternate(
    pl: &mut PolicyLab,
    repeats: usize,
    setups: &[Setup],
    mut measure: impl FnMut(&mut PolicyLab) -> Result<f64>,
) -> Result<Vec<Vec<f64>>> {
    let mut values = vec![Vec::new(); setups.len()];
    for i in 0..repeats {
        let mut order: Vec<usize> = (0..setups.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for k in order {
            util::check_interrupted()?;
            pl.set(setups[k])?;
            eprintln!("multiwan-bench:   round {}: {:?}", i + 1, setups[k]);
            values[k].push(measure(pl)?);
        }
    }
    Ok(values)
}

pub fn throughput(
    report: &mut Report,
    pl: &mut PolicyLab,
    repeats: usize,
    seconds: u64,
) -> Result<()> {
    const S: &str = "throughput";
    eprintln!("multiwan-bench: throughput: iperf3, {repeats} runs per setup of {seconds}+1 s");
    let v = alternate(pl, repeats, &[Setup::Baseline, Setup::Multiwan], |pl| {
        Ok(pl.iperf(seconds)? / 1e9)
    })?;
    let (base, mw) = (&v[0], &v[1]);
    let ratios: Vec<f64> = mw.iter().zip(base).map(|(m, b)| m / b).collect();
    let ratio = median(&ratios);
    report.at_least(
        S,
        format!("iperf3 LAN → inet, one TCP stream: multiwan (3 links, {RULES} rules) / baseline (plain masquerade), median of per-round ratios (n={repeats})"),
        format!(
            "{ratio:.3} ({} vs {} Gbit/s, medians)",
            fmt_num(median(mw)),
            fmt_num(median(base))
        ),
        ratio,
        0.95,
        "≥ 0.95",
    );
    report.detail(
        S,
        format!(
            "Gbit/s per run (ABBA order): baseline {} | multiwan {}",
            fmt_list(base),
            fmt_list(mw)
        ),
    );
    Ok(())
}

pub fn connrate(
    report: &mut Report,
    pl: &mut PolicyLab,
    repeats: usize,
    seconds: u64,
) -> Result<()> {
    const S: &str = "connrate";
    eprintln!("multiwan-bench: connrate: {repeats} runs per setup of {seconds} s");
    let mut failures = Vec::new();
    let mut foreign = Vec::new();
    let v = alternate(
        pl,
        repeats,
        &[Setup::Baseline, Setup::Multiwan, Setup::MultiwanNoRules],
        |pl| {
            let (rate, failed, other) = conn_rate(pl, seconds)?;
            failures.push(failed);
            foreign.push(other);
            if rate <= 0.0 {
                bail!("no connection completed");
            }
            Ok(rate)
        },
    )?;
    let (base, mw, bare) = (&v[0], &v[1], &v[2]);
    // Each round measured the three setups back to back: compare within rounds.
    let ratios: Vec<f64> = mw.iter().zip(base).map(|(m, b)| m / b).collect();
    let bare_ratios: Vec<f64> = bare.iter().zip(base).map(|(m, b)| m / b).collect();
    let ratio = median(&ratios);
    report.at_least(
        S,
        format!("new TCP connections/s LAN → inet ({CLIENT_THREADS} clients, {seconds} s runs): multiwan ({RULES} rules) / baseline, median of per-round ratios (n={repeats})"),
        format!(
            "{ratio:.3} ({} vs {} per s, medians)",
            fmt_num(median(mw)),
            fmt_num(median(base))
        ),
        ratio,
        0.9,
        "≥ 0.9",
    );
    report.info(
        S,
        "same, multiwan with the 3 links and no rules / baseline (multiwan's fixed cost)",
        format!(
            "{:.3} ({} per s)",
            median(&bare_ratios),
            fmt_num(median(bare))
        ),
    );
    let per_conn = |rate: f64| 1e6 / rate;
    report.detail(
        S,
        format!(
            "connections/s per round: baseline {} | multiwan, {RULES} rules {} | multiwan, no rules {}; per-round ratios {} (rules) and {} (no rules); failed attempts per run: {:?}",
            fmt_list(base),
            fmt_list(mw),
            fmt_list(bare),
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" "),
            bare_ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" "),
            failures
        ),
    );
    report.detail(
        S,
        format!(
            "CPU used by other processes during each run, % of the machine (run order): {}",
            fmt_list(&foreign)
        ),
    );
    report.detail(
        S,
        format!(
            "inverse rate (µs per connection, {CLIENT_THREADS} clients on the shared cores): baseline {} | no rules {} | {RULES} rules {}",
            fmt_num(per_conn(median(base))),
            fmt_num(per_conn(median(bare))),
            fmt_num(per_conn(median(mw))),
        ),
    );
    Ok(())
}
