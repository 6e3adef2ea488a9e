//! The results table (markdown) and the per-scenario details under it.

use std::fmt::Write as _;

/// How a number compares with its target.
#[derive(Debug, Clone)]
pub enum Verdict {
    Met,
    /// Missed, with by how much ("+112 ms", "0.87 < 0.95").
    Missed(String),
    /// No target: context for the reader.
    Info,
    /// The measurement could not be made (the error).
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub measurement: String,
    pub result: String,
    pub target: String,
    pub verdict: Verdict,
}

#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    /// (scenario, lines of details), in the order scenarios ran.
    details: Vec<(String, Vec<String>)>,
}

impl Report {
    pub fn row(
        &mut self,
        scenario: &str,
        measurement: impl Into<String>,
        result: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
    ) {
        self.rows.push(Row {
            scenario: scenario.into(),
            measurement: measurement.into(),
            result: result.into(),
            target: target.into(),
            verdict,
        });
    }

    pub fn info(
        &mut self,
        scenario: &str,
        measurement: impl Into<String>,
        result: impl Into<String>,
    ) {
        self.row(scenario, measurement, result, "", Verdict::Info);
    }

    /// A number that must be at most `target` (same unit).
    #[allow(clippy::too_many_arguments)]
    pub fn at_most(
        &mut self,
        scenario: &str,
        measurement: impl Into<String>,
        result: impl Into<String>,
        value: f64,
        target: f64,
        unit: &str,
        target_text: impl Into<String>,
    ) {
        let verdict = if !value.is_finite() {
            Verdict::Failed("no value".into())
        } else if value <= target {
            Verdict::Met
        } else {
            Verdict::Missed(format!("+{} {unit}", crate::util::fmt_num(value - target)))
        };
        self.row(scenario, measurement, result, target_text, verdict);
    }

    /// A ratio that must be at least `target`.
    pub fn at_least(
        &mut self,
        scenario: &str,
        measurement: impl Into<String>,
        result: impl Into<String>,
        value: f64,
        target: f64,
        target_text: impl Into<String>,
    ) {
        let verdict = if !value.is_finite() {
            Verdict::Failed("no value".into())
        } else if value >= target {
            Verdict::Met
        } else {
            Verdict::Missed(format!("{value:.3} < {target}"))
        };
        self.row(scenario, measurement, result, target_text, verdict);
    }

    pub fn failed(&mut self, scenario: &str, error: &anyhow::Error) {
        let msg = format!("{error:#}");
        let short: String = msg.lines().next().unwrap_or("").chars().take(200).collect();
        self.row(
            scenario,
            "(scenario failed)",
            "",
            "",
            Verdict::Failed(short),
        );
        self.detail(scenario, format!("error: {msg}"));
    }

    pub fn detail(&mut self, scenario: &str, line: impl Into<String>) {
        match self.details.iter_mut().find(|(s, _)| s == scenario) {
            Some((_, lines)) => lines.push(line.into()),
            None => self.details.push((scenario.into(), vec![line.into()])),
        }
    }

    /// The whole report as markdown: `header` lines, the table, then the details.
    pub fn markdown(&self, header: &[String]) -> String {
        let mut out = String::new();
        for h in header {
            let _ = writeln!(out, "{h}");
        }
        out.push('\n');
        out.push_str("| scenario | measurement | result | target | verdict |\n");
        out.push_str("|---|---|---|---|---|\n");
        for r in &self.rows {
            let verdict = match &r.verdict {
                Verdict::Met => "met".to_string(),
                Verdict::Missed(by) => format!("**missed** ({by})"),
                Verdict::Info => "".to_string(),
                Verdict::Failed(e) => format!("**failed**: {}", e.replace('|', "/")),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.scenario,
                r.measurement.replace('|', "/"),
                r.result.replace('|', "/"),
                r.target.replace('|', "/"),
                verdict
            );
        }
        for (scenario, lines) in &self.details {
            let _ = writeln!(out, "\n### {scenario}\n");
            for l in lines {
                let _ = writeln!(out, "- {l}");
            }
        }
        out
    }
}
