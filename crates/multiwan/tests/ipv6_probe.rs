//! Issue #10, acceptance 3: a link probed at targets of both families (an IPv4 and an
//! IPv6 one, icmp) when only its IPv6 path fails. SPEC §1: a round is good when at least
//! `min_targets` targets answered, whatever their family; so with `min_targets = 1` the
//! IPv4 target alone keeps the link up, with `min_targets = 2` losing the IPv6 target
//! takes it down, and it comes back when IPv6 heals.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use netns_lab::lab::addr6;
use netns_lab::Lab;

/// fibre (wan1, dual stack) probed at 198.18.0.1 and 2001:db8:ee::1; cable (wan2,
/// IPv4 probes) beside it so the router always has a link in service.
fn config(min_targets: u32) -> String {
    let v6 = addr6::server(1);
    format!(
        r#"
[links.fibre]
id = 1
interface = "wan1"

[links.fibre.check]
targets = ["198.18.0.1", "{v6}"]
min_targets = {min_targets}
interval = "200ms"
timeout = "200ms"
down_after = 3
up_after = 3

[links.cable]
id = 2
interface = "wan2"
priority = 2

[links.cable.check]
targets = ["198.18.0.2"]
interval = "200ms"
timeout = "200ms"
"#
    )
}

fn lab(tag: &str, min_targets: u32) -> Harness {
    let h = Harness::with(Lab::builder(tag).ipv6(&[1, 2]));
    h.write_config("lan = [\"lan0\"]", &config(min_targets));
    h
}

/// The daemon's live status (`multiwan status --json`; status.json is written on
/// applies only).
fn live_status(h: &Harness) -> serde_json::Value {
    let out = h.multiwan_ok(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// Whether the live status reports fibre's probe target `target` as answering.
fn target_up(h: &Harness, target: &str) -> Option<bool> {
    let status = live_status(h);
    let fibre = status["links"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == "fibre")?
        .clone();
    fibre["targets"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == target)?["up"]
        .as_bool()
}

/// Waits until fibre is up with both its targets answering: IPv6 probes leave and
/// come back through it.
fn wait_both_targets_answer(h: &Harness) {
    let v6 = addr6::server(1).to_string();
    h.wait_until(
        "fibre up, both targets answering",
        Duration::from_secs(10),
        || {
            h.link_state("fibre") == "up"
                && target_up(h, "198.18.0.1") == Some(true)
                && target_up(h, &v6) == Some(true)
        },
    );
}

/// The states fibre goes through while `for_` passes, sampled every 100 ms.
fn fibre_states(h: &Harness, for_: Duration) -> Vec<String> {
    let end = Instant::now() + for_;
    let mut seen: Vec<String> = Vec::new();
    while Instant::now() < end {
        let s = h.link_state("fibre");
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

#[test]
fn ipv6_path_lost_with_min_targets_1_keeps_the_link_up() {
    let h = lab("v6mt1", 1);
    let _daemon = h.start_daemon();
    wait_both_targets_answer(&h);
    h.lab.blackhole_isp6(1, true).unwrap();
    // 15 rounds: five times down_after. Each round's IPv6 probe is lost, its IPv4 one
    // answered: one target of two, enough for min_targets = 1.
    let states = fibre_states(&h, Duration::from_secs(3));
    assert_eq!(
        states,
        ["up"],
        "fibre with only its IPv6 target lost (min_targets = 1)\n{}",
        h.daemon_log()
    );
    assert_eq!(
        target_up(&h, &addr6::server(1).to_string()),
        Some(false),
        "fibre's IPv6 target is lost: {}",
        live_status(&h)
    );
    assert_eq!(target_up(&h, "198.18.0.1"), Some(true));
}

#[test]
fn ipv6_path_lost_with_min_targets_2_takes_the_link_down_until_it_heals() {
    let h = lab("v6mt2", 2);
    let _daemon = h.start_daemon();
    wait_both_targets_answer(&h);
    h.lab.blackhole_isp6(1, true).unwrap();
    let lost = Instant::now();
    h.wait_until("fibre down", Duration::from_secs(5), || {
        h.link_state("fibre") == "down"
    });
    // down_after = 3 rounds of 200 ms, plus the 200 ms timeout of the last.
    let took = lost.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "fibre went down {took:?} after its IPv6 path was lost"
    );
    h.lab.blackhole_isp6(1, false).unwrap();
    wait_both_targets_answer(&h);
}
