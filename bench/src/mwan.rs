//! The multiwan binary under test: where it is, one instance of it (config file, nft
//! table, state directory) inside a namespace, the daemon with its log captured line by
//! line with arrival times, and the generated configs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_lab::{ChildGuard, Netns};

use crate::util::{self, LineLog};

/// The release `multiwan` next to this binary's target directory, built first with
/// `cargo build --release -p multiwan` unless `explicit` names one.
pub fn locate_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--multiwan {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("finding the bench's own path")?;
    // target/<profile>/multiwan-bench -> target/release/multiwan
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench binary is not inside a cargo target directory")?;
    let bin = target_dir.join("release").join("multiwan");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    eprintln!("multiwan-bench: cargo build --release -p multiwan (the binary under test)");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "multiwan", "--bin", "multiwan"])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            if bin.is_file() {
                eprintln!(
                    "multiwan-bench: building multiwan failed ({other:?}); using the existing {}",
                    bin.display()
                );
            } else {
                bail!(
                    "building multiwan failed ({other:?}) and {} does not exist",
                    bin.display()
                );
            }
        }
    }
    Ok(bin)
}

/// One multiwan instance: its own nft table (which also names its state directory,
/// socket and rt_tables.d file) and config file. Host-global leftovers are removed on
/// drop; kernel objects go with the namespaces.
pub struct Instance {
    pub bin: PathBuf,
    pub nft_table: String,
    pub config: PathBuf,
}

impl Instance {
    pub fn new(bin: &Path, tag: &str) -> Instance {
        let nft_table = format!("mwbench_{}_{tag}", std::process::id());
        let config = std::env::temp_dir().join(format!("{nft_table}.toml"));
        Instance {
            bin: bin.to_path_buf(),
            nft_table,
            config,
        }
    }

    /// Writes the config: `[settings]` with this instance's nft table and `settings`,
    /// then `rest` (links, rules).
    pub fn write_config(&self, settings: &str, rest: &str) -> Result<()> {
        let text = format!(
            "[settings]\nnft_table = \"{}\"\n{settings}\n\n{rest}\n",
            self.nft_table
        );
        std::fs::write(&self.config, text)
            .with_context(|| format!("writing {}", self.config.display()))
    }

    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/multiwan").join(&self.nft_table)
    }

    /// Forgets the link states a previous daemon saved, so the next one starts with
    /// every link `up` (as a first start does) instead of adopting them.
    pub fn reset_state(&self) {
        let _ = std::fs::remove_dir_all(self.state_dir());
    }

    /// `multiwan <args> -c <config>` in `ns`, to completion, timed (wall clock of the
    /// whole process, as an operator or a script sees it).
    pub fn cli(&self, ns: &Netns, args: &[&str]) -> Result<(Duration, Output)> {
        let mut cmd = ns.command(&self.bin);
        cmd.args(args).arg("-c").arg(&self.config);
        util::timed(&mut cmd).with_context(|| format!("multiwan {args:?}"))
    }

    pub fn flush(&self, ns: &Netns) -> Result<()> {
        self.cli(ns, &["flush"])?;
        Ok(())
    }

    /// Starts `multiwan run` in `ns` with its stderr captured, and waits for
    /// "multiwan: running".
    pub fn start_daemon(&self, ns: &Netns) -> Result<Daemon> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut guard = ns.spawn(&mut cmd)?;
        let stderr = guard.child().stderr.take().context("no stderr pipe")?;
        let log = LineLog::spawn(stderr);
        let daemon = Daemon { guard, log };
        match daemon
            .log
            .wait_for("multiwan: running", Duration::from_secs(10))?
        {
            Some(_) => Ok(daemon),
            None => bail!(
                "the daemon did not log \"multiwan: running\" within 10 s:\n{}",
                daemon.log.text()
            ),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_dir_all(self.state_dir());
        let _ = std::fs::remove_file(format!("/etc/iproute2/rt_tables.d/{}.conf", self.nft_table));
        let _ = std::fs::remove_file(format!("/run/multiwan/{}.sock", self.nft_table));
    }
}

/// A running `multiwan run`, killed on drop if not stopped.
pub struct Daemon {
    guard: ChildGuard,
    pub log: LineLog,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.guard.child().try_wait(), Ok(None))
    }

    /// SIGTERM, then up to 3 s for it to exit (SIGKILL after that). Returns its log.
    pub fn stop(mut self) -> LineLog {
        self.guard.signal(libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if !self.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = self.log.clone();
        drop(self.guard); // kills it if still running, and reaps it
                          // Give the reader thread a moment to see EOF and the last lines.
        std::thread::sleep(Duration::from_millis(20));
        log
    }
}

// ------------------------------------------------------------------ configs

/// A link section: `[links.<name>]` on `interface`, with `extra` keys, and an icmp
/// check of `targets` every `interval_ms` (timeout the same) unless `targets` is empty.
pub fn link_toml(
    name: &str,
    id: usize,
    interface: &str,
    extra: &str,
    targets: &[Ipv4Addr],
    interval_ms: u64,
) -> String {
    let mut s = format!("[links.{name}]\nid = {id}\ninterface = \"{interface}\"\n{extra}\n");
    if !targets.is_empty() {
        let t: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
        s.push_str(&format!(
            "\n[links.{name}.check]\nmethod = \"icmp\"\ntargets = [{}]\ninterval = \"{interval_ms}ms\"\ntimeout = \"{interval_ms}ms\"\ndown_after = 3\n",
            t.join(", ")
        ));
    }
    s.push('\n');
    s
}

/// `n` `[[rules]]` with one destination prefix each, /24 to /32, inside 198.18.1.0 ..
/// 198.18.255.255 (benchmark space), never covering 198.18.0.0/24 where the lab's
/// servers are: the test traffic walks every one of them and matches none. Rule i sends
/// to `links[i % links.len()]`.
pub fn rules_toml(n: usize, links: &[String]) -> String {
    let mut s = String::new();
    for i in 0..n {
        let len = 24 + (i % 9) as u32;
        let third = 1 + (i / 9) % 255;
        let base = u32::from(Ipv4Addr::new(198, 18, third as u8, 0));
        let host = ((i % 9) as u32 * 29) & 0xff;
        let mask = u32::MAX << (32 - len);
        let net = Ipv4Addr::from((base | host) & mask);
        s.push_str(&format!(
            "[[rules]]\nname = \"bench{i}\"\ndestination = [\"{net}/{len}\"]\npolicy = \"{}\"\n\n",
            links[i % links.len()]
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rules_never_cover_the_servers() {
        let links = vec!["isp1".to_string(), "isp2".to_string()];
        let text = rules_toml(1000, &links);
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("destination")) {
            let net = line.split('"').nth(1).unwrap();
            assert!(seen.insert(net.to_string()), "duplicate {net}");
            let (addr, len) = net.split_once('/').unwrap();
            let addr: Ipv4Addr = addr.parse().unwrap();
            let len: u32 = len.parse().unwrap();
            assert!((24..=32).contains(&len));
            let o = addr.octets();
            assert_eq!((o[0], o[1]), (198, 18));
            assert_ne!(o[2], 0, "{net} covers the servers");
            let mask = u32::MAX << (32 - len);
            assert_eq!(u32::from(addr) & !mask, 0, "{net} has host bits");
        }
        assert_eq!(seen.len(), 1000);
    }
}
