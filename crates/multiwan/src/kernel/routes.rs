//! Routes in the tables multiwan owns: dump, convert to the model, diff, apply.
//!
//! Routes are keyed by (family, table, dst, metric), the key under which the kernel
//! keeps at most one route; a route whose kind or next hops changed is sent again with
//! `NLM_F_REPLACE`, so the table never goes through a moment without it.

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
use super::Changes;
use crate::plan::{Family, NextHop, Route, RouteKind};

/// IPv6 stores metric 0 as 1024 (`IP6_RT_PRIO_USER`): compare as the kernel will store.
const IPV6_DEFAULT_METRIC: u32 = 1024;

/// A route found in an owned table, with the message the kernel sent (deleting by
/// sending it back removes exactly that route, whatever attributes the model lacks).
#[derive(Debug, Clone)]
pub struct InstalledRoute {
    /// `None`: a route the model cannot express (another type, a source prefix, a TOS);
    /// it is in a table multiwan owns, so apply deletes it.
    pub route: Option<Route>,
    pub msg: RouteMessage,
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

/// Every route of one family, all tables (the kernel filters a dump by table only with
/// strict checking on; filtering here works everywhere).
pub(crate) async fn dump_family(handle: &Handle, family: Family) -> Result<Vec<RouteMessage>> {
    let mut req = RouteMessage::default();
    req.header.address_family = address_family(family);
    let mut stream = handle.route().get(req).execute();
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let msg = item.map_err(|e| KernelError::netlink("dumping routes", e))?;
        out.push(msg);
    }
    Ok(out)
}

/// The routes in `tables`, both families.
pub async fn read(
    handle: &Handle,
    tables: &[u32],
    names: &BTreeMap<u32, String>,
) -> Result<Vec<InstalledRoute>> {
    // Never the kernel's own tables, whatever the caller asks: reading them as owned
    // would let an apply or a flush delete the main table's routes.
    let tables: BTreeSet<u32> = tables
        .iter()
        .copied()
        .filter(|t| !matches!(t, 0 | 253..=255))
        .collect();
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        for msg in dump_family(handle, family).await? {
            if tables.contains(&table_of(&msg)) {
                out.push(InstalledRoute {
                    route: from_message(&msg, names),
                    msg,
                });
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
    h.protocol = RouteProtocol::Static;
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
type Key = (Family, u32, IpNet, u32);

fn key(r: &Route) -> Key {
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
fn normalized(r: &Route) -> Route {
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

/// What to change so that the routes `current` become `desired`: a route whose key is
/// in both but differs is a replace; duplicates of a key in `current` are deleted.
pub fn diff(current: &[Route], desired: &[Route]) -> Changes<Route> {
    let mut cur: BTreeMap<Key, &Route> = BTreeMap::new();
    let mut changes = Changes::default();
    for r in current {
        if cur.insert(key(r), r).is_some() {
            // A second route under one key (`ip route append`): keep one, drop the rest.
            changes.delete.push(r.clone());
        }
    }
    let mut seen = BTreeSet::new();
    for d in desired {
        let k = key(d);
        if !seen.insert(k) {
            continue;
        }
        match cur.get(&k) {
            None => changes.add.push(d.clone()),
            Some(c) if normalized(c) != normalized(d) => {
                changes.replace.push(((*c).clone(), d.clone()))
            }
            Some(_) => {}
        }
    }
    for (k, c) in &cur {
        if !seen.contains(k) {
            changes.delete.push((*c).clone());
        }
    }
    changes
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
    fn equal_sets_give_no_changes() {
        let rs = vec![
            route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)])),
            route(101, u32::MAX, RouteKind::Unreachable),
        ];
        assert!(diff(&rs, &rs).is_empty());
    }

    #[test]
    fn missing_route_is_added_and_stale_one_deleted() {
        let a = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
        let b = route(102, 0, RouteKind::Unicast(vec![hop("198.51.100.1", 3, 1)]));
        let c = diff(std::slice::from_ref(&a), std::slice::from_ref(&b));
        assert_eq!(c.add, vec![b]);
        assert_eq!(c.delete, vec![a]);
        assert!(c.replace.is_empty());
    }

    #[test]
    fn changed_route_under_same_key_is_a_replace() {
        let old = route(
            100,
            0,
            RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1), hop("198.51.100.1", 3, 1)]),
        );
        let new = route(
            100,
            0,
            RouteKind::Unicast(vec![hop("192.0.2.1", 2, 3), hop("198.51.100.1", 3, 1)]),
        );
        let c = diff(std::slice::from_ref(&old), std::slice::from_ref(&new));
        assert_eq!(c.replace, vec![(old, new)]);
        assert!(c.add.is_empty() && c.delete.is_empty());
    }

    #[test]
    fn kind_change_is_a_replace() {
        let old = route(101, 5, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
        let new = route(101, 5, RouteKind::Blackhole);
        assert_eq!(
            diff(std::slice::from_ref(&old), std::slice::from_ref(&new)).replace,
            vec![(old, new)]
        );
    }

    #[test]
    fn comparison_ignores_what_the_kernel_does_not_keep() {
        // Names are not stored, a lone next hop has no weight, hop order is free.
        let mut read = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
        if let RouteKind::Unicast(h) = &mut read.kind {
            h[0].ifname = "if2".into();
        }
        let want = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 7)]));
        assert!(diff(&[read], &[want]).is_empty());

        let a = route(
            100,
            0,
            RouteKind::Unicast(vec![hop("192.0.2.1", 2, 2), hop("198.51.100.1", 3, 1)]),
        );
        let b = route(
            100,
            0,
            RouteKind::Unicast(vec![hop("198.51.100.1", 3, 1), hop("192.0.2.1", 2, 2)]),
        );
        assert!(diff(&[a], &[b]).is_empty());
    }

    #[test]
    fn metric_is_part_of_the_key() {
        let a = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
        let b = route(101, 10, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
        let c = diff(std::slice::from_ref(&a), std::slice::from_ref(&b));
        assert_eq!((c.add, c.delete), (vec![b], vec![a]));
    }

    #[test]
    fn ipv6_metric_zero_is_1024() {
        let mut a = route(101, 0, RouteKind::Unreachable);
        a.family = Family::V6;
        a.dst = "::/0".parse().unwrap();
        let mut b = a.clone();
        b.metric = 1024;
        assert!(diff(&[b], &[a]).is_empty());
    }

    #[test]
    fn duplicate_keys_in_current_are_deleted() {
        let a = route(101, 0, RouteKind::Unicast(vec![hop("192.0.2.1", 2, 1)]));
        let c = diff(&[a.clone(), a.clone()], std::slice::from_ref(&a));
        assert_eq!(c.delete, vec![a]);
        assert!(c.add.is_empty() && c.replace.is_empty());
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
