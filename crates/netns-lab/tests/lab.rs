//! The lab topology works on its own, without multiwan. Needs root; never skipped.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use netns_lab::{
    addr, tcp_whoami, tcp_whoami_with, udp_whoami_with, ClientOptions, Lab, LongLivedConnection,
    Netns,
};

const PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
/// For connections that must work.
const OK: Duration = Duration::from_secs(3);
/// For connections that must fail (the lab's RTT is well under a millisecond).
const FAIL: Duration = Duration::from_millis(400);

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// A TCP whoami from the router through wan{k} (SO_BINDTODEVICE), to target `server`.
fn via_wan(lab: &Lab, k: usize, server: usize, timeout: Duration) -> anyhow::Result<IpAddr> {
    tcp_whoami_with(
        lab.router(),
        SocketAddr::new(v4(lab.server(server)), PORT),
        &ClientOptions::timeout(timeout).with_device(lab.wan_if(k)),
    )
}

fn default_routes(lab: &Lab) -> String {
    let out = lab.router().ip(&["route", "show", "default"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const MASQUERADE: &str = "table ip labtest {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"wan*\" masquerade
    }
}
";

#[test]
fn every_uplink_reaches_every_target() {
    let lab = Lab::new("every-uplink").unwrap();
    assert_eq!(lab.isp_count(), 3);
    assert_eq!(lab.servers().len(), 4);
    let _tcp = lab.whoami_tcp(PORT).unwrap();
    let _udp = lab.whoami_udp(UDP_PORT).unwrap();
    for k in 1..=lab.isp_count() {
        for s in 1..=lab.server_count() {
            let seen = via_wan(&lab, k, s, OK).unwrap();
            assert_eq!(seen, v4(lab.wan_addr(k)), "TCP via wan{k} to server {s}");
            assert_eq!(lab.isp_of(seen), Some(k));
        }
        let seen = udp_whoami_with(
            lab.router(),
            SocketAddr::new(v4(lab.server(k)), UDP_PORT),
            &ClientOptions::timeout(OK).with_device(lab.wan_if(k)),
        )
        .unwrap();
        assert_eq!(seen, v4(addr::wan(k)), "UDP via wan{k}");
    }
    // Unbound, the router's main table picks the lowest metric: wan1.
    let seen = tcp_whoami(lab.router(), v4(lab.server(2)), PORT, None, OK).unwrap();
    assert_eq!(seen, v4(Ipv4Addr::new(100, 64, 1, 2)));
    let routes = default_routes(&lab);
    for k in 1..=3 {
        assert!(
            routes.contains(&format!(
                "default via 100.64.{k}.1 dev wan{k} metric {}",
                k * 10
            )),
            "{routes}"
        );
    }
}

#[test]
fn lan_client_gets_out_only_with_masquerade() {
    let lab = Lab::builder("lan-masquerade")
        .isps(2)
        .gateway_routes(false)
        .extra_lan_clients(3)
        .build()
        .unwrap();
    assert!(default_routes(&lab).trim().is_empty());
    lab.router()
        .ip(&[
            "route",
            "add",
            "default",
            "via",
            "100.64.1.1",
            "dev",
            "wan1",
        ])
        .unwrap();
    let _srv = lab.whoami_tcp(PORT).unwrap();
    let target = v4(lab.server(1));

    // No NAT: the LAN source leaves wan1 as is and ISP 1's BCP 38 drops it.
    let before = lab.bcp38_drops(1).unwrap();
    assert!(tcp_whoami(lab.lan(), target, PORT, None, FAIL).is_err());
    assert!(lab.bcp38_drops(1).unwrap() > before);
    assert_eq!(lab.bcp38_drops(2).unwrap(), 0);

    lab.router().nft(MASQUERADE).unwrap();
    let seen = tcp_whoami(lab.lan(), target, PORT, None, OK).unwrap();
    assert_eq!(seen, v4(Ipv4Addr::new(100, 64, 1, 2)));
    assert_eq!(lab.isp_of(seen), Some(1));

    assert_eq!(
        lab.lan_client_addrs(),
        ["192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"]
            .map(|a| a.parse::<Ipv4Addr>().unwrap())
    );
    for client in lab.lan_client_addrs() {
        let seen = tcp_whoami(lab.lan(), target, PORT, Some(v4(client)), OK).unwrap();
        assert_eq!(seen, v4(lab.wan_addr(1)), "from {client}");
    }
}

#[test]
fn bcp38_drops_another_isps_source() {
    let lab = Lab::new("bcp38").unwrap();
    let _srv = lab.whoami_tcp(PORT).unwrap();
    let target = v4(lab.server(1));
    // Main table: default via wan1; the source belongs to ISP 2.
    let spoofed = v4(lab.wan_addr(2));
    assert!(tcp_whoami(lab.router(), target, PORT, Some(spoofed), FAIL).is_err());
    assert!(lab.bcp38_drops(1).unwrap() >= 1);
    assert_eq!(lab.bcp38_drops(2).unwrap(), 0);
    let own = v4(lab.wan_addr(1));
    assert_eq!(
        tcp_whoami(lab.router(), target, PORT, Some(own), OK).unwrap(),
        own
    );
}

#[test]
fn without_bcp38_a_foreign_source_gets_through() {
    let lab = Lab::builder("no-bcp38")
        .isps(2)
        .bcp38(false)
        .build()
        .unwrap();
    let _srv = lab.whoami_tcp(PORT).unwrap();
    // Out through wan1 (main table), back through ISP 2 and wan2 (rp_filter off).
    let spoofed = v4(lab.wan_addr(2));
    let seen = tcp_whoami(lab.router(), v4(lab.server(1)), PORT, Some(spoofed), OK).unwrap();
    assert_eq!(seen, spoofed);
    assert_eq!(lab.bcp38_drops(1).unwrap(), 0);
}

#[test]
fn carrier_loss_shows_no_carrier() {
    let lab = Lab::builder("carrier").isps(2).build().unwrap();
    let _srv = lab.whoami_tcp(PORT).unwrap();
    assert!(lab.wan_carrier(1).unwrap());
    lab.carrier(1, false).unwrap();
    let line = lab.wan_link(1).unwrap();
    assert!(line.contains("NO-CARRIER"), "{line}");
    assert!(!lab.wan_carrier(1).unwrap());
    assert!(lab.wan_carrier(2).unwrap());
    assert!(via_wan(&lab, 1, 1, FAIL).is_err());
    assert!(default_routes(&lab).contains("dev wan1 metric 10 linkdown"));

    lab.carrier(1, true).unwrap();
    lab.wait_until(OK, "carrier on wan1", || lab.wan_carrier(1))
        .unwrap();
    assert_eq!(via_wan(&lab, 1, 1, OK).unwrap(), v4(lab.wan_addr(1)));
}

#[test]
fn recreate_wan_changes_ifindex() {
    let lab = Lab::builder("recreate").isps(2).build().unwrap();
    let _srv = lab.whoami_tcp(PORT).unwrap();
    let before = lab.wan_ifindex(1).unwrap();
    let after = lab.recreate_wan(1).unwrap();
    assert_ne!(before, after);
    assert_eq!(lab.wan_ifindex(1).unwrap(), after);
    assert!(default_routes(&lab).contains("default via 100.64.1.1 dev wan1 metric 10"));
    assert_eq!(via_wan(&lab, 1, 1, OK).unwrap(), v4(lab.wan_addr(1)));

    lab.delete_wan(2).unwrap();
    assert!(lab.wan_link(2).is_err());
    assert!(!default_routes(&lab).contains("wan2"));
    let restored = lab.restore_wan(2).unwrap();
    assert_eq!(lab.wan_ifindex(2).unwrap(), restored);
    assert_eq!(via_wan(&lab, 2, 1, OK).unwrap(), v4(lab.wan_addr(2)));
}

#[test]
fn move_gateway_replaces_the_default_route() {
    let lab = Lab::builder("move-gw").isps(2).build().unwrap();
    let _srv = lab.whoami_tcp(PORT).unwrap();
    lab.move_gateway(2, 254).unwrap();
    assert_eq!(lab.gateway(2), Ipv4Addr::new(100, 64, 2, 254));
    assert_eq!(lab.gateway(1), addr::default_gateway(1));
    let routes = default_routes(&lab);
    assert!(
        routes.contains("default via 100.64.2.254 dev wan2 metric 20"),
        "{routes}"
    );
    assert!(!routes.contains("100.64.2.1 "), "{routes}");
    assert_eq!(via_wan(&lab, 2, 3, OK).unwrap(), v4(lab.wan_addr(2)));
    // The ISP really answers on the new address only.
    let out = lab
        .isp(2)
        .ip(&["-4", "-o", "addr", "show", "dev", "cust"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("100.64.2.254/24") && !text.contains("100.64.2.1/"));
    // A recreated link keeps the moved gateway.
    lab.recreate_wan(2).unwrap();
    assert!(default_routes(&lab).contains("via 100.64.2.254 dev wan2"));
    assert!(lab.move_gateway(2, 2).is_err());
}

#[test]
fn blackhole_keeps_the_gateway_alive() {
    let lab = Lab::builder("blackhole").isps(2).build().unwrap();
    let _srv = lab.whoami_tcp(PORT).unwrap();
    lab.blackhole_isp(1, true).unwrap();
    lab.blackhole_isp(1, true).unwrap(); // idempotent
    assert!(via_wan(&lab, 1, 1, FAIL).is_err());
    assert_eq!(via_wan(&lab, 2, 1, OK).unwrap(), v4(lab.wan_addr(2)));
    assert!(lab.wan_carrier(1).unwrap());
    let ping = lab
        .router()
        .exec("ping", &["-c1", "-W2", "-I", "wan1", "100.64.1.1"]);
    assert!(ping.is_ok(), "{ping:?}");

    lab.blackhole_isp(1, false).unwrap();
    lab.blackhole_isp(1, false).unwrap(); // idempotent
    assert_eq!(via_wan(&lab, 1, 1, OK).unwrap(), v4(lab.wan_addr(1)));
}

#[test]
fn loss_is_exact() {
    let lab = Lab::builder("loss").isps(1).build().unwrap();
    let _udp = lab.whoami_udp(UDP_PORT).unwrap();
    let ask = |timeout| {
        udp_whoami_with(
            lab.router(),
            SocketAddr::new(v4(lab.server(1)), UDP_PORT),
            &ClientOptions::timeout(timeout).with_device("wan1"),
        )
    };
    lab.isp_loss(1, 100).unwrap();
    assert!(ask(FAIL).is_err());

    // 50 %: every other request is dropped on the way in, and every other reply of the
    // ones that got through on the way out: 5 answers out of 20, exactly.
    lab.isp_loss(1, 50).unwrap();
    let answered = (0..20)
        .filter(|_| ask(Duration::from_millis(250)).is_ok())
        .count();
    assert_eq!(answered, 5);

    lab.isp_loss(1, 0).unwrap();
    assert_eq!(ask(OK).unwrap(), v4(lab.wan_addr(1)));
    assert!(lab.isp_loss(1, 101).is_err());
}

#[test]
fn long_lived_connection_survives_a_short_blackhole() {
    let lab = Lab::builder("long-lived").isps(2).build().unwrap();
    let srv = lab.whoami_tcp(PORT).unwrap();
    let mut conn = LongLivedConnection::open_with(
        lab.router(),
        SocketAddr::new(v4(lab.server(2)), PORT),
        &ClientOptions::timeout(OK).with_device("wan2"),
    )
    .unwrap();
    assert_eq!(conn.seen_as(), v4(lab.wan_addr(2)));
    conn.exchange(1_000_000).unwrap();
    conn.exchange(10).unwrap();
    assert_eq!(conn.exchanged(), 1_000_010);
    assert_eq!(srv.open_connections(), 1);

    lab.blackhole_isp(2, true).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    lab.blackhole_isp(2, false).unwrap();
    conn.exchange(100_000).unwrap();

    drop(conn);
    lab.wait_until(OK, "the server to see the close", || {
        Ok(srv.open_connections() == 0)
    })
    .unwrap();
    assert_eq!(srv.seen(), vec![v4(lab.wan_addr(2))]);
}

#[test]
fn router_link_admin_down_and_up() {
    let lab = Lab::new("admin").unwrap();
    let _srv = lab.whoami_tcp(PORT).unwrap();
    lab.router_link_admin(3, false).unwrap();
    assert!(lab.wan_link(3).unwrap().contains("state DOWN"));
    assert!(!default_routes(&lab).contains("wan3"));
    lab.router_link_admin(3, true).unwrap();
    assert!(default_routes(&lab).contains("default via 100.64.3.1 dev wan3 metric 30"));
    lab.wait_until(OK, "carrier on wan3", || lab.wan_carrier(3))
        .unwrap();
    assert_eq!(via_wan(&lab, 3, 4, OK).unwrap(), v4(lab.wan_addr(3)));
}

#[test]
fn rp_filter_strict_everywhere_in_the_router() {
    let lab = Lab::builder("rp-strict")
        .isps(2)
        .rp_filter_strict(true)
        .build()
        .unwrap();
    let keys = ["all", "default", "lo", "lan0", "wan1", "wan2"];
    for key in keys {
        let v = lab
            .router()
            .read_sysctl(&format!("net.ipv4.conf.{key}.rp_filter"))
            .unwrap();
        assert_eq!(v, "1", "{key}");
    }
    lab.recreate_wan(2).unwrap();
    assert_eq!(
        lab.router()
            .read_sysctl("net.ipv4.conf.wan2.rp_filter")
            .unwrap(),
        "1"
    );
    let loose = Lab::builder("rp-loose").isps(1).build().unwrap();
    assert_eq!(
        loose
            .router()
            .read_sysctl("net.ipv4.conf.all.rp_filter")
            .unwrap(),
        "0"
    );
}

#[test]
fn bad_options_are_rejected_before_anything_is_created() {
    for n in [0, 9] {
        assert!(Lab::builder("bad-isps").isps(n).build().is_err());
    }
    assert!(Lab::builder("bad-servers").servers(0).build().is_err());
    assert!(Lab::builder("bad-lan")
        .extra_lan_clients(253)
        .build()
        .is_err());
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&format!("-{}-bad-", std::process::id())),
        "{list}"
    );
}

