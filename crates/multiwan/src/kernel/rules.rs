//! Policy routing rules in multiwan's priority range: dump, convert, add, delete.
//!
//! A rule has no key smaller than itself, so there is no replace: missing rules are
//! added first and stale ones deleted after the rest of the state is in place (decided
//! in [`super::diff`]). Every rule multiwan adds carries its protocol number
//! ([`RTPROT_MULTIWAN`], `FRA_PROTOCOL`); the kernel compares it when it looks for an
//! existing rule, so an identical foreign rule is neither "already there" nor deleted.

use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{DefaultNla, Nla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::{
    RuleAction, RuleAttribute, RuleFlags, RuleMessage, RulePortRange, RuleUidRange,
};
use netlink_packet_route::IpProtocol;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, IpVersion};

use super::error::{KernelError, Result};
use super::routes::{address_family, send};
use super::RTPROT_MULTIWAN;
use crate::plan::{Family, IpRule, RuleSelector};

const FRA_SPORT_MASK: u16 = 28;
const FRA_DPORT_MASK: u16 = 29;

fn is_full_mask(nla: &DefaultNla) -> bool {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    value.iter().all(|b| *b == 0xff)
}

/// The kernel's "no suppress_prefixlength" value (-1).
const SUPPRESS_NONE: u32 = u32::MAX;

/// A rule found in the owned priority range, with the message the kernel sent.
#[derive(Debug, Clone)]
pub struct InstalledRule {
    /// `None`: a rule the model cannot express (`not`, `oif`, `goto`, a TOS, another
    /// action…); if multiwan owns it (see [`super::diff`]), apply deletes it.
    pub rule: Option<IpRule>,
    pub msg: RuleMessage,
}

impl InstalledRule {
    /// A dumped rule, with the model's view of it.
    pub fn new(msg: RuleMessage) -> InstalledRule {
        InstalledRule {
            rule: from_message(&msg),
            msg,
        }
    }

    /// Whether it carries multiwan's protocol number.
    pub fn tagged(&self) -> bool {
        is_tagged(&self.msg)
    }

    pub fn priority(&self) -> u32 {
        priority_of(&self.msg)
    }
}

/// Whether a rule message carries multiwan's protocol number.
pub fn is_tagged(msg: &RuleMessage) -> bool {
    msg.attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::Protocol(p) if u8::from(*p) == RTPROT_MULTIWAN))
}

