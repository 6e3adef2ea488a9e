//! The kernel diff without a kernel: change sets, ownership by tag, stale messages,
//! undo order.

use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::RuleAttribute;

use super::*;
use crate::kernel::nft::Existing;
use crate::plan::nft::NftTable;
use crate::plan::{Family, NextHop, RouteKind, RuleSelector};

// ---- route change sets (moved from routes.rs) ----

fn hop(gw: &str, ifindex: u32, weight: u32) -> NextHop {
    NextHop {
        gateway: Some(gw.parse().unwrap()),
        ifname: format!("wan{ifindex}"),
        ifindex,
        weight,
    }
}

fn route(table: u32, metric: u32, kind: RouteKind) -> Route {
    Route {
        family: Family::V4,
        table,
        dst: "0.0.0.0/0".parse().unwrap(),
        metric,
        kind,
    }
}

#[test]
fn routes_equal_sets_give_no_changes() {
    let rs = vec![
        route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)])),
        route(101, u32::MAX, RouteKind::Unreachable),
    ];
    assert!(route_changes(&rs, &rs).is_empty());
}

#[test]
fn missing_route_is_added_and_stale_one_deleted() {
    let a = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
    let b = route(102, 0, RouteKind::Unicast(vec![hop("198.51.100.1", 3, 1)]));
    let c = route_changes(std::slice::from_ref(&a), std::slice::from_ref(&b));
    assert_eq!(c.add, vec![b]);
    assert_eq!(c.delete, vec![a]);
    assert!(c.replace.is_empty());
}

#[test]
fn changed_route_under_same_key_is_a_replace() {
    let old = route(
        100,
        0,
        RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1), hop("198.51.100.1", 3, 1)]),
    );
    let new = route(
        100,
        0,
        RouteKind::Unicast(vec![hop("192.0.2.1", 2, 3), hop("198.51.100.1", 3, 1)]),
    );
    let c = route_changes(std::slice::from_ref(&old), std::slice::from_ref(&new));
    assert_eq!(c.replace, vec![(old, new)]);
    assert!(c.add.is_empty() && c.delete.is_empty());
}

#[test]
fn kind_change_is_a_replace() {
    let old = route(101, 5, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
    let new = route(101, 5, RouteKind::Blackhole);
    assert_eq!(
        route_changes(std::slice::from_ref(&old), std::slice::from_ref(&new)).replace,
        vec![(old, new)]
    );
}

#[test]
fn comparison_ignores_what_the_kernel_does_not_keep() {
    // Names are not stored, a lone next hop has no weight, hop order is free.
    let mut read = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
    if let RouteKind::Unicast(h) = &mut read.kind {
        h[0].ifname = "if2".into();
    }
    let want = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 7)]));
    assert!(route_changes(&[read], &[want]).is_empty());

    let a = route(
        100,
        0,
        RouteKind::Unicast(vec![hop("192.0.2.1", 2, 2), hop("198.51.100.1", 3, 1)]),
    );
    let b = route(
        100,
        0,
        RouteKind::Unicast(vec![hop("198.51.100.1", 3, 1), hop("192.0.2.1", 2, 2)]),
    );
    assert!(route_changes(&[a], &[b]).is_empty());
}

