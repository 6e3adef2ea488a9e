//! Routes in the tables multiwan uses: dump, convert to the model, install, delete.
//!
//! Routes are keyed by (family, table, dst, metric), the key under which the kernel
//! keeps at most one route; a route whose kind or next hops changed is sent again with
//! `NLM_F_REPLACE`, so the table never goes through a moment without it. Every route
//! multiwan installs carries its protocol number ([`RTPROT_MULTIWAN`]); what to change is
//! decided in [`super::diff`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use super::error::{KernelError, Result};
use super::RTPROT_MULTIWAN;
use crate::plan::{Family, NextHop, Route, RouteKind};

/// IPv6 stores metric 0 as 1024 (`IP6_RT_PRIO_USER`): compare as the kernel will store.
const IPV6_DEFAULT_METRIC: u32 = 1024;

/// A route found in a table multiwan uses, with the message the kernel sent (deleting
/// by sending it back removes exactly that route, whatever attributes the model lacks).
#[derive(Debug, Clone)]
pub struct InstalledRoute {
    /// `None`: a route the model cannot express (another type, a source prefix, a TOS);
    /// if multiwan owns it (see [`super::diff`]), apply deletes it.
    pub route: Option<Route>,
    pub msg: RouteMessage,
}

impl InstalledRoute {
    /// A dumped route, with the model's view of it.
    pub fn new(msg: RouteMessage, names: &BTreeMap<u32, String>) -> InstalledRoute {
        InstalledRoute {
            route: from_message(&msg, names),
            msg,
        }
    }

    /// Whether it carries multiwan's protocol number.
    pub fn tagged(&self) -> bool {
        is_tagged(&self.msg)
    }

    pub fn table(&self) -> u32 {
        table_of(&self.msg)
    }
}

/// Whether a route message carries multiwan's protocol number.
pub fn is_tagged(msg: &RouteMessage) -> bool {
    u8::from(msg.header.protocol) == RTPROT_MULTIWAN
}

pub(crate) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// The table a dumped route is in: `RTA_TABLE` when present (ids above 255 only travel
/// there), else the header byte.
pub(crate) fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(msg.header.table as u32)
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// Every route of one family in table `table` (kernel-filtered with strict checking on;
/// filtered here too for kernels without it).
pub(crate) async fn dump_table(
    handle: &Handle,
    family: Family,
    table: u32,
) -> Result<Vec<RouteMessage>> {
    let mut req = RouteMessage::default();
    req.header.address_family = address_family(family);
    req.attributes.push(RouteAttribute::Table(table));
    let mut all = dump(handle, req).await?;
    all.retain(|m| table_of(m) == table);
    Ok(all)
}

async fn dump(handle: &Handle, req: RouteMessage) -> Result<Vec<RouteMessage>> {
    let mut stream = handle.route().get(req).execute();
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(msg) => out.push(msg),
            // A table-filtered IPv4 dump of a table that does not exist yet.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENOENT => break,
            Err(e) => return Err(KernelError::netlink("dumping routes", e)),
        }
    }
    Ok(out)
}

/// The kernel's own tables, never read as multiwan's whatever a caller asks: reading them
/// as owned would let an apply or a flush delete the main table's routes.
pub(crate) fn is_kernel_table(t: u32) -> bool {
    matches!(t, 0 | 253..=255)
}

/// Every route tagged with multiwan's protocol number, in any table, of `families`.
///
/// One dump per family with the protocol in the request header: with netlink strict
/// checking on (the kernel connection turns it on), the kernel walks its tables and sends
/// only tagged routes, so 100k routes in main cost a kernel-side walk, not 100k messages
/// parsed here; an older kernel ignores the filter and this filters itself (exact either
/// way). The caller decides which of them this instance owns (their table).
pub async fn read_tagged(
    handle: &Handle,
    families: &[Family],
    names: &BTreeMap<u32, String>,
) -> Result<Vec<InstalledRoute>> {
    let mut out = Vec::new();
    for family in families {
        let mut req = RouteMessage::default();
        req.header.address_family = address_family(*family);
        req.header.protocol = RouteProtocol::from(RTPROT_MULTIWAN);
        for msg in dump(handle, req).await? {
            if is_tagged(&msg) && !is_kernel_table(table_of(&msg)) {
                out.push(InstalledRoute::new(msg, names));
            }
        }
    }
    Ok(out)
}

/// Every route of `families` in `tables` (tagged or not): one table-filtered dump per
/// table (the kernel filters with strict checking on; filtered here too for kernels
/// without it). The kernel's own tables are skipped.
pub async fn read_tables(
    handle: &Handle,
    tables: &[u32],
    families: &[Family],
    names: &BTreeMap<u32, String>,
) -> Result<Vec<InstalledRoute>> {
    let tables: BTreeSet<u32> = tables
        .iter()
        .copied()
        .filter(|t| !is_kernel_table(*t))
        .collect();
    let mut out = Vec::new();
    for family in families {
        for t in &tables {
            for msg in dump_table(handle, *family, *t).await? {
                out.push(InstalledRoute::new(msg, names));
            }
        }
    }
    Ok(out)
}

