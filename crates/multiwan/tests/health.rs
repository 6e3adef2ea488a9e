//! The per-link health state machine, driven with a simulated clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use multiwan::config::{Check, Probe};
use multiwan::health::{
    InterfaceStatus, LinkHealth, Override, Round, Transition, MAX_HOLD, REUSE_THRESHOLD,
};
use multiwan::plan::LinkState;

const INTERVAL: Duration = Duration::from_millis(200);

fn check(down_after: u32, up_after: u32, max_loss: u8, max_rtt_ms: u64, window: u32) -> Check {
    Check {
        probe: Probe::Icmp {
            targets: vec![
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            ],
        },
        interval: INTERVAL,
        timeout: Duration::from_secs(1),
        min_targets: 1,
        down_after,
        up_after,
        max_loss,
        max_rtt: Duration::from_millis(max_rtt_ms),
        window,
    }
}

/// The SPEC defaults: down_after 3, up_after 5, window 20, nothing degrades.
fn default_check() -> Check {
    check(3, 5, 0, 0, 20)
}

/// A round over targets t0, t1, …: `Some(ms)` answered, `None` lost; min_targets 1.
fn round(results: &[Option<f64>]) -> Round {
    let per_target: Vec<(String, Option<Duration>)> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                format!("t{i}"),
                r.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            )
        })
        .collect();
    let rtts: Vec<Duration> = per_target.iter().filter_map(|(_, r)| *r).collect();
    Round {
        answered: rtts.len() as u32,
        sent: results.len() as u32,
        good: !rtts.is_empty(),
        rtts,
        per_target,
        failure: None,
    }
}

fn approx(v: Option<f64>, want: f64) -> bool {
    v.is_some_and(|v| (v - want).abs() < 1e-6)
}

fn good() -> Round {
    round(&[Some(10.0), Some(12.0)])
}

fn bad() -> Round {
    round(&[None, None])
}

/// A link and a clock that advances one interval per round.
struct Sim {
    link: LinkHealth,
    now: Instant,
    log: Vec<Transition>,
}

impl Sim {
    fn new(check: Option<Check>, initial: LinkState) -> Sim {
        let now = Instant::now();
        Sim {
            link: LinkHealth::new("isp1", check, initial, now).with_interface("wan1"),
            now,
            log: Vec::new(),
        }
    }

    fn record(&mut self, t: Option<Transition>) -> Option<Transition> {
        if let Some(t) = &t {
            assert_eq!(t.link, "isp1");
            assert_ne!(t.from, t.to);
            assert_eq!(t.to, self.link.state());
            assert_eq!(t.at, self.link.since());
            self.log.push(t.clone());
        }
        t
    }

    fn round(&mut self, r: &Round) -> Option<Transition> {
        self.now += INTERVAL;
        let t = self.link.on_round(self.now, r);
        self.record(t)
    }

    fn rounds(&mut self, n: usize, r: &Round) -> Vec<Transition> {
        (0..n).filter_map(|_| self.round(r)).collect()
    }

    fn iface(&mut self, s: InterfaceStatus) -> Option<Transition> {
        self.now += Duration::from_millis(1);
        let t = self.link.on_interface(self.now, s);
        self.record(t)
    }

    fn state(&self) -> LinkState {
        self.link.state()
    }
}

// ---- down and up ----

#[test]
fn starts_in_the_given_state() {
    let s = Sim::new(Some(default_check()), LinkState::Up);
    assert_eq!(s.state(), LinkState::Up);
    assert_eq!(s.link.reason(), "initial state");
    let s = Sim::new(Some(default_check()), LinkState::Down);
    assert_eq!(s.state(), LinkState::Down);
}

#[test]
fn down_after_consecutive_bad_rounds() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    assert!(s.rounds(2, &bad()).is_empty());
    assert_eq!(s.link.bad_rounds(), 2);
    let t = s.round(&bad()).expect("down on the third bad round");
    assert_eq!((t.from, t.to), (LinkState::Up, LinkState::Down));
    assert_eq!(t.reason, "3 bad rounds (0/2 targets answered)");
    assert_eq!(s.link.reason(), t.reason);
}

