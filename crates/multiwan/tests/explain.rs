//! `multiwan explain` against a real kernel (issue 11, acceptance 1 and 2): what it
//! names for one connection of each kind is what the traffic does, before and after
//! a link goes down under a running daemon; for the router's own connections it
//! names the table and source address `ip route get` reports.
//!
//! The lab's ISPs enforce BCP 38, so the address a whoami server saw (100.64.k.2)
//! proves which link a connection left through.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::Harness;
use netns_lab::{tcp_whoami, udp_whoami, Lab, Netns};
use serde_json::Value;

const PORT: u16 = 7000;
const T: Duration = Duration::from_secs(3);

fn server(i: usize) -> IpAddr {
    IpAddr::V4(netns_lab::lab::addr::server(i))
}

fn client(i: usize) -> IpAddr {
    IpAddr::V4(netns_lab::lab::addr::lan_client(i))
}

/// isp1 and isp2 share the default policy; isp3 is a backup. A rule of each kind.
const CONFIG: &str = r#"
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

[policies.voip]
links = ["isp2", { link = "isp1", priority = 2 }]
fallback = "unreachable"

[policies.sticky]
links = ["isp1", "isp2"]
sticky = "source"

[[rules]]
name = "sip"
destination = ["198.18.0.2/32"]
protocol = "udp"
destination_port = [7000]
policy = "voip"

[[rules]]
name = "sticky-clients"
source = ["192.0.2.3/32", "192.0.2.4/31"]
policy = "sticky"

[policies.pairs]
links = ["isp1", "isp2"]
sticky = "source-destination"

[[rules]]
name = "pair-clients"
source = ["192.0.2.6/32"]
policy = "pairs"

[[rules]]
name = "bypass"
destination = ["198.18.0.3/32"]
policy = "main"

[[rules]]
name = "nowhere"
destination = ["198.18.0.4/32"]
policy = "unreachable"

[[rules]]
name = "pinned"
destination = ["198.18.0.5/32"]
policy = "isp2"
fallback = "unreachable"
"#;

