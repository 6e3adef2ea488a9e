//! The nftables part of the desired state, as a small closed vocabulary of objects
//! and statements. The planner lowers policies and links into it; [`text`]
//! prints it as `nft -f` input and `kernel::nft` sends it as one JSON batch. Keeping
//! the vocabulary closed is what lets the two renderers stay equivalent (a test loads
//! both and compares what the kernel lists).

use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};

pub mod text;

/// `table inet <name>` and everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftTable {
    pub name: String,
    /// Named counters (one per link: new connections).
    pub counters: Vec<String>,
    /// Named sets of prefixes.
    pub sets: Vec<NftSet>,
    /// Chains in dependency order: a chain is listed after every chain it jumps to,
    /// so a batch can create them in this order.
    pub chains: Vec<NftChain>,
    /// A digest of everything above, stored in the table (a rule comment in chain
    /// `plan`) so that an apply can tell the installed table is already right without
    /// touching it.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSet {
    pub name: String,
    pub elements: SetElements,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetElements {
    /// `type ipv4_addr; flags interval`
    Ipv4(Vec<Ipv4Net>),
    /// `type ipv6_addr; flags interval`
    Ipv6(Vec<Ipv6Net>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub name: String,
    /// `None`: a regular chain reached by jump / goto.
    pub hook: Option<BaseChain>,
    pub rules: Vec<NftRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainKind,
    pub hook: Hook,
    /// Numeric priority (mangle = -150, srcnat = 100).
    pub priority: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Filter,
    Nat,
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

pub const PRIORITY_MANGLE: i32 = -150;
pub const PRIORITY_SRCNAT: i32 = 100;

/// A rule: matches, then statements; all must hold in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub matches: Vec<Match>,
    pub actions: Vec<Action>,
    pub comment: Option<String>,
}

impl NftRule {
    pub fn new(matches: Vec<Match>, actions: Vec<Action>) -> Self {
        NftRule {
            matches,
            actions,
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `ct mark & mask ==/!= value`
    CtMark { mask: u32, cmp: Cmp, value: u32 },
    /// `meta mark & mask ==/!= value`
    MetaMark { mask: u32, cmp: Cmp, value: u32 },
    /// `ct state new` / `ct state != new`
    CtStateNew(Cmp),
    /// `iif "lo"` (by index: loopback always exists)
    IifLoopback,
    /// `iifname { ... }` / `iifname != { ... }`
    Iifname { cmp: Cmp, names: Vec<String> },
    /// `oifname "x"`
    Oifname(String),
    /// `meta nfproto ipv4|ipv6`
    Nfproto(IpVersion),
    /// `ip daddr @set` / `ip6 daddr @set`
    DaddrInSet { version: IpVersion, set: String },
    /// `fib daddr type local`
    FibDaddrLocal,
    /// `ip saddr { prefixes }` / `ip6 saddr { ... }`
    Saddr {
        version: IpVersion,
        nets: Vec<String>,
    },
    /// `ip daddr { prefixes }` / `ip6 daddr { ... }`
    Daddr {
        version: IpVersion,
        nets: Vec<String>,
    },
    /// `meta l4proto N`
    L4Proto(u8),
    /// `th dport { ports and ranges }` (tcp/udp/sctp/dccp)
    ThDport(Vec<(u16, u16)>),
    /// `tcp flags syn / syn,rst`: a TCP connection's opening segment.
    TcpSyn,
    /// `meta skuid N`: the owner of the packet's local socket.
    SkUid(u32),
    /// `socket cgroupv2 level N "path"`: the packet's local socket was created in the
    /// cgroup v2 `path` (relative to /sys/fs/cgroup, `level` components deep) or below
    /// it. nft resolves the path to the cgroup's id when the rule is loaded, so the
    /// cgroup must exist then (see `kernel::nft`).
    SocketCgroupv2 { level: u32, path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// Which mark a `SetMark` statement writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    Meta,
    Ct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `<kind> mark set <kind> mark & keep | value`: changes only the owned bits
    /// (`keep` is the complement of `mark_mask`; `value` lies inside the mask).
    SetMark {
        kind: MarkKind,
        keep: u32,
        value: u32,
    },
    /// `counter name "x"`
    Counter(String),
    /// `counter` (anonymous)
    AnonCounter,
    /// `masquerade`
    Masquerade,
    /// `snat ip to <addr>` / `snat ip6 to <addr>`: NAT to a fixed address (an HA pair's
    /// shared address) instead of the interface's primary one.
    Snat {
        version: IpVersion,
        addr: IpAddr,
    },
    /// `snat ip6 prefix to <prefix>`: NPTv6, the source prefix replaced by `to` and the
    /// interface id kept (stateful: conntrack un-NATs the replies). nftables' JSON
    /// input takes it, but the `nftables` crate cannot express it (`type_flags`), so a
    /// table that has one is sent as a text batch (`kernel::nft::needs_text`).
    SnatPrefix {
        to: Ipv6Net,
    },
    /// `tcp option maxseg size set rt mtu`
    ClampMssToPmtu,
    /// `log prefix "..."` (group `None`: kernel log) or `log group N prefix "..."`
    Log {
        group: Option<u16>,
        prefix: String,
    },
    /// A verdict map on the owned ct mark bits: `ct mark & mask vmap { value : verdict }`.
    CtMarkVmap {
        mask: u32,
        entries: Vec<(u32, Verdict)>,
    },
    /// `iifname vmap { "x" : verdict }`
    IifnameVmap(Vec<(String, Verdict)>),
    /// `ip daddr vmap { prefix : verdict, ... }` / `ip6 daddr vmap { ... }`: one lookup
    /// for many destination prefixes (an interval map; prefixes must not overlap).
    DaddrVmap {
        version: IpVersion,
        entries: Vec<(String, Verdict)>,
    },
    /// `oifname vmap { "x" : verdict }`
    OifnameVmap(Vec<(String, Verdict)>),
    /// `numgen random mod modulus vmap { first-last : verdict }`: weighted choice.
    NumgenVmap {
        modulus: u32,
        entries: Vec<((u32, u32), Verdict)>,
    },
    /// `jhash <key> mod modulus seed S vmap { first-last : verdict }`: sticky choice.
    JhashVmap {
        key: HashKey,
        modulus: u32,
        seed: u32,
        entries: Vec<((u32, u32), Verdict)>,
    },
    Verdict(Verdict),
}

/// What a sticky hash is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    Saddr(IpVersion),
    SaddrDaddr(IpVersion),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    /// `reject with icmpx type host-unreachable` (both families).
    RejectHostUnreachable,
    /// `reject with icmpv6 type admin-prohibited`, IPv6 only (after `meta nfproto
    /// ipv6`): Linux TCP treats ICMPv6 "no route" (0) and "address unreachable" (3,
    /// what icmpx host-unreachable sends) as soft errors and retries the connect for
    /// about a second; "administratively prohibited" (1) ends it at once (EACCES).
    RejectIpv6AdminProhibited,
    /// `reject with tcp reset`, TCP only (after `meta l4proto tcp`): ends a connect at
    /// once with ECONNREFUSED. ICMP errors do not always: the kernel rate-limits them per
    /// client (IPv4 `icmp_ratelimit`: 6 at once, then 1 a second), and a client that
    /// gets one while `connect()` still holds its socket (a LAN of veths or bridges on
    /// the same host) only notes it and waits for the SYN's retransmission (1 s).
    RejectTcpReset,
}
