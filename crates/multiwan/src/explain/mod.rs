//! `multiwan explain`: where a new connection would go, and why (SPEC §4).
//!
//! Pure: it reads the planner's output ([`Desired`]: the nft table, ip rules and routes
//! that `apply` installs), never a second model of the config. A forwarded connection
//! is walked through the planned nft table ([`nft_walk`]); a router-local one
//! (`--local`) through the planned ip rules and routes ([`local`]). The config is only
//! consulted for names and reasons: which `[[rules]]` entry an nft rule stands for, a
//! policy's members and whether a link masquerades.

pub mod jhash;
mod local;
pub mod nft_walk;
mod text;

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{Config, Fallback, Policy, PolicyMember, Protocol, Rule, RuleTarget, Sticky};
use crate::plan::marks::MarkLayout;
use crate::plan::{Desired, Facts, Family, InterfaceFacts, LinkSummary, Route, RouteKind};
use nft_walk::{Branch, End, Packet, Trace};

/// The connection to explain, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub from: Option<IpAddr>,
    pub to: IpAddr,
    pub proto: Option<Protocol>,
    pub dport: Option<u16>,
    /// Forwarded: the interface it arrives on (`None`: the first `lan` interface).
    pub iif: Option<String>,
    /// The router's own connection.
    pub local: bool,
}

/// What the answer is drawn from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    /// The planner's output for the link states below (the daemon's, or all in service).
    pub desired: &'a Desired,
    pub facts: &'a Facts,
    /// The link states came from a running daemon.
    pub daemon: bool,
}

/// The JSON object of SPEC §4.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub connection: Connection,
    pub daemon: bool,
    pub rule: Option<String>,
    pub policy: Option<String>,
    pub verdict: Verdict,
    pub link: Option<String>,
    pub candidates: Vec<Candidate>,
    pub fallback: Option<String>,
    pub table: Option<u32>,
    pub route: Option<String>,
    pub source: Option<String>,
    pub mark: Option<String>,
    pub why: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Connection {
    pub from: Option<String>,
    pub to: String,
    pub proto: Option<String>,
    pub dport: Option<u16>,
    pub iif: Option<String>,
    pub local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Link,
    Split,
    Main,
    Unreachable,
    Blackhole,
    Fallback,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Link => "link",
            Verdict::Split => "split",
            Verdict::Main => "main",
            Verdict::Unreachable => "unreachable",
            Verdict::Blackhole => "blackhole",
            Verdict::Fallback => "fallback",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub link: String,
    pub state: String,
    pub priority: u32,
    pub share_pct: f64,
}

/// Where the links' interfaces do not exist (explaining a config on another machine,
/// as `plan` can), gives each a stand-in so the planner takes the link as in service:
/// its address and gateway are the unspecified address, which the answer shows as
/// unknown (`null`). Returns the stand-ins' interface names.
pub fn assume_absent_interfaces(config: &Config, facts: &mut Facts) -> Vec<String> {
    let mut absent = Vec::new();
    for link in config.links.iter().filter(|l| l.enabled) {
        if facts.interfaces.contains_key(&link.interface) {
            continue;
        }
        facts.interfaces.insert(
            link.interface.clone(),
            InterfaceFacts {
                ifindex: 0,
                admin_up: true,
                carrier: true,
                addresses: vec![IpNet::from(IpAddr::from(Ipv4Addr::UNSPECIFIED))],
                default_gateway4: Some(Ipv4Addr::UNSPECIFIED),
                default_gateway6: None,
            },
        );
        absent.push(link.interface.clone());
    }
    absent
}

/// Explains `query` against the planned state.
pub fn explain(inputs: &Inputs, query: &Query) -> Explanation {
    let mut e = if query.local {
        local::explain(inputs, query)
    } else {
        forwarded(inputs, query)
    };
    if e.source.as_deref() == Some("0.0.0.0") {
        e.source = None;
    }
    if e.route.as_deref().is_some_and(|r| r.contains(" 0.0.0.0 ")) {
        e.route = None;
    }
    for (name, i) in &inputs.facts.interfaces {
        if i.ifindex == 0 {
            e.why.push(format!(
                "interface {name} is not on this machine: its link is taken as in service, \
                 its address and gateway as unknown"
            ));
        }
    }
    if !inputs.daemon {
        e.why
            .push("no daemon answers: every enabled link with carrier is taken as in service, as `multiwan apply` installs it".into());
    }
    e
}

