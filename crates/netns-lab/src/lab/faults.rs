//! Failures a test inflicts on the lab: blackholes, loss, carrier, interfaces that go
//! away or come back, a gateway that moves.

use std::net::Ipv4Addr;

use anyhow::{ensure, Result};

use super::{loss_set, remove_family_table, remove_table_script, Lab, BLACKHOLE_TABLE, LOSS_TABLE};

/// nft table (family `ip6`) of [`Lab::blackhole_isp6`] in an ISP.
const BLACKHOLE6_TABLE: &str = "lab_blackhole6";

impl Lab {
    /// Blackholes ISP k upstream of its gateway (`on = true`) or heals it: an nft table
    /// `ip lab_blackhole` in the ISP drops every packet it forwards from or to `cust`.
    /// The carrier stays up and the gateway itself still answers ARP and pings, as when
    /// an ISP's network fails behind a live modem. Idempotent. An ISP with IPv6 drops
    /// forwarded IPv6 too (`ip6 lab_blackhole`); its router advertisements go on.
    pub fn blackhole_isp(&self, k: usize, on: bool) -> Result<()> {
        let mut script = remove_table_script(BLACKHOLE_TABLE);
        if self.has_ipv6(k) {
            script.push_str(&remove_family_table("ip6", BLACKHOLE_TABLE));
            if on {
                script.push_str(&drop_customer_table("ip6", BLACKHOLE_TABLE));
            }
        }
        if on {
            script.push_str(&drop_customer_table("ip", BLACKHOLE_TABLE));
        }
        self.isp(k).nft(&script)?;
        Ok(())
    }

    /// Blackholes only IPv6 in ISP k (`on = true`) or heals it: an nft table `ip6
    /// lab_blackhole6` drops every IPv6 packet the ISP forwards from or to `cust`, while
    /// IPv4 passes (an ISP whose IPv6 core fails alone). Independent of
    /// [`Lab::blackhole_isp`]. ISP k must have IPv6. Idempotent.
    pub fn blackhole_isp6(&self, k: usize, on: bool) -> Result<()> {
        ensure!(self.has_ipv6(k), "ISP {k} has no IPv6 in this lab");
        let mut script = remove_family_table("ip6", BLACKHOLE6_TABLE);
        if on {
            script.push_str(&drop_customer_table("ip6", BLACKHOLE6_TABLE));
        }
        self.isp(k).nft(&script)?;
        Ok(())
    }

    /// Makes ISP k's customer line lose `percent` % of IPv4 packets in each direction
    /// (0 removes the loss; 100 drops everything; ARP is never dropped, so the carrier
    /// and neighbour entries stay). Covers forwarded traffic and traffic to and from
    /// the ISP's own gateway address.
    ///
    /// The loss is exact and deterministic: nft table `ip lab_loss` uses
    /// `numgen inc mod 100` per direction and drops the packets whose counter value is
    /// in a set of `percent` values spread evenly over 0..100, so of every 100
    /// consecutive packets in a direction exactly `percent` are dropped, never in one
    /// burst (30 %: about every third packet, not 30 in a row).
    pub fn isp_loss(&self, k: usize, percent: u32) -> Result<()> {
        ensure!(percent <= 100, "loss of {percent} % is not a percentage");
        let mut script = remove_table_script(LOSS_TABLE);
        if percent > 0 {
            let set = loss_set(percent)
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            script.push_str(&format!(
                "table ip {LOSS_TABLE} {{\n\
                 \tchain prerouting {{\n\
                 \t\ttype filter hook prerouting priority mangle; policy accept;\n\
                 \t\tiifname \"cust\" numgen inc mod 100 {{ {set} }} counter drop\n\
                 \t}}\n\
                 \tchain postrouting {{\n\
                 \t\ttype filter hook postrouting priority mangle; policy accept;\n\
                 \t\toifname \"cust\" numgen inc mod 100 {{ {set} }} counter drop\n\
                 \t}}\n\
                 }}\n"
            ));
        }
        self.isp(k).nft(&script)?;
        Ok(())
    }

