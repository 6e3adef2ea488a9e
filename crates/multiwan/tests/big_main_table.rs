//! Issue 14, big main tables: the bypass sets (SPEC §2.5) follow the main table by
//! element, never by rewriting the nft table, and the daemon keeps its view of the main
//! table from route events (and re-reads it when the kernel drops routes without an
//! event each: an interface set down).

mod common;

use std::time::Duration;

use common::Harness;

/// Two links with explicit gateways and no checks (up while carrier and address).
const LINKS: &str = r#"
[links.isp1]
id = 1
interface = "wan1"
gateway = "100.64.1.1"

[links.isp2]
id = 2
interface = "wan2"
gateway = "100.64.2.1"
"#;

/// `ip -batch` lines for the i-th /32 of every other address from 100.96.0.0 (never
/// aggregated: one set element each), `dev lan0`.
fn routes(verb: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range
        .map(|i| {
            let a =
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 96, 0, 0)) + 2 * i);
            format!("route {verb} {a}/32 dev lan0")
        })
        .collect()
}

/// Elements of the bench range in the bypass4 set.
fn in_bypass(h: &Harness) -> usize {
    h.router_sh(&format!("nft list set inet {} bypass4", h.nft_table))
        .matches("100.9")
        .count()
}

#[test]
fn apply_changes_the_bypass_set_by_element_and_reads_it_back_exactly() {
    let h = Harness::new("bigapply");
    h.write_config("lan = [\"lan0\"]", LINKS);
    let first = h.apply();
    assert!(first.contains("written (digest"), "{first}");
    h.router().ip_batch(&routes("add", 0..3000)).unwrap();
    let second = h.apply();
    assert!(
        second.contains("set elements bypass4 +3000 -0"),
        "only the set changes: {second}"
    );
    assert!(!second.contains("written (digest"), "no rewrite: {second}");
    assert_eq!(in_bypass(&h), 3000);
    // The set read back from the kernel (text listing) is what the plan wants.
    let third = h.apply();
    assert!(!third.contains("nft table"), "nothing to do: {third}");
    h.router().ip_batch(&routes("del", 1000..2000)).unwrap();
    let fourth = h.apply();
    assert!(fourth.contains("set elements bypass4 +0 -1000"), "{fourth}");
    assert_eq!(in_bypass(&h), 2000);
    h.multiwan_ok(&["flush"]);
}

#[test]
fn daemon_follows_route_events_without_rewriting_the_table() {
    let h = Harness::new("bigdaemon");
    h.write_config("lan = [\"lan0\"]", LINKS);
    let mut daemon = h.start_daemon();
    let rewrites = |h: &Harness| h.daemon_log().matches("written (digest").count();
    let at_start = rewrites(&h);

    h.router().ip_batch(&routes("add", 0..5000)).unwrap();
    h.wait_until("5000 bypass elements", Duration::from_secs(20), || {
        in_bypass(&h) == 5000
    });
    h.router().ip_batch(&routes("del", 0..2000)).unwrap();
    h.wait_until("3000 bypass elements", Duration::from_secs(20), || {
        in_bypass(&h) == 3000
    });
    assert_eq!(rewrites(&h), at_start, "{}", h.daemon_log());
    assert!(
        h.daemon_log().contains("set elements"),
        "{}",
        h.daemon_log()
    );

    // lan0 down: the kernel drops its IPv4 routes without an event each; the daemon
    // reads the main table again and the set empties.
    h.router().ip(&["link", "set", "lan0", "down"]).unwrap();
    h.wait_until("bypass emptied", Duration::from_secs(20), || {
        in_bypass(&h) == 0
    });
    h.router().ip(&["link", "set", "lan0", "up"]).unwrap();
    assert_eq!(rewrites(&h), at_start, "{}", h.daemon_log());

    daemon.signal(libc::SIGTERM);
    let _ = daemon.child().wait();
    h.multiwan_ok(&["flush"]);
}
