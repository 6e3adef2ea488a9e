//! multiwan's nftables table: rendered from the closed IR in `plan::nft` into one JSON
//! batch (one kernel transaction) and applied through the `nft` binary.
//!
//! The installed table carries the digest of the IR it was made from (a rule comment in
//! the regular chain `plan`), so an apply whose IR did not change reads one listing and
//! touches nothing. When it did change, the batch flushes the table and rewrites it:
//! named counters are never deleted unless their link left the config, so they keep
//! counting across applies (`flush table` leaves counters alone; checked on the kernel).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use nftables::batch::Batch;
use nftables::expr::{
    self, BinaryOperation, Expression, Fib, FibFlag, FibResult, JHash, Meta, MetaKey,
    NamedExpression, NgMode, Numgen, Payload, PayloadField, Prefix, Range, SetItem, Socket,
    SocketAttr, TcpOption, CT, RT,
};
use nftables::helper::{self, NftablesError, DEFAULT_NFT};
use nftables::schema::{
    self, FlushObject, NfCmd, NfListObject, Nftables, SetFlag, SetType, SetTypeValue,
};
use nftables::stmt::{
    self, Counter, JumpTarget, Mangle, Operator, Reject, RejectType, Statement, VerdictMap,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};
use serde_json::Value;
use sha2::Digest;

use super::error::{KernelError, Result};
use crate::plan::nft::{
    Action, BaseChain, ChainKind, Cmp, HashKey, Hook, IpVersion, MarkKind, Match, NftChain,
    NftRule, NftTable, SetElements, Verdict,
};

/// The regular chain whose only rule carries the digest as its comment.
pub const PLAN_CHAIN: &str = "plan";

/// What is installed now under the table's name, from one `nft -j list table`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// The table exists at all.
    pub table: bool,
    /// The digest stored in chain `plan`, if any.
    pub digest: Option<String>,
    /// Chains by name; `None` for a regular chain.
    pub chains: BTreeMap<String, Option<BaseChain>>,
    /// Named sets by name, with their type as nft lists it (`ipv4_addr`) and whether
    /// they have the `interval` flag.
    pub sets: BTreeMap<String, (String, bool)>,
    /// Named maps (multiwan makes none now; ones found are removed).
    pub maps: BTreeSet<String>,
    /// Named counters with their packet count.
    pub counters: BTreeMap<String, u64>,
}

/// The whole ruleset of this network namespace as nft's JSON (for `check`, which looks
/// for other tables using multiwan's mark bits).
pub fn list_ruleset_json() -> Result<String> {
    helper::get_current_ruleset_raw(DEFAULT_NFT, ["list", "ruleset"])
        .map_err(|e| KernelError::nft("listing the ruleset".to_string(), e))
}

impl Existing {
    /// What installing `table` left in the kernel, as [`Existing::read`] would find it
    /// (counter values unknown: 0).
    pub fn from_table(table: &NftTable) -> Existing {
        let mut chains: BTreeMap<String, Option<BaseChain>> = table
            .chains
            .iter()
            .map(|c| (c.name.clone(), c.hook))
            .collect();
        chains.insert(PLAN_CHAIN.to_string(), None);
        Existing {
            table: true,
            digest: Some(table.digest.clone()),
            chains,
            sets: table
                .sets
                .iter()
                .map(|x| (x.name.clone(), set_shape(&x.elements)))
                .collect(),
            maps: BTreeSet::new(),
            counters: table.counters.iter().map(|c| (c.clone(), 0)).collect(),
        }
    }

    /// Reads what is installed as `table inet <name>` (an empty `Existing` if absent).
    pub fn read(name: &str) -> Result<Existing> {
        let args = ["list", "table", "inet", name];
        match helper::get_current_ruleset_raw(DEFAULT_NFT, args) {
            Ok(json) => Existing::parse(name, &json),
            Err(NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(Existing::default())
            }
            Err(e) => Err(KernelError::nft(format!("listing table inet {name}"), e)),
        }
    }

