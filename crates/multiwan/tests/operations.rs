//! Operating the daemon on a real kernel (issue 5): `status`, `events`, `reload`,
//! `link`, metrics and hooks, through the CLI as an operator uses them.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{multiwan_bin, wait_until, Harness};
use netns_lab::{tcp_whoami, LongLivedConnection};
use serde_json::Value;

const PORT: u16 = 7100;
const ATTEMPT: Duration = Duration::from_millis(500);
const METRICS: &str = "127.0.0.1:9581";

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

/// isp1 primary, isp2 backup.
fn primary_backup() -> String {
    link("isp1", 1, "") + &link("isp2", 2, "priority = 2")
}

fn server() -> IpAddr {
    IpAddr::V4(netns_lab::lab::addr::server(1))
}

/// The ISP a new connection from the LAN leaves through.
fn current_isp(h: &Harness) -> Option<usize> {
    tcp_whoami(h.lab.lan(), server(), PORT, None, ATTEMPT)
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

/// `multiwan status --json`.
fn status(h: &Harness) -> Value {
    let out = h.multiwan_ok(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn link_of<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no link {name} in {status:#}"))
}

fn state(h: &Harness, name: &str) -> String {
    link_of(&status(h), name)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `GET path` from inside the router namespace: (status line, body).
fn http_get(h: &Harness, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let response = h
        .router()
        .run(move || {
            let mut s = std::net::TcpStream::connect(METRICS)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .unwrap()
        .expect("scraping the metrics listener inside the router");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// One sample's value, `name{labels}` written exactly as exported.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A hooks directory of this test, root's and 0755, removed on drop.
struct HooksDir(PathBuf);

impl HooksDir {
    fn new(h: &Harness) -> HooksDir {
        let dir = std::env::temp_dir().join(format!("{}.hooks", h.nft_table));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        HooksDir(dir)
    }

    fn add(&self, name: &str, mode: u32, script: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for HooksDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `multiwan events --json` running in the background; lines arrive on a channel.
struct Events {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Events {
    fn start(h: &Harness) -> Events {
        let mut child = std::process::Command::new(multiwan_bin())
            .args(["events", "--json", "-c"])
            .arg(&h.config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Events { child, lines }
    }

    fn next(&self, timeout: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
    }

    /// Events until (and including) the first that matches, within `timeout`.
    fn until(&self, timeout: Duration, f: impl Fn(&Value) -> bool) -> Vec<Value> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while let Some(left) = timeout.checked_sub(start.elapsed()) {
            match self.next(left) {
                Some(e) => {
                    let done = f(&e);
                    seen.push(e);
                    if done {
                        return seen;
                    }
                }
                None => break,
            }
        }
        panic!("no matching event within {timeout:?}; saw {seen:#?}");
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is(e: &Value, link: &str, from: &str, to: &str) -> bool {
    e["link"] == link && e["from"] == from && e["to"] == to
}

/// Source ports of the LAN client's TCP connections to the whoami port that conntrack
/// holds in the router.
fn tracked_ports(h: &Harness) -> BTreeSet<u16> {
    let out = h.router_sh(&format!(
        "conntrack -L -p tcp --dport {PORT} 2>/dev/null || true"
    ));
    out.lines()
        .filter_map(|l| {
            let sport = l.split_whitespace().find(|w| w.starts_with("sport="))?;
            sport.trim_start_matches("sport=").parse().ok()
        })
        .collect()
}

const SPEC_LINK_FIELDS: [&str; 18] = [
    "name",
    "interface",
    "id",
    "state",
    "gateway",
    "gateway6",
    "addresses",
    "priority",
    "weight",
    "rtt_ms",
    "loss_pct",
    "since",
    "reason",
    "override",
    "damped_until",
    "share_pct",
    "new_connections",
    "targets",
];

fn assert_all_fields(s: &Value) {
    let obj = s.as_object().expect("one object");
    assert_eq!(
        obj.keys().cloned().collect::<BTreeSet<_>>(),
        ["links", "policies"]
            .map(String::from)
            .into_iter()
            .collect(),
        "{s:#}"
    );
    for l in s["links"].as_array().unwrap() {
        let keys: BTreeSet<String> = l.as_object().unwrap().keys().cloned().collect();
        let want: BTreeSet<String> = SPEC_LINK_FIELDS.map(String::from).into_iter().collect();
        assert_eq!(keys, want, "{l:#}");
        for t in l["targets"].as_array().unwrap() {
            let keys: BTreeSet<String> = t.as_object().unwrap().keys().cloned().collect();
            let want: BTreeSet<String> = ["target", "up", "rtt_ms", "loss_pct"]
                .map(String::from)
                .into_iter()
                .collect();
            assert_eq!(keys, want, "{t:#}");
        }
    }
    for p in s["policies"].as_array().unwrap() {
        assert!(p["name"].is_string() && p["active"].is_array(), "{p:#}");
    }
}

fn assert_exit(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "{needle:?} not in\n{}", text(out));
}

/// Status --json carries every SPEC §4 field, with true values, after each transition;
/// the table reads right; with no daemon the clients exit 3.
#[test]
fn status_after_each_transition() {
    let h = Harness::new("opstatus");
    h.write_config("lan = [\"lan0\"]", &primary_backup());
    let socket = format!("/run/multiwan/{}.sock", h.nft_table);

    // No daemon: exit 3 and a message that says what to do.
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["events"],
        &["reload"],
        &["link", "isp1", "down"],
    ] {
        let out = h.multiwan(args);
        assert_exit(
            &out,
            3,
            &format!("no multiwan daemon answers on {socket}: is `multiwan run` running?"),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().count(),
            1,
            "{}",
            text(&out)
        );
    }

    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let mut daemon = h.start_daemon();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    // Up: after a few rounds RTT and loss are known.
    wait_until("rtt measured", Duration::from_secs(5), || {
        link_of(&status(&h), "isp1")["rtt_ms"].is_f64()
    });
    assert_eq!(current_isp(&h), Some(1));
    let s = status(&h);
    assert_all_fields(&s);
    let isp1 = link_of(&s, "isp1");
    assert_eq!(isp1["interface"], "wan1");
    assert_eq!(isp1["id"], 1);
    assert_eq!(isp1["state"], "up");
    assert_eq!(isp1["gateway"], "100.64.1.1");
    assert_eq!(isp1["gateway6"], Value::Null);
    assert_eq!(isp1["addresses"], serde_json::json!(["100.64.1.2/24"]));
    assert_eq!(isp1["priority"], 1);
    assert_eq!(isp1["weight"], 1);
    assert!(isp1["rtt_ms"].as_f64().unwrap() > 0.0, "{isp1:#}");
    assert!(isp1["loss_pct"].as_f64().unwrap() < 50.0, "{isp1:#}");
    assert!(isp1["since"].as_str().unwrap().ends_with('Z'), "{isp1:#}");
    assert!(isp1["reason"].is_string());
    assert_eq!(isp1["override"], Value::Null);
    assert_eq!(isp1["damped_until"], Value::Null);
    assert_eq!(isp1["share_pct"], 100.0);
    assert!(isp1["new_connections"].as_u64().unwrap() >= 1, "{isp1:#}");
    let mut targets: Vec<&str> = isp1["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    targets.sort();
    assert_eq!(targets, ["198.18.0.1", "198.18.0.2"]);
    assert!(isp1["targets"][0]["up"].as_bool().unwrap());
    let isp2 = link_of(&s, "isp2");
    assert_eq!(
        (isp2["state"].as_str(), isp2["share_pct"].as_f64()),
        (Some("up"), Some(0.0))
    );
    assert_eq!(
        s["policies"],
        serde_json::json!([{"name": "default", "active": ["isp1"]}])
    );
    let since_up = isp1["since"].clone();

    // The table.
    let table = String::from_utf8_lossy(&h.multiwan_ok(&["status"]).stdout).into_owned();
    let header = table.lines().next().unwrap();
    for col in [
        "LINK",
        "INTERFACE",
        "STATE",
        "SHARE",
        "RTT",
        "LOSS",
        "NEW CONN",
    ] {
        assert!(header.contains(col), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("isp1 "))
        .expect(&table);
    assert!(
        row.contains("wan1") && row.contains(" up ") && row.contains("100.0%"),
        "{table}"
    );
    assert!(table.contains("policy default: isp1"), "{table}");
    assert!(!table.contains('\u{1b}'), "no terminal escapes: {table:?}");

    // Down (a blackhole: probes fail).
    h.lab.blackhole_isp(1, true).unwrap();
    wait_until("isp1 down", Duration::from_secs(5), || {
        state(&h, "isp1") == "down"
    });
    let s = status(&h);
    assert_all_fields(&s);
    let isp1 = link_of(&s, "isp1");
    assert!(
        isp1["reason"].as_str().unwrap().contains("bad rounds"),
        "{isp1:#}"
    );
    assert!(isp1["loss_pct"].as_f64().unwrap() > 0.0, "{isp1:#}");
    assert_eq!(isp1["share_pct"], 0.0);
    // RFC 3339 in UTC with seconds: later strings sort later.
    assert!(
        isp1["since"].as_str().unwrap() >= since_up.as_str().unwrap(),
        "{isp1:#}"
    );
    assert!(!isp1["targets"][0]["up"].as_bool().unwrap(), "{isp1:#}");
    assert_eq!(link_of(&s, "isp2")["share_pct"], 100.0);
    assert_eq!(s["policies"][0]["active"], serde_json::json!(["isp2"]));
    let table = String::from_utf8_lossy(&h.multiwan_ok(&["status"]).stdout).into_owned();
    assert!(table.contains("policy default: isp2"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("isp1 ") && l.contains(" down ")),
        "{table}"
    );

    // Forced up by the operator.
    h.multiwan_ok(&["link", "isp1", "up"]);
    let s = status(&h);
    assert_all_fields(&s);
    let isp1 = link_of(&s, "isp1");
    assert_eq!(
        (isp1["state"].as_str(), isp1["override"].as_str()),
        (Some("up"), Some("up"))
    );
    assert_eq!(isp1["reason"], "operator override: up");
    assert_eq!(isp1["share_pct"], 100.0);
    let table = String::from_utf8_lossy(&h.multiwan_ok(&["status"]).stdout).into_owned();
    assert!(table.contains("override up"), "{table}");

    // Back to the evidence, then healed.
    h.multiwan_ok(&["link", "isp1", "auto"]);
    let s = status(&h);
    assert_eq!(link_of(&s, "isp1")["state"], "down");
    assert_eq!(link_of(&s, "isp1")["override"], Value::Null);
    h.lab.blackhole_isp(1, false).unwrap();
    wait_until("isp1 up", Duration::from_secs(5), || {
        state(&h, "isp1") == "up"
    });
    let s = status(&h);
    assert_all_fields(&s);
    assert_eq!(link_of(&s, "isp1")["share_pct"], 100.0);
    assert_eq!(s["policies"][0]["active"], serde_json::json!(["isp1"]));

    // A second daemon of the same instance refuses to start, touching nothing.
    let second = h.multiwan(&["run"]);
    assert_exit(
        &second,
        1,
        &format!("another multiwan daemon answers on {socket}"),
    );
    assert_eq!(state(&h, "isp1"), "up");

    // Stopped: the socket is gone, the clients say so.
    daemon.signal(libc::SIGTERM);
    let _ = daemon.child().wait();
    assert!(!Path::new(&socket).exists(), "socket left behind");
    let out = h.multiwan(&["status"]);
    assert_exit(&out, 3, "is `multiwan run` running?");

    // Killed: the stale socket is replaced by the next daemon.
    let mut daemon = h.start_daemon();
    daemon.signal(libc::SIGKILL);
    let _ = daemon.child().wait();
    assert!(Path::new(&socket).exists());
    assert_exit(&h.multiwan(&["status"]), 3, "is `multiwan run` running?");
    let _daemon = h.start_daemon();
    assert!(
        h.daemon_log().contains(&format!(
            "multiwan: removed the stale control socket {socket}"
        )),
        "{}",
        h.daemon_log()
    );
    assert_eq!(state(&h, "isp1"), "up");
}

/// `events --json` shows each transition of a scripted failover, in order.
#[test]
fn serial_events_follow_a_scripted_failover() {
    let h = Harness::new("opevents");
    h.write_config("lan = [\"lan0\"]", &primary_backup());
    let _daemon = h.start_daemon();
    let events = Events::start(&h);
    // The subscription is in place once an operator action shows up in it.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no events at all"
        );
        h.multiwan_ok(&["link", "isp2", "down"]);
        h.multiwan_ok(&["link", "isp2", "auto"]);
        if let Some(e) = events.next(Duration::from_millis(500)) {
            if is(&e, "isp2", "disabled", "up") {
                break;
            }
            events.until(Duration::from_secs(2), |e| is(e, "isp2", "disabled", "up"));
            break;
        }
    }

    let mut seen = Vec::new();
    h.lab.blackhole_isp(1, true).unwrap();
    seen.extend(events.until(Duration::from_secs(5), |e| e["link"] == "isp1"));
    h.lab.carrier(2, false).unwrap();
    seen.extend(events.until(Duration::from_secs(5), |e| e["link"] == "isp2"));
    h.lab.carrier(2, true).unwrap();
    seen.extend(events.until(Duration::from_secs(5), |e| e["link"] == "isp2"));
    h.lab.blackhole_isp(1, false).unwrap();
    seen.extend(events.until(Duration::from_secs(5), |e| e["link"] == "isp1"));
    let got: Vec<(String, String, String)> = seen
        .iter()
        .map(|e| {
            (
                e["link"].as_str().unwrap().to_string(),
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("isp1", "up", "down"),
        ("isp2", "up", "down"),
        ("isp2", "down", "up"),
        ("isp1", "down", "up"),
    ]
    .map(|(l, f, t)| (l.to_string(), f.to_string(), t.to_string()));
    assert_eq!(got, want, "{seen:#?}\n{}", h.daemon_log());
    assert!(
        seen[0]["reason"].as_str().unwrap().contains("bad rounds"),
        "{seen:#?}"
    );
    assert!(
        seen[1]["reason"]
            .as_str()
            .unwrap()
            .contains("carrier lost on wan2"),
        "{seen:#?}"
    );
    let times: Vec<&str> = seen.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // Text mode: one readable line per change.
    let mut child = std::process::Command::new(multiwan_bin())
        .args(["events", "-c"])
        .arg(&h.config_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let reader = std::thread::spawn(move || lines.next().and_then(|l| l.ok()));
    let start = Instant::now();
    while !reader.is_finished() && start.elapsed() < Duration::from_secs(10) {
        h.multiwan_ok(&["link", "isp2", "down"]);
        h.multiwan_ok(&["link", "isp2", "auto"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = reader
        .join()
        .unwrap()
        .expect("a line from `multiwan events`");
    assert!(
        line.contains("isp2: up -> disabled (operator override: down)")
            || line.contains("isp2: disabled -> up"),
        "{line}"
    );
}

/// Every SPEC §5 metric with HELP and TYPE; values move as a link fails.
#[test]
fn serial_metrics_move_as_a_link_fails() {
    let h = Harness::new("opmetrics");
    h.write_config(
        &format!("lan = [\"lan0\"]\nmetrics = \"{METRICS}\""),
        &primary_backup(),
    );
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let _daemon = h.start_daemon();
    wait_until("rtt measured", Duration::from_secs(5), || {
        link_of(&status(&h), "isp1")["rtt_ms"].is_f64()
    });
    for _ in 0..3 {
        assert_eq!(current_isp(&h), Some(1));
    }
    let (code, before) = http_get(&h, "/metrics");
    assert_eq!(code, "HTTP/1.1 200 OK", "{before}");
    for (name, kind) in [
        ("multiwan_link_up", "gauge"),
        ("multiwan_link_state", "gauge"),
        ("multiwan_link_rtt_seconds", "gauge"),
        ("multiwan_link_loss_ratio", "gauge"),
        ("multiwan_link_transitions_total", "counter"),
        ("multiwan_probes_total", "counter"),
        ("multiwan_link_new_connections_total", "counter"),
        ("multiwan_apply_seconds", "histogram"),
    ] {
        assert!(
            before.contains(&format!("\n# HELP {name} "))
                || before.starts_with(&format!("# HELP {name} ")),
            "{name}\n{before}"
        );
        assert!(
            before.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}\n{before}"
        );
    }
    let v = |m: &str, s: &str| sample(m, s).unwrap_or_else(|| panic!("no {s} in\n{m}"));
    assert_eq!(v(&before, "multiwan_link_up{link=\"isp1\"}"), 1.0);
    assert_eq!(
        v(&before, "multiwan_link_state{link=\"isp1\",state=\"up\"}"),
        1.0
    );
    assert_eq!(
        v(&before, "multiwan_link_state{link=\"isp1\",state=\"down\"}"),
        0.0
    );
    let rtt = v(&before, "multiwan_link_rtt_seconds{link=\"isp1\"}");
    assert!(rtt > 0.0 && rtt < 0.2, "{rtt}");
    assert_eq!(v(&before, "multiwan_link_loss_ratio{link=\"isp1\"}"), 0.0);
    assert_eq!(
        v(
            &before,
            "multiwan_link_transitions_total{link=\"isp1\",to=\"down\"}"
        ),
        0.0
    );
    let answered = "multiwan_probes_total{link=\"isp1\",target=\"198.18.0.1\",result=\"answered\"}";
    assert!(v(&before, answered) >= 1.0, "{before}");
    let new1 = v(
        &before,
        "multiwan_link_new_connections_total{link=\"isp1\"}",
    );
    assert!(new1 >= 3.0, "{before}");
    assert_eq!(
        v(
            &before,
            "multiwan_link_new_connections_total{link=\"isp2\"}"
        ),
        0.0
    );
    let applies = v(&before, "multiwan_apply_seconds_count");
    assert!(applies >= 1.0);
    assert_eq!(
        v(&before, "multiwan_apply_seconds_bucket{le=\"+Inf\"}"),
        applies
    );

    h.lab.blackhole_isp(1, true).unwrap();
    wait_until("isp1 down", Duration::from_secs(5), || {
        state(&h, "isp1") == "down"
    });
    assert_eq!(current_isp(&h), Some(2));
    let (_, after) = http_get(&h, "/metrics");
    assert_eq!(v(&after, "multiwan_link_up{link=\"isp1\"}"), 0.0);
    assert_eq!(
        v(&after, "multiwan_link_state{link=\"isp1\",state=\"up\"}"),
        0.0
    );
    assert_eq!(
        v(&after, "multiwan_link_state{link=\"isp1\",state=\"down\"}"),
        1.0
    );
    assert!(
        v(&after, "multiwan_link_loss_ratio{link=\"isp1\"}") > 0.0,
        "{after}"
    );
    assert_eq!(
        v(
            &after,
            "multiwan_link_transitions_total{link=\"isp1\",to=\"down\"}"
        ),
        1.0
    );
    let lost = "multiwan_probes_total{link=\"isp1\",target=\"198.18.0.1\",result=\"lost\"}";
    assert!(v(&after, lost) >= 3.0, "{after}");
    assert!(v(&after, answered) >= v(&before, answered));
    // (At least: the test's own traffic is not the only thing that may open
    // connections through isp1; probes are not counted.)
    assert!(v(&after, "multiwan_link_new_connections_total{link=\"isp1\"}") >= new1);
    assert!(v(&after, "multiwan_link_new_connections_total{link=\"isp2\"}") >= 1.0);
    assert!(
        v(&after, "multiwan_apply_seconds_count") > applies,
        "{after}"
    );
    assert!(v(&after, "multiwan_apply_seconds_sum") > 0.0);

    let (code, _) = http_get(&h, "/nothing");
    assert_eq!(code, "HTTP/1.1 404 Not Found");
}

/// A hook sees every variable right, at start and on a change; a hanging hook is
/// killed at hook_timeout and the daemon goes on; a group-writable hook is refused.
#[test]
fn serial_hooks_run_with_their_environment() {
    let h = Harness::new("ophooks");
    let hooks = HooksDir::new(&h);
    let out = hooks.path("env.out");
    let ran_bad = hooks.path("bad.ran");
    // Runs first, hangs past the timeout (with a grandchild holding its output open).
    hooks.add(
        "05-hang",
        0o755,
        "#!/bin/sh\necho hanging\nsleep 30 &\nexec sleep 30\n",
    );
    hooks.add(
        "10-env",
        0o755,
        &format!(
            "#!/bin/sh\necho \"hello from $MULTIWAN_LINK\"\n\
             printf '%s|%s|%s|%s|%s|%s\\n' \"$MULTIWAN_LINK\" \"$MULTIWAN_EVENT\" \
             \"$MULTIWAN_PREVIOUS\" \"$MULTIWAN_INTERFACE\" \"$MULTIWAN_GATEWAY\" \
             \"$MULTIWAN_ACTIVE\" >> {}\n",
            out.display()
        ),
    );
    hooks.add(
        "20-writable",
        0o775,
        &format!("#!/bin/sh\ntouch {}\n", ran_bad.display()),
    );
    hooks.add("README", 0o644, "not a hook\n");
    h.write_config(
        &format!(
            "lan = [\"lan0\"]\nhooks_dir = \"{}\"\nhook_timeout = \"1s\"",
            hooks.0.display()
        ),
        &primary_backup(),
    );
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let started = Instant::now();
    let _daemon = h.start_daemon();
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    // Initial state, once per link, after the hanging hook was killed.
    wait_until("initial hooks", Duration::from_secs(10), || {
        lines().len() >= 2
    });
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "10-env ran before 05-hang was killed"
    );
    let mut initial = lines();
    initial.sort();
    assert_eq!(
        initial,
        [
            "isp1|up|none|wan1|100.64.1.1|isp1 isp2",
            "isp2|up|none|wan2|100.64.2.1|isp1 isp2",
        ],
        "{}",
        h.daemon_log()
    );
    // The daemon answers while hooks hang.
    assert_eq!(state(&h, "isp1"), "up");

    h.lab.blackhole_isp(1, true).unwrap();
    wait_until("isp1 down", Duration::from_secs(5), || {
        state(&h, "isp1") == "down"
    });
    // Failover does not wait for hooks: new connections move at once.
    assert_eq!(current_isp(&h), Some(2));
    wait_until("hook of the change", Duration::from_secs(5), || {
        lines().len() >= 3
    });
    assert_eq!(
        lines()[2],
        "isp1|down|up|wan1|100.64.1.1|isp2",
        "{}",
        h.daemon_log()
    );

    // The hook writes its file before it exits; its output is logged when it has.
    h.wait_for_log(
        "multiwan: hook 10-env (isp1 up -> down): exit 0 in ",
        Duration::from_secs(5),
    );
    let log = h.daemon_log();
    assert!(
        log.contains(
            "multiwan: hook 05-hang (isp1 none -> up): still running after hook_timeout 1s, killed"
        ),
        "{log}"
    );
    assert!(
        log.contains("multiwan: hook 05-hang (isp1 none -> up): hanging"),
        "{log}"
    );
    assert!(
        log.contains("multiwan: hook 10-env (isp1 up -> down): hello from isp1"),
        "{log}"
    );
    assert!(
        log.contains("multiwan: hook 10-env (isp1 up -> down): exit 0 in "),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "multiwan: hook {} refused: writable by group or others (mode 0775; chmod go-w it)",
            hooks.path("20-writable").display()
        )),
        "{log}"
    );
    assert!(!log.contains("README"), "{log}");
    assert!(!ran_bad.exists(), "a group-writable hook ran");
    assert!(!log.contains('\u{1b}'), "escape sequences in the log");
    // The killed hooks left nothing behind.
    wait_until("hook processes gone", Duration::from_secs(3), || {
        h.router().pids().into_iter().all(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline != b"sleep\x0030\x00"
        })
    });
}

/// Two links sharing the load 1:1, probed slowly (reload must not depend on probes).
fn balanced(w1: u32, w2: u32, extra: &str) -> String {
    link("isp1", 1, &format!("weight = {w1}")) + &link("isp2", 2, &format!("weight = {w2}")) + extra
}

fn split(h: &Harness, n: usize) -> (usize, usize) {
    let mut counts = (0, 0);
    for _ in 0..n {
        match current_isp(h) {
            Some(1) => counts.0 += 1,
            Some(2) => counts.1 += 1,
            other => panic!("a connection went {other:?}\n{}", h.daemon_log()),
        }
    }
    counts
}

/// Reload: a weight change moves the split of new connections and deletes no
/// conntrack entry (SIGHUP too); a broken file is refused with exit 2 and the old
/// config keeps working; changing table_base is refused.
#[test]
fn serial_reload_changes_weights_and_refuses_bad_files() {
    let h = Harness::new("opreload");
    h.write_config("lan = [\"lan0\"]", &balanced(1, 1, ""));
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let daemon = h.start_daemon();
    let mut long = LongLivedConnection::open(h.lab.lan(), server(), PORT, None, ATTEMPT).unwrap();
    long.exchange(1000).unwrap();

    let (a, b) = split(&h, 100);
    assert!((25..=75).contains(&a), "1:1 gave {a}:{b}");
    let before = tracked_ports(&h);
    assert!(before.len() >= 100, "{before:?}");

    h.write_config("lan = [\"lan0\"]", &balanced(19, 1, ""));
    let out = h.multiwan_ok(&["reload"]);
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(
        msg.contains("changed isp1 (weight)") && !msg.contains("isp2"),
        "{msg}"
    );
    let s = status(&h);
    assert_eq!(link_of(&s, "isp1")["weight"], 19);
    let share = link_of(&s, "isp1")["share_pct"].as_f64().unwrap();
    assert!((share - 95.0).abs() < 0.01, "{share}");
    let after = tracked_ports(&h);
    let lost: Vec<_> = before.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "reload deleted conntrack entries: {lost:?}"
    );
    long.exchange(1000)
        .expect("a connection survives the reload");
    let (a, b) = split(&h, 200);
    assert!(a >= 170, "19:1 gave {a}:{b}");

    // SIGHUP does the same.
    h.write_config("lan = [\"lan0\"]", &balanced(1, 19, ""));
    daemon.signal(libc::SIGHUP);
    wait_until("SIGHUP reload", Duration::from_secs(5), || {
        link_of(&status(&h), "isp2")["weight"] == 19
    });
    assert!(
        h.daemon_log().contains("multiwan: SIGHUP: reloaded"),
        "{}",
        h.daemon_log()
    );
    let (a, b) = split(&h, 200);
    assert!(b >= 170, "1:19 gave {a}:{b}");
    long.exchange(1000).unwrap();

    // A broken file: exit 2 with the error, nothing changes.
    let good = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        good.replace("weight = 19", "weight = \"heavy\""),
    )
    .unwrap();
    let out = h.multiwan(&["reload"]);
    assert_exit(&out, 2, &format!("{}:", h.config_path.display()));
    assert_exit(&out, 2, "links.isp2.weight");
    assert_exit(&out, 2, "the running config stays");
    assert_eq!(link_of(&status(&h), "isp2")["weight"], 19);
    assert!(current_isp(&h).is_some());
    long.exchange(1000).unwrap();

    // table_base: refused, flush and restart needed.
    std::fs::write(
        &h.config_path,
        good.replace("[settings]\n", "[settings]\ntable_base = 300\n"),
    )
    .unwrap();
    let out = h.multiwan(&["reload"]);
    assert_exit(&out, 2, "settings.table_base (100 -> 300) changed");
    assert_exit(&out, 2, "multiwan flush");
    assert!(h.router_sh("ip route show table 101").contains("default"));
    assert!(h
        .router_sh("ip route show table 301 2>/dev/null || true")
        .is_empty());
    long.exchange(1000).unwrap();
    assert!(
        !h.daemon_log().contains("conntrack entries"),
        "{}",
        h.daemon_log()
    );

    // A reload also repairs what was changed behind the daemon's back.
    std::fs::write(&h.config_path, &good).unwrap();
    // Let the long-lived connection go quiet first (its delayed ACK): a packet sent
    // while the table is gone leaves without its mark and NAT, and the server resets
    // the connection; that is what deleting multiwan's table does, not what reload
    // repairs.
    std::thread::sleep(Duration::from_millis(300));
    h.router()
        .nft(&format!("delete table inet {}", h.nft_table))
        .unwrap();
    let out = h.multiwan_ok(&["reload"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no link changed"),
        "{}",
        text(&out)
    );
    let table = h.router_sh(&format!("nft list table inet {}", h.nft_table));
    assert!(table.contains("new_isp1"), "{table}");
    assert!(current_isp(&h).is_some());
    long.exchange(1000).unwrap();
}

/// Reload that removes a link deletes that link's connections and no other.
#[test]
fn serial_reload_removing_a_link_flushes_only_its_connections() {
    let h = Harness::new("opremove");
    h.write_config("lan = [\"lan0\"]", &balanced(1, 1, ""));
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let _daemon = h.start_daemon();
    // Long-lived connections on both links.
    let mut on: [Vec<LongLivedConnection>; 2] = [Vec::new(), Vec::new()];
    let start = Instant::now();
    while on.iter().any(|v| v.len() < 2) {
        assert!(start.elapsed() < Duration::from_secs(10));
        let c = LongLivedConnection::open(h.lab.lan(), server(), PORT, None, ATTEMPT).unwrap();
        match netns_lab::lab::addr::isp_of(c.seen_as()) {
            Some(k @ 1..=2) => on[k - 1].push(c),
            other => panic!("{other:?}"),
        }
    }
    let port = |c: &LongLivedConnection| c.local_addr().port();
    let tracked = tracked_ports(&h);
    for c in on.iter().flatten() {
        assert!(tracked.contains(&port(c)));
    }

    h.write_config("lan = [\"lan0\"]", &link("isp1", 1, ""));
    let out = h.multiwan_ok(&["reload"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed from the config: isp2"),
        "{}",
        text(&out)
    );
    let tracked = tracked_ports(&h);
    for c in &on[1] {
        assert!(
            !tracked.contains(&port(c)),
            "isp2's connection {} kept",
            port(c)
        );
    }
    for c in &mut on[0] {
        assert!(
            tracked.contains(&port(c)),
            "isp1's connection {} deleted",
            port(c)
        );
        c.exchange(1000).expect("isp1's connections keep working");
    }
    let s = status(&h);
    assert_eq!(s["links"].as_array().unwrap().len(), 1, "{s:#}");
    assert_eq!(current_isp(&h), Some(1));
    let log = h.daemon_log();
    assert!(
        log.contains("multiwan: link isp2: up -> disabled (removed from the config)"),
        "{log}"
    );
    assert!(log.contains("multiwan: link isp2: deleted "), "{log}");
    assert!(!log.contains("multiwan: link isp1: deleted"), "{log}");
    let rules = h.router_sh("ip -N rule");
    assert!(
        rules.lines().all(|l| !l.contains("lookup 102")),
        "isp2's rules remain:\n{rules}"
    );

    // And back: added, with its own runtime.
    h.write_config("lan = [\"lan0\"]", &balanced(1, 1, ""));
    let out = h.multiwan_ok(&["reload"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("added isp2"),
        "{}",
        text(&out)
    );
    wait_until("isp2 probed", Duration::from_secs(5), || {
        link_of(&status(&h), "isp2")["rtt_ms"].is_f64()
    });
    assert_eq!(state(&h, "isp2"), "up");
}

/// `link isp1 down` moves new traffic off isp1 (keeping its connections) until
/// `link isp1 auto`.
#[test]
fn serial_link_down_moves_new_traffic_until_auto() {
    let h = Harness::new("oplink");
    h.write_config("lan = [\"lan0\"]", &primary_backup());
    let _srv = h.lab.whoami_tcp(PORT).unwrap();
    let _daemon = h.start_daemon();
    assert_eq!(current_isp(&h), Some(1));
    let mut kept = LongLivedConnection::open(h.lab.lan(), server(), PORT, None, ATTEMPT).unwrap();
    assert_eq!(netns_lab::lab::addr::isp_of(kept.seen_as()), Some(1));

    let out = h.multiwan_ok(&["link", "isp1", "down"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "link isp1: up -> disabled (operator override: down)"
    );
    let s = status(&h);
    let isp1 = link_of(&s, "isp1");
    assert_eq!(
        (isp1["state"].as_str(), isp1["override"].as_str()),
        (Some("disabled"), Some("down"))
    );
    for _ in 0..10 {
        assert_eq!(current_isp(&h), Some(2));
    }
    // Its connections are not deleted, and still go out through isp1.
    kept.exchange(10_000)
        .expect("an operator's down keeps existing connections");
    // It stays out while its probes are good.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(state(&h, "isp1"), "disabled");
    assert_eq!(current_isp(&h), Some(2));
    // Saying it again changes nothing.
    let out = h.multiwan_ok(&["link", "isp1", "down"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stays disabled"),
        "{}",
        text(&out)
    );

    h.multiwan_ok(&["link", "isp1", "auto"]);
    assert_eq!(state(&h, "isp1"), "up");
    assert_eq!(link_of(&status(&h), "isp1")["override"], Value::Null);
    for _ in 0..10 {
        assert_eq!(current_isp(&h), Some(1));
    }
    kept.exchange(10_000).unwrap();
    assert!(
        !h.daemon_log().contains("conntrack entries"),
        "{}",
        h.daemon_log()
    );

    let out = h.multiwan(&["link", "nosuch", "down"]);
    assert_exit(&out, 2, "no link nosuch in ");
    let out = h.multiwan(&["link", "isp1", "sideways"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
