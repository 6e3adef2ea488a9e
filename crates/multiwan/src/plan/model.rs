//! The desired kernel state: the one model that `plan` prints and `apply` installs.
//!
//! Nothing here knows about netlink messages or nft syntax; `render/` turns it into
//! text and `kernel/` into netlink messages and an nft JSON batch.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::input::LinkState;
use super::nft::NftTable;

/// Address family of a rule or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The default route's destination in this family.
    pub fn default_net(self) -> IpNet {
        match self {
            Family::V4 => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).unwrap(),
            Family::V6 => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).unwrap(),
        }
    }
}

/// Everything multiwan wants installed, for one set of link states and facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Policy routing rules, sorted by (family, priority, selector).
    pub rules: Vec<IpRule>,
    /// Routes in multiwan's own tables, sorted by (family, table, dst, metric).
    pub routes: Vec<Route>,
    pub nft: NftTable,
    pub sysctls: Vec<Sysctl>,
    /// Lines of `/etc/iproute2/rt_tables.d/<nft_table>.conf`; empty when `table_names` is off.
    pub table_names: Vec<(u32, String)>,
    /// The routing tables multiwan owns, whatever they hold now (for reading back
    /// and flushing).
    pub owned_tables: Vec<u32>,
    /// The rule priority range multiwan owns.
    pub owned_priorities: (u32, u32),
    /// Per link: what the planner made of it (for `plan`, `explain` and `status`).
    pub links: Vec<LinkSummary>,
    /// Per policy (`default` first, then the named ones in config order): the links
    /// that take its new connections now; empty when its fallback applies.
    pub policies: Vec<(String, Vec<String>)>,
}

/// One `ip rule`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRule {
    pub family: Family,
    pub priority: u32,
    pub selector: RuleSelector,
    /// Routing table to look up.
    pub table: u32,
}

/// The match part of an `ip rule`; `None` fields do not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleSelector {
    pub from: Option<IpNet>,
    pub to: Option<IpNet>,
    /// (mark, mask)
    pub fwmark: Option<(u32, u32)>,
    pub iif: Option<String>,
    pub ipproto: Option<u8>,
    /// Inclusive destination port range.
    pub dport: Option<(u16, u16)>,
    /// Inclusive uid range.
    pub uidrange: Option<(u32, u32)>,
    pub suppress_prefixlength: Option<u32>,
}

/// One route in a table multiwan owns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub family: Family,
    pub table: u32,
    pub dst: IpNet,
    /// Routes are keyed by (family, table, dst, metric): two routes with the same key
    /// cannot coexist, so a change of kind or next hops is a replace.
    pub metric: u32,
    pub kind: RouteKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// One next hop, or a weighted multipath route with several.
    Unicast(Vec<NextHop>),
    Unreachable,
    Blackhole,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    /// `None`: a point-to-point device, the route goes straight to it.
    pub gateway: Option<IpAddr>,
    pub ifname: String,
    pub ifindex: u32,
    /// As `ip route` shows it (1..=256); the kernel stores weight - 1.
    pub weight: u32,
}

/// The highest metric: the `unreachable default` behind every link's own default
/// route, so marked packets never fall through to another link (SPEC §2.11).
pub const LAST_RESORT_METRIC: u32 = u32::MAX;

/// One sysctl multiwan needs, by its /proc/sys path relative name
/// (e.g. `net/ipv4/conf/wan1/src_valid_mark`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sysctl {
    pub key: String,
    pub value: String,
}

impl Sysctl {
    /// The dotted name an operator knows (`net.ipv4.conf.wan1.src_valid_mark`).
    pub fn dotted(&self) -> String {
        self.key.replace('/', ".")
    }
}

/// What the planner decided about one link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSummary {
    pub name: String,
    pub id: u8,
    pub mark: u32,
    pub table: u32,
    /// The state the planner used: the one it was given, or `waiting` / `down` when the
    /// facts say the link cannot carry traffic.
    pub state: LinkState,
    /// Carries new connections of the `default` policy now.
    pub in_service: bool,
    /// Share of the `default` policy's new connections, percent.
    pub share_pct: f64,
    /// The resolved IPv4 next hop, if known.
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Why the link cannot be installed yet (no interface, no address, no gateway).
    pub waiting: Option<String>,
}
