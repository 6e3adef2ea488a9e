//! Per-link health: the pure state machine that turns probe rounds and interface
//! observations into link state transitions (SPEC §2.7–2.10, §4).
//!
//! No I/O, no clock, no async: every input carries its time (`now`), every state change
//! comes back as a [`Transition`] with the reason an operator reads in the log and in
//! `status`. The daemon feeds it [`Round`]s from the prober, [`InterfaceStatus`]es from
//! netlink, operator overrides, and calls [`LinkHealth::tick`] at
//! [`LinkHealth::next_deadline`].
//!
//! # Rules
//!
//! - **Start.** A link starts in the state given (adopted from the kernel and state
//!   directory, else `up`: traffic flows at once, a dead link goes down after
//!   `down_after` rounds).
//! - **Interface.** Carrier lost, set administratively down, address removed, gateway
//!   lost or interface deleted: `down` at once, without waiting for probes. Before the
//!   interface was ever seen complete, a missing interface, address or gateway is
//!   `waiting` instead, and its first complete appearance puts the link in its start
//!   state. When a link that was taken down by its interface has a complete interface
//!   again: with a health check it stays `down` until `up_after` good rounds (counted
//!   from the moment the interface is back: the interface returning says nothing about
//!   the path beyond it); without a check it is `up` at once ("up while it has carrier
//!   and address"), subject to damping.
//! - **Rounds.** `down_after` consecutive bad rounds (fewer than `min_targets` targets
//!   answered): `up`/`degraded` → `down`. While `down`, `up_after` consecutive good
//!   rounds bring it back, unless damping holds it.
//! - **Degraded.** Over the last `window` rounds, loss = lost probes / sent probes and
//!   RTT = mean of the answered probes, every probe counted (also those that concluded
//!   after the prober had decided their round: [`LinkHealth::on_late_outcomes`]). Loss
//!   above `max_loss` or RTT above `max_rtt` (each when non-zero): `up` → `degraded`.
//!   It clears back to `up` after `up_after` consecutive good rounds with loss <=
//!   `max_loss` / 2 and RTT <= 0.8 × `max_rtt` (hysteresis, so a link hovering at the
//!   limit does not flip every round). Nothing is judged before the window holds
//!   [`MIN_JUDGED_ROUNDS`] rounds (or `window`, if smaller): one lost probe in the
//!   first round is not "50 % loss".
//! - **Coming back from down.** The window is cut to the good rounds that brought the link
//!   back, so the outage itself does not count as loss afterwards; when those rounds
//!   already show degradation, the link comes back `degraded` rather than `up` for a
//!   moment.
//! - **Damping** ([`PENALTY_PER_DOWN`], [`SUPPRESS_THRESHOLD`], [`REUSE_THRESHOLD`],
//!   [`HALF_LIFE`], [`MAX_HOLD`]; why these values: `health/damping.rs`): every
//!   `up`/`degraded` → `down` adds a penalty; a down that leaves it above the suppress
//!   threshold holds the link `down` until the penalty has decayed to the reuse
//!   threshold ([`LinkHealth::damped_until`]). When the hold ends ([`LinkHealth::tick`])
//!   the link comes back if its evidence has been good meanwhile (`up_after` good
//!   rounds, or a complete interface without a check). A held link that recovers and
//!   fails again flaps invisibly, and that too adds a penalty and extends the hold.
//! - **Override.** `Up` forces `up`, `Down` forces `disabled`; the evidence keeps being
//!   tracked underneath ([`LinkHealth::auto_state`]), and removing the override returns
//!   to what it says.
//!
//! `down_after` is kept literally, also for degraded links: with random loss, runs of
//! bad rounds happen (two targets at 40 % independent loss: a round is bad with
//! p = 0.16, three in a row with p ≈ 0.004, so over 150 rounds (30 s of 200 ms rounds)
//! about a 40 % chance of going down). That is the rule the SPEC gives; a configuration that must ride such
//! loss out needs more targets or a larger `down_after`.

mod damping;
mod window;

use std::time::{Duration, Instant};

use crate::config::{Check, Probe};
use crate::plan::LinkState;

pub use damping::{HALF_LIFE, MAX_HOLD, PENALTY_PER_DOWN, REUSE_THRESHOLD, SUPPRESS_THRESHOLD};

