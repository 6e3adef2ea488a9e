//! Self-repair and conntrack care on a real kernel (issue 9, acceptance 2–5): others
//! damage what the daemon installed while LAN traffic flows; nft fails during a
//! failover; every uplink fails at once.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{wait_until, Harness};
use netns_lab::{outage_after, tcp_whoami, LongLivedConnection, Traffic};

const PORT: u16 = 7100;
const EVERY: Duration = Duration::from_millis(20);
const ATTEMPT: Duration = Duration::from_millis(300);

/// Primary (isp1) and backup (isp2), both probed every 200 ms.
const PRIMARY_BACKUP: &str = r#"
[links.isp1]
id = 1
interface = "wan1"

[links.isp1.check]
targets = ["198.18.0.1", "198.18.0.2"]
interval = "200ms"
timeout = "200ms"
down_after = 3
up_after = 3

[links.isp2]
id = 2
interface = "wan2"
priority = 2

[links.isp2.check]
targets = ["198.18.0.1", "198.18.0.2"]
interval = "200ms"
timeout = "200ms"
down_after = 3
up_after = 3
"#;

/// The operator's firewall, as a reload loads it after `flush ruleset`: forwarding
/// dropped except for the LAN and established connections.
const FIREWALL: &str = "table inet filter {
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname \"lan0\" accept
	}
}
";

fn server() -> IpAddr {
    IpAddr::V4(netns_lab::lab::addr::server(1))
}

fn current_isp(h: &Harness) -> Option<usize> {
    tcp_whoami(h.lab.lan(), server(), PORT, None, ATTEMPT)
        .ok()
        .and_then(netns_lab::lab::addr::isp_of)
}

fn start(tag: &str) -> (Harness, netns_lab::WhoAmIServer) {
    let h = Harness::new(tag);
    h.write_config("lan = [\"lan0\"]", PRIMARY_BACKUP);
    let srv = h.lab.whoami_tcp(PORT).unwrap();
    (h, srv)
}

/// The rules in multiwan's default priority range, as `ip rule` prints them.
fn own_rules(h: &Harness) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        for line in h.router_sh(&format!("ip {family} rule show")).lines() {
            let prio: u32 = line.split(':').next().unwrap_or("").parse().unwrap_or(0);
            if (1000..=1999).contains(&prio) {
                out.push(format!("{family} {line}"));
            }
        }
    }
    out
}

/// Deletes every rule in multiwan's range by hand, one `ip rule del` per rule.
fn delete_own_rules(h: &Harness) {
    let mut script = String::new();
    for rule in own_rules(h) {
        let (family, rest) = rule.split_once(' ').unwrap();
        let (prio, sel) = rest.split_once(":\t").unwrap();
        script.push_str(&format!("ip {family} rule del priority {prio} {sel}\n"));
    }
    h.router().sh(&script).unwrap();
}

/// LAN connections fail after `damage` and work again (within a few seconds);
/// returns the outage the client saw.
fn outage_of(h: &Harness, damage: impl FnOnce()) -> Duration {
    let traffic = Traffic::start(h.lab.lan(), server(), PORT, EVERY, ATTEMPT);
    std::thread::sleep(Duration::from_millis(300));
    let cut = Instant::now();
    damage();
    // Work again: a run of successes well after the damage.
    h.wait_until("LAN connections work again", Duration::from_secs(5), || {
        let snap = traffic.snapshot();
        let after: Vec<_> = snap.iter().filter(|a| a.at > cut).collect();
        after.len() >= 10 && after.iter().rev().take(5).all(|a| a.isp == Some(1))
    });
    let attempts = traffic.finish();
    outage_after(&attempts, cut).unwrap_or_default()
}

