//! The per-link round scheduler: rounds every `interval`, decided as early as possible,
//! and extra rounds while the link looks suspicious (see the module docs of
//! [`crate::probe`] for the timing argument).
//!
//! A round decided early (good as soon as `min_targets` answered) keeps its other probes
//! running until they conclude (by the round's deadline at the latest), and their
//! outcomes follow in a second, [`RoundReport::late`] report: the decision is not
//! delayed, and loss and RTT still count every probe sent. Without that, with two
//! targets and `min_targets = 1`, a good round would count one probe (the first answer)
//! and a lost probe would count only when both were lost: 8 % loss read as 33 % over
//! five rounds (a false "degraded"), 40 % loss that never hits both targets of a round
//! as none, and the RTT was that of the fastest target only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::resolve::Nameservers;
use super::{target_labels, LinkProber, LinkShared, ProbeEndpoint};
use crate::config::{Check, Probe};

/// How one probe ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    /// Answered after this round-trip time.
    Answered(Duration),
    /// No answer within the timeout.
    Lost,
    /// Concluded at once without an answer (an error, a refusal, a bad status): counts
    /// as lost, with the reason.
    Failed(String),
}

/// `answered in 0.42 ms`, `lost`, `failed: <reason>` (probe detail in debug logs).
impl std::fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeOutcome::Answered(rtt) => {
                write!(f, "answered in {:.2} ms", rtt.as_secs_f64() * 1e3)
            }
            ProbeOutcome::Lost => f.write_str("lost"),
            ProbeOutcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl RoundReport {
    /// One line of probe detail: `round 12 good: 198.18.0.1 answered in 0.42 ms, …`.
    pub fn describe(&self) -> String {
        let verdict = match (self.late, self.good) {
            (true, _) => "late outcomes",
            (false, true) => "good",
            (false, false) => "bad",
        };
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(target, outcome)| format!("{target} {outcome}"))
            .collect();
        format!("round {} {verdict}: {}", self.seq, outcomes.join(", "))
    }
}

impl ProbeOutcome {
    pub fn is_answered(&self) -> bool {
        matches!(self, ProbeOutcome::Answered(_))
    }

    pub fn rtt(&self) -> Option<Duration> {
        match self {
            ProbeOutcome::Answered(rtt) => Some(*rtt),
            _ => None,
        }
    }
}

/// One decided round of one link, or the late outcomes of one ([`RoundReport::late`]).
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub link: String,
    /// Increases by one per round started, over the prober's whole life.
    pub seq: u64,
    pub started: Instant,
    /// The probes concluded when the round was decided, in target order, labelled as
    /// by [`super::target_labels`]. A target whose probe was still in flight when the
    /// round was decided (good early) is absent here: its outcome comes in a late
    /// report of the same round.
    ///
    /// In a late report: the outcomes of exactly those probes, in target order.
    pub outcomes: Vec<(String, ProbeOutcome)>,
    /// At least `min_targets` targets answered (in a late report: the decision, as
    /// reported before).
    pub good: bool,
    /// `false`: the round's decision, sent as soon as it was decided. `true`: a
    /// follow-up of round `seq`, already reported, with the outcomes of the probes that
    /// were still in flight when it was decided; for loss and RTT only (it decides
    /// nothing). Sent once, when the last of them concluded, and only if there were
    /// any; not sent when the endpoint changed meanwhile.
    pub late: bool,
}

/// Starts probing `link` as `check` says, through the endpoint `endpoint` holds, and
/// sends every decided round to `reports`.
///
/// `None` in `endpoint` pauses probing; a changed endpoint re-opens the sockets at once
/// (rounds in flight are abandoned unreported). The task ends when `reports` is closed
/// or the endpoint's sender is dropped. Method `none` (or no target) probes nothing: the
/// task ends at once.
pub fn spawn_link_prober(
    link: String,
    check: Check,
    endpoint: watch::Receiver<Option<ProbeEndpoint>>,
    reports: mpsc::Sender<RoundReport>,
) -> JoinHandle<()> {
    spawn_link_prober_with(link, check, endpoint, reports, ProbeOptions::default())
}

/// What a prober takes from its surroundings rather than from the config.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Where URL host names are resolved (through the link); default: the nameservers
    /// of `/etc/resolv.conf`.
    pub nameservers: Nameservers,
}

