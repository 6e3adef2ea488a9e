//! Applying plans, and putting right what others break (SPEC §2.14).
//!
//! A state change applies against what this process installed last (no read-back: that
//! costs more than the change). Everything else reads the kernel back first: start,
//! reload, the periodic check, and **repairs**. The kernel's own change events say when
//! something multiwan owns may be damaged: its nft table changed or deleted (a firewall
//! reload's `flush ruleset`), one of its rules or routes deleted, a route in its
//! tables replaced. Its own applies cause such events too; they are told apart by
//! comparing with what it installed (a rule or route it no longer wants being deleted
//! is its own doing), and where that is not possible (nft) by a read-back apply that
//! finds nothing to do. A repair waits [`DEBOUNCE`] for the rest of a burst (a
//! firewall reload is a flush followed by a load), then applies in full.
//!
//! A failed apply falls back at once to a full read-back apply; if that fails too, it
//! is retried with a growing delay ([`backoff`]) until one succeeds. Each is logged,
//! counted in `multiwan_repairs_total{what}` and shown in status (`daemon`).
//!
//! Conntrack entries of a link that left service are deleted only once an apply that
//! took it out has succeeded and some link is in service to take its connections
//! (SPEC §2.7, §3): until then they wait in `pending_flush`, so an outage of every
//! uplink resets nothing and a failed apply deletes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::health::Transition;
use crate::kernel::events::KernelEvent;
use crate::kernel::{routes, ApplyReport, Ownership};
use crate::plan::{self, Desired, LinkState, PlanInput};

use super::Daemon;

/// How long a repair waits for the rest of a burst of changes.
pub(super) const DEBOUNCE: Duration = Duration::from_millis(75);

/// What the daemon knows about repairs and failed applies.
#[derive(Debug, Default)]
pub(super) struct Repair {
    /// When a read-back apply is due, and what was damaged.
    due: Option<Instant>,
    what: BTreeSet<&'static str>,
    /// What the read-back apply under way repairs (counted once it changes something).
    running: BTreeSet<&'static str>,
    /// Consecutive failed applies, the last error and when to try again.
    pub failures: u32,
    pub last_error: Option<String>,
    retry_at: Option<Instant>,
    /// Repairs that changed something, and the last one (what, when).
    pub repairs: u64,
    pub last_repair: Option<(String, Instant)>,
}

impl Repair {
    /// Something of `what` may be damaged: repair after the debounce.
    fn damaged(&mut self, what: &'static str, now: Instant) {
        self.what.insert(what);
        self.due.get_or_insert(now + DEBOUNCE);
    }

    pub fn deadline(&self) -> Option<Instant> {
        match (self.due, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A link whose conntrack entries wait to be deleted.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingFlush {
    pub mark: u32,
    /// A `flush_on_recover` mover: deleted even while its link is in service.
    pub mover: bool,
    /// For a failure that probes decided: when; the link to move to must have worked
    /// since (all uplinks may have failed at once, the others not confirmed yet).
    pub since: Option<Instant>,
}

/// The delay before retry number `failures` (1, 2, …): 100 ms doubling up to 5 s.
pub(super) fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5000))
}

impl Daemon {
    /// Makes `verify_next` hold: the next apply reads the kernel back.
    pub(super) fn force_verify(&mut self) {
        self.verify_next = true;
        self.installed = None;
    }

    /// A batch of kernel events, read at once.
    pub(super) async fn on_kernel_events(&mut self, events: Vec<KernelEvent>) {
        let now = Instant::now();
        let mut facts = false;
        for ev in events {
            match ev {
                KernelEvent::Facts => {
                    self.facts_watch.note_interfaces();
                    facts = true;
                }
                KernelEvent::FactsRoute { deleted, msg } => {
                    // Applied at once: a burst of main-table routes is not kept.
                    self.facts_watch.note_route(&msg, !deleted);
                    facts = true;
                }
                KernelEvent::Rule { deleted, rule } => {
                    let ours = |r: &plan::IpRule| {
                        self.installed.as_ref().is_none_or(|d| d.rules.contains(r))
                    };
                    // A rule of ours deleted; additions are another tenant's (or ours).
                    if deleted && rule.as_ref().is_some_and(ours) {
                        self.repair.damaged("rules", now);
                    }
                }
                KernelEvent::Route { deleted, msg } => {
                    if self.route_damaged(deleted, &msg) {
                        self.repair.damaged("routes", now);
                    }
                }
                KernelEvent::Nft { table_deleted } => {
                    if table_deleted && self.installed.is_some() {
                        tracing::warn!(
                            "nft table inet {} was deleted by someone else (a \
                             firewall reload's `flush ruleset`?): restoring it",
                            self.config.settings.nft_table
                        );
                    }
                    self.repair.damaged("nft", now);
                }
                KernelEvent::Overflow { socket } => {
                    tracing::warn!(
                        "{socket} events were lost (socket buffer full): reading \
                         the interfaces and everything installed again"
                    );
                    self.metrics.repair("overflow");
                    self.repair.damaged("overflow", now);
                    // At once, not after the debounce: nothing tells what was missed.
                    self.repair.due = Some(now);
                    if socket == "rtnetlink" {
                        // Route events were lost: the main table is read whole.
                        self.facts_watch.reread();
                    }
                    facts = true;
                }
            }
        }
        if facts {
            self.on_kernel_change().await;
        }
    }