fn explain(h: &Harness, args: &[&str]) -> Value {
    let mut all = vec!["explain", "--json"];
    all.extend_from_slice(args);
    let out = h.multiwan_ok(&all);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain {args:?}: no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The ISP (1..=3) a whoami server saw the connection come from.
fn isp_of(seen: IpAddr) -> usize {
    netns_lab::lab::addr::isp_of(seen).unwrap_or_else(|| panic!("{seen} is no ISP address"))
}

fn tcp_via(ns: &Netns, to: IpAddr, bind: Option<IpAddr>) -> Result<usize, String> {
    tcp_whoami(ns, to, PORT, bind, T)
        .map(isp_of)
        .map_err(|e| format!("{e:#}"))
}

fn udp_via(ns: &Netns, to: IpAddr, bind: Option<IpAddr>) -> usize {
    isp_of(udp_whoami(ns, to, PORT, bind, T).unwrap_or_else(|e| panic!("UDP to {to}: {e:#}")))
}

/// `isp2` → 2.
fn isp_number(link: &Value) -> usize {
    let name = link.as_str().unwrap_or_else(|| panic!("no link in {link}"));
    name.trim_start_matches("isp").parse().unwrap()
}

fn candidates(e: &Value) -> Vec<(String, String, f64)> {
    e["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["link"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
                c["share_pct"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The ISP of the router's main default route (what `main` connections take).
fn main_isp(h: &Harness) -> usize {
    let routes = h.router_sh("ip -4 route show table main default");
    let dev = routes
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no main default route: {routes}"));
    dev.trim_start_matches("wan").parse().unwrap()
}

/// One connection of each kind: explain's answer, and the traffic agrees with it.
/// `isp2_up` says which phase this is.
// long-fn: one assertion block per connection kind, in the order of the config's rules
fn check_each_kind(h: &Harness, isp2_up: bool) {
    let lan = h.lab.lan();
    let phase = if isp2_up { "isp2 up" } else { "isp2 down" };
    let s = |i| server(i).to_string();
    let c1 = client(1).to_string();

    // A named policy (voip: isp2, then isp1).
    let e = explain(
        h,
        &[
            "--to",
            &s(2),
            "--from",
            &c1,
            "--proto",
            "udp",
            "--dport",
            "7000",
        ],
    );
    assert_eq!(e["daemon"], true, "{phase}: {e:#}");
    assert_eq!(e["rule"], "sip", "{phase}: {e:#}");
    assert_eq!(e["policy"], "voip", "{phase}: {e:#}");
    assert_eq!(e["verdict"], "link", "{phase}: {e:#}");
    let want = if isp2_up { 2 } else { 1 };
    assert_eq!(isp_number(&e["link"]), want, "{phase}: {e:#}");
    assert_eq!(e["table"], 100 + want, "{phase}: {e:#}");
    assert_eq!(
        e["mark"],
        format!("{:#x}/0xff00", want << 8),
        "{phase}: {e:#}"
    );
    assert_eq!(
        e["route"],
        format!("default via 100.64.{want}.1 dev wan{want}"),
        "{phase}: {e:#}"
    );
    assert_eq!(e["source"], format!("100.64.{want}.2"), "{phase}: {e:#}");
    let state2 = if isp2_up { "up" } else { "down" };
    let share2 = if isp2_up { 100.0 } else { 0.0 };
    assert_eq!(
        candidates(&e),
        [
            ("isp2".into(), state2.into(), share2),
            ("isp1".into(), "up".into(), 100.0 - share2)
        ],
        "{phase}"
    );
    assert_eq!(udp_via(lan, server(2), None), want, "{phase}: sip traffic");
    let out = h.multiwan_ok(&[
        "explain",
        "--to",
        &s(2),
        "--from",
        &c1,
        "--proto",
        "udp",
        "--dport",
        "7000",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    let line = format!(
        "rule sip, policy voip: link isp{want}, table {}, mark",
        100 + want
    );
    assert!(text.contains(&line), "{phase}: table output:\n{text}");
    assert!(
        !text.contains("no daemon"),
        "{phase}: table output:\n{text}"
    );

    // The default policy: a split while both are up, isp1 alone after.
    let e = explain(
        h,
        &[
            "--to",
            &s(1),
            "--from",
            &c1,
            "--proto",
            "tcp",
            "--dport",
            "7000",
        ],
    );
    assert_eq!(e["rule"], Value::Null, "{phase}: {e:#}");
    assert_eq!(e["policy"], "default", "{phase}: {e:#}");
    let got = tcp_via(lan, server(1), None).unwrap();
    if isp2_up {
        assert_eq!(e["verdict"], "split", "{phase}: {e:#}");
        assert_eq!(e["link"], Value::Null, "{phase}: {e:#}");
        let shares: Vec<f64> = candidates(&e).iter().map(|c| c.2).collect();
        assert_eq!(shares, [50.0, 50.0, 0.0], "{phase}: {e:#}");
        assert!(
            got == 1 || got == 2,
            "{phase}: default traffic left via isp{got}"
        );
    } else {
        assert_eq!(e["verdict"], "link", "{phase}: {e:#}");
        assert_eq!(e["link"], "isp1", "{phase}: {e:#}");
        assert_eq!(e["source"], "100.64.1.2", "{phase}: {e:#}");
        assert_eq!(got, 1, "{phase}: default traffic");
    }

    // A sticky policy: the hash names the link for each source; the traffic agrees.
    for i in 2..=4 {
        let from = client(i);
        let e = explain(h, &["--to", &s(1), "--from", &from.to_string()]);
        assert_eq!(e["rule"], "sticky-clients", "{phase}: {e:#}");
        assert_eq!(e["policy"], "sticky", "{phase}: {e:#}");
        let link = isp_number(&e["link"]);
        let verdict = if isp2_up { "split" } else { "link" };
        assert_eq!(e["verdict"], verdict, "{phase}: {e:#}");
        assert_eq!(e["table"], 100 + link, "{phase}: {e:#}");
        assert_eq!(e["source"], format!("100.64.{link}.2"), "{phase}: {e:#}");
        for _ in 0..3 {
            assert_eq!(
                tcp_via(lan, server(1), Some(from)).unwrap(),
                link,
                "{phase}: sticky traffic from {from}, explain said {e:#}"
            );
        }
    }

    // Sticky by source and destination: one client, each server its own hash.
    let from = client(5);
    for i in 1..=5 {
        let e = explain(h, &["--to", &s(i), "--from", &from.to_string()]);
        assert_eq!(e["rule"], "pair-clients", "{phase}: {e:#}");
        let link = isp_number(&e["link"]);
        assert_eq!(
            tcp_via(lan, server(i), Some(from)).unwrap(),
            link,
            "{phase}: sticky pair {from} -> {}, explain said {e:#}",
            server(i)
        );
    }

    // The `main` target.
    let e = explain(h, &["--to", &s(3), "--from", &c1, "--proto", "tcp"]);
    assert_eq!(e["rule"], "bypass", "{phase}: {e:#}");
    assert_eq!(e["verdict"], "main", "{phase}: {e:#}");
    assert_eq!(e["table"], 254, "{phase}: {e:#}");
    assert_eq!(e["mark"], "0xff00/0xff00", "{phase}: {e:#}");
    assert_eq!(
        tcp_via(lan, server(3), None).unwrap(),
        main_isp(h),
        "{phase}: main"
    );

    // The `unreachable` target: refused at once.
    let e = explain(h, &["--to", &s(4), "--from", &c1]);
    assert_eq!(e["rule"], "nowhere", "{phase}: {e:#}");
    assert_eq!(e["verdict"], "unreachable", "{phase}: {e:#}");
    assert_eq!(e["link"], Value::Null, "{phase}: {e:#}");
    let start = Instant::now();
    let err = tcp_via(lan, server(4), None).expect_err("unreachable target went through");
    assert!(start.elapsed() < Duration::from_secs(1), "{phase}: {err}");

    // A rule pinned to isp2: its fallback once isp2 is down.
    let e = explain(h, &["--to", &s(5), "--from", &c1]);
    assert_eq!(e["rule"], "pinned", "{phase}: {e:#}");
    assert_eq!(e["policy"], "isp2", "{phase}: {e:#}");
    if isp2_up {
        assert_eq!(e["verdict"], "link", "{phase}: {e:#}");
        assert_eq!(tcp_via(lan, server(5), None).unwrap(), 2, "{phase}: pinned");
    } else {
        assert_eq!(e["verdict"], "fallback", "{phase}: {e:#}");
        assert_eq!(e["fallback"], "unreachable", "{phase}: {e:#}");
        assert!(
            tcp_via(lan, server(5), None).is_err(),
            "{phase}: pinned, fallback"
        );
    }
}

/// Acceptance 1.
#[test]
fn explain_names_the_link_each_kind_of_connection_takes() {
    let h = Harness::with(Lab::builder("explain").servers(5).extra_lan_clients(4));
    h.write_config("lan = [\"lan0\"]", CONFIG);
    let _tcp = h.lab.whoami_tcp(PORT).unwrap();
    let _udp = h.lab.whoami_udp(PORT).unwrap();

    // Without a daemon: every link in service, and it says so.
    let e = explain(&h, &["--to", &server(1).to_string()]);
    assert_eq!(e["daemon"], false, "{e:#}");
    let text = String::from_utf8_lossy(&h.multiwan_ok(&["explain", "--to", "198.18.0.2"]).stdout)
        .into_owned();
    assert!(text.contains("no daemon answers"), "{text}");

    let _daemon = h.start_daemon();
    check_each_kind(&h, true);
    h.lab.carrier(2, false).unwrap();
    h.wait_until("isp2 down", Duration::from_secs(5), || {
        h.link_state("isp2") == "down"
    });
    check_each_kind(&h, false);
}

/// What `ip route get` in the router says: (table, source); `-N` prints table numbers
/// (the rt_tables.d names multiwan writes would print instead).
fn route_get(h: &Harness, args: &str) -> (u32, String) {
    let out = h.router_sh(&format!("ip -N -4 route get {args}"));
    let word_after = |key: &str| {
        out.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .map(str::to_string)
    };
    let table = word_after("table").map_or(254, |t| t.parse().unwrap());
    // A bound source is printed as `from`, a chosen one as `src`.
    let src = word_after("src").or_else(|| word_after("from"));
    (table, src.unwrap_or_else(|| panic!("no source in {out}")))
}

/// Acceptance 2: the router's own connections.
#[test]
fn explain_local_names_the_table_and_source_the_kernel_picks() {
    let h = Harness::new("explainlocal");
    h.write_config("lan = [\"lan0\"]", CONFIG);
    h.apply();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--to", "198.18.0.2", "--proto", "udp", "--dport", "7000"],
            "198.18.0.2 ipproto udp dport 7000",
        ),
        (
            &["--to", "198.18.0.1", "--from", "100.64.3.2"],
            "198.18.0.1 from 100.64.3.2",
        ),
        (
            &["--to", "198.18.0.5", "--proto", "tcp"],
            "198.18.0.5 ipproto tcp",
        ),
    ];
    for (args, get) in cases {
        let mut all = vec!["--local"];
        all.extend_from_slice(args);
        let e = explain(&h, &all);
        let (table, src) = route_get(&h, get);
        assert_eq!(e["table"], table, "{args:?}: ip route get {get}: {e:#}");
        assert_eq!(e["source"], src, "{args:?}: ip route get {get}: {e:#}");
        assert_eq!(e["verdict"], "link", "{args:?}: {e:#}");
    }
    // The default policy over isp1 and isp2: a multipath route the kernel hashes.
    let e = explain(&h, &["--local", "--to", "198.18.0.1"]);
    assert_eq!(e["verdict"], "split", "{e:#}");
    let (table, src) = route_get(&h, "198.18.0.1");
    assert_eq!(e["table"], table, "{e:#}");
    assert!(src == "100.64.1.2" || src == "100.64.2.2", "{src}");

    // isp2 out: one route left, and explain names its source.
    h.lab.carrier(2, false).unwrap();
    h.apply();
    let e = explain(
        &h,
        &[
            "--local",
            "--to",
            "198.18.0.1",
            "--proto",
            "tcp",
            "--dport",
            "80",
        ],
    );
    let (table, src) = route_get(&h, "198.18.0.1 ipproto tcp dport 80");
    assert_eq!(
        (e["verdict"].as_str(), e["table"].clone()),
        (Some("link"), table.into()),
        "{e:#}"
    );
    assert_eq!(e["source"], src, "{e:#}");
    assert_eq!(e["link"], "isp1", "{e:#}");
}

/// Bad input: exit 2 and one line.
#[test]
fn explain_refuses_bad_input_with_one_line() {
    let h = Harness::new("explainbad");
    h.write_config("lan = [\"lan0\"]", CONFIG);
    for args in [
        &["explain", "--to", "198.18.0.300"][..],
        &["explain", "--to", "198.18.0.1", "--from", "lan"],
        &["explain", "--to", "198.18.0.1", "--iif", "nosuch0"],
        &["explain", "--to", "198.18.0.1", "--dport", "80"],
        &[
            "explain",
            "--to",
            "198.18.0.1",
            "--proto",
            "icmp",
            "--dport",
            "80",
        ],
        &["explain", "--to", "198.18.0.1", "--iif", "lan0", "--local"],
    ] {
        let out = h.multiwan(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
