//! `[[rules]]` and named policies: forwarded traffic is classified in nft (`classify`
//! chain, first match wins, first packet only); router-local traffic is steered by
//! `iif lo` ip rules into per-policy routing tables, so the kernel picks the matching
//! source address at `connect()` (KERNEL-NOTES: marks come too late for that).
//!
//! Two exceptions to "local traffic by ip rules": ip rules cannot match a cgroup, so
//! rules with `cgroup` are matched in nft's `route_output` chain, which marks the
//! connection (the kernel then routes the packet again by the mark, and the link's
//! masquerade gives it the link's address); and consecutive rules that match only
//! destination prefixes become one `ip daddr vmap` lookup in `classify`, so a thousand
//! such rules cost one lookup, not a thousand comparisons.

use ipnet::IpNet;

use super::nft::*;
use super::nft_lower::{
    policy_chain, policy_chain_for, CHAIN_BLACKHOLE, CHAIN_UNREACHABLE, MARK_MAIN,
};
use super::{priority, Family, IpRule, Resolved, RuleSelector, MAIN_TABLE};
use crate::config::rule_order::{applies_locally, local_ip_rule};
pub use crate::config::rule_order::{local_priorities, LOCAL_PRIORITIES};
use crate::config::{Config, Fallback, Policy, PolicyMember, Protocol, Rule, RuleTarget, Sticky};

/// Offsets inside `table_base + 256 ..= table_base + 511`.
pub const TABLE_UNREACHABLE: u32 = 256;
pub const TABLE_BLACKHOLE: u32 = 257;
/// The first named policy's table; policy `i` (config order) uses `POLICY_TABLES + i`.
pub const POLICY_TABLES: u32 = 258;