#[test]
fn metric_is_part_of_the_key() {
    let a = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
    let b = route(101, 10, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
    let c = route_changes(std::slice::from_ref(&a), std::slice::from_ref(&b));
    assert_eq!((c.add, c.delete), (vec![b], vec![a]));
}

#[test]
fn ipv6_metric_zero_is_1024() {
    let mut a = route(101, 0, RouteKind::Unreachable);
    a.family = Family::V6;
    a.dst = "::/0".parse().unwrap();
    let mut b = a.clone();
    b.metric = 1024;
    assert!(route_changes(&[b], &[a]).is_empty());
}

#[test]
fn route_duplicate_keys_in_current_are_deleted() {
    let a = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
    let c = route_changes(&[a.clone(), a.clone()], std::slice::from_ref(&a));
    assert_eq!(c.delete, vec![a]);
    assert!(c.add.is_empty() && c.replace.is_empty());
}

// ---- rule change sets (moved from rules.rs) ----

fn rule(priority: u32, table: u32, sel: RuleSelector) -> IpRule {
    IpRule {
        family: Family::V4,
        priority,
        selector: sel,
        table,
    }
}

fn mark(m: u32) -> RuleSelector {
    RuleSelector {
        fwmark: Some((m, 0xff00)),
        ..Default::default()
    }
}

#[test]
fn rules_equal_sets_give_no_changes() {
    let rs = vec![
        rule(1000, 254, RuleSelector::default()),
        rule(1003, 101, mark(0x100)),
    ];
    assert!(rule_changes(&rs, &rs).is_empty());
}

#[test]
fn adds_missing_and_deletes_stale() {
    let a = rule(1003, 101, mark(0x100));
    let b = rule(1003, 102, mark(0x200));
    let c = rule_changes(std::slice::from_ref(&a), &[a.clone(), b.clone()]);
    assert_eq!(c.add, vec![b.clone()]);
    assert!(c.delete.is_empty());
    let c = rule_changes(&[a.clone(), b.clone()], &[b]);
    assert_eq!(c.delete, vec![a]);
    assert!(c.add.is_empty() && c.replace.is_empty());
}

#[test]
fn a_changed_rule_is_add_plus_delete() {
    let a = rule(1003, 101, mark(0x100));
    let b = rule(1003, 101, mark(0x300));
    let c = rule_changes(std::slice::from_ref(&a), std::slice::from_ref(&b));
    assert_eq!((c.add, c.delete), (vec![b], vec![a]));
}

#[test]
fn duplicates_in_current_are_deleted() {
    let a = rule(1003, 101, mark(0x100));
    let c = rule_changes(&[a.clone(), a.clone()], std::slice::from_ref(&a));
    assert_eq!(c.delete, vec![a]);
    assert!(c.add.is_empty());
}

#[test]
fn from_all_equals_no_from() {
    let a = rule(1001, 101, RuleSelector::default());
    let b = rule(
        1001,
        101,
        RuleSelector {
            from: Some("0.0.0.0/0".parse().unwrap()),
            ..Default::default()
        },
    );
    assert!(rule_changes(&[a], &[b]).is_empty());
}

// ---- ownership by tag, stale messages, step order, undo order ----

fn desired(rules: Vec<IpRule>, routes: Vec<Route>) -> Desired {
    Desired {
        rules,
        routes,
        nft: NftTable {
            name: "mw".into(),
            counters: vec![],
            sets: vec![],
            chains: vec![],
            digest: "d1".into(),
        },
        sysctls: vec![],
        table_names: vec![],
        owned_tables: (100..=110).collect(),
        owned_priorities: (1000, 1999),
        links: vec![],
        policies: vec![],
    }
}

/// What the kernel would dump for `r` installed by multiwan (tagged) or by hand.
fn installed_rule(r: &IpRule, tagged: bool) -> InstalledRule {
    let mut msg = rules::to_message(r).unwrap();
    if !tagged {
        msg.attributes
            .retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
        msg.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Boot));
    }
    InstalledRule::new(msg)
}

fn installed_route(r: &Route, tagged: bool) -> InstalledRoute {
    let mut msg = routes::to_message(r).unwrap();
    if !tagged {
        msg.header.protocol = RouteProtocol::Boot;
    }
    InstalledRoute::new(msg, &BTreeMap::from([(2, "wan2".to_string())]))
}

fn installed(rules: Vec<InstalledRule>, routes: Vec<InstalledRoute>) -> Installed {
    Installed {
        rules,
        routes,
        // The digest matches: no nft step, so the tests see only rules and routes.
        nft: Existing {
            table: true,
            digest: Some("d1".into()),
            ..Existing::default()
        },
    }
}

fn deletes(d: &KernelDiff) -> Vec<String> {
    d.steps
        .iter()
        .filter(|s| matches!(s, Step::RuleDelete { .. } | Step::RouteDelete { .. }))
        .map(|s| s.to_string())
        .collect()
}

