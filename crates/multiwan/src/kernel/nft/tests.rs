//! The nft batches and listings without a kernel.

use super::batch::*;
use super::existing::*;
use std::collections::{BTreeMap, BTreeSet};

use nftables::schema::Nftables;
use serde_json::Value;

use crate::plan::nft::{
    Action, BaseChain, ChainKind, Hook, Match, NftChain, NftRule, NftTable, SetElements, Verdict,
};
use crate::plan::nft::{NftSet, PRIORITY_MANGLE};

fn table() -> NftTable {
    NftTable {
        name: "mw".into(),
        counters: vec!["new_isp1".into()],
        sets: vec![NftSet {
            name: "bypass4".into(),
            elements: SetElements::Ipv4(vec!["192.0.2.0/24".parse().unwrap()]),
        }],
        chains: vec![
            NftChain {
                name: "mark_isp1".into(),
                hook: None,
                rules: vec![NftRule::new(
                    vec![],
                    vec![Action::Counter("new_isp1".into())],
                )],
            },
            NftChain {
                name: "prerouting".into(),
                hook: Some(BaseChain {
                    kind: ChainKind::Filter,
                    hook: Hook::Prerouting,
                    priority: PRIORITY_MANGLE,
                }),
                rules: vec![NftRule::new(
                    vec![Match::IifLoopback],
                    vec![Action::Verdict(Verdict::Goto("mark_isp1".into()))],
                )],
            },
        ],
        digest: "d1".into(),
    }
}

fn commands(n: &Nftables) -> Vec<String> {
    let v = serde_json::to_value(n).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let (cmd, body) = o.as_object().unwrap().iter().next().unwrap();
            let (kind, obj) = body.as_object().unwrap().iter().next().unwrap();
            let name = obj
                .get("name")
                .or_else(|| obj.get("chain"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{cmd} {kind} {name}")
        })
        .collect()
}

#[test]
fn fresh_table_batch() {
    let cmds = commands(&to_json_batch(&table(), &Existing::default()));
    assert_eq!(
        cmds,
        vec![
            "add table mw",
            "flush table mw",
            "add counter new_isp1",
            "add set bypass4",
            "add chain mark_isp1",
            "add chain prerouting",
            "add chain plan",
            "add rule mark_isp1",
            "add rule prerouting",
            "add rule plan",
        ]
    );
}

#[test]
fn existing_objects_are_kept_stale_ones_deleted() {
    let ex = Existing {
        table: true,
        digest: Some("old".into()),
        set_elements: None,
        chains: BTreeMap::from([
            ("mark_isp1".into(), None),
            ("mark_isp9".into(), None),
            ("plan".into(), None),
            // Same name, other hook: recreated.
            (
                "prerouting".into(),
                Some(BaseChain {
                    kind: ChainKind::Filter,
                    hook: Hook::Forward,
                    priority: PRIORITY_MANGLE,
                }),
            ),
        ]),
        sets: BTreeMap::from([
            ("bypass4".into(), ("ipv4_addr".into(), true)),
            ("old6".into(), ("ipv6_addr".into(), true)),
        ]),
        maps: BTreeSet::new(),
        counters: BTreeMap::from([("new_isp1".into(), 5), ("new_isp9".into(), 7)]),
    };
    let cmds = commands(&to_json_batch(&table(), &ex));
    assert_eq!(
        cmds,
        vec![
            "add table mw",
            "flush table mw",
            "delete chain mark_isp9",
            "delete chain prerouting",
            "flush set bypass4",
            "delete set old6",
            "delete counter new_isp9",
            "add set bypass4",
            "add chain mark_isp1",
            "add chain prerouting",
            "add chain plan",
            "add rule mark_isp1",
            "add rule prerouting",
            "add rule plan",
        ]
    );
}

