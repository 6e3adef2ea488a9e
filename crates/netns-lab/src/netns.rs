//! One network namespace, torn down when dropped.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// A named network namespace (`ip netns add`), deleted on drop, together with every
/// process that was spawned in it through [`Netns::spawn`].
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (fails if it exists: names must be unique per test) and brings its
    /// loopback up.
    pub fn new(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name} (are you root?)"))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside this namespace (`ip netns exec <name> program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args…` inside the namespace; fails with its stderr if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(self.command(program).args(args))
    }

    /// `ip args…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        self.exec("ip", args)
    }

    /// Runs a shell script inside the namespace (test setup only: the product never
    /// shells out).
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.exec("sh", &["-ec", script])
    }

    /// Loads an nft script inside the namespace.
    pub fn nft(&self, script: &str) -> Result<Output> {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        child.stdin.take().unwrap().write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft -f in {} failed: {}\n{script}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Writes a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Starts a long-running process inside the namespace; it is killed when the guard
    /// is dropped.
    pub fn spawn(&self, cmd: &mut Command) -> Result<ChildGuard> {
        // `cmd` was built by the caller; wrap it in `ip netns exec`.
        let mut wrapped = self.command(cmd.get_program());
        wrapped.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        let child = wrapped
            .spawn()
            .with_context(|| format!("spawning {:?} in {}", cmd.get_program(), self.name))?;
        Ok(ChildGuard { child: Some(child) })
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets opened inside `f` belong to the namespace for their whole life, so a server
    /// started this way keeps serving in it.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.spawn_thread(f)?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))
    }

    /// Like [`Netns::run`] but returns the thread's handle at once.
    pub fn spawn_thread<F, T>(&self, f: F) -> Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening /run/netns/{}", self.name))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            // SAFETY: setns only changes this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            let entered = rc == 0;
            let _ = tx.send(if entered {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            });
            if !entered {
                // The caller gets the error from the channel; never run `f` outside.
                loop {
                    std::thread::park();
                }
            }
            f()
        });
        rx.recv()
            .context("netns thread vanished")?
            .with_context(|| format!("setns into {}", self.name))?;
        Ok(handle)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside (a daemon a failed test left behind), then
        // remove the namespace; veths die with it.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let me = std::process::id() as i32;
                    if let Some(pid) = pid.parse::<i32>().ok().filter(|p| *p != me) {
                        // SAFETY: plain kill(2) on a pid the kernel just listed.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
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

    /// Sends a signal to the process (`ip netns exec` execs the program, so the pid is
    /// the program's own).
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

/// A namespace name unique to this process and test: `<prefix>-<pid>-<tag>`, cut so
/// that it stays readable in `ip netns list`.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    let tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut name = format!("{prefix}-{}-{tag}", std::process::id());
    name.truncate(60);
    name
}
