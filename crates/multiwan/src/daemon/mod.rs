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
mod repair;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{broadcast, mpsc, watch};

use crate::api::{self, DaemonHandle, Event};
use crate::config::{self, Config, OnExit};
use crate::control;
use crate::control::hooks::Hooks;
use crate::control::metrics::Metrics;
use crate::health::Transition;
use crate::kernel::events::{self, KernelEvent};
use crate::kernel::{Kernel, Ownership};
use crate::plan::{Desired, Facts, LinkState, LinkStates};
use crate::probe::RoundReport;
use crate::state::StateDir;
use crate::status;
use links::LinkRuntime;
use report::{Counters, Files};

/// How often the daemon reads back everything it owns and repairs drift (kernel events
/// catch damage at once; this catches what no event reports).
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
    /// What the kernel-event reader counts as ours (updated after each apply).
    scope: watch::Sender<Ownership>,
    repair: repair::Repair,
    /// Links whose conntrack entries are to be deleted once that helps.
    pending_flush: BTreeMap<String, repair::PendingFlush>,
    counters: Counters,
    files: Files,
}

/// The signals the daemon handles.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<()> {
    let config = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::preflight::check_forwarding(&config)?;
    // Before anything is touched: a second daemon on the same instance stops here.
    let socket = control::server::bind(&config.settings.socket)?;
    let (requests, requests_rx) = api::channel(64);
    // Handled from here on (a SIGHUP during start would otherwise end the process);
    // served once the loop runs.
    let signals = Signals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
        hup: signal(SignalKind::hangup())?,
    };
    let kernel = Kernel::new().context("opening netlink")?;
    let state_dir = StateDir::new(&config.settings.state_dir);
    state_dir.remove_leftovers();
    let seed = state_dir.seed()?;
    let (reports_tx, reports_rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(256);

    // Subscribe before the first read, so no change between read and loop is missed.
    // Until the first apply, the scope is the priority range and the nft table.
    let s = &config.settings;
    let (scope, scope_rx) = watch::channel(Ownership {
        priorities: (s.rule_priority, s.rule_priority.saturating_add(999)),
        tables: Vec::new(),
        nft_table: s.nft_table.clone(),
    });
    let kernel_events = events::subscribe(scope_rx)
        .context("subscribing to kernel events (netlink link/address/route/rule, nftables)")?;

    let facts_watch = crate::kernel::facts::FactsWatch::new(&kernel)
        .await
        .context("reading interfaces")?;
    let mut daemon = Daemon {
        facts: facts_watch.facts(),
        facts_watch,
        counters: Counters::new(&config.settings.nft_table),
        files: Files::start(state_dir.clone()),
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
        scope,
        repair: Default::default(),
        pending_flush: BTreeMap::new(),
    };
    daemon.start_links().await;
    daemon.reconcile("start").await?;
    daemon.persist();
    // "running" promises a status file that says so, not the last run's (before the
    // loop: the wait never holds up an event).
    daemon.files.flush().await;
    daemon.initial_hooks();
    tokio::spawn(control::server::serve(socket, requests));
    daemon.start_metrics().await;
    notify::ready(&daemon.summary());
    tracing::info!("running ({})", daemon.summary());

    let inputs = Inputs {
        kernel: kernel_events,
        reports: reports_rx,
        requests: requests_rx,
        signals,
    };
    daemon.event_loop(inputs).await;
    daemon.persist();
    daemon.files.flush().await;
    daemon.stop().await
}

/// Everything the loop waits on.
struct Inputs {
    kernel: mpsc::Receiver<KernelEvent>,
    reports: mpsc::Receiver<RoundReport>,
    requests: mpsc::Receiver<api::Request>,
    signals: Signals,
}

impl Daemon {
    /// The event loop, until SIGTERM or SIGINT. Every branch returns quickly: what
    /// could block (nft, ctnetlink dumps, file syncs, counter reads) runs elsewhere.
    async fn event_loop(&mut self, mut inputs: Inputs) {
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
        let mut verify =
            tokio::time::interval_at(tokio::time::Instant::now() + VERIFY_EVERY, VERIFY_EVERY);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                Some(ev) = inputs.kernel.recv() => {
                    // A burst (an interface going down, a firewall reload) is read as one.
                    let mut batch = vec![ev];
                    while let Ok(more) = inputs.kernel.try_recv() {
                        batch.push(more);
                    }
                    self.on_kernel_events(batch).await;
                }
                Some(report) = inputs.reports.recv() => {
                    let mut transitions = self.on_round(report);
                    // Drain rounds that are already there: one apply for all of them.
                    while let Ok(more) = inputs.reports.try_recv() {
                        transitions.extend(self.on_round(more));
                    }
                    self.act(transitions).await;
                    // A good round may be what a queued conntrack flush waits for.
                    self.flush_pending();
                }
                _ = sleep_until_opt(deadline) => self.on_timers().await,
                _ = tick_opt(&mut watchdog) => notify::watchdog(),
                _ = verify.tick() => {
                    // Someone may have changed what we own without an event we follow.
                    self.force_verify();
                    // A failure is logged, and retried, by `apply_failed`.
                    let _ = self.reconcile("periodic check").await;
                }
                Some(request) = inputs.requests.recv() => self.on_request(request).await,
                _ = inputs.signals.hup.recv() => {
                    let _ = self.reload("SIGHUP").await;
                }
                _ = inputs.signals.term.recv() => break,
                _ = inputs.signals.int.recv() => break,
            }
            self.persist();
        }
    }

    /// Damping holds that end, silent probers, repairs and retries that are due.
    async fn on_timers(&mut self) {
        let now = Instant::now();
        let reports = self.reports_tx.clone();
        let mut transitions: Vec<Transition> = Vec::new();
        for l in self.links.values_mut() {
            transitions.extend(l.health.tick(now));
            transitions.extend(l.supervise(now, reports.clone()));
        }
        self.run_due(now).await;
        self.act(transitions).await;
    }
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
            tracing::debug!("link {}: {}", report.link, report.describe());
        }
        match self.links.get_mut(&report.link) {
            Some(l) => l.on_round(now, &report).into_iter().collect(),
            None => Vec::new(),
        }
    }

    fn states(&self) -> LinkStates {
        self.links
            .iter()
            .map(|(n, l)| (n.clone(), l.health.state()))
            .collect()
    }

    fn log_transition(&mut self, t: &Transition) {
        self.metrics.transition(&t.link, t.to);
        // A link leaving service is a warning (journalctl -p warning shows failures).
        if matches!(t.to, LinkState::Down | LinkState::Degraded) {
            tracing::warn!("link {}: {} -> {} ({})", t.link, t.from, t.to, t.reason);
        } else {
            tracing::info!("link {}: {} -> {} ({})", t.link, t.from, t.to, t.reason);
        }
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
            .flat_map(|l| [l.health.next_deadline(), l.supervise_deadline()])
            .chain([self.repair.deadline()])
            .flatten()
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

    /// SIGTERM: keep the installed state (default) or flush it.
    async fn stop(self) -> Result<()> {
        notify::stopping();
        if self.config.settings.on_exit == OnExit::Flush {
            if let Some(d) = &self.installed {
                let report = self.kernel.flush(&Ownership::from(d)).await?;
                tracing::info!("stopped, flushed ({report})");
                return Ok(());
            }
        }
        tracing::info!("stopped; the installed state stays in force (on_exit = \"keep\")");
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