use damping::Damping;
use window::{ms, Window};

/// Loss and RTT are not judged before the window holds this many rounds (or all of
/// `window`, when it is smaller).
pub const MIN_JUDGED_ROUNDS: usize = 5;

/// The reason of a link whose prober gave no round for 3 intervals.
pub const NO_PROBE_RESULTS: &str = "no probe results";

/// One probe round as the prober reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    /// Probes answered in time.
    pub answered: u32,
    /// Probes sent (one per target).
    pub sent: u32,
    /// RTTs of the answered probes.
    pub rtts: Vec<Duration>,
    /// At least `min_targets` targets answered.
    pub good: bool,
    /// Per target (as the status shows it), its RTT or `None` when lost.
    pub per_target: Vec<(String, Option<Duration>)>,
    /// Why the round's first failed probe failed, in the prober's words ("…: certificate
    /// not valid for name X"); `None` when nothing failed outright (answers, timeouts).
    /// Ends the reason of a link taken down by bad rounds.
    pub failure: Option<String>,
}

/// What netlink says about the link's interface now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub exists: bool,
    /// `IFF_UP`.
    pub admin_up: bool,
    /// `IFF_LOWER_UP`.
    pub carrier: bool,
    /// An address the link can use.
    pub has_address: bool,
    /// A next hop to route through; true when the link needs none (`gateway = "none"`)
    /// or has a static one.
    pub has_gateway: bool,
}

impl InterfaceStatus {
    /// An interface with everything a link needs.
    pub const READY: InterfaceStatus = InterfaceStatus {
        exists: true,
        admin_up: true,
        carrier: true,
        has_address: true,
        has_gateway: true,
    };

    pub fn is_ready(&self) -> bool {
        *self == Self::READY
    }
}

/// An operator's `multiwan link X up|down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Override {
    /// Forced in service: state `up`.
    Up,
    /// Forced out of service: state `disabled`.
    Down,
}

impl Override {
    /// As `status --json` shows it in `override`.
    pub fn as_str(self) -> &'static str {
        match self {
            Override::Up => "up",
            Override::Down => "down",
        }
    }
}

/// A state change of one link.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub link: String,
    pub from: LinkState,
    pub to: LinkState,
    /// Why, for the log, `events` and `status`.
    pub reason: String,
    pub at: Instant,
}

/// One target's numbers over the window, for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetHealth {
    pub target: String,
    /// Answered at least one of its last `down_after` probes.
    pub up: bool,
    pub rtt_ms: Option<f64>,
    pub loss_pct: Option<f64>,
}

/// Why an interface keeps the link out of service.
struct Problem {
    reason: String,
    /// Missing interface, address or gateway: `waiting` before the link was ever ready.
    missing: bool,
}

/// The health of one link.
#[derive(Debug, Clone)]
pub struct LinkHealth {
    link: String,
    interface: String,
    /// `None`: no check, or `method = "none"`: up while the interface is ready.
    check: Option<Check>,

    // What `status` shows and transitions report: the evidence, or the override.
    state: LinkState,
    since: Instant,
    reason: String,

    // What the evidence says, whatever the override.
    auto: LinkState,
    auto_reason: String,
    operator: Option<Override>,

    /// The interface is complete (as far as we know: assumed until told otherwise).
    iface_ok: bool,
    /// The interface has been seen complete at least once.
    ever_ready: bool,
    /// The state to take when the interface is complete for the first time.
    start: LinkState,

    /// Consecutive good / bad rounds, and consecutive rounds under the clear thresholds
    /// while degraded.
    good: u32,
    bad: u32,
    clear: u32,
    window: Window,
    damping: Damping,
    /// Held by damping, the evidence says up: failing again is a flap too.
    recovered_while_held: bool,
}