#[test]
fn a_good_round_breaks_the_bad_streak() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    for _ in 0..20 {
        assert!(s.rounds(2, &bad()).is_empty());
        assert!(s.round(&good()).is_none());
    }
    assert_eq!(s.state(), LinkState::Up);
}

#[test]
fn one_target_answering_is_a_good_round() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    assert!(s.rounds(50, &round(&[None, Some(10.0)])).is_empty());
    assert_eq!(s.state(), LinkState::Up);
}

#[test]
fn up_after_consecutive_good_rounds() {
    let mut s = Sim::new(Some(default_check()), LinkState::Down);
    assert!(s.rounds(4, &good()).is_empty());
    s.round(&bad());
    assert!(
        s.rounds(4, &good()).is_empty(),
        "the bad round restarted the count"
    );
    let t = s
        .round(&good())
        .expect("up on the fifth good round in a row");
    assert_eq!((t.from, t.to), (LinkState::Down, LinkState::Up));
    assert_eq!(t.reason, "5 good rounds");
}

#[test]
fn down_then_up_again() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.rounds(3, &bad());
    assert_eq!(s.state(), LinkState::Down);
    s.rounds(5, &good());
    assert_eq!(s.state(), LinkState::Up);
    // One down is an outage, not a flap: no hold.
    assert_eq!(s.link.damped_until(), None);
    assert_eq!(s.link.next_deadline(), None);
}

// ---- degraded ----

/// Every 25 rounds, 4 of 50 probes lost, never both targets in one round: exactly 8 %.
fn eight_percent(i: usize) -> Round {
    match i % 25 {
        0 | 12 => round(&[None, Some(10.0)]),
        6 | 18 => round(&[Some(10.0), None]),
        _ => good(),
    }
}

/// Every 5 rounds, 4 of 10 probes lost: one round loses both (bad), two lose one.
fn forty_percent(i: usize) -> Round {
    match i % 5 {
        0 => bad(),
        1 => round(&[None, Some(10.0)]),
        2 => round(&[Some(10.0), None]),
        _ => good(),
    }
}

#[test]
fn eight_percent_loss_never_degrades_nor_downs() {
    let mut s = Sim::new(Some(check(3, 5, 25, 0, 20)), LinkState::Up);
    for i in 0..500 {
        assert!(s.round(&eight_percent(i)).is_none(), "round {i}");
    }
    let loss = s.link.loss_pct().unwrap();
    assert!((loss - 8.0).abs() <= 2.0, "{loss}");
}

#[test]
fn forty_percent_loss_degrades_within_the_window_but_not_down() {
    let mut s = Sim::new(Some(check(3, 5, 25, 0, 20)), LinkState::Up);
    for i in 0..20 {
        s.round(&forty_percent(i));
    }
    assert_eq!(s.log.len(), 1, "{:?}", s.log);
    let t = &s.log[0];
    assert_eq!((t.from, t.to), (LinkState::Up, LinkState::Degraded));
    // Judged as soon as the window holds 5 rounds.
    assert_eq!(t.reason, "loss 40.0 % over 5 rounds > max_loss 25 %");
    for i in 20..500 {
        assert!(s.round(&forty_percent(i)).is_none(), "round {i}");
    }
    assert_eq!(s.state(), LinkState::Degraded);
    assert_eq!(s.link.loss_pct(), Some(40.0));
}

#[test]
fn one_early_lost_probe_is_not_judged() {
    let mut s = Sim::new(Some(check(3, 5, 25, 0, 20)), LinkState::Up);
    // 1 of 2 probes lost in the first round (50 %), then clean: by the fifth round the
    // window says 10 %.
    assert!(s.round(&round(&[None, Some(10.0)])).is_none());
    assert!(s.rounds(30, &good()).is_empty());
    assert_eq!(s.state(), LinkState::Up);
}

