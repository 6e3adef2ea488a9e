//! `[[rules]]` and named policies: forwarded traffic is classified in nft (`classify`
//! chain, first match wins, first packet only); router-local traffic is steered by
//! `iif lo` ip rules into per-policy routing tables, so the kernel picks the matching
//! source address at `connect()` (KERNEL-NOTES: marks come too late for that).

use ipnet::IpNet;

use super::nft::*;
use super::nft_lower::{policy_chain, policy_chain_for, MARK_MAIN};
use super::{priority, Family, IpRule, Resolved, RuleSelector, MAIN_TABLE};
use crate::config::{Config, Fallback, Policy, PolicyMember, Protocol, Rule, RuleTarget, Sticky};

/// Offsets inside `table_base + 256 ..= table_base + 511`.
pub const TABLE_UNREACHABLE: u32 = 256;
pub const TABLE_BLACKHOLE: u32 = 257;
/// The first named policy's table; policy `i` (config order) uses `POLICY_TABLES + i`.
pub const POLICY_TABLES: u32 = 258;

/// The policy a rule's target stands for: a named policy, or a one-link policy for a
/// link target (the rule's `fallback` applies when that link is out of service).
pub(crate) fn target_policy(config: &Config, rule: &Rule) -> Option<Policy> {
    match &rule.target {
        RuleTarget::Policy(name) if name == crate::config::DEFAULT_POLICY => {
            Some(config.default_policy())
        }
        RuleTarget::Policy(name) => config.policy(name).cloned(),
        RuleTarget::Link(name) => {
            let link = config.link(name)?;
            Some(Policy {
                name: format!("via_{name}"),
                members: vec![PolicyMember {
                    link: name.clone(),
                    priority: link.priority,
                    weight: link.weight,
                }],
                sticky: Sticky::Connection,
                fallback: rule.fallback.unwrap_or(config.settings.fallback),
            })
        }
        _ => None,
    }
}

/// Chains of the named policies and link targets that rules use (each once).
pub(crate) fn policy_chains(config: &Config, links: &[Resolved], seed: u32) -> Vec<NftChain> {
    let mut out: Vec<NftChain> = Vec::new();
    for rule in &config.rules {
        if let Some(policy) = target_policy(config, rule) {
            if policy.name == crate::config::DEFAULT_POLICY {
                continue; // the default policy's chain is always there
            }
            let chain = policy_chain_for(&policy, links, seed);
            if !out.iter().any(|c| c.name == chain.name) {
                out.push(chain);
            }
        }
    }
    out
}

/// The `classify` rules of `[[rules]]`, in order. A rule with prefixes of both families
/// becomes one nft rule per family; `user` and `cgroup` rules match router-local
/// traffic only, so they never appear here.
pub(crate) fn classify_rules(config: &Config, log_group: Option<u16>) -> Vec<NftRule> {
    let mut out = Vec::new();
    for rule in &config.rules {
        if rule.user.is_some() || rule.cgroup.is_some() {
            continue;
        }
        let verdict = match &rule.target {
            RuleTarget::Main => Verdict::Goto(MARK_MAIN.into()),
            RuleTarget::Unreachable => Verdict::RejectHostUnreachable,
            RuleTarget::Blackhole => Verdict::Drop,
            RuleTarget::Policy(_) | RuleTarget::Link(_) => {
                let policy = target_policy(config, rule).expect("validated target");
                Verdict::Goto(policy_chain(&policy.name))
            }
        };
        for family in rule_families(rule) {
            let mut matches = Vec::new();
            if let Some(name) = &rule.input_interface {
                matches.push(Match::Iifname {
                    cmp: Cmp::Eq,
                    names: vec![name.clone()],
                });
            }
            let version = family.map(|f| match f {
                Family::V4 => IpVersion::V4,
                Family::V6 => IpVersion::V6,
            });
            if let Some(v) = version {
                let src = nets_of(&rule.source, family);
                if !src.is_empty() {
                    matches.push(Match::Saddr {
                        version: v,
                        nets: src,
                    });
                }
                let dst = nets_of(&rule.destination, family);
                if !dst.is_empty() {
                    matches.push(Match::Daddr {
                        version: v,
                        nets: dst,
                    });
                }
            }
            if let Some(p) = rule.protocol.number() {
                matches.push(Match::L4Proto(p));
            }
            if !rule.destination_port.is_empty() {
                matches.push(Match::ThDport(
                    rule.destination_port
                        .iter()
                        .map(|r| (r.first, r.last))
                        .collect(),
                ));
            }
            let mut actions = Vec::new();
            if rule.log {
                actions.push(Action::Log {
                    group: log_group,
                    prefix: format!("multiwan {}: ", rule.name),
                });
            }
            actions.push(Action::Verdict(verdict.clone()));
            out.push(NftRule::new(matches, actions).with_comment(format!("rule {}", rule.name)));
        }
    }
    out
}

