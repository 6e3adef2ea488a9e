//! `apply` and `flush` while a daemon of the same instance runs (SPEC §4, issue 9
//! acceptance 6): `apply` asks the daemon to reload instead, so a link the daemon found
//! dead stays out of service; `flush` refuses with exit 2 and changes nothing. Once the
//! daemon is gone (killed: its socket file stays behind), both work on their own again.

mod common;

use std::net::IpAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{wait_until, Harness};
use netns_lab::tcp_whoami;

const PORT: u16 = 7300;
const ATTEMPT: Duration = Duration::from_millis(500);

fn link(name: &str, id: u8, extra: &str) -> String {
    format!(
        r#"
[links.{name}]
id = {id}
interface = "wan{id}"
{extra}

[links.{name}.check]
targets = ["198.18.0.1", "198.18.0.2"]
interval = "200ms"
timeout = "200ms"
down_after = 3
up_after = 3
"#
    )
}

/// The ISP a new connection from the LAN leaves through.
fn current_isp(h: &Harness) -> Option<usize> {
    let server = IpAddr::V4(netns_lab::lab::addr::server(1));
    tcp_whoami(h.lab.lan(), server, PORT, None, ATTEMPT)
        .ok()
        .and_then(netns_lab::lab::addr::isp_of)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `multiwan status --json`: the state of `name`, from the daemon itself.
fn state(h: &Harness, name: &str) -> String {
    let out = h.multiwan_ok(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    s["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .and_then(|l| l["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Everything multiwan installs in the router, without counters.
fn installed(h: &Harness) -> String {
    h.router_sh(&format!(
        "ip rule show; ip -6 rule show; for t in 100 101 102; do echo table $t; \
         ip route show table $t; done; nft -s list table inet {} 2>&1",
        h.nft_table
    ))
}

/// Every new connection for a while leaves through `isp`.
fn stays_on(h: &Harness, isp: usize, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert_eq!(current_isp(h), Some(isp), "{what}\n{}", h.daemon_log());
    }
}

#[test]
fn apply_asks_the_daemon_to_reload_and_flush_refuses() {
    let h = Harness::new("besided");
    h.write_config(
        "lan = [\"lan0\"]\nmetrics = \"\"",
        &(link("isp1", 1, "") + &link("isp2", 2, "priority = 2")),
    );
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let mut daemon = h.start_daemon();
    wait_until("traffic on isp1", Duration::from_secs(5), || {
        current_isp(&h) == Some(1)
    });

    // A real failure: isp1 silently drops everything, its probes fail.
    h.lab.blackhole_isp(1, true).unwrap();
    h.wait_until("isp1 down", Duration::from_secs(10), || {
        state(&h, "isp1") == "down"
    });
    stays_on(&h, 2, "after the failover");

    // apply: handed over to the daemon, whose link states stay.
    let out = h.multiwan(&["apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "multiwan apply: a multiwan daemon runs for this instance: asked it to reload \
             instead (reloaded "
        ) && stderr.contains("no link changed"),
        "{}",
        text(&out)
    );
    assert!(
        h.daemon_log()
            .contains("multiwan: reload requested: reloaded"),
        "{}",
        h.daemon_log()
    );
    assert_eq!(state(&h, "isp1"), "down");
    stays_on(&h, 2, "after apply beside the daemon");
    assert_eq!(state(&h, "isp1"), "down");

    // flush: refused, nothing changes.
    let before = installed(&h);
    assert!(before.contains("new_isp1"), "{before}");
    let out = h.multiwan(&["flush"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a multiwan daemon runs for this instance")
            && stderr.contains("Stop it first (`systemctl stop multiwan`"),
        "{}",
        text(&out)
    );
    assert_eq!(installed(&h), before);
    stays_on(&h, 2, "after the refused flush");
    assert_eq!(state(&h, "isp1"), "down");

    // Killed: its socket file stays, but nothing listens. That is no daemon: apply
    // installs by itself (every link with carrier in service), flush removes it all.
    daemon.signal(libc::SIGKILL);
    let _ = daemon.child().wait();
    let socket = format!("/run/multiwan/{}.sock", h.nft_table);
    assert!(std::path::Path::new(&socket).exists());
    let out = h.multiwan(&["apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("daemon"),
        "{}",
        text(&out)
    );
    assert!(
        h.router_sh("ip route show table 100").contains("wan1"),
        "{}",
        installed(&h)
    );
    h.multiwan_ok(&["flush"]);
    let after = h.router_sh(&format!("nft list table inet {} 2>&1 || true", h.nft_table));
    assert!(!after.contains("new_isp1"), "{after}");
}
