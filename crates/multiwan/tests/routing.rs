//! Policy routing on a real kernel (issue 2's acceptance): a router namespace with three
//! ISPs (each enforcing BCP 38), an internet with whoami servers, and a LAN client.
//! Which uplink a connection used is read from what the server saw.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::Harness;
use netns_lab::{tcp_whoami, Lab, LongLivedConnection};

const PORT: u16 = 7000;
const T: Duration = Duration::from_secs(3);

const THREE_LINKS_3_1_BACKUP: &str = r#"
[links.isp1]
id = 1
interface = "wan1"
gateway = "auto"
weight = 3

[links.isp2]
id = 2
interface = "wan2"
gateway = "100.64.2.1"
weight = 1

[links.isp3]
id = 3
interface = "wan3"
gateway = "auto"
priority = 2
"#;

fn server(n: usize) -> IpAddr {
    IpAddr::V4(netns_lab::lab::addr::server(n))
}

fn isp_of(seen: IpAddr) -> usize {
    netns_lab::lab::addr::isp_of(seen).unwrap_or_else(|| panic!("{seen} is no ISP address"))
}

/// Acceptance 1: weights 3:1 at priority 1, a backup at priority 2.
#[test]
fn lan_connections_split_by_weight_and_skip_the_backup_tier() {
    let h = Harness::new("weights");
    h.write_config("lan = [\"lan0\"]", THREE_LINKS_3_1_BACKUP);
    h.apply();
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let mut per_isp = [0usize; 4];
    for _ in 0..400 {
        let seen = tcp_whoami(h.lab.lan(), server(1), PORT, None, T).unwrap();
        assert_eq!(
            seen,
            IpAddr::V4(h.lab.wan_addr(isp_of(seen))),
            "server saw the link's address"
        );
        per_isp[isp_of(seen)] += 1;
    }
    let share1 = per_isp[1] as f64 / 400.0 * 100.0;
    assert!(
        (68.0..=82.0).contains(&share1),
        "isp1 carried {share1:.1} % of 400 connections, want 75 ± 7 ({per_isp:?})"
    );
    assert_eq!(
        per_isp[3], 0,
        "the backup tier got connections: {per_isp:?}"
    );
    assert_eq!(per_isp[1] + per_isp[2], 400);
}

/// Acceptance 2: with BCP 38 at every ISP and strict rp_filter on the router, traffic
/// that arrives on a non-default link is answered through it.
#[test]
fn inbound_on_a_non_default_link_is_answered_through_it() {
    let h = Harness::with(Lab::builder("inbound").rp_filter_strict(true));
    h.write_config(
        "lan = [\"lan0\"]",
        r#"
[links.isp1]
id = 1
interface = "wan1"

[links.isp2]
id = 2
interface = "wan2"
priority = 2

[links.isp3]
id = 3
interface = "wan3"
priority = 3
"#,
    );
    // A port forward in a foreign table, as an operator would write it; and ping to
    // the LAN host forwarded the same way, for the TTL test.
    h.router()
        .nft(&format!(
            "table ip portfwd {{ chain pre {{ type nat hook prerouting priority dstnat; \
             iifname \"wan3\" tcp dport 8080 dnat to {lan}:{PORT}; \
             iifname \"wan3\" icmp type echo-request dnat to {lan}; }}\n}}",
            lan = h.lab.lan_client_addr()
        ))
        .unwrap();
    h.apply();

    // To the router's own address on wan2 (the default is wan1).
    let _router_srv =
        netns_lab::WhoAmIServer::tcp(h.router(), (Ipv4Addr::UNSPECIFIED, PORT).into()).unwrap();
    let wan2 = IpAddr::V4(h.lab.wan_addr(2));
    // Answered at all proves the path: the reply's source is wan2's address, which
    // only ISP 2 lets through.
    let seen = tcp_whoami(h.lab.inet(), wan2, PORT, None, T)
        .expect("a connection to wan2's address is answered");
    assert_eq!(
        seen,
        IpAddr::V4(h.lab.inet_addr(2)),
        "the router saw {seen}"
    );

    // A port forward on wan3 to the LAN host.
    let _lan_srv =
        netns_lab::WhoAmIServer::tcp(h.lab.lan(), (Ipv4Addr::UNSPECIFIED, PORT).into()).unwrap();
    let wan3 = IpAddr::V4(h.lab.wan_addr(3));
    let seen = tcp_whoami(h.lab.inet(), wan3, 8080, None, T)
        .expect("a port forward arriving on wan3 is answered");
    assert_eq!(
        seen,
        IpAddr::V4(h.lab.inet_addr(3)),
        "the LAN host saw {seen}"
    );

    // TTL exceeded for a packet that came in on wan3: the error must come from wan3's
    // address, and only ISP 3 lets that source through, so arriving proves the path.
    let out = h
        .lab
        .inet()
        .command("ping")
        .args(["-n", "-c", "1", "-W", "2", "-t", "2"])
        .arg(wan3.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("From {wan3}")) && text.contains("Time to live exceeded"),
        "no TTL-exceeded error from {wan3} reached the internet:\n{text}"
    );
}

