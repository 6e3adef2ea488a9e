//! A multi-uplink router lab built from network namespaces.
//!
//! ```text
//!                       ┌──────────────────────── inet ─────────────────────────┐
//!                       │ ip_forward=1, targets 198.18.0.1 .. 198.18.0.S /32 on lo │
//!                       │ route 100.64.k.0/24 via 198.19.k.2                       │
//!                       │  isp1 198.19.1.1/24   isp2 198.19.2.1/24   … ispN        │
//!                       └─────┬──────────────────────┬─────────────────────────────┘
//!                             │ veth                 │
//!                 up 198.19.1.2/24           up 198.19.2.2/24
//!               ┌────── isp1 ───────┐      ┌────── isp2 ───────┐
//!               │ ip_forward=1      │      │ default via       │     …  ispN
//!               │ default via       │      │   198.19.2.1      │        (N = 1..=8,
//!               │   198.19.1.1      │      │ BCP 38: forwarded │         default 3)
//!               │ BCP 38: forwarded │      │ from cust must be │
//!               │ from cust must be │      │ 100.64.2.0/24     │
//!               │ 100.64.1.0/24     │      │                   │
//!               └─ cust 100.64.1.1 ─┘      └─ cust 100.64.2.1 ─┘
//!                       │ veth                     │
//!                wan1 100.64.1.2/24         wan2 100.64.2.2/24       … wanN
//!               ┌───────────────────────── router ───────────────────────────┐
//!               │ ip_forward=1; main table (gateway_routes, like DHCP):      │
//!               │   default via 100.64.k.1 dev wan{k} metric k*10            │
//!               │ no NAT, no policy routing: the tests install multiwan      │
//!               └──────────────────── lan0 192.0.2.1/24 ─────────────────────┘
//!                                         │ veth
//!                              ┌── eth0 192.0.2.2/24 ──┐
//!                              │ lan (+ 192.0.2.3 ..   │
//!                              │  extra client addrs)  │
//!                              │ default via 192.0.2.1 │
//!                              └───────────────────────┘
//! ```
//!
//! Addresses come only from documentation and benchmark prefixes: 100.64.0.0/10 between
//! the router and its ISPs (carrier-grade NAT space, as LTE and many ISPs hand out),
//! 198.18.0.0/15 inside "the internet" (198.19.k.0/24 ISP uplinks, 198.18.0.x targets),
//! 192.0.2.0/24 on the LAN. Every helper in [`addr`] computes one of them, so tests can
//! hardcode nothing.
//!
//! The router does **not** masquerade: a LAN-sourced packet that leaves a WAN untouched
//! is dropped by the ISP's BCP 38 filter, as a real ISP would. That is the point: a test
//! can prove which uplink a reply really left through, because only a packet whose
//! source belongs to ISP k gets through ISP k.
//!
//! Every namespace is created by [`Netns`], veths are created directly inside their
//! namespaces (nothing ever appears in the root namespace), and dropping the [`Lab`]
//! kills every process left inside and deletes every namespace, on panic too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::netns::{unique_name, Netns};
use crate::whoami::WhoAmIServer;

/// Most ISPs a lab can have.
pub const MAX_ISPS: usize = 8;
/// Most target addresses on inet's loopback (198.18.0.1 ..= 198.18.0.254).
pub const MAX_SERVERS: usize = 254;
/// Most extra LAN client addresses (192.0.2.3 ..= 192.0.2.254).
pub const MAX_EXTRA_LAN_CLIENTS: usize = 252;

/// nft table (family `ip`) holding BCP 38 in each ISP.
pub const BCP38_TABLE: &str = "lab_bcp38";
/// nft table (family `ip`) of [`Lab::blackhole_isp`] in an ISP.
pub const BLACKHOLE_TABLE: &str = "lab_blackhole";
/// nft table (family `ip`) of [`Lab::isp_loss`] in an ISP.
pub const LOSS_TABLE: &str = "lab_loss";

pub mod addr;
mod faults;
mod ipv6;

pub use ipv6::{addr6, BCP38_TABLE6};

