//! `multiwan check` as a user runs it: exit codes, messages with file:line:column and
//! key, and warnings about the machine (read inside a namespace of the test's own).

mod common;

use std::path::PathBuf;
use std::process::Output;

use netns_lab::{unique_name, Netns};

fn write(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("mwcheck-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn check(ns: Option<&Netns>, path: &PathBuf) -> Output {
    let mut cmd = match ns {
        Some(ns) => ns.command(common::multiwan_bin()),
        None => std::process::Command::new(common::multiwan_bin()),
    };
    let out = cmd.args(["check", "-c"]).arg(path).output().unwrap();
    let _ = std::fs::remove_file(path);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each rejection exits 2 and names the file, line, column and key.
#[test]
fn rejections_exit_2_with_file_line_column_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("syntax", "[links.isp1\nid = 1\n", ":1:"),
        (
            "unknown-key",
            "[links.isp1]\nid = 1\ninterface = \"wan1\"\ncolour = \"red\"\n",
            ":4:1: links.isp1.colour",
        ),
        (
            "duplicate-id",
            "[links.a]\nid = 1\ninterface = \"wan1\"\n\n[links.b]\nid = 1\ninterface = \"wan2\"\n",
            ":6:6: links.b.id",
        ),
        (
            "missing-policy",
            "[links.a]\nid = 1\ninterface = \"wan1\"\n\n[[rules]]\npolicy = \"nope\"\n",
            ":6:10: rules[1].policy",
        ),
        (
            "mark-mask",
            "[settings]\nmark_mask = 0xf0f0\n\n[links.a]\nid = 1\ninterface = \"wan1\"\n",
            ":2:13: settings.mark_mask",
        ),
        (
            "min-targets",
            "[links.a]\nid = 1\ninterface = \"wan1\"\n[links.a.check]\ntargets = [\"198.18.0.1\"]\nmin_targets = 2\n",
            ":6:15: links.a.check.min_targets",
        ),
    ];
    for (name, text, want) in cases {
        let path = write(name, text);
        let out = check(None, &path);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("{}{want}", path.display())),
            "{name}: expected `{}{want}` in:\n{err}",
            path.display()
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

#[test]
fn a_missing_file_exits_2_and_says_so() {
    let out = std::process::Command::new(common::multiwan_bin())
        .args(["check", "-c", "/nonexistent/multiwan.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/multiwan.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_usage_exits_2() {
    let out = std::process::Command::new(common::multiwan_bin())
        .args(["frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A foreign ip rule using bits of mark_mask is a warning (exit 0), with position.
#[test]
fn a_foreign_rule_using_mark_bits_is_a_warning() {
    common::require_root();
    let ns = Netns::new(unique_name("mwcheck", "foreign-rule")).unwrap();
    ns.ip(&[
        "rule",
        "add",
        "priority",
        "500",
        "fwmark",
        "0x100/0x300",
        "lookup",
        "700",
    ])
    .unwrap();
    let path = write(
        "foreign",
        "[settings]\nmark_mask = 0xff00\n\n[links.a]\nid = 1\ninterface = \"wan1\"\n",
    );
    let out = check(Some(&ns), &path);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("{}:2:1: settings.mark_mask", path.display()))
            && err.contains("priority 500")
            && err.contains("warning"),
        "{err}"
    );

    // Without the foreign rule: no such warning.
    ns.ip(&["rule", "del", "priority", "500"]).unwrap();
    let path = write(
        "clean",
        "[settings]\nmark_mask = 0xff00\n\n[links.a]\nid = 1\ninterface = \"wan1\"\n",
    );
    let err = stderr(&check(Some(&ns), &path));
    assert!(!err.contains("priority 500"), "{err}");
}

/// A foreign nft rule setting mark bits is a warning too.
#[test]
fn a_foreign_nft_rule_using_mark_bits_is_a_warning() {
    common::require_root();
    let ns = Netns::new(unique_name("mwcheck", "foreign-nft")).unwrap();
    ns.nft("table ip other { chain c { type filter hook prerouting priority 0; meta mark set 0x200; }\n}")
        .unwrap();
    let path = write("foreign-nft", "[links.a]\nid = 1\ninterface = \"wan1\"\n");
    let out = check(Some(&ns), &path);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("nft table ip other"), "{err}");
}

/// The sysctls multiwan needs are one list (the planner's): a fresh namespace has them
/// off, and check names each, IPv6's multipath hash only when some link has IPv6.
#[test]
fn sysctls_that_are_off_are_warnings() {
    common::require_root();
    let ns = Netns::new(unique_name("mwcheck", "sysctls")).unwrap();
    ns.ip(&[
        "link", "add", "wan1", "type", "veth", "peer", "name", "wan1p",
    ])
    .unwrap();
    let path = write("sysctls", "[links.a]\nid = 1\ninterface = \"wan1\"\n");
    let out = check(Some(&ns), &path);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for key in [
        "net.ipv4.icmp_errors_use_inbound_ifaddr is 0, multiwan needs 1",
        "net.ipv4.fib_multipath_hash_policy is 0, multiwan needs 1",
        "net.ipv6.fib_multipath_hash_policy is 0, multiwan needs 1",
        "net.ipv4.conf.wan1.src_valid_mark is 0, multiwan needs 1",
        "net.ipv6.conf.wan1.accept_ra is 1, multiwan needs 2",
    ] {
        assert!(err.contains(key), "no {key:?} in:\n{err}");
    }

    let path = write(
        "sysctls-v4",
        "[links.a]\nid = 1\ninterface = \"wan1\"\ngateway6 = \"none\"\n",
    );
    let err = stderr(&check(Some(&ns), &path));
    assert!(err.contains("net.ipv4.fib_multipath_hash_policy"), "{err}");
    assert!(!err.contains("net.ipv6."), "{err}");
}