/// Acceptance 2 and 3: `nft flush ruleset` and the firewall's reload, the daemon's
/// rules deleted by hand, a link table's route deleted by hand: each is put right
/// within a second or so while LAN traffic flows, and a silent failure of the primary
/// right after such damage is still failed over.
#[test]
fn serial_damage_by_others_is_repaired_and_failover_still_works() {
    let (h, _srv) = start("repair");
    h.router().nft(FIREWALL).unwrap();
    let _daemon = h.start_daemon();
    assert_eq!(current_isp(&h), Some(1));
    let table = format!("inet {}", h.nft_table);
    let rules = own_rules(&h);
    assert!(!rules.is_empty());

    let outage = outage_of(&h, || {
        h.router()
            .nft(&format!("flush ruleset\n{FIREWALL}"))
            .unwrap();
    });
    eprintln!("firewall reload: LAN outage {outage:?}");
    assert!(
        outage < Duration::from_secs(3),
        "{outage:?}\n{}",
        h.daemon_log()
    );
    let tables = h.router_sh("nft list tables");
    assert!(tables.contains(&table), "{tables}");
    assert!(tables.contains("inet filter"), "{tables}");
    h.wait_for_log("repair (nft", Duration::from_secs(2));

    let outage = outage_of(&h, || delete_own_rules(&h));
    eprintln!("rules deleted: LAN outage {outage:?}");
    h.wait_until("every rule back", Duration::from_secs(3), || {
        own_rules(&h) == rules
    });

    let outage = outage_of(&h, || {
        h.router_sh("ip route del default table 101");
    });
    eprintln!("route deleted: LAN outage {outage:?}");
    let routes = h.router_sh("ip route show table 101");
    assert!(routes.contains("default via 100.64.1.1"), "{routes}");
    let metrics = h.daemon_log();
    assert!(metrics.contains("repair (routes"), "{metrics}");

    // Acceptance 3: damage, then at once a silent failure of the primary.
    h.router().nft("flush ruleset").unwrap();
    h.lab.blackhole_isp(1, true).unwrap();
    h.wait_until("isp1 down", Duration::from_secs(5), || {
        h.link_state("isp1") == "down"
    });
    wait_until(
        "new connections through isp2",
        Duration::from_secs(3),
        || current_isp(&h) == Some(2),
    );
    let tables = h.router_sh("nft list tables");
    assert!(tables.contains(&table), "{tables}");
}

/// A directory with an `nft` that fails while its counter file holds a number above 0
/// (decremented on each call), then runs the real nft.
struct NftShim {
    dir: PathBuf,
}

