//! A probe's failure reason (an https certificate, a name that does not resolve through
//! the link) ends up in the reason of the link's `down` transition, which `status`, the
//! event stream and the log show.

use std::time::{Duration, Instant};

use multiwan::config::{Check, Probe};
use multiwan::health::{LinkHealth, Round};
use multiwan::plan::LinkState;

#[test]
fn down_reason_says_why_the_probes_failed() {
    let url = "https://probe.example/health";
    let check = Check {
        probe: Probe::Https {
            urls: vec![url.to_string()],
            ca_file: None,
        },
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        min_targets: 1,
        down_after: 3,
        up_after: 5,
        max_loss: 0,
        max_rtt: Duration::ZERO,
        window: 20,
    };
    let why = format!("{url}: certificate not valid for name probe.example (it is for a.example)");
    let bad = Round {
        answered: 0,
        sent: 1,
        good: false,
        per_target: vec![(url.to_string(), None)],
        failure: Some(why.clone()),
        ..Round::default()
    };
    let start = Instant::now();
    let mut link = LinkHealth::new("isp1", Some(check), LinkState::Up, start);
    let transitions: Vec<_> = (1..=3)
        .filter_map(|i| link.on_round(start + Duration::from_millis(200 * i), &bad))
        .collect();
    let [down] = &transitions[..] else {
        panic!("expected one transition, got {transitions:?}");
    };
    assert_eq!(down.to, LinkState::Down);
    assert_eq!(
        down.reason,
        format!("3 bad rounds (0/1 targets answered): {why}")
    );
}
