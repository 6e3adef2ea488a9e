//! The metrics of SPEC §5 in the Prometheus text exposition format (version 0.0.4).
//!
//! The daemon keeps the counters it alone can count ([`Metrics`]: transitions, probe
//! results, apply times) and renders them with the current [`Status`] (states, RTT,
//! loss, the nft counters of new connections) when the listener asks.
//!
//! A gauge with no value (RTT of a link without a check, or whose probes were all lost
//! over the whole window) is left out rather than exported as NaN. Counters of every
//! configured link start at 0, so `rate()` and `increase()` see the first change.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::plan::LinkState;
use crate::probe::{ProbeOutcome, RoundReport};
use crate::status::{LinkStatus, Status};

/// Upper bounds of the `multiwan_apply_seconds` buckets: a state change applies in a
/// few milliseconds; a full apply (start, reload) reads the kernel back and takes tens.
pub const APPLY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Every state a link can be in, in the order the metrics list them.
pub const STATES: [LinkState; 5] = [
    LinkState::Up,
    LinkState::Degraded,
    LinkState::Down,
    LinkState::Waiting,
    LinkState::Disabled,
];

/// `result` of `multiwan_probes_total`.
pub fn probe_result(o: &ProbeOutcome) -> &'static str {
    match o {
        ProbeOutcome::Answered(_) => "answered",
        ProbeOutcome::Lost => "lost",
        ProbeOutcome::Failed(_) => "failed",
    }
}

/// What the daemon counts between scrapes.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// (link, state entered) → transitions.
    transitions: BTreeMap<(String, LinkState), u64>,
    /// (link, target, result) → probes.
    probes: BTreeMap<(String, String, &'static str), u64>,
    apply_buckets: [u64; APPLY_BUCKETS.len()],
    apply_count: u64,
    apply_sum: f64,
    /// what → repairs (see [`REPAIR_KINDS`]).
    repairs: BTreeMap<&'static str, u64>,
}

/// The `what` of `multiwan_repairs_total`, each shown from the start (at 0): `nft`,
/// `rules`, `routes`: a read-back apply put right what someone else changed;
/// `overflow`: kernel events were lost and everything was read again;
/// `apply_failed`: an apply failed (and was retried with a full read-back).
pub const REPAIR_KINDS: [&str; 5] = ["nft", "rules", "routes", "overflow", "apply_failed"];

impl Metrics {
    pub fn transition(&mut self, link: &str, to: LinkState) {
        *self.transitions.entry((link.to_string(), to)).or_default() += 1;
    }

    /// Counts the probes of one round.
    pub fn round(&mut self, report: &RoundReport) {
        for (target, outcome) in &report.outcomes {
            let key = (report.link.clone(), target.clone(), probe_result(outcome));
            *self.probes.entry(key).or_default() += 1;
        }
    }

