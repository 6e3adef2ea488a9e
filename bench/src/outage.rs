//! Issue 3: the outage a LAN client sees when the primary uplink fails, with multiwan
//! and with the classic ping-and-`ip route replace` shell loop, in the same lab and the
//! same run, trials interleaved; and, from the daemon's log, where the time goes.
//!
//! Lab: two ISPs (isp1 primary, isp2 backup), targets 198.18.0.1 and .2, a whoami
//! server on inet. Probes: icmp, interval 200 ms, timeout 200 ms, down_after 3, both
//! targets, for multiwan and the classic loop alike.
//!
//! One trial: heal everything; install the method (multiwan: a fresh `multiwan run`
//! whose links start `up`; classic: plain masquerade on every wan, `default via isp1
//! metric 1`, the loop); wait until new connections leave through isp1 and 1 s more
//! (five probe rounds); start a new TCP connection every 20 ms from the LAN client;
//! 200 ms later inject the failure in ISP 1 (blackhole: an nft drop of everything it
//! forwards to or from the router; carrier: its side of the veth down); wait for the
//! first connection through isp2; stop; tear the method down.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_lab::{tcp_whoami, Lab, WhoAmIServer};

use crate::mwan::{self, Instance};
use crate::report::Report;
use crate::traffic::{self, Traffic};
use crate::util::{self, fmt_list, fmt_num, max, median, ms, LineLog};

mod summary;
use summary::summarize;

const SCENARIO: &str = "outage";
const PORT: u16 = 7100;
const EVERY: Duration = Duration::from_millis(20);
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
/// Steady state before the failure: five probe rounds.
const WARM: Duration = Duration::from_millis(1000);
/// Traffic running before the failure.
const PRE: Duration = Duration::from_millis(200);
/// Longest wait for the first connection through the backup.
const MAX_WAIT: Duration = Duration::from_secs(5);
const INTERVAL_MS: u64 = 200;
const CLASSIC_TABLE: &str = "mwbench_classic";
const CLASSIC_METRIC: &str = "1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Multiwan,
    Classic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Blackhole,
    Carrier,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::Blackhole => "blackhole",
            Failure::Carrier => "carrier loss",
        }
    }
}

/// One trial, times in ms (`None`: not observed).
#[derive(Debug, Clone)]
struct Trial {
    method: Method,
    failure: Failure,
    /// Failure in effect → start of the first connection through the backup.
    to_backup: Option<f64>,
    /// First failed connection → first successful one after it.
    client: Option<f64>,
    failed_attempts: usize,
    /// Failure in effect → the daemon's `-> down` line (classic: the loop's `switched`).
    detect: Option<f64>,
    /// `applied N changes in X ms`: X.
    applied_ms: Option<f64>,
    /// `-> down` line → `applied` line, as read from the daemon's stderr.
    down_to_applied: Option<f64>,
    /// `applied` line (classic: `switched`) → start of the first connection through the
    /// backup.
    applied_to_backup: Option<f64>,
    /// `applied` line → `link isp1: deleted N conntrack entries` line (flush_on_down).
    applied_to_flush: Option<f64>,
    /// Failure in effect → the kernel's RTM_NEWLINK with NO-CARRIER for wan1 (carrier).
    kernel_event: Option<f64>,
    reason: String,
}

/// A process already running in ISP 1's namespace that reads commands on its stdin
/// (`nft -i`, `ip -batch -`), so a failure takes effect as soon as a line is written,
/// without a process start-up (~15–20 ms here) between "now" and the failure. The
/// failures are the lab's own: [`Lab::blackhole_isp`]'s table, [`Lab::carrier`]'s
/// `cust` down; healing uses the lab's methods.
struct Injector {
    _proc: netns_lab::ChildGuard,
    stdin: std::process::ChildStdin,
    errors: LineLog,
}

