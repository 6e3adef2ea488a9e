//! Hooks (SPEC §5): programs in `hooks_dir` run on every link state change, and once
//! per link for its state at start (`MULTIWAN_PREVIOUS=none`).
//!
//! - **Which files.** Every regular file (symlinks are followed) that is executable,
//!   owned by root and not writable by group or others, in file-name order (bytes, as
//!   `ls` in the C locale). Files that are not executable are skipped silently (a README,
//!   or `chmod -x` to switch a hook off); executable ones that are not root's or are
//!   group/other-writable are refused with a log line every time they would have run
//!   (anyone who can write them could run code as root). Names starting with `.` or
//!   ending in `~`, and package manager leftovers (`*.dpkg-old`, `*.dpkg-new`,
//!   `*.dpkg-dist`, `*.ucf-*`) are skipped. The directory is read at each event, so a
//!   new hook needs no reload; a missing directory means no hooks.
//! - **How.** Directly (`execve`, no shell), stdin from /dev/null, the daemon's
//!   environment without systemd's `NOTIFY_SOCKET`/`WATCHDOG_*` plus the `MULTIWAN_*`
//!   variables, in its own process group. stdout and stderr are logged line by line
//!   (control characters, ANSI colours included, are removed), then one line with the
//!   exit status and the time it took.
//! - **Time limit.** After `hook_timeout` the hook's whole process group is killed
//!   (SIGKILL) and the next hook runs.
//! - **Order.** The hooks of one event run one after the other; the events of one link
//!   run in the order they happened (a queue per link); different links run in
//!   parallel. Everything runs in tasks of its own: a slow, failing or hanging hook
//!   never delays failover, which has already been applied when the hooks start.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// What one event tells the hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    /// `MULTIWAN_EVENT`: the state entered (up|degraded|down|waiting|disabled).
    pub event: String,
    pub link: String,
    pub interface: String,
    /// `MULTIWAN_GATEWAY`: the IPv4 next hop in use, empty when there is none.
    pub gateway: String,
    /// `MULTIWAN_PREVIOUS`: the state before, `none` at start.
    pub previous: String,
    /// `MULTIWAN_ACTIVE`: links in service now, in name order.
    pub active: Vec<String>,
}

impl HookEvent {
    pub fn env(&self) -> [(&'static str, String); 6] {
        [
            ("MULTIWAN_EVENT", self.event.clone()),
            ("MULTIWAN_LINK", self.link.clone()),
            ("MULTIWAN_INTERFACE", self.interface.clone()),
            ("MULTIWAN_GATEWAY", self.gateway.clone()),
            ("MULTIWAN_PREVIOUS", self.previous.clone()),
            ("MULTIWAN_ACTIVE", self.active.join(" ")),
        ]
    }

    fn what(&self) -> String {
        format!("{} {} -> {}", self.link, self.previous, self.event)
    }
}

struct Job {
    dir: PathBuf,
    timeout: Duration,
    event: HookEvent,
}

/// The per-link queues. Owned by the daemon; every job runs on a spawned task.
#[derive(Default)]
pub struct Hooks {
    queues: HashMap<String, mpsc::UnboundedSender<Job>>,
}

impl Hooks {
    /// Queues the hooks of `dir` for `event`, after the link's earlier events.
    pub fn run(&mut self, dir: &Path, timeout: Duration, event: HookEvent) {
        let link = event.link.clone();
        let job = Job {
            dir: dir.to_path_buf(),
            timeout,
            event,
        };
        let job = match self.queues.get(&link) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(worker(rx));
        let _ = tx.send(job);
        self.queues.insert(link, tx);
    }
}

async fn worker(mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        for hook in discover(&job.dir) {
            run_one(&hook, &job).await;
        }
    }
}

/// Why a file in the hooks directory does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Run,
    /// Not a hook at all (not a regular file, not executable, a backup): no log line.
    Skip,
    /// An executable that is unsafe to run as root: logged.
    Refuse(String),
}

/// Decides about one file from its name and `stat` (symlinks followed).
pub fn verdict(name: &str, meta: &std::fs::Metadata) -> Verdict {
    const LEFTOVERS: [&str; 5] = [".dpkg-old", ".dpkg-new", ".dpkg-dist", ".dpkg-tmp", ".ucf-"];
    if name.starts_with('.') || name.ends_with('~') || LEFTOVERS.iter().any(|l| name.contains(l)) {
        return Verdict::Skip;
    }
    let mode = meta.permissions().mode();
    if !meta.is_file() || mode & 0o111 == 0 {
        return Verdict::Skip;
    }
    if meta.uid() != 0 {
        return Verdict::Refuse(format!(
            "owned by uid {}, not root (chown root it)",
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Verdict::Refuse(format!(
            "writable by group or others (mode {:04o}; chmod go-w it)",
            mode & 0o7777
        ));
    }
    Verdict::Run
}

/// The hooks to run, in order; logs refused ones.
fn discover(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!("hooks: cannot read {}: {e}; no hooks run", dir.display());
            return Vec::new();
        }
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut hooks = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // a dangling symlink, or gone meanwhile
        };
        match verdict(&name.to_string_lossy(), &meta) {
            Verdict::Run => hooks.push(path),
            Verdict::Skip => {}
            Verdict::Refuse(why) => {
                tracing::warn!("hook {} refused: {why}", path.display())
            }
        }
    }
    hooks
}