    /// Reads the JSON that `nft -j list table inet <name>` printed. Parsed as plain
    /// JSON, not through the crate's schema: counters exceed its u32 fields, and rules
    /// someone else added may hold expressions the schema lacks.
    pub fn parse(name: &str, json: &str) -> Result<Existing> {
        let bad = |detail: String| KernelError::NftListing {
            table: name.to_string(),
            detail,
        };
        let v: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let objects = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `nftables` array".into()))?;
        let mut ex = Existing::default();
        let s = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        for obj in objects {
            let Some((kind, o)) = obj.as_object().and_then(|m| m.iter().next()) else {
                continue;
            };
            // Only this table's objects (the listing holds only them, but be sure).
            if kind != "metainfo" && (s(o, "family").as_deref() != Some("inet")) {
                continue;
            }
            let in_table = s(o, "table").as_deref() == Some(name);
            match kind.as_str() {
                "table" if s(o, "name").as_deref() == Some(name) => ex.table = true,
                "chain" if in_table => {
                    let Some(cname) = s(o, "name") else { continue };
                    ex.chains.insert(cname, base_chain_of(o));
                }
                "set" if in_table => {
                    let Some(sname) = s(o, "name") else { continue };
                    let ty = match o.get("type") {
                        Some(Value::String(t)) => t.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    let interval = o
                        .get("flags")
                        .map(|f| match f {
                            Value::Array(a) => a.iter().any(|x| x == "interval"),
                            Value::String(x) => x == "interval",
                            _ => false,
                        })
                        .unwrap_or(false);
                    ex.sets.insert(sname, (ty, interval));
                }
                "map" if in_table => {
                    if let Some(m) = s(o, "name") {
                        ex.maps.insert(m);
                    }
                }
                "counter" if in_table => {
                    let Some(c) = s(o, "name") else { continue };
                    let packets = o.get("packets").and_then(Value::as_u64).unwrap_or(0);
                    ex.counters.insert(c, packets);
                }
                "rule" if in_table && s(o, "chain").as_deref() == Some(PLAN_CHAIN) => {
                    if let Some(c) = s(o, "comment") {
                        ex.digest = Some(c);
                    }
                }
                _ => {}
            }
        }
        Ok(ex)
    }
}

fn base_chain_of(o: &Value) -> Option<BaseChain> {
    let kind = match o.get("type")?.as_str()? {
        "filter" => ChainKind::Filter,
        "nat" => ChainKind::Nat,
        "route" => ChainKind::Route,
        _ => return None,
    };
    let hook = match o.get("hook")?.as_str()? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    let priority = o.get("prio")?.as_i64()? as i32;
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}

/// Checks what the IR allows but nft does not; [`to_batch`] is total and relies on it.
pub fn validate(table: &NftTable) -> Result<()> {
    let invalid = |why: String| KernelError::Invalid {
        what: format!("nft table {}", table.name),
        why,
    };
    let mut names = HashSet::new();
    for c in &table.chains {
        if c.name == PLAN_CHAIN {
            return Err(invalid(format!(
                "chain name `{PLAN_CHAIN}` is reserved for the digest"
            )));
        }
        if !names.insert(c.name.as_str()) {
            return Err(invalid(format!("chain `{}` listed twice", c.name)));
        }
        for r in &c.rules {
            for a in &r.actions {
                let in_map = match a {
                    Action::CtMarkVmap { entries, .. } => {
                        entries.iter().map(|(_, v)| v).collect::<Vec<_>>()
                    }
                    Action::IifnameVmap(e)
                    | Action::OifnameVmap(e)
                    | Action::DaddrVmap { entries: e, .. } => e.iter().map(|(_, v)| v).collect(),
                    Action::NumgenVmap { entries, .. } | Action::JhashVmap { entries, .. } => {
                        entries.iter().map(|(_, v)| v).collect()
                    }
                    _ => vec![],
                };
                if in_map.contains(&&Verdict::RejectHostUnreachable) {
                    return Err(invalid(format!(
                        "chain `{}`: reject inside a verdict map",
                        c.name
                    )));
                }
                // The nftables crate writes these as bare strings, which nft 1.0.6's
                // JSON parser refuses inside a map ("symbolic verdict expressions").
                if in_map
                    .iter()
                    .any(|v| matches!(v, Verdict::Accept | Verdict::Drop | Verdict::Return))
                {
                    return Err(invalid(format!(
                        "chain `{}`: accept, drop or return inside a verdict map",
                        c.name
                    )));
                }
            }
        }
    }
    Ok(())
}

fn s(x: &str) -> Cow<'static, str> {
    Cow::Owned(x.to_string())
}

fn family() -> NfFamily {
    NfFamily::INet
}

fn table_obj(name: &str) -> schema::Table<'static> {
    schema::Table {
        family: family(),
        name: s(name),
        handle: None,
    }
}

fn chain_obj(table: &str, name: &str, hook: Option<BaseChain>) -> schema::Chain<'static> {
    let mut c = schema::Chain {
        family: family(),
        table: s(table),
        name: s(name),
        ..Default::default()
    };
    if let Some(b) = hook {
        c._type = Some(match b.kind {
            ChainKind::Filter => NfChainType::Filter,
            ChainKind::Nat => NfChainType::NAT,
            ChainKind::Route => NfChainType::Route,
        });
        c.hook = Some(match b.hook {
            Hook::Prerouting => NfHook::Prerouting,
            Hook::Input => NfHook::Input,
            Hook::Forward => NfHook::Forward,
            Hook::Output => NfHook::Output,
            Hook::Postrouting => NfHook::Postrouting,
        });
        c.prio = Some(b.priority);
        c.policy = Some(NfChainPolicy::Accept);
    }
    c
}

fn set_shape(e: &SetElements) -> (String, bool) {
    match e {
        SetElements::Ipv4(_) => ("ipv4_addr".into(), true),
        SetElements::Ipv6(_) => ("ipv6_addr".into(), true),
    }
}

fn set_obj(table: &str, name: &str, elements: Option<&SetElements>) -> schema::Set<'static> {
    let (ty, elem) = match elements {
        Some(SetElements::Ipv4(nets)) => (
            SetType::Ipv4Addr,
            nets.iter()
                .map(|n| net_expr(n.addr().into(), n.prefix_len(), 32))
                .collect::<Vec<_>>(),
        ),
        Some(SetElements::Ipv6(nets)) => (
            SetType::Ipv6Addr,
            nets.iter()
                .map(|n| net_expr(n.addr().into(), n.prefix_len(), 128))
                .collect(),
        ),
        None => (SetType::Ipv4Addr, vec![]),
    };
    schema::Set {
        family: family(),
        table: s(table),
        name: s(name),
        set_type: SetTypeValue::Single(ty),
        flags: Some(HashSet::from([SetFlag::Interval])),
        elem: (!elem.is_empty()).then(|| Cow::Owned(elem)),
        ..Default::default()
    }
}

