//! Issue 9's bench rows: the LAN outage of a firewall reload (`flush ruleset` and the
//! firewall's table loaded again, while the daemon runs), and probe round lateness and
//! false loss while status and metrics are asked for 20 times a second each.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netns_lab::{Lab, Netns};

use crate::mwan::{self, Instance};
use crate::report::Report;
use crate::traffic::Traffic;
use crate::util::{self, fmt_list, fmt_num, max, median, ms};

const PORT: u16 = 7300;
const INTERVAL_MS: u64 = 200;
const METRICS: &str = "127.0.0.1:9593";

/// The operator's firewall, as `systemctl reload nftables` loads it.
const FIREWALL: &str = "table inet filter {
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname \"lan0\" accept
	}
}
";

/// A lab of two ISPs with the daemon running (isp1 primary, isp2 backup) and the
/// operator's firewall loaded.
struct Setup {
    lab: Lab,
    mw: Instance,
    daemon: mwan::Daemon,
    _server: netns_lab::WhoAmIServer,
}

fn setup(bin: &std::path::Path, tag: &str, settings: &str) -> Result<Setup> {
    let lab = Lab::builder(tag).prefix("mwb").isps(2).servers(2).build()?;
    let server = lab.whoami_tcp(PORT)?;
    let mw = Instance::new(bin, tag);
    let targets = lab.servers();
    let links = mwan::link_toml("isp1", 1, "wan1", "priority = 1", &targets, INTERVAL_MS)
        + &mwan::link_toml("isp2", 2, "wan2", "priority = 2", &targets, INTERVAL_MS);
    mw.write_config(&format!("lan = [\"lan0\"]\n{settings}"), &links)?;
    mw.reset_state();
    lab.router().nft(FIREWALL)?;
    let daemon = mw.start_daemon(lab.router())?;
    Ok(Setup {
        lab,
        mw,
        daemon,
        _server: server,
    })
}

/// Firewall-reload outage: `flush ruleset` plus the firewall, in one `nft -f` (what
/// a reload runs), while the LAN client connects every 20 ms; the time from the reload
/// until connections work again (the client's view: first failure → first success).
pub fn reload(report: &mut Report, bin: &std::path::Path, trials: usize) -> Result<()> {
    let s = setup(bin, "reload", "")?;
    let server = IpAddr::V4(s.lab.server(1));
    let mut outages = Vec::new();
    let mut not_recovered = 0;
    for _ in 0..trials {
        util::check_interrupted()?;
        let traffic = Traffic::start(
            s.lab.lan(),
            server,
            PORT,
            Duration::from_millis(20),
            Duration::from_millis(300),
        );
        util::sleep(Duration::from_millis(300))?;
        let cut = Instant::now();
        s.lab.router().nft(&format!("flush ruleset\n{FIREWALL}"))?;
        util::wait_until(Duration::from_secs(5), || {
            let snap = traffic.snapshot();
            let after: Vec<_> = snap.iter().filter(|a| a.at > cut).collect();
            after.len() >= 15 && after.iter().rev().take(5).all(|a| a.isp.is_some())
        })?;
        let attempts = traffic.finish();
        match netns_lab::outage_after(&attempts, cut) {
            Some(Duration::MAX) => not_recovered += 1,
            Some(d) => outages.push(ms(d)),
            None => outages.push(0.0),
        }
        util::sleep(Duration::from_millis(500))?;
    }
    let repairs = s
        .daemon
        .log
        .lines()
        .iter()
        .filter(|(_, l)| l.contains(": repair (") && l.contains("applied"))
        .count();
    drop(s.daemon);
    let (med, worst) = (median(&outages), max(&outages));
    report.at_most(
        "reload",
        "firewall reload → LAN connections work again, median",
        format!("{} ms", fmt_num(med)),
        med,
        300.0,
        "ms",
        "≤ 300 ms",
    );
    report.at_most(
        "reload",
        "firewall reload → LAN connections work again, worst",
        format!("{} ms", fmt_num(worst)),
        worst,
        1000.0,
        "ms",
        "≤ 1 s",
    );
    report.detail(
        "reload",
        format!(
            "{trials} trials (`nft -f` of `flush ruleset` + an inet filter table, LAN client \
             connecting every 20 ms); outages (ms): {}; not recovered within 5 s: \
             {not_recovered}; repairs logged by the daemon: {repairs}",
            fmt_list(&outages)
        ),
    );
    drop(s.mw);
    Ok(())
}

/// Probe round lateness and false loss, quiet and then with status and metrics asked
/// for 20 times a second each.
pub fn lateness(report: &mut Report, bin: &std::path::Path, seconds: u64) -> Result<()> {
    let s = setup(bin, "late", &format!("metrics = \"{METRICS}\""))?;
    let wan1 = s.lab.wan_addr(1);
    let target = s.lab.server(1);
    let socket = format!("/run/multiwan/{}.sock", s.mw.nft_table);
    util::sleep(Duration::from_secs(1))?;

    let quiet = phase(&s, wan1, target, seconds, None)?;
    let loaded = phase(&s, wan1, target, seconds, Some(&socket))?;
    for (name, p) in [("quiet", &quiet), ("status + metrics 20/s each", &loaded)] {
        report.detail(
            "lateness",
            format!(
                "{name}: {} rounds, lateness p50 {} ms, p99 {} ms, max {} ms; probes lost or \
                 failed {}; isp1 down {} times; {} replies, reply time p50 {} ms, max {} ms",
                p.rounds,
                fmt_num(p.p50),
                fmt_num(p.p99),
                fmt_num(p.max),
                p.lost,
                p.downs,
                p.replies,
                fmt_num(p.reply_p50),
                fmt_num(p.reply_max)
            ),
        );
    }
    report.at_most(
        "lateness",
        "probe round lateness p99, status + metrics 20/s each",
        format!(
            "{} ms (quiet: {} ms)",
            fmt_num(loaded.p99),
            fmt_num(quiet.p99)
        ),
        loaded.p99,
        10.0,
        "ms",
        "≤ 10 ms",
    );
    report.at_most(
        "lateness",
        "false loss (probes lost or failed), status + metrics 20/s each",
        format!("{} of {} rounds", loaded.lost, loaded.rounds),
        loaded.lost as f64,
        0.0,
        "",
        "0",
    );
    drop(s.daemon);
    Ok(())
}

