//! How multiwan refuses a new connection it cannot place (`fallback = "unreachable"`, a
//! rule's `policy = "unreachable"`), so that the client's attempt ends at once (SPEC
//! §2.8), not after retries.
//!
//! TCP gets a reset: `connect()` fails at once with ECONNREFUSED. An ICMP error does
//! not reliably do that: the router's kernel rate-limits its ICMP errors per client
//! (IPv4 `icmp_ratelimit`, IPv6 `icmp.ratelimit`: a burst of 6, then about one a
//! second), so a client opening several connections at once waits a second for each
//! refusal after the sixth; and a client that gets the error while its `connect()`
//! still holds the socket (a LAN of veths or bridges on the same host, where the reply
//! comes back within the sending call) only notes it (`TcpExtLockDroppedIcmps`) and
//! waits for the SYN's retransmission. A reset is neither rate-limited nor lost so.
//! Other protocols get ICMP: IPv4 "host unreachable" (EHOSTUNREACH), IPv6
//! "administratively prohibited" (EACCES), which Linux treats as a hard error unlike
//! ICMPv6 "no route" or "address unreachable".

use super::nft::{Action, IpVersion, Match, NftRule, Verdict};

const TCP: u8 = 6;

/// The rules that refuse what `matches` selects, each running `first` (a log) before
/// its verdict: TCP with a reset, the rest with the family's ICMP error.
pub(crate) fn refuse(matches: Vec<Match>, first: Vec<Action>) -> Vec<NftRule> {
    let proto = matches.iter().find_map(|m| match m {
        Match::L4Proto(p) => Some(*p),
        _ => None,
    });
    let with = |verdict: Verdict| {
        let mut actions = first.clone();
        actions.push(Action::Verdict(verdict));
        actions
    };
    let mut out = Vec::new();
    if proto.is_none_or(|p| p == TCP) {
        let mut tcp = matches.clone();
        if proto.is_none() {
            tcp.push(Match::L4Proto(TCP));
        }
        out.push(NftRule::new(tcp, with(Verdict::RejectTcpReset)));
    }
    if proto != Some(TCP) {
        let icmp = if only_ipv6(&matches) {
            Verdict::RejectIpv6AdminProhibited
        } else {
            Verdict::RejectHostUnreachable
        };
        out.push(NftRule::new(matches, with(icmp)));
    }
    out
}

/// Whether `matches` select IPv6 packets only.
fn only_ipv6(matches: &[Match]) -> bool {
    matches.iter().any(|m| {
        matches!(
            m,
            Match::Nfproto(IpVersion::V6)
                | Match::Saddr {
                    version: IpVersion::V6,
                    ..
                }
                | Match::Daddr {
                    version: IpVersion::V6,
                    ..
                }
                | Match::DaddrInSet {
                    version: IpVersion::V6,
                    ..
                }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::nft::text;

    fn texts(rules: &[NftRule]) -> Vec<String> {
        rules.iter().map(text::rule).collect()
    }

    #[test]
    fn tcp_is_reset_the_rest_gets_the_familys_icmp() {
        assert_eq!(
            texts(&refuse(vec![], vec![])),
            [
                "meta l4proto 6 reject with tcp reset",
                "reject with icmpx type host-unreachable"
            ]
        );
        assert_eq!(
            texts(&refuse(vec![Match::Nfproto(IpVersion::V6)], vec![])),
            [
                "meta nfproto ipv6 meta l4proto 6 reject with tcp reset",
                "meta nfproto ipv6 reject with icmpv6 type admin-prohibited"
            ]
        );
        assert_eq!(
            texts(&refuse(vec![Match::L4Proto(17)], vec![])),
            ["meta l4proto 17 reject with icmpx type host-unreachable"]
        );
        assert_eq!(
            texts(&refuse(vec![Match::L4Proto(6)], vec![])),
            ["meta l4proto 6 reject with tcp reset"]
        );
    }
}