#[test]
fn a_small_window_is_judged_when_full() {
    let mut s = Sim::new(Some(check(3, 5, 25, 0, 3)), LinkState::Up);
    s.rounds(2, &round(&[None, Some(10.0)]));
    assert_eq!(s.state(), LinkState::Up);
    let t = s.round(&round(&[None, Some(10.0)])).unwrap();
    assert_eq!(t.to, LinkState::Degraded);
    assert_eq!(t.reason, "loss 50.0 % over 3 rounds > max_loss 25 %");
}

#[test]
fn degraded_by_rtt_and_cleared_with_hysteresis() {
    let mut s = Sim::new(Some(check(3, 5, 0, 150, 20)), LinkState::Up);
    let slow = round(&[Some(180.3), Some(180.3)]);
    assert!(s.rounds(4, &slow).is_empty());
    let t = s.round(&slow).unwrap();
    assert_eq!(t.to, LinkState::Degraded);
    assert_eq!(t.reason, "rtt 180.3 ms > max_rtt 150 ms");
    s.rounds(20, &slow);
    // Under max_rtt but above 0.8 × max_rtt (120 ms): stays degraded.
    assert!(s.rounds(60, &round(&[Some(130.0), Some(130.0)])).is_empty());
    assert_eq!(s.state(), LinkState::Degraded);
    // 100 ms: the window mean drops under 120 ms on the 7th such round
    // (13 × 130 + 7 × 100 = 2390 / 20 = 119.5); the 11th is the 5th in a row under it.
    let fast = round(&[Some(100.0), Some(100.0)]);
    assert!(s.rounds(10, &fast).is_empty());
    let t = s.round(&fast).unwrap();
    assert_eq!((t.from, t.to), (LinkState::Degraded, LinkState::Up));
    assert!(
        t.reason.starts_with("rtt ") && t.reason.ends_with("<= 120 ms for 5 rounds"),
        "{}",
        t.reason
    );
    assert!(s.link.rtt_ms().unwrap() <= 120.0);
}

#[test]
fn degraded_by_loss_clears_only_under_half_the_limit() {
    let mut s = Sim::new(Some(check(3, 5, 25, 0, 20)), LinkState::Up);
    for i in 0..20 {
        s.round(&forty_percent(i));
    }
    assert_eq!(s.state(), LinkState::Degraded);
    // 20 % loss: under max_loss (25) but above max_loss / 2: stays degraded.
    let twenty = |i: usize| {
        if i % 5 < 2 {
            round(&[None, Some(10.0)])
        } else {
            good()
        }
    };
    for i in 0..100 {
        assert!(s.round(&twenty(i)).is_none());
    }
    assert_eq!(s.state(), LinkState::Degraded);
    // Clean rounds: the 6th brings the window to 5 lost / 40 probes = 12.5 %; the 10th
    // is the 5th in a row there.
    assert!(s.rounds(9, &good()).is_empty());
    let t = s.round(&good()).unwrap();
    assert_eq!(t.to, LinkState::Up);
    assert!(t.reason.ends_with("<= 12.5 % for 5 rounds"), "{}", t.reason);
}

#[test]
fn clearing_needs_consecutive_rounds() {
    let mut s = Sim::new(Some(check(3, 5, 25, 0, 10)), LinkState::Up);
    s.rounds(5, &round(&[None, Some(10.0)]));
    assert_eq!(s.state(), LinkState::Degraded);
    s.rounds(20, &good());
    assert_eq!(s.state(), LinkState::Up);
    // Back to degraded, and a bad round during the clean streak restarts it.
    s.rounds(10, &round(&[None, Some(10.0)]));
    assert_eq!(s.state(), LinkState::Degraded);
    s.rounds(10, &good());
    let before = s.log.len();
    s.round(&bad());
    assert!(s.rounds(4, &good()).is_empty());
    assert_eq!(s.state(), LinkState::Degraded);
    assert!(s.round(&good()).is_some());
    assert_eq!(s.log.len(), before + 1);
    assert_eq!(s.state(), LinkState::Up);
}