/// An answer with nothing decided yet.
fn blank(inputs: &Inputs, query: &Query, iif: Option<String>) -> Explanation {
    Explanation {
        connection: Connection {
            from: query.from.map(|a| a.to_string()),
            to: query.to.to_string(),
            proto: query.proto.map(|p| proto_name(p).to_string()),
            dport: query.dport,
            iif,
            local: query.local,
        },
        daemon: inputs.daemon,
        rule: None,
        policy: None,
        verdict: Verdict::Main,
        link: None,
        candidates: Vec::new(),
        fallback: None,
        table: None,
        route: None,
        source: None,
        mark: None,
        why: Vec::new(),
    }
}

pub fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Any => "any",
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Icmpv6 => "icmpv6",
    }
}

fn fallback_name(f: Fallback) -> &'static str {
    match f {
        Fallback::All => "all",
        Fallback::Unreachable => "unreachable",
        Fallback::Blackhole => "blackhole",
        Fallback::Main => "main",
    }
}

/// The interface a forwarded connection arrives on when `--iif` is not given.
fn default_iif(config: &Config) -> Option<String> {
    config
        .settings
        .lan
        .as_ref()
        .and_then(|l| l.first().cloned())
}

/// The router's own addresses, for `fib daddr type local`.
fn local_addrs(facts: &Facts) -> Vec<IpAddr> {
    facts
        .interfaces
        .values()
        .flat_map(|i| i.addresses.iter().map(|a| a.addr()))
        .collect()
}

/// What classification made of a forwarded connection.
struct Classified<'c> {
    rule: Option<&'c Rule>,
    policy: Option<Policy>,
    /// Some link of the policy is in service.
    policy_up: bool,
}

impl Classified<'_> {
    fn target(&self) -> Option<&RuleTarget> {
        self.rule.map(|r| &r.target)
    }

    fn policy_name(&self) -> String {
        self.policy
            .as_ref()
            .map(|p| display_policy(p, self.rule))
            .unwrap_or_default()
    }

    /// The policy's fallback applies.
    fn fallback(&self, e: &mut Explanation, f: Fallback) {
        e.verdict = Verdict::Fallback;
        e.fallback = Some(fallback_name(f).into());
        if self.policy.is_some() {
            e.why.push(format!(
                "policy {}: no link in service; its fallback {} applies",
                self.policy_name(),
                fallback_name(f)
            ));
        }
    }
}

fn forwarded(inputs: &Inputs, query: &Query) -> Explanation {
    let config = inputs.config;
    let iif = query.iif.clone().or_else(|| default_iif(config));
    let mut e = blank(inputs, query, iif.clone());
    let addrs = local_addrs(inputs.facts);
    let packet = Packet {
        iif: iif.as_deref(),
        saddr: query.from,
        daddr: query.to,
        proto: query.proto.and_then(Protocol::number),
        dport: query.dport,
        local_addrs: &addrs,
    };
    let (end, trace) = nft_walk::walk(&inputs.desired.nft, "prerouting", &packet);
    let rule = matched_rule(config, &trace, query);
    let policy = policy_of(config, rule, &trace);
    let c = Classified {
        rule,
        policy_up: policy
            .as_ref()
            .is_some_and(|p| p.members.iter().any(|m| state_of(inputs, &m.link) == "up")),
        policy,
    };
    e.rule = rule.map(|r| r.name.clone());
    e.policy = c.policy.as_ref().map(|p| display_policy(p, rule));
    for u in &trace.unknown {
        e.why.push(format!("not known, so not matched: {u}"));
    }
    match rule {
        Some(r) => e.why.push(format!(
            "rule {} matches ({})",
            r.name,
            rule_reason(r, query)
        )),
        None if c.policy.is_some() => e.why.push("no rule matches: the default policy".into()),
        None => {}
    }
    match end {
        End::Mark(m) if c.policy.is_none() && rule.is_none() => {
            unclassified(inputs, query, &mut e, m, &trace, iif.as_deref());
        }
        end => decide(inputs, query, &mut e, &end, &trace, &c),
    }
    e
}

