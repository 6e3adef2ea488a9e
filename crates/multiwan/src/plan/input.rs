//! What the planner is given besides the config: the state of each link and the facts
//! observed on the machine. Both are plain data so the planner can be tested alone.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// A link's state, as `status` shows it (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkState {
    Up,
    Degraded,
    Down,
    /// No interface, address or gateway yet.
    Waiting,
    /// By config (`enabled = false`) or by operator override.
    Disabled,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Degraded => "degraded",
            LinkState::Down => "down",
            LinkState::Waiting => "waiting",
            LinkState::Disabled => "disabled",
        }
    }

    /// Only an `up` link takes new connections.
    pub fn in_service(self) -> bool {
        self == LinkState::Up
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Link states by link name. A link missing from the map counts as `Up` (what `apply`
/// wants: every enabled link in service); the planner still demotes it to `Waiting` when
/// the facts lack its interface, address or gateway.
pub type LinkStates = BTreeMap<String, LinkState>;

/// What was observed on the machine: interfaces by name, and the main table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub interfaces: BTreeMap<String, InterfaceFacts>,
    /// Destinations the main table reaches by a route more specific than the default
    /// (the LAN, VPN routes, the links' own subnets): never policy-routed (SPEC §2.5).
    pub main_prefixes: Vec<IpNet>,
}

/// One interface as the kernel has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceFacts {
    pub ifindex: u32,
    /// Administratively up (`IFF_UP`).
    pub admin_up: bool,
    /// Has carrier (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// Addresses with their prefix length; IPv6 link-local ones left out.
    pub addresses: Vec<IpNet>,
    /// The next hop of a default route on this interface in the main table (what a DHCP
    /// client, ifupdown or router advertisements installed): used for `gateway = "auto"`.
    pub default_gateway4: Option<Ipv4Addr>,
    pub default_gateway6: Option<Ipv6Addr>,
}

impl InterfaceFacts {
    pub fn ipv4_addresses(&self) -> impl Iterator<Item = &IpNet> {
        self.addresses.iter().filter(|a| matches!(a, IpNet::V4(_)))
    }

    pub fn ipv6_addresses(&self) -> impl Iterator<Item = &IpNet> {
        self.addresses.iter().filter(|a| matches!(a, IpNet::V6(_)))
    }
}
