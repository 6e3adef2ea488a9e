//! ICMP echo probes: one raw socket per link and family, shared by all its targets.
//!
//! Raw sockets (not the unprivileged "ping" datagram sockets) because
//! `net.ipv4.ping_group_range` is off by default, and because only raw sockets let us
//! pick the ICMP id that the in-kernel BPF filter then matches: a raw socket otherwise
//! receives every ICMP packet for its address on its device.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};

use socket2::{Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    describe, link_socket, random_u16, recv_from, register, source_for, ProbeEndpoint, ProbeError,
};
use crate::probe::ProbeOutcome;

const ECHO_REPLY_V4: u8 = 0;
const DEST_UNREACH_V4: u8 = 3;
const ECHO_REQUEST_V4: u8 = 8;
const TIME_EXCEEDED_V4: u8 = 11;
const DEST_UNREACH_V6: u8 = 1;
const TIME_EXCEEDED_V6: u8 = 3;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// Echo payload after the 8-byte header: recognisable in a capture.
const PAYLOAD: &[u8; 16] = b"multiwan probe\0\0";

/// The targets of one link, each with the socket of its family (or why it has none).
pub(crate) struct IcmpProber {
    targets: Vec<Result<(IpAddr, Arc<EchoSocket>), String>>,
}

impl IcmpProber {
    pub(crate) fn open(targets: &[IpAddr], ep: &ProbeEndpoint) -> IcmpProber {
        // Opened only for the families the targets use, once each.
        let mut v4: Option<Result<Arc<EchoSocket>, String>> = None;
        let mut v6: Option<Result<Arc<EchoSocket>, String>> = None;
        let targets = targets
            .iter()
            .map(|&target| {
                let local = source_for(ep, target).map_err(|e| e.to_string())?;
                let slot = if target.is_ipv4() { &mut v4 } else { &mut v6 };
                let socket = slot
                    .get_or_insert_with(|| {
                        EchoSocket::open(ep, local)
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    })
                    .clone()?;
                Ok((target, socket))
            })
            .collect();
        IcmpProber { targets }
    }

    pub(crate) async fn ping(&self, index: usize) -> ProbeOutcome {
        match self.targets.get(index) {
            Some(Ok((target, socket))) => socket.ping(*target).await,
            Some(Err(reason)) => ProbeOutcome::Failed(reason.clone()),
            None => super::no_such_target(index),
        }
    }
}

/// Probes waiting for their reply, by ICMP sequence number.
#[derive(Default)]
struct Waiting {
    next_seq: u16,
    by_seq: HashMap<u16, Waiter>,
}

struct Waiter {
    target: IpAddr,
    sent: Instant,
    done: oneshot::Sender<ProbeOutcome>,
}

/// One raw ICMP socket and the task that reads it and hands replies to waiting probes.
struct EchoSocket {
    socket: Arc<AsyncFd<Socket>>,
    v6: bool,
    /// Our ICMP id: random, so that two daemons (or a restart) do not take each other's
    /// replies; the kernel filter passes only echo replies carrying it.
    id: u16,
    ifindex: u32,
    waiting: Arc<Mutex<Waiting>>,
    reader: JoinHandle<()>,
}

impl Drop for EchoSocket {
    fn drop(&mut self) {
        // The reader holds the other reference to the socket: stopping it closes it.
        self.reader.abort();
    }
}

impl EchoSocket {
    fn open(ep: &ProbeEndpoint, local: SocketAddr) -> Result<EchoSocket, ProbeError> {
        let v6 = local.is_ipv6();
        let protocol = if v6 {
            Protocol::ICMPV6
        } else {
            Protocol::ICMPV4
        };
        let socket = link_socket(ep, local, Type::RAW, protocol)?;
        let id = random_u16();
        let io_err = |what, e| ProbeError::io(what, &ep.ifname, e);
        if v6 {
            set_icmp6_filter(&socket).map_err(|e| io_err("set the ICMPv6 type filter", e))?;
        }
        socket
            .attach_filter(&bpf_program(v6, id))
            .map_err(|e| io_err("attach the ICMP reply filter", e))?;
        let socket = Arc::new(register(socket, &ep.ifname)?);
        let waiting = Arc::new(Mutex::new(Waiting {
            next_seq: random_u16(),
            by_seq: HashMap::new(),
        }));
        let reader = tokio::spawn(read_replies(
            Arc::clone(&socket),
            Arc::clone(&waiting),
            v6,
            id,
        ));
        Ok(EchoSocket {
            socket,
            v6,
            id,
            ifindex: ep.ifindex,
            waiting,
            reader,
        })
    }

