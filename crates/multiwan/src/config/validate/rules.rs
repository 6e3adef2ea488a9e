//! `[[rules]]`: selectors, targets, and what makes a rule impossible.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use ipnet::IpNet;
use serde_spanned::Spanned;
use toml::de::DeValue;

use super::values::parse_prefix;
use super::Ctx;
use crate::config::model::{PortRange, Protocol, Rule, RuleTarget, DEFAULT_POLICY};
use crate::config::raw::{IntOrString, RawRule};

/// Possible address families of a rule's matches.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    const BOTH: Families = Families { v4: true, v6: true };

    fn of_prefixes(nets: &[IpNet]) -> Families {
        if nets.is_empty() {
            return Families::BOTH;
        }
        Families {
            v4: nets.iter().any(|n| matches!(n, IpNet::V4(_))),
            v6: nets.iter().any(|n| matches!(n, IpNet::V6(_))),
        }
    }

    fn and(self, other: Families) -> Families {
        Families {
            v4: self.v4 && other.v4,
            v6: self.v6 && other.v6,
        }
    }

    fn describe(self) -> &'static str {
        match (self.v4, self.v6) {
            (true, true) => "IPv4 and IPv6",
            (true, false) => "IPv4 only",
            (false, true) => "IPv6 only",
            (false, false) => "no family",
        }
    }
}

