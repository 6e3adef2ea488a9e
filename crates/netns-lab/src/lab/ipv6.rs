//! IPv6 in the lab, opt-in per ISP ([`LabBuilder::ipv6`](super::LabBuilder::ipv6)); a
//! lab without it is exactly the IPv4 lab.
//!
//! ISP k with IPv6 (all inside 2001:db8::/32, see [`addr6`]):
//! * announces 2001:db8:k::/64 on `cust` by router advertisement from a real `radvd`
//!   (its own config and pid file, started in the ISP namespace, killed with the lab);
//!   the router takes it with `accept_ra = 2` (it forwards) and numbers wan{k} by SLAAC.
//!   The RA's next hop is the ISP's link-local address, as with real ISPs.
//! * routes 2001:db8:k100::/48 to the router (its wan{k} link-local address, fixed by
//!   a fixed MAC address), for NPTv6 or routed LAN prefixes;
//! * drops forwarded IPv6 from `cust` whose source is in neither prefix (BCP 38), so a
//!   test can prove which ISP a LAN connection left through.
//!
//! "The internet" has 2001:db8:ee::i (/128) for every target server i on its loopback,
//! and the LAN 2001:db8:100::/64 (router ::1, client ::2, extras ::3...).
//!
//! After building, each IPv6 ISP has been solicited (`rdisc6 -1`) and the lab has
//! waited until the router has the SLAAC address and the RA default route on wan{k}.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{addr, Lab};
use crate::whoami::WhoAmIServer;

/// nft table (family `ip6`) holding IPv6 BCP 38 in each IPv6 ISP.
pub const BCP38_TABLE6: &str = "lab_bcp38_6";

/// The lab's fixed IPv6 addressing. `k` is an ISP number (1..=8), `i` a server or
/// client number (1-based).
pub mod addr6 {
    use std::net::{IpAddr, Ipv6Addr};

    fn k16(k: usize) -> u16 {
        assert!(
            (1..=super::super::MAX_ISPS).contains(&k),
            "ISP number {k} is out of range"
        );
        k as u16
    }

    /// ISP k's customer link, announced by RA: (2001:db8:k::, 64).
    pub fn cust_prefix(k: usize) -> (Ipv6Addr, u8) {
        (Ipv6Addr::new(0x2001, 0xdb8, k16(k), 0, 0, 0, 0, 0), 64)
    }