/// Options of a [`Lab`]; start from [`Lab::builder`].
#[derive(Clone, Debug)]
pub struct LabBuilder {
    prefix: String,
    tag: String,
    isps: usize,
    servers: usize,
    bcp38: bool,
    gateway_routes: bool,
    rp_filter_strict: bool,
    extra_lan_clients: usize,
    /// ISPs with IPv6 (see [`ipv6`]), ascending.
    ipv6: Vec<usize>,
}

impl LabBuilder {
    /// Namespace name prefix (default `"mwlab"`); names are
    /// `unique_name(prefix, tag)` + `-r`, `-i{k}`, `-net`, `-lan`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Number of ISPs, 1..=8 (default 3).
    pub fn isps(mut self, n: usize) -> Self {
        self.isps = n;
        self
    }

    /// Number of target addresses 198.18.0.1.. on inet's loopback, 1..=254 (default 4).
    pub fn servers(mut self, n: usize) -> Self {
        self.servers = n;
        self
    }

    /// BCP 38 source filtering in every ISP (default on).
    pub fn bcp38(mut self, on: bool) -> Self {
        self.bcp38 = on;
        self
    }

    /// `default via 100.64.k.1 dev wan{k} metric k*10` in the router's main table, as
    /// DHCP clients install (default on).
    pub fn gateway_routes(mut self, on: bool) -> Self {
        self.gateway_routes = on;
        self
    }

    /// Strict reverse-path filtering in the router: `rp_filter = 1` on all, default and
    /// every interface (default off: 0 everywhere, whatever the host has).
    pub fn rp_filter_strict(mut self, on: bool) -> Self {
        self.rp_filter_strict = on;
        self
    }

    /// Extra LAN client addresses 192.0.2.3 .. 192.0.2.(2+n) on the client's `eth0`,
    /// for tests that need many sources (0..=252, default 0). The primary address
    /// 192.0.2.2 stays the default source.
    pub fn extra_lan_clients(mut self, n: usize) -> Self {
        self.extra_lan_clients = n;
        self
    }

    /// ISPs that also have IPv6 (default none: an IPv4-only lab): router
    /// advertisements from radvd, a routed /48, IPv6 BCP 38; the LAN, the client and
    /// the targets get IPv6 addresses too. See the `ipv6` module docs.
    pub fn ipv6(mut self, isps: &[usize]) -> Self {
        self.ipv6 = isps.to_vec();
        self.ipv6.sort_unstable();
        self.ipv6.dedup();
        self
    }

    /// Creates every namespace, link, address, route and filter.
    pub fn build(self) -> Result<Lab> {
        Lab::build(self)
    }
}

/// The topology of the module docs. Namespaces are deleted when it is dropped.
///
/// ISP and server numbers are 1-based; methods panic on an ISP number outside
/// `1..=isp_count()` (a test bug, not a runtime condition).
#[derive(Debug)]
pub struct Lab {
    opts: LabBuilder,
    router: Netns,
    isps: Vec<Netns>,
    inet: Netns,
    lan: Netns,
    /// Last octet of each ISP's current gateway address (see [`Lab::move_gateway`]).
    gateways: Mutex<Vec<u8>>,
    /// Daemons the lab runs (radvd), stopped with it.
    daemons: Mutex<Vec<LabDaemon>>,
}

/// A daemon the lab started, and the files it gave it; both go when dropped.
#[derive(Debug)]
struct LabDaemon {
    _guard: crate::netns::ChildGuard,
    files: Vec<std::path::PathBuf>,
}

impl Drop for LabDaemon {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Lab {
    /// Options for a lab whose namespace names contain `tag` (use the test's name).
    pub fn builder(tag: &str) -> LabBuilder {
        LabBuilder {
            prefix: "mwlab".to_string(),
            tag: tag.to_string(),
            isps: 3,
            servers: 4,
            bcp38: true,
            gateway_routes: true,
            rp_filter_strict: false,
            extra_lan_clients: 0,
            ipv6: Vec::new(),
        }
    }

    /// A lab with the default options (3 ISPs, 4 targets, BCP 38, gateway routes).
    pub fn new(tag: &str) -> Result<Lab> {
        Lab::builder(tag).build()
    }

