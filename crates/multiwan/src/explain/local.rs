//! `--local`: the router's own connection, through the planned ip rules (lowest
//! priority first) and the routes of the tables they look up, as the kernel routes it
//! at `connect()`: from the unspecified address unless `--from` binds one, no mark,
//! input interface `lo`, and (an assumption) uid 0.

use std::net::IpAddr;

use super::*;
use crate::plan::{IpRule, RuleSelector, MAIN_TABLE};

/// What one table lookup gave.
enum Lookup<'d> {
    /// The main table, by a route more specific than its default (the facts know it).
    MainSpecific(IpNet),
    /// The main table's default route (not planned by multiwan: unknown here).
    MainDefault,
    Route(&'d Route),
    /// The table has no route for the destination: the kernel goes on.
    Nothing,
}

pub(super) fn explain(inputs: &Inputs, query: &Query) -> Explanation {
    let mut e = blank(inputs, query, None);
    let family = Family::of(&query.to);
    let marks = MarkLayout::new(inputs.config.settings.mark_mask);
    let rules = inputs.desired.rules.iter().filter(|r| r.family == family);
    for rule in rules {
        if !selector_holds(&rule.selector, query) {
            continue;
        }
        let lookup = lookup(inputs, rule.table, family, query.to);
        let suppressed = |len: u8| {
            rule.selector
                .suppress_prefixlength
                .is_some_and(|s| u32::from(len) <= s)
        };
        match lookup {
            Lookup::Nothing => continue,
            Lookup::MainDefault if rule.selector.suppress_prefixlength.is_some() => continue,
            Lookup::MainSpecific(n) if suppressed(n.prefix_len()) => continue,
            Lookup::MainSpecific(n) => {
                e.why.push(format!(
                    "ip rule {}: the main table has a specific route to {n}: not policy-routed",
                    rule.priority
                ));
                main(&mut e, query, inputs.facts, Some(n));
                return e;
            }
            Lookup::MainDefault => {
                if let Some(r) = config_rule(inputs.config, rule, query) {
                    e.rule = Some(r.name.clone());
                    e.policy = Some(target_name(&r.target));
                    e.why.push(format!(
                        "rule {} matches ({})",
                        r.name,
                        rule_reason(r, query)
                    ));
                }
                e.why
                    .push(format!("ip rule {}: {}", rule.priority, rule_text(rule)));
                main(&mut e, query, inputs.facts, None);
                return e;
            }
            Lookup::Route(route) => {
                e.why
                    .push(format!("ip rule {}: {}", rule.priority, rule_text(rule)));
                from_route(inputs, query, &mut e, rule, route, &marks);
                return e;
            }
        }
    }
    e.why
        .push("no multiwan rule decides it: the main table routes it".into());
    main(&mut e, query, inputs.facts, None);
    e
}

/// `from … lookup 101` as `ip rule` shows it.
fn rule_text(rule: &IpRule) -> String {
    let full = crate::render::ip_text::rule(rule);
    let cut = format!("priority {} ", rule.priority);
    match full.find(&cut) {
        Some(i) => full[i + cut.len()..].to_string(),
        None => full,
    }
}

fn main(e: &mut Explanation, query: &Query, facts: &Facts, specific: Option<IpNet>) {
    e.verdict = Verdict::Main;
    e.table = Some(MAIN_TABLE);
    e.route = specific.map(|n| format!("{n} (main table)"));
    e.source = query.from.map(|a| a.to_string()).or_else(|| {
        // The address of the interface whose subnet holds the destination.
        let n = specific?;
        facts
            .interfaces
            .values()
            .flat_map(|i| i.addresses.iter())
            .find(|a| a.contains(&n.addr()) || n.contains(&a.addr()))
            .map(|a| a.addr().to_string())
    });
}

fn selector_holds(s: &RuleSelector, q: &Query) -> bool {
    let in_net = |net: &Option<IpNet>, a: Option<IpAddr>| {
        net.as_ref()
            .is_none_or(|n| a.is_some_and(|a| n.contains(&a)))
    };
    in_net(&s.from, q.from)
        && in_net(&s.to, Some(q.to))
        // An unmarked socket: only `fwmark 0/mask` holds.
        && s.fwmark.is_none_or(|(mark, _)| mark == 0)
        && s.iif.as_deref().is_none_or(|i| i == "lo")
        && s.ipproto
            .is_none_or(|p| q.proto.and_then(Protocol::number) == Some(p))
        && s.dport
            .is_none_or(|(a, b)| q.dport.is_some_and(|d| (a..=b).contains(&d)))
        && s.uidrange.is_none_or(|(a, b)| (a..=b).contains(&0))
}

fn lookup<'d>(inputs: &Inputs<'d>, table: u32, family: Family, to: IpAddr) -> Lookup<'d> {
    if table == MAIN_TABLE {
        return inputs
            .facts
            .main_prefixes
            .iter()
            .filter(|n| n.contains(&to))
            .max_by_key(|n| n.prefix_len())
            .map_or(Lookup::MainDefault, |n| Lookup::MainSpecific(*n));
    }
    inputs
        .desired
        .routes
        .iter()
        .filter(|r| r.table == table && r.family == family && r.dst.contains(&to))
        .min_by_key(|r| (std::cmp::Reverse(r.dst.prefix_len()), r.metric))
        .map_or(Lookup::Nothing, Lookup::Route)
}

