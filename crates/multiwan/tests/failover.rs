//! The daemon on a real kernel (issue 3's acceptance): failures injected in the ISP
//! namespaces, continuous traffic from the LAN client, what it sees.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{wait_until, Harness};
use netns_lab::{outage_after, tcp_whoami, LongLivedConnection, Traffic};

const PORT: u16 = 7100;
const EVERY: Duration = Duration::from_millis(20);
const ATTEMPT: Duration = Duration::from_millis(300);

/// Primary (isp1) and backup (isp2), probed every 200 ms.
fn primary_backup(extra_primary: &str) -> String {
    format!(
        r#"
[links.isp1]
id = 1
interface = "wan1"
{extra_primary}

[links.isp1.check]
targets = ["198.18.0.1", "198.18.0.2"]
interval = "200ms"
timeout = "200ms"
down_after = 3
up_after = 5

[links.isp2]
id = 2
interface = "wan2"
priority = 2

[links.isp2.check]
targets = ["198.18.0.1", "198.18.0.2"]
interval = "200ms"
timeout = "200ms"
"#
    )
}

fn server() -> IpAddr {
    IpAddr::V4(netns_lab::lab::addr::server(1))
}

/// The ISP new connections use now (one probe connection).
fn current_isp(h: &Harness) -> Option<usize> {
    tcp_whoami(h.lab.lan(), server(), PORT, None, ATTEMPT)
        .ok()
        .and_then(netns_lab::lab::addr::isp_of)
}

/// Acceptance 1: a silent blackhole of the primary (carrier stays up).
#[test]
fn serial_blackhole_of_the_primary_moves_new_connections_to_the_backup() {
    let h = Harness::new("blackhole");
    h.write_config("lan = [\"lan0\"]", &primary_backup(""));
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let _daemon = h.start_daemon();
    assert_eq!(current_isp(&h), Some(1));

    let traffic = Traffic::start(h.lab.lan(), server(), PORT, EVERY, ATTEMPT);
    std::thread::sleep(Duration::from_millis(300));
    let cut = Instant::now();
    h.lab.blackhole_isp(1, true).unwrap();
    wait_until(
        "new connections through the backup",
        Duration::from_secs(5),
        || {
            traffic
                .snapshot()
                .iter()
                .any(|a| a.at > cut && a.isp == Some(2))
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let attempts = traffic.finish();
    let outage = outage_after(&attempts, cut).unwrap_or_default();
    eprintln!(
        "blackhole outage seen by the client: {outage:?}\n{}",
        h.daemon_log()
    );
    assert!(
        outage < Duration::from_secs(3),
        "outage {outage:?}\n{}",
        h.daemon_log()
    );
    assert_eq!(h.link_state("isp1"), "down", "{}", h.daemon_log());
    // Every attempt after the switch went through the backup.
    let last = attempts.last().unwrap();
    assert_eq!(last.isp, Some(2));
}

/// Acceptance 2: carrier loss, both kinds, with no probe round needed.
#[test]
fn serial_carrier_loss_moves_new_connections_at_once() {
    for router_side in [false, true] {
        let h = Harness::new(if router_side { "admindown" } else { "carrier" });
        // Probes so slow that only the carrier event can explain a fast switch.
        h.write_config(
            "lan = [\"lan0\"]",
            &primary_backup("").replace(
                "interval = \"200ms\"\ntimeout = \"200ms\"\ndown_after = 3",
                "interval = \"10s\"\ntimeout = \"5s\"\ndown_after = 3",
            ),
        );
        let _srv = h.lab.whoami_tcp(PORT).unwrap();
        let _daemon = h.start_daemon();
        assert_eq!(current_isp(&h), Some(1));
        let cut = Instant::now();
        if router_side {
            h.lab.router_link_admin(1, false).unwrap();
        } else {
            h.lab.carrier(1, false).unwrap();
        }
        wait_until("isp1 down", Duration::from_secs(3), || {
            h.link_state("isp1") == "down"
        });
        let took = cut.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "took {took:?}: a probe round must not be needed"
        );
        assert_eq!(current_isp(&h), Some(2), "{}", h.daemon_log());
        let log = h.daemon_log();
        assert!(
            log.contains("carrier lost on wan1") || log.contains("administratively down"),
            "{log}"
        );
    }
}

/// Acceptance 3 and 4: recovery after no fewer than (up_after - 1) intervals; a
/// long-lived connection through the backup survives it; one through a link that stays
/// in service survives another's failure and recovery with every byte delivered.
#[test]
fn serial_recovery_keeps_connections_where_they_are() {
    let h = Harness::new("recovery");
    h.write_config("lan = [\"lan0\"]", &primary_backup(""));
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let _daemon = h.start_daemon();
    h.lab.blackhole_isp(1, true).unwrap();
    wait_until("isp1 down", Duration::from_secs(5), || {
        h.link_state("isp1") == "down"
    });
    let mut during = LongLivedConnection::open(h.lab.lan(), server(), PORT, None, ATTEMPT).unwrap();
    assert_eq!(netns_lab::lab::addr::isp_of(during.seen_as()), Some(2));
    during.exchange(10_000).unwrap();

    let healed = Instant::now();
    h.lab.blackhole_isp(1, false).unwrap();
    wait_until("isp1 up", Duration::from_secs(5), || {
        h.link_state("isp1") == "up"
    });
    let took = healed.elapsed();
    assert!(
        took >= Duration::from_millis(4 * 200 - 50),
        "back after {took:?}, before up_after - 1 intervals"
    );
    wait_until(
        "new connections through isp1",
        Duration::from_secs(2),
        || current_isp(&h) == Some(1),
    );
    during
        .exchange(10_000)
        .expect("the backup's connection survives the recovery");

    // A connection on isp2 while isp1 fails and recovers again, every byte delivered
    // (exchange checks the echo byte for byte).
    for _ in 0..2 {
        h.lab.blackhole_isp(1, true).unwrap();
        during.exchange(5_000).unwrap();
        wait_until("isp1 down", Duration::from_secs(5), || {
            h.link_state("isp1") == "down"
        });
        during.exchange(5_000).unwrap();
        h.lab.blackhole_isp(1, false).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        during.exchange(5_000).unwrap();
    }
}
