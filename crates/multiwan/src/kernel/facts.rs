//! What the planner needs to know about the machine: interfaces, their addresses and
//! DHCP/RA default gateways, and the main table's more specific routes. Read whole by
//! [`read_facts`] (the CLI), or kept from netlink events by [`FactsWatch`] (the
//! daemon).

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::Handle;

use super::error::{KernelError, Result};
use super::main_table::{is_link_local6, MainTable};
use crate::plan::{Facts, Family, InterfaceFacts};

mod watch;
pub use watch::FactsWatch;

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

/// Interfaces and their addresses (no gateways yet: see [`assemble`]).
pub async fn read_interfaces(handle: &Handle) -> Result<BTreeMap<String, InterfaceFacts>> {
    let mut interfaces = BTreeMap::new();
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
        interfaces.insert(
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
            .and_then(|n| interfaces.get_mut(n))
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
    Ok(interfaces)
}

/// The facts the planner takes: `interfaces` with their default gateways from `main`,
/// and `main`'s more specific prefixes.
pub fn assemble(mut interfaces: BTreeMap<String, InterfaceFacts>, main: &MainTable) -> Facts {
    let gateways = main.gateways();
    for iface in interfaces.values_mut() {
        let (g4, g6) = gateways.get(&iface.ifindex).copied().unwrap_or_default();
        iface.default_gateway4 = match g4 {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        };
        iface.default_gateway6 = match g6 {
            Some(IpAddr::V6(g)) => Some(g),
            _ => None,
        };
    }
    Facts {
        interfaces,
        main_prefixes: main.prefixes(),
    }
}

/// Reads interfaces, addresses, default gateways and the main table's prefixes (routes of
/// `families` only).
pub async fn read_facts(handle: &Handle, families: &[Family]) -> Result<Facts> {
    let interfaces = read_interfaces(handle).await?;
    let main = MainTable::read(families).await?;
    Ok(assemble(interfaces, &main))
}