/// The table's owner: a link, a named policy, `default`, or a rule target.
fn table_policy(inputs: &Inputs, table: u32) -> Option<Policy> {
    let config = inputs.config;
    let base = config.settings.table_base;
    if table == base {
        return Some(config.default_policy());
    }
    if let Some(l) = inputs.desired.links.iter().find(|l| l.table == table) {
        return target_policy(config, &RuleTarget::Link(l.name.clone()));
    }
    let i = table.checked_sub(base + crate::plan::rules::POLICY_TABLES)?;
    config.policies.get(i as usize).cloned()
}

/// The `[[rules]]` entry whose `iif lo` ip rule this is: the first rule that can match
/// router-local traffic and matches this connection.
fn config_rule<'c>(config: &'c Config, rule: &IpRule, q: &Query) -> Option<&'c Rule> {
    if rule.selector.iif.as_deref() != Some("lo") {
        return None;
    }
    config.rules.iter().find(|r| {
        r.input_interface.is_none()
            && r.source.is_empty()
            && r.cgroup.is_none()
            && (r.destination.is_empty() || r.destination.iter().any(|n| n.contains(&q.to)))
            && r.protocol
                .number()
                .is_none_or(|p| q.proto.and_then(Protocol::number) == Some(p))
            && (r.destination_port.is_empty()
                || q.dport.is_some_and(|d| {
                    r.destination_port
                        .iter()
                        .any(|p| (p.first..=p.last).contains(&d))
                }))
            && r.user.is_none_or(|u| u == 0)
    })
}

fn from_route(
    inputs: &Inputs,
    query: &Query,
    e: &mut Explanation,
    rule: &IpRule,
    route: &Route,
    marks: &MarkLayout,
) {
    let matched = config_rule(inputs.config, rule, query);
    e.rule = matched.map(|r| r.name.clone());
    if let Some(r) = matched {
        e.why.insert(
            0,
            format!("rule {} matches ({})", r.name, rule_reason(r, query)),
        );
    }
    let policy = table_policy(inputs, rule.table);
    e.policy = policy
        .as_ref()
        .map(|p| display_policy(p, matched))
        .or_else(|| matched.map(|r| target_name(&r.target)));
    e.table = Some(rule.table);
    e.route = Some(route_text(route));
    let family = Family::of(&query.to);
    let policy_up = policy
        .as_ref()
        .is_some_and(|p| p.members.iter().any(|m| state_of(inputs, &m.link) == "up"));
    if let Some(v) = route_verdict(route) {
        let by_target = matches!(
            matched.map(|r| &r.target),
            Some(RuleTarget::Unreachable | RuleTarget::Blackhole)
        );
        if policy.is_some() && !policy_up && !by_target {
            e.verdict = Verdict::Fallback;
            e.fallback = Some(v.as_str().into());
            e.why
                .push("no link of the policy is in service: its fallback applies".into());
        } else {
            e.verdict = v;
        }
        e.candidates = candidates(inputs, policy.as_ref(), &[]);
        return;
    }
    let RouteKind::Unicast(hops) = &route.kind else {
        return;
    };
    let total: u32 = hops.iter().map(|h| h.weight).sum();
    let shares: Vec<Branch> = hops
        .iter()
        .filter_map(|h| {
            let l = link_of_interface(inputs, &h.ifname)?;
            Some(Branch {
                share_pct: if hops.len() == 1 {
                    100.0
                } else {
                    f64::from(h.weight) * 100.0 / f64::from(total.max(1))
                },
                mark: l.mark,
            })
        })
        .collect();
    e.candidates = candidates(inputs, policy.as_ref(), &shares);
    e.verdict = if policy_up || policy.is_none() {
        Verdict::Link
    } else {
        e.fallback = Some("all".into());
        Verdict::Fallback
    };
    if hops.len() > 1 {
        if policy_up {
            e.verdict = Verdict::Split;
        }
        e.why.push(
            "a multipath route: the kernel hashes each connection (addresses and ports) \
             onto one next hop"
                .into(),
        );
        return;
    }
    let Some(l) = link_of_interface(inputs, &hops[0].ifname) else {
        return;
    };
    e.link = Some(l.name.clone());
    e.mark = Some(mark_text(l.mark, marks));
    e.source = query
        .from
        .or_else(|| interface_address(inputs.facts, &hops[0].ifname, family))
        .map(|a| a.to_string());
    if query.from.is_none() {
        if let Some(s) = &e.source {
            e.why.push(format!(
                "the kernel picks {s}, {}'s address on {}",
                l.name, hops[0].ifname
            ));
        }
    }
}

fn target_name(t: &RuleTarget) -> String {
    match t {
        RuleTarget::Policy(n) | RuleTarget::Link(n) => n.clone(),
        RuleTarget::Main => "main".into(),
        RuleTarget::Unreachable => "unreachable".into(),
        RuleTarget::Blackhole => "blackhole".into(),
    }
}

fn link_of_interface<'d>(inputs: &Inputs<'d>, ifname: &str) -> Option<&'d LinkSummary> {
    let name = &inputs
        .config
        .links
        .iter()
        .find(|l| l.enabled && l.interface == ifname)?
        .name;
    inputs.desired.links.iter().find(|l| &l.name == name)
}