/// A connection no rule or policy looked at: inbound on a link, or not policy-routed.
fn unclassified(
    inputs: &Inputs,
    query: &Query,
    e: &mut Explanation,
    mark: u32,
    trace: &Trace,
    iif: Option<&str>,
) {
    let marks = MarkLayout::new(inputs.config.settings.mark_mask);
    if let Some(l) = inputs
        .desired
        .links
        .iter()
        .find(|l| l.mark == mark && mark != 0)
    {
        e.verdict = Verdict::Link;
        e.why.push(format!(
            "it arrives on {}, link {}'s interface: answered through it",
            iif.unwrap_or("?"),
            l.name
        ));
        with_link(inputs, query, e, l, &marks);
        return;
    }
    e.verdict = Verdict::Main;
    e.table = Some(crate::plan::MAIN_TABLE);
    e.source = query.from.map(|a| a.to_string());
    e.why.push(bypass_reason(trace, iif, inputs.config));
}

/// The verdict of a classified connection, from where the walk ended.
fn decide(
    inputs: &Inputs,
    query: &Query,
    e: &mut Explanation,
    end: &End,
    trace: &Trace,
    c: &Classified,
) {
    let marks = MarkLayout::new(inputs.config.settings.mark_mask);
    let target = c.target();
    match end {
        End::Reject if target == Some(&RuleTarget::Unreachable) => {
            e.verdict = Verdict::Unreachable;
            e.why
                .push("refused at once (a TCP reset, or ICMP unreachable)".into());
        }
        End::Drop if target == Some(&RuleTarget::Blackhole) => {
            e.verdict = Verdict::Blackhole;
            e.why.push("dropped silently".into());
        }
        End::Reject => c.fallback(e, Fallback::Unreachable),
        End::Drop => c.fallback(e, Fallback::Blackhole),
        End::Mark(m) if *m == marks.main() => {
            if target == Some(&RuleTarget::Main) {
                e.verdict = Verdict::Main;
                e.why
                    .push("it bypasses multiwan: the main table routes it".into());
            } else {
                c.fallback(e, Fallback::Main);
            }
            e.table = Some(crate::plan::MAIN_TABLE);
            e.mark = Some(mark_text(*m, &marks));
            e.source = query.from.map(|a| a.to_string());
        }
        End::Mark(m) => {
            let Some(l) = inputs.desired.links.iter().find(|l| l.mark == *m) else {
                e.why.push(format!(
                    "the walk ended with mark {m:#x}, which no link has"
                ));
                return;
            };
            on_link(inputs, query, e, trace, c, l);
            e.candidates = candidates(inputs, c.policy.as_ref(), &share_by_mark(trace, *m));
            with_link(inputs, query, e, l, &marks);
            return;
        }
        End::Split(branches) => {
            if c.policy_up {
                e.verdict = Verdict::Split;
                e.why.push(format!(
                    "policy {}: new connections are shared by weight",
                    c.policy_name()
                ));
            } else {
                c.fallback(e, Fallback::All);
            }
            e.candidates = candidates(inputs, c.policy.as_ref(), branches);
            return;
        }
    }
    e.candidates = candidates(inputs, c.policy.as_ref(), &[]);
}

/// The walk ended on link `l`: by the policy's choice, its sticky hash, or its
/// fallback `all`.
fn on_link(
    inputs: &Inputs,
    query: &Query,
    e: &mut Explanation,
    trace: &Trace,
    c: &Classified,
    l: &LinkSummary,
) {
    if c.policy_up {
        e.verdict = Verdict::Link;
    } else {
        c.fallback(e, Fallback::All);
    }
    if let Some((branches, true)) = &trace.sticky {
        if c.policy_up && branches.len() > 1 {
            e.verdict = Verdict::Split;
        }
        e.why.push(format!(
            "sticky hashing ({}) of {} picks {}",
            sticky_name(c.policy.as_ref()),
            hash_input(query, c.policy.as_ref()),
            l.name
        ));
    } else if c.policy_up {
        e.why
            .push(in_service_reason(inputs, c.policy.as_ref(), c.rule, l));
    }
}

/// The shares a walk that ended on one link saw: the sticky map's, else all to it.
fn share_by_mark(trace: &Trace, mark: u32) -> Vec<Branch> {
    match &trace.sticky {
        Some((branches, _)) => branches.clone(),
        None => vec![Branch {
            share_pct: 100.0,
            mark,
        }],
    }
}

fn sticky_name(policy: Option<&Policy>) -> &'static str {
    match policy.map(|p| p.sticky) {
        Some(Sticky::Source) => "source",
        Some(Sticky::SourceDestination) => "source-destination",
        _ => "connection",
    }
}

