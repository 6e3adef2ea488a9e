//! One link inside the daemon: its health machine, its prober, and the endpoint the
//! prober sends from (re-derived from the facts whenever they change, so a DHCP renew
//! or a PPP reconnect with a new ifindex is picked up without a restart).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::{Gateway, Link, Settings};
use crate::health::{InterfaceStatus, LinkHealth, Round, Transition};
use crate::plan::marks::MarkLayout;
use crate::plan::{Facts, LinkState};
use crate::probe::{self, ProbeEndpoint, ProbeOutcome, RoundReport};

pub(super) struct LinkRuntime {
    pub link: Link,
    pub mark: u32,
    pub health: LinkHealth,
    endpoint: watch::Sender<Option<ProbeEndpoint>>,
    prober: Option<tokio::task::JoinHandle<()>>,
    /// Round numbers of the decided rounds given to the health machine, newest last
    /// (as many as its window holds), to place late outcomes in their round.
    decided: VecDeque<u64>,
    /// When the prober last reported a round (or was started): a prober silent for
    /// [`SILENT_ROUNDS`] intervals is restarted and the link taken down.
    last_report: Instant,
    /// When the prober last reported a good round.
    last_good: Option<Instant>,
    /// The last fall to `down` was decided by probes (or their silence), not by the
    /// interface: other links may have failed silently at the same moment.
    pub silent_failure: bool,
}

/// Intervals without a round after which a prober counts as stuck.
const SILENT_ROUNDS: u32 = 3;

impl Drop for LinkRuntime {
    fn drop(&mut self) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
    }
}

impl LinkRuntime {
    pub fn start(
        link: &Link,
        settings: &Settings,
        initial: LinkState,
        now: Instant,
        facts: &Facts,
        reports: mpsc::Sender<RoundReport>,
    ) -> LinkRuntime {
        let mark = MarkLayout::new(settings.mark_mask).link(link.id);
        let health = LinkHealth::new(&link.name, link.check.clone(), initial, now)
            .with_interface(&link.interface);
        // Probers subscribe; `send_if_modified` updates the value even with none.
        let (endpoint, _) = watch::channel(endpoint_of(link, mark, facts));
        let mut rt = LinkRuntime {
            link: link.clone(),
            mark,
            health,
            endpoint,
            prober: None,
            decided: VecDeque::new(),
            last_report: now,
            last_good: None,
            silent_failure: false,
        };
        rt.spawn_prober(now, reports);
        rt
    }

