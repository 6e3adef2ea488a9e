//! The main table as the planner needs it: the default gateway of each interface, and
//! the prefixes the main table reaches by a more specific route (SPEC §2.5). Read once
//! by a streaming dump, then kept from route events, so a VPN that pushes 20,000 routes
//! costs 20,000 set operations, not a re-read of 100,000 routes per burst.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::error::{KernelError, Result};
use super::routes::{address_family, table_of};
use crate::plan::Family;

pub(crate) const MAIN_TABLE: u32 = 254;

/// What one route event did to the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteEvent {
    /// Not a main-table route the view keeps (another table, a local or broadcast route,
    /// a link-local or multicast destination), or already known.
    Unchanged,
    /// A more specific prefix came or went.
    Prefixes,
    /// A default route came, went or changed: gateways are re-read (they are few, and
    /// "the lowest metric per interface" needs every default route, not one event).
    Defaults,
}

/// The main table's more specific routes and default gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MainTable {
    /// Every unicast route with a prefix length above 0, by the kernel's identity of a
    /// route (destination, metric, TOS): a replace keeps the key, a delete names it, so
    /// two routes to one prefix (two metrics) count until both are gone.
    /// IPv4 as (address, prefix length, metric, TOS): 12 bytes a route instead of the
    /// 24 of an `IpNet` key (100,000 VPN routes are nearly all IPv4).
    specific4: BTreeSet<(u32, u8, u32, u8)>,
    specific6: BTreeSet<(u128, u8, u32, u8)>,
    /// Default routes' next hops: (oif, gateway, metric).
    defaults: Vec<(u32, IpAddr, u32)>,
}

impl MainTable {
    /// Reads the main table of `families`, one datagram at a time, on tokio's blocking
    /// pool (its threads share the caller's network namespace). Not through the
    /// rtnetlink connection: its reader queues a whole dump ahead of the consumer (100,000
    /// route messages would be ~40 MB); here at most one datagram is held.
    pub async fn read(families: &[Family]) -> Result<MainTable> {
        let families = families.to_vec();
        super::blocking(move || read_blocking(&families, true)).await
    }

    /// Only the default routes (a gateway changed): the specific ones are dropped as they
    /// stream by.
    pub async fn read_defaults(families: &[Family]) -> Result<MainTable> {
        let families = families.to_vec();
        super::blocking(move || read_blocking(&families, false)).await
    }

    /// Applies an `RTM_NEWROUTE` (`added`) or `RTM_DELROUTE` event.
    pub fn apply(&mut self, msg: &RouteMessage, added: bool) -> RouteEvent {
        if !kept(msg) {
            return RouteEvent::Unchanged;
        }
        if msg.header.destination_prefix_length == 0 {
            return RouteEvent::Defaults;
        }
        let Some(key) = key(msg) else {
            return RouteEvent::Unchanged;
        };
        let changed = if added { self.put(key) } else { self.take(key) };
        if changed {
            RouteEvent::Prefixes
        } else {
            RouteEvent::Unchanged
        }
    }

    /// Takes the default gateways of `other` (a fresh read), keeping the prefixes.
    pub fn set_defaults(&mut self, other: MainTable) {
        self.defaults = other.defaults;
    }