    fn build(opts: LabBuilder) -> Result<Lab> {
        ensure!(
            (1..=MAX_ISPS).contains(&opts.isps),
            "a lab has 1..={MAX_ISPS} ISPs, not {}",
            opts.isps
        );
        ensure!(
            (1..=MAX_SERVERS).contains(&opts.servers),
            "a lab has 1..={MAX_SERVERS} servers, not {}",
            opts.servers
        );
        ensure!(
            opts.extra_lan_clients <= MAX_EXTRA_LAN_CLIENTS,
            "at most {MAX_EXTRA_LAN_CLIENTS} extra LAN clients fit in 192.0.2.0/24, not {}",
            opts.extra_lan_clients
        );
        ensure!(
            opts.ipv6.iter().all(|k| (1..=opts.isps).contains(k)),
            "IPv6 ISPs {:?}: this lab has ISPs 1..={}",
            opts.ipv6,
            opts.isps
        );
        let base = unique_name(&opts.prefix, &opts.tag);
        // Each guard deletes its namespace if a later step fails.
        let router = Netns::new(format!("{base}-r"))?;
        let isps = (1..=opts.isps)
            .map(|k| Netns::new(format!("{base}-i{k}")))
            .collect::<Result<Vec<_>>>()?;
        let inet = Netns::new(format!("{base}-net"))?;
        let lan = Netns::new(format!("{base}-lan"))?;
        let lab = Lab {
            gateways: Mutex::new(vec![1; opts.isps]),
            daemons: Mutex::new(Vec::new()),
            opts,
            router,
            isps,
            inet,
            lan,
        };
        lab.setup()
            .with_context(|| format!("building lab {base}"))?;
        Ok(lab)
    }

    fn setup(&self) -> Result<()> {
        // Deterministic sysctls first (a new namespace inherits IPv4 `all`/`default`
        // from the host), so interfaces created next inherit them.
        self.base_sysctls()?;

        // Links, each created inside its namespaces.
        for k in 1..=self.isp_count() {
            self.create_wan_link(k)?;
            // `name` and `dev` everywhere: a bare "up" would be read as a keyword.
            self.isp(k).ip(&[
                "link",
                "add",
                "name",
                "up",
                "type",
                "veth",
                "peer",
                "name",
                &addr::inet_if(k),
                "netns",
                self.inet.name(),
            ])?;
        }
        self.router.ip(&[
            "link",
            "add",
            "name",
            addr::LAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            addr::LAN_CLIENT_IF,
            "netns",
            self.lan.name(),
        ])?;

        // inet: uplinks of the ISPs, routes back to their customers, target addresses.
        let mut inet = Vec::new();
        for k in 1..=self.isp_count() {
            let (net, len) = addr::wan_prefix(k);
            let dev = addr::inet_if(k);
            inet.push(format!("link set {dev} up"));
            inet.push(format!("addr add {}/24 dev {dev}", addr::inet_isp(k)));
            inet.push(format!(
                "route add {net}/{len} via {} dev {dev}",
                addr::isp_up(k)
            ));
        }
        for i in 1..=self.opts.servers {
            inet.push(format!("addr add {}/32 dev lo", addr::server(i)));
        }
        self.inet.ip_batch(&inet)?;

        // ISPs: customer side, uplink, default route, BCP 38.
        for k in 1..=self.isp_count() {
            self.configure_cust(k)?;
            self.isp(k).ip_batch(&[
                "link set dev up up".to_string(),
                format!("addr add {}/24 dev up", addr::isp_up(k)),
                format!("route add default via {} dev up", addr::inet_isp(k)),
            ])?;
            if self.opts.bcp38 {
                let (net, len) = addr::wan_prefix(k);
                self.isp(k).nft(&format!(
                    "table ip {BCP38_TABLE} {{\n\
                     \tchain forward {{\n\
                     \t\ttype filter hook forward priority filter; policy accept;\n\
                     \t\tiifname \"cust\" ip saddr != {net}/{len} counter drop\n\
                     \t}}\n\
                     }}\n"
                ))?;
            }
        }

        // LAN client.
        let mut lan = vec![
            format!("link set {} up", addr::LAN_CLIENT_IF),
            format!(
                "addr add {}/24 dev {}",
                addr::LAN_CLIENT,
                addr::LAN_CLIENT_IF
            ),
        ];
        for i in 2..=self.opts.extra_lan_clients + 1 {
            lan.push(format!(
                "addr add {}/24 dev {}",
                addr::lan_client(i),
                addr::LAN_CLIENT_IF
            ));
        }
        lan.push(format!("route add default via {}", addr::LAN_ROUTER));
        self.lan.ip_batch(&lan)?;

        // Router.
        self.router.ip_batch(&[
            format!("link set {} up", addr::LAN_IF),
            format!("addr add {}/24 dev {}", addr::LAN_ROUTER, addr::LAN_IF),
        ])?;
        if self.opts.rp_filter_strict {
            self.router.sysctls(&[
                ("net.ipv4.conf.lo.rp_filter", "1"),
                (&format!("net.ipv4.conf.{}.rp_filter", addr::LAN_IF), "1"),
            ])?;
        }
        for k in 1..=self.isp_count() {
            self.configure_wan(k)?;
        }
        if !self.opts.ipv6.is_empty() {
            self.setup_ipv6()?;
        }
        Ok(())
    }

