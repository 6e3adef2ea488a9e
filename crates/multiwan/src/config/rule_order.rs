//! The order of multiwan's ip rules, which validation and the planner both need: the
//! planner to place router-local rules at their priorities, validation to refuse a
//! config that would need more priorities than there are. Kept here, below both, so
//! that `config` never depends on `plan`.

use ipnet::IpNet;

use super::{Protocol, Rule};

/// Priorities inside `[rule_priority, rule_priority + 999]`, lowest first (SPEC §3).
pub mod priority {
    /// `lookup main suppress_prefixlength 0`
    pub const SUPPRESS_MAIN: u32 = 0;
    /// `from <link address> lookup <link table>`; with `fwmark 0/<mask>` when a rule
    /// matches a cgroup, so that the mark nft gives such a connection after its
    /// source was chosen routes it again to its link (see `plan::nft_lower`).
    pub const FROM_ADDRESS: u32 = 1;
    /// `fwmark <main mark> lookup main`
    pub const MAIN_MARK: u32 = 2;
    /// `fwmark <link mark> lookup <link table>`
    pub const LINK_MARK: u32 = 3;
    /// First of the router-local steering rules (`iif lo …`); rules share priorities
    /// where their order cannot matter ([`super::local_priorities`]).
    pub const LOCAL_RULES: u32 = 10;
    /// `lookup table_base`: the `default` policy.
    pub const DEFAULT_POLICY: u32 = 999;
}

/// Whether a rule can match router-local traffic at all: not by input interface or
/// source (forwarded traffic), and by at least one selector.
pub(crate) fn applies_locally(rule: &Rule) -> bool {
    rule.input_interface.is_none()
        && rule.source.is_empty()
        && (!rule.destination.is_empty()
            || rule.protocol != Protocol::Any
            || !rule.destination_port.is_empty()
            || rule.user.is_some()
            || rule.cgroup.is_some())
}

/// Whether a rule becomes `iif lo` ip rules (cgroup rules are matched in nft instead).
pub(crate) fn local_ip_rule(rule: &Rule) -> bool {
    applies_locally(rule) && rule.cgroup.is_none()
}

/// Whether some router-local packet could match both rules (by destination, protocol,
/// ports and user).
pub(crate) fn may_overlap(a: &Rule, b: &Rule) -> bool {
    // Cheap tests first: for the common "many destinations" config only the prefix
    // test below does any work. Prefixes were validated to have no host bits.
    let proto =
        a.protocol == Protocol::Any || b.protocol == Protocol::Any || a.protocol == b.protocol;
    let user = a.user.is_none() || b.user.is_none() || a.user == b.user;
    if !(proto && user) {
        return false;
    }
    let ports = a.destination_port.is_empty()
        || b.destination_port.is_empty()
        || a.destination_port.iter().any(|p| {
            b.destination_port
                .iter()
                .any(|q| p.first <= q.last && q.first <= p.last)
        });
    ports
        && (a.destination.is_empty()
            || b.destination.is_empty()
            || a.destination
                .iter()
                .any(|n| b.destination.iter().any(|m| overlap(n, m))))
}

/// Number of priorities router-local rules can use: `LOCAL_RULES ..= DEFAULT_POLICY - 1`.
pub const LOCAL_PRIORITIES: u32 = priority::DEFAULT_POLICY - priority::LOCAL_RULES;

/// The priority offset (from `LOCAL_RULES`) of each rule's `iif lo` ip rules, `None`
/// for rules that have none. Rules of one priority are evaluated in the order they
/// were added, which an apply that only adds what is missing cannot keep, so a rule
/// is put after every earlier rule that could match the same packet and sends it
/// elsewhere, and no further: rules that cannot both match one packet, or that go to
/// the same place, share a priority. A thousand rules for distinct destinations use
/// one priority; only chains of overlapping rules with different targets need more
/// (validation refuses configs that need more than [`LOCAL_PRIORITIES`]).
pub fn local_priorities(rules: &[Rule]) -> Vec<Option<u32>> {
    let mut out: Vec<Option<u32>> = vec![None; rules.len()];
    for (i, rule) in rules.iter().enumerate() {
        if !local_ip_rule(rule) {
            continue;
        }
        let level = rules[..i]
            .iter()
            .zip(&out)
            .filter_map(|(earlier, level)| {
                let level = (*level)?;
                let same_place = earlier.target == rule.target && earlier.fallback == rule.fallback;
                (!same_place && may_overlap(earlier, rule)).then_some(level + 1)
            })
            .max()
            .unwrap_or(0);
        out[i] = Some(level);
    }
    out
}

/// Whether two prefixes share an address (prefixes nest or are disjoint).
pub(crate) fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const LINKS: &str = "[links.a]\nid = 1\ninterface = \"wan1\"\n\
                         [links.b]\nid = 2\ninterface = \"wan2\"\n";

    fn config(rules: &str) -> Config {
        crate::config::parse(&format!("{LINKS}{rules}"), Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn rule(fields: &str, policy: &str) -> String {
        format!("[[rules]]\n{fields}\npolicy = \"{policy}\"\n")
    }

    #[test]
    fn local_rules_share_priorities_where_order_cannot_matter() {
        let c = config(
            &[
                rule("destination = [\"198.18.1.0/24\"]", "a"),
                rule("destination = [\"198.18.2.0/24\"]", "b"),
                // Overlaps the first, other target: after it.
                rule("destination = [\"198.18.1.7/32\"]", "b"),
                // Overlaps the first, same target: beside it.
                rule("destination = [\"198.18.1.8/32\"]", "a"),
                // Any destination, tcp: overlaps 1-4; after 3 (b -> a).
                rule("protocol = \"tcp\"", "a"),
                // udp 53 overlaps the destination rules but not the tcp one.
                rule("protocol = \"udp\"\ndestination_port = [53]", "b"),
                // Forwarded only, and cgroup: no ip rules.
                rule("source = [\"192.0.2.0/24\"]", "a"),
                rule("cgroup = \"x.slice\"", "b"),
                // Another user: cannot overlap a user-less rule? It can (user-less
                // rules match every user): after the udp rule (b) and the tcp rule (a).
                rule("user = 1000\nprotocol = \"udp\"", "a"),
            ]
            .concat(),
        );
        assert_eq!(
            local_priorities(&c.rules),
            vec![
                Some(0),
                Some(0),
                Some(1),
                Some(0),
                Some(2),
                Some(1),
                None,
                None,
                Some(2),
            ]
        );
    }

    #[test]
    fn a_thousand_distinct_destinations_use_one_priority() {
        let rules: String = (0..1000)
            .map(|i| {
                rule(
                    &format!("destination = [\"198.18.{}.{}/32\"]", i / 250, i % 250),
                    if i % 2 == 0 { "a" } else { "b" },
                )
            })
            .collect();
        let c = config(&rules);
        assert!(local_priorities(&c.rules).iter().all(|l| *l == Some(0)));
    }

    #[test]
    fn validation_refuses_more_overlapping_levels_than_priorities() {
        let chain = |n: usize| -> String {
            (0..n)
                .map(|i| rule("protocol = \"tcp\"", if i % 2 == 0 { "a" } else { "b" }))
                .collect()
        };
        let n = LOCAL_PRIORITIES as usize;
        let c = config(&chain(n));
        assert_eq!(
            local_priorities(&c.rules)[n - 1],
            Some(LOCAL_PRIORITIES - 1)
        );
        let errs = crate::config::parse(&format!("{LINKS}{}", chain(n + 1)), Path::new("t.toml"))
            .unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert_eq!(errs.0[0].key, format!("rules[{}]", n + 1));
    }
}
