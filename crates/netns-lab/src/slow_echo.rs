//! A user-space ICMP echo responder that answers late: latency without netem.
//!
//! [`SlowEcho::start`] turns the kernel's own echo replies off in a namespace
//! (`net.ipv4.icmp_echo_ignore_all = 1`) and answers every IPv4 echo request that
//! arrives for an address of the namespace itself, after a delay: one delay for every
//! destination ([`SlowEcho::set_delay`]) or one per destination address
//! ([`SlowEcho::set_delay_for`], e.g. only target 198.18.0.1 slow). Replies come from
//! the address the request was sent to, carry the request's id, sequence and payload,
//! and are built with `IP_HDRINCL` so the source is exactly that address whatever the
//! routing says. A delay change applies to requests that arrive after it.
//!
//! Dropping the responder stops it and restores the sysctl's previous value (the
//! kernel answers again). Typical use, in "the internet" of a [`crate::Lab`]:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! # let lab = netns_lab::Lab::new("doc-slow")?;
//! let echo = netns_lab::SlowEcho::start(lab.inet(), std::time::Duration::from_millis(300))?;
//! // ... pings to 198.18.0.x now take 300 ms more ...
//! echo.set_delay(std::time::Duration::ZERO);
//! # Ok(()) }
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs;
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::netns::Netns;

const IGNORE_ALL: &str = "/proc/sys/net/ipv4/icmp_echo_ignore_all";
/// How often the responder looks at its stop flag when idle.
const POLL: Duration = Duration::from_millis(20);

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

#[derive(Debug, Default)]
struct Delays {
    all: Duration,
    per_destination: HashMap<Ipv4Addr, Duration>,
}

impl Delays {
    fn for_destination(&self, dst: Ipv4Addr) -> Duration {
        self.per_destination.get(&dst).copied().unwrap_or(self.all)
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    delays: Mutex<Delays>,
    requests: AtomicU64,
    answered: AtomicU64,
}

/// The responder; stops (and lets the kernel answer again) when dropped.
#[derive(Debug)]
pub struct SlowEcho {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SlowEcho {
    /// Starts answering echo requests in `ns` after `delay` (zero: at once, like the
    /// kernel, but from user space).
    pub fn start(ns: &Netns, delay: Duration) -> Result<SlowEcho> {
        let shared = Arc::new(Shared::default());
        shared.delays.lock().unwrap_or_else(|e| e.into_inner()).all = delay;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let worker = Arc::clone(&shared);
        let thread = ns.spawn_thread(move || {
            // /proc/sys/net is this thread's namespace's: it entered it before running.
            let previous = fs::read_to_string(IGNORE_ALL)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "0".to_string());
            let setup = fs::write(IGNORE_ALL, "1").and_then(|()| open_socket());
            let socket = match setup {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(e) => {
                    let _ = fs::write(IGNORE_ALL, &previous);
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            serve(&socket, &worker);
            let _ = fs::write(IGNORE_ALL, &previous);
        })?;
        let started = ready_rx
            .recv()
            .map_err(|_| anyhow!("slow echo responder thread vanished"))?;
        let echo = SlowEcho {
            shared,
            thread: Some(thread),
        };
        started.with_context(|| format!("starting the slow echo responder in {}", ns.name()))?;
        Ok(echo)
    }

    /// The delay of every destination without its own ([`SlowEcho::set_delay_for`]).
    pub fn set_delay(&self, delay: Duration) {
        self.delays().all = delay;
    }

    /// The delay of replies from `dst` (requests sent to `dst`); `None` goes back to the
    /// common delay.
    pub fn set_delay_for(&self, dst: Ipv4Addr, delay: Option<Duration>) {
        let mut delays = self.delays();
        match delay {
            Some(d) => delays.per_destination.insert(dst, d),
            None => delays.per_destination.remove(&dst),
        };
    }

    /// Echo requests seen so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Replies sent so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::SeqCst)
    }