#[test]
fn degraded_goes_down_after_bad_rounds() {
    let mut s = Sim::new(Some(check(3, 5, 25, 0, 20)), LinkState::Up);
    for i in 0..10 {
        s.round(&forty_percent(i));
    }
    assert_eq!(s.state(), LinkState::Degraded);
    s.rounds(2, &bad());
    let t = s.round(&bad()).unwrap();
    assert_eq!((t.from, t.to), (LinkState::Degraded, LinkState::Down));
}

#[test]
fn the_outage_is_not_counted_after_recovery() {
    let mut s = Sim::new(Some(check(3, 5, 10, 0, 20)), LinkState::Up);
    s.rounds(10, &good());
    s.rounds(10, &bad());
    assert_eq!(s.state(), LinkState::Down);
    assert_eq!(
        s.link.loss_pct(),
        Some(50.0),
        "status shows the outage while down"
    );
    s.rounds(5, &good());
    assert_eq!(
        s.state(),
        LinkState::Up,
        "not degraded by the outage's own loss"
    );
    assert_eq!(s.link.loss_pct(), Some(0.0));
    assert_eq!(s.link.window_rounds(), 5);
    s.rounds(30, &good());
    assert_eq!(s.state(), LinkState::Up);
}

#[test]
fn a_link_that_recovers_lossy_comes_back_degraded() {
    let mut s = Sim::new(Some(check(3, 5, 25, 0, 20)), LinkState::Down);
    let t = s.rounds(5, &round(&[None, Some(10.0)])).pop().unwrap();
    assert_eq!((t.from, t.to), (LinkState::Down, LinkState::Degraded));
    assert_eq!(
        t.reason,
        "5 good rounds, but loss 50.0 % over 5 rounds > max_loss 25 %"
    );
}

#[test]
fn status_numbers_and_targets() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    assert_eq!(s.link.rtt_ms(), None);
    assert_eq!(s.link.loss_pct(), None);
    assert!(s.link.targets().is_empty());
    s.round(&round(&[Some(10.0), Some(30.0)]));
    s.round(&round(&[Some(20.0), None]));
    s.rounds(3, &round(&[Some(30.0), None]));
    assert!(approx(s.link.rtt_ms(), 25.0)); // (10 + 30 + 20 + 3 × 30) / 6
    assert!(approx(s.link.loss_pct(), 40.0));
    let t = s.link.targets();
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].target.as_str(), t[0].up), ("t0", true));
    assert!(approx(t[0].loss_pct, 0.0));
    assert!(approx(t[0].rtt_ms, 24.0));
    assert_eq!((t[1].target.as_str(), t[1].up), ("t1", false));
    assert!(approx(t[1].loss_pct, 80.0));
    assert!(approx(t[1].rtt_ms, 30.0));
}

// ---- interface ----

#[test]
fn interface_events_take_the_link_down_at_once() {
    let cases = [
        (
            InterfaceStatus {
                carrier: false,
                ..InterfaceStatus::READY
            },
            "carrier lost on wan1",
        ),
        (
            InterfaceStatus {
                admin_up: false,
                carrier: false,
                ..InterfaceStatus::READY
            },
            "wan1 set administratively down",
        ),
        (
            InterfaceStatus {
                has_address: false,
                ..InterfaceStatus::READY
            },
            "address removed from wan1",
        ),
        (
            InterfaceStatus {
                has_gateway: false,
                ..InterfaceStatus::READY
            },
            "wan1 lost its gateway",
        ),
        (
            InterfaceStatus {
                exists: false,
                admin_up: false,
                carrier: false,
                has_address: false,
                has_gateway: false,
            },
            "wan1 deleted",
        ),
    ];
    for (status, reason) in cases {
        for check in [Some(default_check()), None] {
            let mut s = Sim::new(check.clone(), LinkState::Up);
            assert!(s.iface(InterfaceStatus::READY).is_none());
            s.rounds(10, &good());
            let t = s.iface(status).expect(reason);
            assert_eq!((t.from, t.to), (LinkState::Up, LinkState::Down), "{reason}");
            assert_eq!(t.reason, reason);
        }
    }
}

