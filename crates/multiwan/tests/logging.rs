//! Logs (issue 11, acceptance 4): under systemd (`JOURNAL_STREAM` names stderr) every
//! line carries its syslog priority; `--log-level debug` adds probe detail, the default
//! does not.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{multiwan_bin, poll, Harness};

const CONFIG: &str = r#"
[links.isp1]
id = 1
interface = "wan1"

[links.isp1.check]
targets = ["198.18.0.1"]
interval = "200ms"
timeout = "200ms"
down_after = 2

[links.isp2]
id = 2
interface = "wan2"
"#;

/// Starts `multiwan run` with stderr to `log`, `JOURNAL_STREAM` naming that file when
/// `journal`, and `extra` arguments.
fn start(h: &Harness, log: &Path, journal: bool, extra: &[&str]) -> netns_lab::ChildGuard {
    let file = std::fs::File::create(log).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = Command::new(multiwan_bin());
    cmd.arg("run")
        .arg("-c")
        .arg(&h.config_path)
        .args(extra)
        .env_remove("MULTIWAN_LOG")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    } else {
        cmd.env_remove("JOURNAL_STREAM");
    }
    let child = h.router().spawn(&mut cmd).expect("starting multiwan run");
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        poll(Duration::from_secs(10), || read()
            .contains("multiwan: running")),
        "no start line:\n{}",
        read()
    );
    child
}

#[test]
fn journal_lines_carry_priorities_and_debug_shows_probe_detail() {
    let h = Harness::new("journal");
    h.write_config("lan = [\"lan0\"]", CONFIG);
    let log = std::env::temp_dir().join(format!("{}.journal.log", h.nft_table));
    let read = || std::fs::read_to_string(&log).unwrap_or_default();

    // Under the journal, with probe detail.
    let daemon = start(&h, &log, true, &["--log-level", "debug"]);
    h.lab.blackhole_isp(1, true).unwrap();
    assert!(
        poll(Duration::from_secs(10), || read()
            .contains("isp1: up -> down")),
        "no down line:\n{}",
        read()
    );
    drop(daemon);
    let text = read();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.len() > 3 && line.starts_with('<') && line.as_bytes()[2] == b'>',
            "a line without a priority: {line:?}\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>multiwan: link isp1: up -> down")),
        "a link going down is a warning:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("<6>multiwan: running")),
        "the start line is info:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<7>multiwan: link isp1: round")),
        "debug shows each probe round:\n{text}"
    );

    // Plain lines, default level: no priorities, no probe detail.
    h.lab.blackhole_isp(1, false).unwrap();
    std::fs::remove_dir_all(h.state_dir()).ok();
    let daemon = start(&h, &log, false, &[]);
    std::thread::sleep(Duration::from_millis(1000));
    drop(daemon);
    let text = read();
    assert!(
        text.lines().all(|l| !l.starts_with('<')),
        "plain lines expected:\n{text}"
    );
    assert!(
        !text.contains(": round"),
        "probe detail at the default level:\n{text}"
    );
    assert!(text.contains("multiwan: running"), "{text}");
    std::fs::remove_file(&log).ok();
}

#[test]
fn a_bad_log_level_is_a_usage_error() {
    let out = Command::new(multiwan_bin())
        .args(["--log-level", "loud", "check", "-c", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad log level \"loud\""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
