//! A daemon that accepts but never answers (issue 11): every client command gives up
//! after its timeout with exit 3, like one with no daemon at all; `flush` refuses beside
//! it, and a stale socket file with no listener is no daemon. The "daemon" is a socket
//! this test listens on; commands that could touch the kernel run in a fresh, empty
//! network namespace (`unshare -n`), so nothing on the host is changed.

mod common;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{multiwan_bin, require_root};

/// A Unix socket that accepts clients, reads what they send and never answers.
struct SilentDaemon {
    path: PathBuf,
}

impl SilentDaemon {
    fn start(tag: &str) -> SilentDaemon {
        let path =
            std::env::temp_dir().join(format!("mwt-silent-{}-{tag}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // Keep every connection open, reading and never writing.
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                });
            }
        });
        SilentDaemon { path }
    }
}

impl Drop for SilentDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A config whose control socket is `socket`, in a file removed on drop.
struct Config(PathBuf);

impl Config {
    fn new(tag: &str, socket: &Path) -> Config {
        let path =
            std::env::temp_dir().join(format!("mwt-silent-{}-{tag}.toml", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "[settings]\nnft_table = \"mwts{tag}{}\"\nsocket = \"{}\"\nlan = []\nmetrics = \"\"\n\n\
                 [links.isp1]\nid = 1\ninterface = \"wan1\"\n",
                std::process::id(),
                socket.display()
            ),
        )
        .unwrap();
        Config(path)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `multiwan ARGS` in a new, empty network namespace; the output and how long it took.
fn multiwan_isolated(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new("unshare")
        .arg("--net")
        .arg(multiwan_bin())
        .args(args)
        .output()
        .expect("running unshare --net multiwan (util-linux)");
    (out, start.elapsed())
}

/// Exit 3 after about `timeout`, with one line that says the daemon did not answer.
fn assert_gave_up(out: &Output, took: Duration, timeout: Duration, socket: &Path) {
    assert_eq!(out.status.code(), Some(3), "{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "the multiwan daemon on {} did not answer within {timeout:?}: it may be stuck; see its \
         log (journalctl -u multiwan)",
        socket.display()
    );
    assert!(
        stderr.contains(&expected),
        "{expected:?} not in\n{}",
        text(out)
    );
    assert_eq!(stderr.lines().count(), 1, "{}", text(out));
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(5),
        "gave up after {took:?}, timeout {timeout:?}"
    );
}

#[test]
fn status_events_and_link_give_up_after_5s_with_exit_3() {
    require_root();
    let daemon = SilentDaemon::start("sel");
    let socket = daemon.path.to_str().unwrap().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", "--socket", &socket],
        vec!["status", "--json", "--socket", &socket],
        vec!["events", "--socket", &socket],
        vec!["link", "isp1", "down", "--socket", &socket],
    ];
    // In parallel: each waits its full timeout.
    std::thread::scope(|s| {
        let runs: Vec<_> = commands
            .iter()
            .map(|args| s.spawn(move || multiwan_isolated(args)))
            .collect();
        for run in runs {
            let (out, took) = run.join().unwrap();
            assert_gave_up(&out, took, Duration::from_secs(5), &daemon.path);
        }
    });
}

#[test]
fn reload_gives_up_after_15s_with_exit_3() {
    require_root();
    let daemon = SilentDaemon::start("rel");
    let (out, took) = multiwan_isolated(&["reload", "--socket", daemon.path.to_str().unwrap()]);
    assert_gave_up(&out, took, Duration::from_secs(15), &daemon.path);
}

/// `apply` hands over to the daemon (a reload) and gives up like `reload`, touching
/// nothing itself; `flush` refuses at once with exit 2.
#[test]
fn apply_hands_over_and_gives_up_flush_refuses() {
    require_root();
    let daemon = SilentDaemon::start("apl");
    let config = Config::new("apl", &daemon.path);
    let c = config.0.to_str().unwrap();

    let (out, took) = multiwan_isolated(&["flush", "-c", c]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "multiwan flush: a multiwan daemon runs for this instance (it answers on {})",
            daemon.path.display()
        )) && stderr.contains("Stop it first (`systemctl stop multiwan`"),
        "{}",
        text(&out)
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    let (out, took) = multiwan_isolated(&["apply", "-c", c]);
    assert_gave_up(&out, took, Duration::from_secs(15), &daemon.path);
}

/// A socket file nothing listens on (a daemon killed with SIGKILL) is not a daemon:
/// `flush` goes ahead (in an empty namespace: it finds nothing to remove).
#[test]
fn a_stale_socket_is_no_daemon() {
    require_root();
    let path = std::env::temp_dir().join(format!("mwt-silent-{}-stale.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let config = Config::new("stl", &path);

    let (out, _) = multiwan_isolated(&["flush", "-c", config.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (out, _) = multiwan_isolated(&["status", "--socket", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no multiwan daemon answers on"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(format!(
        "/etc/iproute2/rt_tables.d/mwtsstl{}.conf",
        std::process::id()
    ));
}