    async fn ping(&self, target: IpAddr) -> ProbeOutcome {
        let (done, answer) = oneshot::channel();
        let seq = {
            let mut waiting = self.waiting.lock().expect("icmp waiting list poisoned");
            // Skip sequence numbers still in use (only possible after 65536 probes in
            // flight at once, but cheap to rule out).
            let mut seq = waiting.next_seq;
            while waiting.by_seq.contains_key(&seq) {
                seq = seq.wrapping_add(1);
            }
            waiting.next_seq = seq.wrapping_add(1);
            waiting.by_seq.insert(
                seq,
                Waiter {
                    target,
                    sent: Instant::now(),
                    done,
                },
            );
            seq
        };
        // Timed out or abandoned: forget the sequence number so a late reply is ignored.
        let _forget = Forget {
            waiting: &self.waiting,
            seq,
        };
        let packet = echo_request(self.v6, self.id, seq);
        let dest: SockAddr = match target {
            IpAddr::V6(a) if a.is_unicast_link_local() => {
                SocketAddr::V6(SocketAddrV6::new(a, 0, 0, self.ifindex)).into()
            }
            _ => SocketAddr::new(target, 0).into(),
        };
        // An immediate error (no route: the link table's `unreachable default`, the
        // device gone) concludes the probe now rather than at the timeout.
        if let Err(e) = self
            .socket
            .async_io(Interest::WRITABLE, |s| s.send_to(&packet, &dest))
            .await
        {
            return ProbeOutcome::Failed(format!("cannot send to {target}: {}", describe(&e)));
        }
        answer
            .await
            .unwrap_or_else(|_| ProbeOutcome::Failed("ICMP reader stopped".to_string()))
    }
}

struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    seq: u16,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.by_seq.remove(&self.seq);
        }
    }
}

/// Reads the socket until it is dropped, concluding the probes that replies (or ICMP
/// errors quoting our requests) answer.
async fn read_replies(
    socket: Arc<AsyncFd<Socket>>,
    waiting: Arc<Mutex<Waiting>>,
    v6: bool,
    id: u16,
) {
    // Big enough for the headers an ICMP error quotes (IPv6 errors quote up to 1232
    // bytes; only the first 48 matter, the rest is truncated away).
    let mut buf = [0u8; 1500];
    let mut errors = 0u32;
    loop {
        match socket
            .async_io(Interest::READABLE, |s| recv_from(s, &mut buf))
            .await
        {
            Ok((n, from)) => {
                errors = 0;
                let now = Instant::now();
                let packet = &buf[..n];
                let hit = if v6 {
                    match from.map(|a| a.ip()) {
                        Some(IpAddr::V6(src)) => parse_v6(packet, src, id),
                        _ => None,
                    }
                } else {
                    parse_v4(packet, id)
                };
                if let Some(hit) = hit {
                    conclude(&waiting, hit, now);
                }
            }
            // A raw socket reports some ICMP errors about its packets once through
            // recv (sk_err); the error packet itself is read and matched next.
            Err(_) => {
                errors += 1;
                if errors > 64 {
                    // Not transient: stop rather than spin. Probes time out, the link
                    // goes down, and the next endpoint change opens a new socket.
                    return;
                }
            }
        }
    }
}

/// What a received packet says about one of our probes.
#[derive(Debug, PartialEq)]
struct Hit {
    seq: u16,
    /// The target the probe was sent to (a reply's source, an error's quoted destination).
    target: IpAddr,
    /// `None`: an echo reply; `Some(reason)`: an ICMP error about the request.
    error: Option<String>,
}

fn conclude(waiting: &Mutex<Waiting>, hit: Hit, now: Instant) {
    let Ok(mut waiting) = waiting.lock() else {
        return;
    };
    if waiting
        .by_seq
        .get(&hit.seq)
        .is_some_and(|w| w.target == hit.target)
    {
        let waiter = waiting.by_seq.remove(&hit.seq).expect("just looked up");
        let outcome = match hit.error {
            None => ProbeOutcome::Answered(now.saturating_duration_since(waiter.sent)),
            Some(reason) => ProbeOutcome::Failed(reason),
        };
        // The probe may have given up in the meantime; nothing to do then.
        let _ = waiter.done.send(outcome);
    }
}