#[test]
fn interface_back_with_a_check_needs_good_rounds() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.iface(InterfaceStatus::READY);
    s.rounds(3, &good());
    s.iface(InterfaceStatus {
        carrier: false,
        ..InterfaceStatus::READY
    });
    // Rounds while the carrier is gone cannot bring it back, whatever they say.
    assert!(s.rounds(10, &good()).is_empty());
    assert!(s.iface(InterfaceStatus::READY).is_none());
    assert_eq!(s.state(), LinkState::Down);
    assert_eq!(s.link.reason(), "wan1 is back, waiting for 5 good rounds");
    assert!(s.rounds(4, &good()).is_empty());
    let t = s.round(&good()).unwrap();
    assert_eq!((t.to, t.reason.as_str()), (LinkState::Up, "5 good rounds"));
}

#[test]
fn interface_back_without_a_check_is_up_at_once() {
    let mut s = Sim::new(None, LinkState::Up);
    s.iface(InterfaceStatus::READY);
    s.iface(InterfaceStatus {
        carrier: false,
        ..InterfaceStatus::READY
    });
    assert_eq!(s.state(), LinkState::Down);
    let t = s.iface(InterfaceStatus::READY).unwrap();
    assert_eq!(
        (t.to, t.reason.as_str()),
        (LinkState::Up, "wan1 has carrier and address")
    );
    // Without a check, rounds mean nothing.
    assert!(s.rounds(10, &bad()).is_empty());
    assert_eq!(s.link.loss_pct(), None);
}

#[test]
fn method_none_is_no_check() {
    let mut c = default_check();
    c.probe = Probe::None;
    let mut s = Sim::new(Some(c), LinkState::Up);
    assert!(s.rounds(10, &bad()).is_empty());
    s.iface(InterfaceStatus {
        carrier: false,
        ..InterfaceStatus::READY
    });
    assert_eq!(
        s.iface(InterfaceStatus::READY).map(|t| t.to),
        Some(LinkState::Up)
    );
}

#[test]
fn missing_at_start_is_waiting() {
    for (status, reason) in [
        (
            InterfaceStatus {
                exists: false,
                admin_up: false,
                carrier: false,
                has_address: false,
                has_gateway: false,
            },
            "interface wan1 not found",
        ),
        (
            InterfaceStatus {
                has_address: false,
                ..InterfaceStatus::READY
            },
            "no address on wan1",
        ),
        (
            InterfaceStatus {
                has_gateway: false,
                ..InterfaceStatus::READY
            },
            "no gateway on wan1",
        ),
    ] {
        let mut s = Sim::new(Some(default_check()), LinkState::Up);
        let t = s.iface(status).unwrap();
        assert_eq!((t.to, t.reason.as_str()), (LinkState::Waiting, reason));
        // Probes over a missing interface neither help nor hurt.
        assert!(s.rounds(10, &bad()).is_empty());
        assert!(s.rounds(10, &good()).is_empty());
        let t = s.iface(InterfaceStatus::READY).unwrap();
        assert_eq!((t.from, t.to), (LinkState::Waiting, LinkState::Up));
        assert_eq!(t.reason, "wan1 ready");
        // Not a flap: the start state was only a guess.
        assert_eq!(s.link.penalty(s.now), 0.0);
    }
}

#[test]
fn waiting_as_initial_state() {
    let mut s = Sim::new(Some(default_check()), LinkState::Waiting);
    assert_eq!(s.state(), LinkState::Waiting);
    assert!(s.rounds(10, &good()).is_empty());
    let t = s.iface(InterfaceStatus::READY).unwrap();
    assert_eq!(t.to, LinkState::Up);
}

#[test]
fn no_carrier_at_start_is_down_then_the_start_state() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    let t = s
        .iface(InterfaceStatus {
            carrier: false,
            ..InterfaceStatus::READY
        })
        .unwrap();
    assert_eq!(
        (t.to, t.reason.as_str()),
        (LinkState::Down, "no carrier on wan1")
    );
    let t = s.iface(InterfaceStatus::READY).unwrap();
    assert_eq!(t.to, LinkState::Up);
    assert_eq!(s.link.penalty(s.now), 0.0);
}

