//! IPv6 end to end (issue #10) in the dual-stack lab: fibre (ISP 1, NAT66) and cable
//! (ISP 2, NPTv6 of the LAN's 2001:db8:100::/64 to a /64 of the /48 it routes to the
//! router) at 3:1, both announcing their /64 by radvd; LTE (ISP 3) IPv4-only at
//! priority 2. Every ISP drops forwarded sources that are not its own (BCP 38), so a
//! connection that gets through proves which ISP it left by, with which address.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::Harness;
use netns_lab::lab::addr6;
use netns_lab::{tcp_whoami, Lab, WhoAmIServer};

const PORT: u16 = 7600;
const ATTEMPT: Duration = Duration::from_millis(500);

fn dual_stack(tag: &str) -> Harness {
    Harness::with(Lab::builder(tag).ipv6(&[1, 2]))
}

/// The cable ISP's NPTv6 outside prefix: the first /64 of what it routes to the router.
fn cable_outside() -> String {
    let (a, len) = addr6::routed_subnet(2);
    format!("{a}/{len}")
}

fn links() -> String {
    let (lan, len) = addr6::LAN_PREFIX;
    format!(
        r#"
[links.fibre]
id = 1
interface = "wan1"
weight = 3
masquerade6 = true

[links.cable]
id = 2
interface = "wan2"
weight = 1
npt6 = {{ inside = "{lan}/{len}", outside = "{outside}" }}

[links.lte]
id = 3
interface = "wan3"
priority = 2
"#,
        outside = cable_outside()
    )
}

/// What the LAN client's connections to `server` are seen as, `n` times.
fn seen_from_lan(lab: &Lab, server: IpAddr, n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|_| {
            tcp_whoami(lab.lan(), server, PORT, None, ATTEMPT)
                .unwrap_or_else(|e| panic!("connection to {server} from the LAN: {e:#}"))
        })
        .collect()
}

/// The LAN client's address after cable's NPTv6: the outside prefix, its interface id.
fn cable_npt_of_client() -> IpAddr {
    let out = addr6::routed_subnet(2).0.segments();
    let inside = addr6::lan_client(1).segments();
    IpAddr::V6(Ipv6Addr::new(
        out[0], out[1], out[2], out[3], inside[4], inside[5], inside[6], inside[7],
    ))
}

/// Acceptance 1: LAN IPv6 connections split about 3:1 between fibre (NAT66: the
/// router's SLAAC address) and cable (NPTv6: the client's interface id in cable's
/// routed prefix), IPv4 beside them as before, and nothing to LTE.
#[test]
fn lan_ipv6_splits_3_to_1_with_each_isps_source() {
    let h = dual_stack("v6split");
    h.write_config("lan = [\"lan0\"]", &links());
    h.apply();
    let _srv = h.lab.whoami_tcp6(PORT).unwrap();
    // gateway6 = "auto": each IPv6 link's table routes via its RA's link-local next hop.
    for (k, table) in [(1, 101), (2, 102)] {
        let routes = h.router_sh(&format!("ip -6 route show table {table}"));
        assert!(
            routes.contains("default via fe80::") && routes.contains(&format!("dev wan{k}")),
            "table {table}:\n{routes}"
        );
    }
    let lte = h.router_sh("ip -6 route show table 103");
    assert!(
        !lte.contains("via"),
        "LTE is IPv4-only, yet table 103 has:\n{lte}"
    );

    let fibre = IpAddr::V6(h.lab.wan_addr6(1));
    let cable = cable_npt_of_client();
    let seen = seen_from_lan(&h.lab, IpAddr::V6(h.lab.server6(1)), 200);
    let on_fibre = seen.iter().filter(|a| **a == fibre).count();
    let on_cable = seen.iter().filter(|a| **a == cable).count();
    assert_eq!(
        on_fibre + on_cable,
        seen.len(),
        "every IPv6 connection leaves as fibre's {fibre} or cable's {cable}: {seen:?}"
    );
    // 3:1 of 200 is 150:50; binomial spread is about ±6.
    assert!(
        (125..=175).contains(&on_fibre),
        "fibre got {on_fibre} of 200 IPv6 connections, cable {on_cable}; want about 150"
    );

    // IPv4 beside it: masqueraded to 100.64.k.2 of fibre or cable, never LTE.
    let seen4 = seen_from_lan(&h.lab, IpAddr::V4(h.lab.server(1)), 100);
    let isps: Vec<_> = seen4.iter().map(|a| h.lab.isp_of(*a)).collect();
    let v4_fibre = isps.iter().filter(|k| **k == Some(1)).count();
    assert!(
        isps.iter().all(|k| matches!(k, Some(1) | Some(2))),
        "IPv4 left through {isps:?}"
    );
    assert!(
        (60..=90).contains(&v4_fibre),
        "fibre got {v4_fibre} of 100 IPv4 connections"
    );
    // Nothing un-NATed reached an ISP: its BCP 38 would have dropped it.
    for k in [1, 2] {
        assert_eq!(h.lab.bcp38_drops6(k).unwrap(), 0, "ISP {k} dropped IPv6");
    }
}

/// Acceptance 2: an IPv6 connection to the router's address on a link is answered
/// through that link (the other ISP's BCP 38 would drop the answer), and the router's
/// own IPv6 connections leave with a link's address.
#[test]
fn inbound_ipv6_is_answered_through_its_link_and_local_ipv6_works() {
    let h = dual_stack("v6in");
    h.write_config("lan = [\"lan0\"]", &links());
    h.apply();
    let _inet_srv = h.lab.whoami_tcp6(PORT).unwrap();
    let _router_srv = WhoAmIServer::tcp(
        h.lab.router(),
        std::net::SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT),
    )
    .unwrap();
    for k in [1, 2] {
        for _ in 0..20 {
            let seen = tcp_whoami(
                h.lab.inet(),
                IpAddr::V6(h.lab.wan_addr6(k)),
                PORT,
                None,
                ATTEMPT,
            )
            .unwrap_or_else(|e| panic!("inbound IPv6 to wan{k}'s address: {e:#}"));
            assert_eq!(seen, IpAddr::V6(addr6::inet_isp(k)));
        }
    }
    let mut local = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let seen = tcp_whoami(
            h.lab.router(),
            IpAddr::V6(h.lab.server6(1)),
            PORT,
            None,
            ATTEMPT,
        )
        .unwrap_or_else(|e| panic!("the router's own IPv6 connection: {e:#}"));
        assert!(
            [1, 2]
                .into_iter()
                .any(|k| seen == IpAddr::V6(h.lab.wan_addr6(k))),
            "the router's connection left as {seen}, not a link's address"
        );
        local.insert(seen);
    }
    for k in [1, 2] {
        assert_eq!(h.lab.bcp38_drops6(k).unwrap(), 0, "ISP {k} dropped IPv6");
    }
}