fn link_route(table: u32) -> Route {
    route(table, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]))
}

#[test]
fn tags_are_set_and_read_back() {
    let r = rule(1003, 101, mark(0x100));
    assert!(installed_rule(&r, true).tagged());
    assert!(!installed_rule(&r, false).tagged());
    let rt = link_route(101);
    assert!(installed_route(&rt, true).tagged());
    assert!(!installed_route(&rt, false).tagged());
}

#[test]
fn foreign_objects_never_appear_as_deletes() {
    // A rule by hand inside the range, a route by hand in a link table, and the same
    // rule and route as multiwan's own but untagged (an older multiwan, say).
    let foreign_rule = rule(1500, 77, RuleSelector::default());
    let foreign_route = route(101, 0, RouteKind::Blackhole);
    let mine = rule(1003, 101, mark(0x100));
    let inst = installed(
        vec![
            installed_rule(&foreign_rule, false),
            installed_rule(&rule(1003, 102, mark(0x200)), false),
        ],
        vec![
            installed_route(&foreign_route, false),
            installed_route(&link_route(102), false),
        ],
    );
    let d = KernelDiff::new(&inst, &desired(vec![mine.clone()], vec![]));
    assert_eq!(deletes(&d), Vec::<String>::new());
    let flush = KernelDiff::flush(&inst, &Ownership::from(&desired(vec![], vec![])));
    assert_eq!(deletes(&flush), Vec::<String>::new());
    // The untagged copy of a desired rule does not count as installed: ours is added.
    let inst = installed(vec![installed_rule(&mine, false)], vec![]);
    let d = KernelDiff::new(&inst, &desired(vec![mine.clone()], vec![]));
    assert!(d
        .steps
        .iter()
        .any(|s| matches!(s, Step::RuleAdd(r) if *r == mine)));
}

#[test]
fn tagged_but_not_desired_objects_are_deleted() {
    let old_rule = rule(1003, 102, mark(0x200));
    let old_route = link_route(102); // a link removed from the config
    let inst = installed(
        vec![installed_rule(&old_rule, true)],
        vec![installed_route(&old_route, true)],
    );
    let d = KernelDiff::new(&inst, &desired(vec![], vec![]));
    assert_eq!(
        deletes(&d),
        vec![
            format!("rule delete {}", rules::describe(&old_rule)),
            format!("route delete {}", routes::describe(&old_route)),
        ]
    );
    let flush = KernelDiff::flush(&inst, &Ownership::from(&desired(vec![], vec![])));
    assert_eq!(deletes(&flush), deletes(&d));
}

#[test]
fn tagged_objects_outside_the_range_are_foreign() {
    // Another instance's: tagged, but at priority 2500 and in table 300.
    let inst = installed(
        vec![installed_rule(&rule(2500, 300, mark(0x100)), true)],
        vec![
            installed_route(&link_route(300), true),
            // The kernel's own tables are never owned, whatever the range says.
            installed_route(&link_route(254), true),
        ],
    );
    let mut want = desired(vec![], vec![]);
    want.owned_tables = (100..=300).collect();
    want.owned_tables.retain(|t| *t != 300);
    want.owned_tables.push(254);
    let d = KernelDiff::new(&inst, &want);
    assert_eq!(deletes(&d), Vec::<String>::new());
}

#[test]
fn stale_messages_are_deleted_only_when_owned() {
    // A rule multiwan would not make (`not`) and a route it cannot express (a source
    // prefix): deleted when tagged and in range, left alone when not tagged.
    let mut strange = rules::to_message(&rule(1200, 101, mark(0x100))).unwrap();
    strange.header.flags |= netlink_packet_route::rule::RuleFlags::Invert;
    let mut strange_route = routes::to_message(&link_route(101)).unwrap();
    strange_route.header.source_prefix_length = 24;
    let mut foreign = InstalledRule::new(strange.clone());
    foreign
        .msg
        .attributes
        .retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
    let mut foreign_route = InstalledRoute::new(strange_route.clone(), &BTreeMap::new());
    foreign_route.msg.header.protocol = RouteProtocol::Static;
    assert!(foreign.rule.is_none() && foreign_route.route.is_none());

    let inst = installed(vec![foreign], vec![foreign_route]);
    assert_eq!(
        deletes(&KernelDiff::new(&inst, &desired(vec![], vec![]))),
        Vec::<String>::new()
    );

    let inst = installed(
        vec![InstalledRule::new(strange)],
        vec![InstalledRoute::new(strange_route, &BTreeMap::new())],
    );
    let d = deletes(&KernelDiff::new(&inst, &desired(vec![], vec![])));
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[0].starts_with("rule delete") && d[0].ends_with("(not one multiwan makes)"));
    assert!(d[1].starts_with("route delete in table 101 (not one multiwan makes"));
}

