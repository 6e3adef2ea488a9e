//! The validated configuration: what the rest of multiwan works from.
//!
//! Everything here has passed `config::load` (see `validate.rs`): names are legal,
//! ids unique, ranges checked and references resolved, so the planner never has to
//! re-check anything and can treat these values as facts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv6Net};

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (used in messages and by `reload`).
    pub path: PathBuf,
    pub settings: Settings,
    /// Every link, enabled or not, sorted by `id`.
    pub links: Vec<Link>,
    /// Named policies in file order. The built-in `default` policy is not listed here;
    /// `Config::default_policy` derives it from the links.
    pub policies: Vec<Policy>,
    /// Rules in file order: the first match wins.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mark_mask: u32,
    pub table_base: u32,
    pub rule_priority: u32,
    pub nft_table: String,
    pub table_names: bool,
    /// `None`: every interface that is not a link is a LAN interface.
    pub lan: Option<Vec<String>>,
    pub local_traffic: bool,
    pub fallback: Fallback,
    pub on_exit: OnExit,
    pub socket: PathBuf,
    /// `None` when `metrics = ""`.
    pub metrics: Option<SocketAddr>,
    pub hooks_dir: PathBuf,
    pub hook_timeout: Duration,
    pub log_group: u16,
    /// `/var/lib/multiwan/<nft_table>`: sticky seed and link states survive restarts here.
    pub state_dir: PathBuf,
}

/// What a policy does when none of its links is in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// Every enabled link, as if it were up.
    All,
    /// Answer with ICMP unreachable at once.
    Unreachable,
    /// Drop silently.
    Blackhole,
    /// Leave it to the main routing table.
    Main,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    Keep,
    Flush,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub name: String,
    /// 1..=254: fixes the link's mark and routing table.
    pub id: u8,
    pub interface: String,
    pub gateway: Gateway<Ipv4Addr>,
    pub gateway6: Gateway<Ipv6Addr>,
    pub priority: u32,
    /// 1..=256.
    pub weight: u32,
    pub masquerade: bool,
    /// SNAT IPv4 to this address instead of masquerading to the interface's primary
    /// one (an HA pair's shared address, SPEC §6); only with `masquerade`.
    pub snat_to: Option<Ipv4Addr>,
    pub masquerade6: bool,
    pub npt6: Option<Npt6>,
    pub mss_clamp: bool,
    pub flush_on_down: bool,
    pub flush_on_recover: bool,
    pub enabled: bool,
    /// `None`: the link is up while it has carrier and an address.
    pub check: Option<Check>,
}

/// A next hop as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gateway<A> {
    /// Follow the default route a DHCP client, ifupdown or RAs put on the interface.
    Auto,
    /// Point-to-point device: routes go straight to the device.
    None,
    Static(A),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Npt6 {
    pub inside: Ipv6Net,
    /// `None`: "auto", the prefix delegated to the link.
    pub outside: Option<Ipv6Net>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub min_targets: u32,
    pub down_after: u32,
    pub up_after: u32,
    /// Percent, 0 disables.
    pub max_loss: u8,
    /// Zero disables.
    pub max_rtt: Duration,
    pub window: u32,
}

/// What a health check sends, with the keys that method needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Icmp {
        targets: Vec<IpAddr>,
    },
    Tcp {
        targets: Vec<IpAddr>,
        port: u16,
    },
    Http {
        urls: Vec<String>,
    },
    /// `https://` URLs, the server's certificate verified for the URL's host.
    Https {
        urls: Vec<String>,
        /// PEM trust anchors; `None`: the system's (`/etc/ssl/certs`).
        ca_file: Option<std::path::PathBuf>,
    },
    Dns {
        resolvers: Vec<IpAddr>,
        query: String,
    },
    /// The gateway is probed.
    Arp,
    /// No probing: up while carrier and address are there.
    None,
}

impl Probe {
    /// How many targets one round probes (arp: the gateway; none: zero).
    pub fn target_count(&self) -> usize {
        match self {
            Probe::Icmp { targets } | Probe::Tcp { targets, .. } => targets.len(),
            Probe::Http { urls } | Probe::Https { urls, .. } => urls.len(),
            Probe::Dns { resolvers, .. } => resolvers.len(),
            Probe::Arp => 1,
            Probe::None => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub members: Vec<PolicyMember>,
    pub sticky: Sticky,
    pub fallback: Fallback,
}

/// A link as a policy sees it: the policy may override priority and weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMember {
    pub link: String,
    pub priority: u32,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sticky {
    Connection,
    Source,
    SourceDestination,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `rule<N>` (1-based position) when the file gives no name.
    pub name: String,
    pub source: Vec<IpNet>,
    pub destination: Vec<IpNet>,
    pub protocol: Protocol,
    pub destination_port: Vec<PortRange>,
    pub input_interface: Option<String>,
    /// Router-local only: socket owner uid (a name is resolved when the file is read).
    pub user: Option<u32>,
    /// Router-local only: cgroup v2 path.
    pub cgroup: Option<String>,
    pub target: RuleTarget,
    /// When the target is a link that is out of service; `None`: `settings.fallback`.
    pub fallback: Option<Fallback>,
    pub log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    /// IANA protocol number, `None` for `any`.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Icmp => Some(1),
            Protocol::Icmpv6 => Some(58),
        }
    }
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleTarget {
    Policy(String),
    Link(String),
    Main,
    Unreachable,
    Blackhole,
}

/// The name of the built-in policy every unmatched connection uses.
pub const DEFAULT_POLICY: &str = "default";

impl Config {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The built-in `default` policy: every enabled link with its own priority and
    /// weight, `sticky = "connection"`, and `settings.fallback`.
    pub fn default_policy(&self) -> Policy {
        Policy {
            name: DEFAULT_POLICY.to_string(),
            members: self
                .links
                .iter()
                .filter(|l| l.enabled)
                .map(|l| PolicyMember {
                    link: l.name.clone(),
                    priority: l.priority,
                    weight: l.weight,
                })
                .collect(),
            sticky: Sticky::Connection,
            fallback: self.settings.fallback,
        }
    }
}