fn counter_obj(table: &str, name: &str) -> schema::Counter<'static> {
    schema::Counter {
        family: family(),
        table: s(table),
        name: s(name),
        handle: None,
        packets: None,
        bytes: None,
    }
}

/// An address with a prefix length; a full-length prefix is the plain address, as nft
/// lists it.
fn net_expr(addr: std::net::IpAddr, len: u8, full: u8) -> Expression<'static> {
    let a = Expression::String(s(&addr.to_string()));
    if len == full {
        a
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(a),
            len: len as u32,
        }))
    }
}

/// One element of `ip saddr { … }`: `a.b.c.d`, `a.b.c.d/n` or `a-b`, as the text form
/// takes it.
fn net_text_expr(text: &str) -> Expression<'static> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        let full = if net.addr().is_ipv4() { 32 } else { 128 };
        return net_expr(net.addr(), net.prefix_len(), full);
    }
    if let Some((a, b)) = text.split_once('-') {
        return Expression::Range(Box::new(Range {
            range: [
                Expression::String(s(a.trim())),
                Expression::String(s(b.trim())),
            ],
        }));
    }
    Expression::String(s(text))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: s(key),
        family: None,
        dir: None,
    }))
}

fn ct_mark() -> Expression<'static> {
    ct("mark")
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: s(protocol),
            field: s(field),
        },
    )))
}

fn ip_proto(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "ip",
        IpVersion::V6 => "ip6",
    }
}

fn and(a: Expression<'static>, b: Expression<'static>) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(a, b)))
}

fn set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(stmt::Match { left, right, op })
}

fn op(c: Cmp) -> Operator {
    match c {
        Cmp::Eq => Operator::EQ,
        Cmp::Ne => Operator::NEQ,
    }
}

fn match_stmt(m: &Match) -> Statement<'static> {
    match m {
        Match::CtMark { mask, cmp, value } => matches(
            and(ct_mark(), Expression::Number(*mask)),
            op(*cmp),
            Expression::Number(*value),
        ),
        Match::MetaMark { mask, cmp, value } => matches(
            and(meta(MetaKey::Mark), Expression::Number(*mask)),
            op(*cmp),
            Expression::Number(*value),
        ),
        Match::CtStateNew(cmp) => matches(
            Expression::Named(NamedExpression::CT(CT {
                key: s("state"),
                family: None,
                dir: None,
            })),
            match cmp {
                Cmp::Eq => Operator::IN,
                Cmp::Ne => Operator::NEQ,
            },
            Expression::String(s("new")),
        ),
        Match::IifLoopback => matches(
            meta(MetaKey::Iif),
            Operator::EQ,
            Expression::String(s("lo")),
        ),
        Match::Iifname { cmp, names } => matches(
            meta(MetaKey::Iifname),
            op(*cmp),
            set(names.iter().map(|n| Expression::String(s(n))).collect()),
        ),
        Match::Oifname(n) => matches(
            meta(MetaKey::Oifname),
            Operator::EQ,
            Expression::String(s(n)),
        ),
        Match::Nfproto(v) => matches(
            meta(MetaKey::Nfproto),
            Operator::EQ,
            Expression::String(s(match v {
                IpVersion::V4 => "ipv4",
                IpVersion::V6 => "ipv6",
            })),
        ),
        Match::DaddrInSet { version, set } => matches(
            payload(ip_proto(*version), "daddr"),
            Operator::EQ,
            Expression::String(s(&format!("@{set}"))),
        ),
        Match::FibDaddrLocal => matches(
            Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: HashSet::from([FibFlag::Daddr]),
            })),
            Operator::EQ,
            Expression::String(s("local")),
        ),
        Match::Saddr { version, nets } => matches(
            payload(ip_proto(*version), "saddr"),
            Operator::EQ,
            set(nets.iter().map(|n| net_text_expr(n)).collect()),
        ),
        Match::Daddr { version, nets } => matches(
            payload(ip_proto(*version), "daddr"),
            Operator::EQ,
            set(nets.iter().map(|n| net_text_expr(n)).collect()),
        ),
        Match::L4Proto(p) => matches(
            meta(MetaKey::L4proto),
            Operator::EQ,
            Expression::Number(*p as u32),
        ),
        Match::ThDport(ranges) => matches(
            payload("th", "dport"),
            Operator::EQ,
            set(ranges
                .iter()
                .map(|(a, b)| range_expr((*a as u32, *b as u32)))
                .collect()),
        ),
        Match::TcpSyn => matches(
            and(
                payload("tcp", "flags"),
                Expression::List(vec![
                    Expression::String(s("syn")),
                    Expression::String(s("rst")),
                ]),
            ),
            Operator::EQ,
            Expression::String(s("syn")),
        ),
        Match::SkUid(uid) => matches(meta(MetaKey::Skuid), Operator::EQ, Expression::Number(*uid)),
        // nft 1.0.6 parses neither `cgroupv2` nor its `level` in JSON: a table that has
        // this match is sent as text (see [`to_batch`]), so this rendering is never
        // loaded; it exists to keep the JSON renderer total.
        Match::SocketCgroupv2 { path, .. } => matches(
            Expression::Named(NamedExpression::Socket(Socket {
                key: Cow::Owned(SocketAttr::Cgroupv2),
            })),
            Operator::EQ,
            Expression::String(s(path)),
        ),
    }
}