impl<'t> Ctx<'_, 't> {
    pub(super) fn rules(
        &mut self,
        value: Option<&Spanned<DeValue<'t>>>,
        link_names: &HashSet<&str>,
        policy_names: &HashSet<&str>,
        local_traffic: Option<bool>,
    ) -> Option<Vec<Rule>> {
        let Some(value) = value else {
            return Some(Vec::new());
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span(),
                "rules",
                format!(
                    "rules is an array of tables, written [[rules]] (double brackets), not {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let mut rules = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut complete = true;
        for (i, item) in items.iter().enumerate() {
            let n = i + 1;
            let key = format!("rules[{n}]");
            let Some(raw) = self.section::<RawRule>(item) else {
                complete = false;
                continue;
            };
            // Duplicate names would make status, explain and counters ambiguous.
            let name = match &raw.name {
                None => Some(format!("rule{n}")),
                Some(v) => self.rule_name(v, &format!("{key}.name")),
            };
            if let Some(name) = &name {
                if let Some(first) = names.get(name) {
                    let span = raw.name.as_ref().map_or(item.span(), |v| v.span());
                    self.dep_error(
                        span,
                        &format!("{key}.name"),
                        format!(
                            "rule {n} is named {name:?} like rule {first}; give each rule its own name"
                        ),
                    );
                } else {
                    names.insert(name.clone(), n);
                }
            }
            if local_traffic == Some(false) {
                self.local_only_without_local_traffic(&raw, &key);
            }
            match self.rule(&key, item.span(), raw, name, link_names, policy_names) {
                Some(rule) if !self.lenient => rules.push(rule),
                _ => complete = false,
            }
            self.lenient = false;
        }
        if complete {
            // Router-local rules share ip rule priorities where their order cannot
            // matter; a chain of overlapping rules with different targets needs one
            // priority per link of the chain, and there are only so many.
            let levels = crate::config::rule_order::local_priorities(&rules);
            let max = crate::config::rule_order::LOCAL_PRIORITIES;
            if let Some(i) = levels.iter().position(|l| l.is_some_and(|l| l >= max)) {
                self.error(
                    items[i].span(),
                    &format!("rules[{}]", i + 1),
                    format!(
                        "too many rules before this one could match the same router-local \
                         connection and send it elsewhere: it would need ip rule priority \
                         level {} of the {max} there are; merge rules that go to the same \
                         policy",
                        levels[i].unwrap_or(0) + 1
                    ),
                );
                return None;
            }
        }
        complete.then_some(rules)
    }

    pub(super) fn rule_name(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        let name = v.get_ref();
        // Names end up in nft comments and log lines; keep them printable and short.
        if name.is_empty()
            || name.chars().count() > 64
            || name
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\')
        {
            self.error(
                v.span(),
                key,
                "a rule name is 1 to 64 printable characters without quotes or backslashes",
            );
            return None;
        }
        Some(name.clone())
    }

    pub(super) fn rule(
        &mut self,
        key: &str,
        table_span: Range<usize>,
        raw: RawRule,
        name: Option<String>,
        link_names: &HashSet<&str>,
        policy_names: &HashSet<&str>,
    ) -> Option<Rule> {
        let errors_before = self.errors.len();
        let k = |s: &str| format!("{key}.{s}");
        let source = self.prefixes(raw.source.as_deref());
        let destination = self.prefixes(raw.destination.as_deref());
        let protocol = match &raw.protocol {
            None => Some(Protocol::Any),
            Some(p) => self.choice(
                p,
                &k("protocol"),
                &[
                    ("any", Protocol::Any),
                    ("tcp", Protocol::Tcp),
                    ("udp", Protocol::Udp),
                    ("icmp", Protocol::Icmp),
                    ("icmpv6", Protocol::Icmpv6),
                ],
            ),
        };
        let ports = self.ports(&raw, key, protocol);
        let input_interface = raw
            .input_interface
            .as_ref()
            .map(|v| self.ifname(v, &k("input_interface")));
        let user = raw.user.as_ref().map(|v| self.user(v, &k("user")));
        let cgroup = raw.cgroup.as_ref().map(|v| self.cgroup(v, &k("cgroup")));
        self.local_only_with_iif(&raw, key);
        if let (Some(log), Some(_), None) = (&raw.log, &raw.user, &raw.cgroup) {
            if *log.get_ref() {
                // Such a rule becomes ip rules only (nft sees neither it nor its
                // connections), and an ip rule cannot log.
                self.dep_error(
                    log.span(),
                    &k("log"),
                    "a rule by user steers the router's own connections with ip rules, \
                     which cannot log them; remove log (rules by cgroup, and rules for \
                     forwarded traffic, can log)",
                );
            }
        }

        let target = match &raw.policy {
            None => {
                self.dep_error(
                    table_span.clone(),
                    &k("policy"),
                    "missing policy; say where matching connections go: a policy, a link, \
                     \"default\", \"main\", \"unreachable\" or \"blackhole\"",
                );
                None
            }
            Some(p) => self.rule_target(p, &k("policy"), link_names, policy_names),
        };
        let fallback = match &raw.fallback {
            None => Some(None),
            Some(f) => {
                let parsed = self.fallback(f, &k("fallback"));
                if let Some(t) = &target {
                    if !matches!(t, RuleTarget::Link(_)) {
                        self.dep_error(
                            f.span(),
                            &k("fallback"),
                            "a rule's fallback applies only when its policy is a single link; \
                             set fallback in the policy's [policies.<name>] table instead, or \
                             remove it",
                        );
                    }
                }
                parsed.map(Some)
            }
        };

        // A rule whose selectors share no address family can never match; that is
        // always a mistake (e.g. an IPv4 source with protocol icmpv6).
        if let (Some(src), Some(dst), Some(proto)) = (&source, &destination, protocol) {
            if let Some(problem) = impossible_families(src, dst, proto) {
                self.dep_error(table_span, key, problem);
            }
        }

        if self.errors.len() > errors_before {
            return None;
        }
        Some(Rule {
            name: name?,
            source: source?,
            destination: destination?,
            protocol: protocol?,
            destination_port: match ports {
                None => Vec::new(),
                Some(p) => p?,
            },
            input_interface: input_interface.flatten(),
            user: user.flatten(),
            cgroup: cgroup.flatten(),
            target: target?,
            fallback: fallback?,
            log: raw.log.as_ref().is_some_and(|l| *l.get_ref()),
        })
    }

    /// A rule's prefix list; absent means no selector (matches all). `None`: an entry
    /// was wrong.
    pub(super) fn prefixes(&mut self, list: Option<&[Spanned<String>]>) -> Option<Vec<IpNet>> {
        let list = list.unwrap_or(&[]);
        let mut ok = Vec::new();
        for v in list {
            // The key (a walk of the whole document) is only worked out for an error:
            // a thousand rules would otherwise make reading the file quadratic.
            if let Some(net) = parse_prefix(v.get_ref()).filter(|n| n.trunc() == *n) {
                ok.push(net);
                continue;
            }
            let key = self.key_at(&v.span());
            if let Some(net) = self.prefix(v, &key) {
                ok.push(net);
            }
        }
        (ok.len() == list.len()).then_some(ok)
    }

    pub(super) fn port_range(&mut self, v: &Spanned<IntOrString>, key: &str) -> Option<PortRange> {
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let range = match v.get_ref() {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|p| *p > 0)
                .map(|p| PortRange { first: p, last: p }),
            IntOrString::String(s) => match s.split_once('-') {
                None => port(s).map(|p| PortRange { first: p, last: p }),
                Some((a, b)) => match (port(a), port(b)) {
                    (Some(first), Some(last)) if first <= last => Some(PortRange { first, last }),
                    _ => None,
                },
            },
        };
        if range.is_none() {
            let shown = match v.get_ref() {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => format!("{s:?}"),
            };
            self.error(
                v.span(),
                key,
                format!(
                    "{shown} is not a port or port range; give a port 1..=65535 or a string \
                     \"first-last\" with first <= last, e.g. 5060 or \"10000-20000\""
                ),
            );
        }
        range
    }

    pub(super) fn cgroup(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        // Stored relative to the cgroup v2 root, the way nft's `socket cgroupv2` wants
        // it; a leading slash is accepted because that is how /proc shows cgroups.
        let path = v.get_ref().trim_start_matches('/');
        let valid = !path.is_empty()
            && !path.ends_with('/')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && !path.chars().any(|c| c.is_control() || c == '"');
        if !valid {
            self.error(
                v.span(),
                key,
                format!(
                    "{:?} is not a cgroup v2 path; write it relative to /sys/fs/cgroup, e.g. \
                     \"system.slice/openvpn.service\"",
                    v.get_ref()
                ),
            );
            return None;
        }
        Some(path.to_string())
    }

    pub(super) fn rule_target(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        link_names: &HashSet<&str>,
        policy_names: &HashSet<&str>,
    ) -> Option<RuleTarget> {
        let name = v.get_ref().as_str();
        Some(match name {
            // The built-in policy; the planner derives it with Config::default_policy.
            DEFAULT_POLICY => RuleTarget::Policy(DEFAULT_POLICY.to_string()),
            "main" => RuleTarget::Main,
            "unreachable" => RuleTarget::Unreachable,
            "blackhole" => RuleTarget::Blackhole,
            _ if policy_names.contains(name) => RuleTarget::Policy(name.to_string()),
            _ if link_names.contains(name) => RuleTarget::Link(name.to_string()),
            _ => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "there is no policy or link named {name:?}; define [policies.{name}] or \
                         [links.{name}], or use \"default\", \"main\", \"unreachable\" or \
                         \"blackhole\""
                    ),
                );
                return None;
            }
        })
    }

    /// `destination_port`, which needs protocol tcp or udp. `None`: absent;
    /// `Some(None)`: an entry was wrong.
    fn ports(
        &mut self,
        raw: &RawRule,
        key: &str,
        protocol: Option<Protocol>,
    ) -> Option<Option<Vec<PortRange>>> {
        let k = |s: &str| format!("{key}.{s}");
        let ports = raw.destination_port.as_ref().map(|list| {
            let mut ok = Vec::new();
            for p in list {
                let entry_key = self.key_at(&p.span());
                if let Some(range) = self.port_range(p, &entry_key) {
                    ok.push(range);
                }
            }
            (ok.len() == list.len()).then_some(ok)
        });
        if let (Some(protocol), Some(list)) = (protocol, &raw.destination_port) {
            if !list.is_empty() && !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
                let span = raw.protocol.as_ref().map_or(list[0].span(), |p| p.span());
                let shown = raw
                    .protocol
                    .as_ref()
                    .map_or("any", |p| p.get_ref().as_str());
                self.dep_error(
                    span,
                    &k("protocol"),
                    format!(
                        "destination_port needs protocol = \"tcp\" or \"udp\", not {shown:?}; \
                         ports exist only for those"
                    ),
                );
            }
        }
        ports
    }

    /// `user` and `cgroup` match only what the router sends, which
    /// `local_traffic = false` leaves to the main table.
    fn local_only_without_local_traffic(&mut self, raw: &RawRule, key: &str) {
        for (field, span) in [
            ("user", raw.user.as_ref().map(|u| u.span())),
            ("cgroup", raw.cgroup.as_ref().map(|c| c.span())),
        ] {
            if let Some(span) = span {
                self.error(
                    span,
                    &format!("{key}.{field}"),
                    format!(
                        "{field} matches only traffic the router itself sends, but \
                         settings.local_traffic = false leaves that traffic alone, so this rule \
                         could never match; set local_traffic = true or remove the rule"
                    ),
                );
            }
        }
    }

    /// `user` and `cgroup` match only what the router sends, `input_interface` only
    /// what it receives: together they can never match.
    fn local_only_with_iif(&mut self, raw: &RawRule, key: &str) {
        if let Some(iif) = &raw.input_interface {
            for (field, span) in [
                ("user", raw.user.as_ref().map(|u| u.span())),
                ("cgroup", raw.cgroup.as_ref().map(|c| c.span())),
            ] {
                if let Some(span) = span {
                    self.error(
                        span,
                        &format!("{key}.{field}"),
                        format!(
                            "{field} matches only traffic the router itself sends, input_interface \
                             = {:?} only traffic it receives, so this rule could never match; \
                             split it into two rules",
                            iif.get_ref()
                        ),
                    );
                }
            }
        }
    }
}

/// Why a rule whose selectors share no address family can never match, if so.
fn impossible_families(src: &[IpNet], dst: &[IpNet], proto: Protocol) -> Option<String> {
    let by_proto = match proto {
        Protocol::Icmp => Families {
            v4: true,
            v6: false,
        },
        Protocol::Icmpv6 => Families {
            v4: false,
            v6: true,
        },
        _ => Families::BOTH,
    };
    let s = Families::of_prefixes(src);
    let d = Families::of_prefixes(dst);
    let none = Families {
        v4: false,
        v6: false,
    };
    (s.and(d).and(by_proto) == none).then(|| {
        format!(
            "this rule can never match: source is {}, destination {}, protocol {}; \
             split it by address family",
            s.describe(),
            d.describe(),
            by_proto.describe()
        )
    })
}