pub(crate) fn priority_of(msg: &RuleMessage) -> u32 {
    // The kernel leaves FRA_PRIORITY out for priority 0.
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

/// The rules with a priority in `lo..=hi`, both families, whoever added them.
pub async fn read(handle: &Handle, range: (u32, u32)) -> Result<Vec<InstalledRule>> {
    read_families(handle, range, &[Family::V4, Family::V6]).await
}

/// The rules of `families` with a priority in `lo..=hi`, whoever added them (rule dumps
/// cannot be filtered by the kernel, and there are few rules).
pub async fn read_families(
    handle: &Handle,
    (lo, hi): (u32, u32),
    families: &[Family],
) -> Result<Vec<InstalledRule>> {
    let mut out = Vec::new();
    for family in families {
        let version = match family {
            Family::V4 => IpVersion::V4,
            Family::V6 => IpVersion::V6,
        };
        let mut stream = handle.rule().get(version).execute();
        while let Some(item) = stream.next().await {
            let msg = item.map_err(|e| KernelError::netlink("dumping ip rules", e))?;
            let prio = priority_of(&msg);
            if (lo..=hi).contains(&prio) {
                out.push(InstalledRule::new(msg));
            }
        }
    }
    Ok(out)
}

fn net(addr: IpAddr, len: u8) -> Option<IpNet> {
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}

/// The model's view of a dumped rule, or `None` if the model cannot express it.
pub fn from_message(msg: &RuleMessage) -> Option<IpRule> {
    let h = &msg.header;
    let family = match h.family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    // `detached` flags are run-time status (the iif is missing now), not configuration.
    if h.action != RuleAction::ToTable || h.tos != 0 || h.flags.contains(RuleFlags::Invert) {
        return None;
    }
    let mut sel = RuleSelector::default();
    let mut table = h.table as u32;
    let mut priority = 0;
    let (mut mark, mut mask) = (None, None);
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Source(a) if h.src_len > 0 => sel.from = Some(net(*a, h.src_len)?),
            RuleAttribute::Destination(a) if h.dst_len > 0 => sel.to = Some(net(*a, h.dst_len)?),
            RuleAttribute::Source(_) | RuleAttribute::Destination(_) => {}
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::FwMask(m) => mask = Some(*m),
            RuleAttribute::Iifname(n) => sel.iif = Some(n.clone()),
            RuleAttribute::IpProtocol(p) => sel.ipproto = Some(u8::from(*p)).filter(|p| *p != 0),
            RuleAttribute::DestinationPortRange(r) => sel.dport = Some((r.start, r.end)),
            RuleAttribute::UidRange(r) => sel.uidrange = Some((r.start, r.end)),
            RuleAttribute::SuppressPrefixLen(n) => {
                sel.suppress_prefixlength = Some(*n).filter(|n| *n != SUPPRESS_NONE)
            }
            RuleAttribute::SuppressIfGroup(g) if *g == SUPPRESS_NONE => {}
            // Who installed it does not change what it does.
            RuleAttribute::Protocol(_) => {}
            RuleAttribute::L3MDev(false) => {}
            // 6.x kernels echo a port range's mask (FRA_SPORT_MASK, FRA_DPORT_MASK); a
            // full mask is what a plain range means.
            RuleAttribute::Other(nla)
                if matches!(nla.kind(), FRA_SPORT_MASK | FRA_DPORT_MASK) && is_full_mask(nla) => {}
            _ => return None,
        }
    }
    if mark.is_some() || mask.is_some() {
        sel.fwmark = Some((mark.unwrap_or(0), mask.unwrap_or(u32::MAX)));
    }
    Some(IpRule {
        family,
        priority,
        selector: sel,
        table,
    })
}

/// The message that adds `rule`.
pub fn to_message(rule: &IpRule) -> Result<RuleMessage> {
    let rule = normalized(rule);
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(rule.family);
    msg.header.action = RuleAction::ToTable;
    // As iproute2 does: ids above 255 only in FRA_TABLE, the header says "unspec".
    msg.header.table = if rule.table < 256 {
        rule.table as u8
    } else {
        0
    };
    let a = &mut msg.attributes;
    a.push(RuleAttribute::Table(rule.table));
    a.push(RuleAttribute::Priority(rule.priority));
    a.push(RuleAttribute::Protocol(RouteProtocol::from(
        RTPROT_MULTIWAN,
    )));
    let s = &rule.selector;
    for (net, is_src) in [(s.from, true), (s.to, false)] {
        let Some(net) = net else { continue };
        if Family::of(&net.addr()) != rule.family {
            return Err(KernelError::Invalid {
                what: format!("ip rule {}", describe(&rule)),
                why: "an address of the other family".into(),
            });
        }
        if is_src {
            msg.header.src_len = net.prefix_len();
            a.push(RuleAttribute::Source(net.addr()));
        } else {
            msg.header.dst_len = net.prefix_len();
            a.push(RuleAttribute::Destination(net.addr()));
        }
    }
    if let Some((mark, mask)) = s.fwmark {
        a.push(RuleAttribute::FwMark(mark));
        a.push(RuleAttribute::FwMask(mask));
    }
    if let Some(iif) = &s.iif {
        a.push(RuleAttribute::Iifname(iif.clone()));
    }
    if let Some(p) = s.ipproto {
        a.push(RuleAttribute::IpProtocol(IpProtocol::from(p)));
    }
    if let Some((start, end)) = s.dport {
        a.push(RuleAttribute::DestinationPortRange(RulePortRange {
            start,
            end,
        }));
    }
    if let Some((start, end)) = s.uidrange {
        a.push(RuleAttribute::UidRange(RuleUidRange { start, end }));
    }
    if let Some(n) = s.suppress_prefixlength {
        a.push(RuleAttribute::SuppressPrefixLen(n));
    }
    Ok(msg)
}

