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
mod refusal;
mod routing;
pub mod rules;
pub mod sticky;
pub mod sysctls;
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

/// Whether multiwan handles IPv6 at all (SPEC §2.12): some enabled link may carry it
/// (`gateway6` is not "none") and has it, a global IPv6 address or an IPv6 next hop
/// (the address counts so that a next hop lost for a moment, say to a carrier loss,
/// does not hand IPv6 back to the main table). When none has, no mark, ip rule or
/// route of multiwan touches IPv6 traffic: the router's own IPv6 forwarding (a NAT66
/// of its own, say) goes on as it was.
pub(crate) fn handles_ipv6(links: &[Resolved]) -> bool {
    links.iter().any(|r| {
        r.link.gateway6 != Gateway::None
            && (r.route6.is_some()
                || r.addresses.iter().any(|a| match a.addr() {
                    IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                    IpAddr::V4(_) => false,
                }))
    })
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
    let families: &[Family] = if handles_ipv6(&links) {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    let ip_rules = routing::ip_rules(config, &links, &marks, families);
    let routes = routing::routes(config, &links, &default_policy, &ip_rules, families);
    let sysctls = sysctls::required(config, |ifname| {
        links
            .iter()
            .any(|r| r.ifindex.is_some() && r.link.interface == ifname)
    });
    Desired {
        table_names: table_names(config, &links, &routes),
        rules: ip_rules,
        routes,
        nft: nft_lower::lower(input, &links, &marks),
        sysctls,
        owned_tables: owned_tables(settings.table_base),
        owned_priorities: (p0, p0 + 999),
        links: summaries(&default_policy, &links),
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

/// `rt_tables.d` names: the default policy's table, each link's, and those of named
/// policies that hold routes.
fn table_names(config: &Config, links: &[Resolved], routes: &[Route]) -> Vec<(u32, String)> {
    let settings = &config.settings;
    let base = settings.table_base;
    let mut table_names = Vec::new();
    if settings.table_names {
        table_names.push((base, settings.nft_table.clone()));
        for r in links {
            table_names.push((r.table, r.link.name.clone()));
        }
        for (i, p) in config.policies.iter().enumerate() {
            let table = base + rules::POLICY_TABLES + i as u32;
            if routes.iter().any(|r| r.table == table) {
                table_names.push((table, format!("{}-{}", settings.nft_table, p.name)));
            }
        }
    }
    table_names
}

/// What the planner decided about each link, for status and the log.
fn summaries(default_policy: &Policy, links: &[Resolved]) -> Vec<LinkSummary> {
    let shares = default_shares(default_policy, links);
    links
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
        .collect()
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

/// The routing tables multiwan owns: `table_base ..= table_base + 511`, never the
/// kernel's own `unspec` (0), `default` (253), `main` (254) and `local` (255), even
/// when the range spans them (config validation rejects a link or policy whose table
/// would land there).
pub fn owned_tables(base: u32) -> Vec<u32> {
    (base..=base.saturating_add(511))
        .filter(|t| !matches!(t, 0 | 253..=255))
        .collect()
}