    /// The distinct prefixes, sorted.
    pub fn prefixes(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        let v4 = self.specific4.iter().map(|&(a, len, _, _)| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).expect("valid length, checked in key()"))
        });
        let v6 = self.specific6.iter().map(|&(a, len, _, _)| {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).expect("valid length, checked in key()"))
        });
        for net in v4.chain(v6) {
            if out.last() != Some(&net) {
                out.push(net);
            }
        }
        out
    }

    /// Number of routes kept (for logs and tests).
    pub fn len(&self) -> usize {
        self.specific4.len() + self.specific6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specific4.is_empty() && self.specific6.is_empty()
    }

    /// The lowest-metric default gateway per interface index, per family.
    pub fn gateways(&self) -> BTreeMap<u32, (Option<IpAddr>, Option<IpAddr>)> {
        let mut best4: BTreeMap<u32, (u32, IpAddr)> = BTreeMap::new();
        let mut best6: BTreeMap<u32, (u32, IpAddr)> = BTreeMap::new();
        for &(oif, gw, metric) in &self.defaults {
            let best = if gw.is_ipv4() { &mut best4 } else { &mut best6 };
            let e = best.entry(oif).or_insert((metric, gw));
            if metric < e.0 {
                *e = (metric, gw);
            }
        }
        let mut out: BTreeMap<u32, (Option<IpAddr>, Option<IpAddr>)> = BTreeMap::new();
        for (oif, (_, g)) in best4 {
            out.entry(oif).or_default().0 = Some(g);
        }
        for (oif, (_, g)) in best6 {
            out.entry(oif).or_default().1 = Some(g);
        }
        out
    }

    fn put(&mut self, key: Key) -> bool {
        match key {
            Key::V4(k) => self.specific4.insert(k),
            Key::V6(k) => self.specific6.insert(k),
        }
    }

    fn take(&mut self, key: Key) -> bool {
        match key {
            Key::V4(k) => self.specific4.remove(&k),
            Key::V6(k) => self.specific6.remove(&k),
        }
    }

    fn insert(&mut self, msg: &RouteMessage) {
        if !kept(msg) {
            return;
        }
        if msg.header.destination_prefix_length == 0 {
            for (oif, gw, metric) in next_hops(msg) {
                if let Some(gw) = gw {
                    self.defaults.push((oif, gw, metric));
                }
            }
        } else if let Some(k) = key(msg) {
            self.put(k);
        }
    }
}

fn dump_error(detail: impl ToString) -> KernelError {
    KernelError::Netlink {
        what: "dumping the main table".into(),
        detail: detail.to_string(),
        hint: "see `ip route show table main`",
    }
}

/// The dump itself, blocking: one request per family (strict checking on, so the kernel
/// sends only the main table), each datagram's messages applied as they are parsed.
fn read_blocking(families: &[Family], specific: bool) -> Result<MainTable> {
    let mut view = MainTable::default();
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(dump_error)?;
    socket.bind_auto().map_err(dump_error)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(dump_error)?;
    // Without it the kernel ignores RTA_TABLE and sends every table.
    let _ = socket.set_netlink_get_strict_chk(true);
    let mut rx = vec![0u8; 1 << 16];
    for (seq, &family) in (1u32..).zip(families) {
        let mut req = RouteMessage::default();
        req.header.address_family = address_family(family);
        req.attributes.push(RouteAttribute::Table(MAIN_TABLE));
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetRoute(req)),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        socket.send(&buf, 0).map_err(dump_error)?;
        'datagrams: loop {
            let n = socket.recv(&mut &mut rx[..], 0).map_err(dump_error)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                    .map_err(dump_error)?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => break 'datagrams,
                        NetlinkPayload::Error(e) => match e.code {
                            None => break 'datagrams,
                            // A table-filtered IPv6 dump where the family has no table.
                            Some(c) if c.get().abs() == libc::ENOENT => break 'datagrams,
                            Some(c) => {
                                return Err(dump_error(std::io::Error::from_raw_os_error(-c.get())))
                            }
                        },
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r))
                            if specific || r.header.destination_prefix_length == 0 =>
                        {
                            view.insert(&r);
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }
    Ok(view)
}

/// A unicast route of the main table.
fn kept(msg: &RouteMessage) -> bool {
    table_of(msg) == MAIN_TABLE && msg.header.kind == RouteType::Unicast
}

/// The kernel's identity of a route: destination, metric, TOS.
enum Key {
    V4((u32, u8, u32, u8)),
    V6((u128, u8, u32, u8)),
}

