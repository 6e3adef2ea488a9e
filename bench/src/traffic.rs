//! What a LAN client sees during a failover, read from the attempts of netns-lab's
//! traffic generator (a new TCP connection every 20 ms, each on its own thread).

use std::time::{Duration, Instant};

/// The generator is netns-lab's, shared with the tests and `multiwan demo`; this module
/// only adds the bench's ways of reading its attempts.
pub use netns_lab::{Attempt, Traffic};

/// From `cut` to the start of the first attempt that left through `backup`: how long
/// after the failure a new connection works again.
pub fn to_backup(attempts: &[Attempt], cut: Instant, backup: usize) -> Option<Duration> {
    attempts
        .iter()
        .find(|a| a.at >= cut && a.isp == Some(backup))
        .map(|a| a.at - cut)
}

/// The client's own view: from the first failed attempt started at or after `cut` to
/// the first successful one after it (0 if none failed; `None` if none succeeded after).
pub fn client_outage(attempts: &[Attempt], cut: Instant) -> Option<Duration> {
    let mut first_fail: Option<Instant> = None;
    for a in attempts.iter().filter(|a| a.at >= cut) {
        match (a.isp, first_fail) {
            (None, None) => first_fail = Some(a.at),
            (Some(_), Some(f)) => return Some(a.at - f),
            _ => {}
        }
    }
    match first_fail {
        None => Some(Duration::ZERO),
        Some(_) => None,
    }
}

/// Attempts that started at or after `cut` and failed.
pub fn failures_after(attempts: &[Attempt], cut: Instant) -> usize {
    attempts
        .iter()
        .filter(|a| a.at >= cut && a.isp.is_none())
        .count()
}
