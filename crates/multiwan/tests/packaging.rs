//! The systemd unit and the Debian packaging: checked statically, `systemd-analyze
//! verify` (skipped where that binary is missing, except under `CI=true`, where that
//! fails), and a real `cargo deb` build listed with `dpkg -c`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `Key=value` lines of one section of a unit file, values of repeated keys joined
/// by a space.
fn unit_section(text: &str, section: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        if current != section {
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=value");
        let entry = out.entry(k.trim().to_string()).or_default();
        if !entry.is_empty() {
            entry.push(' ');
        }
        entry.push_str(v.trim());
    }
    out
}

fn unit() -> String {
    std::fs::read_to_string(root().join("packaging/multiwan.service")).unwrap()
}

fn deb() -> toml::Table {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let manifest: toml::Table = text.parse().unwrap();
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]")
        .clone()
}

#[test]
fn the_unit_is_a_watched_notify_service_with_two_capabilities() {
    let text = unit();
    let service = unit_section(&text, "Service");
    let get = |k: &str| service.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(get("Type"), "notify");
    assert_eq!(get("NotifyAccess"), "main");
    assert!(
        get("WatchdogSec").ends_with('s'),
        "WatchdogSec: {service:#?}"
    );
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(
        get("RestartPreventExitStatus"),
        "2",
        "a bad config must not restart-loop"
    );
    assert_eq!(
        get("ExecStart"),
        "/usr/sbin/multiwan run -c /etc/multiwan/multiwan.toml"
    );
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    let mut caps: Vec<&str> = get("CapabilityBoundingSet").split_whitespace().collect();
    caps.sort();
    assert_eq!(caps, ["CAP_NET_ADMIN", "CAP_NET_RAW"]);
    assert_eq!(get("AmbientCapabilities"), "");
    assert_eq!(get("NoNewPrivileges"), "yes");
    // Where the daemon writes, by default.
    assert_eq!(get("RuntimeDirectory"), "multiwan");
    assert!(multiwan::control::DEFAULT_SOCKET.starts_with("/run/multiwan/"));
    assert_eq!(get("StateDirectory"), "multiwan");
    assert_eq!(get("ProtectSystem"), "strict");
    assert!(
        get("ReadWritePaths").contains(multiwan::kernel::rt_tables::RT_TABLES_DIR),
        "table_names needs {}",
        multiwan::kernel::rt_tables::RT_TABLES_DIR
    );
    // It writes net.* sysctls, so /proc/sys must stay writable.
    assert_ne!(get("ProtectKernelTunables"), "yes");
    for family in ["AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6", "AF_PACKET"] {
        assert!(get("RestrictAddressFamilies").contains(family), "{family}");
    }
    let install = unit_section(&text, "Install");
    assert_eq!(
        install.get("WantedBy").map(String::as_str),
        Some("multi-user.target")
    );
}

#[test]
fn the_deb_ships_binary_unit_config_and_hooks_dir() {
    let deb = deb();
    let assets: Vec<Vec<String>> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    let find = |dest: &str| {
        assets
            .iter()
            .find(|a| a[1] == dest)
            .unwrap_or_else(|| panic!("no asset installed as {dest}: {assets:?}"))
    };
    assert_eq!(find("usr/sbin/")[0], "target/release/multiwan");
    assert_eq!(find("usr/sbin/")[2], "755");
    let config = find("etc/multiwan/multiwan.toml");
    let hooks = find("etc/multiwan/hooks.d/README");
    assert_eq!(
        hooks[2], "644",
        "the hooks dir's README must not be executable"
    );
    // Every source exists (globs: their directory).
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for a in &assets {
        if a[0].starts_with("target/") {
            continue;
        }
        let src = crate_dir.join(&a[0]);
        let check = if a[0].contains('*') {
            src.parent().unwrap().to_path_buf()
        } else {
            src
        };
        assert!(
            check.exists(),
            "asset source {} is missing",
            check.display()
        );
    }
    let conf: Vec<&str> = deb["conf-files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(conf.contains(&"/etc/multiwan/multiwan.toml"), "{conf:?}");
    assert!(deb["depends"].as_str().unwrap().contains("nftables"));

    // The unit: cargo-deb installs <unit-scripts>/multiwan.service.
    let units = deb["systemd-units"].as_table().unwrap();
    let unit_dir = crate_dir.join(units["unit-scripts"].as_str().unwrap());
    assert!(unit_dir.join("multiwan.service").is_file());
    assert_eq!(
        units["enable"].as_bool(),
        Some(false),
        "the example config must be edited first"
    );
    let scripts = crate_dir.join(deb["maintainer-scripts"].as_str().unwrap());
    for entry in std::fs::read_dir(&scripts).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("#DEBHELPER#"),
            "{} lacks #DEBHELPER#",
            path.display()
        );
    }

    // The shipped config is valid.
    let out = Command::new(env!("CARGO_BIN_EXE_multiwan"))
        .args(["check", "-c"])
        .arg(crate_dir.join(&config[0]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "multiwan check of the shipped config:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `systemd-analyze verify` where it exists, on a copy of the unit whose ExecStart is
/// the binary under test (the installed path does not exist here).
#[test]
fn systemd_analyze_verify_where_available() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        // Under CI nothing may pass untested: scripts/install-deps.sh installs systemd,
        // which brings systemd-analyze.
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "systemd-analyze is not installed (Debian package systemd): run \
             scripts/install-deps.sh; under CI=true this check may not be skipped"
        );
        eprintln!("systemd-analyze is not installed: only the static checks ran");
        return;
    }
    let dir = std::env::temp_dir().join(format!("multiwan-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = unit().replace("/usr/sbin/multiwan", env!("CARGO_BIN_EXE_multiwan"));
    let path = dir.join("multiwan.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about our unit only: without a running systemd (containers, build hosts)
    // verify also complains about the host's own units and its missing manager.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("multiwan.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{stderr}");
}

/// The .deb really builds (cargo-deb, installed by scripts/test.sh) and `dpkg -c` lists
/// what an operator expects. The package is made from the test build's binary (dev
/// profile, stripped by cargo-deb) so CI does not build everything twice.
#[test]
fn the_deb_builds_and_dpkg_lists_the_expected_files() {
    let out_dir = std::env::temp_dir().join(format!("mwdeb-{}", std::process::id()));
    let build = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "deb",
            "-p",
            "multiwan",
            "--profile",
            "dev",
            "--no-build",
            "-o",
        ])
        .arg(&out_dir)
        .output()
        .expect("running cargo deb");
    assert!(
        build.status.success(),
        "cargo deb failed (scripts/test.sh installs cargo-deb: cargo install cargo-deb):\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let deb = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb was written");
    let listing = Command::new("dpkg").arg("-c").arg(&deb).output().unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);
    let listing = String::from_utf8_lossy(&listing.stdout);
    for want in [
        "./usr/sbin/multiwan",
        "./usr/lib/systemd/system/multiwan.service",
        "./etc/multiwan/multiwan.toml",
        "./etc/multiwan/hooks.d/",
        "./usr/share/doc/multiwan/examples/two-isps-lte.toml",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(want)),
            "dpkg -c does not list {want}:\n{listing}"
        );
    }
}