#[test]
fn adopted_down_stays_down_until_good_rounds() {
    let mut s = Sim::new(Some(default_check()), LinkState::Down);
    assert!(s.iface(InterfaceStatus::READY).is_none());
    assert!(s.rounds(4, &good()).is_empty());
    assert_eq!(s.round(&good()).map(|t| t.to), Some(LinkState::Up));
}

#[test]
fn carrier_lost_while_already_down_updates_the_reason() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.iface(InterfaceStatus::READY);
    s.rounds(3, &bad());
    assert!(s
        .iface(InterfaceStatus {
            carrier: false,
            ..InterfaceStatus::READY
        })
        .is_none());
    assert_eq!(s.state(), LinkState::Down);
    assert_eq!(s.link.reason(), "carrier lost on wan1");
}

// ---- damping ----

/// The acceptance scenario: 200 ms rounds, down_after 3, up_after 5, timeout 1 s; the
/// link is healthy for 2 s, then blackholed and healed every 2 s until 30 s. Rounds are
/// reported when they complete (lost ones after the timeout), so they interleave.
#[test]
fn a_flapping_link_is_held_out_after_its_second_down() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    let t0 = s.now;
    let end = t0 + Duration::from_secs(30);
    let mut events: Vec<(Duration, bool)> = (0..150u32)
        .map(|k| {
            let sent = INTERVAL * k;
            let blackholed = sent >= Duration::from_secs(2) && (sent.as_secs() / 2) % 2 == 1;
            let done = if blackholed {
                sent + Duration::from_secs(1)
            } else {
                sent + Duration::from_millis(20)
            };
            (done, !blackholed)
        })
        .collect();
    events.sort_by_key(|e| e.0);

    let mut downs = 0;
    let mut second_down_at = None;
    for (at, ok) in events {
        let now = t0 + at;
        if let Some(deadline) = s.link.next_deadline() {
            if deadline <= now {
                let t = s.link.tick(deadline);
                s.record(t);
            }
        }
        let r = if ok { good() } else { bad() };
        let t = s.link.on_round(now, &r);
        if let Some(t) = s.record(t) {
            if t.to == LinkState::Down {
                downs += 1;
                if downs == 2 {
                    second_down_at = Some(t.at);
                    assert!(t.reason.contains("flapping, held down for"), "{}", t.reason);
                }
            }
            if second_down_at.is_some() {
                assert_ne!(
                    t.to,
                    LinkState::Up,
                    "in service again after the second down"
                );
            }
        }
        if second_down_at.is_some() {
            assert_ne!(s.state(), LinkState::Up);
        }
    }
    let second = second_down_at.expect("went down twice");
    assert!(second < t0 + Duration::from_secs(10), "{:?}", second - t0);
    assert_eq!(s.state(), LinkState::Down);
    let until = s.link.damped_until().expect("status shows the hold");
    assert!(until > end, "held past the end of the test");
    assert_eq!(s.link.next_deadline(), Some(until));

    // From now on the link is stable: the hold ends, and it comes back then.
    let mut now = end;
    let back = loop {
        now += INTERVAL;
        assert!(
            now < end + MAX_HOLD + Duration::from_secs(1),
            "never released"
        );
        if let Some(deadline) = s.link.next_deadline() {
            if deadline <= now {
                if let Some(t) = s.link.tick(deadline) {
                    break s.record(Some(t)).unwrap();
                }
            }
        }
        if let Some(t) = s.link.on_round(now, &good()) {
            break s.record(Some(t)).unwrap();
        }
    };
    assert_eq!((back.from, back.to), (LinkState::Down, LinkState::Up));
    assert!(back.reason.starts_with("hold ended, "), "{}", back.reason);
    assert_eq!(s.link.damped_until(), None);
    assert!(s.link.penalty(back.at) <= REUSE_THRESHOLD + 1.0);
}

