//! Shared by the namespace tests: a lab with multiwan's config and binary at hand.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::collections::BTreeMap;
use std::time::Duration;

use multiwan::plan::{Facts, InterfaceFacts};
use netns_lab::{Lab, LabBuilder, Netns};

/// The multiwan binary under test.
pub fn multiwan_bin() -> &'static str {
    env!("CARGO_BIN_EXE_multiwan")
}

/// Fails loudly where the tests cannot run: they need root (network namespaces). Under
/// `CI=true` nothing may be skipped, so this is a hard failure everywhere.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests build network namespaces and must run as root (sudo bash scripts/test.sh)"
    );
}

/// A lab plus one multiwan instance (its own nft table, state dir and rt_tables file,
/// all named after the test), cleaned up on drop.
pub struct Harness {
    pub lab: Lab,
    pub nft_table: String,
    pub config_path: PathBuf,
}

impl Harness {
    pub fn new(tag: &str) -> Harness {
        Harness::with(Lab::builder(tag))
    }

    pub fn with(builder: LabBuilder) -> Harness {
        require_root();
        let lab = builder.build().expect("building the namespace lab");
        // Unique per process and test: nft table, state dir and rt_tables.d file.
        let nft_table = format!("mwt{}", short_id(lab.router().name()));
        let config_path = std::env::temp_dir().join(format!("{nft_table}.toml"));
        Harness {
            lab,
            nft_table,
            config_path,
        }
    }

    pub fn router(&self) -> &Netns {
        self.lab.router()
    }