fn range_expr((first, last): (u32, u32)) -> Expression<'static> {
    if first == last {
        Expression::Number(first)
    } else {
        Expression::Range(Box::new(Range {
            range: [Expression::Number(first), Expression::Number(last)],
        }))
    }
}

fn target(chain: &str) -> JumpTarget<'static> {
    JumpTarget { target: s(chain) }
}

/// A verdict as the data of a verdict map. `reject` cannot be one ([`validate`] refuses
/// it); it is rendered as a jump to a chain that does not exist, so nft fails loudly.
fn verdict_expr(v: &Verdict) -> Expression<'static> {
    Expression::Verdict(match v {
        Verdict::Accept => expr::Verdict::Accept,
        Verdict::Drop => expr::Verdict::Drop,
        Verdict::Return => expr::Verdict::Return,
        Verdict::Jump(c) => expr::Verdict::Jump(target(c)),
        Verdict::Goto(c) => expr::Verdict::Goto(target(c)),
        Verdict::RejectHostUnreachable => {
            expr::Verdict::Jump(target("reject-is-not-allowed-in-a-verdict-map"))
        }
    })
}

fn verdict_stmt(v: &Verdict) -> Statement<'static> {
    match v {
        Verdict::Accept => Statement::Accept(None),
        Verdict::Drop => Statement::Drop(None),
        Verdict::Return => Statement::Return(None),
        Verdict::Jump(c) => Statement::Jump(target(c)),
        Verdict::Goto(c) => Statement::Goto(target(c)),
        Verdict::RejectHostUnreachable => Statement::Reject(Some(Reject::new(
            Some(RejectType::ICMPX),
            Some(RejectCode::HostUnreach),
        ))),
    }
}

fn vmap(
    key: Expression<'static>,
    entries: Vec<(Expression<'static>, Expression<'static>)>,
) -> Statement<'static> {
    Statement::VerdictMap(VerdictMap {
        key,
        data: Expression::Named(NamedExpression::Set(
            entries
                .into_iter()
                .map(|(k, v)| SetItem::Mapping(k, v))
                .collect(),
        )),
    })
}

fn action_stmt(a: &Action) -> Statement<'static> {
    match a {
        Action::SetMark { kind, keep, value } => {
            let key = match kind {
                MarkKind::Meta => meta(MetaKey::Mark),
                MarkKind::Ct => ct_mark(),
            };
            Statement::Mangle(Mangle {
                key: key.clone(),
                value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                    and(key, Expression::Number(*keep)),
                    Expression::Number(*value),
                ]))),
            })
        }
        Action::Counter(name) => Statement::Counter(Counter::Named(s(name))),
        Action::AnonCounter => Statement::Counter(Counter::Anonymous(None)),
        Action::Masquerade => Statement::Masquerade(None),
        Action::ClampMssToPmtu => Statement::Mangle(Mangle {
            key: Expression::Named(NamedExpression::TcpOption(TcpOption {
                name: s("maxseg"),
                field: Some(s("size")),
            })),
            value: Expression::Named(NamedExpression::RT(RT {
                key: expr::RTKey::MTU,
                family: None,
            })),
        }),
        Action::Log { group, prefix } => Statement::Log(Some(stmt::Log {
            prefix: Some(s(prefix)),
            ..stmt::Log::new(group.map(u32::from))
        })),
        Action::CtMarkVmap { mask, entries } => vmap(
            and(ct_mark(), Expression::Number(*mask)),
            entries
                .iter()
                .map(|(v, verdict)| (Expression::Number(*v), verdict_expr(verdict)))
                .collect(),
        ),
        Action::IifnameVmap(entries) | Action::OifnameVmap(entries) => vmap(
            meta(if matches!(a, Action::IifnameVmap(_)) {
                MetaKey::Iifname
            } else {
                MetaKey::Oifname
            }),
            entries
                .iter()
                .map(|(n, verdict)| (Expression::String(s(n)), verdict_expr(verdict)))
                .collect(),
        ),
        Action::DaddrVmap { version, entries } => vmap(
            payload(ip_proto(*version), "daddr"),
            entries
                .iter()
                .map(|(net, verdict)| (net_text_expr(net), verdict_expr(verdict)))
                .collect(),
        ),
        Action::NumgenVmap { modulus, entries } => vmap(
            Expression::Named(NamedExpression::Numgen(Numgen {
                mode: NgMode::Random,
                ng_mod: *modulus,
                offset: None,
            })),
            entries
                .iter()
                .map(|(r, verdict)| (range_expr(*r), verdict_expr(verdict)))
                .collect(),
        ),
        Action::JhashVmap {
            key,
            modulus,
            seed,
            entries,
        } => {
            let expr = match key {
                HashKey::Saddr(v) => payload(ip_proto(*v), "saddr"),
                HashKey::SaddrDaddr(v) => Expression::Named(NamedExpression::Concat(vec![
                    payload(ip_proto(*v), "saddr"),
                    payload(ip_proto(*v), "daddr"),
                ])),
            };
            vmap(
                Expression::Named(NamedExpression::JHash(JHash {
                    hash_mod: *modulus,
                    offset: None,
                    expr: Box::new(expr),
                    // Always explicit: without a seed jhash gets a random one per load,
                    // and every source would move to another link.
                    seed: Some(*seed),
                })),
                entries
                    .iter()
                    .map(|(r, verdict)| (range_expr(*r), verdict_expr(verdict)))
                    .collect(),
            )
        }
        Action::Verdict(v) => verdict_stmt(v),
    }
}