fn hash_input(query: &Query, policy: Option<&Policy>) -> String {
    let from = query.from.map(|a| a.to_string()).unwrap_or_default();
    match policy.map(|p| p.sticky) {
        Some(Sticky::SourceDestination) => format!("{from} -> {}", query.to),
        _ => from,
    }
}

fn in_service_reason(
    inputs: &Inputs,
    policy: Option<&Policy>,
    rule: Option<&Rule>,
    l: &LinkSummary,
) -> String {
    let Some(p) = policy else {
        return format!("{} is in service", l.name);
    };
    let prio = p
        .members
        .iter()
        .find(|m| m.link == l.name)
        .map_or(0, |m| m.priority);
    let mut s = format!(
        "policy {}: {} (priority {prio}) is in service",
        display_policy(p, rule),
        l.name
    );
    let better: Vec<String> = p
        .members
        .iter()
        .filter(|m| m.priority < prio)
        .map(|m| format!("{} is {}", m.link, state_of(inputs, &m.link)))
        .collect();
    if !better.is_empty() {
        s.push_str(&format!(" ({})", better.join(", ")));
    }
    s
}

/// Why a connection from the LAN side was left alone.
fn bypass_reason(trace: &Trace, iif: Option<&str>, config: &Config) -> String {
    if let Some(c) = trace
        .comments
        .iter()
        .find(|c| c.contains("specific route") || c.contains("router itself"))
    {
        return format!("not policy-routed: {c}; the main table routes it");
    }
    if trace.chains.iter().any(|c| c == "classify") {
        return "not policy-routed: the main table has a specific route; it routes it".into();
    }
    match (iif, &config.settings.lan) {
        (None, _) => "no --iif given and no lan interface configured: not policy-routed".into(),
        (Some(i), _) => format!("{i} is not a lan interface: not policy-routed (main table)"),
    }
}

/// Table, route, source and mark of a connection that leaves through `l`.
fn with_link(
    inputs: &Inputs,
    query: &Query,
    e: &mut Explanation,
    l: &LinkSummary,
    marks: &MarkLayout,
) {
    e.link = Some(l.name.clone());
    e.table = Some(l.table);
    e.mark = Some(mark_text(l.mark, marks));
    let family = Family::of(&query.to);
    let route = link_route(inputs.desired, l.table, family);
    e.route = route.map(route_text);
    if e.route.is_none() {
        e.why.push(format!(
            "table {} has no route out in this family (interface or gateway unknown here)",
            l.table
        ));
    }
    let link = inputs.config.link(&l.name);
    let masq = link.is_some_and(|k| match family {
        Family::V4 => k.masquerade,
        Family::V6 => k.masquerade6,
    });
    e.source = if masq {
        let addr = link.and_then(|k| interface_address(inputs.facts, &k.interface, family));
        if let Some(a) = addr.filter(|a| !a.is_unspecified()) {
            e.why
                .push(format!("masqueraded to {a}, {}'s address", l.name));
        }
        addr.map(|a| a.to_string())
    } else {
        query.from.map(|a| a.to_string())
    };
}

/// The route a link's table gives (its own default route, else what stands behind it).
fn link_route(desired: &Desired, table: u32, family: Family) -> Option<&Route> {
    desired
        .routes
        .iter()
        .filter(|r| r.table == table && r.family == family)
        .min_by_key(|r| r.metric)
}

/// `default via 203.0.113.1 dev wan2` (as `ip route` prints it).
pub fn route_text(r: &Route) -> String {
    let full = crate::render::ip_text::route(r);
    let cut = format!("table {} ", r.table);
    match full.find(&cut) {
        Some(i) => full[i + cut.len()..].to_string(),
        None => full,
    }
}

fn mark_text(mark: u32, marks: &MarkLayout) -> String {
    format!("{mark:#x}/{:#x}", marks.mask())
}

/// The first address of `family` on `ifname`, as the kernel would pick it for a route
/// without `src` (the primary one).
fn interface_address(facts: &Facts, ifname: &str, family: Family) -> Option<IpAddr> {
    facts
        .interfaces
        .get(ifname)?
        .addresses
        .iter()
        .map(IpNet::addr)
        .find(|a| Family::of(a) == family)
}

fn state_of(inputs: &Inputs, link: &str) -> String {
    inputs
        .desired
        .links
        .iter()
        .find(|l| l.name == link)
        .map_or_else(|| "disabled".into(), |l| l.state.as_str().into())
}

