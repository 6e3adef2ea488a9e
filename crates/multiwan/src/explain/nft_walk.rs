//! Runs one packet through the planned nft table (the same [`NftTable`] `apply`
//! installs): the first packet of a new connection in `prerouting`, rule by rule,
//! following jumps, gotos and verdict maps, until a verdict. Weighted choices
//! (`numgen`) cannot be followed for one connection: the walk stops there and returns
//! every branch; sticky choices (`jhash`) are followed when the source is known.

use std::net::IpAddr;

use ipnet::IpNet;

use super::jhash;
use crate::plan::nft::*;

/// The packet: the first one of a new connection, arriving on `iif`.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    pub iif: Option<&'a str>,
    pub saddr: Option<IpAddr>,
    pub daddr: IpAddr,
    /// IP protocol number; `None`: unknown (matches no protocol rule).
    pub proto: Option<u8>,
    pub dport: Option<u16>,
    /// The router's own addresses (`fib daddr type local`).
    pub local_addrs: &'a [IpAddr],
}

/// How the walk ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Left the hook with this packet mark (0: untouched).
    Mark(u32),
    /// `reject`.
    Reject,
    /// `drop`.
    Drop,
    /// A weighted choice per connection: each branch with its share of the numgen
    /// space (first, last, modulus) and the mark it would end with.
    Split(Vec<Branch>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    pub share_pct: f64,
    pub mark: u32,
}

/// What the walk saw on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// Comments of the rules that matched and decided something, in order.
    pub comments: Vec<String>,
    /// Chains entered by jump or goto, in order.
    pub chains: Vec<String>,
    /// The sticky hash's branches (share, mark) when one was taken, and whether the
    /// source was known so that the hash decided.
    pub sticky: Option<(Vec<Branch>, bool)>,
    /// Matches that could not be decided because the connection leaves something
    /// unknown (no source given): they count as not matching.
    pub unknown: Vec<String>,
}

struct Walk<'t, 'p> {
    table: &'t NftTable,
    packet: &'p Packet<'p>,
    meta_mark: u32,
    trace: Trace,
}

/// Walks `packet` through chain `start` of `table`.
pub fn walk(table: &NftTable, start: &str, packet: &Packet) -> (End, Trace) {
    let mut w = Walk {
        table,
        packet,
        meta_mark: 0,
        trace: Trace::default(),
    };
    let end = match w.chain(start, 0) {
        Flow::Continue | Flow::Return => End::Mark(w.meta_mark),
        Flow::End(end) => end,
    };
    (end, w.trace)
}

enum Flow {
    /// Fell off the end of the chain (a jumped-to chain returns to its caller).
    Continue,
    /// `return`: back to the caller, or the end of the base chain.
    Return,
    End(End),
}

impl Walk<'_, '_> {
    fn chain(&mut self, name: &str, depth: usize) -> Flow {
        let Some(chain) = self.table.chains.iter().find(|c| c.name == name) else {
            return Flow::Continue;
        };
        if depth > 32 {
            return Flow::Continue; // the planner never nests this deep
        }
        for rule in &chain.rules {
            if !rule.matches.iter().all(|m| self.matches(m)) {
                continue;
            }
            let mut decided = false;
            for action in &rule.actions {
                let (flow, took) = self.action(action, depth);
                decided |= took;
                if decided {
                    if let Some(c) = &rule.comment {
                        if !self.trace.comments.contains(c) {
                            self.trace.comments.push(c.clone());
                        }
                    }
                }
                match flow {
                    Flow::Continue => {}
                    other => return other,
                }
            }
        }
        Flow::Continue
    }

    /// Runs one statement; says whether it decided something (a verdict taken).
    fn action(&mut self, action: &Action, depth: usize) -> (Flow, bool) {
        let verdict = match action {
            Action::SetMark {
                kind: MarkKind::Meta,
                keep,
                value,
            } => {
                self.meta_mark = (self.meta_mark & keep) | value;
                return (Flow::Continue, false);
            }
            // A new connection's ct mark is 0: restore maps find nothing.
            Action::CtMarkVmap { entries, .. } => entries
                .iter()
                .find(|(v, _)| *v == 0)
                .map(|(_, verdict)| verdict.clone()),
            Action::IifnameVmap(entries) => self.packet.iif.and_then(|iif| {
                entries
                    .iter()
                    .find(|(name, _)| name == iif)
                    .map(|(_, v)| v.clone())
            }),
            Action::DaddrVmap { version, entries } => entries
                .iter()
                .find(|(net, _)| self.family_is(*version) && contains(net, self.packet.daddr))
                .map(|(_, v)| v.clone()),
            Action::NumgenVmap { modulus, entries } => {
                let branches = self.branches(*modulus, entries, depth);
                return (Flow::End(End::Split(branches)), true);
            }
            Action::JhashVmap {
                key,
                modulus,
                seed,
                entries,
            } => {
                let branches = self.branches(*modulus, entries, depth);
                let bucket = self
                    .hash_key(*key)
                    .map(|k| jhash::bucket(&k, *seed, *modulus));
                self.trace.sticky = Some((branches.clone(), bucket.is_some()));
                match bucket {
                    Some(b) => entries
                        .iter()
                        .find(|((first, last), _)| (*first..=*last).contains(&b))
                        .map(|(_, v)| v.clone()),
                    None => return (Flow::End(End::Split(branches)), true),
                }
            }
            Action::Verdict(v) => Some(v.clone()),
            _ => None,
        };
        match verdict {
            Some(v) => (self.verdict(&v, depth), true),
            None => (Flow::Continue, false),
        }
    }