fn rule_obj(table: &str, chain: &str, r: &NftRule) -> schema::Rule<'static> {
    let expr: Vec<Statement<'static>> = r
        .matches
        .iter()
        .map(match_stmt)
        .chain(r.actions.iter().map(action_stmt))
        .collect();
    schema::Rule {
        family: family(),
        table: s(table),
        chain: s(chain),
        expr: Cow::Owned(expr),
        comment: r.comment.as_deref().map(s),
        ..Default::default()
    }
}

/// One kernel transaction, as JSON (the normal case) or as `nft -f` text: nft 1.0.6's
/// JSON parser knows neither `socket cgroupv2` nor its `level`, so a table that
/// matches cgroups is sent as text, made by the same renderer as `multiwan plan`.
#[derive(Debug, Clone)]
pub enum NftBatch {
    Json(Nftables<'static>),
    Text(String),
}

impl NftBatch {
    /// The JSON form, if this batch is JSON.
    pub fn json(&self) -> Option<&Nftables<'static>> {
        match self {
            NftBatch::Json(j) => Some(j),
            NftBatch::Text(_) => None,
        }
    }
}

/// Whether `table` uses an expression the JSON path cannot carry (see [`NftBatch`]).
pub fn needs_text(table: &NftTable) -> bool {
    table.chains.iter().any(|c| {
        c.rules.iter().any(|r| {
            r.matches
                .iter()
                .any(|m| matches!(m, Match::SocketCgroupv2 { .. }))
        })
    })
}

/// The batch that turns what `existing` says is installed into `table`. Pure: the
/// caller decides whether to send it (not at all when the digests match).
///
/// Order inside the one transaction: create the table if missing; flush it (all rules
/// go, which frees every chain, set and counter from references; counters keep their
/// values, sets keep their elements); delete what is not desired any more or changed
/// shape (a base chain with another hook, a set of another type); empty the sets that
/// stay; create what is missing; fill sets; add every rule; store the digest.
pub fn to_batch(table: &NftTable, existing: &Existing) -> NftBatch {
    if needs_text(table) {
        NftBatch::Text(to_text_batch(table, existing))
    } else {
        NftBatch::Json(to_json_batch(table, existing))
    }
}

/// What `existing` holds that `table` does not want as it is.
struct Stale<'a> {
    delete_chains: Vec<&'a str>,
    /// Same name and shape: emptied, then refilled.
    flush_sets: Vec<&'a str>,
    delete_sets: Vec<&'a str>,
    delete_maps: Vec<&'a str>,
    delete_counters: Vec<&'a str>,
    /// Counters `table` wants that are missing (present ones are never re-added, so
    /// they keep their counts).
    add_counters: Vec<&'a str>,
}

fn stale<'a>(table: &'a NftTable, existing: &'a Existing) -> Stale<'a> {
    let desired_chains: BTreeMap<&str, &NftChain> =
        table.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let delete_chains = existing
        .chains
        .iter()
        .filter(|(name, hook)| {
            *name != PLAN_CHAIN
                && !desired_chains
                    .get(name.as_str())
                    .is_some_and(|c| c.hook == **hook)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let desired_sets: BTreeMap<&str, &SetElements> = table
        .sets
        .iter()
        .map(|x| (x.name.as_str(), &x.elements))
        .collect();
    let (mut flush_sets, mut delete_sets) = (Vec::new(), Vec::new());
    for (name, shape) in &existing.sets {
        let same = desired_sets
            .get(name.as_str())
            .is_some_and(|e| set_shape(e) == *shape);
        if same {
            flush_sets.push(name.as_str());
        } else {
            delete_sets.push(name.as_str());
        }
    }
    let desired_counters: BTreeSet<&str> = table.counters.iter().map(String::as_str).collect();
    Stale {
        delete_chains,
        flush_sets,
        delete_sets,
        delete_maps: existing.maps.iter().map(String::as_str).collect(),
        delete_counters: existing
            .counters
            .keys()
            .filter(|n| !desired_counters.contains(n.as_str()))
            .map(String::as_str)
            .collect(),
        add_counters: table
            .counters
            .iter()
            .filter(|n| !existing.counters.contains_key(*n))
            .map(String::as_str)
            .collect(),
    }
}

/// [`to_batch`] as `nft -f` text: the same commands in the same order, rules written
/// by `render::nft_text` (the renderer of `multiwan plan`).
pub fn to_text_batch(table: &NftTable, existing: &Existing) -> String {
    use crate::render::nft_text;
    use std::fmt::Write;
    let t = format!("inet {}", table.name);
    let st = stale(table, existing);
    let mut out = String::new();
    let _ = writeln!(out, "add table {t}");
    let _ = writeln!(out, "flush table {t}");
    for c in &st.delete_chains {
        let _ = writeln!(out, "delete chain {t} {c}");
    }
    for x in &st.flush_sets {
        let _ = writeln!(out, "flush set {t} {x}");
    }
    for x in &st.delete_sets {
        let _ = writeln!(out, "delete set {t} {x}");
    }
    for m in &st.delete_maps {
        let _ = writeln!(out, "delete map {t} {m}");
    }
    for c in &st.delete_counters {
        let _ = writeln!(out, "delete counter {t} {c}");
    }
    for c in &st.add_counters {
        let _ = writeln!(out, "add counter {t} {c}");
    }
    for x in &table.sets {
        let (ty, elems) = nft_text::set_parts(&x.elements);
        let _ = writeln!(
            out,
            "add set {t} {} {{ type {ty}; flags interval; }}",
            x.name
        );
        if !elems.is_empty() {
            let _ = writeln!(out, "add element {t} {} {{ {} }}", x.name, elems.join(", "));
        }
    }
    for c in &table.chains {
        match &c.hook {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "add chain {t} {} {{ {} }}",
                    c.name,
                    nft_text::base_chain_spec(b)
                );
            }
            None => {
                let _ = writeln!(out, "add chain {t} {}", c.name);
            }
        }
    }
    let _ = writeln!(out, "add chain {t} {PLAN_CHAIN}");
    for c in &table.chains {
        for r in &c.rules {
            let _ = writeln!(out, "add rule {t} {} {}", c.name, nft_text::rule(r));
        }
    }
    let _ = writeln!(
        out,
        "add rule {t} {PLAN_CHAIN} return comment \"{}\"",
        table.digest
    );
    out
}