    /// Starts the prober of the link's check (none without a check).
    fn spawn_prober(&mut self, now: Instant, reports: mpsc::Sender<RoundReport>) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
        self.decided.clear();
        self.last_report = now;
        self.prober = self.link.check.clone().map(|c| {
            if let Err(e) = probe::check_supported(&c) {
                tracing::warn!("link {}: {e}", self.link.name);
            }
            probe::spawn_link_prober(
                self.link.name.clone(),
                c,
                self.endpoint.subscribe(),
                reports,
            )
        });
    }

    /// How long the prober may stay silent, for a check that reports rounds at all
    /// (`none` and a check without targets never do), while it has an endpoint to
    /// probe from (without one it waits, silently, by design).
    fn silence_limit(&self) -> Option<Duration> {
        let check = self.link.check.as_ref()?;
        if check.probe == crate::config::Probe::None || check.probe.target_count() == 0 {
            return None;
        }
        self.endpoint.borrow().as_ref()?;
        Some(check.interval.max(check.timeout) * SILENT_ROUNDS)
    }

    /// Whether the link has shown it works after `t`: a good round since then, or, for a
    /// link without probes, nothing to show (its interface is all there is).
    pub fn proven_since(&self, t: Instant) -> bool {
        self.silence_limit().is_none() || self.last_good.is_some_and(|g| g >= t)
    }

    /// When [`supervise`](Self::supervise) next has something to check.
    pub fn supervise_deadline(&self) -> Option<Instant> {
        let limit = self.silence_limit()?;
        Some(self.last_report + limit)
    }

    /// Restarts a prober that ended (a panic) or gave no round for [`SILENT_ROUNDS`]
    /// intervals (a stuck socket), and takes a silent link down: no evidence, no
    /// service.
    pub fn supervise(
        &mut self,
        now: Instant,
        reports: mpsc::Sender<RoundReport>,
    ) -> Option<Transition> {
        let limit = self.silence_limit()?;
        let ended = self.prober.as_ref().is_some_and(|p| p.is_finished());
        let silent = now.saturating_duration_since(self.last_report) >= limit;
        if !ended && !silent {
            return None;
        }
        tracing::warn!(
            "link {}: prober {}; restarting it",
            self.link.name,
            if ended {
                "stopped".to_string()
            } else {
                format!("gave no round for {:.1} s", limit.as_secs_f64())
            }
        );
        self.spawn_prober(now, reports);
        if !silent {
            return None;
        }
        let t = self.health.on_silence(now);
        self.note_failure(&t, true);
        t
    }

    /// Feeds the interface's current facts to the health machine.
    pub fn observe(&mut self, now: Instant, facts: &Facts) -> Option<Transition> {
        let status = match facts.interfaces.get(&self.link.interface) {
            None => InterfaceStatus {
                exists: false,
                admin_up: false,
                carrier: false,
                has_address: false,
                has_gateway: false,
            },
            Some(f) => InterfaceStatus {
                exists: true,
                admin_up: f.admin_up,
                carrier: f.carrier,
                has_address: !f.addresses.is_empty(),
                has_gateway: match self.link.gateway {
                    Gateway::Auto => {
                        f.default_gateway4.is_some()
                            || (self.link.gateway6 != Gateway::None && f.default_gateway6.is_some())
                    }
                    Gateway::Static(_) | Gateway::None => true,
                },
            },
        };
        let t = self.health.on_interface(now, status);
        self.note_failure(&t, false);
        t
    }

    /// Whether the kernel may have deleted routes of this link's table by itself between
    /// the facts `old` and `new`. It flushes every route through an interface, without a
    /// netlink notification, when the interface goes down, loses its last IPv4 address
    /// or is re-created; a burst of events read as one (an address replaced by one
    /// `ip -batch`, a PPP reconnect) can hide that moment, so any removed address, a new
    /// ifindex or a change of the admin state counts. Carrier alone does not: routes
    /// then stay, flagged `linkdown`.
    pub fn routes_may_be_gone(&self, old: &Facts, new: &Facts) -> bool {
        let name = &self.link.interface;
        match (old.interfaces.get(name), new.interfaces.get(name)) {
            (Some(o), Some(n)) => {
                o.ifindex != n.ifindex
                    || o.admin_up != n.admin_up
                    || o.addresses.iter().any(|a| !n.addresses.contains(a))
            }
            (None, Some(_)) => true,
            (_, None) => false,
        }
    }

    pub fn update_endpoint(&mut self, facts: &Facts) {
        let new = endpoint_of(&self.link, self.mark, facts);
        if self.endpoint.borrow().is_none() && new.is_some() {
            // Silent until now by design: the silence counts from here.
            self.last_report = Instant::now();
        }
        self.endpoint.send_if_modified(|cur| {
            if *cur != new {
                *cur = new;
                true
            } else {
                false
            }
        });
    }

    /// A reload changed the link's health check: the prober starts over with the new
    /// check (from the same endpoint); the health machine keeps its state, counters and
    /// damping ([`LinkHealth::set_check`]).
    pub fn set_check(
        &mut self,
        now: Instant,
        check: Option<crate::config::Check>,
        reports: mpsc::Sender<RoundReport>,
    ) -> Option<Transition> {
        self.link.check = check.clone();
        self.spawn_prober(now, reports);
        self.health.set_check(now, check)
    }

    pub fn on_round(&mut self, now: Instant, report: &RoundReport) -> Option<Transition> {
        self.last_report = now;
        let round = to_round(report);
        if report.late {
            // Loss and RTT of a round decided earlier; nothing to decide.
            if let Some(pos) = self.decided.iter().rposition(|s| *s == report.seq) {
                let rounds_ago = self.decided.len() - 1 - pos;
                self.health.on_late_outcomes(rounds_ago, &round);
            }
            return None;
        }
        if report.good {
            self.last_good = Some(now);
        }
        let keep = self.link.check.as_ref().map_or(0, |c| c.window as usize);
        self.decided.push_back(report.seq);
        while self.decided.len() > keep.max(1) {
            self.decided.pop_front();
        }
        let t = self.health.on_round(now, &round);
        self.note_failure(&t, true);
        t
    }

    fn note_failure(&mut self, t: &Option<Transition>, silent: bool) {
        if t.as_ref().is_some_and(|t| t.to == LinkState::Down) {
            self.silent_failure = silent;
        }
    }
}

/// A prober's report as the health machine takes it.
fn to_round(report: &RoundReport) -> Round {
    let per_target: Vec<(String, Option<std::time::Duration>)> = report
        .outcomes
        .iter()
        .map(|(t, o)| (t.clone(), o.rtt()))
        .collect();
    let rtts: Vec<_> = per_target.iter().filter_map(|(_, r)| *r).collect();
    Round {
        answered: rtts.len() as u32,
        sent: report.outcomes.len() as u32,
        rtts,
        good: report.good,
        per_target,
        failure: report.outcomes.iter().find_map(|(_, o)| match o {
            ProbeOutcome::Failed(why) => Some(why.clone()),
            _ => None,
        }),
    }
}

/// Where the link's probes leave from, or `None` while it has no interface or address.
fn endpoint_of(link: &Link, mark: u32, facts: &Facts) -> Option<ProbeEndpoint> {
    let f = facts.interfaces.get(&link.interface)?;
    let source4 = f.ipv4_addresses().find_map(|a| match a.addr() {
        IpAddr::V4(v4) => Some(v4),
        _ => None,
    });
    let source6 = f.ipv6_addresses().find_map(|a| match a.addr() {
        IpAddr::V6(v6) => Some(v6),
        _ => None,
    });
    if source4.is_none() && source6.is_none() {
        return None;
    }
    let gateway4 = match link.gateway {
        Gateway::Static(g) => Some(g),
        Gateway::Auto => f.default_gateway4,
        Gateway::None => None,
    };
    Some(ProbeEndpoint {
        ifname: link.interface.clone(),
        ifindex: f.ifindex,
        source4,
        source6,
        mark,
        gateway4,
    })
}
