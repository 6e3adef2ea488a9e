//! ARP probes: "does the gateway still answer on this wire?"
//!
//! An `AF_PACKET` datagram socket bound to the interface (the kernel adds the Ethernet
//! header) sends a broadcast ARP request for the gateway from the link's address and
//! hardware address; a BPF filter lets only ARP replies from the gateway wake us.
//! Broadcast rather than unicast to the cached MAC so that a replaced gateway (new MAC)
//! still answers. Routing, device binding and marks do not apply at this layer: the
//! interface index is the binding.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{describe, register, ProbeEndpoint, ProbeError, ProbeOutcome};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const ARP_LEN: usize = 28;

/// One link's ARP socket and the probes waiting for the gateway to answer.
pub(crate) struct ArpProber {
    socket: Arc<AsyncFd<Socket>>,
    ifindex: u32,
    request: [u8; ARP_LEN],
    waiting: Arc<Mutex<Waiting>>,
    reader: JoinHandle<()>,
}

#[derive(Default)]
struct Waiting {
    next_token: u64,
    probes: Vec<(u64, Instant, oneshot::Sender<ProbeOutcome>)>,
}

impl Drop for ArpProber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ArpProber {
    pub(crate) fn open(ep: &ProbeEndpoint) -> Result<ArpProber, ProbeError> {
        let ifname = &ep.ifname;
        let gateway = ep.gateway4.ok_or_else(|| ProbeError::NoGateway {
            ifname: ifname.clone(),
        })?;
        let source = ep.source4.ok_or_else(|| ProbeError::NoAddress {
            family: "IPv4",
            ifname: ifname.clone(),
            target: gateway.to_string(),
        })?;
        let io_err = |what, e| ProbeError::io(what, ifname, e);
        if ep.ifindex == 0 {
            // Index 0 would bind the packet socket to every interface.
            return Err(io_err(
                "find the interface",
                io::Error::from_raw_os_error(libc::ENODEV),
            ));
        }
        let eth_p_arp = (libc::ETH_P_ARP as u16).to_be();
        let socket = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(eth_p_arp))),
        )
        .map_err(|e| io_err("open an ARP socket", e))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| io_err("make the ARP socket non-blocking", e))?;
        // Filter before binding: from the bind on, packets queue up.
        socket
            .attach_filter(&reply_filter(gateway))
            .map_err(|e| io_err("attach the ARP reply filter", e))?;
        let addr = link_addr(ep.ifindex, [0; 8]);
        // SAFETY: `addr` is a valid sockaddr_ll and the length is its size.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_err(
                "bind the ARP socket to the interface",
                io::Error::last_os_error(),
            ));
        }
        let mac = hardware_address(&socket, ifname)?;
        let socket = Arc::new(register(socket, ifname)?);
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let reader = tokio::spawn(read_replies(
            Arc::clone(&socket),
            Arc::clone(&waiting),
            gateway,
        ));
        Ok(ArpProber {
            socket,
            ifindex: ep.ifindex,
            request: request(mac, source, gateway),
            waiting,
            reader,
        })
    }

    pub(crate) async fn probe(&self) -> ProbeOutcome {
        let (done, answer) = oneshot::channel();
        let token = {
            let mut waiting = self.waiting.lock().expect("arp waiting list poisoned");
            let token = waiting.next_token;
            waiting.next_token += 1;
            waiting.probes.push((token, Instant::now(), done));
            token
        };
        let _forget = Forget {
            waiting: &self.waiting,
            token,
        };
        let dest = link_addr(self.ifindex, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        let sent = self
            .socket
            .async_io(Interest::WRITABLE, |s| {
                // SAFETY: sends `request` to the valid sockaddr_ll `dest`.
                let rc = unsafe {
                    libc::sendto(
                        s.as_raw_fd(),
                        self.request.as_ptr().cast(),
                        self.request.len(),
                        0,
                        (&dest as *const libc::sockaddr_ll).cast(),
                        mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            })
            .await;
        if let Err(e) = sent {
            return ProbeOutcome::Failed(format!("cannot send an ARP request: {}", describe(&e)));
        }
        answer
            .await
            .unwrap_or_else(|_| ProbeOutcome::Failed("ARP reader stopped".to_string()))
    }
}

struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    token: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.probes.retain(|(t, _, _)| *t != self.token);
        }
    }
}

/// A reply from the gateway answers every probe waiting: they all asked the same thing.
async fn read_replies(
    socket: Arc<AsyncFd<Socket>>,
    waiting: Arc<Mutex<Waiting>>,
    gateway: Ipv4Addr,
) {
    let mut buf = [0u8; 256];
    let mut errors = 0u32;
    loop {
        match socket
            .async_io(Interest::READABLE, |s| super::recv_from(s, &mut buf))
            .await
        {
            Ok((n, _)) => {
                errors = 0;
                let now = Instant::now();
                if !is_reply_from(&buf[..n], gateway) {
                    continue;
                }
                let Ok(mut waiting) = waiting.lock() else {
                    return;
                };
                for (_, sent, done) in waiting.probes.drain(..) {
                    let _ = done.send(ProbeOutcome::Answered(now.saturating_duration_since(sent)));
                }
            }
            Err(_) => {
                errors += 1;
                if errors > 64 {
                    // Persistent (the interface is gone): probes time out, and the next
                    // endpoint opens a new socket.
                    return;
                }
            }
        }
    }
}

fn is_reply_from(packet: &[u8], gateway: Ipv4Addr) -> bool {
    packet.len() >= ARP_LEN
        && packet[0..2] == [0, 1]
        && packet[2..4] == [0x08, 0x00]
        && u16::from_be_bytes([packet[6], packet[7]]) == ARP_REPLY
        && packet[14..18] == gateway.octets()
}

/// An Ethernet/IPv4 ARP request (the payload; the kernel adds the link header).
fn request(mac: [u8; 6], source: Ipv4Addr, gateway: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&source.octets());
    // Target hardware address unknown: zeros.
    p[24..28].copy_from_slice(&gateway.octets());
    p
}

fn link_addr(ifindex: u32, addr: [u8; 8]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr = addr;
    sll
}

/// The interface's Ethernet address (SIOCGIFHWADDR); anything but Ethernet is refused.
fn hardware_address(socket: &Socket, ifname: &str) -> Result<[u8; 6], ProbeError> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    if ifname.len() >= req.ifr_name.len() {
        return Err(ProbeError::io(
            "read the hardware address",
            ifname,
            io::Error::from_raw_os_error(libc::ENAMETOOLONG),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name from and writes the address into `req`.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(ProbeError::io(
            "read the hardware address",
            ifname,
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(ProbeError::NotEthernet {
            ifname: ifname.to_string(),
        });
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

// Classic BPF opcodes (linux/filter.h).
const LD_H_ABS: u16 = 0x28;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

/// Pass only ARP replies whose sender is the gateway. A datagram packet socket's filter
/// sees the packet from the ARP header on.
fn reply_filter(gateway: Ipv4Addr) -> Vec<SockFilter> {
    let f = SockFilter::new;
    vec![
        f(LD_H_ABS, 0, 0, 6),                 // 0: A = operation
        f(JEQ_K, 0, 3, u32::from(ARP_REPLY)), // 1: reply? 2 : 5
        f(LD_W_ABS, 0, 0, 14),                // 2: A = sender protocol address
        f(JEQ_K, 0, 1, u32::from(gateway)),   // 3: the gateway? 4 : 5
        f(RET_K, 0, 0, 0xffff),               // 4: accept
        f(RET_K, 0, 0, 0),                    // 5: drop
    ]
}
