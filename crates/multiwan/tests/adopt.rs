//! Issue 14, acceptance 1: saved link states are adopted only while the kernel still
//! holds the state the last daemon installed. A plain restart adopts a `down` primary
//! as `down`; saved states from another boot, or a kernel that lost multiwan's table and
//! rules (a reboot, `flush`, new namespaces), give a fresh start: the healed primary is
//! `up` at once, not after `up_after` rounds.

mod common;

use std::time::Duration;

use common::Harness;

/// isp1 (primary) and isp2 (backup), both probed every 200 ms; `up_after` is long so
/// that a primary seen `up` right after readiness can only come from the start state.
const LINKS: &str = r#"
[links.isp1]
id = 1
interface = "wan1"

[links.isp1.check]
targets = ["198.18.0.1", "198.18.0.2"]
interval = "200ms"
timeout = "400ms"
down_after = 3
up_after = 50

[links.isp2]
id = 2
interface = "wan2"
priority = 2

[links.isp2.check]
targets = ["198.18.0.1", "198.18.0.2"]
interval = "200ms"
timeout = "400ms"
"#;

/// Drops the router's echo requests in ISP 1: a silent blackhole for the probes.
fn blackhole_isp1(h: &Harness) {
    h.lab
        .isp(1)
        .nft(
            "table ip t_noping {\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter - 5; policy accept;\n\
             \t\tiifname \"cust\" icmp type echo-request drop\n\
             \t}\n\
             }\n",
        )
        .unwrap();
}

fn heal_isp1(h: &Harness) {
    h.lab.isp(1).nft("delete table ip t_noping\n").unwrap();
}

/// What a reboot leaves of this instance in the kernel: nothing. Its nft table, the
/// ip rules in its priority range and the routes of its tables are deleted by hand
/// (`multiwan flush` would also remove the state directory, which a reboot keeps).
fn forget_kernel_state(h: &Harness) {
    h.router_sh(&format!(
        "nft delete table inet {t}
         for fam in -4 -6; do
           ip $fam rule show | sed -n 's/^\\(1[0-9][0-9][0-9]\\):.*/\\1/p' | sort -u |
             while read p; do while ip $fam rule del priority $p 2>/dev/null; do :; done; done
           for t in 100 101 102; do ip $fam route flush table $t 2>/dev/null || true; done
         done",
        t = h.nft_table
    ));
    assert!(!h
        .router_sh("nft list tables")
        .contains(&h.nft_table.to_string()));
    assert!(!h.router_sh("ip -N rule show").contains("lookup 101"));
}

fn stop(daemon: netns_lab::ChildGuard) {
    let mut daemon = daemon;
    daemon.signal(libc::SIGTERM);
    daemon.child().wait().unwrap();
}

fn saved_isp1(h: &Harness) -> String {
    let text = std::fs::read_to_string(h.state_dir().join("links.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["links"]["isp1"].as_str().unwrap_or("").to_string()
}

#[test]
fn serial_saved_states_are_adopted_only_while_the_kernel_holds_them() {
    let h = Harness::new("adopt");
    h.write_config("lan = [\"lan0\"]", LINKS);
    let daemon = h.start_daemon();
    assert!(
        h.daemon_log().contains("fresh start"),
        "first start: {}",
        h.daemon_log()
    );
    blackhole_isp1(&h);
    h.wait_until("isp1 down", Duration::from_secs(10), || {
        h.link_state("isp1") == "down" && saved_isp1(&h) == "down"
    });

    // A plain restart: the kernel still holds everything, `down` is adopted.
    stop(daemon);
    let daemon = h.start_daemon();
    assert_eq!(h.link_state("isp1"), "down", "{}", h.daemon_log());
    assert!(
        !h.daemon_log().contains("fresh start"),
        "{}",
        h.daemon_log()
    );

    // Saved in another boot: not adopted, even though the kernel state is there.
    stop(daemon);
    let path = h.state_dir().join("links.json");
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    saved["boot_id"] = "00000000-0000-0000-0000-000000000000".into();
    std::fs::write(&path, saved.to_string()).unwrap();
    let daemon = h.start_daemon();
    assert_eq!(h.link_state("isp1"), "up", "{}", h.daemon_log());
    assert!(
        h.daemon_log().contains("from another boot"),
        "{}",
        h.daemon_log()
    );
    // Its probes still fail: it goes down again (and is saved so, with this boot).
    h.wait_until("isp1 down again", Duration::from_secs(10), || {
        h.link_state("isp1") == "down" && saved_isp1(&h) == "down"
    });

    // A "reboot": the kernel loses everything, the state directory stays; the primary
    // heals meanwhile. It is `up` as soon as the daemon is ready.
    stop(daemon);
    forget_kernel_state(&h);
    heal_isp1(&h);
    let _daemon = h.start_daemon();
    assert_eq!(h.link_state("isp1"), "up", "{}", h.daemon_log());
    assert!(
        h.daemon_log().contains("nft table is not in the kernel"),
        "{}",
        h.daemon_log()
    );
    // And the kernel holds the plan again.
    assert!(h.router_sh("ip -N rule show").contains("lookup 101"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(h.link_state("isp1"), "up", "{}", h.daemon_log());
}

/// The same instance (nft table name, state directory) started in new namespaces, as
/// after a reboot: the kernel there holds nothing of it, so the primary that was saved
/// `down` starts `up`.
#[test]
fn serial_new_namespaces_with_the_same_state_directory_are_a_fresh_start() {
    let old = Harness::new("adoptold");
    old.write_config("lan = [\"lan0\"]", LINKS);
    let daemon = old.start_daemon();
    blackhole_isp1(&old);
    old.wait_until("isp1 down", Duration::from_secs(10), || {
        old.link_state("isp1") == "down" && saved_isp1(&old) == "down"
    });
    stop(daemon);

    let mut new = Harness::new("adoptnew");
    // The same instance: its files (state directory, log, socket) are the old ones.
    new.nft_table = old.nft_table.clone();
    new.write_config("lan = [\"lan0\"]", LINKS);
    let _daemon = new.start_daemon();
    assert_eq!(new.link_state("isp1"), "up", "{}", new.daemon_log());
    assert!(
        new.daemon_log().contains("nft table is not in the kernel"),
        "{}",
        new.daemon_log()
    );
    assert!(new.router_sh("ip -N rule show").contains("lookup 101"));
}
