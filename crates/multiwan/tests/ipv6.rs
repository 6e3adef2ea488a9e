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

/// fibre and cable probed over IPv6 from their global addresses (icmpv6), LTE over
/// IPv4, every 200 ms.
fn checked_links() -> String {
    let t6 = |i| addr6::server(i).to_string();
    let check = |targets: String| {
        format!(
            "targets = [{targets}]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
             down_after = 3\nup_after = 5\n"
        )
    };
    let v6 = check(format!("\"{}\", \"{}\"", t6(1), t6(2)));
    format!(
        "{}\n[links.fibre.check]\n{v6}\n[links.cable.check]\n{v6}\n[links.lte.check]\n{}",
        links(),
        check("\"198.18.0.1\", \"198.18.0.2\"".into())
    )
}

/// Acceptance 4: a silent failure of fibre moves IPv6 to cable; with cable gone too,
/// IPv4 goes to LTE while IPv6 is refused at once and never sent to LTE.
#[test]
fn serial_ipv6_fails_over_and_is_refused_fast_without_an_ipv6_link() {
    let h = dual_stack("v6fail");
    h.write_config(
        "lan = [\"lan0\"]\nfallback = \"unreachable\"",
        &checked_links(),
    );
    let _srv = h.lab.whoami_tcp6(PORT).unwrap();
    let _daemon = h.start_daemon();
    let server6 = IpAddr::V6(h.lab.server6(3));
    let cable = cable_npt_of_client();

    h.lab.blackhole_isp(1, true).unwrap();
    h.wait_until("fibre down", Duration::from_secs(5), || {
        h.link_state("fibre") == "down"
    });
    let seen = seen_from_lan(&h.lab, server6, 20);
    assert!(
        seen.iter().all(|a| *a == cable),
        "with fibre down, IPv6 left as {seen:?}, not cable's {cable}"
    );

    h.lab.blackhole_isp(2, true).unwrap();
    h.wait_until("cable down", Duration::from_secs(5), || {
        h.link_state("cable") == "down"
    });
    let seen4 = seen_from_lan(&h.lab, IpAddr::V4(h.lab.server(3)), 10);
    assert!(
        seen4.iter().all(|a| h.lab.isp_of(*a) == Some(3)),
        "IPv4 with fibre and cable down left as {seen4:?}, not LTE"
    );
    // Several attempts in a row, as a browser makes them: each refused at once by a TCP
    // reset (ECONNREFUSED). ICMPv6 admin-prohibited reached the client too soon (while
    // connect() held its socket, so only the retransmitted SYN's counted: 1 s) and is
    // rate-limited per client besides.
    for i in 0..10 {
        let start = std::time::Instant::now();
        let r = h.lab.lan().run(move || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::new(server6, PORT),
                Duration::from_secs(3),
            )
        });
        let took = start.elapsed();
        let err = r
            .unwrap()
            .expect_err("IPv6 with no IPv6 link in service got through");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ECONNREFUSED),
            "attempt {i}: {err} after {took:?}"
        );
        assert!(
            took < Duration::from_millis(300),
            "attempt {i}: IPv6 connect refused after {took:?}; want at once"
        );
    }
}
