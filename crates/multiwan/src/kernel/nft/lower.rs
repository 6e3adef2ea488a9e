//! Lowering the IR to the `nftables` crate's JSON schema: objects, expressions,
//! statements.

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::expr::{
    self, BinaryOperation, Expression, Fib, FibFlag, FibResult, JHash, Meta, MetaKey,
    NamedExpression, NgMode, Numgen, Payload, PayloadField, Prefix, Range, SetItem, Socket,
    SocketAttr, TcpOption, CT, RT,
};
use nftables::schema::{self, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{
    self, Counter, JumpTarget, Mangle, Operator, Reject, RejectType, Statement, VerdictMap,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};

use crate::plan::nft::{
    Action, BaseChain, ChainKind, Cmp, HashKey, Hook, IpVersion, MarkKind, Match, NftRule,
    SetElements, Verdict,
};

pub(super) fn s(x: &str) -> Cow<'static, str> {
    Cow::Owned(x.to_string())
}

pub(super) fn family() -> NfFamily {
    NfFamily::INet
}

pub(super) fn table_obj(name: &str) -> schema::Table<'static> {
    schema::Table {
        family: family(),
        name: s(name),
        handle: None,
    }
}

pub(super) fn chain_obj(
    table: &str,
    name: &str,
    hook: Option<BaseChain>,
) -> schema::Chain<'static> {
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

pub(super) fn set_shape(e: &SetElements) -> (String, bool) {
    match e {
        SetElements::Ipv4(_) => ("ipv4_addr".into(), true),
        SetElements::Ipv6(_) => ("ipv6_addr".into(), true),
    }
}

pub(super) fn set_obj(
    table: &str,
    name: &str,
    elements: Option<&SetElements>,
) -> schema::Set<'static> {
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

pub(super) fn counter_obj(table: &str, name: &str) -> schema::Counter<'static> {
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
pub(super) fn net_expr(addr: std::net::IpAddr, len: u8, full: u8) -> Expression<'static> {
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
pub(super) fn net_text_expr(text: &str) -> Expression<'static> {
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

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: s(key),
        family: None,
        dir: None,
    }))
}

pub(super) fn ct_mark() -> Expression<'static> {
    ct("mark")
}

pub(super) fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: s(protocol),
            field: s(field),
        },
    )))
}

pub(super) fn ip_proto(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "ip",
        IpVersion::V6 => "ip6",
    }
}

pub(super) fn and(a: Expression<'static>, b: Expression<'static>) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(a, b)))
}

pub(super) fn set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

pub(super) fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(stmt::Match { left, right, op })
}

pub(super) fn op(c: Cmp) -> Operator {
    match c {
        Cmp::Eq => Operator::EQ,
        Cmp::Ne => Operator::NEQ,
    }
}

pub(super) fn match_stmt(m: &Match) -> Statement<'static> {
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

pub(super) fn range_expr((first, last): (u32, u32)) -> Expression<'static> {
    if first == last {
        Expression::Number(first)
    } else {
        Expression::Range(Box::new(Range {
            range: [Expression::Number(first), Expression::Number(last)],
        }))
    }
}

pub(super) fn target(chain: &str) -> JumpTarget<'static> {
    JumpTarget { target: s(chain) }
}

/// A verdict as the data of a verdict map. `reject` cannot be one ([`validate`] refuses
/// it); it is rendered as a jump to a chain that does not exist, so nft fails loudly.
pub(super) fn verdict_expr(v: &Verdict) -> Expression<'static> {
    Expression::Verdict(match v {
        Verdict::Accept => expr::Verdict::Accept,
        Verdict::Drop => expr::Verdict::Drop,
        Verdict::Return => expr::Verdict::Return,
        Verdict::Jump(c) => expr::Verdict::Jump(target(c)),
        Verdict::Goto(c) => expr::Verdict::Goto(target(c)),
        Verdict::RejectHostUnreachable
        | Verdict::RejectIpv6AdminProhibited
        | Verdict::RejectTcpReset => {
            expr::Verdict::Jump(target("reject-is-not-allowed-in-a-verdict-map"))
        }
    })
}

pub(super) fn verdict_stmt(v: &Verdict) -> Statement<'static> {
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
        Verdict::RejectIpv6AdminProhibited => Statement::Reject(Some(Reject::new(
            Some(RejectType::ICMPv6),
            Some(RejectCode::AdminProhibited),
        ))),
        Verdict::RejectTcpReset => {
            Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None)))
        }
    }
}

pub(super) fn vmap(
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

pub(super) fn action_stmt(a: &Action) -> Statement<'static> {
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
        Action::Snat { version, addr } => Statement::SNAT(Some(stmt::NAT {
            addr: Some(Expression::String(s(&addr.to_string()))),
            family: Some(match version {
                IpVersion::V4 => stmt::NATFamily::IP,
                IpVersion::V6 => stmt::NATFamily::IP6,
            }),
            port: None,
            flags: None,
        })),
        // The crate has no `type_flags`: such a table goes as text (`needs_text`), and
        // a JSON rendering of it names the reason in a jump nft refuses, loudly.
        Action::SnatPrefix { .. } => Statement::Jump(target("snat-prefix-needs-a-text-batch")),
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

pub(super) fn rule_obj(table: &str, chain: &str, r: &NftRule) -> schema::Rule<'static> {
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
