//! The lab's fixed addressing, usable without a [`Lab`](super::Lab). `k` is an ISP number
//! (1-based), `i` a server or client number (1-based). They panic on numbers out of
//! range (`k` outside 1..=8, `i` outside 1..=254).

use std::net::{IpAddr, Ipv4Addr};

use super::{MAX_ISPS, MAX_SERVERS};

fn octet(n: usize, max: usize, what: &str) -> u8 {
    assert!(
        (1..=max).contains(&n),
        "{what} number {n} is out of range 1..={max}"
    );
    n as u8
}

fn k(k: usize) -> u8 {
    octet(k, MAX_ISPS, "ISP")
}

/// Router interface towards ISP k: `wan{k}`.
pub fn wan_if(k: usize) -> String {
    format!("wan{}", self::k(k))
}

/// The router's address on wan{k}: 100.64.k.2 (/24).
pub fn wan(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, self::k(k), 2)
}

/// The customer prefix of ISP k: (100.64.k.0, 24).
pub fn wan_prefix(k: usize) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(100, 64, self::k(k), 0), 24)
}

/// ISP k's address on `cust` at creation, the router's gateway: 100.64.k.1.
pub fn default_gateway(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, self::k(k), 1)
}

/// Metric of the DHCP-style default route on wan{k}: k * 10.
pub fn gateway_metric(k: usize) -> u32 {
    u32::from(self::k(k)) * 10
}

/// ISP k's address on `up`, towards inet: 198.19.k.2 (/24).
pub fn isp_up(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, self::k(k), 2)
}

/// inet's address on `isp{k}`: 198.19.k.1 (/24), ISP k's default gateway.
pub fn inet_isp(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, self::k(k), 1)
}

/// inet interface towards ISP k: `isp{k}`.
pub fn inet_if(k: usize) -> String {
    format!("isp{}", self::k(k))
}

/// Target server i on inet's loopback: 198.18.0.i (/32).
pub fn server(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, octet(i, MAX_SERVERS, "server"))
}

/// The router's LAN interface.
pub const LAN_IF: &str = "lan0";
/// The LAN client's interface.
pub const LAN_CLIENT_IF: &str = "eth0";
/// The router's LAN address, the client's gateway: 192.0.2.1 (/24).
pub const LAN_ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The LAN client's primary address: 192.0.2.2 (/24).
pub const LAN_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The LAN prefix: (192.0.2.0, 24).
pub const LAN_PREFIX: (Ipv4Addr, u8) = (Ipv4Addr::new(192, 0, 2, 0), 24);

/// LAN client address i: 192.0.2.(i+1), so 1 is the primary 192.0.2.2 and 2.. are
/// the extra addresses 192.0.2.3...
pub fn lan_client(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, octet(i, 253, "LAN client") + 1)
}

/// Which ISP (1..=8) a source address belongs to: 100.64.k.x → k.
pub fn isp_of(addr: IpAddr) -> Option<usize> {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let k = usize::from(o[2]);
            (o[0] == 100 && o[1] == 64 && (1..=MAX_ISPS).contains(&k)).then_some(k)
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().and_then(|v4| isp_of(IpAddr::V4(v4))),
    }
}
