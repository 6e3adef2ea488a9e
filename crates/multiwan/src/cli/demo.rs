//! `multiwan demo`: the tour a newcomer runs first.
//!
//! A sandbox of network namespaces: a router with three uplinks (fibre, cable, an LTE
//! backup), three ISPs that drop packets with foreign source addresses (as real ISPs
//! do), an internet with a server that says which address it saw, and a LAN client
//! opening a new connection every 20 ms. The daemon runs in the router; the demo breaks
//! the fibre silently, degrades the cable with loss, cuts a carrier, heals everything,
//! and narrates each step with the outage the client saw. Everything is removed at the
//! end, also on Ctrl-C.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_lab::{ChildGuard, Lab, Traffic};

use super::CliResult;
use crate::status::Status;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM only set a flag: the demo stops at its next wait and the guards
/// tear everything down on the way out.
fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Sleeps in small steps so Ctrl-C is honoured at once.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

const PORT: u16 = 8080;
const LINKS: [(&str, usize); 3] = [("fibre", 1), ("cable", 2), ("lte", 3)];

pub fn run() -> CliResult {
    install_signal_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(anyhow::anyhow!(
            "the demo builds network namespaces: run it as root (sudo multiwan demo)"
        )
        .into());
    }
    let mut demo = Demo::new()?;
    let result = demo.tour();
    if let Err(e) = &result {
        println!("\n{e:#}");
    }
    // Dropping the demo stops the daemon and removes every namespace and file.
    drop(demo);
    println!("sandbox removed: no namespace, rule, table or file of the demo is left.");
    result.map(|_| 0).map_err(Into::into)
}

struct Demo {
    // Field order is drop order: traffic and daemon before the lab.
    traffic: Option<Traffic>,
    daemon: Option<ChildGuard>,
    lab: Lab,
    config: PathBuf,
    log: PathBuf,
    nft_table: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.traffic.take();
        if let Some(mut d) = self.daemon.take() {
            // SIGTERM first, so the daemon removes its socket; SIGKILL if it hangs.
            d.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(d.child().try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.multiwan(&["flush"]);
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(format!("/run/multiwan/{}.sock", self.nft_table));
        let _ = std::fs::remove_dir_all(format!("/var/lib/multiwan/{}", self.nft_table));
        let _ = std::fs::remove_file(format!("/etc/iproute2/rt_tables.d/{}.conf", self.nft_table));
    }
}

/// The demo's config: fibre and cable share the load 3:1, LTE is the backup; every link
/// probes two servers five times a second.
fn config(nft_table: &str) -> String {
    let check = |extra: &str| {
        format!(
            "method = \"icmp\"\ntargets = [\"198.18.0.1\", \"198.18.0.2\"]\n\
             interval = \"200ms\"\ntimeout = \"200ms\"\ndown_after = 3\nup_after = 5\n{extra}"
        )
    };
    format!(
        "[settings]\nnft_table = \"{nft_table}\"\nlan = [\"lan0\"]\nmetrics = \"\"\n\n\
         [links.fibre]\nid = 1\ninterface = \"wan1\"\nweight = 3\n\n[links.fibre.check]\n{}\n\
         [links.cable]\nid = 2\ninterface = \"wan2\"\nweight = 1\n\n[links.cable.check]\n{}\n\
         [links.lte]\nid = 3\ninterface = \"wan3\"\npriority = 2\n\n[links.lte.check]\n{}",
        check(""),
        check("max_loss = 15\nwindow = 10"),
        check(""),
    )
}

impl Demo {
    fn new() -> Result<Demo> {
        println!("multiwan demo: building a sandbox of network namespaces");
        println!("  router (wan1 fibre, wan2 cable, wan3 lte, lan0) — three ISPs — internet — a LAN client");
        let lab = Lab::builder("demo")
            .prefix("mwdemo")
            .build()
            .context("building the sandbox")?;
        let nft_table = format!("mwdemo{}", std::process::id());
        let config_path = std::env::temp_dir().join(format!("{nft_table}.toml"));
        let log = std::env::temp_dir().join(format!("{nft_table}.log"));
        std::fs::write(&config_path, config(&nft_table))?;
        Ok(Demo {
            traffic: None,
            daemon: None,
            lab,
            config: config_path,
            log,
            nft_table,
        })
    }