/// The text batch (tables that match cgroups) runs the same commands in the same
/// order as the JSON batch; only set elements are a command of their own.
#[test]
fn text_batch_mirrors_the_json_batch() {
    let ex = Existing {
        table: true,
        digest: Some("old".into()),
        set_elements: None,
        chains: BTreeMap::from([("mark_isp9".into(), None), ("plan".into(), None)]),
        sets: BTreeMap::from([("old6".into(), ("ipv6_addr".into(), true))]),
        maps: BTreeSet::from(["oldmap".to_string()]),
        counters: BTreeMap::from([("new_isp9".into(), 7)]),
    };
    for existing in [Existing::default(), ex] {
        let text = to_text_batch(&table(), &existing);
        let from_text: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with("add element"))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let name = if w[1] == "table" { w[3] } else { w[4] };
                format!("{} {} {name}", w[0], w[1])
            })
            .collect();
        assert_eq!(
            from_text,
            commands(&to_json_batch(&table(), &existing)),
            "{text}"
        );
        assert!(text.contains("add element inet mw bypass4 { 192.0.2.0/24 }"));
        assert!(text.ends_with("add rule inet mw plan return comment \"d1\"\n"));
    }
    assert!(matches!(
        to_batch(&table(), &Existing::default()),
        NftBatch::Json(_)
    ));
    let mut t = table();
    t.chains[0].rules[0].matches.push(Match::SocketCgroupv2 {
        level: 2,
        path: "system.slice/openvpn.service".into(),
    });
    match to_batch(&t, &Existing::default()) {
        NftBatch::Text(text) => assert!(
            text.contains(
                "add rule inet mw mark_isp1 socket cgroupv2 level 2 \"system.slice/openvpn.service\" counter name \"new_isp1\""
            ),
            "{text}"
        ),
        NftBatch::Json(_) => panic!("a cgroup match needs the text batch"),
    }
}

#[test]
fn digest_is_the_plan_rule_comment() {
    let v = serde_json::to_value(to_json_batch(&table(), &Existing::default())).unwrap();
    let last = v["nftables"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["add"]["rule"]["chain"], "plan");
    assert_eq!(last["add"]["rule"]["comment"], "d1");
    assert_eq!(
        last["add"]["rule"]["expr"],
        serde_json::json!([{"return": null}])
    );
}

#[test]
fn parses_a_listing() {
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "mw", "handle": 1}},
      {"counter": {"family": "inet", "name": "new_isp1", "table": "mw", "handle": 12, "packets": 8589934592, "bytes": 0}},
      {"set": {"family": "inet", "name": "bypass4", "table": "mw", "type": "ipv4_addr", "handle": 13, "flags": ["interval"]}},
      {"chain": {"family": "inet", "table": "mw", "name": "mark_isp1", "handle": 1}},
      {"chain": {"family": "inet", "table": "mw", "name": "prerouting", "handle": 7, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "mw", "name": "plan", "handle": 11}},
      {"rule": {"family": "inet", "table": "mw", "chain": "plan", "handle": 47, "comment": "abc", "expr": [{"return": null}]}}]}"#;
    let ex = Existing::parse("mw", json).unwrap();
    assert!(ex.table);
    assert_eq!(ex.digest.as_deref(), Some("abc"));
    assert_eq!(ex.counters["new_isp1"], 8589934592);
    assert_eq!(ex.sets["bypass4"], ("ipv4_addr".to_string(), true));
    assert_eq!(ex.chains["mark_isp1"], None);
    assert_eq!(
        ex.chains["prerouting"],
        Some(BaseChain {
            kind: ChainKind::Filter,
            hook: Hook::Prerouting,
            priority: -150
        })
    );
}

#[test]
fn reject_in_a_verdict_map_is_refused() {
    let mut t = table();
    t.chains[0].rules.push(NftRule::new(
        vec![],
        vec![Action::IifnameVmap(vec![(
            "x".into(),
            Verdict::RejectHostUnreachable,
        )])],
    ));
    assert!(validate(&t).is_err());
    assert!(validate(&table()).is_ok());
}
