//! The policy routing: ip rules (SPEC §3's order) and the routes of multiwan's tables.

use ipnet::IpNet;

use super::marks::MarkLayout;
use super::{
    priority, rules, selection, Family, IpRule, NextHop, Resolved, Route, RouteKind, RuleSelector,
    LAST_RESORT_METRIC, MAIN_TABLE,
};
use crate::config::{Config, Fallback, Policy};

/// Every ip rule, sorted.
pub(super) fn ip_rules(
    config: &Config,
    links: &[Resolved],
    marks: &MarkLayout,
    families: &[Family],
) -> Vec<IpRule> {
    let settings = &config.settings;
    let p0 = settings.rule_priority;
    let base = settings.table_base;
    // Rules: they depend on config and addresses only, never on link states, so a
    // failover never touches them.
    let cgroup_steering = settings.local_traffic && config.rules.iter().any(|r| r.cgroup.is_some());
    let mut ip_rules = Vec::new();
    for &family in families {
        let rule = |priority: u32, selector: RuleSelector, table: u32| IpRule {
            family,
            priority: p0 + priority,
            selector,
            table,
        };
        ip_rules.push(rule(
            priority::SUPPRESS_MAIN,
            RuleSelector {
                suppress_prefixlength: Some(0),
                ..Default::default()
            },
            MAIN_TABLE,
        ));
        for r in links {
            for addr in r
                .addresses
                .iter()
                .filter(|a| Family::of(&a.addr()) == family)
            {
                ip_rules.push(rule(
                    priority::FROM_ADDRESS,
                    RuleSelector {
                        from: Some(IpNet::from(addr.addr())),
                        fwmark: cgroup_steering.then_some((0, marks.mask())),
                        ..Default::default()
                    },
                    r.table,
                ));
            }
        }
        ip_rules.push(rule(
            priority::MAIN_MARK,
            RuleSelector {
                fwmark: Some((marks.main(), marks.mask())),
                ..Default::default()
            },
            MAIN_TABLE,
        ));
        for r in links {
            ip_rules.push(rule(
                priority::LINK_MARK,
                RuleSelector {
                    fwmark: Some((r.mark, marks.mask())),
                    ..Default::default()
                },
                r.table,
            ));
        }
        if settings.local_traffic {
            ip_rules.push(rule(
                priority::DEFAULT_POLICY,
                RuleSelector::default(),
                base,
            ));
        }
    }
    if settings.local_traffic {
        // Once for all families: working out their priorities compares rules pairwise.
        ip_rules.extend(rules::local_rules(config, links, families));
    }
    ip_rules.sort();
    ip_rules.dedup();
    ip_rules
}

/// Every route of multiwan's tables, sorted.
pub(super) fn routes(
    config: &Config,
    links: &[Resolved],
    default_policy: &Policy,
    ip_rules: &[IpRule],
    families: &[Family],
) -> Vec<Route> {
    let base = config.settings.table_base;
    // Routes: each link's table holds its way out whatever its state (probes need it),
    // behind an `unreachable default` so marked packets never fall through.
    let mut routes = Vec::new();
    for &family in families {
        for r in links {
            if let Some(hop) = r.route(family) {
                routes.push(Route {
                    family,
                    table: r.table,
                    dst: family.default_net(),
                    metric: 0,
                    kind: RouteKind::Unicast(vec![hop.clone()]),
                });
            }
            routes.push(Route {
                family,
                table: r.table,
                dst: family.default_net(),
                metric: LAST_RESORT_METRIC,
                kind: RouteKind::Unreachable,
            });
        }
        if let Some(route) = default_policy_route(default_policy, links, family, base) {
            routes.push(route);
        }
    }
    routes.extend(steering_routes(config, ip_rules, families, links));
    routes.sort();
    routes
}

/// Routes of the tables that router-local rules use: a named policy's selection, the
/// `unreachable` and `blackhole` targets. Only tables some rule looks up are filled.
fn steering_routes(
    config: &Config,
    ip_rules: &[IpRule],
    families: &[Family],
    links: &[Resolved],
) -> Vec<Route> {
    let base = config.settings.table_base;
    let used = |table: u32| ip_rules.iter().any(|r| r.table == table);
    let mut out = Vec::new();
    for &family in families {
        for (offset, kind) in [
            (rules::TABLE_UNREACHABLE, RouteKind::Unreachable),
            (rules::TABLE_BLACKHOLE, RouteKind::Blackhole),
        ] {
            if used(base + offset) {
                out.push(Route {
                    family,
                    table: base + offset,
                    dst: family.default_net(),
                    metric: 0,
                    kind,
                });
            }
        }
        for (i, policy) in config.policies.iter().enumerate() {
            let table = base + rules::POLICY_TABLES + i as u32;
            if used(table) {
                out.extend(default_policy_route(policy, links, family, table));
            }
        }
    }
    out
}

/// The `default` policy's route for router-local traffic in one family: a weighted
/// multipath default over the links it selects, or what its fallback says.
fn default_policy_route(
    policy: &Policy,
    links: &[Resolved],
    family: Family,
    table: u32,
) -> Option<Route> {
    // No member can carry this family: nothing here, the main table decides.
    if !policy.members.iter().any(|m| {
        links
            .iter()
            .any(|r| r.link.name == m.link && r.route(family).is_some())
    }) {
        return None;
    }
    let kind = match selection(policy, links, Some(family)) {
        Ok(chosen) => {
            let mut hops: Vec<NextHop> = chosen
                .iter()
                .filter_map(|(r, w)| {
                    r.route(family).map(|h| NextHop {
                        weight: *w,
                        ..h.clone()
                    })
                })
                .collect();
            match hops.len() {
                0 => return None,
                // A single path carries no weight in the kernel.
                1 => hops[0].weight = 1,
                _ => {}
            }
            RouteKind::Unicast(hops)
        }
        Err(Fallback::Unreachable) => RouteKind::Unreachable,
        Err(Fallback::Blackhole) => RouteKind::Blackhole,
        // Nothing here: the lookup falls through to the main table.
        Err(Fallback::Main) | Err(Fallback::All) => return None,
    };
    Some(Route {
        family,
        table,
        dst: family.default_net(),
        metric: 0,
        kind,
    })
}
