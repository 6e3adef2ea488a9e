//! Flap damping (SPEC §2.10), the classic BGP route-flap damping (RFC 2439) applied to
//! a link: every time the link goes down it earns a penalty, the penalty decays
//! exponentially, and while it is high the link is held down even when its probes
//! are good again.
//!
//! Why these numbers (all in one place, used nowhere else):
//!
//! - One down transition adds [`PENALTY_PER_DOWN`] = 1000, and the link is suppressed
//!   when a down leaves the penalty above [`SUPPRESS_THRESHOLD`] = 1500. One down alone
//!   (1000) therefore never holds a link: an outage that heals is simply an outage.
//!   A second down while the first one's penalty is still above 500, i.e. within one
//!   half-life (30 s) of it, does: 1000 + 1000 × 2^(-Δ/30 s) > 1500 ⇔ Δ < 30 s.
//!   The classic BGP suppress limit (2000) would need the first penalty not to have
//!   decayed at all, so a second down would almost never suppress: with 200 ms rounds,
//!   `down_after = 3` and `up_after = 5`, a link blackholed and healed every 2 s goes
//!   down for the second time about 4 s after the first, penalty ≈ 1000 + 912 = 1912:
//!   above 1500 (held) but below 2000 (it would have come back once more).
//! - The hold lasts until the penalty has decayed to [`REUSE_THRESHOLD`] = 750:
//!   half-life × log2(penalty / 750). For that second down (≈ 1912) it is ≈ 40 s, for a
//!   link that keeps flapping while held it grows with every flap (each "would have
//!   come up, then failed again" adds another 1000).
//! - [`HALF_LIFE`] = 30 s: short enough that a link that had one bad minute is fully
//!   trusted again a few minutes later, long enough to span many flap cycles of a
//!   link whose outages last seconds.
//! - [`MAX_HOLD`] = 10 min: the penalty is capped at the value that decays to the reuse
//!   threshold in exactly that time, so no history of flaps holds a link longer than
//!   10 minutes after its last flap (a router must not keep a repaired uplink idle for
//!   hours because it was unstable in the morning).

use std::time::{Duration, Instant};

/// Penalty added each time the link goes down.
pub const PENALTY_PER_DOWN: f64 = 1000.0;
/// A down that leaves the penalty above this holds the link down.
pub const SUPPRESS_THRESHOLD: f64 = 1500.0;
/// A held link is released when the penalty has decayed to this.
pub const REUSE_THRESHOLD: f64 = 750.0;
/// The penalty halves in this time.
pub const HALF_LIFE: Duration = Duration::from_secs(30);
/// No hold lasts longer than this after the last flap.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// The penalty that decays to [`REUSE_THRESHOLD`] in exactly [`MAX_HOLD`].
fn ceiling() -> f64 {
    REUSE_THRESHOLD * (MAX_HOLD.as_secs_f64() / HALF_LIFE.as_secs_f64()).exp2()
}

/// One link's flap penalty and hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Damping {
    /// The penalty at `at` (the last flap); it decays from there.
    penalty: f64,
    at: Option<Instant>,
    /// Set while the link is suppressed: when the penalty reaches the reuse threshold.
    until: Option<Instant>,
}

impl Damping {
    /// The decayed penalty at `now`.
    pub(crate) fn penalty(&self, now: Instant) -> f64 {
        match self.at {
            None => 0.0,
            Some(at) => {
                let halves =
                    now.saturating_duration_since(at).as_secs_f64() / HALF_LIFE.as_secs_f64();
                self.penalty * (-halves).exp2()
            }
        }
    }

    /// The link went down (or, while held, would have: it recovered and failed again).
    /// Returns the end of the hold when the link is (still) suppressed.
    pub(crate) fn flap(&mut self, now: Instant) -> Option<Instant> {
        let penalty = (self.penalty(now) + PENALTY_PER_DOWN).min(ceiling());
        self.penalty = penalty;
        self.at = Some(now);
        // Once suppressed, a link stays suppressed until the penalty has decayed to the
        // reuse threshold, so every flap while held pushes the end further out.
        if self.until.is_some() || penalty > SUPPRESS_THRESHOLD {
            let hold = HALF_LIFE.mul_f64((penalty / REUSE_THRESHOLD).log2().max(0.0));
            self.until = Some(now + hold.min(MAX_HOLD));
        }
        self.until
    }

    /// When the hold ends, while the link is suppressed.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Whether the link is held at `now`.
    pub(crate) fn held(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Ends a hold whose time has come; true when it did.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now >= until => {
                self.until = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn one_down_never_holds() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        assert_eq!(d.flap(t0), None);
        assert_eq!(d.penalty(t0), PENALTY_PER_DOWN);
        assert!(!d.held(t0));
    }

    #[test]
    fn penalty_halves_every_half_life() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        d.flap(t0);
        let p = d.penalty(t0 + HALF_LIFE);
        assert!((p - 500.0).abs() < 1e-6, "{p}");
        let p = d.penalty(t0 + HALF_LIFE * 2);
        assert!((p - 250.0).abs() < 1e-6, "{p}");
    }

    #[test]
    fn second_down_within_a_half_life_holds() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        d.flap(t0);
        let t1 = t0 + secs(4.0);
        let until = d.flap(t1).expect("held after the second down 4 s later");
        // 1000 + 1000 × 2^(-4/30) ≈ 1912 decays to 750 in 30 × log2(1912 / 750) ≈ 40.5 s.
        let hold = until - t1;
        assert!(hold > secs(40.0) && hold < secs(41.0), "{hold:?}");
        assert!(d.held(t1 + secs(40.0)));
        assert!(!d.expire(t1 + secs(40.0)));
        assert!(d.expire(until));
        assert!(!d.held(until));
        assert_eq!(d.until(), None);
        let p = d.penalty(until);
        assert!((p - REUSE_THRESHOLD).abs() < 1.0, "{p}");
    }

    #[test]
    fn second_down_after_a_half_life_does_not_hold() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        d.flap(t0);
        assert_eq!(d.flap(t0 + secs(31.0)), None);
    }

    #[test]
    fn flaps_while_held_extend_the_hold() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        d.flap(t0);
        let first = d.flap(t0 + secs(4.0)).unwrap();
        let second = d.flap(t0 + secs(8.0)).unwrap();
        assert!(second > first);
    }

    #[test]
    fn hold_is_capped() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        let mut now = t0;
        let mut until = None;
        // A million downs a microsecond apart: far past the ceiling.
        for _ in 0..1_000_000 {
            until = d.flap(now);
            now += Duration::from_micros(1);
        }
        let last = now - Duration::from_micros(1);
        let until = until.unwrap();
        assert!(until - last <= MAX_HOLD, "{:?}", until - last);
        assert!(until - last > MAX_HOLD - secs(1.0));
    }
}