fn key(msg: &RouteMessage) -> Option<Key> {
    let dst = destination(msg)?;
    if is_link_local6(&dst.addr()) || dst.addr().is_multicast() {
        return None;
    }
    let metric = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    let tos = msg.header.tos;
    Some(match dst {
        IpNet::V4(n) => Key::V4((u32::from(n.addr()), n.prefix_len(), metric, tos)),
        IpNet::V6(n) => Key::V6((u128::from(n.addr()), n.prefix_len(), metric, tos)),
    })
}

pub(crate) fn is_link_local6(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn destination(msg: &RouteMessage) -> Option<IpNet> {
    let addr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => ip(d),
        _ => None,
    })?;
    IpNet::new(addr, msg.header.destination_prefix_length)
        .ok()
        .map(|n| n.trunc())
}

/// (oif, gateway, metric) of each next hop of a route.
fn next_hops(msg: &RouteMessage) -> Vec<(u32, Option<IpAddr>, u32)> {
    let mut metric = 0;
    let mut oif = None;
    let mut gw = None;
    let mut out = Vec::new();
    for a in &msg.attributes {
        match a {
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(g) => gw = ip(g),
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    let g = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => ip(g),
                        _ => None,
                    });
                    out.push((h.interface_index, g, 0));
                }
            }
            _ => {}
        }
    }
    if let Some(oif) = oif {
        out.push((oif, gw, metric));
    }
    for h in &mut out {
        h.2 = metric;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteHeader;
    use netlink_packet_route::AddressFamily;
    use std::net::Ipv4Addr;

    fn route(dst: &str, metric: u32) -> RouteMessage {
        let net: ipnet::Ipv4Net = dst.parse().unwrap();
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        m.header.destination_prefix_length = net.prefix_len();
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(net.addr())));
        m.attributes.push(RouteAttribute::Priority(metric));
        m.attributes.push(RouteAttribute::Oif(2));
        m
    }

    #[test]
    fn events_add_and_remove_prefixes() {
        let mut v = MainTable::default();
        assert_eq!(
            v.apply(&route("198.18.0.0/24", 0), true),
            RouteEvent::Prefixes
        );
        // A replace of the same route (same key) changes nothing.
        assert_eq!(
            v.apply(&route("198.18.0.0/24", 0), true),
            RouteEvent::Unchanged
        );
        // A second route to the prefix, another metric: the prefix stays until both go.
        assert_eq!(
            v.apply(&route("198.18.0.0/24", 10), true),
            RouteEvent::Prefixes
        );
        assert_eq!(
            v.prefixes(),
            vec!["198.18.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            v.apply(&route("198.18.0.0/24", 0), false),
            RouteEvent::Prefixes
        );
        assert_eq!(v.prefixes().len(), 1);
        assert_eq!(
            v.apply(&route("198.18.0.0/24", 10), false),
            RouteEvent::Prefixes
        );
        assert!(v.prefixes().is_empty());
        assert_eq!(
            v.apply(&route("198.18.0.0/24", 10), false),
            RouteEvent::Unchanged
        );
    }

    #[test]
    fn defaults_and_other_tables() {
        let mut v = MainTable::default();
        let mut d = route("0.0.0.0/0", 0);
        d.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                192, 0, 2, 1,
            ))));
        assert_eq!(v.apply(&d, true), RouteEvent::Defaults);
        let mut other = route("198.18.0.0/24", 0);
        other.header.table = 100;
        assert_eq!(v.apply(&other, true), RouteEvent::Unchanged);
        let mut local = route("198.18.0.1/32", 0);
        local.header.kind = RouteType::Local;
        assert_eq!(v.apply(&local, true), RouteEvent::Unchanged);
        let mut fresh = MainTable::default();
        fresh.insert(&d);
        v.set_defaults(fresh);
        assert_eq!(
            v.gateways().get(&2).and_then(|g| g.0),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
    }
}
