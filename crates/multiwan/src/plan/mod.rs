//! The pure planner: (config, link states, observed interface facts) → desired state.
//!
//! Nothing here reads the machine or the clock; the same input always gives the same
//! [`Desired`], which is what makes `plan` trustworthy, `apply` idempotent and the
//! planner testable with golden files.

pub mod input;
pub mod marks;
pub mod model;
pub mod nft;
mod nft_lower;
pub mod rules;
pub mod sticky;
pub mod weights;

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Config, Fallback, Gateway, Link, Policy};
pub use input::*;
use marks::MarkLayout;
pub use model::*;
pub use nft_lower::counter_name as nft_counter_name;

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub config: &'a Config,
    pub states: &'a LinkStates,
    pub facts: &'a Facts,
    /// Seed of sticky hashing, kept in the state directory so a source keeps its link
    /// across changes and restarts.
    pub seed: u32,
}

/// Priorities inside `[rule_priority, rule_priority + 999]` (they live beside the
/// rule-order logic that validation needs too).
pub use crate::config::rule_order::priority;

/// The main routing table's id.
pub const MAIN_TABLE: u32 = 254;

/// A link as the planner sees it after looking at the facts.
#[derive(Debug, Clone)]
pub(crate) struct Resolved<'a> {
    pub link: &'a Link,
    pub state: LinkState,
    pub mark: u32,
    pub table: u32,
    pub ifindex: Option<u32>,
    /// Addresses on the interface (from-rules, masquerade).
    pub addresses: Vec<IpNet>,
    /// The IPv4 default route of the link's table, if it can be installed.
    pub route4: Option<NextHop>,
    pub route6: Option<NextHop>,
    pub waiting: Option<String>,
}

impl Resolved<'_> {
    /// Takes new connections now.
    pub fn in_service(&self) -> bool {
        self.state.in_service() && self.installable()
    }

    /// Its table can hold a route out (in some family).
    pub fn installable(&self) -> bool {
        self.route4.is_some() || self.route6.is_some()
    }

    fn route(&self, family: Family) -> Option<&NextHop> {
        match family {
            Family::V4 => self.route4.as_ref(),
            Family::V6 => self.route6.as_ref(),
        }
    }
}

/// Resolves every enabled link against the facts: which next hops exist, which state
/// it really has (a link whose interface, address or gateway is missing is `waiting`).
pub(crate) fn resolve<'a>(input: &PlanInput<'a>) -> Vec<Resolved<'a>> {
    let settings = &input.config.settings;
    let marks = MarkLayout::new(settings.mark_mask);
    input
        .config
        .links
        .iter()
        .filter(|l| l.enabled)
        .map(|link| {
            let wanted = input
                .states
                .get(&link.name)
                .copied()
                .unwrap_or(LinkState::Up);
            let mut r = Resolved {
                link,
                state: wanted,
                mark: marks.link(link.id),
                table: settings.table_base + u32::from(link.id),
                ifindex: None,
                addresses: Vec::new(),
                route4: None,
                route6: None,
                waiting: None,
            };
            let Some(facts) = input.facts.interfaces.get(&link.interface) else {
                r.waiting = Some(format!("interface {} not found", link.interface));
                r.state = LinkState::Waiting;
                return r;
            };
            r.ifindex = Some(facts.ifindex);
            r.addresses = facts.addresses.clone();
            if !facts.admin_up {
                // Its routes cannot be installed; the daemon reports it down.
                if wanted != LinkState::Disabled {
                    r.state = LinkState::Down;
                }
                return r;
            }
            let hop = |gateway: Option<IpAddr>| NextHop {
                gateway,
                ifname: link.interface.clone(),
                ifindex: facts.ifindex,
                weight: 1,
            };
            let has_v4 = facts.ipv4_addresses().next().is_some();
            r.route4 = match link.gateway {
                _ if !has_v4 => None,
                Gateway::Static(gw) => Some(hop(Some(IpAddr::V4(gw)))),
                Gateway::Auto => facts.default_gateway4.map(|gw| hop(Some(IpAddr::V4(gw)))),
                Gateway::None => Some(hop(None)),
            };
            r.route6 = match link.gateway6 {
                Gateway::Static(gw) => Some(hop(Some(IpAddr::V6(gw)))),
                Gateway::Auto => facts.default_gateway6.map(|gw| hop(Some(IpAddr::V6(gw)))),
                Gateway::None => None,
            };
            if !r.installable() {
                r.waiting = Some(if !has_v4 && facts.ipv6_addresses().next().is_none() {
                    format!("no address on {}", link.interface)
                } else if !has_v4 {
                    format!("no IPv4 address on {} and no IPv6 gateway", link.interface)
                } else {
                    format!(
                        "no default route on {} yet (gateway = \"auto\")",
                        link.interface
                    )
                });
                if wanted != LinkState::Disabled {
                    r.state = LinkState::Waiting;
                }
            }
            r
        })
        .collect()
}

/// What a policy does with new connections now: the links it shares them among, with
/// their weights, or the fallback that applies.
pub(crate) type Selection<'r, 'a> = Result<Vec<(&'r Resolved<'a>, u32)>, Fallback>;