    /// ISP k's global address on `cust`: 2001:db8:k::1.
    pub fn cust_gateway(k: usize) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, k16(k), 0, 0, 0, 0, 1)
    }

    /// The prefix ISP k routes to the router: (2001:db8:k100::, 48).
    pub fn routed_prefix(k: usize) -> (Ipv6Addr, u8) {
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0x1000 * k16(k) + 0x100, 0, 0, 0, 0, 0),
            48,
        )
    }

    /// The first /64 of [`routed_prefix`]: (2001:db8:k100::, 64), e.g. an NPTv6
    /// outside prefix.
    pub fn routed_subnet(k: usize) -> (Ipv6Addr, u8) {
        (routed_prefix(k).0, 64)
    }

    /// The fixed MAC address of the router's wan{k} in IPv6 labs: 02:00:00:00:0k:02.
    pub fn wan_mac(k: usize) -> String {
        format!("02:00:00:00:{:02x}:02", k16(k))
    }

    /// The EUI-64 interface id of [`wan_mac`]: ::ff:fe00:k02.
    fn wan_iid(k: usize) -> [u16; 4] {
        [0, 0x00ff, 0xfe00, 0x0002 | (k16(k) << 8)]
    }

    /// The router's link-local address on wan{k}: fe80::ff:fe00:k02.
    pub fn wan_link_local(k: usize) -> Ipv6Addr {
        let i = wan_iid(k);
        Ipv6Addr::new(0xfe80, 0, 0, 0, i[0], i[1], i[2], i[3])
    }

    /// The router's SLAAC address on wan{k}: 2001:db8:k::ff:fe00:k02.
    pub fn wan(k: usize) -> Ipv6Addr {
        let i = wan_iid(k);
        Ipv6Addr::new(0x2001, 0xdb8, k16(k), 0, i[0], i[1], i[2], i[3])
    }

    /// ISP k's address on `up`: 2001:db8:ff:k::2 (/64).
    pub fn isp_up(k: usize) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0xff, k16(k), 0, 0, 0, 2)
    }

    /// inet's address towards ISP k: 2001:db8:ff:k::1 (/64).
    pub fn inet_isp(k: usize) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0xff, k16(k), 0, 0, 0, 1)
    }

    /// Target server i on inet's loopback: 2001:db8:ee::i (/128).
    pub fn server(i: usize) -> Ipv6Addr {
        assert!(
            (1..=0xffff).contains(&i),
            "server number {i} is out of range"
        );
        Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, i as u16)
    }

    /// The LAN's IPv6 prefix: (2001:db8:100::, 64).
    pub const LAN_PREFIX: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0), 64);
    /// The router's LAN address: 2001:db8:100::1.
    pub const LAN_ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);

    /// LAN client address i: 2001:db8:100::(i+1) (1 is the primary ::2).
    pub fn lan_client(i: usize) -> Ipv6Addr {
        assert!(
            (1..=253).contains(&i),
            "LAN client number {i} is out of range"
        );
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i as u16 + 1)
    }

    /// Which ISP an IPv6 source belongs to: its customer /64 or its routed /48.
    pub fn isp_of(addr: IpAddr) -> Option<usize> {
        let IpAddr::V6(a) = addr else { return None };
        let s = a.segments();
        if s[0] != 0x2001 || s[1] != 0xdb8 {
            return None;
        }
        let k = if (1..=8).contains(&s[2]) && s[3] == 0 {
            s[2]
        } else if s[2] & 0x0fff == 0x100 && (1..=8).contains(&(s[2] >> 12)) {
            s[2] >> 12
        } else {
            return None;
        };
        Some(usize::from(k))
    }
}

fn net((a, len): (Ipv6Addr, u8)) -> String {
    format!("{a}/{len}")
}

impl Lab {
    /// Whether ISP k has IPv6 in this lab.
    pub fn has_ipv6(&self, k: usize) -> bool {
        self.check_k(k);
        self.opts.ipv6.contains(&k)
    }

    /// The ISPs with IPv6, ascending.
    pub fn ipv6_isps(&self) -> Vec<usize> {
        self.opts.ipv6.clone()
    }

    /// The router's SLAAC address on wan{k} (ISP k must have IPv6).
    pub fn wan_addr6(&self, k: usize) -> Ipv6Addr {
        assert!(self.has_ipv6(k), "ISP {k} has no IPv6 in this lab");
        addr6::wan(k)
    }

    /// Target server i's IPv6 address: 2001:db8:ee::i.
    pub fn server6(&self, i: usize) -> Ipv6Addr {
        assert!(
            (1..=self.opts.servers).contains(&i),
            "server {i} does not exist"
        );
        addr6::server(i)
    }

    /// The LAN client's primary IPv6 address: 2001:db8:100::2.
    pub fn lan_client_addr6(&self) -> Ipv6Addr {
        addr6::lan_client(1)
    }

    /// A TCP [`WhoAmIServer`] in inet on `[::]:port`: it answers on every IPv6 target
    /// and, dual stack, on every IPv4 one too (those peers are seen as v4-mapped
    /// addresses, which [`Lab::isp_of`] understands). Use it instead of
    /// [`Lab::whoami_tcp`] on the same port, not beside it.
    pub fn whoami_tcp6(&self, port: u16) -> Result<WhoAmIServer> {
        WhoAmIServer::tcp(
            &self.inet,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        )
    }