/// The policy's members with their state, priority and share (by mark, from the
/// walk's branches).
fn candidates(inputs: &Inputs, policy: Option<&Policy>, shares: &[Branch]) -> Vec<Candidate> {
    let Some(p) = policy else {
        return Vec::new();
    };
    p.members
        .iter()
        .map(|m| {
            let mark = inputs
                .desired
                .links
                .iter()
                .find(|l| l.name == m.link)
                .map(|l| l.mark);
            Candidate {
                link: m.link.clone(),
                state: state_of(inputs, &m.link),
                priority: m.priority,
                share_pct: shares
                    .iter()
                    .filter(|b| Some(b.mark) == mark)
                    .map(|b| b.share_pct)
                    .fold(0.0, |a, b| a + b),
            }
        })
        .collect()
}

/// How a policy is named in the answer: a link target by its link's name.
fn display_policy(p: &Policy, rule: Option<&Rule>) -> String {
    match rule.map(|r| &r.target) {
        Some(RuleTarget::Link(l)) => l.clone(),
        _ => p.name.clone(),
    }
}

/// The `[[rules]]` entry the walk matched: named by its nft rule's comment, or, in a
/// verdict map of destination rules, the first such rule holding the destination.
fn matched_rule<'c>(config: &'c Config, trace: &Trace, query: &Query) -> Option<&'c Rule> {
    for c in &trace.comments {
        if let Some(name) = c.strip_prefix("rule ") {
            return config.rules.iter().find(|r| r.name == name);
        }
        if c.contains(" rules, ") {
            // Only rules of destination prefixes alone share such a map.
            return config.rules.iter().find(|r| {
                r.source.is_empty()
                    && r.protocol == Protocol::Any
                    && r.destination_port.is_empty()
                    && r.input_interface.is_none()
                    && r.user.is_none()
                    && r.cgroup.is_none()
                    && !r.log
                    && r.destination.iter().any(|n| n.contains(&query.to))
            });
        }
    }
    None
}

/// The policy the connection was classified into: the rule's target, else `default`
/// when the walk reached the default policy's chain.
fn policy_of(config: &Config, rule: Option<&Rule>, trace: &Trace) -> Option<Policy> {
    if let Some(r) = rule {
        return target_policy(config, &r.target);
    }
    trace
        .chains
        .iter()
        .any(|c| c.starts_with("policy_"))
        .then(|| config.default_policy())
}

/// The policy a rule's target stands for (a link target: that link alone).
fn target_policy(config: &Config, target: &RuleTarget) -> Option<Policy> {
    match target {
        RuleTarget::Policy(n) if n == crate::config::DEFAULT_POLICY => {
            Some(config.default_policy())
        }
        RuleTarget::Policy(n) => config.policy(n).cloned(),
        RuleTarget::Link(n) => {
            let link = config.link(n)?;
            Some(Policy {
                name: n.clone(),
                members: vec![PolicyMember {
                    link: n.clone(),
                    priority: link.priority,
                    weight: link.weight,
                }],
                sticky: Sticky::Connection,
                fallback: config.settings.fallback,
            })
        }
        _ => None,
    }
}

/// What of a rule the connection matched, for `why`.
fn rule_reason(r: &Rule, q: &Query) -> String {
    let mut parts = Vec::new();
    if let Some(i) = &r.input_interface {
        parts.push(format!("input interface {i}"));
    }
    let hit = |nets: &[IpNet], a: Option<IpAddr>| {
        a.and_then(|a| nets.iter().find(|n| n.contains(&a)))
            .map(|n| n.to_string())
    };
    if let Some(n) = hit(&r.source, q.from) {
        parts.push(format!("source {n}"));
    }
    if let Some(n) = hit(&r.destination, Some(q.to)) {
        parts.push(format!("destination {n}"));
    }
    if r.protocol != Protocol::Any {
        parts.push(proto_name(r.protocol).into());
    }
    if let Some(p) = q.dport.filter(|_| !r.destination_port.is_empty()) {
        parts.push(format!("port {p}"));
    }
    if let Some(u) = r.user {
        parts.push(format!("user {u}"));
    }
    if parts.is_empty() {
        parts.push("matches everything".into());
    }
    parts.join(", ")
}

/// The route kind as a verdict, for tables that end a lookup.
fn route_verdict(r: &Route) -> Option<Verdict> {
    match &r.kind {
        RouteKind::Unreachable => Some(Verdict::Unreachable),
        RouteKind::Blackhole => Some(Verdict::Blackhole),
        RouteKind::Unicast(_) => None,
    }
}

#[cfg(test)]
mod tests;