/// What the kernel keeps of a rule: `from all` is no `from`, prefixes hold no host bits.
pub(crate) fn normalized(r: &IpRule) -> IpRule {
    let mut r = r.clone();
    let fix = |n: Option<IpNet>| n.filter(|n| n.prefix_len() > 0).map(|n| n.trunc());
    r.selector.from = fix(r.selector.from);
    r.selector.to = fix(r.selector.to);
    r.selector.ipproto = r.selector.ipproto.filter(|p| *p != 0);
    r
}

/// Adds one rule. An identical rule already there counts as added.
pub async fn add(handle: &Handle, rule: &IpRule) -> Result<()> {
    let msg = to_message(rule)?;
    match send(
        handle,
        RouteNetlinkMessage::NewRule(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => Ok(()),
        Err(e) => Err(KernelError::netlink(
            format!("adding ip rule {}", describe(rule)),
            e,
        )),
    }
}

/// Deletes one rule by the message the kernel dumped (or, for a rule this apply added
/// itself, the message that added it).
pub async fn delete(handle: &Handle, msg: &RuleMessage, what: &str) -> Result<()> {
    match send(handle, RouteNetlinkMessage::DelRule(msg.clone()), 0).await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENOENT => Ok(()),
        Err(e) => Err(KernelError::netlink(format!("deleting ip rule {what}"), e)),
    }
}

/// `ip rule` style text of a rule, for logs and change lists.
pub fn describe(r: &IpRule) -> String {
    let s = &r.selector;
    let mut out = String::new();
    if r.family == Family::V6 {
        out.push_str("-6 ");
    }
    out.push_str(&format!(
        "{}: from {}",
        r.priority,
        s.from.map_or("all".to_string(), |n| n.to_string())
    ));
    if let Some(to) = s.to {
        out.push_str(&format!(" to {to}"));
    }
    if let Some((m, mask)) = s.fwmark {
        out.push_str(&format!(" fwmark {m:#x}/{mask:#x}"));
    }
    if let Some(iif) = &s.iif {
        out.push_str(&format!(" iif {iif}"));
    }
    if let Some(p) = s.ipproto {
        out.push_str(&format!(" ipproto {p}"));
    }
    if let Some((a, b)) = s.dport {
        out.push_str(&format!(" dport {a}-{b}"));
    }
    if let Some((a, b)) = s.uidrange {
        out.push_str(&format!(" uidrange {a}-{b}"));
    }
    out.push_str(&format!(" lookup {}", r.table));
    if let Some(n) = s.suppress_prefixlength {
        out.push_str(&format!(" suppress_prefixlength {n}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(priority: u32, table: u32, sel: RuleSelector) -> IpRule {
        IpRule {
            family: Family::V4,
            priority,
            selector: sel,
            table,
        }
    }

    #[test]
    fn message_round_trip() {
        let sel = RuleSelector {
            from: Some("192.0.2.0/24".parse().unwrap()),
            to: Some("198.51.100.0/24".parse().unwrap()),
            fwmark: Some((0x100, 0xff00)),
            iif: Some("lo".into()),
            ipproto: Some(6),
            dport: Some((443, 443)),
            uidrange: Some((1000, 1999)),
            suppress_prefixlength: None,
        };
        for r in [
            rule(1010, 356, sel),
            rule(
                1000,
                254,
                RuleSelector {
                    suppress_prefixlength: Some(0),
                    ..Default::default()
                },
            ),
        ] {
            assert_eq!(from_message(&to_message(&r).unwrap()), Some(r));
        }
    }
}
