//! What the planner needs to know about the machine: interfaces, their addresses and
//! DHCP/RA default gateways, and the main table's more specific routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use rtnetlink::Handle;

use super::error::{KernelError, Result};
use super::routes::{dump_table, table_of};
use crate::plan::{Facts, Family, InterfaceFacts};

const MAIN_TABLE: u32 = 254;

/// Interface names by index.
pub async fn link_names(handle: &Handle) -> Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(item) = links.next().await {
        let msg = item.map_err(|e| KernelError::netlink("listing interfaces", e))?;
        if let Some(name) = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) {
            out.insert(msg.header.index, name);
        }
    }
    Ok(out)
}

fn is_link_local6(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

fn is_multicast(addr: &IpAddr) -> bool {
    addr.is_multicast()
}

/// Reads interfaces, addresses, default gateways and the main table's prefixes (routes of
/// `families` only).
pub async fn read_facts(handle: &Handle, families: &[Family]) -> Result<Facts> {
    let mut facts = Facts::default();
    let mut by_index: BTreeMap<u32, String> = BTreeMap::new();

    let mut links = handle.link().get().execute();
    while let Some(item) = links.next().await {
        let msg = item.map_err(|e| KernelError::netlink("listing interfaces", e))?;
        let Some(name) = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) else {
            continue;
        };
        by_index.insert(msg.header.index, name.clone());
        facts.interfaces.insert(
            name,
            InterfaceFacts {
                ifindex: msg.header.index,
                admin_up: msg.header.flags.contains(LinkFlags::Up),
                carrier: msg.header.flags.contains(LinkFlags::LowerUp),
                addresses: Vec::new(),
                default_gateway4: None,
                default_gateway6: None,
            },
        );
    }

    let mut addrs = handle.address().get().execute();
    while let Some(item) = addrs.next().await {
        let msg = item.map_err(|e| KernelError::netlink("listing addresses", e))?;
        let Some(iface) = by_index
            .get(&msg.header.index)
            .and_then(|n| facts.interfaces.get_mut(n))
        else {
            continue;
        };
        // IFA_LOCAL is the interface's own address; on a point-to-point link IFA_ADDRESS
        // is the peer's. IPv6 sends only IFA_ADDRESS, which is then the local one.
        let mut local = None;
        let mut address = None;
        for a in &msg.attributes {
            match a {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        let Some(ip) = local.or(address) else {
            continue;
        };
        if is_link_local6(&ip) {
            continue;
        }
        if let Ok(net) = IpNet::new(ip, msg.header.prefix_len) {
            if !iface.addresses.contains(&net) {
                iface.addresses.push(net);
            }
        }
    }

    // Default gateways: the lowest-metric default route per interface and family.
    let mut gw4: BTreeMap<u32, (u32, std::net::Ipv4Addr)> = BTreeMap::new();
    let mut gw6: BTreeMap<u32, (u32, std::net::Ipv6Addr)> = BTreeMap::new();
    let mut prefixes = BTreeSet::new();
    for &family in families {
        // Only the main table crosses the socket (strict checking filters the dump).
        for msg in dump_table(handle, family, MAIN_TABLE).await? {
            if table_of(&msg) != MAIN_TABLE || msg.header.kind != RouteType::Unicast {
                continue;
            }
            if msg.header.destination_prefix_length == 0 {
                for (oif, gw, metric) in next_hops(&msg) {
                    let Some(gw) = gw else { continue };
                    match gw {
                        IpAddr::V4(g) => {
                            let e = gw4.entry(oif).or_insert((metric, g));
                            if metric < e.0 {
                                *e = (metric, g);
                            }
                        }
                        IpAddr::V6(g) => {
                            let e = gw6.entry(oif).or_insert((metric, g));
                            if metric < e.0 {
                                *e = (metric, g);
                            }
                        }
                    }
                }
            } else if let Some(dst) = destination(&msg) {
                if !is_link_local6(&dst.addr()) && !is_multicast(&dst.addr()) {
                    prefixes.insert(dst);
                }
            }
        }
    }
    for (oif, (_, g)) in gw4 {
        if let Some(iface) = by_index.get(&oif).and_then(|n| facts.interfaces.get_mut(n)) {
            iface.default_gateway4 = Some(g);
        }
    }
    for (oif, (_, g)) in gw6 {
        if let Some(iface) = by_index.get(&oif).and_then(|n| facts.interfaces.get_mut(n)) {
            iface.default_gateway6 = Some(g);
        }
    }
    facts.main_prefixes = prefixes.into_iter().collect();
    Ok(facts)
}

fn destination(msg: &RouteMessage) -> Option<IpNet> {
    let addr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet(a)) => {
            Some(IpAddr::V4(*a))
        }
        RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet6(a)) => {
            Some(IpAddr::V6(*a))
        }
        _ => None,
    })?;
    IpNet::new(addr, msg.header.destination_prefix_length)
        .ok()
        .map(|n| n.trunc())
}

/// (oif, gateway, metric) of each next hop of a route.
fn next_hops(msg: &RouteMessage) -> Vec<(u32, Option<IpAddr>, u32)> {
    use netlink_packet_route::route::RouteAddress;
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    };
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