    /// Whether a route event in an owned table may have changed what is installed: a
    /// route of ours deleted, or a route added or replaced that is not what we installed
    /// (someone's `ip route replace` over ours; another tenant's route in our table
    /// costs one read-back that finds nothing to do).
    fn route_damaged(
        &self,
        deleted: bool,
        msg: &netlink_packet_route::route::RouteMessage,
    ) -> bool {
        let names: BTreeMap<u32, String> = self
            .facts
            .interfaces
            .iter()
            .map(|(n, f)| (f.ifindex, n.clone()))
            .collect();
        let Some(route) = routes::from_message(msg, &names) else {
            return false; // not a route multiwan makes
        };
        let Some(installed) = &self.installed else {
            return true;
        };
        installed.routes.contains(&route) == deleted
    }

    /// Interfaces, addresses or main-table routes changed.
    pub(super) async fn on_kernel_change(&mut self) {
        let facts = match self.facts_watch.refresh(&self.kernel).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("reading interfaces failed: {e:#}");
                return;
            }
        };
        if facts == self.facts {
            return; // nothing that matters
        }
        // The kernel drops the routes through an interface on its own, silently (an
        // address removed, the interface down or re-created): read back and repair.
        if self
            .links
            .values()
            .any(|l| l.routes_may_be_gone(&self.facts, &facts))
        {
            self.force_verify();
        }
        self.facts = facts;
        let transitions = self.observe_interfaces(Instant::now());
        for l in self.links.values_mut() {
            l.update_endpoint(&self.facts);
        }
        self.act(transitions).await;
        // Facts alone (an address, a gateway, a main-table route) may change the plan.
        // A failure is logged, and retried, by `apply_failed`.
        let _ = self.reconcile("interfaces changed").await;
    }

    /// Runs a repair or a retry whose time has come.
    pub(super) async fn run_due(&mut self, now: Instant) {
        let repair_due = self.repair.due.is_some_and(|d| d <= now);
        let retry_due = self.repair.retry_at.is_some_and(|d| d <= now);
        if !repair_due && !retry_due {
            return;
        }
        let what = std::mem::take(&mut self.repair.what);
        let why = if repair_due {
            self.repair.due = None;
            let names: Vec<&str> = what.iter().copied().collect();
            format!("repair ({} changed by someone else?)", names.join(", "))
        } else {
            format!("retry {}", self.repair.failures)
        };
        self.repair.running.extend(what);
        self.repair.retry_at = None;
        self.force_verify();
        // A failure is logged, and retried, by `apply_failed`.
        let _ = self.reconcile(&why).await;
        self.flush_pending();
    }

    /// Plans for the current states and facts, and applies the difference.
    pub(super) async fn reconcile(&mut self, why: &str) -> Result<()> {
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
        let fast = self.installed.is_some() && !self.verify_next;
        let result = match self.installed.as_ref().filter(|_| fast) {
            Some(previous) => self.kernel.apply_after(previous, &desired).await,
            None => self.kernel.apply(&desired).await,
        };
        self.metrics.apply_took(started.elapsed());
        let result = match result {
            Err(e) if fast => {
                // What we installed last may not be what the kernel holds (a flushed
                // nft table): read it all back and apply in full, at once.
                tracing::warn!(
                    "{why}: applying the change failed: {e:#}; reading the \
                     kernel back and applying in full"
                );
                self.metrics.repair("apply_failed");
                self.force_verify();
                let started = Instant::now();
                let r = self.kernel.apply(&desired).await;
                self.metrics.apply_took(started.elapsed());
                r
            }
            r => r,
        };
        match result {
            Ok(report) => {
                self.applied(why, started, desired, &report);
                Ok(())
            }
            Err(e) => {
                self.apply_failed(why, &e);
                Err(e).context(format!(
                    "{why}: applying the new plan (the previous state stays in force)"
                ))
            }
        }
    }

    fn applied(&mut self, why: &str, started: Instant, desired: Desired, report: &ApplyReport) {
        self.verify_next = false;
        if report.changed {
            tracing::info!(
                "{why}: applied {} changes in {:.1} ms: {}",
                report.count(),
                started.elapsed().as_secs_f64() * 1e3,
                report.changes.join("; ")
            );
        }
        let what: Vec<&'static str> = std::mem::take(&mut self.repair.running)
            .into_iter()
            .collect();
        if report.changed && !what.is_empty() {
            for w in &what {
                self.metrics.repair(w);
            }
            self.repair.repairs += 1;
            self.repair.last_repair = Some((what.join(", "), Instant::now()));
        }
        if self.repair.failures > 0 {
            tracing::info!(
                "{why}: applied after {} failed attempts",
                self.repair.failures
            );
            self.repair.failures = 0;
            self.repair.last_error = None;
            self.repair.retry_at = None;
        }
        let _ = self.scope.send(Ownership::from(&desired));
        self.installed = Some(desired);
        // Saved once the event is fully handled (after conntrack flushes): writing
        // files must not delay what clients wait for.
        self.persist_pending = true;
    }

    fn apply_failed(&mut self, why: &str, e: &crate::kernel::KernelError) {
        self.metrics.repair("apply_failed");
        // Still to be repaired: counted when the retry succeeds.
        let running = std::mem::take(&mut self.repair.running);
        self.repair.what.extend(running);
        self.repair.failures += 1;
        let delay = backoff(self.repair.failures);
        self.repair.retry_at = Some(Instant::now() + delay);
        self.repair.last_error = Some(format!("{why}: {e}"));
        self.force_verify();
        tracing::error!(
            "{why}: apply failed ({} in a row): {e}; the previous state stays in \
             force, retrying with a full read-back in {} ms",
            self.repair.failures,
            delay.as_millis()
        );
        self.persist_pending = true;
    }

    /// Applies what transitions ask for: a new plan first (new connections move at
    /// once), then conntrack flushes of links that went down.
    pub(super) async fn act(&mut self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            self.refresh_status();
            return;
        }
        for t in &transitions {
            self.log_transition(t);
        }
        // A failure is logged, and retried, by `apply_failed`.
        let _ = self.reconcile("link state changed").await;
        self.after_apply(&transitions);
    }

    /// What transitions ask for once the plan is applied: conntrack flushes (queued
    /// until they help), hooks.
    pub(super) fn after_apply(&mut self, transitions: &[Transition]) {
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
                let p = PendingFlush {
                    mark: rt.mark,
                    mover: false,
                    since: rt.silent_failure.then_some(t.at),
                };
                self.pending_flush.insert(t.link.clone(), p);
            }
            if t.to == LinkState::Up {
                // A better link is back: metered backups move their connections.
                let prio = rt.link.priority;
                let movers: Vec<(String, PendingFlush)> = self
                    .links
                    .values()
                    .filter(|o| o.link.flush_on_recover && o.link.priority > prio)
                    .map(|o| {
                        let p = PendingFlush {
                            mark: o.mark,
                            mover: true,
                            since: None,
                        };
                        (o.link.name.clone(), p)
                    })
                    .collect();
                self.pending_flush.extend(movers);
            }
        }
        self.flush_pending();
        self.transition_hooks(transitions);
    }

    /// Deletes the queued conntrack entries if that helps now: the installed plan is
    /// the one for the current states (the apply that took their links out succeeded)
    /// and some link is in service. After a failure that probes decided, that link must
    /// also have shown it works since (a good round): when every uplink fails silently
    /// at once, the first failure is confirmed before the others, and its connections
    /// would be deleted with nowhere to go. That costs up to one probe interval of the
    /// other links before the entries go; carrier loss and the like are certain and
    /// local, and flush at once. A link queued because it went down and that is back
    /// in service keeps its connections; a `flush_on_recover` mover moves anyway.
    pub(super) fn flush_pending(&mut self) {
        if self.pending_flush.is_empty() || self.installed.is_none() || self.verify_next {
            return;
        }
        let mask = self.config.settings.mark_mask;
        let queued: Vec<(String, PendingFlush)> = self
            .pending_flush
            .iter()
            .map(|(n, p)| (n.clone(), *p))
            .collect();
        for (name, p) in queued {
            let in_service = |l: &super::links::LinkRuntime| l.health.state().in_service();
            let back = self.links.get(&name).is_some_and(in_service);
            if back && !p.mover {
                self.pending_flush.remove(&name);
                continue;
            }
            let somewhere = self.links.iter().any(|(n, l)| {
                *n != name && in_service(l) && p.since.is_none_or(|t| l.proven_since(t))
            });
            if somewhere {
                self.pending_flush.remove(&name);
                // Not awaited: the loop goes on while the entries go.
                drop(self.flush_connections(&name, p.mark, mask));
            }
        }
    }

    /// Deletes a link's conntrack entries off the loop (a dump and deletes over
    /// ctnetlink can take a while with many connections). The handle lets a caller
    /// that must answer only once they are gone (a reload) wait for it.
    pub(super) fn flush_connections(
        &self,
        link: &str,
        mark: u32,
        mask: u32,
    ) -> tokio::task::JoinHandle<()> {
        let link = link.to_string();
        tokio::task::spawn_blocking(move || {
            match crate::kernel::conntrack::delete_by_mark(mark, mask) {
                Ok(n) => tracing::info!("link {link}: deleted {n} conntrack entries"),
                Err(e) => {
                    tracing::warn!("link {link}: deleting conntrack entries failed: {e:#}")
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(7), Duration::from_millis(5000));
        assert_eq!(backoff(100), Duration::from_millis(5000));
    }
}