/// [`spawn_link_prober`] with options.
pub fn spawn_link_prober_with(
    link: String,
    check: Check,
    endpoint: watch::Receiver<Option<ProbeEndpoint>>,
    reports: mpsc::Sender<RoundReport>,
    options: ProbeOptions,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if check.probe == Probe::None || check.probe.target_count() == 0 {
            return;
        }
        let shared = Arc::new(LinkShared::new(&link, &check.probe, &options));
        Scheduler::new(link, check, endpoint, reports, shared)
            .run()
            .await;
    })
}

/// Lower bound of `suspect_after`: below this, scheduling jitter alone looks like loss.
const MIN_SUSPECT_AFTER: Duration = Duration::from_millis(10);

/// A probe's result as the scheduler collects it: round, target, outcome.
type ProbeResult = (u64, usize, ProbeOutcome);

enum Next {
    /// The endpoint changed (possibly to `None`).
    Changed,
    /// Nobody listens any more.
    Stop,
}

struct Scheduler {
    link: String,
    check: Check,
    labels: Vec<String>,
    /// `min_targets`, within 1..=targets.
    min_good: usize,
    endpoint: watch::Receiver<Option<ProbeEndpoint>>,
    reports: mpsc::Sender<RoundReport>,
    next_seq: u64,
    /// Kept across endpoint changes (resolver cache, trust anchors).
    shared: Arc<LinkShared>,
}

/// An undecided round.
struct Round {
    started: Instant,
    outcomes: Vec<Option<ProbeOutcome>>,
    answered: usize,
    lost: usize,
}

/// A decided round whose other probes are still in flight.
struct Finishing {
    started: Instant,
    good: bool,
    /// Outcomes that came after the decision, by target index.
    late: Vec<Option<ProbeOutcome>>,
    /// Probes still in flight.
    pending: usize,
}

/// Probing state for one endpoint; starts afresh when the endpoint changes.
struct Session {
    prober: Arc<LinkProber>,
    rounds: BTreeMap<u64, Round>,
    /// Decided rounds waiting for their last probes (for the late report).
    finishing: BTreeMap<u64, Finishing>,
    probes: FuturesUnordered<BoxFuture<'static, ProbeResult>>,
    /// When the last round was due: the next one is scheduled from here, not from when
    /// the timer actually fired, so the pace does not drift by the timer's lateness.
    last_start: Instant,
    /// The newest round started; the one watched for suspicion.
    newest: u64,
    /// Suspicious: extra rounds are wanted (a round was bad, or the newest round is
    /// late). Cleared by a good round.
    alarm: bool,
    /// Bad rounds in a row, in the order they were decided.
    consecutive_bad: u32,
    /// Smoothed time a round took to become good.
    rtt: Option<Duration>,
}

impl Scheduler {
    fn new(
        link: String,
        check: Check,
        endpoint: watch::Receiver<Option<ProbeEndpoint>>,
        reports: mpsc::Sender<RoundReport>,
        shared: Arc<LinkShared>,
    ) -> Scheduler {
        let labels = target_labels(&check.probe);
        let min_good = (check.min_targets as usize).clamp(1, labels.len().max(1));
        Scheduler {
            link,
            check,
            labels,
            min_good,
            endpoint,
            reports,
            next_seq: 0,
            shared,
        }
    }

    async fn run(mut self) {
        loop {
            let current = self.endpoint.borrow_and_update().clone();
            let next = match current {
                Some(ep) => self.probe_through(ep).await,
                // Waiting link: nothing to probe through until the endpoint appears.
                None => match self.endpoint.changed().await {
                    Ok(()) => Next::Changed,
                    Err(_) => Next::Stop,
                },
            };
            if let Next::Stop = next {
                return;
            }
        }
    }