    /// Packets ISP k's IPv6 BCP 38 filter has dropped so far.
    pub fn bcp38_drops6(&self, k: usize) -> Result<u64> {
        if !self.opts.bcp38 || !self.has_ipv6(k) {
            return Ok(0);
        }
        let out = self
            .isp(k)
            .exec("nft", &["list", "table", "ip6", BCP38_TABLE6])?;
        let text = String::from_utf8_lossy(&out.stdout);
        super::counter_packets(&text).with_context(|| format!("no counter in:\n{text}"))
    }

    /// IPv6 sysctls of every namespace, before interfaces exist: forwarding where it
    /// routes, no duplicate address detection (addresses usable at once).
    pub(super) fn ipv6_sysctls(&self) -> Result<()> {
        let no_dad = [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ];
        for ns in [&self.router, &self.inet]
            .into_iter()
            .chain(self.isps.iter())
        {
            let mut s = no_dad.to_vec();
            s.push(("net.ipv6.conf.all.forwarding", "1"));
            ns.sysctls(&s)?;
        }
        self.lan.sysctls(&no_dad)
    }

    /// Everything IPv6, after the IPv4 lab is built.
    pub(super) fn setup_ipv6(&self) -> Result<()> {
        let mut inet = Vec::new();
        for &k in &self.opts.ipv6 {
            let dev = addr::inet_if(k);
            inet.push(format!("addr add {}/64 dev {dev}", addr6::inet_isp(k)));
            for p in [addr6::cust_prefix(k), addr6::routed_prefix(k)] {
                inet.push(format!(
                    "route add {} via {} dev {dev}",
                    net(p),
                    addr6::isp_up(k)
                ));
            }
        }
        for i in 1..=self.opts.servers {
            inet.push(format!("addr add {}/128 dev lo", addr6::server(i)));
        }
        self.inet.ip_batch(&inet)?;

        for &k in &self.opts.ipv6 {
            self.isp(k).ip_batch(&[
                format!("addr add {}/64 dev cust", addr6::cust_gateway(k)),
                format!("addr add {}/64 dev up", addr6::isp_up(k)),
                format!("route add ::/0 via {} dev up", addr6::inet_isp(k)),
                format!(
                    "route add {} via {} dev cust",
                    net(addr6::routed_prefix(k)),
                    addr6::wan_link_local(k)
                ),
            ])?;
            if self.opts.bcp38 {
                self.isp(k).nft(&format!(
                    "table ip6 {BCP38_TABLE6} {{\n\
                     \tchain forward {{\n\
                     \t\ttype filter hook forward priority filter; policy accept;\n\
                     \t\tiifname \"cust\" ip6 saddr != {{ {}, {} }} counter drop\n\
                     \t}}\n\
                     }}\n",
                    net(addr6::cust_prefix(k)),
                    net(addr6::routed_prefix(k))
                ))?;
            }
            self.start_radvd(k)?;
        }

        let mut lan = vec![format!(
            "addr add {}/64 dev {}",
            addr6::lan_client(1),
            addr::LAN_CLIENT_IF
        )];
        for i in 2..=self.opts.extra_lan_clients + 1 {
            lan.push(format!(
                "addr add {}/64 dev {}",
                addr6::lan_client(i),
                addr::LAN_CLIENT_IF
            ));
        }
        lan.push(format!("route add ::/0 via {}", addr6::LAN_ROUTER));
        self.lan.ip_batch(&lan)?;
        self.router.ip_batch(&[format!(
            "addr add {}/64 dev {}",
            addr6::LAN_ROUTER,
            addr::LAN_IF
        )])?;
        for &k in &self.opts.ipv6 {
            self.solicit_ra(k)?;
        }
        Ok(())
    }