async fn run_one(hook: &Path, job: &Job) {
    let name = hook
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let what = job.event.what();
    let mut cmd = tokio::process::Command::new(hook);
    cmd.envs(job.event.env())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("hook {name} ({what}): cannot start {}: {e}", hook.display());
            return;
        }
    };
    let pid = child.id();
    let output = child.wait_with_output();
    tokio::pin!(output);
    let result = tokio::select! {
        r = &mut output => Some(r),
        _ = tokio::time::sleep(job.timeout) => None,
    };
    let (result, killed) = match result {
        Some(r) => (Some(r), false),
        None => {
            if let Some(pid) = pid {
                // SAFETY: kill(2) on the process group this hook leads (process_group(0)).
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            // Collect what it printed; a grandchild in another group holding the pipes
            // open must not hold us either.
            let r = tokio::time::timeout(Duration::from_secs(1), &mut output)
                .await
                .ok();
            (r, true)
        }
    };
    let took = started.elapsed();
    let output = match result {
        Some(Ok(out)) => Some(out),
        Some(Err(e)) => {
            tracing::warn!("hook {name} ({what}): waiting for it failed: {e}");
            None
        }
        None => None,
    };
    if let Some(out) = &output {
        for line in printable_lines(&out.stdout).chain(printable_lines(&out.stderr)) {
            tracing::info!("hook {name} ({what}): {line}");
        }
    }
    if killed {
        tracing::warn!(
            "hook {name} ({what}): still running after hook_timeout {:?}, killed",
            job.timeout
        );
        return;
    }
    if let Some(out) = output {
        let ms = took.as_secs_f64() * 1e3;
        if out.status.success() {
            tracing::info!("hook {name} ({what}): exit 0 in {ms:.0} ms");
        } else {
            tracing::warn!(
                "hook {name} ({what}): failed ({}) in {ms:.0} ms",
                out.status
            );
        }
    }
}

/// Most output logged per stream of one hook run.
const MAX_OUTPUT: usize = 16 * 1024;

/// The output's lines, without control characters (ANSI colour sequences removed
/// whole), empty lines dropped, cut at [`MAX_OUTPUT`] bytes.
fn printable_lines(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    let cut = &bytes[..bytes.len().min(MAX_OUTPUT)];
    let text = String::from_utf8_lossy(cut).into_owned();
    let truncated = bytes.len() > MAX_OUTPUT;
    let mut lines: Vec<String> = text
        .lines()
        .map(strip_controls)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if truncated {
        lines.push(format!("(output cut at {MAX_OUTPUT} bytes)"));
    }
    lines.into_iter()
}

/// Removes ANSI escape sequences (CSI `ESC [ … final`, and two-byte `ESC x`) and
/// replaces other control characters (tab included) with a space.
pub fn strip_controls(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    // OSC: up to BEL or ESC \.
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            }
        } else if c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_and_controls_are_removed() {
        assert_eq!(strip_controls("\u{1b}[1;31mred\u{1b}[0m ok\r"), "red ok");
        assert_eq!(strip_controls("a\tb\u{7}c"), "a b c");
        assert_eq!(strip_controls("\u{1b}]0;title\u{7}text"), "text");
    }

    #[test]
    fn backups_and_leftovers_are_skipped() {
        let meta = std::fs::metadata("/bin/sh").unwrap();
        for name in [".hidden", "hook~", "10-x.dpkg-old", "10-x.ucf-dist"] {
            assert_eq!(verdict(name, &meta), Verdict::Skip, "{name}");
        }
    }

    #[test]
    fn environment_names() {
        let e = HookEvent {
            event: "down".into(),
            link: "isp1".into(),
            interface: "wan1".into(),
            gateway: "198.51.100.1".into(),
            previous: "up".into(),
            active: vec!["isp2".into(), "isp3".into()],
        };
        let env = e.env();
        assert_eq!(env[5], ("MULTIWAN_ACTIVE", "isp2 isp3".to_string()));
        assert_eq!(env[4], ("MULTIWAN_PREVIOUS", "up".to_string()));
    }
}