    /// Forwarding and rp_filter in every namespace, before any interface exists.
    fn base_sysctls(&self) -> Result<()> {
        let router_rp = if self.opts.rp_filter_strict { "1" } else { "0" };
        self.router.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", router_rp),
            ("net.ipv4.conf.default.rp_filter", router_rp),
        ])?;
        for ns in self.isps.iter().chain([&self.inet]) {
            ns.sysctls(&[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ])?;
        }
        self.lan.sysctls(&[
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ])?;
        if !self.opts.ipv6.is_empty() {
            self.ipv6_sysctls()?;
        }
        Ok(())
    }

    /// `ip link add wan{k} type veth peer name cust netns <isp k>`, from inside the
    /// router.
    fn create_wan_link(&self, k: usize) -> Result<()> {
        self.router.ip(&[
            "link",
            "add",
            "name",
            &addr::wan_if(k),
            "type",
            "veth",
            "peer",
            "name",
            "cust",
            "netns",
            self.isp(k).name(),
        ])?;
        Ok(())
    }

    /// ISP k's `cust`: up, with the current gateway address.
    fn configure_cust(&self, k: usize) -> Result<()> {
        self.isp(k).ip_batch(&[
            "link set cust up".to_string(),
            format!("addr add {}/24 dev cust", self.gateway(k)),
        ])
    }

    /// The router's wan{k}: rp_filter, up, address, DHCP-style default route.
    fn configure_wan(&self, k: usize) -> Result<()> {
        let wan = addr::wan_if(k);
        if self.opts.rp_filter_strict {
            self.router
                .sysctl(&format!("net.ipv4.conf.{wan}.rp_filter"), "1")?;
        }
        let mut cmds = if self.opts.ipv6.contains(&k) {
            self.wan6_prepare_cmds(k)?
        } else {
            Vec::new()
        };
        cmds.extend([
            format!("link set {wan} up"),
            format!("addr add {}/24 dev {wan}", addr::wan(k)),
        ]);
        if self.opts.gateway_routes {
            cmds.push(self.gateway_route_cmd(k));
        }
        self.router.ip_batch(&cmds)
    }

    fn gateway_route_cmd(&self, k: usize) -> String {
        format!(
            "route replace default via {} dev {} metric {}",
            self.gateway(k),
            addr::wan_if(k),
            addr::gateway_metric(k)
        )
    }

    fn check_k(&self, k: usize) {
        assert!(
            (1..=self.isp_count()).contains(&k),
            "ISP {k} does not exist: this lab has ISPs 1..={}",
            self.isp_count()
        );
    }

    // ----------------------------------------------------------------- namespaces

    /// The router, where the tests run multiwan.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// ISP k's namespace (1-based).
    pub fn isp(&self, k: usize) -> &Netns {
        self.check_k(k);
        &self.isps[k - 1]
    }

    /// All ISP namespaces, ISP 1 first.
    pub fn isps(&self) -> &[Netns] {
        &self.isps
    }

    /// "The internet", holding the target servers.
    pub fn inet(&self) -> &Netns {
        &self.inet
    }

    /// The LAN client.
    pub fn lan(&self) -> &Netns {
        &self.lan
    }

    /// Names of every namespace of the lab.
    pub fn namespace_names(&self) -> Vec<String> {
        [&self.router]
            .into_iter()
            .chain(&self.isps)
            .chain([&self.inet, &self.lan])
            .map(|ns| ns.name().to_string())
            .collect()
    }

    pub fn isp_count(&self) -> usize {
        self.isps.len()
    }

    pub fn server_count(&self) -> usize {
        self.opts.servers
    }

    pub fn bcp38(&self) -> bool {
        self.opts.bcp38
    }

    pub fn gateway_routes(&self) -> bool {
        self.opts.gateway_routes
    }

    pub fn rp_filter_strict(&self) -> bool {
        self.opts.rp_filter_strict
    }

    // ----------------------------------------------------------------- addressing

    /// `wan{k}`.
    pub fn wan_if(&self, k: usize) -> String {
        self.check_k(k);
        addr::wan_if(k)
    }

    /// The router's address on wan{k}: 100.64.k.2.
    pub fn wan_addr(&self, k: usize) -> Ipv4Addr {
        self.check_k(k);
        addr::wan(k)
    }

    /// ISP k's current gateway address: 100.64.k.1 unless moved by
    /// [`Lab::move_gateway`].
    pub fn gateway(&self, k: usize) -> Ipv4Addr {
        self.check_k(k);
        let last = self.gateways.lock().unwrap_or_else(|e| e.into_inner())[k - 1];
        Ipv4Addr::new(100, 64, k as u8, last)
    }

    /// Metric of the router's DHCP-style default route on wan{k}: k * 10.
    pub fn gateway_metric(&self, k: usize) -> u32 {
        self.check_k(k);
        addr::gateway_metric(k)
    }

    /// ISP k's address towards inet: 198.19.k.2.
    pub fn isp_up_addr(&self, k: usize) -> Ipv4Addr {
        self.check_k(k);
        addr::isp_up(k)
    }

    /// inet's address towards ISP k: 198.19.k.1.
    pub fn inet_addr(&self, k: usize) -> Ipv4Addr {
        self.check_k(k);
        addr::inet_isp(k)
    }

    /// Target server i (1-based): 198.18.0.i.
    pub fn server(&self, i: usize) -> Ipv4Addr {
        assert!(
            (1..=self.opts.servers).contains(&i),
            "server {i} does not exist: this lab has servers 1..={}",
            self.opts.servers
        );
        addr::server(i)
    }

    /// Every target server address.
    pub fn servers(&self) -> Vec<Ipv4Addr> {
        (1..=self.opts.servers).map(addr::server).collect()
    }

    /// The router's LAN address: 192.0.2.1.
    pub fn lan_router_addr(&self) -> Ipv4Addr {
        addr::LAN_ROUTER
    }

    /// The LAN client's primary address: 192.0.2.2.
    pub fn lan_client_addr(&self) -> Ipv4Addr {
        addr::LAN_CLIENT
    }

    /// Every LAN client address: 192.0.2.2, then the extras 192.0.2.3...
    pub fn lan_client_addrs(&self) -> Vec<Ipv4Addr> {
        (1..=self.opts.extra_lan_clients + 1)
            .map(addr::lan_client)
            .collect()
    }

    /// Which of this lab's ISPs a source address belongs to (100.64.k.x → k; IPv6:
    /// ISP k's customer /64 or routed /48, see [`addr6::isp_of`]).
    pub fn isp_of(&self, addr: IpAddr) -> Option<usize> {
        addr::isp_of(addr)
            .or_else(|| addr6::isp_of(addr))
            .filter(|k| *k <= self.isp_count())
    }

    // ----------------------------------------------------------------- inspection

    /// `ip -o link show dev wan{k}` in the router (one line).
    pub fn wan_link(&self, k: usize) -> Result<String> {
        let out = self
            .router
            .ip(&["-o", "link", "show", "dev", &self.wan_if(k)])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The router's wan{k} ifindex.
    pub fn wan_ifindex(&self, k: usize) -> Result<u32> {
        let line = self.wan_link(k)?;
        line.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no ifindex in {line:?}"))
    }

    /// Whether the router's wan{k} has carrier (its link line lacks `NO-CARRIER` and the
    /// interface is up).
    pub fn wan_carrier(&self, k: usize) -> Result<bool> {
        let line = self.wan_link(k)?;
        let flags = line
            .split('<')
            .nth(1)
            .and_then(|f| f.split('>').next())
            .unwrap_or("");
        Ok(flags.split(',').any(|f| f == "LOWER_UP"))
    }

    /// Packets ISP k's BCP 38 filter has dropped so far (0 when BCP 38 is off).
    pub fn bcp38_drops(&self, k: usize) -> Result<u64> {
        if !self.opts.bcp38 {
            return Ok(0);
        }
        let out = self
            .isp(k)
            .exec("nft", &["list", "table", "ip", BCP38_TABLE])?;
        let text = String::from_utf8_lossy(&out.stdout);
        counter_packets(&text).with_context(|| format!("no counter in:\n{text}"))
    }

    /// Polls `cond` every 20 ms until it holds or `timeout` passes.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if cond()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // ----------------------------------------------------------------- servers

    /// A TCP [`WhoAmIServer`] in inet on 0.0.0.0:`port`: it answers on every target
    /// address (and on inet's 198.19.k.1 addresses).
    pub fn whoami_tcp(&self, port: u16) -> Result<WhoAmIServer> {
        WhoAmIServer::tcp(
            &self.inet,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        )
    }

    /// One UDP [`WhoAmIServer`] per target address, on `port` (bound to the target
    /// address so replies leave from it). `port` must not be 0.
    pub fn whoami_udp(&self, port: u16) -> Result<Vec<WhoAmIServer>> {
        ensure!(port != 0, "whoami_udp needs a fixed port");
        self.servers()
            .into_iter()
            .map(|s| WhoAmIServer::udp(&self.inet, SocketAddr::new(IpAddr::V4(s), port)))
            .collect()
    }
}