    /// Before wan{k} comes up: the fixed MAC (so its link-local and SLAAC addresses
    /// are known), and `accept_ra = 2` (a forwarding router ignores RAs otherwise).
    pub(super) fn wan6_prepare_cmds(&self, k: usize) -> Result<Vec<String>> {
        let wan = addr::wan_if(k);
        self.router.sysctls(&[
            (&format!("net.ipv6.conf.{wan}.accept_ra"), "2"),
            (&format!("net.ipv6.conf.{wan}.autoconf"), "1"),
        ])?;
        Ok(vec![format!(
            "link set dev {wan} address {}",
            addr6::wan_mac(k)
        )])
    }

    /// `radvd` in ISP k, announcing 2001:db8:k::/64 on `cust` every few seconds.
    fn start_radvd(&self, k: usize) -> Result<()> {
        let isp = self.isp(k);
        let dir = std::env::temp_dir();
        let conf = dir.join(format!("{}-radvd.conf", isp.name()));
        let pid = dir.join(format!("{}-radvd.pid", isp.name()));
        std::fs::write(
            &conf,
            format!(
                "interface cust {{\n\
                 \tAdvSendAdvert on;\n\
                 \tMinRtrAdvInterval 3;\n\
                 \tMaxRtrAdvInterval 10;\n\
                 \tAdvDefaultLifetime 1800;\n\
                 \tprefix {} {{\n\
                 \t\tAdvOnLink on;\n\
                 \t\tAdvAutonomous on;\n\
                 \t}};\n\
                 }};\n",
                net(addr6::cust_prefix(k))
            ),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        let guard = isp
            .spawn(
                Command::new("radvd")
                    .arg("--nodaemon")
                    .arg("--config")
                    .arg(&conf)
                    .arg("--pidfile")
                    .arg(&pid)
                    .args(["--logmethod", "stderr"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .context("starting radvd (Debian package radvd; scripts/install-deps.sh)")?;
        self.daemons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(super::LabDaemon {
                _guard: guard,
                files: vec![conf, pid],
            });
        Ok(())
    }

    /// Solicits a router advertisement on wan{k} (`rdisc6 -1`, at once instead of at
    /// radvd's next unsolicited one) until the router has its SLAAC address and the RA
    /// default route there.
    pub fn solicit_ra(&self, k: usize) -> Result<()> {
        let wan = self.wan_if(k);
        let want = addr6::wan(k).to_string();
        self.wait_until(Duration::from_secs(10), &format!("an RA on {wan}"), || {
            // radvd may not listen yet: solicit again each round.
            let _ = self
                .router
                .command("rdisc6")
                .args(["-1", "-q", "-w", "200", &wan])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running rdisc6 (Debian package ndisc6)")?;
            let addrs = self.router.ip(&["-6", "addr", "show", "dev", &wan])?;
            let routes = self
                .router
                .ip(&["-6", "route", "show", "default", "dev", &wan])?;
            Ok(String::from_utf8_lossy(&addrs.stdout).contains(&want)
                && !String::from_utf8_lossy(&routes.stdout).trim().is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::addr6::*;

    #[test]
    fn addressing6() {
        assert_eq!(cust_prefix(2).0.to_string(), "2001:db8:2::");
        assert_eq!(routed_prefix(2).0.to_string(), "2001:db8:2100::");
        assert_eq!(wan(1).to_string(), "2001:db8:1::ff:fe00:102");
        assert_eq!(wan_link_local(3).to_string(), "fe80::ff:fe00:302");
        assert_eq!(wan_mac(3), "02:00:00:00:03:02");
        assert_eq!(server(4).to_string(), "2001:db8:ee::4");
        assert_eq!(lan_client(1).to_string(), "2001:db8:100::2");
        assert_eq!(isp_of(wan(2).into()), Some(2));
        assert_eq!(isp_of("2001:db8:2100::5".parse().unwrap()), Some(2));
        assert_eq!(isp_of("2001:db8:100::2".parse().unwrap()), None);
        assert_eq!(isp_of("2001:db8:ee::1".parse().unwrap()), None);
    }
}
