//! `multiwan status`: the JSON object of SPEC §4 and its table for people.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// One object: every link and every policy. Fields that do not apply are `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub links: Vec<LinkStatus>,
    pub policies: Vec<PolicyStatus>,
    /// The daemon's own health: only present once it repaired something or while its
    /// applies fail (SPEC §4's fields stay as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonStatus>,
}

/// Repairs of damage done by others (SPEC §2.14) and failing applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Read-back applies that found something damaged and put it right.
    pub repairs: u64,
    pub last_repair: Option<RepairStatus>,
    /// Applies that failed in a row (0: the last one succeeded); retried with backoff.
    pub apply_failures: u32,
    pub last_apply_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairStatus {
    /// What was damaged: nft, rules, routes, overflow (events lost).
    pub what: String,
    /// RFC 3339, UTC.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub name: String,
    pub interface: String,
    pub id: u8,
    /// up | degraded | down | waiting | disabled
    pub state: String,
    pub gateway: Option<String>,
    pub gateway6: Option<String>,
    pub addresses: Vec<String>,
    pub priority: u32,
    pub weight: u32,
    pub rtt_ms: Option<f64>,
    pub loss_pct: Option<f64>,
    /// RFC 3339, UTC.
    pub since: Option<String>,
    pub reason: Option<String>,
    #[serde(rename = "override")]
    pub override_: Option<String>,
    pub damped_until: Option<String>,
    /// Share of new connections (of the `default` policy) this link gets now.
    pub share_pct: f64,
    pub new_connections: u64,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub target: String,
    pub up: bool,
    pub rtt_ms: Option<f64>,
    pub loss_pct: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    /// Links that take its new connections now.
    pub active: Vec<String>,
}

impl Status {
    /// A table a person reads at a glance.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<10} {:<10} {:<9} {:>6} {:>8} {:>7} {:>9}  SINCE / REASON",
            "LINK", "INTERFACE", "STATE", "SHARE", "RTT", "LOSS", "NEW CONN"
        );
        for l in &self.links {
            let rtt = l.rtt_ms.map_or("-".into(), |r| format!("{r:.1}ms"));
            let loss = l.loss_pct.map_or("-".into(), |p| format!("{p:.1}%"));
            let mut reason = l.reason.clone().unwrap_or_default();
            if let Some(o) = &l.override_ {
                reason = format!("override {o}; {reason}");
            }
            if let Some(d) = &l.damped_until {
                reason = format!("{reason}; held until {d}");
            }
            let _ = writeln!(
                out,
                "{:<10} {:<10} {:<9} {:>5.1}% {:>8} {:>7} {:>9}  {} {}",
                l.name,
                l.interface,
                l.state,
                l.share_pct,
                rtt,
                loss,
                l.new_connections,
                l.since.as_deref().unwrap_or("-"),
                reason
            );
        }
        for p in &self.policies {
            let active = if p.active.is_empty() {
                "(none: fallback)".to_string()
            } else {
                p.active.join(", ")
            };
            let _ = writeln!(out, "policy {}: {}", p.name, active);
        }
        out
    }
}

/// Formats a wall-clock time as RFC 3339 UTC with second precision.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_460_531);
        assert_eq!(rfc3339(t), "2026-11-23T19:02:11Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
