//! The answer as a few lines a person reads at a glance.

use std::fmt::Write;

use super::{Explanation, Verdict};

impl Explanation {
    pub fn table(&self) -> String {
        let c = &self.connection;
        let mut out = String::new();
        let proto = c.proto.as_deref().unwrap_or("any");
        let from = c.from.as_deref().unwrap_or("*");
        let port = c.dport.map(|p| format!(":{p}")).unwrap_or_default();
        let whence = if c.local {
            "from the router itself".to_string()
        } else {
            format!("arriving on {}", c.iif.as_deref().unwrap_or("?"))
        };
        let _ = writeln!(out, "{proto} {from} -> {}{port}, {whence}", c.to);
        let rule = self.rule.as_deref().unwrap_or("(none)");
        let policy = self.policy.as_deref().unwrap_or("-");
        let mut verdict = match (self.verdict, &self.link) {
            (Verdict::Link, Some(l)) => format!("link {l}"),
            (Verdict::Split, Some(l)) => format!("split, this one to {l}"),
            (Verdict::Fallback, l) => format!(
                "fallback {}{}",
                self.fallback.as_deref().unwrap_or("?"),
                l.as_ref().map(|l| format!(" ({l})")).unwrap_or_default()
            ),
            (v, _) => v.as_str().to_string(),
        };
        if let Some(t) = self.table {
            let _ = write!(verdict, ", table {t}");
        }
        if let Some(m) = &self.mark {
            let _ = write!(verdict, ", mark {m}");
        }
        let _ = writeln!(out, "rule {rule}, policy {policy}: {verdict}");
        if self.route.is_some() || self.source.is_some() {
            let _ = writeln!(
                out,
                "route {}; source {}",
                self.route.as_deref().unwrap_or("unknown"),
                self.source.as_deref().unwrap_or("unknown")
            );
        }
        if !self.candidates.is_empty() {
            let list: Vec<String> = self
                .candidates
                .iter()
                .map(|k| {
                    format!(
                        "{} {} prio {} {:.1}%",
                        k.link, k.state, k.priority, k.share_pct
                    )
                })
                .collect();
            let _ = writeln!(out, "candidates: {}", list.join(", "));
        }
        for (i, w) in self.why.iter().enumerate() {
            let head = if i == 0 { "why:" } else { "    " };
            let _ = writeln!(out, "{head} {w}");
        }
        out
    }
}
