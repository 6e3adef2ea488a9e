//! `method = "https"` under a running daemon: the config key reaches the prober, a link
//! whose server's certificate verifies (against `ca_file`, a test CA made at test time)
//! stays up, and one whose server presents a certificate for another name goes down
//! with that reason in `multiwan status --json`. Needs root and `openssl`.

mod common;
mod tls_lab;

use std::time::Duration;

use common::Harness;
use netns_lab::Lab;
use tls_lab::{pki, require_openssl, tls_server, TempDir};

/// The daemon's view of link `name` in `multiwan status --json`.
fn link_status(h: &Harness, name: &str) -> serde_json::Value {
    let out = h.multiwan(&["status", "--json"]);
    assert!(
        out.status.success(),
        "multiwan status --json failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        h.daemon_log()
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["name"] == name).cloned())
        .unwrap_or_default()
}

#[test]
fn daemon_takes_down_the_link_whose_certificate_does_not_verify() {
    require_openssl();
    let h = Harness::with(Lab::builder("https-daemon").isps(2).servers(1));
    let site = h.lab.server(1);
    let dir = TempDir::new("https-daemon");
    std::fs::write(dir.0.join("health"), "ok\n").unwrap();
    // The URLs name the server by address: the certificate must carry it (IP SAN).
    let pki = pki(&dir.0, &site.to_string());
    let _good = tls_server(&h.lab, &dir.0, 8443, &pki.good);
    let _other = tls_server(&h.lab, &dir.0, 8444, &pki.other_name);
    let link = |k: usize, port: u16| {
        format!(
            "[links.isp{k}]\nid = {k}\ninterface = \"wan{k}\"\n\n[links.isp{k}.check]\n\
             method = \"https\"\ntargets = [\"https://{site}:{port}/health\"]\n\
             ca_file = \"{}\"\ninterval = \"200ms\"\ntimeout = \"1s\"\ndown_after = 3\n",
            pki.ca_file.display()
        )
    };
    h.write_config(
        "lan = [\"lan0\"]",
        &format!("{}\n{}", link(1, 8443), link(2, 8444)),
    );
    let _daemon = h.start_daemon();

    h.wait_until("isp2 down", Duration::from_secs(10), || {
        link_status(&h, "isp2")["state"] == "down"
    });
    let reason = link_status(&h, "isp2")["reason"].to_string();
    eprintln!("isp2: {reason}");
    assert!(
        reason.contains(&format!("certificate not valid for name {site}")),
        "{reason}"
    );
    assert!(reason.contains("other.example"), "{reason}");
    // isp1's certificate verifies: it was never taken down.
    std::thread::sleep(Duration::from_secs(1));
    let isp1 = link_status(&h, "isp1");
    assert_eq!(isp1["state"], "up", "{isp1:#}\n{}", h.daemon_log());
    assert!(
        !h.daemon_log().contains("link isp1: up -> down"),
        "{}",
        h.daemon_log()
    );
}