#[derive(Debug, Default)]
struct Phase {
    rounds: usize,
    p50: f64,
    p99: f64,
    max: f64,
    lost: u64,
    downs: u64,
    replies: usize,
    reply_p50: f64,
    reply_max: f64,
}

/// One measuring window: echo requests to `target` from `wan1` seen in ISP 1 (one per
/// round), and, with `socket`, the status and metrics load.
fn phase(
    s: &Setup,
    wan1: Ipv4Addr,
    target: Ipv4Addr,
    seconds: u64,
    socket: Option<&str>,
) -> Result<Phase> {
    let before = scrape(s.lab.router()).unwrap_or_default();
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let stop = stop.clone();
        s.lab
            .isp(1)
            .spawn_thread(move || capture_echo_requests(wan1, target, &stop))?
    };
    let replies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let mut load = Vec::new();
    if let Some(socket) = socket {
        for kind in ["status", "metrics"] {
            let (stop, replies, socket) = (stop.clone(), replies.clone(), socket.to_string());
            load.push(s.lab.router().spawn_thread(move || {
                // 20 requests a second, each on its own thread (inheriting this
                // thread's namespace): asked on time, whatever the replies take.
                let mut asked = Vec::new();
                let start = Instant::now();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let (replies, socket) = (replies.clone(), socket.clone());
                    asked.push(std::thread::spawn(move || {
                        let t = Instant::now();
                        let ok = match kind {
                            "status" => status_request(&socket).is_ok(),
                            _ => http_metrics().is_ok(),
                        };
                        if ok {
                            replies.lock().unwrap().push(ms(t.elapsed()));
                        }
                    }));
                    i += 1;
                    let next = start + Duration::from_millis(50) * i;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                for a in asked {
                    let _ = a.join();
                }
            })?);
        }
    }
    util::sleep(Duration::from_secs(seconds))?;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.join();
    }
    let seen = capture
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
    let after = scrape(s.lab.router()).unwrap_or_default();
    let mut late: Vec<f64> = seen
        .windows(2)
        .map(|w| (ms(w[1] - w[0]) - INTERVAL_MS as f64).max(0.0))
        .collect();
    late.sort_by(f64::total_cmp);
    let replies = replies.lock().unwrap().clone();
    let counter = |m: &str, f: &dyn Fn(&str) -> bool| -> f64 {
        m.lines()
            .filter(|l| f(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let lost = |l: &str| {
        l.starts_with("multiwan_probes_total{link=\"isp1\"")
            && (l.contains("result=\"lost\"") || l.contains("result=\"failed\""))
    };
    let downs =
        |l: &str| l.starts_with("multiwan_link_transitions_total{link=\"isp1\",to=\"down\"");
    Ok(Phase {
        rounds: seen.len(),
        p50: percentile(&late, 0.5),
        p99: percentile(&late, 0.99),
        max: late.last().copied().unwrap_or(f64::NAN),
        lost: (counter(&after, &lost) - counter(&before, &lost)).max(0.0) as u64,
        downs: (counter(&after, &downs) - counter(&before, &downs)).max(0.0) as u64,
        replies: replies.len(),
        reply_p50: median(&replies),
        reply_max: max(&replies),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Arrival times of the echo requests from `src` to `dst` on ISP 1's customer
/// interface (a packet socket; the thread runs in ISP 1's namespace) until `stop`.
fn capture_echo_requests(src: Ipv4Addr, dst: Ipv4Addr, stop: &AtomicBool) -> Result<Vec<Instant>> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let proto = (libc::ETH_P_IP as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto));
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("packet socket");
        }
        let name = std::ffi::CString::new("cust").unwrap();
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e).context("binding the packet socket to cust");
        }
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            let at = Instant::now();
            if n < 28 {
                continue;
            }
            let p = &buf[..n as usize];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let is_request = p[9] == 1
                && p[12..16] == src.octets()
                && p[16..20] == dst.octets()
                && p.get(ihl) == Some(&8);
            if is_request {
                seen.push(at);
            }
        }
        libc::close(fd);
        Ok(seen)
    }
}

/// One status request over the control socket, its reply read in full.
fn status_request(socket: &str) -> Result<()> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"{\"request\":\"status\"}\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    anyhow::ensure!(line.contains("\"ok\":true"), "status refused: {line}");
    Ok(())
}

fn http_metrics() -> Result<String> {
    let mut s = std::net::TcpStream::connect(METRICS)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The metrics exposition, scraped from inside the router.
fn scrape(router: &Netns) -> Result<String> {
    router.run(http_metrics)?
}