    /// Carrier of the router's wan{k}: sets ISP k's `cust` down (the router then sees
    /// `NO-CARRIER`, state `LOWERLAYERDOWN`, its routes flagged `linkdown`) or up.
    pub fn carrier(&self, k: usize, up: bool) -> Result<()> {
        self.isp(k)
            .ip(&["link", "set", "cust", if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Administrative state of the router's wan{k} (`ip link set wan{k} down|up`).
    /// Going down makes the kernel drop every route through it; coming up re-adds the
    /// DHCP-style default route (when `gateway_routes` is on), as a DHCP client would.
    pub fn router_link_admin(&self, k: usize, up: bool) -> Result<()> {
        let wan = self.wan_if(k);
        if up {
            let mut cmds = vec![format!("link set {wan} up")];
            if self.opts.gateway_routes {
                cmds.push(self.gateway_route_cmd(k));
            }
            self.router.ip_batch(&cmds)
        } else {
            self.router.ip(&["link", "set", &wan, "down"])?;
            Ok(())
        }
    }

    /// Deletes the wan{k} veth pair (the router's wan{k} and ISP k's `cust` vanish,
    /// with their addresses and routes), like a PPP session that went away.
    pub fn delete_wan(&self, k: usize) -> Result<()> {
        self.router.ip(&["link", "del", &self.wan_if(k)])?;
        Ok(())
    }

    /// Creates the wan{k} veth pair again after [`Lab::delete_wan`]: new ifindex, both
    /// sides up, addresses (ISP side: its current gateway), the router's DHCP-style
    /// default route and rp_filter. ISP k's nft tables match `cust` by name and apply
    /// again. Returns the new ifindex.
    pub fn restore_wan(&self, k: usize) -> Result<u32> {
        self.create_wan_link(k)?;
        self.configure_cust(k)?;
        self.configure_wan(k)?;
        self.wan_ifindex(k)
    }

    /// A "PPP reconnect": [`Lab::delete_wan`] then [`Lab::restore_wan`]. Returns the
    /// new ifindex of wan{k}.
    pub fn recreate_wan(&self, k: usize) -> Result<u32> {
        self.delete_wan(k)?;
        self.restore_wan(k)
    }

    /// Moves ISP k's gateway to 100.64.k.`new_last_octet` (e.g. 1 → 254): the ISP's
    /// `cust` address changes, and (with `gateway_routes`) the router's default route
    /// on wan{k} is replaced by one via the new address, as a DHCP renewal would.
    pub fn move_gateway(&self, k: usize, new_last_octet: u8) -> Result<()> {
        self.check_k(k);
        ensure!(
            (1..=254).contains(&new_last_octet) && new_last_octet != 2,
            "gateway octet {new_last_octet}: must be 1..=254 and not the router's 2"
        );
        let old = self.gateway(k);
        let new = Ipv4Addr::new(100, 64, k as u8, new_last_octet);
        if old == new {
            return Ok(());
        }
        self.isp(k).ip_batch(&[
            // Delete first: deleting a primary address also deletes its secondaries.
            format!("addr del {old}/24 dev cust"),
            format!("addr add {new}/24 dev cust"),
        ])?;
        self.gateways.lock().unwrap_or_else(|e| e.into_inner())[k - 1] = new_last_octet;
        if self.opts.gateway_routes {
            self.router.ip_batch(&[self.gateway_route_cmd(k)])?;
        }
        Ok(())
    }
}

/// Table `<family> <name>`, dropping every packet an ISP forwards from or to its
/// customer line (`cust`), ahead of the ISP's own forwarding rules.
fn drop_customer_table(family: &str, name: &str) -> String {
    format!(
        "table {family} {name} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tiifname \"cust\" counter drop\n\
         \t\toifname \"cust\" counter drop\n\
         \t}}\n\
         }}\n"
    )
}
