//! The sliding window of the last `window` rounds: loss and RTT, for the link and per
//! target.
//!
//! Aggregates are recomputed from the stored rounds on demand instead of being kept as
//! running sums: a window is a few dozen rounds, and recomputing cannot drift (no float
//! sums to subtract from) and survives trimming and resizing for free.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Round, TargetHealth};

/// What one round leaves in the window.
#[derive(Debug, Clone)]
struct Sample {
    sent: u32,
    answered: u32,
    /// Sum and count of the RTTs of the answered probes (milliseconds).
    rtt_sum_ms: f64,
    rtt_count: u32,
    per_target: Vec<(String, Option<Duration>)>,
}

/// The last `capacity` rounds, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    capacity: usize,
    samples: VecDeque<Sample>,
}

impl Window {
    /// A window of `capacity` rounds; 0 keeps nothing (links without a check).
    pub(crate) fn new(capacity: usize) -> Self {
        Window {
            capacity,
            samples: VecDeque::with_capacity(capacity),
        }
    }

    /// Changes the size (a reload); the oldest rounds go when it shrinks.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.keep_last(capacity);
    }

    pub(crate) fn push(&mut self, round: &Round) {
        if self.capacity == 0 {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            sent: round.sent,
            answered: round.answered,
            rtt_sum_ms: round.rtts.iter().map(|d| ms(*d)).sum(),
            rtt_count: u32::try_from(round.rtts.len()).unwrap_or(u32::MAX),
            per_target: round.per_target.clone(),
        });
    }

    /// Adds the late outcomes of a round already pushed (`rounds_ago` = how many rounds
    /// were pushed after it: 0 is the newest) to that round's sample; nothing when it has
    /// slid out of the window.
    pub(crate) fn amend(&mut self, rounds_ago: usize, late: &Round) {
        let Some(index) = self.samples.len().checked_sub(rounds_ago + 1) else {
            return;
        };
        let sample = &mut self.samples[index];
        sample.sent += late.sent;
        sample.answered += late.answered;
        sample.rtt_sum_ms += late.rtts.iter().map(|d| ms(*d)).sum::<f64>();
        sample.rtt_count += u32::try_from(late.rtts.len()).unwrap_or(u32::MAX);
        sample.per_target.extend(late.per_target.iter().cloned());
    }

    /// Forgets all but the newest `n` rounds.
    pub(crate) fn keep_last(&mut self, n: usize) {
        while self.samples.len() > n {
            self.samples.pop_front();
        }
    }

    /// How many rounds the window holds now.
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// Lost probes / sent probes over the window, in percent; `None` before any probe.
    pub(crate) fn loss_pct(&self) -> Option<f64> {
        let (sent, answered) = self.samples.iter().fold((0u64, 0u64), |(s, a), x| {
            (s + u64::from(x.sent), a + u64::from(x.answered.min(x.sent)))
        });
        (sent > 0).then(|| (sent - answered) as f64 * 100.0 / sent as f64)
    }

    /// Mean RTT of the answered probes over the window, in milliseconds; `None` when no
    /// probe was answered.
    pub(crate) fn rtt_ms(&self) -> Option<f64> {
        let (sum, count) = self.samples.iter().fold((0.0, 0u64), |(s, c), x| {
            (s + x.rtt_sum_ms, c + u64::from(x.rtt_count))
        });
        (count > 0).then(|| sum / count as f64)
    }

    /// Per target: those of `labels` (the check's, in its order) probed in the window,
    /// then any other of the newest round's; targets no longer probed after a reload
    /// are left out. Not just the newest round's: a round decided early lacks the
    /// targets still in flight, so a target that stopped answering would vanish from
    /// the list instead of showing as down. `up`: the target answered at least one of
    /// its last `up_rounds` probes, the link's `down_after` rule applied to one target.
    pub(crate) fn targets(&self, labels: &[String], up_rounds: usize) -> Vec<TargetHealth> {
        let Some(newest) = self.samples.back() else {
            return Vec::new();
        };
        let probed = |target: &String| {
            self.samples
                .iter()
                .any(|s| s.per_target.iter().any(|(t, _)| t == target))
        };
        let mut names: Vec<&String> = labels.iter().filter(|t| probed(t)).collect();
        for (t, _) in &newest.per_target {
            if !names.contains(&t) {
                names.push(t);
            }
        }
        names
            .into_iter()
            .map(|target| {
                let results: Vec<Option<Duration>> = self
                    .samples
                    .iter()
                    .filter_map(|s| {
                        s.per_target
                            .iter()
                            .find(|(t, _)| t == target)
                            .map(|(_, r)| *r)
                    })
                    .collect();
                let answered: Vec<f64> = results.iter().flatten().map(|d| ms(*d)).collect();
                let probed = results.len();
                TargetHealth {
                    target: target.clone(),
                    up: results
                        .iter()
                        .rev()
                        .take(up_rounds.max(1))
                        .any(Option::is_some),
                    rtt_ms: (!answered.is_empty())
                        .then(|| answered.iter().sum::<f64>() / answered.len() as f64),
                    loss_pct: (probed > 0)
                        .then(|| (probed - answered.len()) as f64 * 100.0 / probed as f64),
                }
            })
            .collect()
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(answered: &[Option<u64>]) -> Round {
        let per_target: Vec<(String, Option<Duration>)> = answered
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("t{i}"), r.map(Duration::from_millis)))
            .collect();
        let rtts: Vec<Duration> = per_target.iter().filter_map(|(_, r)| *r).collect();
        Round {
            answered: rtts.len() as u32,
            sent: answered.len() as u32,
            good: !rtts.is_empty(),
            rtts,
            per_target,
            failure: None,
        }
    }

    #[test]
    fn empty_window_has_no_numbers() {
        let w = Window::new(20);
        assert_eq!(w.loss_pct(), None);
        assert_eq!(w.rtt_ms(), None);
        assert!(w.targets(&["t0".into()], 3).is_empty());
    }

    #[test]
    fn loss_is_over_probes_not_rounds() {
        let mut w = Window::new(20);
        w.push(&round(&[Some(10), None]));
        w.push(&round(&[Some(10), Some(30)]));
        // 1 of 4 probes lost; the RTT mean is over the 3 answered probes only.
        assert_eq!(w.loss_pct(), Some(25.0));
        let rtt = w.rtt_ms().unwrap();
        assert!((rtt - 50.0 / 3.0).abs() < 1e-9, "{rtt}");
    }

    #[test]
    fn old_rounds_slide_out() {
        let mut w = Window::new(2);
        w.push(&round(&[None]));
        w.push(&round(&[Some(5)]));
        w.push(&round(&[Some(5)]));
        assert_eq!(w.len(), 2);
        assert_eq!(w.loss_pct(), Some(0.0));
    }

    #[test]
    fn keep_last_and_resize() {
        let mut w = Window::new(10);
        for _ in 0..5 {
            w.push(&round(&[None]));
        }
        w.push(&round(&[Some(1)]));
        w.keep_last(1);
        assert_eq!(w.len(), 1);
        assert_eq!(w.loss_pct(), Some(0.0));
        w.set_capacity(0);
        w.push(&round(&[Some(1)]));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn late_outcomes_amend_their_round() {
        let mut w = Window::new(3);
        w.push(&round(&[Some(10)]));
        w.push(&round(&[Some(20)]));
        // The first round's second target was lost after the round was decided.
        w.amend(1, &round(&[None]));
        assert_eq!(w.loss_pct(), Some(100.0 / 3.0));
        // A late answer of the newest round counts in the RTT.
        w.amend(0, &round(&[Some(60)]));
        assert_eq!(w.loss_pct(), Some(25.0));
        assert_eq!(w.rtt_ms(), Some(30.0));
        // Slid out: ignored.
        w.amend(5, &round(&[None]));
        assert_eq!(w.loss_pct(), Some(25.0));
    }

    #[test]
    fn per_target_numbers_and_up() {
        let mut w = Window::new(20);
        w.push(&round(&[Some(10), Some(40)]));
        w.push(&round(&[Some(20), None]));
        w.push(&round(&[Some(30), None]));
        w.push(&round(&[None, None]));
        let labels = ["t0", "t1", "gone"].map(String::from);
        let t = w.targets(&labels, 3);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].target, "t0");
        assert!(t[0].up, "answered 2 of its last 3");
        assert_eq!(t[0].rtt_ms, Some(20.0));
        assert_eq!(t[0].loss_pct, Some(25.0));
        assert!(!t[1].up, "silent for its last 3 probes");
        assert_eq!(t[1].rtt_ms, Some(40.0));
        assert_eq!(t[1].loss_pct, Some(75.0));
    }

    #[test]
    fn a_target_still_in_flight_in_the_newest_round_is_listed() {
        let mut w = Window::new(20);
        w.push(&round(&[Some(10), Some(40)]));
        // Decided early: t1's probe was still in flight, its loss comes late.
        w.push(&round(&[Some(20)]));
        let mut late = round(&[None]);
        late.per_target[0].0 = "t1".into();
        w.amend(0, &late);
        w.push(&round(&[Some(30)]));
        let labels = ["t0", "t1"].map(String::from);
        let t = w.targets(&labels, 1);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[1].target, "t1");
        assert_eq!(t[1].loss_pct, Some(50.0));
    }
}
