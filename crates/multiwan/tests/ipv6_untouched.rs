//! Issue #10, acceptance 6 (SPEC §2.12): a config in which no link has IPv6 leaves the
//! router's IPv6 forwarding as it was. The router forwards the LAN's IPv6 by its own
//! NAT66 (an operator's nft `masquerade` on wan1, and the IPv6 default route the RA put
//! in main); multiwan manages IPv4 over wan1 (`gateway6 = "none"`) and wan2 (an
//! IPv4-only ISP): the LAN's IPv6 keeps working, and no mark, rule or route of multiwan
//! touches it.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::Harness;
use netns_lab::{tcp_whoami, Lab};

const PORT: u16 = 7610;
const ATTEMPT: Duration = Duration::from_millis(500);

/// The operator's NAT66, in a table of its own.
const OPERATOR_NAT66: &str = "table ip6 operator_nat66 {\n\
     \tchain postrouting {\n\
     \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
     \t\toifname \"wan1\" masquerade\n\
     \t}\n\
     }\n";

const LINKS: &str = r#"
[links.isp1]
id = 1
interface = "wan1"
gateway6 = "none"
weight = 3

[links.isp2]
id = 2
interface = "wan2"
weight = 1
"#;

/// IPv6 rules and routes of the router, without what changes by itself (RA lifetimes).
fn ipv6_routing(h: &Harness) -> String {
    let text = h.router_sh("ip -6 rule show; ip -6 route show table all");
    text.lines()
        .map(|l| {
            l.split(" expires ")
                .next()
                .unwrap_or(l)
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn ipv4_only_config_leaves_the_routers_own_nat66_working() {
    let h = Harness::with(Lab::builder("v6keep").ipv6(&[1]));
    h.router().nft(OPERATOR_NAT66).unwrap();
    let _srv = h.lab.whoami_tcp6(PORT).unwrap();
    let server6 = IpAddr::V6(h.lab.server6(1));
    let wan1 = IpAddr::V6(h.lab.wan_addr6(1));
    let before = tcp_whoami(h.lab.lan(), server6, PORT, None, ATTEMPT)
        .expect("the LAN's IPv6 through the operator's NAT66, before multiwan");
    assert_eq!(before, wan1);
    let routing_before = ipv6_routing(&h);

    h.write_config("lan = [\"lan0\"]", LINKS);
    h.apply();
    let _daemon = h.start_daemon();

    for i in 0..20 {
        let seen = tcp_whoami(h.lab.lan(), server6, PORT, None, ATTEMPT)
            .unwrap_or_else(|e| panic!("LAN IPv6 connection {i} with multiwan running: {e:#}"));
        assert_eq!(seen, wan1, "connection {i} left as {seen}");
    }
    // No rule and no route of multiwan for IPv6.
    assert_eq!(
        ipv6_routing(&h),
        routing_before,
        "multiwan changed IPv6 routing"
    );
    // No mark: the IPv6 connections' conntrack entries carry none.
    let ct = h.router_sh(&format!(
        "conntrack -L -f ipv6 -p tcp --dport {PORT} 2>/dev/null"
    ));
    assert!(ct.lines().count() >= 20, "conntrack:\n{ct}");
    for line in ct.lines() {
        assert!(
            line.contains(" mark=0 "),
            "an IPv6 connection got a mark: {line}"
        );
    }
    // IPv4 beside it is multiwan's: shared between both ISPs, marked.
    let isps: std::collections::BTreeSet<_> = (0..40)
        .map(|_| {
            let seen = tcp_whoami(
                h.lab.lan(),
                IpAddr::V4(h.lab.server(1)),
                PORT,
                None,
                ATTEMPT,
            )
            .expect("LAN IPv4 connection");
            h.lab.isp_of(seen)
        })
        .collect();
    assert_eq!(isps, [Some(1), Some(2)].into_iter().collect());
    let ct4 = h.router_sh(&format!(
        "conntrack -L -f ipv4 -p tcp --dport {PORT} 2>/dev/null"
    ));
    assert!(
        ct4.lines().all(|l| !l.contains(" mark=0 ")),
        "an IPv4 connection without multiwan's mark:\n{ct4}"
    );
}