    fn verdict(&mut self, v: &Verdict, depth: usize) -> Flow {
        match v {
            Verdict::Accept => Flow::End(End::Mark(self.meta_mark)),
            Verdict::Drop => Flow::End(End::Drop),
            Verdict::RejectHostUnreachable
            | Verdict::RejectIpv6AdminProhibited
            | Verdict::RejectTcpReset => Flow::End(End::Reject),
            Verdict::Return => Flow::Return,
            Verdict::Jump(c) => {
                self.trace.chains.push(c.clone());
                match self.chain(c, depth + 1) {
                    Flow::End(e) => Flow::End(e),
                    Flow::Continue | Flow::Return => Flow::Continue,
                }
            }
            Verdict::Goto(c) => {
                self.trace.chains.push(c.clone());
                match self.chain(c, depth + 1) {
                    Flow::End(e) => Flow::End(e),
                    // After a goto, the end of that chain is the end of the caller's.
                    Flow::Continue | Flow::Return => Flow::Return,
                }
            }
        }
    }

    /// Every branch of a verdict map over `0..modulus`: its share and where it ends.
    fn branches(
        &mut self,
        modulus: u32,
        entries: &[((u32, u32), Verdict)],
        depth: usize,
    ) -> Vec<Branch> {
        let mut out: Vec<Branch> = Vec::new();
        for ((first, last), v) in entries {
            let mut sub = Walk {
                table: self.table,
                packet: self.packet,
                meta_mark: self.meta_mark,
                trace: Trace::default(),
            };
            let mark = match sub.verdict(v, depth) {
                Flow::End(End::Mark(m)) => m,
                Flow::Continue | Flow::Return => sub.meta_mark,
                Flow::End(_) => continue,
            };
            let share = f64::from(last - first + 1) * 100.0 / f64::from(modulus.max(1));
            match out.iter_mut().find(|b| b.mark == mark) {
                Some(b) => b.share_pct += share,
                None => out.push(Branch {
                    share_pct: share,
                    mark,
                }),
            }
        }
        out
    }

    fn hash_key(&mut self, key: HashKey) -> Option<Vec<u8>> {
        let bytes = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let Some(saddr) = self.packet.saddr else {
            self.trace
                .unknown
                .push("the sticky hash needs the source address (--from)".into());
            return None;
        };
        Some(match key {
            HashKey::Saddr(_) => bytes(saddr),
            // A concatenation: each field in its own 4-byte-aligned register slot.
            HashKey::SaddrDaddr(_) => [bytes(saddr), bytes(self.packet.daddr)].concat(),
        })
    }

    fn family_is(&self, v: IpVersion) -> bool {
        matches!(
            (v, self.packet.daddr),
            (IpVersion::V4, IpAddr::V4(_)) | (IpVersion::V6, IpAddr::V6(_))
        )
    }

    fn matches(&mut self, m: &Match) -> bool {
        let p = self.packet;
        match m {
            // A new connection has no ct mark yet.
            Match::CtMark { cmp, value, .. } => cmp_holds(*cmp, *value == 0),
            Match::MetaMark { mask, cmp, value } => {
                cmp_holds(*cmp, self.meta_mark & mask == *value)
            }
            Match::CtStateNew(cmp) => cmp_holds(*cmp, true),
            Match::IifLoopback => p.iif == Some("lo"),
            Match::Iifname { cmp, names } => {
                cmp_holds(*cmp, p.iif.is_some_and(|i| names.iter().any(|n| n == i)))
            }
            Match::Oifname(_) => false,
            Match::Nfproto(v) => self.family_is(*v),
            Match::DaddrInSet { version, set } => {
                self.family_is(*version) && self.in_set(set, p.daddr)
            }
            Match::FibDaddrLocal => p.local_addrs.contains(&p.daddr),
            Match::Saddr { version, nets } => match p.saddr {
                Some(s) => self.family_is(*version) && nets.iter().any(|n| contains(n, s)),
                None => {
                    let what = format!("source {}", nets.join(", "));
                    if !self.trace.unknown.contains(&what) {
                        self.trace.unknown.push(what);
                    }
                    false
                }
            },
            Match::Daddr { version, nets } => {
                self.family_is(*version) && nets.iter().any(|n| contains(n, p.daddr))
            }
            Match::L4Proto(n) => p.proto == Some(*n),
            Match::ThDport(ranges) => p
                .dport
                .is_some_and(|d| ranges.iter().any(|(a, b)| (*a..=*b).contains(&d))),
            Match::TcpSyn => p.proto == Some(6),
            // Router-local matches: a forwarded packet has no local socket.
            Match::SkUid(_) | Match::SocketCgroupv2 { .. } => false,
        }
    }

    fn in_set(&self, name: &str, addr: IpAddr) -> bool {
        let Some(set) = self.table.sets.iter().find(|s| s.name == name) else {
            return false;
        };
        match (&set.elements, addr) {
            (SetElements::Ipv4(nets), IpAddr::V4(a)) => nets.iter().any(|n| n.contains(&a)),
            (SetElements::Ipv6(nets), IpAddr::V6(a)) => nets.iter().any(|n| n.contains(&a)),
            _ => false,
        }
    }
}

fn cmp_holds(cmp: Cmp, equal: bool) -> bool {
    match cmp {
        Cmp::Eq => equal,
        Cmp::Ne => !equal,
    }
}

/// Whether the prefix (or single address) written as nft text holds `addr`.
fn contains(net: &str, addr: IpAddr) -> bool {
    if let Ok(n) = net.parse::<IpNet>() {
        return n.contains(&addr);
    }
    net.parse::<IpAddr>().is_ok_and(|a| a == addr)
}