/// Acceptance 3: the router's own connections follow the weighted multipath default;
/// a socket bound to a link's address stays on that link.
#[test]
fn router_local_connections_spread_and_bound_sockets_stay() {
    let h = Harness::new("local");
    h.write_config(
        "",
        r#"
[links.isp1]
id = 1
interface = "wan1"

[links.isp2]
id = 2
interface = "wan2"

[links.isp3]
id = 3
interface = "wan3"
priority = 2
"#,
    );
    h.apply();
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let mut per_isp = [0usize; 4];
    for _ in 0..60 {
        let seen = tcp_whoami(h.router(), server(1), PORT, None, T).expect("answered");
        per_isp[isp_of(seen)] += 1;
    }
    assert!(per_isp[1] > 0 && per_isp[2] > 0, "not spread: {per_isp:?}");
    assert_eq!(
        per_isp[3], 0,
        "unbound connections used the backup: {per_isp:?}"
    );
    let wan3 = IpAddr::V4(h.lab.wan_addr(3));
    for _ in 0..5 {
        let seen = tcp_whoami(h.router(), server(1), PORT, Some(wan3), T).expect("answered");
        assert_eq!(seen, wan3);
    }
}

/// Acceptance 4: the LAN and routes the operator put in main are not policy-routed.
#[test]
fn lan_and_main_table_routes_are_not_policy_routed() {
    let h = Harness::new("bypass");
    h.write_config(
        "lan = [\"lan0\"]",
        r#"
[links.isp1]
id = 1
interface = "wan1"

[links.isp3]
id = 3
interface = "wan3"
priority = 2
"#,
    );
    // The operator's own route: 198.18.0.3 through ISP 3.
    h.router()
        .ip(&[
            "route",
            "add",
            "198.18.0.3/32",
            "via",
            "100.64.3.1",
            "dev",
            "wan3",
        ])
        .unwrap();
    // multiwan masquerades; NAT on wan3 is still needed for the operator's route.
    h.apply();
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let seen = tcp_whoami(h.lab.lan(), server(1), PORT, None, T).unwrap();
    assert_eq!(isp_of(seen), 1, "default traffic goes through isp1");
    let seen = tcp_whoami(h.lab.lan(), server(3), PORT, None, T).unwrap();
    assert_eq!(isp_of(seen), 3, "the main table's route to 198.18.0.3 wins");

    // The router reaches the LAN host directly, from its LAN address.
    let _lan_srv =
        netns_lab::WhoAmIServer::tcp(h.lab.lan(), (Ipv4Addr::UNSPECIFIED, PORT).into()).unwrap();
    let lan_host = IpAddr::V4(h.lab.lan_client_addr());
    let seen = tcp_whoami(h.router(), lan_host, PORT, None, T).unwrap();
    assert_eq!(seen, IpAddr::V4(h.lab.lan_router_addr()));
    // And no LAN-to-LAN-bound connection got a link's mark.
    let conntrack = h.router_sh("conntrack -L -d 198.18.0.3 2>/dev/null || true");
    assert!(!conntrack.contains("mark=256"), "{conntrack}");
}

