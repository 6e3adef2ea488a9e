//! What the daemon tells: the status object (SPEC §4), `status.json`, and the replies
//! to status and metrics requests.
//!
//! Nothing here blocks the event loop: nft's counters are read off the loop at most
//! once a second and cached ([`Counters`]); a reply that needs them waits for a read
//! made after it was asked, in its own task; files are written in order by one writer
//! task on the blocking pool ([`Files`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::plan::{self, LinkState, LinkStates};
use crate::state::StateDir;
use crate::status::{self, DaemonStatus, LinkStatus, PolicyStatus, Status};

use super::{notify, Daemon};

/// Counters are read at most this often.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

/// nft's named counters of the daemon's table, read off the loop and cached.
#[derive(Clone)]
pub(super) struct Counters {
    table: String,
    cache: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    /// When the last read started; held while reading, so readers queue behind it.
    last: Arc<Mutex<Option<Instant>>>,
}

impl Counters {
    pub fn new(table: &str) -> Counters {
        Counters {
            table: table.to_string(),
            cache: Default::default(),
            last: Default::default(),
        }
    }

    /// The last values read.
    pub fn cached(&self) -> BTreeMap<String, u64> {
        self.cache.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Values read after `asked`, with at most one read per [`COUNTERS_EVERY`]: a
    /// caller that comes soon after a read waits for the next one.
    pub async fn fresh(&self, asked: Instant) -> BTreeMap<String, u64> {
        let mut last = self.last.lock().await;
        if let Some(t) = *last {
            if t >= asked {
                return self.cached();
            }
            tokio::time::sleep_until((t + COUNTERS_EVERY).into()).await;
        }
        let started = Instant::now();
        // `nft` runs as an async child process: this task waits, the loop does not.
        let read = crate::kernel::nft::read_counters(&self.table).await.ok();
        *last = Some(started);
        if let (Some(values), Ok(mut cache)) = (read, self.cache.lock()) {
            *cache = values;
        }
        self.cached()
    }
}

/// A file write, run on the blocking pool.
type Job = Box<dyn FnOnce() + Send>;

/// Writes files of the state directory one after the other, off the loop (an fsync
/// can take long on a busy flash disk), in the order they were asked for.
#[derive(Clone)]
pub(super) struct Files {
    tx: mpsc::UnboundedSender<Job>,
    dir: StateDir,
}

impl Files {
    pub fn start(dir: StateDir) -> Files {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let _ = tokio::task::spawn_blocking(job).await;
            }
        });
        Files { tx, dir }
    }

    /// Replaces `name` in the state directory (atomically, see
    /// [`StateDir::write_atomic`]).
    pub fn write(&self, name: &str, content: Vec<u8>) {
        let (dir, name) = (self.dir.clone(), name.to_string());
        self.run(move || {
            if let Err(e) = dir.write_atomic(&name, &content) {
                tracing::warn!("writing {name}: {e:#}");
            }
        });
    }

    pub fn save_link_states(&self, states: LinkStates) {
        let dir = self.dir.clone();
        self.run(move || {
            if let Err(e) = dir.save_link_states(&states) {
                tracing::warn!("saving link states: {e:#}");
            }
        });
    }

    /// Waits until every write asked for so far is done (at exit).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.run(move || {
            let _ = done.send(());
        });
        let _ = wait.await;
    }

    fn run(&self, job: impl FnOnce() + Send + 'static) {
        let _ = self.tx.send(Box::new(job));
    }
}

impl Daemon {
    /// Answers a status request with counters read after it was asked.
    pub(super) fn reply_status(&self, reply: oneshot::Sender<Status>) {
        let mut status = self.status();
        let counters = self.counters.clone();
        let asked = Instant::now();
        tokio::spawn(async move {
            let values = counters.fresh(asked).await;
            with_counters(&mut status, &values);
            let _ = reply.send(status);
        });
    }

    /// Answers a metrics scrape, like [`reply_status`](Self::reply_status).
    pub(super) fn reply_metrics(&self, reply: oneshot::Sender<String>) {
        let mut status = self.status();
        let metrics = self.metrics.clone();
        let counters = self.counters.clone();
        let asked = Instant::now();
        tokio::spawn(async move {
            let values = counters.fresh(asked).await;
            with_counters(&mut status, &values);
            let _ = reply.send(metrics.render(&status));
        });
    }

    /// Repairs and failed applies, when there is something to say.
    fn daemon_status(&self) -> Option<DaemonStatus> {
        let r = &self.repair;
        if r.repairs == 0 && r.failures == 0 {
            return None;
        }
        Some(DaemonStatus {
            repairs: r.repairs,
            last_repair: r
                .last_repair
                .as_ref()
                .map(|(what, at)| status::RepairStatus {
                    what: what.clone(),
                    at: status::rfc3339(self.wall(*at)),
                }),
            apply_failures: r.failures,
            last_apply_error: r.last_error.clone(),
        })
    }

    /// Saves link states and the status file if an apply happened since the last save.
    pub(super) fn persist(&mut self) {
        if !std::mem::take(&mut self.persist_pending) {
            return;
        }
        self.files.save_link_states(self.states());
        self.write_status();
    }

    /// The status object of SPEC §4.
    /// Counters are the cached ones ([`Counters`]); never starts `nft`.
    // long-fn: one field after another of SPEC §4's link object
    pub fn status(&self) -> Status {
        let counters = self.counters.cached();
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
        Status {
            links,
            policies,
            daemon: self.daemon_status(),
        }
    }

    pub(super) fn write_status(&self) {
        let status = self.status();
        if let Ok(json) = serde_json::to_string_pretty(&status) {
            self.files.write("status.json", json.into_bytes());
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
    pub(super) fn refresh_status(&self) {
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
}

/// Puts the named counters' values into the links' `new_connections`.
fn with_counters(status: &mut Status, values: &BTreeMap<String, u64>) {
    for l in &mut status.links {
        l.new_connections = values
            .get(&plan::nft_counter_name(&l.name))
            .copied()
            .unwrap_or(0);
    }
}