/// Parses an IPv4 packet as a raw ICMP socket delivers it (IP header first).
fn parse_v4(packet: &[u8], id: u16) -> Option<Hit> {
    let (src, icmp) = split_ipv4(packet)?;
    if icmp.len() < 8 {
        return None;
    }
    match icmp[0] {
        ECHO_REPLY_V4 if be16(&icmp[4..6]) == id => Some(Hit {
            seq: be16(&icmp[6..8]),
            target: IpAddr::V4(src),
            error: None,
        }),
        DEST_UNREACH_V4 | TIME_EXCEEDED_V4 => {
            // The error quotes our request: its IP header, then 8 bytes of ICMP.
            let quoted = &icmp[8..];
            if quoted.len() < 20 || quoted[9] != 1 {
                return None;
            }
            let dst = Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]);
            let (_, inner) = split_ipv4(quoted)?;
            if inner.len() < 8 || inner[0] != ECHO_REQUEST_V4 || be16(&inner[4..6]) != id {
                return None;
            }
            Some(Hit {
                seq: be16(&inner[6..8]),
                target: IpAddr::V4(dst),
                error: Some(format!("{} from {src}", describe_v4(icmp[0], icmp[1]))),
            })
        }
        _ => None,
    }
}

/// Source address and payload of an IPv4 packet.
fn split_ipv4(packet: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some((src, &packet[ihl..]))
}

/// Parses an ICMPv6 message as a raw socket delivers it (no IPv6 header; the source
/// comes from recvfrom).
fn parse_v6(icmp: &[u8], src: Ipv6Addr, id: u16) -> Option<Hit> {
    if icmp.len() < 8 {
        return None;
    }
    match icmp[0] {
        ECHO_REPLY_V6 if be16(&icmp[4..6]) == id => Some(Hit {
            seq: be16(&icmp[6..8]),
            target: IpAddr::V6(src),
            error: None,
        }),
        DEST_UNREACH_V6 | TIME_EXCEEDED_V6 => {
            // Quoted: the IPv6 header (40 bytes; our requests carry no extension
            // headers, so ICMPv6 follows directly), then our echo request.
            let quoted = &icmp[8..];
            if quoted.len() < 48 || quoted[6] != 58 {
                return None;
            }
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&quoted[24..40]);
            let inner = &quoted[40..];
            if inner[0] != ECHO_REQUEST_V6 || be16(&inner[4..6]) != id {
                return None;
            }
            Some(Hit {
                seq: be16(&inner[6..8]),
                target: IpAddr::V6(Ipv6Addr::from(dst)),
                error: Some(format!("{} from {src}", describe_v6(icmp[0], icmp[1]))),
            })
        }
        _ => None,
    }
}

fn describe_v4(kind: u8, code: u8) -> &'static str {
    match (kind, code) {
        (TIME_EXCEEDED_V4, _) => "ICMP time exceeded (routing loop?)",
        (_, 0) => "ICMP network unreachable",
        (_, 1) => "ICMP host unreachable",
        (_, 2) => "ICMP protocol unreachable",
        (_, 3) => "ICMP port unreachable",
        (_, 4) => "ICMP fragmentation needed",
        (_, 9 | 10 | 13) => "ICMP administratively prohibited",
        _ => "ICMP destination unreachable",
    }
}

