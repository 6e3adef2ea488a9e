//! The outage scenario's rows: medians and worst cases of the trials, per method and
//! kind of failure, next to their targets.

use super::*;

fn values(trials: &[&Trial], f: impl Fn(&Trial) -> Option<f64>) -> Vec<f64> {
    trials.iter().map(|t| f(t).unwrap_or(f64::NAN)).collect()
}

/// "412 / 530 ms (n=10)", with the count of trials that never reached the backup.
fn med_worst(v: &[f64]) -> String {
    let ok = v.iter().filter(|x| x.is_finite()).count();
    let missing = v.len() - ok;
    let mut s = format!("{} / {} ms (n={ok})", fmt_num(median(v)), fmt_num(max(v)));
    if missing > 0 {
        s.push_str(&format!(", {missing} never"));
    }
    s
}

// long-fn: one report row after another, in the order the table shows them
pub(super) fn summarize(report: &mut Report, trials: &[Trial], nft_rewrite_ms: f64) {
    let pick = |m: Method, f: Failure| -> Vec<&Trial> {
        trials
            .iter()
            .filter(|t| t.method == m && t.failure == f)
            .collect()
    };
    let mw_bh = pick(Method::Multiwan, Failure::Blackhole);
    let cl_bh = pick(Method::Classic, Failure::Blackhole);
    let mw_ca = pick(Method::Multiwan, Failure::Carrier);
    let cl_ca = pick(Method::Classic, Failure::Carrier);

    // Headline: failure → first new connection through the backup.
    let mw_bh_v = values(&mw_bh, |t| t.to_backup);
    let cl_bh_v = values(&cl_bh, |t| t.to_backup);
    let mw_ca_v = values(&mw_ca, |t| t.to_backup);
    let cl_ca_v = values(&cl_ca, |t| t.to_backup);
    report.at_most(
        SCENARIO,
        "blackhole, multiwan: failure → first new connection via backup, median / worst",
        med_worst(&mw_bh_v),
        median(&mw_bh_v),
        600.0,
        "ms",
        "median ≤ 600 ms",
    );
    report.info(
        SCENARIO,
        "blackhole, classic ping loop (same targets, interval, timeout, 3 misses), median / worst",
        med_worst(&cl_bh_v),
    );
    let (m, c) = (median(&mw_bh_v), median(&cl_bh_v));
    report.row(
        SCENARIO,
        "blackhole: multiwan median below the classic loop's (same run, same lab)",
        format!("{} vs {} ms ({:.2}×)", fmt_num(m), fmt_num(c), m / c),
        "multiwan < classic",
        if !(m.is_finite() && c.is_finite()) {
            crate::report::Verdict::Failed("no value".into())
        } else if m < c {
            crate::report::Verdict::Met
        } else {
            crate::report::Verdict::Missed(format!("+{} ms", fmt_num(m - c)))
        },
    );
    report.at_most(
        SCENARIO,
        "carrier loss, multiwan: failure → first new connection via backup, median / worst",
        med_worst(&mw_ca_v),
        median(&mw_ca_v),
        100.0,
        "ms",
        "median ≤ 100 ms",
    );
    report.info(
        SCENARIO,
        "carrier loss, classic ping loop, median / worst",
        med_worst(&cl_ca_v),
    );

    // Where the time goes.
    let mw_all: Vec<&Trial> = mw_bh.iter().chain(&mw_ca).copied().collect();
    let applied = values(&mw_all, |t| t.applied_ms);
    report.at_most(
        SCENARIO,
        "detection → applied: daemon's `applied N changes in X ms` after `-> down`, median / worst; next to it, `nft -f` of this ruleset rewritten in place (what its batch does)",
        format!(
            "{}; nft alone {} ms",
            med_worst(&applied),
            fmt_num(nft_rewrite_ms)
        ),
        median(&applied),
        5.0,
        "ms",
        "≤ 5 ms",
    );
    for (name, set) in [("blackhole", &mw_bh), ("carrier loss", &mw_ca)] {
        let det = values(set, |t| t.detect);
        let d2a = values(set, |t| t.down_to_applied);
        let a2b = values(set, |t| t.applied_to_backup);
        report.info(
            SCENARIO,
            format!("{name}, multiwan: failure → `-> down` / `-> down` → `applied` / `applied` → via backup, medians"),
            format!(
                "{} / {} / {} ms",
                fmt_num(median(&det)),
                fmt_num(median(&d2a)),
                fmt_num(median(&a2b))
            ),
        );
    }

    let kernel = values(&mw_ca, |t| t.kernel_event);
    let kernel_cl = values(&cl_ca, |t| t.kernel_event);
    let all_kernel: Vec<f64> = kernel.iter().chain(&kernel_cl).copied().collect();
    report.info(
        SCENARIO,
        "carrier loss: failure → the kernel's link notification (RTM_NEWLINK NO-CARRIER on wan1, via `ip monitor`), median / worst",
        med_worst(&all_kernel),
    );
    report.detail(
        SCENARIO,
        format!(
            "kernel carrier notification after the failure (ms), multiwan trials: {} | classic trials: {}",
            fmt_list(&kernel),
            fmt_list(&kernel_cl)
        ),
    );

    let groups = [
        ("multiwan, blackhole", &mw_bh),
        ("classic, blackhole", &cl_bh),
        ("multiwan, carrier loss", &mw_ca),
        ("classic, carrier loss", &cl_ca),
    ];
    for (name, set) in groups {
        report.detail(
            SCENARIO,
            format!(
                "{name}: failure → via backup (ms): {}",
                fmt_list(&values(set, |t| t.to_backup))
            ),
        );
        report.detail(
            SCENARIO,
            format!(
                "{name}: client view, first failed → first successful connection (ms): {}; failed connections per trial: {}",
                fmt_list(&values(set, |t| t.client)),
                set.iter().map(|t| t.failed_attempts.to_string()).collect::<Vec<_>>().join(" ")
            ),
        );
        let what = if name.starts_with("classic") {
            "failure → loop prints `switched`"
        } else {
            "failure → `link isp1: up -> down` line"
        };
        report.detail(
            SCENARIO,
            format!(
                "{name}: {what} (ms): {}",
                fmt_list(&values(set, |t| t.detect))
            ),
        );
        if name.starts_with("multiwan") {
            report.detail(
                SCENARIO,
                format!(
                    "{name}: `applied` line → `deleted N conntrack entries` line (flush_on_down: ctnetlink count and delete by mark) (ms): {}",
                    fmt_list(&values(set, |t| t.applied_to_flush))
                ),
            );
            report.detail(
                SCENARIO,
                format!(
                    "{name}: `applied … in X ms` (X): {}; `-> down` → `applied` line arrival (ms): {}",
                    fmt_list(&values(set, |t| t.applied_ms)),
                    fmt_list(&values(set, |t| t.down_to_applied))
                ),
            );
            let mut reasons: Vec<String> = set.iter().map(|t| t.reason.clone()).collect();
            reasons.dedup();
            report.detail(
                SCENARIO,
                format!("{name}: reasons logged: {}", reasons.join("; ")),
            );
        }
        report.detail(
            SCENARIO,
            format!(
                "{name}: switch (`applied` / `switched`) → first connection via backup (ms): {}",
                fmt_list(&values(set, |t| t.applied_to_backup))
            ),
        );
    }
    report.detail(
        SCENARIO,
        "times are measured from the instant the failure is written to an `nft -i` / `ip -batch -` already running in ISP 1 (no process start-up in between); connection attempts start every 20 ms, so outages are quantized to 20 ms; trial i (of N) injects the failure i/N × 200 ms later than trial 0, spreading the failures evenly over the probe interval",
    );
}