/// The policy a rule's target stands for: a named policy, or a one-link policy for a
/// link target (the rule's `fallback` applies when that link is out of service). The
/// one-link policy is `via_<link>`, or `via_<link>_<fallback>` when the rule's fallback
/// is not `settings.fallback`: rules pinned to one link with different fallbacks need
/// different chains.
pub(crate) fn target_policy(config: &Config, rule: &Rule) -> Option<Policy> {
    match &rule.target {
        RuleTarget::Policy(name) if name == crate::config::DEFAULT_POLICY => {
            Some(config.default_policy())
        }
        RuleTarget::Policy(name) => config.policy(name).cloned(),
        RuleTarget::Link(name) => {
            let link = config.link(name)?;
            let fallback = rule.fallback.unwrap_or(config.settings.fallback);
            let suffix = if fallback == config.settings.fallback {
                ""
            } else {
                match fallback {
                    Fallback::All => "_all",
                    Fallback::Unreachable => "_unreachable",
                    Fallback::Blackhole => "_blackhole",
                    Fallback::Main => "_main",
                }
            };
            Some(Policy {
                name: format!("via_{name}{suffix}"),
                members: vec![PolicyMember {
                    link: name.clone(),
                    priority: link.priority,
                    weight: link.weight,
                }],
                sticky: Sticky::Connection,
                fallback,
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

/// What a rule's target does to a new connection in nft.
fn target_verdict(config: &Config, rule: &Rule) -> Verdict {
    match &rule.target {
        RuleTarget::Main => Verdict::Goto(MARK_MAIN.into()),
        // Stands for the whole refusal (`refusal::refuse`: a TCP reset, else ICMP).
        RuleTarget::Unreachable => Verdict::RejectHostUnreachable,
        RuleTarget::Blackhole => Verdict::Drop,
        RuleTarget::Policy(_) | RuleTarget::Link(_) => {
            let policy = target_policy(config, rule).expect("validated target");
            Verdict::Goto(policy_chain(&policy.name))
        }
    }
}

/// The nft matches of a rule in one family (`None`: a rule without prefixes), in the
/// order nft evaluates them cheaply: interface, addresses, protocol, ports, owner,
/// cgroup.
fn rule_matches(rule: &Rule, family: Option<Family>) -> Vec<Match> {
    let mut matches = Vec::new();
    if let Some(name) = &rule.input_interface {
        matches.push(Match::Iifname {
            cmp: Cmp::Eq,
            names: vec![name.clone()],
        });
    }
    if let Some(f) = family {
        let v = version(f);
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
    if let Some(uid) = rule.user {
        matches.push(Match::SkUid(uid));
    }
    if let Some(path) = &rule.cgroup {
        matches.push(Match::SocketCgroupv2 {
            level: path.split('/').count() as u32,
            path: path.clone(),
        });
    }
    matches
}

fn version(f: Family) -> IpVersion {
    match f {
        Family::V4 => IpVersion::V4,
        Family::V6 => IpVersion::V6,
    }
}

/// A rule that matches nothing but destination prefixes (and logs nothing): several
/// in a row can share one verdict-map lookup.
fn destination_only(rule: &Rule) -> bool {
    !rule.destination.is_empty()
        && rule.source.is_empty()
        && rule.protocol == Protocol::Any
        && rule.destination_port.is_empty()
        && rule.input_interface.is_none()
        && rule.user.is_none()
        && rule.cgroup.is_none()
        && !rule.log
}

/// Consecutive destination-only rules gathered into one verdict map.
///
/// First match is kept exactly, whatever overlaps: each rule gets only the part of its
/// prefixes that no earlier rule of the group covers (cut into CIDR blocks), so the
/// map's entries never overlap and a lookup finds the rule that would have matched
/// first. A rule whose prefix covers only earlier entries with its own verdict takes
/// them over whole, which keeps the map small.
#[derive(Default)]
struct DestinationGroup<'c> {
    rules: Vec<&'c Rule>,
    /// (prefix, verdict); the prefixes are disjoint.
    entries: Vec<(IpNet, Verdict)>,
}

impl<'c> DestinationGroup<'c> {
    fn push(&mut self, rule: &'c Rule, verdict: Verdict) {
        self.rules.push(rule);
        for n in &rule.destination {
            let n = n.trunc();
            // Already covered whole by an earlier (wider) entry: that one matches first.
            if self.entries.iter().any(|(m, _)| m.contains(&n)) {
                continue;
            }
            let inside: Vec<IpNet> = self
                .entries
                .iter()
                .filter(|(m, _)| n.contains(m))
                .map(|(m, _)| *m)
                .collect();
            if self
                .entries
                .iter()
                .filter(|(m, _)| n.contains(m))
                .all(|(_, v)| *v == verdict)
            {
                self.entries.retain(|(m, _)| !n.contains(m));
                self.entries.push((n, verdict.clone()));
                continue;
            }
            for piece in uncovered(n, &inside) {
                self.entries.push((piece, verdict.clone()));
            }
        }
    }

    /// The group's nft rules: a single rule as it was written, several as one
    /// `daddr vmap` per family.
    fn lower(self, config: &Config, log_group: Option<u16>, out: &mut Vec<NftRule>) {
        match self.rules.as_slice() {
            [] => {}
            [rule] => out.extend(rule_as_nft(config, rule, log_group, true)),
            [first, .., last] => {
                let comment = format!(
                    "{} rules, {} to {}",
                    self.rules.len(),
                    short(&first.name),
                    short(&last.name)
                );
                for f in [Family::V4, Family::V6] {
                    let entries: Vec<(String, Verdict)> = self
                        .entries
                        .iter()
                        .filter(|(n, _)| fam(n) == f)
                        .map(|(n, v)| (n.to_string(), v.clone()))
                        .collect();
                    if !entries.is_empty() {
                        out.push(
                            NftRule::new(
                                vec![],
                                vec![Action::DaddrVmap {
                                    version: version(f),
                                    entries,
                                }],
                            )
                            .with_comment(comment.clone()),
                        );
                    }
                }
            }
        }
    }
}

/// A rule name cut to fit an nft comment (128 bytes) twice.
fn short(name: &str) -> String {
    if name.chars().count() <= 40 {
        name.to_string()
    } else {
        format!("{}…", name.chars().take(39).collect::<String>())
    }
}

/// `n` minus the prefixes `inside` (all inside `n`), as CIDR blocks.
fn uncovered(n: IpNet, inside: &[IpNet]) -> Vec<IpNet> {
    if inside.is_empty() {
        return vec![n];
    }
    if inside.contains(&n) {
        return Vec::new();
    }
    let Ok(halves) = n.subnets(n.prefix_len() + 1) else {
        return Vec::new();
    };
    halves
        .flat_map(|half| {
            let within: Vec<IpNet> = inside
                .iter()
                .filter(|m| half.contains(*m))
                .copied()
                .collect();
            uncovered(half, &within)
        })
        .collect()
}

/// The `classify` rules of `[[rules]]`, in order (first match wins). A rule with
/// prefixes of both families becomes one nft rule per family; `user` and `cgroup`
/// rules match router-local traffic only, so they never appear here. Runs of
/// destination-only rules become one `daddr vmap` per family that keeps the first
/// match ([`DestinationGroup`]). Verdicts in a
/// map are gotos only (nft cannot put `reject` there, and nft 1.0.6's JSON parser
/// refuses the `drop` the nftables crate writes), so `unreachable` and `blackhole`
/// there go to one-rule chains that reject or drop.
pub(crate) fn classify_rules(config: &Config, log_group: Option<u16>) -> Vec<NftRule> {
    let mut out = Vec::new();
    let mut group = DestinationGroup::default();
    for rule in &config.rules {
        if rule.user.is_some() || rule.cgroup.is_some() {
            continue;
        }
        if !destination_only(rule) {
            std::mem::take(&mut group).lower(config, log_group, &mut out);
            out.extend(rule_as_nft(config, rule, log_group, true));
            continue;
        }
        let verdict = match target_verdict(config, rule) {
            Verdict::RejectHostUnreachable => Verdict::Goto(CHAIN_UNREACHABLE.into()),
            Verdict::Drop => Verdict::Goto(CHAIN_BLACKHOLE.into()),
            v => v,
        };
        group.push(rule, verdict);
    }
    group.lower(config, log_group, &mut out);
    out
}

/// One rule's nft rules (in `classify`, or in `route_output` for a cgroup rule), one
/// per family it needs, each logging the connection first when the rule says `log`.
/// `unreachable` refuses a forwarded connection as [`super::refusal`] says, a
/// router-local one with ICMP host unreachable (EHOSTUNREACH, as an unreachable route
/// answers it: delivered over loopback, never rate-limited nor lost).
fn rule_as_nft(
    config: &Config,
    rule: &Rule,
    log_group: Option<u16>,
    forwarded: bool,
) -> Vec<NftRule> {
    let verdict = target_verdict(config, rule);
    rule_families(rule)
        .into_iter()
        .flat_map(|family| {
            let mut actions = Vec::new();
            if rule.log {
                actions.push(Action::Log {
                    group: log_group,
                    prefix: format!("multiwan {}: ", rule.name),
                });
            }
            let matches = rule_matches(rule, family);
            let rules = if forwarded && verdict == Verdict::RejectHostUnreachable {
                super::refusal::refuse(matches, actions)
            } else {
                actions.push(Action::Verdict(verdict.clone()));
                vec![NftRule::new(matches, actions)]
            };
            rules
                .into_iter()
                .map(|r| r.with_comment(format!("rule {}", rule.name)))
        })
        .collect()
}

/// The rules of chain `route_output`, for router-local connections: those of
/// `[[rules]]` up to the last one with a `cgroup`, in order. A cgroup rule marks the
/// connection for its target; a rule before it that routing already applied (by
/// destination, protocol, port or user: see [`local_rules`]) returns, so the first
/// match still wins. Empty when no rule names a cgroup.
pub(crate) fn output_rules(config: &Config) -> Vec<NftRule> {
    let Some(last) = config.rules.iter().rposition(|r| r.cgroup.is_some()) else {
        return Vec::new();
    };
    let log_group = (config.settings.log_group != 0).then_some(config.settings.log_group);
    let mut out = Vec::new();
    for rule in &config.rules[..=last] {
        if rule.cgroup.is_some() && applies_locally(rule) {
            // Matched here, so logged here (validation refuses `log` where no nft rule
            // would see the connection).
            out.extend(rule_as_nft(config, rule, log_group, false));
        } else if local_ip_rule(rule) {
            for family in rule_families(rule) {
                out.push(
                    NftRule::new(
                        rule_matches(rule, family),
                        vec![Action::Verdict(Verdict::Return)],
                    )
                    .with_comment(format!("rule {}", rule.name)),
                );
            }
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

/// `iif lo` rules steering router-local connections by destination, protocol, port and
/// user, at the priorities of [`local_priorities`] (first match wins there too). Rules
/// that match on the input interface or the source (forwarded traffic), on a cgroup
/// (nft `route_output`), or on nothing, are left out.
pub(crate) fn local_rules(config: &Config, links: &[Resolved], families: &[Family]) -> Vec<IpRule> {
    let p0 = config.settings.rule_priority + priority::LOCAL_RULES;
    let mut out = Vec::new();
    let levels = local_priorities(&config.rules);
    for (rule, level) in config.rules.iter().zip(levels) {
        let Some(level) = level else {
            continue;
        };
        if level >= LOCAL_PRIORITIES {
            continue; // validation refuses this; never spill out of range
        }
        let priority = p0 + level;
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use super::*;

    const LINKS: &str = "[links.a]\nid = 1\ninterface = \"wan1\"\n\
                         [links.b]\nid = 2\ninterface = \"wan2\"\n";

    fn config(rules: &str) -> Config {
        crate::config::parse(&format!("{LINKS}{rules}"), Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn rule(fields: &str, policy: &str) -> String {
        format!("[[rules]]\n{fields}\npolicy = \"{policy}\"\n")
    }

    /// Forwarded traffic: runs of destination-only rules become verdict maps without
    /// changing which rule matches first.
    #[test]
    fn destination_runs_keep_the_first_match() {
        let c = config(
            &[
                rule("destination = [\"198.18.1.0/24\"]", "a"),
                rule("destination = [\"198.18.2.0/24\", \"2001:db8::/32\"]", "b"),
                // Inside the first with another target: dead, and must stay dead.
                rule("destination = [\"198.18.1.7/32\"]", "b"),
                rule("destination = [\"198.18.0.0/16\"]", "b"),
                rule("destination = [\"198.18.3.0/24\"]", "unreachable"),
            ]
            .concat(),
        );
        let rules = classify_rules(&c, None);
        // One run for all five (the unreachable target is a goto in the map), one map
        // per family, whose entries never overlap.
        let maps: Vec<(IpVersion, Vec<(String, Verdict)>)> = rules
            .iter()
            .map(|r| match &r.actions[..] {
                [Action::DaddrVmap { version, entries }] => (*version, entries.clone()),
                other => panic!("not a map: {other:?}"),
            })
            .collect();
        assert_eq!(maps.len(), 2, "{maps:?}");
        let lookup = |addr: &str| -> Option<String> {
            let addr: IpAddr = addr.parse().unwrap();
            let hits: Vec<String> = maps
                .iter()
                .flat_map(|(_, e)| e.iter())
                .filter(|(n, _)| n.parse::<IpNet>().unwrap().contains(&addr))
                .map(|(_, v)| match v {
                    Verdict::Goto(c) => c.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert!(hits.len() <= 1, "{addr} is in {hits:?}");
            hits.into_iter().next()
        };
        assert_eq!(
            lookup("198.18.1.7").as_deref(),
            Some("policy_via_a"),
            "the /32 stays dead"
        );
        assert_eq!(lookup("198.18.2.9").as_deref(), Some("policy_via_b"));
        assert_eq!(
            lookup("198.18.3.1").as_deref(),
            Some("policy_via_b"),
            "the /16 came first"
        );
        assert_eq!(lookup("198.18.200.1").as_deref(), Some("policy_via_b"));
        assert_eq!(lookup("2001:db8::1").as_deref(), Some("policy_via_b"));
        assert_eq!(lookup("198.19.0.1"), None);
    }
}

#[cfg(test)]
mod first_match_tests {
    use super::*;
    use crate::config::rule_order::overlap;

    fn rule(dst: &str, target: &str) -> Rule {
        Rule {
            name: format!("{dst}->{target}"),
            source: vec![],
            destination: vec![dst.parse().unwrap()],
            protocol: Protocol::Any,
            destination_port: vec![],
            input_interface: None,
            user: None,
            cgroup: None,
            target: RuleTarget::Link(target.into()),
            fallback: None,
            log: false,
        }
    }

    /// Overlapping rules with different targets in one map: every address gets the
    /// target of the first rule that contains it, as a linear chain would give.
    #[test]
    fn one_map_keeps_the_first_match_over_nested_prefixes() {
        let rules: Vec<Rule> = [
            ("198.18.1.0/25", "b"),
            ("198.18.1.0/24", "a"),
            ("198.18.1.64/26", "c"),
            ("198.18.0.0/16", "d"),
            ("198.18.1.128/32", "e"),
            ("198.18.2.0/24", "d"),
        ]
        .iter()
        .map(|(d, t)| rule(d, t))
        .collect();
        let mut g = DestinationGroup::default();
        for r in &rules {
            let RuleTarget::Link(t) = &r.target else {
                unreachable!()
            };
            g.push(r, Verdict::Goto(t.clone()));
        }
        for (i, (m, _)) in g.entries.iter().enumerate() {
            for (n, _) in &g.entries[i + 1..] {
                assert!(!overlap(m, n), "{m} and {n} overlap");
            }
        }
        for host in 0..=65535u32 {
            let addr = std::net::Ipv4Addr::from(0xc612_0000 | host);
            let linear = rules
                .iter()
                .find(|r| r.destination[0].contains(&std::net::IpAddr::V4(addr)))
                .map(|r| match &r.target {
                    RuleTarget::Link(t) => t.clone(),
                    _ => unreachable!(),
                });
            let mapped = g
                .entries
                .iter()
                .find(|(n, _)| n.contains(&std::net::IpAddr::V4(addr)))
                .map(|(_, v)| match v {
                    Verdict::Goto(t) => t.clone(),
                    _ => unreachable!(),
                });
            assert_eq!(linear, mapped, "{addr}");
        }
    }
}