fn describe_v6(kind: u8, code: u8) -> &'static str {
    match (kind, code) {
        (TIME_EXCEEDED_V6, _) => "ICMPv6 time exceeded (routing loop?)",
        (_, 0) => "ICMPv6 no route to destination",
        (_, 1) => "ICMPv6 administratively prohibited",
        (_, 3) => "ICMPv6 address unreachable",
        (_, 4) => "ICMPv6 port unreachable",
        (_, 5 | 6) => "ICMPv6 rejected by policy",
        _ => "ICMPv6 destination unreachable",
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// An echo request. IPv4 needs our checksum; for ICMPv6 raw sockets the kernel always
/// computes it (it covers a pseudo-header with the source address it picks).
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let kind = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    let mut packet = Vec::with_capacity(8 + PAYLOAD.len());
    packet.extend_from_slice(&[kind, 0, 0, 0]);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// Classic BPF opcodes (linux/filter.h).
const LD_B_IND: u16 = 0x50; // A = pkt[X + k] (byte)
const LD_H_IND: u16 = 0x48; // A = pkt[X + k] (half word)
const LD_B_ABS: u16 = 0x30; // A = pkt[k] (byte)
const LD_H_ABS: u16 = 0x28; // A = pkt[k] (half word)
const LDX_B_MSH: u16 = 0xb1; // X = 4 * (pkt[k] & 0xf): the IPv4 header length
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const ACCEPT: u32 = 0xffff;
const DROP: u32 = 0;

/// The kernel-side filter: pass echo replies with our id, and ICMP errors (whose quoted
/// id is checked in user space); drop everything else before it wakes us up. Raw IPv4
/// sockets see the packet from its IP header, raw IPv6 sockets from the ICMPv6 header.
fn bpf_program(v6: bool, id: u16) -> Vec<SockFilter> {
    let f = SockFilter::new;
    let id = u32::from(id);
    if v6 {
        vec![
            f(LD_B_ABS, 0, 0, 0),                        // 0: A = type
            f(JEQ_K, 0, 3, u32::from(ECHO_REPLY_V6)),    // 1: reply? 2 : 5
            f(LD_H_ABS, 0, 0, 4),                        // 2: A = id
            f(JEQ_K, 0, 4, id),                          // 3: ours? 4 : 8
            f(RET_K, 0, 0, ACCEPT),                      // 4
            f(JEQ_K, 1, 0, u32::from(DEST_UNREACH_V6)),  // 5: 7 : 6
            f(JEQ_K, 0, 1, u32::from(TIME_EXCEEDED_V6)), // 6: 7 : 8
            f(RET_K, 0, 0, ACCEPT),                      // 7
            f(RET_K, 0, 0, DROP),                        // 8
        ]
    } else {
        vec![
            f(LDX_B_MSH, 0, 0, 0),                       // 0: X = IP header length
            f(LD_B_IND, 0, 0, 0),                        // 1: A = type
            f(JEQ_K, 0, 3, u32::from(ECHO_REPLY_V4)),    // 2: reply? 3 : 6
            f(LD_H_IND, 0, 0, 4),                        // 3: A = id
            f(JEQ_K, 0, 4, id),                          // 4: ours? 5 : 9
            f(RET_K, 0, 0, ACCEPT),                      // 5
            f(JEQ_K, 1, 0, u32::from(DEST_UNREACH_V4)),  // 6: 8 : 7
            f(JEQ_K, 0, 1, u32::from(TIME_EXCEEDED_V4)), // 7: 8 : 9
            f(RET_K, 0, 0, ACCEPT),                      // 8
            f(RET_K, 0, 0, DROP),                        // 9
        ]
    }
}

/// ICMP6_FILTER: let only echo replies and the errors we match reach the socket (the
/// BPF filter does the fine matching; this drops neighbour discovery and router
/// advertisements cheaply).
fn set_icmp6_filter(socket: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const ICMP6_FILTER: libc::c_int = 1;
    // A set bit blocks the type (linux/icmpv6.h: ICMP6_FILTER_WILLPASS).
    let mut filter = [u32::MAX; 8];
    for kind in [ECHO_REPLY_V6, DEST_UNREACH_V6, TIME_EXCEEDED_V6] {
        filter[usize::from(kind >> 5)] &= !(1u32 << (kind & 31));
    }
    // SAFETY: setsockopt reads exactly size_of_val(&filter) bytes from `filter`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum_verifies() {
        let packet = echo_request(false, 0x1234, 7);
        assert_eq!(
            checksum(&packet),
            0,
            "a packet with its checksum sums to zero"
        );
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn parses_echo_reply_and_quoted_error() {
        let mut reply = vec![
            0x45, 0, 0, 44, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 0, 1, 100, 64, 1, 2,
        ];
        reply.extend_from_slice(&[ECHO_REPLY_V4, 0, 0, 0, 0xab, 0xcd, 0, 9]);
        let hit = parse_v4(&reply, 0xabcd).unwrap();
        assert_eq!(hit.seq, 9);
        assert_eq!(hit.target, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert!(parse_v4(&reply, 0x1111).is_none(), "someone else's id");

        let mut error = vec![
            0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0, 100, 64, 1, 1, 100, 64, 1, 2,
        ];
        error.extend_from_slice(&[DEST_UNREACH_V4, 1, 0, 0, 0, 0, 0, 0]);
        error.extend_from_slice(&[
            0x45, 0, 0, 44, 0, 0, 0, 0, 64, 1, 0, 0, 100, 64, 1, 2, 198, 18, 0, 1,
        ]);
        error.extend_from_slice(&[ECHO_REQUEST_V4, 0, 0, 0, 0xab, 0xcd, 0, 10]);
        let hit = parse_v4(&error, 0xabcd).unwrap();
        assert_eq!(hit.seq, 10);
        assert_eq!(hit.target, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            hit.error.as_deref(),
            Some("ICMP host unreachable from 100.64.1.1")
        );
    }
}