    fn exe() -> Result<PathBuf> {
        std::env::current_exe().context("finding the multiwan binary")
    }

    fn multiwan(&self, args: &[&str]) -> Result<String> {
        let out = self
            .lab
            .router()
            .command(Self::exe()?)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            bail!(
                "multiwan {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The daemon's live status, over its control socket (a Unix socket is a file:
    /// reachable from outside the router's network namespace).
    fn status(&self) -> Option<Status> {
        let socket = PathBuf::from(format!("/run/multiwan/{}.sock", self.nft_table));
        crate::control::client::request(&socket, &crate::api::ClientRequest::Status)
            .ok()?
            .status
    }

    fn state(&self, link: &str) -> String {
        self.status()
            .and_then(|s| s.links.into_iter().find(|l| l.name == link))
            .map(|l| l.state)
            .unwrap_or_default()
    }

    /// Waits until `link` is in `state` (the daemon's status), at most `limit`.
    fn wait_state(&self, link: &str, state: &str, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.state(link) == state {
                return Ok(start.elapsed());
            }
            pause(Duration::from_millis(20))?;
        }
        bail!(
            "{link} did not become {state} within {limit:?}; daemon log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    fn start_daemon(&mut self) -> Result<()> {
        let log = std::fs::File::create(&self.log)?;
        let mut cmd = Command::new(Self::exe()?);
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config)
            .stdout(log.try_clone()?)
            .stderr(log);
        self.daemon = Some(self.lab.router().spawn(&mut cmd)?);
        let start = Instant::now();
        while !std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains("multiwan: running")
        {
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "the daemon did not start:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            pause(Duration::from_millis(20))?;
        }
        Ok(())
    }

    fn traffic(&self) -> &Traffic {
        self.traffic.as_ref().expect("traffic runs")
    }

    /// The share of the client's connections per link since `since`.
    fn show_split(&self, since: Instant) {
        let attempts: Vec<_> = self
            .traffic()
            .snapshot()
            .into_iter()
            .filter(|a| a.at >= since)
            .collect();
        let total = attempts.len().max(1);
        let mut line = String::from("  new connections:");
        for (name, k) in LINKS {
            let n = attempts.iter().filter(|a| a.isp == Some(k)).count();
            line.push_str(&format!(
                " {name} {:>3.0} %",
                n as f64 * 100.0 / total as f64
            ));
        }
        let failed = attempts.iter().filter(|a| a.isp.is_none()).count();
        line.push_str(&format!(", failed {failed} of {}", attempts.len()));
        println!("{line}");
    }

    fn show_status(&self) {
        if let Some(s) = self.status() {
            for line in s.table().lines() {
                println!("    {line}");
            }
        }
    }

    /// Waits until connections get through again after `from`, then says for how long
    /// new connections failed: from `from` to the start of the last failed attempt.
    fn narrate_outage(&self, from: Instant) -> Result<()> {
        let start = Instant::now();
        loop {
            let after: Vec<_> = self
                .traffic()
                .snapshot()
                .into_iter()
                .filter(|a| a.at >= from)
                .collect();
            let last_fail = after.iter().rposition(|a| a.isp.is_none());
            let recovered = match last_fail {
                None => after.len() >= 10,
                Some(i) => after.len() >= i + 10 && after[i + 1..].iter().all(|a| a.isp.is_some()),
            };
            if recovered {
                let failed = after.iter().filter(|a| a.isp.is_none()).count();
                let window = last_fail.map_or(Duration::ZERO, |i| after[i].at - from);
                println!(
                    "  the LAN client saw {failed} failed connection attempts, the last {:.0} ms after the break",
                    window.as_secs_f64() * 1e3
                );
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(5) {
                println!("  the LAN client's connections did not recover within 5 s");
                return Ok(());
            }
            pause(Duration::from_millis(20))?;
        }
    }

    fn tour(&mut self) -> Result<()> {
        let _server = self.lab.whoami_tcp(PORT)?;
        println!("\n1. multiwan run starts in the router: fibre and cable share the load 3:1,");
        println!("   LTE is the backup. The LAN client opens a connection every 20 ms.");
        self.start_daemon()?;
        let server = IpAddr::V4(self.lab.server(1));
        self.traffic = Some(Traffic::start(
            self.lab.lan(),
            server,
            PORT,
            Duration::from_millis(20),
            Duration::from_millis(300),
        ));
        let t = Instant::now();
        pause(Duration::from_secs(2))?;
        self.show_split(t);
        self.show_status();

        println!("\n2. The fibre ISP silently drops everything (carrier stays up).");
        let cut = Instant::now();
        self.lab.blackhole_isp(1, true)?;
        let took = self.wait_state("fibre", "down", Duration::from_secs(5))?;
        println!(
            "  probes noticed: fibre down after {:.0} ms",
            took.as_secs_f64() * 1e3
        );
        self.narrate_outage(cut)?;
        let t = Instant::now();
        pause(Duration::from_secs(1))?;
        self.show_split(t);

        println!("\n3. The cable starts losing 30 % of its packets: degraded, no new connections;");
        println!("   its existing connections stay. The LTE backup takes the new ones.");
        self.lab.isp_loss(2, 30)?;
        self.wait_state("cable", "degraded", Duration::from_secs(10))?;
        let t = Instant::now();
        pause(Duration::from_secs(1))?;
        self.show_split(t);
        self.show_status();

        println!("\n4. The fibre heals; after 5 good rounds it is back in service.");
        self.lab.blackhole_isp(1, false)?;
        let took = self.wait_state("fibre", "up", Duration::from_secs(10))?;
        println!("  fibre up again after {:.0} ms", took.as_secs_f64() * 1e3);
        self.lab.isp_loss(2, 0)?;
        self.wait_state("cable", "up", Duration::from_secs(15))?;
        let t = Instant::now();
        pause(Duration::from_secs(1))?;
        self.show_split(t);

        println!(
            "\n5. The cable's carrier is lost (modem unplugged): down at once, no probe needed."
        );
        let cut = Instant::now();
        self.lab.carrier(2, false)?;
        let took = self.wait_state("cable", "down", Duration::from_secs(5))?;
        println!("  cable down after {:.0} ms", took.as_secs_f64() * 1e3);
        self.narrate_outage(cut)?;
        let t = Instant::now();
        pause(Duration::from_secs(1))?;
        self.show_split(t);

        println!("\n6. Plugged back in: the cable returns after 5 good rounds.");
        self.lab.carrier(2, true)?;
        self.wait_state("cable", "up", Duration::from_secs(10))?;
        let t = Instant::now();
        pause(Duration::from_secs(1))?;
        self.show_split(t);

        println!("\n7. The fibre fails again soon after it came back: a flapping link is held out");
        println!("   of service (damping), and status says until when.");
        self.lab.blackhole_isp(1, true)?;
        self.wait_state("fibre", "down", Duration::from_secs(5))?;
        self.lab.blackhole_isp(1, false)?;
        pause(Duration::from_secs(2))?;
        self.show_status();

        println!("\nThe daemon's decisions, from its log:");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        for line in log.lines().filter(|l| l.starts_with("multiwan: link ")) {
            // Apply lines list every change; the count and time say enough here.
            let line = match line.find(" ms: ") {
                Some(i) => &line[..i + 3],
                None => line,
            };
            println!("  {line}");
        }
        Ok(())
    }
}