/// Acceptance 5: a link whose table loses its route: its marked connections get
/// "unreachable" instead of leaking through another ISP.
#[test]
fn marked_traffic_never_leaks_when_its_link_table_loses_its_route() {
    let h = Harness::new("noleak");
    h.write_config(
        "lan = [\"lan0\"]",
        r#"
[links.isp1]
id = 1
interface = "wan1"
priority = 2

[links.isp2]
id = 2
interface = "wan2"
"#,
    );
    h.apply();
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let mut conn = LongLivedConnection::open(h.lab.lan(), server(1), PORT, None, T).unwrap();
    assert_eq!(isp_of(conn.seen_as()), 2);
    conn.exchange(1000).unwrap();

    // The gateway goes away: the kernel would drop the route; do it by hand.
    h.router()
        .ip(&[
            "route",
            "del",
            "default",
            "via",
            "100.64.2.1",
            "table",
            "102",
        ])
        .unwrap();
    let route =
        h.router_sh("ip route get 198.18.0.1 from 192.0.2.2 iif lan0 mark 0x200 2>&1 || true");
    assert!(
        route.contains("unreachable") || route.contains("No route to host"),
        "lookup for isp2's mark: {route}"
    );

    // Count what reaches ISP 1 from the router while the connection tries to go on.
    h.lab
        .isp(1)
        .nft("table ip leakcheck { chain forwarded { type filter hook forward priority 0; iifname \"cust\" tcp dport 7000 counter; }\n}")
        .unwrap();
    conn.set_timeout(Duration::from_millis(1500));
    assert!(
        conn.exchange(1000).is_err(),
        "the connection went on without its link"
    );
    let counted = h
        .lab
        .isp(1)
        .exec("nft", &["list", "table", "ip", "leakcheck"])
        .unwrap();
    let text = String::from_utf8_lossy(&counted.stdout);
    assert!(
        text.contains("packets 0 "),
        "packets leaked through isp1:\n{text}"
    );
}

fn owned_state(h: &Harness) -> String {
    h.router_sh(&format!(
        "ip -N -4 rule; ip -N -6 rule; for t in $(seq 100 252) $(seq 256 611); do \
         ip -N route show table $t 2>/dev/null || true; ip -N -6 route show table $t 2>/dev/null || true; done; \
         nft list table inet {} 2>/dev/null | grep -v packets || true",
        h.nft_table
    ))
}