#[test]
fn spawn_enters_the_namespace_and_keeps_stdio() {
    let lab = Lab::builder("spawn").isps(1).build().unwrap();
    let mut child = lab
        .router()
        .spawn(
            Command::new("sh")
                .args(["-c", "ip -o link show; cat /sys/class/net/wan1/ifindex"])
                .stdout(Stdio::piped()),
        )
        .unwrap();
    let mut out = String::new();
    child
        .child()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.child().wait().unwrap().success());
    assert!(out.contains(": wan1@") && out.contains(": lan0@"), "{out}");
    let sys_index: u32 = out.lines().last().unwrap().trim().parse().unwrap();
    assert_eq!(sys_index, lab.wan_ifindex(1).unwrap());
}

#[test]
fn drop_removes_every_namespace_and_process() {
    let lab = Lab::builder("drop").isps(8).servers(8).build().unwrap();
    let names = lab.namespace_names();
    assert_eq!(names.len(), 11);
    for k in 1..=8 {
        assert_eq!(lab.isp_of(v4(Ipv4Addr::new(100, 64, k as u8, 9))), Some(k));
    }
    let mut sleeper = lab
        .router()
        .command("sleep")
        .arg("1000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let srv = lab.whoami_tcp(PORT).unwrap();
    // Wait until `ip netns exec` has exec'd sleep inside the namespace.
    lab.wait_until(OK, "sleep to run in the router", || {
        Ok(!lab.router().pids().is_empty())
    })
    .unwrap();
    drop(lab);
    let status = sleeper.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    drop(srv);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for name in &names {
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
        assert!(
            !list.split_whitespace().any(|n| n == name),
            "{name} left: {list}"
        );
    }
}

#[test]
fn netns_guard_basics() {
    let ns = Netns::new(netns_lab::unique_name("mwlab", "guard")).unwrap();
    let name = ns.name().to_string();
    ns.sysctls(&[("net.ipv4.ip_forward", "1")]).unwrap();
    assert_eq!(ns.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert!(ns.ip(&["link", "show", "nonexistent0"]).is_err());
    assert!(ns
        .ip_batch(&["link show lo", "link show nonexistent0"])
        .is_err());
    assert!(
        Netns::new(name.clone()).is_err(),
        "duplicate names are refused"
    );
    assert!(std::path::Path::new(&format!("/run/netns/{name}")).exists());
    drop(ns);
    assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
}