/// [`to_batch`] as JSON.
pub fn to_json_batch(table: &NftTable, existing: &Existing) -> Nftables<'static> {
    let t = table.name.as_str();
    let st = stale(table, existing);
    let mut b = Batch::new();
    b.add(NfListObject::Table(table_obj(t)));
    b.add_cmd(NfCmd::Flush(FlushObject::Table(table_obj(t))));
    for name in &st.delete_chains {
        b.delete(NfListObject::Chain(chain_obj(t, name, None)));
    }
    for name in &st.flush_sets {
        b.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set_obj(
            t, name, None,
        )))));
    }
    for name in &st.delete_sets {
        b.delete(NfListObject::Set(Box::new(set_obj(t, name, None))));
    }
    for name in &st.delete_maps {
        b.delete(NfListObject::Map(Box::new(schema::Map {
            family: family(),
            table: s(t),
            name: s(name),
            ..Default::default()
        })));
    }
    for name in &st.delete_counters {
        b.delete(NfListObject::Counter(counter_obj(t, name)));
    }
    for name in &st.add_counters {
        b.add(NfListObject::Counter(counter_obj(t, name)));
    }
    for x in &table.sets {
        b.add(NfListObject::Set(Box::new(set_obj(
            t,
            &x.name,
            Some(&x.elements),
        ))));
    }
    for c in &table.chains {
        b.add(NfListObject::Chain(chain_obj(t, &c.name, c.hook)));
    }
    b.add(NfListObject::Chain(chain_obj(t, PLAN_CHAIN, None)));
    for c in &table.chains {
        for r in &c.rules {
            b.add(NfListObject::Rule(rule_obj(t, &c.name, r)));
        }
    }
    let digest_rule = NftRule::new(vec![], vec![Action::Verdict(Verdict::Return)])
        .with_comment(table.digest.clone());
    b.add(NfListObject::Rule(rule_obj(t, PLAN_CHAIN, &digest_rule)));
    b.to_nftables()
}

/// Runs the batch through `nft -c` (the kernel validates the whole transaction, then it
/// is aborted): nothing changes.
pub fn check(batch: &NftBatch) -> Result<()> {
    let what = "the generated ruleset (check mode; a bug in multiwan, please report it)";
    match batch {
        NftBatch::Json(j) => helper::apply_ruleset_with_args(j, DEFAULT_NFT, ["-c"])
            .map_err(|e| KernelError::nft(what, e)),
        NftBatch::Text(t) => nft_text_stdin(t, &["-c"]).map_err(|e| KernelError::nft(what, e)),
    }
}

/// Sends the batch: one `nft -j -f -` (or `nft -f -`), one kernel transaction.
pub fn send(batch: &NftBatch, table: &str) -> Result<()> {
    let what = || format!("the ruleset for table inet {table}");
    match batch {
        NftBatch::Json(j) => helper::apply_ruleset(j).map_err(|e| KernelError::nft(what(), e)),
        NftBatch::Text(t) => nft_text_stdin(t, &[]).map_err(|e| KernelError::nft(what(), e)),
    }
}