    /// Probes through `ep` until the endpoint changes or nobody listens.
    async fn probe_through(&mut self, ep: ProbeEndpoint) -> Next {
        let prober = Arc::new(LinkProber::open(
            &self.check.probe,
            &ep,
            Arc::clone(&self.shared),
        ));
        let now = Instant::now();
        let mut session = Session {
            prober,
            rounds: BTreeMap::new(),
            finishing: BTreeMap::new(),
            probes: FuturesUnordered::new(),
            last_start: now,
            newest: 0,
            alarm: false,
            consecutive_bad: 0,
            rtt: None,
        };
        // A new endpoint is checked at once, not an interval later.
        self.start_round(&mut session, now);
        let timer = tokio::time::sleep_until(self.next_wake(&session));
        tokio::pin!(timer);
        loop {
            timer.as_mut().reset(self.next_wake(&session));
            tokio::select! {
                biased;
                changed = self.endpoint.changed() => {
                    if changed.is_err() {
                        return Next::Stop;
                    }
                    // Re-sent but equal (a routine refresh): keep the sockets and rounds.
                    if self.endpoint.borrow_and_update().as_ref() != Some(&ep) {
                        return Next::Changed;
                    }
                }
                Some((seq, index, outcome)) = session.probes.next(), if !session.probes.is_empty() => {
                    if let Some(report) = self.record(&mut session, seq, index, outcome) {
                        if self.reports.send(report).await.is_err() {
                            return Next::Stop;
                        }
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if let Some(at) = self.suspicion_check(&session) {
                        if now >= at {
                            session.alarm = true;
                        }
                    }
                    let due = self.next_start(&session);
                    if now >= due {
                        // How late the round starts against its schedule: a busy event
                        // loop shows here first (the bench reads it; debug level).
                        tracing::debug!(
                            target: "multiwan::probe::lateness",
                            "probe round of {} started {} us late",
                            self.link,
                            (now - due).as_micros()
                        );
                        self.start_round(&mut session, now);
                        // Catch up on timer lateness, but never with a burst of rounds
                        // after a long stall.
                        if now - due < self.check.interval {
                            session.last_start = due;
                        }
                    }
                }
            }
        }
    }

    fn start_round(&mut self, session: &mut Session, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = now + self.check.timeout;
        let targets = self.labels.len();
        for index in 0..targets {
            let probe = session.prober.probe(index, deadline);
            session
                .probes
                .push(Box::pin(async move { (seq, index, probe.await) }));
        }
        session.rounds.insert(
            seq,
            Round {
                started: now,
                outcomes: vec![None; targets],
                answered: 0,
                lost: 0,
            },
        );
        session.last_start = now;
        session.newest = seq;
    }

    /// Records one probe's outcome; returns the report if that decided its round (or
    /// was the last probe of a decided round: the late report).
    fn record(
        &self,
        session: &mut Session,
        seq: u64,
        index: usize,
        outcome: ProbeOutcome,
    ) -> Option<RoundReport> {
        if session.finishing.contains_key(&seq) {
            return self.record_late(session, seq, index, outcome);
        }
        let targets = self.labels.len();
        let round = session.rounds.get_mut(&seq)?;
        let slot = round.outcomes.get_mut(index)?;
        if slot.is_some() {
            return None;
        }
        if outcome.is_answered() {
            round.answered += 1;
        } else {
            round.lost += 1;
        }
        *slot = Some(outcome);
        let good = round.answered >= self.min_good;
        // Bad as soon as too few targets are left to ever reach min_targets.
        let bad = round.lost > targets - self.min_good;
        if !good && !bad {
            return None;
        }
        let round = session.rounds.remove(&seq).expect("round just looked up");
        let pending = round.outcomes.iter().filter(|o| o.is_none()).count();
        if pending > 0 {
            // The rest keep running (until the deadline at most) for the late report.
            session.finishing.insert(
                seq,
                Finishing {
                    started: round.started,
                    good,
                    late: vec![None; targets],
                    pending,
                },
            );
        }
        let now = Instant::now();
        if good {
            session.alarm = false;
            session.consecutive_bad = 0;
            let took = now.saturating_duration_since(round.started);
            // EWMA with gain 1/8 (as TCP's SRTT): follows a changed path within a few
            // seconds, shrugs off one slow answer.
            session.rtt = Some(match session.rtt {
                None => took,
                Some(old) => (old * 7 + took) / 8,
            });
        } else {
            session.alarm = true;
            session.consecutive_bad = session.consecutive_bad.saturating_add(1);
        }
        let outcomes = round
            .outcomes
            .into_iter()
            .zip(&self.labels)
            .filter_map(|(outcome, label)| outcome.map(|o| (label.clone(), o)))
            .collect();
        Some(RoundReport {
            link: self.link.clone(),
            seq,
            started: round.started,
            outcomes,
            good,
            late: false,
        })
    }

    /// A probe of a decided round concluded; the late report once it was the last.
    fn record_late(
        &self,
        session: &mut Session,
        seq: u64,
        index: usize,
        outcome: ProbeOutcome,
    ) -> Option<RoundReport> {
        let finishing = session.finishing.get_mut(&seq)?;
        let slot = finishing.late.get_mut(index)?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(outcome);
        finishing.pending = finishing.pending.saturating_sub(1);
        if finishing.pending > 0 {
            return None;
        }
        let finishing = session.finishing.remove(&seq).expect("just looked up");
        let outcomes = finishing
            .late
            .into_iter()
            .zip(&self.labels)
            .filter_map(|(outcome, label)| outcome.map(|o| (label.clone(), o)))
            .collect();
        Some(RoundReport {
            link: self.link.clone(),
            seq,
            started: finishing.started,
            outcomes,
            good: finishing.good,
            late: true,
        })
    }

    /// `clamp(4 × recent RTT, 10 ms, timeout / 2)`; `timeout / 2` until a round was good.
    fn suspect_after(&self, session: &Session) -> Duration {
        let high = self.check.timeout / 2;
        let low = MIN_SUSPECT_AFTER.min(high);
        match session.rtt {
            Some(rtt) => (rtt * 4).clamp(low, high),
            None => high,
        }
    }

    /// When the newest round, still undecided, becomes suspicious (if it can).
    fn suspicion_check(&self, session: &Session) -> Option<Instant> {
        if session.alarm {
            return None;
        }
        let round = session.rounds.get(&session.newest)?;
        Some(round.started + self.suspect_after(session))
    }

    /// When the next round starts: one `interval` after the last, or, while suspicious
    /// and short of rounds to confirm `down_after` bad ones in a row, one
    /// `suspect_after` after it.
    fn next_start(&self, session: &Session) -> Instant {
        let normal = session.last_start + self.check.interval;
        let needed = self
            .check
            .down_after
            .saturating_sub(session.consecutive_bad);
        let in_flight = u32::try_from(session.rounds.len()).unwrap_or(u32::MAX);
        if session.alarm && in_flight < needed {
            normal.min(session.last_start + self.suspect_after(session))
        } else {
            normal
        }
    }

    fn next_wake(&self, session: &Session) -> Instant {
        let start = self.next_start(session);
        match self.suspicion_check(session) {
            Some(at) => start.min(at),
            None => start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeEndpoint;

    fn check(probe: Probe, interval: u64, timeout: u64, down_after: u32) -> Check {
        Check {
            probe,
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            min_targets: 1,
            down_after,
            up_after: 2,
            max_loss: 0,
            max_rtt: Duration::ZERO,
            window: 20,
        }
    }

    /// A link whose probes all fail at once (no IPv4 address): every round is bad at
    /// its start, and fast rounds confirm `down_after` of them quickly, then the pace
    /// drops back to the interval. No network needed.
    #[tokio::test]
    async fn immediate_failures_are_confirmed_fast_then_slow_down() {
        let probe = Probe::Tcp {
            targets: vec!["198.18.0.1".parse().unwrap()],
            port: 80,
        };
        let ep = ProbeEndpoint {
            ifname: "lo".into(),
            ifindex: 1,
            source4: None,
            source6: None,
            mark: 0,
            gateway4: None,
        };
        let (_tx, rx) = watch::channel(Some(ep));
        let (reports_tx, mut reports) = mpsc::channel(16);
        let task = spawn_link_prober("isp1".into(), check(probe, 200, 200, 3), rx, reports_tx);
        let mut started = Vec::new();
        for seq in 0..5 {
            let r = reports.recv().await.unwrap();
            assert_eq!((r.seq, r.good), (seq, false));
            assert!(
                matches!(&r.outcomes[..], [(_, ProbeOutcome::Failed(why))] if why.contains("no IPv4 address")),
                "{r:?}"
            );
            started.push(r.started);
        }
        // suspect_after = timeout / 2 apart until 3 are bad, then the interval.
        let gaps: Vec<u128> = started
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        for (gap, expected) in gaps.iter().zip([100, 100, 200, 200]) {
            assert!(gap.abs_diff(expected) < 40, "gaps {gaps:?}");
        }
        task.abort();
    }

    #[tokio::test]
    async fn none_endpoint_pauses_and_method_none_ends() {
        let (tx, rx) = watch::channel(None);
        let (reports_tx, mut reports) = mpsc::channel(16);
        let probe = Probe::Tcp {
            targets: vec!["198.18.0.1".parse().unwrap()],
            port: 80,
        };
        let task = spawn_link_prober("isp1".into(), check(probe, 100, 100, 3), rx, reports_tx);
        let waited = tokio::time::timeout(Duration::from_millis(300), reports.recv()).await;
        assert!(waited.is_err(), "no rounds while the endpoint is None");
        drop(tx);
        task.await.unwrap();

        let (_tx, rx) = watch::channel(None);
        let (reports_tx, _reports) = mpsc::channel(1);
        spawn_link_prober(
            "isp1".into(),
            check(Probe::None, 100, 100, 3),
            rx,
            reports_tx,
        )
        .await
        .unwrap();
    }
}