impl NftShim {
    fn new(tag: &str) -> NftShim {
        let dir = std::env::temp_dir().join(format!("mwt-nft-shim-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", "command -v nft"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let real = real.trim();
        assert!(
            !real.is_empty(),
            "this test needs nft (apt-get install nftables)"
        );
        let counter = dir.join("fail");
        let script = format!(
            "#!/bin/sh\nn=$(cat {c} 2>/dev/null || echo 0)\n\
             if [ \"$n\" -gt 0 ]; then echo $((n - 1)) > {c}; \
             echo \"nft shim: failing on purpose ($n left)\" >&2; exit 1; fi\n\
             exec {real} \"$@\"\n",
            c = counter.display()
        );
        let nft = dir.join("nft");
        std::fs::write(&nft, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
        NftShim { dir }
    }

    fn fail_next(&self, n: u32) {
        std::fs::write(self.dir.join("fail"), n.to_string()).unwrap();
    }

    fn left(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("fail"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

impl Drop for NftShim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The conntrack entries of one LAN connection.
fn conntrack_of(h: &Harness, local: SocketAddr) -> usize {
    h.router_sh(&format!(
        "conntrack -L -p tcp --orig-src {} --sport {} 2>/dev/null || true",
        local.ip(),
        local.port()
    ))
    .lines()
    .filter(|l| l.starts_with("tcp"))
    .count()
}

/// Acceptance 4: nft fails the next calls during a failover. The daemon retries, the
/// failover completes once nft works, and the dead link's conntrack entries are
/// deleted only after the apply that took it out succeeded.
#[test]
fn serial_failed_applies_are_retried_and_delete_nothing_before_success() {
    let (h, _srv) = start("nftfail");
    let shim = NftShim::new("nftfail");
    let _daemon = h.start_daemon_env(&[("PATH", &shim.path())]);
    let conn = LongLivedConnection::open(h.lab.lan(), server(), PORT, None, ATTEMPT).unwrap();
    assert_eq!(netns_lab::lab::addr::isp_of(conn.seen_as()), Some(1));
    assert_eq!(conntrack_of(&h, conn.local_addr()), 1);

    shim.fail_next(6);
    h.lab.blackhole_isp(1, true).unwrap();
    h.wait_until("isp1 down", Duration::from_secs(5), || {
        h.link_state("isp1") == "down"
    });
    // While nft fails, the entry stays.
    while shim.left() > 0 && h.daemon_log().contains("apply failed") {
        assert_eq!(conntrack_of(&h, conn.local_addr()), 1, "{}", h.daemon_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    h.wait_until("the failover applied", Duration::from_secs(10), || {
        h.daemon_log().contains("applied after")
    });
    wait_until(
        "new connections through isp2",
        Duration::from_secs(3),
        || current_isp(&h) == Some(2),
    );
    h.wait_until("isp1's entry deleted", Duration::from_secs(3), || {
        conntrack_of(&h, conn.local_addr()) == 0
    });
    let log = h.daemon_log();
    let failed = log.rfind("apply failed").expect("an apply failed");
    let applied = log.find("applied after").unwrap();
    let deleted = log
        .find("link isp1: deleted")
        .expect("isp1's entries deleted");
    assert!(failed < applied && applied < deleted, "{log}");
    eprintln!("{log}");
    assert!(log.contains("nft shim: failing on purpose") || log.contains("apply failed"));
}

/// Acceptance 5: both uplinks fail silently; no conntrack entry is deleted while both
/// are down. The primary heals first: its long-lived connection carries on. Then
/// (again) the backup heals first: the primary's connections are deleted at once.
#[test]
fn serial_an_outage_of_every_uplink_resets_nothing() {
    let (h, _srv) = start("alldown");
    let _daemon = h.start_daemon();
    let mut conn = LongLivedConnection::open(h.lab.lan(), server(), PORT, None, ATTEMPT).unwrap();
    conn.set_timeout(Duration::from_secs(5));
    conn.exchange(1000).unwrap();
    assert_eq!(netns_lab::lab::addr::isp_of(conn.seen_as()), Some(1));

    h.lab.blackhole_isp(1, true).unwrap();
    h.lab.blackhole_isp(2, true).unwrap();
    h.wait_until("both down", Duration::from_secs(5), || {
        h.link_state("isp1") == "down" && h.link_state("isp2") == "down"
    });
    // A while with both down: nothing is deleted.
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        assert_eq!(conntrack_of(&h, conn.local_addr()), 1, "{}", h.daemon_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // (isp2's may go if it fell first, while isp1 still served.)
    assert!(
        !h.daemon_log().contains("link isp1: deleted"),
        "{}",
        h.daemon_log()
    );

    h.lab.blackhole_isp(1, false).unwrap();
    h.wait_until("isp1 up", Duration::from_secs(5), || {
        h.link_state("isp1") == "up"
    });
    conn.exchange(10_000)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", h.daemon_log()));
    assert_eq!(conntrack_of(&h, conn.local_addr()), 1);
    assert!(
        !h.daemon_log().contains("link isp1: deleted"),
        "{}",
        h.daemon_log()
    );

    // Again both down, and now the backup heals first: the primary's connection has
    // somewhere to go, so its entry goes at once.
    h.lab.blackhole_isp(1, true).unwrap();
    h.wait_until("isp1 down", Duration::from_secs(5), || {
        h.link_state("isp1") == "down"
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(conntrack_of(&h, conn.local_addr()), 1, "{}", h.daemon_log());
    h.lab.blackhole_isp(2, false).unwrap();
    h.wait_until(
        "isp2 up and isp1's entry deleted",
        Duration::from_secs(5),
        || h.link_state("isp2") == "up" && conntrack_of(&h, conn.local_addr()) == 0,
    );
    assert!(
        h.daemon_log().contains("link isp1: deleted"),
        "{}",
        h.daemon_log()
    );
}

/// Issue 9 point 3: kernel events lost to a full socket buffer (`ENOBUFS`). The daemon
/// is stopped (SIGSTOP) while another tenant fills its own table with 40 000 routes, so
/// the events pile up beyond the buffer, and its rules are deleted meanwhile; once it
/// runs again it says events were lost, reads everything again and puts the rules back.
#[test]
fn serial_lost_kernel_events_make_the_daemon_read_everything_again() {
    let (h, _srv) = start("burst");
    let daemon = h.start_daemon();
    let mut batch = String::new();
    for i in 0..40_000u32 {
        // 198.18.128.0 onwards (benchmark space, far from the lab's servers).
        let dst = std::net::Ipv4Addr::from(0xc612_8000 + i);
        batch.push_str(&format!("route add {dst}/32 dev lan0 table 200\n"));
    }
    let path = std::env::temp_dir().join(format!("{}.burst", h.nft_table));
    std::fs::write(&path, batch).unwrap();
    let rules = own_rules(&h);
    let pid = daemon.id() as libc::pid_t;
    // SAFETY: signals to the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    delete_own_rules(&h);
    let filled = h.router().sh(&format!(
        "ip -batch {} ; ip route flush table 200",
        path.display()
    ));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let _ = std::fs::remove_file(&path);
    filled.unwrap();
    h.wait_for_log("events were lost", Duration::from_secs(5));
    h.wait_until("every rule back", Duration::from_secs(5), || {
        own_rules(&h) == rules
    });
    wait_until(
        "new connections through isp1",
        Duration::from_secs(5),
        || current_isp(&h) == Some(1),
    );
}