#[test]
fn a_held_link_with_good_probes_comes_back_when_the_hold_ends() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.rounds(3, &bad());
    s.rounds(5, &good());
    assert_eq!(s.state(), LinkState::Up);
    let t = s.rounds(3, &bad()).pop().unwrap();
    assert_eq!(t.to, LinkState::Down);
    let until = s
        .link
        .damped_until()
        .expect("second down 3.2 s after the first");
    assert!(t
        .reason
        .starts_with("3 bad rounds (0/2 targets answered); flapping, held down for "));
    // Good probes during the hold do not bring it back…
    assert!(s.rounds(50, &good()).is_empty());
    assert_eq!(s.state(), LinkState::Down);
    assert!(
        s.link.reason().ends_with("held down by flap damping"),
        "{}",
        s.link.reason()
    );
    // …the end of the hold does.
    assert!(s.link.tick(until - Duration::from_millis(1)).is_none());
    let t = s.link.tick(until).unwrap();
    assert_eq!(t.to, LinkState::Up);
    assert!(t.reason.starts_with("hold ended, "));
    assert_eq!(s.link.next_deadline(), None);
}

#[test]
fn a_held_link_with_bad_probes_stays_down_after_the_hold() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.rounds(3, &bad());
    s.rounds(5, &good());
    s.rounds(3, &bad());
    let until = s.link.damped_until().unwrap();
    s.now = until;
    assert!(s.link.tick(until).is_none());
    assert_eq!(s.state(), LinkState::Down);
    // Good probes after the hold: the usual up_after.
    assert!(s.rounds(4, &good()).is_empty());
    assert_eq!(s.round(&good()).map(|t| t.to), Some(LinkState::Up));
}

#[test]
fn flapping_while_held_extends_the_hold() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.rounds(3, &bad());
    s.rounds(5, &good());
    s.rounds(3, &bad());
    let first = s.link.damped_until().unwrap();
    s.rounds(5, &good()); // would have come up
    s.rounds(3, &bad()); // and failed again
    let second = s.link.damped_until().unwrap();
    assert!(
        second > first + Duration::from_secs(5),
        "{:?}",
        second - first
    );
    assert!(s.log.iter().all(|t| t.at <= s.now));
    assert_eq!(s.log.len(), 3, "no transition while held: {:?}", s.log);
}

#[test]
fn a_late_round_after_the_hold_releases_too() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.rounds(3, &bad());
    s.rounds(5, &good());
    s.rounds(3, &bad());
    let until = s.link.damped_until().unwrap();
    s.rounds(10, &good());
    s.now = until + Duration::from_secs(1);
    // The daemon missed the deadline; the next round catches up.
    let t = s.round(&good()).unwrap();
    assert_eq!(t.to, LinkState::Up);
}

#[test]
fn downs_far_apart_are_never_held() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    for _ in 0..10 {
        s.rounds(3, &bad());
        assert_eq!(s.state(), LinkState::Down);
        assert_eq!(s.link.damped_until(), None);
        s.rounds(5, &good());
        assert_eq!(s.state(), LinkState::Up);
        s.rounds(300, &good()); // a minute of stability
    }
}

#[test]
fn carrier_flaps_are_damped_without_a_check() {
    let mut s = Sim::new(None, LinkState::Up);
    s.iface(InterfaceStatus::READY);
    let lost = InterfaceStatus {
        carrier: false,
        ..InterfaceStatus::READY
    };
    s.iface(lost);
    s.iface(InterfaceStatus::READY);
    assert_eq!(s.state(), LinkState::Up);
    let t = s.iface(lost).unwrap();
    assert!(t
        .reason
        .starts_with("carrier lost on wan1; flapping, held down for "));
    let until = s.link.damped_until().unwrap();
    assert!(s.iface(InterfaceStatus::READY).is_none());
    assert_eq!(s.state(), LinkState::Down);
    let t = s.link.tick(until).unwrap();
    assert_eq!(
        (t.to, t.reason.as_str()),
        (LinkState::Up, "hold ended, wan1 has carrier and address")
    );
}

// ---- override ----