    fn delays(&self) -> std::sync::MutexGuard<'_, Delays> {
        self.shared.delays.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SlowEcho {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A raw ICMP socket that receives every ICMP packet for this namespace's addresses and
/// sends packets with our own IP header.
fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_HDRINCL,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// A reply waiting for its time.
struct Pending {
    due: Instant,
    /// Tie-breaker: replies due at the same instant leave in arrival order.
    order: u64,
    to: Ipv4Addr,
    packet: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

fn serve(socket: &OwnedFd, shared: &Shared) {
    let mut queue: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        while queue.peek().is_some_and(|Reverse(p)| p.due <= now) {
            let Reverse(p) = queue.pop().expect("peeked");
            if send(socket, p.to, &p.packet).is_ok() {
                shared.answered.fetch_add(1, Ordering::SeqCst);
            }
        }
        let wait = queue
            .peek()
            .map_or(POLL, |Reverse(p)| p.due.saturating_duration_since(now))
            .min(POLL);
        if !readable(socket, wait) {
            continue;
        }
        // SAFETY: recv into a buffer we own, of its length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        let Some((to, from, packet)) = reply_to(&buf[..n]) else {
            continue;
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let delay = shared
            .delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .for_destination(from);
        order += 1;
        queue.push(Reverse(Pending {
            due: Instant::now() + delay,
            order,
            to,
            packet,
        }));
    }
}

/// Waits up to `wait` for the socket to be readable.
fn readable(socket: &OwnedFd, wait: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll on one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

fn send(socket: &OwnedFd, to: Ipv4Addr, packet: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from(to).to_be();
    // SAFETY: sendto with a buffer we own and a valid sockaddr_in of its size.
    let rc = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// For an IPv4 echo request: (its source, its destination, the whole reply packet with
/// IP header), else `None`.
fn reply_to(request: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, Vec<u8>)> {
    if request.len() < 20 || request[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(request[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([request[2], request[3]])).min(request.len());
    if ihl < 20 || total < ihl + 8 || request[9] != 1 {
        return None;
    }
    let icmp = &request[ihl..total];
    if icmp[0] != ICMP_ECHO_REQUEST || icmp[1] != 0 {
        return None;
    }
    let src = Ipv4Addr::new(request[12], request[13], request[14], request[15]);
    let dst = Ipv4Addr::new(request[16], request[17], request[18], request[19]);
    let mut reply = Vec::with_capacity(20 + icmp.len());
    let total_len = u16::try_from(20 + icmp.len()).ok()?;
    reply.extend_from_slice(&[0x45, 0]);
    reply.extend_from_slice(&total_len.to_be_bytes());
    // Id 0 and checksum 0: the kernel fills them in for IP_HDRINCL packets.
    reply.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    reply.extend_from_slice(&dst.octets());
    reply.extend_from_slice(&src.octets());
    let start = reply.len();
    reply.extend_from_slice(icmp);
    reply[start] = ICMP_ECHO_REPLY;
    reply[start + 2] = 0;
    reply[start + 3] = 0;
    let sum = checksum(&reply[start..]);
    reply[start + 2..start + 4].copy_from_slice(&sum.to_be_bytes());
    Some((src, dst, reply))
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_swaps_addresses_and_keeps_id_sequence_payload() {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7, b'h', b'i', b'!'];
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut request = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        request.extend_from_slice(&[100, 64, 1, 2]);
        request.extend_from_slice(&[198, 18, 0, 1]);
        request.extend_from_slice(&icmp);
        let len = request.len() as u16;
        request[2..4].copy_from_slice(&len.to_be_bytes());

        let (to, from, reply) = reply_to(&request).unwrap();
        assert_eq!(to, Ipv4Addr::new(100, 64, 1, 2));
        assert_eq!(from, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(&reply[12..16], &[198, 18, 0, 1]);
        assert_eq!(&reply[16..20], &[100, 64, 1, 2]);
        let icmp = &reply[20..];
        assert_eq!(icmp[0], ICMP_ECHO_REPLY);
        assert_eq!(&icmp[4..], &[0x12, 0x34, 0, 7, b'h', b'i', b'!']);
        assert_eq!(checksum(icmp), 0, "a valid checksum sums to zero");
    }

    #[test]
    fn other_packets_are_ignored() {
        assert!(reply_to(&[0x45; 10]).is_none());
        let mut reply = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0];
        reply.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]);
        reply.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 1]); // an echo reply
        assert!(reply_to(&reply).is_none());
    }
}