    /// Writes the config: `[settings] nft_table = …` and what the test adds.
    /// `settings` is the body of the [settings] table (without the header).
    pub fn write_config(&self, settings: &str, rest: &str) {
        let text = format!(
            "[settings]\nnft_table = \"{}\"\n{settings}\n\n{rest}\n",
            self.nft_table
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// `multiwan <args> -c <config>` inside the router namespace.
    pub fn multiwan(&self, args: &[&str]) -> Output {
        let mut cmd = self.router().command(multiwan_bin());
        cmd.args(args).arg("-c").arg(&self.config_path);
        cmd.output().expect("running multiwan")
    }

    /// Like [`Harness::multiwan`] and asserts success.
    pub fn multiwan_ok(&self, args: &[&str]) -> Output {
        let out = self.multiwan(args);
        assert!(
            out.status.success(),
            "multiwan {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn apply(&self) -> String {
        let out = self.multiwan_ok(&["apply"]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Text output of a command inside the router.
    pub fn router_sh(&self, script: &str) -> String {
        let out = self.router().sh(script).expect("router command");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `multiwan run` in the router; its log goes to `<state>/daemon.log`
    /// (read with [`Harness::daemon_log`]). Returns once the first plan is applied.
    pub fn start_daemon(&self) -> netns_lab::ChildGuard {
        self.start_daemon_env(&[])
    }

    /// [`Harness::start_daemon`] with extra environment variables (a `PATH` with a
    /// shim directory first, say).
    pub fn start_daemon_env(&self, env: &[(&str, &str)]) -> netns_lab::ChildGuard {
        let log_path = self.log_path();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(multiwan_bin());
        cmd.envs(env.iter().copied());
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = self
            .router()
            .spawn(&mut cmd)
            .expect("starting multiwan run");
        self.wait_for_log("multiwan: running", Duration::from_secs(10));
        child
    }

    fn log_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}.daemon.log", self.nft_table))
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the daemon's log contains `needle` (panics with the log otherwise).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        if !poll(timeout, || self.daemon_log().contains(needle)) {
            panic!(
                "daemon log has no {needle:?} after {timeout:?}:\n{}",
                self.daemon_log()
            );
        }
    }

    /// The daemon's last status (`status.json` in the state directory).
    pub fn status(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state_dir().join("status.json"))
            .unwrap_or_else(|_| "{}".into());
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// The state of link `name` in the daemon's status.
    pub fn link_state(&self, name: &str) -> String {
        self.status()["links"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["name"] == name))
            .and_then(|l| l["state"].as_str())
            .unwrap_or("")
            .to_string()
    }

    /// [`wait_until`], and on failure the daemon's status and log in the message.
    pub fn wait_until(&self, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        if !poll(timeout, f) {
            panic!(
                "{what}: not within {timeout:?}\nstatus.json: {:#}\nlog:\n{}",
                self.status(),
                self.daemon_log()
            );
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/multiwan").join(&self.nft_table)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Host-global leftovers of this instance; the namespaces go with the lab.
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(self.log_path());
        let _ = std::fs::remove_dir_all(self.state_dir());
        let _ = std::fs::remove_file(format!("/etc/iproute2/rt_tables.d/{}.conf", self.nft_table));
        // The control socket of a daemon killed with SIGKILL (the ChildGuard) stays.
        let _ = std::fs::remove_file(format!("/run/multiwan/{}.sock", self.nft_table));
    }
}

/// A short stable id derived from a namespace name: keeps nft table names short.
fn short_id(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

/// Runs a command and returns stdout, panicking with stderr on failure.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The router of the namespace lab, as `read_facts` sees it.
pub fn lab_facts() -> Facts {
    let mut interfaces = BTreeMap::new();
    for k in 1..=3u8 {
        interfaces.insert(
            format!("wan{k}"),
            InterfaceFacts {
                ifindex: 10 + u32::from(k),
                admin_up: true,
                carrier: true,
                addresses: vec![format!("100.64.{k}.2/24").parse().unwrap()],
                default_gateway4: Some(format!("100.64.{k}.1").parse().unwrap()),
                default_gateway6: None,
            },
        );
    }
    interfaces.insert(
        "lan0".into(),
        InterfaceFacts {
            ifindex: 2,
            admin_up: true,
            carrier: true,
            addresses: vec!["192.0.2.1/24".parse().unwrap()],
            default_gateway4: None,
            default_gateway6: None,
        },
    );
    Facts {
        interfaces,
        main_prefixes: vec![
            "100.64.1.0/24".parse().unwrap(),
            "100.64.2.0/24".parse().unwrap(),
            "100.64.3.0/24".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
        ],
    }
}

/// Where the host mounts its cgroup v2 hierarchy (/sys/fs/cgroup on a unified host,
/// /sys/fs/cgroup/unified on a hybrid one).
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .expect("this test needs a cgroup v2 hierarchy (mount -t cgroup2)")
}

/// A cgroup v2 directory made for one test (`mwt-<pid>-<tag>` at the root of the
/// hierarchy), removed with everything below it when dropped.
pub struct TestCgroup {
    /// Relative to the cgroup v2 root, as a rule names it.
    pub name: String,
    /// On the host.
    pub dir: PathBuf,
}

/// The prefix of the cgroups golden configs name; [`TestCgroup::localize`] replaces it.
pub const GOLDEN_CGROUP_PREFIX: &str = "multiwan-golden.slice";

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let name = format!("mwt-{}-{tag}", std::process::id());
        let dir = cgroup2_mount().join(&name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        TestCgroup { name, dir }
    }

    /// nft text naming cgroups under [`GOLDEN_CGROUP_PREFIX`], with the prefix
    /// replaced by this cgroup (same depth), each named cgroup created.
    pub fn localize(&self, nft: &str) -> String {
        let from = format!("\"{GOLDEN_CGROUP_PREFIX}/");
        for part in nft.split(&from).skip(1) {
            let rest = part.split('"').next().unwrap();
            std::fs::create_dir_all(self.dir.join(rest)).unwrap();
        }
        nft.replace(&from, &format!("\"{}/", self.name))
    }

    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    TestCgroup::remove(&e.path());
                }
            }
        }
        // Removable once its processes have exited.
        for _ in 0..50 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        TestCgroup::remove(&self.dir);
    }
}

/// `program args…` inside `ns` with the cgroup v2 hierarchy at /sys/fs/cgroup, where
/// nft looks up `socket cgroupv2` paths (`ip netns exec` mounts a fresh /sys without
/// it; on a host, /sys/fs/cgroup is where it is).
pub fn with_cgroup2(ns: &Netns, program: &str) -> Command {
    let mut cmd = ns.command("sh");
    cmd.arg("-ec")
        .arg(r#"mount -t cgroup2 cgroup2 /sys/fs/cgroup; exec "$@""#)
        .arg("sh")
        .arg(program);
    cmd
}

/// Checks `f` every 20 ms until it holds or `timeout` has passed; says whether it held.
pub fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until `f` holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(poll(timeout, f), "{what}: not within {timeout:?}");
}