/// nft lines that delete `table ip <name>` whether or not it exists.
fn remove_table_script(name: &str) -> String {
    remove_family_table("ip", name)
}

/// Deletes table `<family> <name>` if it exists (declaring it first makes the delete
/// idempotent).
fn remove_family_table(family: &str, name: &str) -> String {
    format!("table {family} {name} {{\n}}\ndelete table {family} {name}\n")
}

/// The `percent` values of 0..100 spread evenly: value i is in the set when
/// `floor((i + 1) * p / 100) > floor(i * p / 100)`.
fn loss_set(percent: u32) -> Vec<u32> {
    (0..100)
        .filter(|i| (i + 1) * percent / 100 > i * percent / 100)
        .collect()
}

/// The packet count of the first `counter packets N` in nft output.
fn counter_packets(text: &str) -> Option<u64> {
    let rest = &text[text.find("counter packets ")? + "counter packets ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_sets_are_exact_and_spread() {
        for p in 0..=100 {
            assert_eq!(loss_set(p).len(), p as usize);
        }
        let set = loss_set(30);
        assert!(set.windows(2).all(|w| w[1] - w[0] <= 4), "{set:?}");
        assert_eq!(loss_set(50), (0..50).map(|i| i * 2 + 1).collect::<Vec<_>>());
    }

    #[test]
    fn addressing() {
        assert_eq!(addr::wan(3), Ipv4Addr::new(100, 64, 3, 2));
        assert_eq!(addr::default_gateway(8), Ipv4Addr::new(100, 64, 8, 1));
        assert_eq!(addr::isp_up(2), Ipv4Addr::new(198, 19, 2, 2));
        assert_eq!(addr::inet_isp(2), Ipv4Addr::new(198, 19, 2, 1));
        assert_eq!(addr::server(4), Ipv4Addr::new(198, 18, 0, 4));
        assert_eq!(addr::lan_client(1), addr::LAN_CLIENT);
        assert_eq!(addr::lan_client(2), Ipv4Addr::new(192, 0, 2, 3));
        assert_eq!(addr::gateway_metric(2), 20);
        assert_eq!(addr::wan_if(1), "wan1");
        assert_eq!(addr::isp_of("100.64.2.7".parse().unwrap()), Some(2));
        assert_eq!(addr::isp_of("100.64.9.7".parse().unwrap()), None);
        assert_eq!(addr::isp_of("192.0.2.2".parse().unwrap()), None);
        assert_eq!(addr::isp_of("::ffff:100.64.1.2".parse().unwrap()), Some(1));
    }

    #[test]
    fn counters_parse() {
        let text = "iifname \"cust\" ip saddr != 100.64.1.0/24 counter packets 12 bytes 720 drop";
        assert_eq!(counter_packets(text), Some(12));
        assert_eq!(counter_packets("nothing"), None);
    }
}