/// The model's view of a dumped route, or `None` if the model cannot express it.
pub fn from_message(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<Route> {
    let h = &msg.header;
    let family = match h.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    if h.source_prefix_length != 0 || h.tos != 0 {
        return None;
    }
    let mut dst_addr = None;
    let mut metric = 0;
    let mut gateway = None;
    let mut oif = None;
    let mut multipath = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst_addr = ip_of(a),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Via(RouteVia::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(hops) => multipath = Some(hops),
            RouteAttribute::Source(_) | RouteAttribute::Encap(_) | RouteAttribute::NhId(_) => {
                return None
            }
            _ => {}
        }
    }
    let dst_addr = dst_addr.unwrap_or(match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let dst = IpNet::new(dst_addr, h.destination_prefix_length)
        .ok()?
        .trunc();
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
    let kind = match h.kind {
        RouteType::Unicast => {
            let hops = match multipath {
                Some(hops) => hops
                    .iter()
                    .map(|nh| NextHop {
                        gateway: nh.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(a) => ip_of(a),
                            RouteAttribute::Via(RouteVia::Inet6(a)) => Some(IpAddr::V6(*a)),
                            _ => None,
                        }),
                        ifname: name(nh.interface_index),
                        ifindex: nh.interface_index,
                        // The kernel stores `ip route`'s weight minus one.
                        weight: nh.hops as u32 + 1,
                    })
                    .collect(),
                None => vec![NextHop {
                    gateway,
                    ifname: name(oif?),
                    ifindex: oif?,
                    weight: 1,
                }],
            };
            RouteKind::Unicast(hops)
        }
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::BlackHole => RouteKind::Blackhole,
        _ => return None,
    };
    Some(Route {
        family,
        table: table_of(msg),
        dst,
        metric,
        kind,
    })
}

/// The message that installs `route` (sent with `NLM_F_CREATE | NLM_F_REPLACE`).
pub fn to_message(route: &Route) -> Result<RouteMessage> {
    let invalid = |why: &str| KernelError::Invalid {
        what: format!("route {}", describe(route)),
        why: why.to_string(),
    };
    if Family::of(&route.dst.addr()) != route.family {
        return Err(invalid("destination of another address family"));
    }
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = address_family(route.family);
    h.destination_prefix_length = route.dst.prefix_len();
    // As iproute2 does: ids above 255 only in RTA_TABLE, the header says "unspec".
    h.table = if route.table < 256 {
        route.table as u8
    } else {
        0
    };
    h.protocol = RouteProtocol::from(RTPROT_MULTIWAN);
    h.scope = RouteScope::Universe;
    msg.attributes.push(RouteAttribute::Table(route.table));
    if route.dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                route.dst.trunc().addr(),
            )));
    }
    msg.attributes.push(RouteAttribute::Priority(route.metric));
    match &route.kind {
        RouteKind::Unreachable => msg.header.kind = RouteType::Unreachable,
        RouteKind::Blackhole => msg.header.kind = RouteType::BlackHole,
        RouteKind::Unicast(hops) => {
            msg.header.kind = RouteType::Unicast;
            match hops.as_slice() {
                [] => return Err(invalid("a unicast route without a next hop")),
                [hop] => {
                    if hop.gateway.is_none() && route.family == Family::V4 {
                        // A device route (point-to-point link): iproute2 gives it link scope.
                        msg.header.scope = RouteScope::Link;
                    }
                    msg.attributes.push(RouteAttribute::Oif(hop.ifindex));
                    if let Some(gw) = hop.gateway {
                        msg.attributes.push(gateway_attr(route.family, gw));
                    }
                }
                hops => {
                    let mut nhs = Vec::with_capacity(hops.len());
                    for hop in hops {
                        if !(1..=256).contains(&hop.weight) {
                            return Err(invalid("a next hop weight outside 1..=256"));
                        }
                        let mut nh = RouteNextHop::default();
                        nh.interface_index = hop.ifindex;
                        nh.hops = (hop.weight - 1) as u8;
                        if let Some(gw) = hop.gateway {
                            nh.attributes.push(gateway_attr(route.family, gw));
                        }
                        nhs.push(nh);
                    }
                    msg.attributes.push(RouteAttribute::MultiPath(nhs));
                }
            }
        }
    }
    Ok(msg)
}

fn gateway_attr(family: Family, gw: IpAddr) -> RouteAttribute {
    match (family, gw) {
        // An IPv6 next hop for an IPv4 route (RFC 5549) travels as RTA_VIA.
        (Family::V4, IpAddr::V6(v6)) => RouteAttribute::Via(RouteVia::Inet6(v6)),
        (_, gw) => RouteAttribute::Gateway(RouteAddress::from(gw)),
    }
}