impl LinkHealth {
    /// A link in state `initial` at `now`. `Waiting` means "interface not seen yet" and
    /// becomes `up` when it appears; `Disabled` is not a health state (config and
    /// overrides are applied by the daemon / [`set_override`](Self::set_override)) and
    /// counts as `up`. A check with `method = "none"` counts as no check.
    pub fn new(
        name: impl Into<String>,
        check: Option<Check>,
        initial: LinkState,
        now: Instant,
    ) -> Self {
        let link = name.into();
        let check = check.filter(|c| c.probe != Probe::None);
        let (state, iface_ok) = match initial {
            LinkState::Waiting => (LinkState::Waiting, false),
            LinkState::Disabled => (LinkState::Up, true),
            s => (s, true),
        };
        let start = if state == LinkState::Waiting {
            LinkState::Up
        } else {
            state
        };
        let reason = "initial state".to_string();
        LinkHealth {
            interface: link.clone(),
            link,
            window: Window::new(capacity(check.as_ref())),
            check,
            state,
            since: now,
            reason: reason.clone(),
            auto: state,
            auto_reason: reason,
            operator: None,
            iface_ok,
            ever_ready: false,
            start,
            good: 0,
            bad: 0,
            clear: 0,
            damping: Damping::default(),
            recovered_while_held: false,
        }
    }

    /// The interface name used in reasons ("carrier lost on wan1"); the link name until
    /// set.
    #[must_use]
    pub fn with_interface(mut self, interface: impl Into<String>) -> Self {
        self.interface = interface.into();
        self
    }

    /// A reload changed the check. The state, counters and damping stay (a reload must
    /// not forgive a flapping link); a link that lost its check follows its interface
    /// from now on.
    #[must_use = "a transition must be published (log, hooks, planner)"]
    pub fn set_check(&mut self, now: Instant, check: Option<Check>) -> Option<Transition> {
        self.catch_up(now);
        self.check = check.filter(|c| c.probe != Probe::None);
        self.window.set_capacity(capacity(self.check.as_ref()));
        if self.check.is_none() {
            if self.auto == LinkState::Degraded && self.iface_ok {
                self.set_auto(LinkState::Up, "health check removed".into());
            }
            let why = format!("no health check; {} is ready", self.interface);
            self.release(now, why);
        }
        self.emit(now, self.auto_reason.clone())
    }

    /// A probe round completed.
    #[must_use = "a transition must be published (log, hooks, planner)"]
    pub fn on_round(&mut self, now: Instant, round: &Round) -> Option<Transition> {
        self.catch_up(now);
        let Some(check) = &self.check else {
            return None;
        };
        let (down_after, up_after) = (check.down_after.max(1), check.up_after.max(1));
        self.window.push(round);
        if round.good {
            self.good = self.good.saturating_add(1);
            self.bad = 0;
        } else {
            self.bad = self.bad.saturating_add(1);
            self.good = 0;
        }
        match self.auto {
            LinkState::Up | LinkState::Degraded if self.bad >= down_after => {
                let mut reason = format!(
                    "{} bad rounds ({}/{} targets answered)",
                    self.bad, round.answered, round.sent
                );
                if let Some(failure) = &round.failure {
                    reason.push_str(": ");
                    reason.push_str(failure);
                }
                self.go_down(now, reason, true);
            }
            LinkState::Up => {
                if let Some(why) = self.degradation() {
                    self.set_auto(LinkState::Degraded, why);
                }
            }
            LinkState::Degraded => match self.clearance().filter(|_| round.good) {
                Some(why) => {
                    self.clear += 1;
                    if self.clear >= up_after {
                        self.set_auto(LinkState::Up, why);
                    }
                }
                None => self.clear = 0,
            },
            LinkState::Down => {
                if self.bad >= down_after {
                    self.evidence_lost(now);
                }
                if self.good >= up_after {
                    let why = format!("{} good rounds", self.good);
                    self.release(now, why);
                }
            }
            // No usable interface yet / not ours: rounds only feed the numbers.
            LinkState::Waiting | LinkState::Disabled => {}
        }
        self.emit(now, self.auto_reason.clone())
    }

    /// The late outcomes of a round already given to [`on_round`](Self::on_round)
    /// (`rounds_ago` rounds ago; 0: the last one): probes that were still in flight
    /// when the prober decided the round. They count in loss and RTT (judged at the
    /// next round) and decide nothing.
    pub fn on_late_outcomes(&mut self, rounds_ago: usize, late: &Round) {
        if self.check.is_some() {
            self.window.amend(rounds_ago, late);
        }
    }