/// The links a policy sends new connections to now, with their weights, in config
/// order: its in-service members of the lowest priority that has any; if none, what its
/// fallback says (`All`: every installable member, lowest priority first). With a
/// `family`, only members with a route in that family count.
pub(crate) fn selection<'r, 'a>(
    policy: &Policy,
    links: &'r [Resolved<'a>],
    family: Option<Family>,
) -> Selection<'r, 'a> {
    let members: Vec<(&Resolved, u32, u32)> = policy
        .members
        .iter()
        .filter_map(|m| {
            links
                .iter()
                .find(|r| r.link.name == m.link)
                .map(|r| (r, m.priority, m.weight))
        })
        .filter(|(r, _, _)| family.is_none_or(|f| r.route(f).is_some()))
        .collect();
    let lowest_tier = |pick: &dyn Fn(&Resolved) -> bool| {
        let best = members
            .iter()
            .filter(|(r, _, _)| pick(r))
            .map(|(_, p, _)| *p)
            .min()?;
        Some(
            members
                .iter()
                .filter(|(r, p, _)| pick(r) && *p == best)
                .map(|(r, _, w)| (*r, *w))
                .collect::<Vec<_>>(),
        )
    };
    if let Some(active) = lowest_tier(&|r| r.in_service()) {
        return Ok(active);
    }
    match policy.fallback {
        Fallback::All => lowest_tier(&|r| r.installable()).ok_or(Fallback::Unreachable),
        other => Err(other),
    }
}

/// The whole desired state.
pub fn plan(input: &PlanInput) -> Desired {
    let config = input.config;
    let settings = &config.settings;
    let marks = MarkLayout::new(settings.mark_mask);
    let links = resolve(input);
    let default_policy = config.default_policy();
    let p0 = settings.rule_priority;
    let base = settings.table_base;
    let ipv6 = config
        .links
        .iter()
        .any(|l| l.enabled && l.gateway6 != Gateway::None);
    let families: &[Family] = if ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };

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
        for r in &links {
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
        for r in &links {
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
        ip_rules.extend(rules::local_rules(config, &links, families));
    }
    ip_rules.sort();
    ip_rules.dedup();

    // Routes: each link's table holds its way out whatever its state (probes need it),
    // behind an `unreachable default` so marked packets never fall through.
    let mut routes = Vec::new();
    for &family in families {
        for r in &links {
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
        if let Some(route) = default_policy_route(&default_policy, &links, family, base) {
            routes.push(route);
        }
    }
    routes.extend(steering_routes(config, &ip_rules, families, &links));
    routes.sort();

    let mut sysctls = vec![
        sysctl("net/ipv4/icmp_errors_use_inbound_ifaddr", "1"),
        sysctl("net/ipv4/fib_multipath_hash_policy", "1"),
    ];
    if ipv6 {
        sysctls.push(sysctl("net/ipv6/fib_multipath_hash_policy", "1"));
    }
    for r in links.iter().filter(|r| r.ifindex.is_some()) {
        let ifname = &r.link.interface;
        sysctls.push(sysctl(
            &format!("net/ipv4/conf/{ifname}/src_valid_mark"),
            "1",
        ));
        if r.link.gateway6 == Gateway::Auto {
            sysctls.push(sysctl(&format!("net/ipv6/conf/{ifname}/accept_ra"), "2"));
        }
    }
    sysctls.sort();
    sysctls.dedup();

    let mut table_names = Vec::new();
    if settings.table_names {
        table_names.push((base, settings.nft_table.clone()));
        for r in &links {
            table_names.push((r.table, r.link.name.clone()));
        }
        for (i, p) in config.policies.iter().enumerate() {
            let table = base + rules::POLICY_TABLES + i as u32;
            if routes.iter().any(|r| r.table == table) {
                table_names.push((table, format!("{}-{}", settings.nft_table, p.name)));
            }
        }
    }

    let shares = default_shares(&default_policy, &links);
    let summaries = links
        .iter()
        .map(|r| LinkSummary {
            name: r.link.name.clone(),
            id: r.link.id,
            mark: r.mark,
            table: r.table,
            in_service: r.in_service(),
            share_pct: shares
                .iter()
                .find(|(name, _)| *name == r.link.name)
                .map_or(0.0, |(_, s)| *s),
            gateway: r.route4.as_ref().and_then(|h| match h.gateway {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            }),
            gateway6: r.route6.as_ref().and_then(|h| match h.gateway {
                Some(IpAddr::V6(a)) => Some(a),
                _ => None,
            }),
            waiting: r.waiting.clone(),
            state: r.state,
        })
        .collect();

    Desired {
        rules: ip_rules,
        routes,
        nft: nft_lower::lower(input, &links, &marks),
        sysctls,
        table_names,
        owned_tables: owned_tables(base),
        owned_priorities: (p0, p0 + 999),
        links: summaries,
        policies: std::iter::once(&default_policy)
            .chain(config.policies.iter())
            .map(|p| {
                let active = selection(p, &links, None)
                    .map(|chosen| chosen.iter().map(|(r, _)| r.link.name.clone()).collect())
                    .unwrap_or_default();
                (p.name.clone(), active)
            })
            .collect(),
    }
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

/// The routing tables multiwan owns: `table_base ..= table_base + 511`, never the
/// kernel's own `unspec` (0), `default` (253), `main` (254) and `local` (255), even
/// when the range spans them (config validation rejects a link or policy whose table
/// would land there).
pub fn owned_tables(base: u32) -> Vec<u32> {
    (base..=base.saturating_add(511))
        .filter(|t| !matches!(t, 0 | 253..=255))
        .collect()
}

fn sysctl(key: &str, value: &str) -> Sysctl {
    Sysctl {
        key: key.to_string(),
        value: value.to_string(),
    }
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

/// Share of the `default` policy's new connections per link name, percent.
fn default_shares<'a>(policy: &Policy, links: &[Resolved<'a>]) -> Vec<(&'a str, f64)> {
    match selection(policy, links, None) {
        Ok(chosen) => {
            let pct = weights::shares_pct(&chosen);
            chosen
                .iter()
                .zip(pct)
                .map(|((r, _), p)| (r.link.name.as_str(), p))
                .collect()
        }
        Err(_) => Vec::new(),
    }
}