impl Injector {
    fn start(lab: &Lab, failure: Failure) -> Result<Injector> {
        let mut cmd = match failure {
            Failure::Blackhole => {
                let mut c = Command::new("nft");
                c.arg("-i");
                c
            }
            Failure::Carrier => {
                let mut c = Command::new("ip");
                c.args(["-batch", "-"]);
                c
            }
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = lab.isp(1).spawn(&mut cmd)?;
        let stdin = proc.child().stdin.take().context("no stdin pipe")?;
        let errors = LineLog::spawn(proc.child().stderr.take().context("no stderr pipe")?);
        Ok(Injector {
            _proc: proc,
            stdin,
            errors,
        })
    }

    /// Writes the failure; returns the instant just before the write.
    fn fire(&mut self, failure: Failure) -> Result<Instant> {
        use std::io::Write;
        let t = netns_lab::lab::BLACKHOLE_TABLE;
        let line = match failure {
            Failure::Blackhole => format!(
                "add table ip {t}; add chain ip {t} forward {{ type filter hook forward priority filter - 10; policy accept; }}; add rule ip {t} forward iifname \"cust\" counter drop; add rule ip {t} forward oifname \"cust\" counter drop\n"
            ),
            Failure::Carrier => "link set cust down\n".to_string(),
        };
        let at = Instant::now();
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()?;
        Ok(at)
    }

    /// Fails if the injector complained.
    fn check(&self) -> Result<()> {
        let text = self.errors.text();
        if !text.trim().is_empty() {
            bail!("failure injection failed: {text}");
        }
        Ok(())
    }
}

/// What one failover produced.
struct Run {
    attempts: Vec<traffic::Attempt>,
    /// When the failure was injected (the line written to the injector).
    cut: Instant,
    /// When `ip monitor link` in the router printed wan1's NO-CARRIER.
    kernel_event: Option<Instant>,
}

struct OutageLab {
    lab: Lab,
    mw: Instance,
    _server: WhoAmIServer,
}

pub fn run(report: &mut Report, bin: &Path, trials: usize) -> Result<()> {
    eprintln!("multiwan-bench: outage: building the lab (2 ISPs)");
    let lab = Lab::builder("outage")
        .prefix("mwb")
        .isps(2)
        .servers(2)
        .build()?;
    let server = lab.whoami_tcp(PORT)?;
    let mw = Instance::new(bin, "out");
    let targets = lab.servers();
    let links = mwan::link_toml("isp1", 1, "wan1", "priority = 1", &targets, INTERVAL_MS)
        + &mwan::link_toml("isp2", 2, "wan2", "priority = 2", &targets, INTERVAL_MS);
    mw.write_config("lan = [\"lan0\"]", &links)?;
    let o = OutageLab {
        lab,
        mw,
        _server: server,
    };
    report.detail(SCENARIO, o.linkwatch_note());

    let mut done: Vec<Trial> = Vec::new();
    for i in 0..trials {
        let mut order = [
            (Method::Multiwan, Failure::Blackhole),
            (Method::Classic, Failure::Blackhole),
            (Method::Multiwan, Failure::Carrier),
            (Method::Classic, Failure::Carrier),
        ];
        if i % 2 == 1 {
            // Alternate which method goes first, so drift hits both alike.
            order.swap(0, 1);
            order.swap(2, 3);
        }
        // Stratified phase: trial i fails i/N of a probe interval later than trial 0,
        // so the failures fall evenly over the probe schedule (whose phase is otherwise
        // the same in every trial: the sequence start → warm-up → failure is fixed).
        let phase = Duration::from_millis(INTERVAL_MS * i as u64 / trials as u64);
        for (method, failure) in order {
            util::check_interrupted()?;
            eprintln!(
                "multiwan-bench: outage: trial {}/{trials}: {method:?}, {}",
                i + 1,
                failure.name()
            );
            let t = match method {
                Method::Multiwan => o.multiwan_trial(failure, phase),
                Method::Classic => o.classic_trial(failure, phase),
            };
            match t {
                Ok(t) => done.push(t),
                Err(e) => {
                    if util::check_interrupted().is_err() {
                        return Err(e);
                    }
                    report.detail(
                        SCENARIO,
                        format!(
                            "trial {} {method:?} {} failed: {e:#}",
                            i + 1,
                            failure.name()
                        ),
                    );
                    let _ = o.heal();
                    let _ = o.classic_teardown();
                    let _ = o.mw.flush(o.lab.router());
                }
            }
        }
    }
    // nft's share of an apply: this very ruleset rewritten in place, as the daemon's
    // batch does, on a scratch table in the same router.
    let nft = match crate::nfttime::rewrite_times(&o.mw, o.lab.router(), 10) {
        Ok(v) => median(&v),
        Err(e) => {
            report.detail(SCENARIO, format!("timing nft failed: {e:#}"));
            f64::NAN
        }
    };
    summarize(report, &done, nft);
    Ok(())
}

impl OutageLab {
    fn server(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.lab.server(1)), PORT)
    }

    /// Whether the kernel reports wan1's carrier changes at once: linkwatch treats a
    /// change as urgent only for a device whose ifindex differs from its iflink (a veth
    /// whose peer has another index); others, physical NICs included, wait for its next
    /// run, at most one per second for the whole host.
    fn linkwatch_note(&self) -> String {
        let wan = self.lab.wan_ifindex(1).ok();
        let peer = self
            .lab
            .isp(1)
            .ip(&["-o", "link", "show", "dev", "cust"])
            .ok()
            .and_then(|o| {
                let line = String::from_utf8_lossy(&o.stdout).into_owned();
                line.split(':')
                    .next()
                    .and_then(|n| n.trim().parse::<u32>().ok())
            });
        match (wan, peer) {
            (Some(w), Some(p)) if w == p => format!(
                "wan1 has ifindex {w} and its veth peer (isp1's cust) too: the kernel's linkwatch treats its carrier changes as non-urgent, as for a physical NIC, and reports them at its next run (at most one per second, host-wide; other engineers' namespaces create and delete links all the time)"
            ),
            (Some(w), Some(p)) => format!(
                "wan1 has ifindex {w}, its veth peer {p}: linkwatch reports its carrier changes at once (urgent), unlike a physical NIC's"
            ),
            _ => "could not read wan1's and its peer's ifindex".to_string(),
        }
    }

    fn heal(&self) -> Result<()> {
        self.lab.blackhole_isp(1, false)?;
        self.lab.carrier(1, true)?;
        Ok(())
    }

    /// Heals ISP 1 and waits until a ping through wan1 is answered: after a carrier
    /// loss the kernel re-activates the device only at linkwatch's next run (up to 1 s),
    /// and a daemon started before that would see a dead link.
    fn heal_and_settle(&self) -> Result<()> {
        self.heal()?;
        let target = self.lab.server(1).to_string();
        let ok = util::wait_until(Duration::from_secs(5), || {
            self.lab
                .router()
                .exec("ping", &["-n", "-q", "-c1", "-W0.2", "-I", "wan1", &target])
                .is_ok()
        })?;
        if !ok {
            bail!("isp1 does not answer pings through wan1 after healing");
        }
        Ok(())
    }

    /// The ISP a new connection leaves through now.
    fn current_isp(&self) -> Option<usize> {
        tcp_whoami(
            self.lab.lan(),
            self.server().ip(),
            PORT,
            None,
            ATTEMPT_TIMEOUT,
        )
        .ok()
        .and_then(netns_lab::lab::addr::isp_of)
    }

    fn wait_for_isp1(&self) -> Result<()> {
        if !util::wait_until(Duration::from_secs(5), || self.current_isp() == Some(1))? {
            let r = self.lab.router();
            let show = |args: &[&str]| {
                r.ip(args)
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            bail!(
                "new connections do not leave through isp1 before the failure (now: {:?});\nroutes:\n{}rules:\n{}links:\n{}neigh:\n{}",
                self.current_isp(),
                show(&["route"]),
                show(&["rule"]),
                show(&["-o", "link"]),
                show(&["neigh"])
            );
        }
        Ok(())
    }

    /// Traffic, failure, wait for the backup, stop. Returns (attempts, cut, inject time).
    fn failover(&self, failure: Failure, phase: Duration) -> Result<Run> {
        // The kernel's own notification of the carrier change, as any listener gets it.
        let mut monitor_cmd = Command::new("ip");
        monitor_cmd
            .args(["-o", "monitor", "link"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut monitor = self.lab.router().spawn(&mut monitor_cmd)?;
        let events = LineLog::spawn(monitor.child().stdout.take().context("no stdout pipe")?);
        let mut injector = Injector::start(&self.lab, failure)?;
        let server = self.server();
        let traffic = Traffic::start(
            self.lab.lan(),
            server.ip(),
            server.port(),
            EVERY,
            ATTEMPT_TIMEOUT,
        );
        util::sleep(PRE + phase)?;
        let cut = injector.fire(failure)?;
        util::wait_until(MAX_WAIT, || {
            traffic
                .snapshot()
                .iter()
                .any(|a| a.at >= cut && a.isp == Some(2))
        })?;
        util::sleep(Duration::from_millis(100))?;
        let attempts = traffic.finish();
        injector.check()?;
        if failure == Failure::Carrier {
            // Up to the linkwatch delay (1 s) plus a margin.
            events.wait_for("NO-CARRIER", Duration::from_millis(1500))?;
        }
        drop(monitor);
        let kernel_event = events
            .lines()
            .into_iter()
            .find(|(t, l)| *t >= cut && l.contains("wan1") && l.contains("NO-CARRIER"))
            .map(|(t, _)| t);
        Ok(Run {
            attempts,
            cut,
            kernel_event,
        })
    }

    fn multiwan_trial(&self, failure: Failure, phase: Duration) -> Result<Trial> {
        let router = self.lab.router();
        self.heal_and_settle()?;
        self.mw.reset_state();
        let daemon = self.mw.start_daemon(router)?;
        let result = (|| {
            self.wait_for_isp1()?;
            util::sleep(WARM)?;
            self.failover(failure, phase)
        })();
        let log = daemon.stop();
        let healed = self.heal();
        let flushed = self.mw.flush(router);
        let run = result.with_context(|| format!("daemon log:\n{}", log.text()))?;
        let (attempts, cut) = (&run.attempts, run.cut);
        healed?;
        flushed?;

        let lines = log.lines();
        let down = lines
            .iter()
            .position(|(t, l)| *t >= cut && l.contains("link isp1: ") && l.contains("-> down"));
        let early = lines
            .iter()
            .filter(|(t, l)| *t < cut && l.contains("link isp1: ") && l.contains(" -> "))
            .count();
        let applied = down.and_then(|i| {
            lines[i + 1..]
                .iter()
                .find(|(_, l)| l.contains("applied ") && l.contains(" changes in "))
        });
        let backup_at = attempts
            .iter()
            .find(|a| a.at >= cut && a.isp == Some(2))
            .map(|a| a.at);
        let flushed_at = applied.and_then(|(t, _)| {
            lines
                .iter()
                .find(|(u, l)| u >= t && l.contains("link isp1: deleted"))
                .map(|(u, _)| *u)
        });
        Ok(Trial {
            method: Method::Multiwan,
            applied_to_flush: applied.zip(flushed_at).map(|((t, _), f)| signed_ms(*t, f)),
            failure,
            to_backup: traffic::to_backup(attempts, cut, 2).map(ms),
            client: traffic::client_outage(attempts, cut).map(ms),
            failed_attempts: traffic::failures_after(attempts, cut),
            kernel_event: run.kernel_event.map(|t| signed_ms(cut, t)),
            detect: down.map(|i| signed_ms(cut, lines[i].0)),
            applied_ms: applied.and_then(|(_, l)| parse_applied_ms(l)),
            down_to_applied: down
                .zip(applied)
                .map(|(i, (t, _))| ms(t.saturating_duration_since(lines[i].0))),
            applied_to_backup: applied.zip(backup_at).map(|((t, _), b)| signed_ms(*t, b)),
            reason: down
                .map(|i| {
                    let l = &lines[i].1;
                    l.split_once("-> down")
                        .map_or(l.as_str(), |x| x.1)
                        .trim()
                        .to_string()
                })
                .unwrap_or_default()
                + &if early > 0 {
                    format!(" [isp1 changed state {early}× before the failure]")
                } else {
                    String::new()
                },
        })
    }

    fn classic_setup(&self) -> Result<()> {
        let router = self.lab.router();
        router.nft(&format!(
            "table ip {CLASSIC_TABLE} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname {{ \"wan1\", \"wan2\" }} masquerade\n\
             \t}}\n\
             }}\n"
        ))?;
        router.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &self.lab.gateway(1).to_string(),
            "dev",
            "wan1",
            "metric",
            CLASSIC_METRIC,
        ])?;
        Ok(())
    }

    fn classic_teardown(&self) -> Result<()> {
        let router = self.lab.router();
        router.nft(&format!(
            "table ip {CLASSIC_TABLE} {{\n}}\ndelete table ip {CLASSIC_TABLE}\n"
        ))?;
        let _ = router.ip(&["route", "del", "default", "metric", CLASSIC_METRIC]);
        Ok(())
    }

    /// The operator's classic loop (POSIX sh, bounded to 300 rounds): each round pings
    /// both targets through wan1 in parallel (`ping -I wan1 -c1 -W 0.2`), waits the
    /// interval; a round is good if either answered; after 3 bad rounds in a row it
    /// moves the default route to the backup and exits.
    fn classic_script(&self) -> String {
        let t1 = self.lab.server(1);
        let t2 = self.lab.server(2);
        let gw2 = self.lab.gateway(2);
        let secs = INTERVAL_MS as f64 / 1000.0;
        format!(
            "i=0; miss=0\n\
             echo start\n\
             while [ \"$i\" -lt 300 ]; do\n\
             \ti=$((i+1))\n\
             \tping -n -q -I wan1 -c 1 -W {secs} {t1} >/dev/null 2>&1 & p1=$!\n\
             \tping -n -q -I wan1 -c 1 -W {secs} {t2} >/dev/null 2>&1 & p2=$!\n\
             \tsleep {secs}\n\
             \tok=0\n\
             \twait $p1 && ok=1\n\
             \twait $p2 && ok=1\n\
             \tif [ $ok = 1 ]; then miss=0; else miss=$((miss+1)); fi\n\
             \tif [ $miss -ge 3 ]; then\n\
             \t\tip route replace default via {gw2} dev wan2 metric {CLASSIC_METRIC}\n\
             \t\techo switched\n\
             \t\texit 0\n\
             \tfi\n\
             done\n\
             echo gave up\n"
        )
    }

    fn classic_trial(&self, failure: Failure, phase: Duration) -> Result<Trial> {
        let router = self.lab.router();
        self.heal_and_settle()?;
        self.classic_setup()?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &self.classic_script()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let result = (|| {
            let mut guard = router.spawn(&mut cmd)?;
            let out = guard.child().stdout.take().context("no stdout pipe")?;
            let log = LineLog::spawn(out);
            if log.wait_for("start", Duration::from_secs(3))?.is_none() {
                bail!("the classic loop did not start");
            }
            self.wait_for_isp1()?;
            util::sleep(WARM)?;
            let r = self.failover(failure, phase)?;
            drop(guard); // kills the loop if it is still running
            Ok((r, log))
        })();
        let healed = self.heal();
        let torn = self.classic_teardown();
        let (run, log) = result?;
        let (attempts, cut) = (&run.attempts, run.cut);
        healed?;
        torn?;

        let switched = log
            .lines()
            .into_iter()
            .find(|(_, l)| l == "switched")
            .map(|(t, _)| t);
        let backup_at = attempts
            .iter()
            .find(|a| a.at >= cut && a.isp == Some(2))
            .map(|a| a.at);
        Ok(Trial {
            method: Method::Classic,
            applied_to_flush: None,
            failure,
            to_backup: traffic::to_backup(attempts, cut, 2).map(ms),
            client: traffic::client_outage(attempts, cut).map(ms),
            failed_attempts: traffic::failures_after(attempts, cut),
            kernel_event: run.kernel_event.map(|t| signed_ms(cut, t)),
            detect: switched.map(|t| signed_ms(cut, t)),
            applied_ms: None,
            down_to_applied: None,
            applied_to_backup: switched.zip(backup_at).map(|(s, b)| signed_ms(s, b)),
            reason: if switched.is_some() {
                "3 missed rounds".into()
            } else {
                "never switched".into()
            },
        })
    }
}

/// `b - a` in ms, negative when `b` came first.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    if b >= a {
        ms(b - a)
    } else {
        -ms(a - b)
    }
}

/// "applied 5 changes in 12.3 ms: …" → 12.3.
fn parse_applied_ms(line: &str) -> Option<f64> {
    line.split_once("changes in ")?
        .1
        .split_once(" ms")?
        .0
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_lines_parse() {
        assert_eq!(
            parse_applied_ms(
                "multiwan: link state changed: applied 3 changes in 21.4 ms: route replace …"
            ),
            Some(21.4)
        );
        assert_eq!(parse_applied_ms("multiwan: running"), None);
    }
}
