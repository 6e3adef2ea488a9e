//! `multiwan run`: one tokio event loop that owns the kernel layer.
//!
//! In: netlink events (links, addresses, routes), probe rounds, timers (damping holds),
//! control requests and signals. Out: link state transitions, plans and applies.
//! Every input goes through the same path: update the per-link health machines, then,
//! if any link state or observed fact changed, plan and apply the difference, then
//! act on what the transitions ask for (conntrack flushes, hooks, events).

mod adopt;
mod links;
pub mod notify;
mod operate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use futures::{FutureExt, StreamExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc};

use crate::api::{self, DaemonHandle, Event};
use crate::config::{self, Config, OnExit};
use crate::control;
use crate::control::hooks::Hooks;
use crate::control::metrics::Metrics;
use crate::health::Transition;
use crate::kernel::{Kernel, Ownership};
use crate::plan::{self, Desired, Facts, LinkState, LinkStates, PlanInput};
use crate::probe::RoundReport;
use crate::state::StateDir;
use crate::status::{self, LinkStatus, PolicyStatus, Status};
use links::LinkRuntime;

/// How often the daemon reads back everything it owns and repairs drift.
const VERIFY_EVERY: Duration = Duration::from_secs(300);

/// The running daemon.
pub struct Daemon {
    config: Config,
    kernel: Kernel,
    state_dir: StateDir,
    seed: u32,
    facts: Facts,
    /// The facts kept from netlink events (route events applied one by one).
    facts_watch: crate::kernel::facts::FactsWatch,
    links: BTreeMap<String, LinkRuntime>,
    installed: Option<Desired>,
    /// The next apply reads the kernel back instead of trusting `installed`.
    verify_next: bool,
    /// An apply happened and link states / status are not saved yet.
    persist_pending: bool,
    reports_tx: mpsc::Sender<RoundReport>,
    events: broadcast::Sender<Event>,
    /// Wall-clock and monotonic time at start, to print `since` as RFC 3339.
    epoch: (Instant, SystemTime),
    /// Where the control socket and the metrics listener send their requests.
    requests: DaemonHandle,
    metrics: Metrics,
    metrics_server: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
    hooks: Hooks,
    /// [`Daemon::status_fingerprint`] of the last `status.json` written.
    status_written: std::sync::atomic::AtomicU64,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<()> {
    let config = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::preflight::check_forwarding(&config)?;
    // Before anything is touched: a second daemon on the same instance stops here.
    let socket = control::server::bind(&config.settings.socket)?;
    let (requests, mut requests_rx) = api::channel(64);
    // Handled from here on (a SIGHUP during start would otherwise end the process);
    // served once the loop runs.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let kernel = Kernel::new().context("opening netlink")?;
    let state_dir = StateDir::new(&config.settings.state_dir);
    let seed = state_dir.seed()?;
    let (reports_tx, mut reports_rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(256);

    // Subscribe before the first read, so no change between read and loop is missed.
    let (conn, _handle, mut netlink_events) = rtnetlink::new_multicast_connection(&[
        rtnetlink::MulticastGroup::Link,
        rtnetlink::MulticastGroup::Ipv4Ifaddr,
        rtnetlink::MulticastGroup::Ipv6Ifaddr,
        rtnetlink::MulticastGroup::Ipv4Route,
        rtnetlink::MulticastGroup::Ipv6Route,
    ])
    .context("subscribing to netlink link/address/route events")?;
    tokio::spawn(conn);

    let facts_watch = crate::kernel::facts::FactsWatch::new(&kernel)
        .await
        .context("reading interfaces")?;
    let mut daemon = Daemon {
        facts: facts_watch.facts(),
        facts_watch,
        config,
        kernel,
        state_dir,
        seed,
        links: BTreeMap::new(),
        installed: None,
        verify_next: true,
        persist_pending: false,
        reports_tx,
        events,
        epoch: (Instant::now(), SystemTime::now()),
        requests: requests.clone(),
        metrics: Metrics::default(),
        metrics_server: None,
        hooks: Hooks::default(),
        status_written: Default::default(),
    };
    daemon.start_links().await;
    daemon.reconcile("start").await?;
    daemon.persist();
    daemon.initial_hooks();
    tokio::spawn(control::server::serve(socket, requests));
    daemon.start_metrics().await;
    notify::ready(&daemon.summary());
    eprintln!("multiwan: running ({})", daemon.summary());

    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut verify =
        tokio::time::interval_at(tokio::time::Instant::now() + VERIFY_EVERY, VERIFY_EVERY);

    loop {
        let deadline = daemon.next_deadline();
        tokio::select! {
            Some((msg, _)) = netlink_events.next() => {
                // A burst (an interface going down sends several messages) is read as one;
                // route events are applied as they come, none is kept.
                daemon.facts_watch.note(&msg);
                while let Some(Some((msg, _))) = netlink_events.next().now_or_never() {
                    daemon.facts_watch.note(&msg);
                }
                daemon.on_kernel_change().await;
            }
            Some(report) = reports_rx.recv() => {
                let mut transitions = daemon.on_round(report);
                // Drain rounds that are already there: one apply for all of them.
                while let Ok(more) = reports_rx.try_recv() {
                    transitions.extend(daemon.on_round(more));
                }
                daemon.act(transitions).await;
            }
            _ = sleep_until_opt(deadline) => {
                let now = Instant::now();
                let transitions = daemon.links.values_mut().filter_map(|l| l.health.tick(now)).collect();
                daemon.act(transitions).await;
            }
            _ = tick_opt(&mut watchdog) => notify::watchdog(),
            _ = verify.tick() => {
                // Someone may have changed what we own (an `ip rule del`, an nft
                // flush): read it all back and put it right.
                daemon.verify_next = true;
                daemon.installed = None;
                if let Err(e) = daemon.reconcile("periodic check").await {
                    eprintln!("multiwan: {e:#}");
                }
            }
            Some(request) = requests_rx.recv() => daemon.on_request(request).await,
            _ = sighup.recv() => {
                let _ = daemon.reload("SIGHUP").await;
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        daemon.persist();
    }
    daemon.persist();
    daemon.stop().await
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// Creates the per-link runtime (health machine and prober) of every enabled link.
    async fn start_links(&mut self) {
        let adopted = adopt::link_states(&self.kernel, &self.config, &self.state_dir).await;
        let now = Instant::now();
        for link in self.config.links.iter().filter(|l| l.enabled) {
            let initial = adopted
                .get(&link.name)
                .copied()
                .filter(|s| *s != LinkState::Disabled)
                .unwrap_or(LinkState::Up);
            let rt = LinkRuntime::start(
                link,
                &self.config.settings,
                initial,
                now,
                &self.facts,
                self.reports_tx.clone(),
            );
            self.links.insert(link.name.clone(), rt);
        }
        let transitions = self.observe_interfaces(now);
        for t in &transitions {
            self.log_transition(t);
        }
    }

    /// Feeds the current facts to every link's health machine.
    fn observe_interfaces(&mut self, now: Instant) -> Vec<Transition> {
        let facts = &self.facts;
        self.links
            .values_mut()
            .filter_map(|l| l.observe(now, facts))
            .collect()
    }

    fn on_round(&mut self, report: RoundReport) -> Vec<Transition> {
        let now = Instant::now();
        if self.links.contains_key(&report.link) {
            self.metrics.round(&report);
        }
        match self.links.get_mut(&report.link) {
            Some(l) => l.on_round(now, &report).into_iter().collect(),
            None => Vec::new(),
        }
    }

    async fn on_kernel_change(&mut self) {
        let facts = match self.facts_watch.refresh(&self.kernel).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("multiwan: reading interfaces failed: {e:#}");
                return;
            }
        };
        if facts == self.facts {
            return; // our own route changes, or nothing that matters
        }
        // The kernel drops the routes through an interface on its own, silently (an
        // address removed, the interface down or re-created): read back and repair.
        if self
            .links
            .values()
            .any(|l| l.routes_may_be_gone(&self.facts, &facts))
        {
            self.verify_next = true;
            self.installed = None;
        }
        self.facts = facts;
        let transitions = self.observe_interfaces(Instant::now());
        for l in self.links.values_mut() {
            l.update_endpoint(&self.facts);
        }
        self.act(transitions).await;
        // Facts alone (an address, a gateway, a main-table route) may change the plan.
        if let Err(e) = self.reconcile("interfaces changed").await {
            eprintln!("multiwan: {e:#}");
        }
    }

    fn states(&self) -> LinkStates {
        self.links
            .iter()
            .map(|(n, l)| (n.clone(), l.health.state()))
            .collect()
    }

    /// Plans for the current states and facts, and applies the difference.
    async fn reconcile(&mut self, why: &str) -> Result<()> {
        let states = self.states();
        let desired = plan::plan(&PlanInput {
            config: &self.config,
            states: &states,
            facts: &self.facts,
            seed: self.seed,
        });
        if self.installed.as_ref() == Some(&desired) {
            return Ok(());
        }
        let started = Instant::now();
        // A state change applies against what this process installed last (no read
        // back: that costs more than the change); start, reload and the periodic
        // check read the kernel back and repair any drift.
        let result = match self.installed.as_ref().filter(|_| !self.verify_next) {
            Some(previous) => self.kernel.apply_after(previous, &desired).await,
            None => self.kernel.apply(&desired).await,
        };
        self.metrics.apply_took(started.elapsed());
        let report = result.context("applying the new plan (the previous state stays in force)")?;
        self.verify_next = false;
        if report.changed {
            eprintln!(
                "multiwan: {why}: applied {} changes in {:.1} ms: {}",
                report.count(),
                started.elapsed().as_secs_f64() * 1e3,
                report.changes.join("; ")
            );
        }
        self.installed = Some(desired);
        // Saved once the event is fully handled (after conntrack flushes): writing
        // files and reading counters must not delay what clients wait for.
        self.persist_pending = true;
        Ok(())
    }

    /// Saves link states and the status file if an apply happened since the last save.
    fn persist(&mut self) {
        if !std::mem::take(&mut self.persist_pending) {
            return;
        }
        if let Err(e) = self.state_dir.save_link_states(&self.states()) {
            eprintln!("multiwan: saving link states: {e:#}");
        }
        self.write_status();
    }

    /// Applies what transitions ask for: a new plan first (new connections move at
    /// once), then conntrack flushes of links that went down.
    async fn act(&mut self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            self.refresh_status();
            return;
        }
        for t in &transitions {
            self.log_transition(t);
        }
        if let Err(e) = self.reconcile("link state changed").await {
            eprintln!("multiwan: {e:#}");
        }
        self.after_apply(&transitions).await;
    }

    /// What transitions ask for once the plan is applied: conntrack flushes, hooks.
    async fn after_apply(&mut self, transitions: &[Transition]) {
        let mask = self.config.settings.mark_mask;
        for t in transitions {
            let Some(rt) = self.links.get(&t.link) else {
                continue;
            };
            // From `disabled` too: connections kept through an operator's `down` are
            // on a dead link once `auto` finds it down.
            let went_down = t.to == LinkState::Down
                && matches!(
                    t.from,
                    LinkState::Up | LinkState::Degraded | LinkState::Disabled
                );
            if went_down && rt.link.flush_on_down {
                self.flush_connections(&t.link, rt.mark, mask).await;
            }
            if t.to == LinkState::Up {
                // A better link is back: metered backups move their connections.
                let prio = rt.link.priority;
                let movers: Vec<(String, u32)> = self
                    .links
                    .values()
                    .filter(|o| o.link.flush_on_recover && o.link.priority > prio)
                    .map(|o| (o.link.name.clone(), o.mark))
                    .collect();
                for (name, mark) in movers {
                    self.flush_connections(&name, mark, mask).await;
                }
            }
        }
        self.transition_hooks(transitions);
    }

    async fn flush_connections(&self, link: &str, mark: u32, mask: u32) {
        match self.kernel.delete_conntrack_by_mark(mark, mask).await {
            Ok(n) => eprintln!("multiwan: link {link}: deleted {n} conntrack entries"),
            Err(e) => eprintln!("multiwan: link {link}: deleting conntrack entries failed: {e:#}"),
        }
    }

    fn log_transition(&mut self, t: &Transition) {
        self.metrics.transition(&t.link, t.to);
        eprintln!(
            "multiwan: link {}: {} -> {} ({})",
            t.link, t.from, t.to, t.reason
        );
        let _ = self.events.send(Event {
            time: status::rfc3339(self.wall(t.at)),
            link: t.link.clone(),
            from: t.from.to_string(),
            to: t.to.to_string(),
            reason: t.reason.clone(),
        });
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let (i0, w0) = self.epoch;
        if at >= i0 {
            w0 + (at - i0)
        } else {
            w0 - (i0 - at)
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.links
            .values()
            .filter_map(|l| l.health.next_deadline())
            .min()
    }

    /// One line for systemd's STATUS= and the log.
    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .links
            .iter()
            .map(|(n, l)| format!("{n} {}", l.health.state()))
            .collect();
        parts.join(", ")
    }

    /// The status object of SPEC §4.
    pub fn status(&self) -> Status {
        let counters = self
            .kernel
            .read_counters_blocking(&self.config.settings.nft_table)
            .unwrap_or_default();
        let desired = self.installed.as_ref();
        let links = self
            .config
            .links
            .iter()
            .map(|link| {
                let summary = desired.and_then(|d| d.links.iter().find(|s| s.name == link.name));
                let rt = self.links.get(&link.name);
                let addresses = self
                    .facts
                    .interfaces
                    .get(&link.interface)
                    .map(|f| f.addresses.iter().map(|a| a.to_string()).collect())
                    .unwrap_or_default();
                LinkStatus {
                    name: link.name.clone(),
                    interface: link.interface.clone(),
                    id: link.id,
                    state: rt
                        .map(|r| r.health.state())
                        .unwrap_or(LinkState::Disabled)
                        .to_string(),
                    gateway: summary.and_then(|s| s.gateway.map(|g| g.to_string())),
                    gateway6: summary.and_then(|s| s.gateway6.map(|g| g.to_string())),
                    addresses,
                    priority: link.priority,
                    weight: link.weight,
                    rtt_ms: rt.and_then(|r| r.health.rtt_ms()),
                    loss_pct: rt.and_then(|r| r.health.loss_pct()),
                    since: rt.map(|r| status::rfc3339(self.wall(r.health.since()))),
                    reason: rt.map(|r| r.health.reason().to_string()),
                    override_: rt
                        .and_then(|r| r.health.operator_override())
                        .map(|o| o.as_str().to_string()),
                    damped_until: rt
                        .and_then(|r| r.health.damped_until())
                        .map(|d| status::rfc3339(self.wall(d))),
                    share_pct: summary.map_or(0.0, |s| s.share_pct),
                    new_connections: counters
                        .get(&plan::nft_counter_name(&link.name))
                        .copied()
                        .unwrap_or(0),
                    targets: rt
                        .map(|r| {
                            r.health
                                .targets()
                                .into_iter()
                                .map(|t| status::TargetStatus {
                                    target: t.target,
                                    up: t.up,
                                    rtt_ms: t.rtt_ms,
                                    loss_pct: t.loss_pct,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        let policies = desired
            .map(|d| {
                d.policies
                    .iter()
                    .map(|(name, active)| PolicyStatus {
                        name: name.clone(),
                        active: active.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status { links, policies }
    }

    fn write_status(&self) {
        let status = self.status();
        if let Ok(json) = serde_json::to_string_pretty(&status) {
            if let Err(e) = self.state_dir.write_atomic("status.json", json.as_bytes()) {
                eprintln!("multiwan: writing status: {e:#}");
            }
        }
        self.status_written.store(
            self.status_fingerprint(),
            std::sync::atomic::Ordering::Relaxed,
        );
        notify::status(&self.summary());
    }

    /// Rewrites `status.json` when what it says about the links changed without a
    /// transition: a damping hold that a flap pushed further out or that ended, a new
    /// reason ("held down by flap damping"). Not for RTT and loss, which change every
    /// round (`multiwan status` asks the daemon for those).
    fn refresh_status(&self) {
        let written = self
            .status_written
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.status_fingerprint() != written {
            self.write_status();
        }
    }

    /// A hash of each link's state, reason, hold and override.
    fn status_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, l) in &self.links {
            name.hash(&mut h);
            l.health.state().to_string().hash(&mut h);
            l.health.reason().hash(&mut h);
            l.health.damped_until().hash(&mut h);
            l.health.operator_override().hash(&mut h);
        }
        h.finish()
    }

    /// SIGTERM: keep the installed state (default) or flush it.
    async fn stop(self) -> Result<()> {
        notify::stopping();
        if self.config.settings.on_exit == OnExit::Flush {
            if let Some(d) = &self.installed {
                let report = self.kernel.flush(&Ownership::from(d)).await?;
                eprintln!("multiwan: stopped, flushed ({report})");
                return Ok(());
            }
        }
        eprintln!("multiwan: stopped; the installed state stays in force (on_exit = \"keep\")");
        Ok(())
    }
}

/// Where `multiwan status` finds the last status when no daemon answers.
pub fn status_file(config: &Config) -> PathBuf {
    config.settings.state_dir.join("status.json")
}

/// How long a round may take at most; used by tests and the demo to wait sensibly.
pub fn round_time(config: &Config) -> Duration {
    config
        .links
        .iter()
        .filter_map(|l| l.check.as_ref())
        .map(|c| c.interval.max(c.timeout))
        .max()
        .unwrap_or(Duration::from_secs(1))
}