/// The families a rule's prefixes need: `[None]` when it names none (family-agnostic),
/// else each family that has a prefix on every side that names any.
fn rule_families(rule: &Rule) -> Vec<Option<Family>> {
    if rule.source.is_empty() && rule.destination.is_empty() {
        return vec![None];
    }
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| {
            let has = |nets: &[IpNet]| nets.is_empty() || nets.iter().any(|n| fam(n) == *f);
            has(&rule.source) && has(&rule.destination)
        })
        .map(Some)
        .collect()
}

fn fam(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

fn nets_of(nets: &[IpNet], family: Option<Family>) -> Vec<String> {
    nets.iter()
        .filter(|n| Some(fam(n)) == family)
        .map(|n| n.trunc().to_string())
        .collect()
}

/// Where a router-local rule sends its connections: a routing table.
pub(crate) fn local_table(config: &Config, rule: &Rule, links: &[Resolved]) -> Option<u32> {
    let base = config.settings.table_base;
    Some(match &rule.target {
        RuleTarget::Main => MAIN_TABLE,
        RuleTarget::Unreachable => base + TABLE_UNREACHABLE,
        RuleTarget::Blackhole => base + TABLE_BLACKHOLE,
        RuleTarget::Policy(name) if name == crate::config::DEFAULT_POLICY => base,
        RuleTarget::Policy(name) => {
            let i = config.policies.iter().position(|p| &p.name == name)?;
            base + POLICY_TABLES + i as u32
        }
        RuleTarget::Link(name) => {
            let r = links.iter().find(|r| &r.link.name == name)?;
            if r.in_service() {
                r.table
            } else {
                match rule.fallback.unwrap_or(config.settings.fallback) {
                    Fallback::All => r.table,
                    Fallback::Main => MAIN_TABLE,
                    Fallback::Unreachable => base + TABLE_UNREACHABLE,
                    Fallback::Blackhole => base + TABLE_BLACKHOLE,
                }
            }
        }
    })
}

/// `iif lo` rules steering router-local connections, one priority per `[[rules]]`
/// entry (first match wins there too). Rules that match on the input interface or the
/// source (forwarded traffic) or only on a cgroup are left out.
pub(crate) fn local_rules(config: &Config, links: &[Resolved], families: &[Family]) -> Vec<IpRule> {
    let p0 = config.settings.rule_priority + priority::LOCAL_RULES;
    let mut out = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let priority = p0 + i as u32;
        if priority >= config.settings.rule_priority + priority::DEFAULT_POLICY {
            break; // validation keeps the count below this; never spill out of range
        }
        if rule.input_interface.is_some() || !rule.source.is_empty() {
            continue;
        }
        let selective = !rule.destination.is_empty()
            || rule.protocol != Protocol::Any
            || !rule.destination_port.is_empty()
            || rule.user.is_some();
        if !selective {
            continue;
        }
        let Some(table) = local_table(config, rule, links) else {
            continue;
        };
        let dsts: Vec<Option<IpNet>> = if rule.destination.is_empty() {
            vec![None]
        } else {
            rule.destination.iter().map(|n| Some(n.trunc())).collect()
        };
        let ports: Vec<Option<(u16, u16)>> = if rule.destination_port.is_empty() {
            vec![None]
        } else {
            rule.destination_port
                .iter()
                .map(|r| Some((r.first, r.last)))
                .collect()
        };
        for &family in families {
            let proto_fits = match rule.protocol {
                Protocol::Icmp => family == Family::V4,
                Protocol::Icmpv6 => family == Family::V6,
                _ => true,
            };
            if !proto_fits {
                continue;
            }
            for dst in dsts.iter().filter(|d| d.is_none_or(|n| fam(&n) == family)) {
                for port in &ports {
                    out.push(IpRule {
                        family,
                        priority,
                        selector: RuleSelector {
                            iif: Some("lo".into()),
                            to: *dst,
                            ipproto: rule.protocol.number(),
                            dport: *port,
                            uidrange: rule.user.map(|u| (u, u)),
                            ..Default::default()
                        },
                        table,
                    });
                }
            }
        }
    }
    out
}