    /// Netlink reported the interface (at start, and on every change).
    #[must_use = "a transition must be published (log, hooks, planner)"]
    pub fn on_interface(&mut self, now: Instant, status: InterfaceStatus) -> Option<Transition> {
        self.catch_up(now);
        let was_ok = self.iface_ok;
        match self.problem(status, was_ok && self.ever_ready) {
            Some(problem) => {
                self.iface_ok = false;
                self.good = 0;
                self.clear = 0;
                if !self.ever_ready && problem.missing {
                    self.set_auto(LinkState::Waiting, problem.reason);
                } else {
                    match self.auto {
                        // Before the interface was ever ready the start state was only a
                        // guess: correcting it is not a flap.
                        LinkState::Up | LinkState::Degraded => {
                            self.go_down(now, problem.reason, self.ever_ready)
                        }
                        LinkState::Waiting => self.set_auto(LinkState::Down, problem.reason),
                        LinkState::Down | LinkState::Disabled => {
                            if was_ok {
                                self.evidence_lost(now);
                            }
                            // Already down: the status should say why now.
                            self.note(problem.reason);
                        }
                    }
                }
            }
            None => {
                self.iface_ok = true;
                let first = !self.ever_ready;
                self.ever_ready = true;
                if !was_ok && first {
                    // The interface decided the state so far; now the start state
                    // applies (the evidence of a link without check is its interface).
                    let to = if self.check.is_none() {
                        LinkState::Up
                    } else {
                        self.start
                    };
                    self.set_auto(to, format!("{} ready", self.interface));
                } else if !was_ok {
                    if let Some(check) = &self.check {
                        // The interface being back says nothing about the path beyond
                        // it, and rounds in flight while it was gone must not count.
                        let up_after = check.up_after;
                        self.good = 0;
                        self.note(format!(
                            "{} is back, waiting for {up_after} good rounds",
                            self.interface
                        ));
                    }
                }
                if self.check.is_none() {
                    let why = format!("{} has carrier and address", self.interface);
                    self.release(now, why);
                }
            }
        }
        self.emit(now, self.auto_reason.clone())
    }