/// `nft <args> -f -` with `text` on stdin.
fn nft_text_stdin(text: &str, args: &[&str]) -> std::result::Result<(), NftablesError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let nft = DEFAULT_NFT.unwrap_or("nft");
    let program = std::ffi::OsString::from(nft);
    let exec = |inner| NftablesError::NftExecution {
        program: program.clone(),
        inner,
    };
    let mut child = Command::new(nft)
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // nft reads all of stdin before it answers, so writing first cannot deadlock.
    let written = stdin.write_all(text.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().map_err(exec)?;
    written.map_err(exec)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftablesError::NftFailed {
            program,
            hint: "applying the ruleset".into(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Removes `table inet <name>` if it exists; returns whether it did.
pub fn delete_table(name: &str) -> Result<bool> {
    if !Existing::read(name)?.table {
        return Ok(false);
    }
    let mut b = Batch::new();
    // `add` first makes the delete succeed even if the table vanished in between.
    b.add(NfListObject::Table(table_obj(name)));
    b.delete(NfListObject::Table(table_obj(name)));
    helper::apply_ruleset(&b.to_nftables())
        .map_err(|e| KernelError::nft(format!("deleting table inet {name}"), e))?;
    Ok(true)
}

/// Packets per named counter of `table inet <name>` (empty if the table is absent).
pub fn read_counters(name: &str) -> Result<BTreeMap<String, u64>> {
    Ok(Existing::read(name)?.counters)
}

/// Where nft looks up the paths of `socket cgroupv2` matches.
const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// `statfs` type of a cgroup v2 hierarchy.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The id of cgroup v2 `path` (relative to /sys/fs/cgroup), if it exists there now.
fn cgroup2_id(path: &str) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let full = std::path::Path::new(CGROUP2_ROOT).join(path);
    let meta = std::fs::metadata(&full).ok()?;
    let c = std::ffi::CString::new(full.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs with a NUL-terminated path and a zeroed buffer of the right type.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.f_type as u64;
    (meta.is_dir() && magic == CGROUP2_SUPER_MAGIC).then(|| meta.ino())
}

/// The table as it can be loaded now. nft turns a `socket cgroupv2` path into the
/// cgroup's id when it loads the rule, and refuses the whole batch if the path does not
/// exist; so rules naming a cgroup that does not exist now (a service that is not
/// running, or no cgroup v2 hierarchy at /sys/fs/cgroup) are left out, with a note for
/// each, and the ids of the cgroups that do exist are folded into the digest: a cgroup
/// that appears, or comes back with a new id (a restarted service), makes the next
/// apply rewrite the table. Tables without cgroup matches are returned as they are.
pub fn with_live_cgroups(table: &NftTable) -> (Cow<'_, NftTable>, Vec<String>) {
    if !needs_text(table) {
        return (Cow::Borrowed(table), Vec::new());
    }
    let mut live = table.clone();
    let mut notes = Vec::new();
    let mut ids = BTreeMap::new();
    for chain in &mut live.chains {
        chain.rules.retain(|r| {
            r.matches.iter().all(|m| match m {
                Match::SocketCgroupv2 { path, .. } => {
                    let id = *ids.entry(path.clone()).or_insert_with(|| cgroup2_id(path));
                    if id.is_none() {
                        notes.push(format!(
                            "{}: cgroup {CGROUP2_ROOT}/{path} does not exist (or is not cgroup \
                             v2); not installed until it does",
                            r.comment.as_deref().unwrap_or("a rule")
                        ));
                    }
                    id.is_some()
                }
                _ => true,
            })
        });
    }
    notes.dedup();
    let text = format!("{ids:?}");
    let hash = sha2::Sha256::digest(text.as_bytes());
    live.digest = format!(
        "{}+cg{}",
        table.digest,
        hash.iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    (Cow::Owned(live), notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::nft::{NftSet, PRIORITY_MANGLE};

    fn table() -> NftTable {
        NftTable {
            name: "mw".into(),
            counters: vec!["new_isp1".into()],
            sets: vec![NftSet {
                name: "bypass4".into(),
                elements: SetElements::Ipv4(vec!["192.0.2.0/24".parse().unwrap()]),
            }],
            chains: vec![
                NftChain {
                    name: "mark_isp1".into(),
                    hook: None,
                    rules: vec![NftRule::new(
                        vec![],
                        vec![Action::Counter("new_isp1".into())],
                    )],
                },
                NftChain {
                    name: "prerouting".into(),
                    hook: Some(BaseChain {
                        kind: ChainKind::Filter,
                        hook: Hook::Prerouting,
                        priority: PRIORITY_MANGLE,
                    }),
                    rules: vec![NftRule::new(
                        vec![Match::IifLoopback],
                        vec![Action::Verdict(Verdict::Goto("mark_isp1".into()))],
                    )],
                },
            ],
            digest: "d1".into(),
        }
    }

    fn commands(n: &Nftables) -> Vec<String> {
        let v = serde_json::to_value(n).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let (cmd, body) = o.as_object().unwrap().iter().next().unwrap();
                let (kind, obj) = body.as_object().unwrap().iter().next().unwrap();
                let name = obj
                    .get("name")
                    .or_else(|| obj.get("chain"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!("{cmd} {kind} {name}")
            })
            .collect()
    }

    #[test]
    fn fresh_table_batch() {
        let cmds = commands(&to_json_batch(&table(), &Existing::default()));
        assert_eq!(
            cmds,
            vec![
                "add table mw",
                "flush table mw",
                "add counter new_isp1",
                "add set bypass4",
                "add chain mark_isp1",
                "add chain prerouting",
                "add chain plan",
                "add rule mark_isp1",
                "add rule prerouting",
                "add rule plan",
            ]
        );
    }

    #[test]
    fn existing_objects_are_kept_stale_ones_deleted() {
        let ex = Existing {
            table: true,
            digest: Some("old".into()),
            chains: BTreeMap::from([
                ("mark_isp1".into(), None),
                ("mark_isp9".into(), None),
                ("plan".into(), None),
                // Same name, other hook: recreated.
                (
                    "prerouting".into(),
                    Some(BaseChain {
                        kind: ChainKind::Filter,
                        hook: Hook::Forward,
                        priority: PRIORITY_MANGLE,
                    }),
                ),
            ]),
            sets: BTreeMap::from([
                ("bypass4".into(), ("ipv4_addr".into(), true)),
                ("old6".into(), ("ipv6_addr".into(), true)),
            ]),
            maps: BTreeSet::new(),
            counters: BTreeMap::from([("new_isp1".into(), 5), ("new_isp9".into(), 7)]),
        };
        let cmds = commands(&to_json_batch(&table(), &ex));
        assert_eq!(
            cmds,
            vec![
                "add table mw",
                "flush table mw",
                "delete chain mark_isp9",
                "delete chain prerouting",
                "flush set bypass4",
                "delete set old6",
                "delete counter new_isp9",
                "add set bypass4",
                "add chain mark_isp1",
                "add chain prerouting",
                "add chain plan",
                "add rule mark_isp1",
                "add rule prerouting",
                "add rule plan",
            ]
        );
    }

    /// The text batch (tables that match cgroups) runs the same commands in the same
    /// order as the JSON batch; only set elements are a command of their own.
    #[test]
    fn text_batch_mirrors_the_json_batch() {
        let ex = Existing {
            table: true,
            digest: Some("old".into()),
            chains: BTreeMap::from([("mark_isp9".into(), None), ("plan".into(), None)]),
            sets: BTreeMap::from([("old6".into(), ("ipv6_addr".into(), true))]),
            maps: BTreeSet::from(["oldmap".to_string()]),
            counters: BTreeMap::from([("new_isp9".into(), 7)]),
        };
        for existing in [Existing::default(), ex] {
            let text = to_text_batch(&table(), &existing);
            let from_text: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with("add element"))
                .map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    let name = if w[1] == "table" { w[3] } else { w[4] };
                    format!("{} {} {name}", w[0], w[1])
                })
                .collect();
            assert_eq!(
                from_text,
                commands(&to_json_batch(&table(), &existing)),
                "{text}"
            );
            assert!(text.contains("add element inet mw bypass4 { 192.0.2.0/24 }"));
            assert!(text.ends_with("add rule inet mw plan return comment \"d1\"\n"));
        }
        assert!(matches!(
            to_batch(&table(), &Existing::default()),
            NftBatch::Json(_)
        ));
        let mut t = table();
        t.chains[0].rules[0].matches.push(Match::SocketCgroupv2 {
            level: 2,
            path: "system.slice/openvpn.service".into(),
        });
        match to_batch(&t, &Existing::default()) {
            NftBatch::Text(text) => assert!(
                text.contains(
                    "add rule inet mw mark_isp1 socket cgroupv2 level 2 \"system.slice/openvpn.service\" counter name \"new_isp1\""
                ),
                "{text}"
            ),
            NftBatch::Json(_) => panic!("a cgroup match needs the text batch"),
        }
    }

    #[test]
    fn digest_is_the_plan_rule_comment() {
        let v = serde_json::to_value(to_json_batch(&table(), &Existing::default())).unwrap();
        let last = v["nftables"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["add"]["rule"]["chain"], "plan");
        assert_eq!(last["add"]["rule"]["comment"], "d1");
        assert_eq!(
            last["add"]["rule"]["expr"],
            serde_json::json!([{"return": null}])
        );
    }

    #[test]
    fn parses_a_listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "mw", "handle": 1}},
          {"counter": {"family": "inet", "name": "new_isp1", "table": "mw", "handle": 12, "packets": 8589934592, "bytes": 0}},
          {"set": {"family": "inet", "name": "bypass4", "table": "mw", "type": "ipv4_addr", "handle": 13, "flags": ["interval"]}},
          {"chain": {"family": "inet", "table": "mw", "name": "mark_isp1", "handle": 1}},
          {"chain": {"family": "inet", "table": "mw", "name": "prerouting", "handle": 7, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
          {"chain": {"family": "inet", "table": "mw", "name": "plan", "handle": 11}},
          {"rule": {"family": "inet", "table": "mw", "chain": "plan", "handle": 47, "comment": "abc", "expr": [{"return": null}]}}]}"#;
        let ex = Existing::parse("mw", json).unwrap();
        assert!(ex.table);
        assert_eq!(ex.digest.as_deref(), Some("abc"));
        assert_eq!(ex.counters["new_isp1"], 8589934592);
        assert_eq!(ex.sets["bypass4"], ("ipv4_addr".to_string(), true));
        assert_eq!(ex.chains["mark_isp1"], None);
        assert_eq!(
            ex.chains["prerouting"],
            Some(BaseChain {
                kind: ChainKind::Filter,
                hook: Hook::Prerouting,
                priority: -150
            })
        );
    }

    #[test]
    fn reject_in_a_verdict_map_is_refused() {
        let mut t = table();
        t.chains[0].rules.push(NftRule::new(
            vec![],
            vec![Action::IifnameVmap(vec![(
                "x".into(),
                Verdict::RejectHostUnreachable,
            )])],
        ));
        assert!(validate(&t).is_err());
        assert!(validate(&table()).is_ok());
    }
}
