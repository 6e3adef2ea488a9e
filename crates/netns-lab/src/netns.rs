//! One network namespace, torn down when dropped.
//!
//! # Running things inside a namespace
//!
//! There are three ways, pick by what you need:
//!
//! * [`Netns::command`] returns a [`Command`] for `ip netns exec <name> <program>`. Add
//!   arguments, stdio and environment to it as to any `Command`, then `output()`,
//!   `status()` or `spawn()` it yourself:
//!
//!   ```no_run
//!   # fn main() -> anyhow::Result<()> {
//!   let ns = netns_lab::Netns::new(netns_lab::unique_name("doc", "command"))?;
//!   let out = ns.command("nft").args(["-c", "-f", "/tmp/ruleset.nft"]).output()?;
//!   assert!(out.status.success());
//!   # Ok(()) }
//!   ```
//!
//!   [`Netns::exec`], [`Netns::ip`], [`Netns::sh`], [`Netns::nft`] and
//!   [`Netns::sysctl`] are shortcuts that run to completion and turn a failure into an
//!   error carrying the program's stderr.
//! * [`Netns::spawn`] starts a long-running process (a daemon under test) and returns a
//!   [`ChildGuard`] that kills it on drop. The caller's `Command` keeps its stdio,
//!   environment and working directory: the child enters the namespace between `fork`
//!   and `exec`, exactly as `ip netns exec` would (with the namespace's own `/sys`).
//! * [`Netns::run`] / [`Netns::spawn_thread`] run a closure on a thread of this process
//!   that has entered the namespace. Sockets created there belong to the namespace for
//!   their whole life and may then be used from any thread: this is how the whoami
//!   servers and clients of this crate work, without starting processes.
//!
//! Whatever is still running inside when the [`Netns`] is dropped is killed, and the
//! namespace (with its veths) is deleted, also when a test panics.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