/// The key under which the kernel holds at most one route.
pub(crate) type Key = (Family, u32, IpNet, u32);

pub(crate) fn key(r: &Route) -> Key {
    (r.family, r.table, r.dst.trunc(), effective_metric(r))
}

fn effective_metric(r: &Route) -> u32 {
    if r.family == Family::V6 && r.metric == 0 {
        IPV6_DEFAULT_METRIC
    } else {
        r.metric
    }
}

/// What the kernel keeps of a route, for comparing: interface names are not stored
/// (indexes are), a single next hop has no weight, next-hop order does not matter.
pub(crate) fn normalized(r: &Route) -> Route {
    let kind = match &r.kind {
        RouteKind::Unicast(hops) => {
            let mut hops: Vec<NextHop> = hops
                .iter()
                .map(|h| NextHop {
                    gateway: h.gateway,
                    ifname: String::new(),
                    ifindex: h.ifindex,
                    weight: h.weight,
                })
                .collect();
            if hops.len() == 1 {
                hops[0].weight = 1;
            }
            hops.sort();
            RouteKind::Unicast(hops)
        }
        other => other.clone(),
    };
    Route {
        family: r.family,
        table: r.table,
        dst: r.dst.trunc(),
        metric: effective_metric(r),
        kind,
    }
}

/// Installs (or replaces) one route.
pub async fn replace(handle: &Handle, route: &Route) -> Result<()> {
    let msg = to_message(route)?;
    send(
        handle,
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
    .map_err(|e| KernelError::netlink(format!("installing route {}", describe(route)), e))
}

/// Deletes one route by the message the kernel dumped for it.
pub async fn delete(handle: &Handle, msg: &RouteMessage, what: &str) -> Result<()> {
    match send(handle, RouteNetlinkMessage::DelRoute(msg.clone()), 0).await {
        Ok(()) => Ok(()),
        // Already gone (an interface went down and took it along): that is what we wanted.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ESRCH => Ok(()),
        Err(e) => Err(KernelError::netlink(format!("deleting route {what}"), e)),
    }
}

/// Sends one request and waits for the kernel's answer.
pub(crate) async fn send(
    handle: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut handle = handle.clone();
    let mut resp = handle.request(req)?;
    while let Some(msg) = resp.next().await {
        if let NetlinkPayload::Error(e) = msg.payload {
            if e.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
    }
    Ok(())
}

/// `ip route` style text of a route, for logs and change lists.
pub fn describe(r: &Route) -> String {
    let dst = if r.dst.prefix_len() == 0 {
        "default".to_string()
    } else {
        r.dst.to_string()
    };
    let body = match &r.kind {
        RouteKind::Unreachable => format!("unreachable {dst}"),
        RouteKind::Blackhole => format!("blackhole {dst}"),
        RouteKind::Unicast(hops) if hops.len() == 1 => format!("{dst}{}", hop_text(&hops[0])),
        RouteKind::Unicast(hops) => {
            let hops: Vec<String> = hops
                .iter()
                .map(|h| format!("nexthop{} weight {}", hop_text(h), h.weight))
                .collect();
            format!("{dst} {}", hops.join(" "))
        }
    };
    let fam = match r.family {
        Family::V4 => "",
        Family::V6 => "-6 ",
    };
    format!("{fam}{body} table {} metric {}", r.table, r.metric)
}

fn hop_text(h: &NextHop) -> String {
    match h.gateway {
        Some(gw) => format!(" via {gw} dev {}", h.ifname),
        None => format!(" dev {}", h.ifname),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(gw: &str, ifindex: u32, weight: u32) -> NextHop {
        NextHop {
            gateway: Some(gw.parse().unwrap()),
            ifname: format!("wan{ifindex}"),
            ifindex,
            weight,
        }
    }

    fn route(table: u32, metric: u32, kind: RouteKind) -> Route {
        Route {
            family: Family::V4,
            table,
            dst: "0.0.0.0/0".parse().unwrap(),
            metric,
            kind,
        }
    }

    #[test]
    fn message_round_trip() {
        let names = BTreeMap::from([(2, "wan2".to_string()), (3, "wan3".to_string())]);
        for r in [
            route(
                300,
                7,
                RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1), hop("198.51.100.1", 3, 256)]),
            ),
            route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)])),
            route(101, u32::MAX, RouteKind::Unreachable),
            route(101, 3, RouteKind::Blackhole),
        ] {
            let msg = to_message(&r).unwrap();
            assert_eq!(table_of(&msg), r.table);
            assert_eq!(from_message(&msg, &names), Some(r));
        }
    }

    #[test]
    fn weights_are_stored_minus_one() {
        let r = route(
            100,
            0,
            RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1), hop("198.51.100.1", 3, 256)]),
        );
        let msg = to_message(&r).unwrap();
        let hops = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::MultiPath(h) => Some(h.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            hops.iter().map(|h| h.hops).collect::<Vec<_>>(),
            vec![0, 255]
        );
    }
}