#[test]
fn a_foreign_route_under_a_desired_key_is_not_replaced() {
    let foreign = route(101, 0, RouteKind::Blackhole);
    let inst = installed(vec![], vec![installed_route(&foreign, false)]);
    let d = KernelDiff::new(&inst, &desired(vec![], vec![link_route(101)]));
    assert!(!d
        .steps
        .iter()
        .any(|s| matches!(s, Step::RouteAdd(_) | Step::RouteReplace { .. })));
    assert_eq!(d.conflicts.len(), 1);
    assert!(
        d.conflicts[0].contains("did not install"),
        "{:?}",
        d.conflicts
    );
}

#[test]
fn steps_come_in_apply_order() {
    let keep = link_route(101);
    let changed_old = route(100, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
    let changed_new = route(100, 0, RouteKind::Blackhole);
    let gone = link_route(102);
    let new_route = link_route(103);
    let inst = installed(
        vec![installed_rule(&rule(1003, 102, mark(0x200)), true)],
        vec![
            installed_route(&keep, true),
            installed_route(&changed_old, true),
            installed_route(&gone, true),
        ],
    );
    let mut want = desired(
        vec![rule(1003, 103, mark(0x300))],
        vec![keep, changed_new, new_route],
    );
    want.nft.digest = "d2".into();
    let names: Vec<&str> = KernelDiff::new(&inst, &want)
        .steps
        .iter()
        .map(|s| s.name())
        .collect();
    assert_eq!(
        names,
        [
            "sysctls",
            "routes",
            "routes",
            "rules add",
            "nft",
            "rules delete",
            "routes delete",
            "table names"
        ]
    );
}

#[test]
fn undo_runs_newest_first() {
    let a = link_route(101);
    let b = link_route(102);
    let r = rule(1003, 101, mark(0x100));
    let mut log = UndoLog::default();
    for step in [
        Step::Sysctls(vec![]),
        Step::RouteAdd(a.clone()),
        Step::RouteReplace {
            old: b.clone(),
            new: a.clone(),
        },
        Step::RuleAdd(r.clone()),
        Step::TableNames {
            nft_table: "mw".into(),
            names: vec![],
        },
    ] {
        if let Some(u) = step.undo(vec![]) {
            log.record(u);
        }
    }
    assert_eq!(
        log.newest_first().collect::<Vec<_>>(),
        vec![
            Undo::RuleAdded(r),
            Undo::RouteReplaced(b),
            Undo::RouteAdded(a),
            Undo::Sysctls(vec![]),
        ]
    );
}

#[test]
fn a_foreign_route_under_a_replaced_key_is_not_replaced() {
    // apply_after assumes its previous routes are installed; a foreign route under the
    // same key (known from the last full read) wins over that assumption.
    let mine = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
    let foreign = route(101, 0, RouteKind::Blackhole);
    let inst = installed(
        vec![],
        vec![
            installed_route(&mine, true),
            installed_route(&foreign, false),
        ],
    );
    let new = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.9", 2, 1)]));
    let d = KernelDiff::new(&inst, &desired(vec![], vec![new]));
    assert!(!d
        .steps
        .iter()
        .any(|s| matches!(s, Step::RouteAdd(_) | Step::RouteReplace { .. })));
    assert_eq!(d.conflicts.len(), 1, "{:?}", d.conflicts);
}
