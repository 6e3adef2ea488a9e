//! Living with the router's other tenants (issue 9, acceptance 1 and 7): strongSwan,
//! wg-quick and Tailscale style rules and tables, a foreign rule inside multiwan's
//! priority range, a foreign route inside a link table, and the operator's nft firewall
//! all stay byte-identical through apply, a run with a failover and a failback, a
//! reload and flush; and a router with IPv6 disabled routes IPv4 as usual.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{wait_until, Harness};
use netns_lab::tcp_whoami;

const PORT: u16 = 7300;
const ATTEMPT: Duration = Duration::from_millis(300);

/// Primary (isp1) and backup (isp2), probed every 200 ms.
const LINKS: &str = r#"
[links.isp1]
id = 1
interface = "wan1"

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
"#;

fn server() -> IpAddr {
    IpAddr::V4(netns_lab::lab::addr::server(1))
}

/// The ISP a new LAN connection leaves through now.
fn current_isp(h: &Harness) -> Option<usize> {
    tcp_whoami(h.lab.lan(), server(), PORT, None, ATTEMPT)
        .ok()
        .and_then(netns_lab::lab::addr::isp_of)
}

/// The other tenants, as their tools would leave them (multiwan's defaults: tables
/// 100-611, rule priorities 1000-1999, link tables 101 and 102).
fn install_cotenants(h: &Harness) {
    let gw1 = h.lab.gateway(1);
    h.router()
        .sh(&format!(
            "set -e
             # strongSwan: routes in table 220, one rule.
             ip route add 203.0.113.0/25 via {gw1} dev wan1 table 220
             ip rule add pref 220 lookup 220
             # wg-quick: table 51820 and its two rules.
             ip route add unreachable default table 51820
             ip rule add pref 31999 lookup main suppress_prefixlength 0
             ip rule add pref 32000 not fwmark 0xca6c lookup 51820
             # Tailscale: rules 5210-5270 and table 52.
             ip rule add pref 5210 fwmark 0x80000/0xff0000 lookup main
             ip rule add pref 5230 fwmark 0x80000/0xff0000 lookup default
             ip rule add pref 5250 fwmark 0x80000/0xff0000 unreachable
             ip rule add pref 5270 lookup 52
             ip route add blackhole 100.100.100.100 table 52
             # An operator's rule inside multiwan's priority range, and a route of
             # theirs inside a link table.
             ip rule add pref 1500 to 203.0.113.200 lookup 220
             ip route add blackhole 203.0.113.128/25 table 101
             ip -6 route add blackhole 2001:db8:ffff::/48 table 101
             # The operator's firewall.
             nft -f - <<'EOF'
table inet filter {{
	chain forward {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname \"lan0\" accept
	}}
}}
EOF"
        ))
        .expect("installing the co-tenants");
}

/// Everything that is not multiwan's: rules and routes without its tag, and the
/// firewall table. Numeric (`-N`): the table names multiwan writes would rename the
/// foreign route in table 101 without changing it. IPv6's local table is left out: the
/// kernel adds link-local addresses there whenever their DAD completes.
fn snapshot(h: &Harness) -> String {
    h.router_sh(
        "ip -N -4 rule show | grep -v 'proto 77'
         echo ---
         ip -N -6 rule show | grep -v 'proto 77'
         echo ---
         ip -N -4 route show table all | grep -v 'proto 77'
         echo ---
         ip -N -6 route show table all | grep -v -e 'proto 77' -e ' table 255 '
         echo ---
         nft list table inet filter",
    )
}

fn assert_same(h: &Harness, before: &str, when: &str) {
    let now = snapshot(h);
    assert!(
        now == before,
        "co-tenant state changed {when}:\n--- before\n{before}\n--- now\n{now}\n--- daemon log\n{}",
        h.daemon_log()
    );
}

#[test]
fn serial_cotenants_survive_apply_run_reload_and_flush() {
    let h = Harness::new("cotenant");
    h.write_config("lan = [\"lan0\"]", LINKS);
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    install_cotenants(&h);
    let before = snapshot(&h);
    assert!(before.contains("lookup 51820") && before.contains("1500:"));
    assert!(before.contains("203.0.113.128/25 table 101"), "{before}");

    h.apply();
    assert_same(&h, &before, "by apply");
    assert_eq!(
        current_isp(&h),
        Some(1),
        "LAN through the firewall after apply"
    );
    let tagged = h.router_sh("ip route show table 101");
    assert!(tagged.contains("proto multiwan"), "{tagged}");

    let daemon = h.start_daemon();
    assert_same(&h, &before, "by the daemon's start");
    assert_eq!(current_isp(&h), Some(1), "LAN through the firewall");

    // Failover: a silent blackhole of the primary.
    h.lab.blackhole_isp(1, true).unwrap();
    h.wait_until("isp1 down", Duration::from_secs(5), || {
        h.link_state("isp1") == "down"
    });
    wait_until("LAN through the backup", Duration::from_secs(3), || {
        current_isp(&h) == Some(2)
    });
    assert_same(&h, &before, "by the failover");

    // Failback.
    h.lab.blackhole_isp(1, false).unwrap();
    h.wait_until("isp1 up", Duration::from_secs(8), || {
        h.link_state("isp1") == "up"
    });
    wait_until(
        "LAN through the primary again",
        Duration::from_secs(3),
        || current_isp(&h) == Some(1),
    );
    assert_same(&h, &before, "by the failback");

    h.multiwan_ok(&["reload"]);
    assert_same(&h, &before, "by a reload");
    assert_eq!(current_isp(&h), Some(1), "LAN after the reload");

    drop(daemon);
    h.multiwan_ok(&["flush"]);
    assert_same(&h, &before, "by flush");
    let left = h.router_sh("ip rule show; ip route show table all; ip -6 route show table all");
    assert!(
        !left.contains("proto multiwan") && !left.contains("proto 77"),
        "flush left multiwan's objects:\n{left}"
    );
}

#[test]
fn serial_ipv6_disabled_router_routes_ipv4_with_apply_and_run() {
    let h = Harness::new("noipv6");
    h.write_config("lan = [\"lan0\"]", LINKS);
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    h.router()
        .sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
        .expect("disabling IPv6 in the router");

    let log = h.apply();
    assert!(log.contains("IPv6 is disabled"), "{log}");
    assert_eq!(current_isp(&h), Some(1), "LAN via isp1 after apply");
    let v6 = h.router_sh("ip -6 rule show; ip -6 route show table all");
    assert!(
        !v6.contains("proto multiwan"),
        "IPv6 objects installed:\n{v6}"
    );
    h.multiwan_ok(&["flush"]);

    let _daemon = h.start_daemon();
    assert!(
        h.daemon_log().contains("IPv6 is disabled"),
        "{}",
        h.daemon_log()
    );
    assert_eq!(current_isp(&h), Some(1), "LAN via isp1 under the daemon");
    h.lab.blackhole_isp(1, true).unwrap();
    wait_until("LAN through the backup", Duration::from_secs(5), || {
        current_isp(&h) == Some(2)
    });
}