/// Acceptance 6: idempotence, re-configuration, coexistence, flush.
#[test]
fn apply_is_idempotent_reconfigures_minimally_coexists_and_flushes() {
    let h = Harness::new("lifecycle");
    // Foreign state that must survive everything.
    h.router()
        .sh("ip rule add priority 500 fwmark 0x1/0x1 lookup 700; \
             ip route add 198.18.0.9/32 via 100.64.1.1 dev wan1 table 700; \
             ip route add 203.0.113.0/24 via 100.64.2.1 dev wan2")
        .unwrap();
    h.router()
        .nft("table inet foreign { chain c { type filter hook forward priority 10; counter; }\n}")
        .unwrap();
    let foreign = |h: &Harness| {
        (
            h.router_sh("ip rule show priority 500"),
            h.router_sh("ip route show table 700"),
            h.router_sh("ip route show table main"),
            h.router_sh("nft list table inet foreign | grep -v packets"),
        )
    };
    let before = foreign(&h);

    h.write_config("table_names = true", THREE_LINKS_3_1_BACKUP);
    let first = h.apply();
    assert!(first.contains("changes"), "{first}");
    let installed = owned_state(&h);
    assert!(
        std::fs::read_to_string(format!("/etc/iproute2/rt_tables.d/{}.conf", h.nft_table))
            .unwrap()
            .contains("101 isp1")
    );

    // Same config again: nothing at all changes.
    let second = h.apply();
    assert!(
        second.contains("0 changes"),
        "second apply changed something:\n{second}"
    );
    assert_eq!(owned_state(&h), installed);

    // Edited: isp3 removed, isp2's weight changed. isp1's objects stay untouched.
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    // Enough connections that isp1 (3 of 4) certainly counts some.
    for _ in 0..20 {
        tcp_whoami(h.lab.lan(), server(1), PORT, None, T).unwrap();
    }
    let counters_before = h.router_sh(&format!("nft list counters table inet {}", h.nft_table));
    h.write_config(
        "table_names = true",
        &THREE_LINKS_3_1_BACKUP
            .replace("weight = 1", "weight = 2")
            .replace(
                "[links.isp3]\nid = 3\ninterface = \"wan3\"\ngateway = \"auto\"\npriority = 2\n",
                "",
            ),
    );
    let third = h.apply();
    assert!(!third.contains("0 changes"), "{third}");
    let edited = owned_state(&h);
    assert!(
        !edited.contains("lookup 103"),
        "isp3's rules stayed:\n{edited}"
    );
    assert!(
        !edited.contains("wan3"),
        "isp3's routes or nft stayed:\n{edited}"
    );
    assert!(edited.contains("weight 2"), "{edited}");
    assert!(edited.contains("from 100.64.1.2 lookup 101"), "{edited}");
    // Counters of links that stay keep their values.
    let counters_after = h.router_sh(&format!("nft list counters table inet {}", h.nft_table));
    let isp1_count = |text: &str| {
        text.split("counter new_isp1")
            .nth(1)
            .and_then(|s| s.split("packets ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string)
    };
    assert_eq!(isp1_count(&counters_before), isp1_count(&counters_after));
    assert_ne!(isp1_count(&counters_after).as_deref(), Some("0"));
    assert_eq!(foreign(&h), before, "foreign state changed by apply");

    // Flush: nothing owned is left, everything foreign is.
    h.multiwan_ok(&["flush"]);
    let left = owned_state(&h);
    for owned in [
        "lookup 10",
        "lookup isp",
        "suppress_prefixlength",
        "fwmark 0x100",
        "table inet",
    ] {
        assert!(!left.contains(owned), "flush left {owned:?}:\n{left}");
    }
    assert!(
        !left.contains("via"),
        "flush left routes in owned tables:\n{left}"
    );
    assert!(
        !std::path::Path::new(&format!("/etc/iproute2/rt_tables.d/{}.conf", h.nft_table)).exists()
    );
    assert_eq!(foreign(&h), before, "foreign state changed by flush");
}

/// A valid config naming an interface that does not exist: the others are installed,
/// that one is reported as waiting.
#[test]
fn a_missing_interface_is_waiting_and_the_rest_is_installed() {
    let h = Harness::new("waiting");
    h.write_config(
        "",
        r#"
[links.isp1]
id = 1
interface = "wan1"

[links.ghost]
id = 9
interface = "wan9"
gateway = "100.64.9.1"
"#,
    );
    let log = h.apply();
    assert!(
        log.contains("ghost is waiting: interface wan9 not found"),
        "{log}"
    );
    let rules = h.router_sh("ip -N rule");
    assert!(rules.contains("from 100.64.1.2 lookup 101"), "{rules}");
    let plan = String::from_utf8_lossy(&h.multiwan_ok(&["plan"]).stdout).into_owned();
    assert!(
        plan.contains("# link ghost (id 9, mark 0x900, table 109): waiting"),
        "{plan}"
    );
}
