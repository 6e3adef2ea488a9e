//! The pure part on a lab-like machine: three links (wan1..3, 100.64.k.2/24 via
//! 100.64.k.1), a LAN 192.0.2.0/24 on lan0.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::plan::{self, InterfaceFacts, LinkState, LinkStates, PlanInput};

const CONFIG: &str = r#"
[settings]
lan = ["lan0"]

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
destination_port = [5060]
policy = "voip"

[[rules]]
name = "sticky-clients"
source = ["192.0.2.128/25"]
policy = "sticky"

[[rules]]
name = "bypass"
destination = ["198.18.0.3/32"]
policy = "main"

[[rules]]
name = "nowhere"
destination = ["198.18.0.4/32"]
policy = "unreachable"

[[rules]]
name = "local-dns"
protocol = "udp"
destination_port = [53]
policy = "voip"
"#;

fn facts() -> Facts {
    let mut interfaces = BTreeMap::new();
    for k in 1..=3u32 {
        interfaces.insert(
            format!("wan{k}"),
            InterfaceFacts {
                ifindex: 10 + k,
                admin_up: true,
                carrier: true,
                addresses: vec![format!("100.64.{k}.2/24").parse().unwrap()],
                default_gateway4: Some(format!("100.64.{k}.1").parse().unwrap()),
                default_gateway6: None,
            },
        );
    }
    interfaces.insert(
        "lan0".into(),
        InterfaceFacts {
            ifindex: 2,
            admin_up: true,
            carrier: true,
            addresses: vec!["192.0.2.1/24".parse().unwrap()],
            default_gateway4: None,
            default_gateway6: None,
        },
    );
    Facts {
        interfaces,
        main_prefixes: [
            "100.64.1.0/24",
            "100.64.2.0/24",
            "100.64.3.0/24",
            "192.0.2.0/24",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect(),
    }
}

fn run(states: &[(&str, LinkState)], q: Query) -> Explanation {
    let config = crate::config::parse(CONFIG, Path::new("t.toml")).unwrap();
    let facts = facts();
    let states: LinkStates = states.iter().map(|(n, s)| (n.to_string(), *s)).collect();
    let desired = plan::plan(&PlanInput {
        config: &config,
        states: &states,
        facts: &facts,
        seed: 0x1234_5678,
    });
    explain(
        &Inputs {
            config: &config,
            desired: &desired,
            facts: &facts,
            daemon: true,
        },
        &q,
    )
}

fn q(from: &str, to: &str, proto: Option<Protocol>, dport: Option<u16>) -> Query {
    Query {
        from: (!from.is_empty()).then(|| from.parse().unwrap()),
        to: to.parse().unwrap(),
        proto,
        dport,
        iif: None,
        local: false,
    }
}

#[test]
fn a_named_policy_rule_takes_its_best_link() {
    let e = run(
        &[],
        q("192.0.2.10", "198.18.0.2", Some(Protocol::Udp), Some(5060)),
    );
    assert_eq!(e.rule.as_deref(), Some("sip"));
    assert_eq!(e.policy.as_deref(), Some("voip"));
    assert_eq!(e.verdict, Verdict::Link);
    assert_eq!(e.link.as_deref(), Some("isp2"));
    assert_eq!(e.table, Some(102));
    assert_eq!(e.route.as_deref(), Some("default via 100.64.2.1 dev wan2"));
    assert_eq!(e.source.as_deref(), Some("100.64.2.2"));
    assert_eq!(e.mark.as_deref(), Some("0x200/0xff00"));
    let shares: Vec<(&str, f64)> = e
        .candidates
        .iter()
        .map(|c| (c.link.as_str(), c.share_pct))
        .collect();
    assert_eq!(shares, [("isp2", 100.0), ("isp1", 0.0)]);
    assert_eq!(
        e.why[0],
        "rule sip matches (destination 198.18.0.2/32, udp, port 5060)"
    );
}

#[test]
fn the_default_policy_splits_and_fails_over() {
    let e = run(
        &[],
        q("192.0.2.10", "198.18.0.1", Some(Protocol::Tcp), Some(80)),
    );
    assert_eq!(e.rule, None);
    assert_eq!(e.policy.as_deref(), Some("default"));
    assert_eq!(e.verdict, Verdict::Split);
    assert_eq!(e.link, None);
    let shares: Vec<f64> = e.candidates.iter().map(|c| c.share_pct).collect();
    assert_eq!(shares, [50.0, 50.0, 0.0]);

    let e = run(
        &[("isp1", LinkState::Down)],
        q("192.0.2.10", "198.18.0.1", Some(Protocol::Tcp), Some(80)),
    );
    assert_eq!(e.verdict, Verdict::Link);
    assert_eq!(e.link.as_deref(), Some("isp2"));
    assert_eq!(e.candidates[0].state, "down");
}

#[test]
fn a_policy_without_links_in_service_uses_its_fallback() {
    let down = [("isp1", LinkState::Down), ("isp2", LinkState::Down)];
    let e = run(
        &down,
        q("192.0.2.10", "198.18.0.2", Some(Protocol::Udp), Some(5060)),
    );
    assert_eq!(e.verdict, Verdict::Fallback);
    assert_eq!(e.fallback.as_deref(), Some("unreachable"));
    assert_eq!(e.link, None);
}

#[test]
fn sticky_hashing_names_the_link_for_the_source() {
    let e = run(&[], q("192.0.2.200", "198.18.0.1", None, None));
    assert_eq!(e.rule.as_deref(), Some("sticky-clients"));
    assert_eq!(e.verdict, Verdict::Split);
    let link = e.link.clone().expect("the hash decides");
    // The nft map of the plan says which bucket goes where; the explanation agrees.
    let total: f64 = e.candidates.iter().map(|c| c.share_pct).sum();
    assert!((total - 100.0).abs() < 1e-9, "{:?}", e.candidates);
    // The other link taken out: this source moves only if it was on it.
    let other = if link == "isp1" { "isp2" } else { "isp1" };
    let e2 = run(
        &[(other, LinkState::Down)],
        q("192.0.2.200", "198.18.0.1", None, None),
    );
    assert_eq!(e2.link.as_deref(), Some(link.as_str()));
    assert_eq!(e2.verdict, Verdict::Link);
}

#[test]
fn without_a_source_a_sticky_policy_is_not_matched_and_says_so() {
    let e = run(&[], q("", "198.18.0.1", None, None));
    assert_eq!(e.rule, None);
    assert!(
        e.why.iter().any(|w| w.contains("source 192.0.2.128/25")),
        "{:?}",
        e.why
    );
}

#[test]
fn main_and_unreachable_rules() {
    let e = run(
        &[],
        q("192.0.2.10", "198.18.0.3", Some(Protocol::Tcp), Some(80)),
    );
    assert_eq!(
        (e.rule.as_deref(), e.verdict),
        (Some("bypass"), Verdict::Main)
    );
    assert_eq!(e.mark.as_deref(), Some("0xff00/0xff00"));
    assert_eq!(e.table, Some(254));
    let e = run(
        &[],
        q("192.0.2.10", "198.18.0.4", Some(Protocol::Tcp), Some(80)),
    );
    assert_eq!(
        (e.rule.as_deref(), e.verdict),
        (Some("nowhere"), Verdict::Unreachable)
    );
    assert_eq!(e.link, None);
}

#[test]
fn lan_destinations_and_foreign_interfaces_are_not_policy_routed() {
    let e = run(&[], q("192.0.2.10", "100.64.2.1", None, None));
    assert_eq!(e.verdict, Verdict::Main);
    assert!(e.why[0].contains("specific route"), "{:?}", e.why);
    let mut query = q("100.64.2.1", "198.18.0.1", Some(Protocol::Tcp), Some(80));
    query.iif = Some("wan2".into());
    let e = run(&[], query);
    assert_eq!(
        (e.verdict, e.link.as_deref()),
        (Verdict::Link, Some("isp2"))
    );
}

#[test]
fn local_connections_follow_the_ip_rules() {
    let mut query = q("", "198.18.0.9", Some(Protocol::Udp), Some(53));
    query.local = true;
    let e = run(&[], query.clone());
    assert_eq!(e.rule.as_deref(), Some("local-dns"));
    assert_eq!(e.policy.as_deref(), Some("voip"));
    assert_eq!(e.verdict, Verdict::Link);
    assert_eq!(e.link.as_deref(), Some("isp2"));
    assert_eq!(e.table, Some(100 + 258));
    assert_eq!(e.source.as_deref(), Some("100.64.2.2"));

    query.dport = Some(80);
    let e = run(&[("isp1", LinkState::Down)], query.clone());
    assert_eq!(
        (e.rule.as_deref(), e.policy.as_deref()),
        (None, Some("default"))
    );
    assert_eq!((e.verdict, e.table), (Verdict::Link, Some(100)));
    assert_eq!(e.source.as_deref(), Some("100.64.2.2"));

    query.from = Some("100.64.3.2".parse().unwrap());
    let e = run(&[], query);
    assert_eq!((e.link.as_deref(), e.table), (Some("isp3"), Some(103)));
    assert_eq!(e.source.as_deref(), Some("100.64.3.2"));
}

#[test]
fn the_table_output_is_short() {
    let e = run(
        &[],
        q("192.0.2.10", "198.18.0.2", Some(Protocol::Udp), Some(5060)),
    );
    let t = e.table();
    assert!(t.lines().count() <= 8, "{t}");
    assert!(
        t.contains("rule sip, policy voip: link isp2, table 102, mark 0x200/0xff00"),
        "{t}"
    );
}

#[test]
fn local_connections_to_main_and_unreachable_targets() {
    let mut query = q("", "198.18.0.3", Some(Protocol::Tcp), Some(80));
    query.local = true;
    let e = run(&[], query.clone());
    assert_eq!(
        (e.rule.as_deref(), e.verdict),
        (Some("bypass"), Verdict::Main)
    );
    assert_eq!((e.table, e.connection.iif.as_deref()), (Some(254), None));
    query.to = "198.18.0.4".parse().unwrap();
    let e = run(&[], query);
    assert_eq!(
        (e.rule.as_deref(), e.verdict),
        (Some("nowhere"), Verdict::Unreachable)
    );
    assert_eq!(e.table, Some(100 + 256));
}

#[test]
fn a_rule_of_another_protocol_is_not_named() {
    let e = run(
        &[],
        q("192.0.2.10", "198.18.0.2", Some(Protocol::Tcp), Some(5060)),
    );
    assert_eq!(
        (e.rule.as_deref(), e.policy.as_deref()),
        (None, Some("default"))
    );
}