#[test]
fn override_up_down_and_auto() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.rounds(3, &bad());
    assert_eq!(s.state(), LinkState::Down);

    let t = s.link.set_override(s.now, Some(Override::Up)).unwrap();
    assert_eq!((t.from, t.to), (LinkState::Down, LinkState::Up));
    assert_eq!(t.reason, "operator override: up");
    assert_eq!(s.link.operator_override(), Some(Override::Up));
    // The evidence keeps being tracked, silently.
    assert!(s.rounds(10, &bad()).is_empty());
    assert_eq!(s.link.auto_state(), LinkState::Down);

    let t = s.link.set_override(s.now, Some(Override::Down)).unwrap();
    assert_eq!((t.from, t.to), (LinkState::Up, LinkState::Disabled));
    assert_eq!(t.reason, "operator override: down");
    assert!(s.rounds(10, &good()).is_empty());
    assert_eq!(s.link.auto_state(), LinkState::Up);
    assert_eq!(s.state(), LinkState::Disabled);

    let t = s.link.set_override(s.now, None).unwrap();
    assert_eq!((t.from, t.to), (LinkState::Disabled, LinkState::Up));
    assert_eq!(t.reason, "operator override removed; 5 good rounds");
    assert_eq!(s.link.operator_override(), None);
    assert!(s.link.set_override(s.now, None).is_none());
}

#[test]
fn override_matching_the_evidence_changes_only_the_reason() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    assert!(s.link.set_override(s.now, Some(Override::Up)).is_none());
    assert_eq!(s.link.reason(), "operator override: up");
    assert_eq!(s.link.operator_override(), Some(Override::Up));
    assert!(s.link.set_override(s.now, None).is_none());
    assert_eq!(s.link.reason(), "initial state");
}

#[test]
fn override_up_holds_through_interface_loss() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.iface(InterfaceStatus::READY);
    assert!(s.link.set_override(s.now, Some(Override::Up)).is_none());
    assert!(s
        .iface(InterfaceStatus {
            carrier: false,
            ..InterfaceStatus::READY
        })
        .is_none());
    assert_eq!(s.state(), LinkState::Up);
    let t = s.link.set_override(s.now, None).unwrap();
    assert_eq!(t.to, LinkState::Down);
    assert_eq!(t.reason, "operator override removed; carrier lost on wan1");
}

// ---- reload ----

#[test]
fn removing_the_check_follows_the_interface() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.iface(InterfaceStatus::READY);
    s.rounds(3, &bad());
    assert_eq!(s.state(), LinkState::Down);
    let t = s.link.set_check(s.now, None).unwrap();
    assert_eq!(t.to, LinkState::Up);
    assert_eq!(s.link.loss_pct(), None);
}

#[test]
fn initial_disabled_counts_as_up() {
    let s = Sim::new(Some(default_check()), LinkState::Disabled);
    assert_eq!(s.state(), LinkState::Up);
}

/// A prober that gives no round for 3 intervals (the daemon's supervision calls
/// `on_silence`): the link goes down with "no probe results", not as a flap, and good
/// rounds bring it back as usual. Without a check there is nothing to be silent.
#[test]
fn silence_takes_the_link_down_until_good_rounds_return() {
    let mut s = Sim::new(Some(default_check()), LinkState::Up);
    s.rounds(2, &good());
    s.now += INTERVAL * 3;
    let now = s.now;
    let t = s.link.on_silence(now).expect("down on silence");
    assert_eq!((t.from, t.to), (LinkState::Up, LinkState::Down));
    assert_eq!(t.reason, multiwan::health::NO_PROBE_RESULTS);
    assert_eq!(s.link.damped_until(), None, "silence is not a flap");
    // Silent again while down: nothing new.
    assert!(s.link.on_silence(now + INTERVAL * 3).is_none());
    s.now += INTERVAL * 3;
    s.rounds(4, &good());
    assert_eq!(s.state(), LinkState::Down);
    s.round(&good());
    assert_eq!(s.state(), LinkState::Up);

    let mut unchecked = Sim::new(None, LinkState::Up);
    let now = unchecked.now + INTERVAL * 10;
    assert!(unchecked.link.on_silence(now).is_none());
    assert_eq!(unchecked.state(), LinkState::Up);
}