/// Serialises `ip netns add` within this process: the first one bind-mounts
/// `/run/netns` on itself, and concurrent first calls may stack mounts.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace (`ip netns add`), deleted on drop, together with every
/// process that still runs in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (fails if it exists: names must be unique per test, see
    /// [`unique_name`]) and brings its loopback up.
    pub fn new(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        {
            let _guard = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            run(Command::new("ip").args(["netns", "add", &name])).with_context(|| {
                format!("creating network namespace {name} (are you root? does it exist already?)")
            })?;
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the file that pins the namespace.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path()))
    }

    /// A command that runs inside this namespace (`ip netns exec <name> program`).
    ///
    /// Configure and start it like any [`Command`]; the program is exec'd by `ip`, so
    /// a spawned child's pid is the program's own. Example:
    /// `ns.command("ping").args(["-c1", "198.18.0.1"]).status()?`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args…` inside the namespace; fails with its stderr if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(self.command(program).args(args))
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// `ip args…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        self.exec("ip", args)
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`, e.g.
    /// `"link set wan1 up"`) in one `ip -batch` process; stops at the first failure.
    pub fn ip_batch<S: AsRef<str>>(&self, commands: &[S]) -> Result<()> {
        let script: String = commands
            .iter()
            .map(|c| format!("{}\n", c.as_ref()))
            .collect();
        self.stdin_exec("ip", &["-batch", "-"], &script)
            .with_context(|| format!("ip -batch in {}:\n{script}", self.name))?;
        Ok(())
    }

    /// Runs a shell script inside the namespace (test setup only: the product never
    /// shells out).
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.exec("sh", &["-ec", script])
    }

    /// Loads an nft script inside the namespace (one transaction).
    pub fn nft(&self, script: &str) -> Result<Output> {
        self.stdin_exec("nft", &["-f", "-"], script)
            .with_context(|| format!("nft -f in {}:\n{script}", self.name))
    }

    /// Runs `program args…` with `input` on its stdin; fails with its stderr.
    fn stdin_exec(&self, program: &str, args: &[&str], input: &str) -> Result<Output> {
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {program}"))?;
        // A write error (the program exited early) shows up in its status and stderr.
        let _ = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes());
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Writes a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.sysctls(&[(key, value)])
    }

    /// Writes several sysctls with one `sysctl -w` process.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        if settings.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut all = vec!["-qw"];
        all.extend(args.iter().map(String::as_str));
        self.exec("sysctl", &all)?;
        Ok(())
    }

    /// Reads a sysctl inside the namespace (trimmed).
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let out = self.exec("sysctl", &["-n", key])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts a long-running process inside the namespace; it is killed (SIGKILL) when
    /// the guard is dropped, and anyway when the namespace is.
    ///
    /// `cmd` keeps everything the caller set (stdio, environment, directory): the child
    /// enters the namespace after `fork`, in a private mount namespace with this
    /// namespace's `/sys`, as `ip netns exec` does. Spawn a given `Command` into one
    /// namespace only.
    pub fn spawn(&self, cmd: &mut Command) -> Result<ChildGuard> {
        // The closure owns the file, so the descriptor stays valid as long as `cmd`
        // lives, even if the caller spawns it again.
        let file = self.open()?;
        let root = CString::new("/").expect("no NUL");
        let sys = CString::new("/sys").expect("no NUL");
        let sysfs = CString::new("sysfs").expect("no NUL");
        let none = CString::new("none").expect("no NUL");
        // SAFETY: the closure runs in the forked child before exec and only makes raw
        // system calls (async-signal-safe); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Best effort, like `ip netns exec`: a mount namespace of our own whose
                // /sys shows this namespace's interfaces. Never touch /sys unless the
                // new mount namespace is cut off from the host's propagation.
                if libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        none.as_ptr(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_SLAVE | libc::MS_REC,
                        std::ptr::null(),
                    ) == 0
                {
                    libc::umount2(sys.as_ptr(), libc::MNT_DETACH);
                    libc::mount(
                        sysfs.as_ptr(),
                        sys.as_ptr(),
                        sysfs.as_ptr(),
                        0,
                        std::ptr::null(),
                    );
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?} in {}", cmd.get_program(), self.name))?;
        Ok(ChildGuard { child: Some(child) })
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets opened inside `f` belong to the namespace for their whole life, so a server
    /// started this way keeps serving in it (and may be driven from other threads).
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.spawn_thread(f)?;
        handle
            .join()
            .map_err(|_| anyhow!("thread in netns {} panicked", self.name))
    }

    /// Like [`Netns::run`] but returns the thread's handle at once.
    pub fn spawn_thread<F, T>(&self, f: F) -> Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                // SAFETY: setns only changes this thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                drop(file);
                if rc != 0 {
                    let _ = tx.send(Err(std::io::Error::last_os_error()));
                    // The caller gets the error from the channel; never run `f` outside
                    // the namespace. End the thread without running the panic hook.
                    std::panic::resume_unwind(Box::new("setns failed"));
                }
                let _ = tx.send(Ok(()));
                f()
            })
            .context("spawning a thread")?;
        rx.recv()
            .context("netns thread vanished")?
            .with_context(|| format!("setns into {}", self.name))?;
        Ok(handle)
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside (a daemon a failed test left behind), then
        // remove the namespace; veths die with it.
        let me = std::process::id() as i32;
        for pid in self.pids().into_iter().filter(|p| *p != me) {
            // SAFETY: plain kill(2) on a pid the kernel just listed.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (SIGKILL) and reaped on drop unless it has exited.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child taken")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child taken").id()
    }

    /// Sends a signal to the process (its pid is the program's own).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.id() as i32, sig) };
    }

    /// Takes the child out of the guard (the caller then owns its fate).
    pub fn into_inner(mut self) -> Child {
        self.child.take().expect("child taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion; an error carries its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A namespace name unique to this process and test: `<prefix>-<pid>-<tag>`, with the
/// tag's non-alphanumeric characters turned into `-`. Names longer than 60 characters
/// are cut and end in a hash of the whole name, so two long tags stay distinct.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    let tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = format!("{prefix}-{}-{tag}", std::process::id());
    if name.len() <= 60 {
        return name;
    }
    // FNV-1a: stable across runs and Rust versions.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let head: String = name.chars().take(51).collect();
    format!("{head}-{:08x}", hash as u32)
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    #[test]
    fn unique_names_are_short_and_distinct() {
        let a = unique_name("mw", &"a".repeat(100));
        let b = unique_name("mw", &format!("{}b", "a".repeat(99)));
        assert!(a.len() <= 60 && b.len() <= 60);
        assert_ne!(a, b);
        let short = unique_name("mw", "x::y");
        assert_eq!(short, format!("mw-{}-x--y", std::process::id()));
    }
}