    pub fn apply_took(&mut self, took: Duration) {
        let s = took.as_secs_f64();
        for (i, le) in APPLY_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.apply_buckets[i] += 1;
            }
        }
        self.apply_count += 1;
        self.apply_sum += s;
    }

    /// One repair of `what` (one of [`REPAIR_KINDS`]).
    pub fn repair(&mut self, what: &str) {
        if let Some(kind) = REPAIR_KINDS.iter().find(|k| **k == what) {
            *self.repairs.entry(kind).or_default() += 1;
        }
    }

    fn render_repairs(&self, out: &mut String) {
        family(
            out,
            "multiwan_repairs_total",
            "counter",
            "Repairs by the daemon: nft, rules, routes (put right after someone else \
             changed them), overflow (kernel events lost, all read again), apply_failed \
             (an apply failed and was retried with a full read-back).",
        );
        for kind in REPAIR_KINDS {
            let n = self.repairs.get(kind).copied().unwrap_or(0);
            sample(
                out,
                "multiwan_repairs_total",
                &[("what", kind)],
                &n.to_string(),
            );
        }
    }

    /// A link removed from the config: its series go away.
    pub fn forget(&mut self, link: &str) {
        self.transitions.retain(|(l, _), _| l != link);
        self.probes.retain(|(l, _, _), _| l != link);
    }

    /// The exposition: HELP and TYPE for every metric, then its samples.
    pub fn render(&self, status: &Status) -> String {
        let mut out = String::new();
        let links = &status.links;
        link_gauges(&mut out, links);
        self.render_counters(&mut out, links);
        self.render_apply(&mut out);
        self.render_repairs(&mut out);
        out
    }

    fn render_counters(&self, out: &mut String, links: &[LinkStatus]) {
        family(
            out,
            "multiwan_link_transitions_total",
            "counter",
            "State changes of the link since the daemon started, by the state entered.",
        );
        let mut transitions: BTreeMap<(String, LinkState), u64> = links
            .iter()
            .flat_map(|l| STATES.iter().map(|s| ((l.name.clone(), *s), 0)))
            .collect();
        transitions.extend(self.transitions.iter().map(|(k, v)| (k.clone(), *v)));
        for ((link, to), n) in &transitions {
            sample(
                out,
                "multiwan_link_transitions_total",
                &[("link", link), ("to", to.as_str())],
                &n.to_string(),
            );
        }

        family(
            out,
            "multiwan_probes_total",
            "counter",
            "Health-check probes since the daemon started, by link, target and result \
             (answered; lost: no answer in time; failed: an error or a refusal).",
        );
        for ((link, target, result), n) in &self.probes {
            sample(
                out,
                "multiwan_probes_total",
                &[("link", link), ("target", target), ("result", result)],
                &n.to_string(),
            );
        }

        family(
            out,
            "multiwan_link_new_connections_total",
            "counter",
            "New connections given to the link (the nft counter new_<link>; reset when the \
             nft table is re-created).",
        );
        for l in links {
            sample(
                out,
                "multiwan_link_new_connections_total",
                &[("link", &l.name)],
                &l.new_connections.to_string(),
            );
        }
    }

    fn render_apply(&self, out: &mut String) {
        family(
            out,
            "multiwan_apply_seconds",
            "histogram",
            "Time to apply a plan to the kernel (rules, routes, nft batch).",
        );
        for (le, n) in APPLY_BUCKETS.iter().zip(self.apply_buckets) {
            sample(
                out,
                "multiwan_apply_seconds_bucket",
                &[("le", &float(*le))],
                &n.to_string(),
            );
        }
        sample(
            out,
            "multiwan_apply_seconds_bucket",
            &[("le", "+Inf")],
            &self.apply_count.to_string(),
        );
        sample(
            out,
            "multiwan_apply_seconds_sum",
            &[],
            &float(self.apply_sum),
        );
        sample(
            out,
            "multiwan_apply_seconds_count",
            &[],
            &self.apply_count.to_string(),
        );
    }
}