    /// Timers: a damping hold that has ended lets the link back when its evidence has
    /// been good meanwhile. Call at [`next_deadline`](Self::next_deadline); harmless at
    /// any other time.
    #[must_use = "a transition must be published (log, hooks, planner)"]
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        self.catch_up(now);
        self.emit(now, self.auto_reason.clone())
    }

    /// The link's prober has given no round for a while (it panicked or its socket is
    /// stuck): with no evidence the link cannot be trusted, so it goes `down` (not a
    /// flap: the link may be fine). The next good rounds bring it back as usual.
    #[must_use = "a transition must be published (log, hooks, planner)"]
    pub fn on_silence(&mut self, now: Instant) -> Option<Transition> {
        self.catch_up(now);
        self.check.as_ref()?;
        self.good = 0;
        if matches!(self.auto, LinkState::Up | LinkState::Degraded) {
            self.go_down(now, NO_PROBE_RESULTS.to_string(), false);
        }
        self.emit(now, self.auto_reason.clone())
    }

    /// `multiwan link X up|down|auto`.
    #[must_use = "a transition must be published (log, hooks, planner)"]
    pub fn set_override(&mut self, now: Instant, operator: Option<Override>) -> Option<Transition> {
        // A hold that ended since the last tick: "auto" means the evidence as of now.
        self.catch_up(now);
        if self.operator == operator {
            return self.emit(now, self.auto_reason.clone());
        }
        self.operator = operator;
        let reason = match operator {
            Some(o) => format!("operator override: {}", o.as_str()),
            None => format!("operator override removed; {}", self.auto_reason),
        };
        let t = self.emit(now, reason);
        if t.is_none() {
            // Same state, new cause: keep `status` truthful.
            self.reason = match operator {
                Some(o) => format!("operator override: {}", o.as_str()),
                None => self.auto_reason.clone(),
            };
        }
        t
    }

    /// When [`tick`](Self::tick) has something to do: the end of a damping hold.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.damping.until()
    }

    pub fn name(&self) -> &str {
        &self.link
    }

    /// The state `status` shows and the planner uses.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// When the state last changed.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Why the link is in its state.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// What the evidence says, whatever the override.
    pub fn auto_state(&self) -> LinkState {
        self.auto
    }

    pub fn operator_override(&self) -> Option<Override> {
        self.operator
    }

    /// Mean RTT of the answered probes over the window.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.window.rtt_ms()
    }

    /// Lost / sent probes over the window, in percent.
    pub fn loss_pct(&self) -> Option<f64> {
        self.window.loss_pct()
    }

    /// How many rounds the window holds now.
    pub fn window_rounds(&self) -> usize {
        self.window.len()
    }

    /// Per target over the window, in the order of the latest round.
    pub fn targets(&self) -> Vec<TargetHealth> {
        let down_after = self.check.as_ref().map_or(1, |c| c.down_after);
        let labels = self
            .check
            .as_ref()
            .map(|c| crate::probe::target_labels(&c.probe))
            .unwrap_or_default();
        self.window.targets(&labels, down_after as usize)
    }

    /// While damping holds the link down: when the hold ends.
    pub fn damped_until(&self) -> Option<Instant> {
        self.damping.until()
    }

    /// The flap penalty, decayed to `now`.
    pub fn penalty(&self, now: Instant) -> f64 {
        self.damping.penalty(now)
    }

    /// Consecutive good rounds (up to now).
    pub fn good_rounds(&self) -> u32 {
        self.good
    }

    /// Consecutive bad rounds (up to now).
    pub fn bad_rounds(&self) -> u32 {
        self.bad
    }

    // ---- internals ----

    /// Ends a damping hold whose time has come, and lets the link back if its evidence
    /// has been good meanwhile. Every input starts with it, so a late `tick` loses
    /// nothing.
    fn catch_up(&mut self, now: Instant) {
        if self.damping.expire(now) {
            let why = match &self.check {
                Some(_) => format!("hold ended, {} good rounds", self.good),
                None => format!("hold ended, {} has carrier and address", self.interface),
            };
            self.release(now, why);
        }
    }

    fn effective(&self) -> LinkState {
        match self.operator {
            Some(Override::Up) => LinkState::Up,
            Some(Override::Down) => LinkState::Disabled,
            None => self.auto,
        }
    }

    /// The single place the shown state changes.
    fn emit(&mut self, now: Instant, reason: String) -> Option<Transition> {
        let to = self.effective();
        if to == self.state {
            return None;
        }
        let t = Transition {
            link: self.link.clone(),
            from: self.state,
            to,
            reason: reason.clone(),
            at: now,
        };
        self.state = to;
        self.since = now;
        self.reason = reason;
        Some(t)
    }

    fn set_auto(&mut self, to: LinkState, reason: String) {
        if to != self.auto {
            self.clear = 0;
        }
        self.auto = to;
        self.auto_reason = reason;
    }

    /// Updates the reason of an unchanged state (what `status` shows).
    fn note(&mut self, reason: String) {
        if self.operator.is_none() {
            self.reason = reason.clone();
        }
        self.auto_reason = reason;
    }

    /// `up`/`degraded` → `down`; `flap`: counts for damping.
    fn go_down(&mut self, now: Instant, mut reason: String, flap: bool) {
        if flap {
            if let Some(until) = self.damping.flap(now) {
                let hold = until.saturating_duration_since(now).as_secs_f64();
                reason.push_str(&format!("; flapping, held down for {hold:.1} s"));
            }
        }
        self.recovered_while_held = false;
        self.set_auto(LinkState::Down, reason);
    }

    /// A held link whose evidence had recovered failed again: an invisible flap.
    fn evidence_lost(&mut self, now: Instant) {
        if self.recovered_while_held {
            self.recovered_while_held = false;
            self.damping.flap(now);
        }
    }

    /// A `down` link whose evidence is good (`why`) comes back, unless held.
    fn release(&mut self, now: Instant, why: String) {
        if self.auto != LinkState::Down || !self.iface_ok {
            return;
        }
        if let Some(check) = &self.check {
            if self.good < check.up_after.max(1) {
                return;
            }
        }
        if self.damping.held(now) {
            if !self.recovered_while_held {
                self.recovered_while_held = true;
                self.note(format!("{why}; held down by flap damping"));
            }
            return;
        }
        self.recovered_while_held = false;
        // The outage is history: judge the link on the rounds that brought it back.
        self.window.keep_last(self.good as usize);
        match self.degradation() {
            Some(bad) => self.set_auto(LinkState::Degraded, format!("{why}, but {bad}")),
            None => self.set_auto(LinkState::Up, why),
        }
    }

    /// Rounds needed before loss and RTT are judged.
    fn judged_rounds(&self) -> usize {
        let window = self.check.as_ref().map_or(0, |c| c.window as usize);
        window.clamp(1, MIN_JUDGED_ROUNDS)
    }

    /// Why the window says degraded, if it does.
    fn degradation(&self) -> Option<String> {
        let check = self.check.as_ref()?;
        let rounds = self.window.len();
        if rounds < self.judged_rounds() {
            return None;
        }
        let mut why = Vec::new();
        if check.max_loss > 0 {
            if let Some(loss) = self.window.loss_pct() {
                if loss > f64::from(check.max_loss) {
                    why.push(format!(
                        "loss {loss:.1} % over {rounds} rounds > max_loss {} %",
                        check.max_loss
                    ));
                }
            }
        }
        if !check.max_rtt.is_zero() {
            if let Some(rtt) = self.window.rtt_ms() {
                if rtt > ms(check.max_rtt) {
                    why.push(format!(
                        "rtt {rtt:.1} ms > max_rtt {}",
                        fmt_ms(ms(check.max_rtt))
                    ));
                }
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// When the window is under the clear thresholds (loss <= max_loss / 2, RTT <= 0.8 ×
    /// max_rtt): the reason a degraded link would give for coming back.
    fn clearance(&self) -> Option<String> {
        let check = self.check.as_ref()?;
        let rounds = self.clear + 1;
        let mut why = Vec::new();
        if check.max_loss > 0 {
            let limit = f64::from(check.max_loss) / 2.0;
            let loss = self.window.loss_pct().unwrap_or(0.0);
            if loss > limit {
                return None;
            }
            why.push(format!("loss {loss:.1} % <= {}", fmt_pct(limit)));
        }
        if !check.max_rtt.is_zero() {
            let limit = ms(check.max_rtt) * 0.8;
            if let Some(rtt) = self.window.rtt_ms() {
                if rtt > limit {
                    return None;
                }
                why.push(format!("rtt {rtt:.1} ms <= {}", fmt_ms(limit)));
            }
        }
        Some(if why.is_empty() {
            format!("{rounds} good rounds")
        } else {
            format!("{} for {rounds} rounds", why.join(", "))
        })
    }

    fn problem(&self, s: InterfaceStatus, was_ready: bool) -> Option<Problem> {
        let i = &self.interface;
        // Past tense when we saw it happen, present tense for how we found it.
        let (reason, missing) = if !s.exists {
            let r = if was_ready {
                format!("{i} deleted")
            } else {
                format!("interface {i} not found")
            };
            (r, true)
        } else if !s.admin_up {
            let r = if was_ready {
                format!("{i} set administratively down")
            } else {
                format!("{i} is administratively down")
            };
            (r, false)
        } else if !s.carrier {
            let r = if was_ready {
                format!("carrier lost on {i}")
            } else {
                format!("no carrier on {i}")
            };
            (r, false)
        } else if !s.has_address {
            let r = if was_ready {
                format!("address removed from {i}")
            } else {
                format!("no address on {i}")
            };
            (r, true)
        } else if !s.has_gateway {
            let r = if was_ready {
                format!("{i} lost its gateway")
            } else {
                format!("no gateway on {i}")
            };
            (r, true)
        } else {
            return None;
        };
        Some(Problem { reason, missing })
    }
}

fn capacity(check: Option<&Check>) -> usize {
    check.map_or(0, |c| c.window.max(1) as usize)
}

/// "150 ms", "120.5 ms" (0.8 × 150 ms must not print as "120.0 ms").
fn fmt_ms(v: f64) -> String {
    if is_whole(v) {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// "12.5 %", "10 %".
fn fmt_pct(v: f64) -> String {
    if is_whole(v) {
        format!("{v:.0} %")
    } else {
        format!("{v:.1} %")
    }
}

fn is_whole(v: f64) -> bool {
    (v - v.round()).abs() < 1e-9
}