/// Link up, state, RTT and loss.
fn link_gauges(out: &mut String, links: &[LinkStatus]) {
    family(
        out,
        "multiwan_link_up",
        "gauge",
        "1 while the link is in service (state up), else 0.",
    );
    for l in links {
        let up = u8::from(l.state == "up");
        sample(
            out,
            "multiwan_link_up",
            &[("link", &l.name)],
            &up.to_string(),
        );
    }

    family(
        out,
        "multiwan_link_state",
        "gauge",
        "The link's state: 1 for the state it is in, 0 for the others.",
    );
    for l in links {
        for s in STATES {
            let v = u8::from(l.state == s.as_str());
            sample(
                out,
                "multiwan_link_state",
                &[("link", &l.name), ("state", s.as_str())],
                &v.to_string(),
            );
        }
    }

    family(
        out,
        "multiwan_link_rtt_seconds",
        "gauge",
        "Mean round-trip time of the answered health-check probes over the check window.",
    );
    for l in links {
        if let Some(ms) = l.rtt_ms {
            sample(
                out,
                "multiwan_link_rtt_seconds",
                &[("link", &l.name)],
                &float(ms / 1e3),
            );
        }
    }

    family(
        out,
        "multiwan_link_loss_ratio",
        "gauge",
        "Lost health-check probes / sent probes over the check window (0 to 1).",
    );
    for l in links {
        if let Some(pct) = l.loss_pct {
            sample(
                out,
                "multiwan_link_loss_ratio",
                &[("link", &l.name)],
                &float(pct / 100.0),
            );
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::LinkStatus;
    use std::time::Instant;

    fn link(name: &str, state: &str) -> LinkStatus {
        LinkStatus {
            name: name.into(),
            interface: "wan1".into(),
            id: 1,
            state: state.into(),
            gateway: None,
            gateway6: None,
            addresses: vec![],
            priority: 1,
            weight: 1,
            rtt_ms: Some(1.5),
            loss_pct: Some(25.0),
            since: None,
            reason: None,
            override_: None,
            damped_until: None,
            share_pct: 100.0,
            new_connections: 7,
            targets: vec![],
        }
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let mut m = Metrics::default();
        m.transition("isp1", LinkState::Down);
        m.round(&RoundReport {
            link: "isp1".into(),
            seq: 0,
            started: Instant::now().into(),
            outcomes: vec![
                (
                    "198.18.0.1".into(),
                    ProbeOutcome::Answered(Duration::from_millis(1)),
                ),
                ("198.18.0.2".into(), ProbeOutcome::Lost),
            ],
            good: true,
            late: false,
        });
        m.apply_took(Duration::from_millis(3));
        m.repair("nft");
        let status = Status {
            links: vec![link("isp1", "down"), link("is\"p2", "up")],
            policies: vec![],
            daemon: None,
        };
        let text = m.render(&status);
        for name in [
            "multiwan_link_up",
            "multiwan_link_state",
            "multiwan_link_rtt_seconds",
            "multiwan_link_loss_ratio",
            "multiwan_link_transitions_total",
            "multiwan_probes_total",
            "multiwan_link_new_connections_total",
            "multiwan_repairs_total",
            "multiwan_apply_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}\n{text}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}\n{text}");
        }
        assert!(text.contains("multiwan_link_up{link=\"isp1\"} 0\n"));
        assert!(text.contains("multiwan_link_up{link=\"is\\\"p2\"} 1\n"));
        assert!(text.contains("multiwan_link_state{link=\"isp1\",state=\"down\"} 1\n"));
        assert!(text.contains("multiwan_link_state{link=\"isp1\",state=\"up\"} 0\n"));
        assert!(text.contains("multiwan_link_rtt_seconds{link=\"isp1\"} 0.0015\n"));
        assert!(text.contains("multiwan_link_loss_ratio{link=\"isp1\"} 0.25\n"));
        assert!(text.contains("multiwan_link_transitions_total{link=\"isp1\",to=\"down\"} 1\n"));
        assert!(text.contains("multiwan_link_transitions_total{link=\"isp1\",to=\"up\"} 0\n"));
        assert!(text.contains(
            "multiwan_probes_total{link=\"isp1\",target=\"198.18.0.2\",result=\"lost\"} 1\n"
        ));
        assert!(text.contains("multiwan_link_new_connections_total{link=\"isp1\"} 7\n"));
        assert!(text.contains("multiwan_apply_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("multiwan_apply_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("multiwan_apply_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("multiwan_apply_seconds_count 1\n"));
        assert!(text.contains("multiwan_repairs_total{what=\"nft\"} 1\n"));
        assert!(text.contains("multiwan_repairs_total{what=\"apply_failed\"} 0\n"));
        m.forget("isp1");
        assert!(!m.render(&Status::default()).contains("isp1"));
    }
}
