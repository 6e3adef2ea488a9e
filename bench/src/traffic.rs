//! What a LAN client sees during a failover: a new TCP connection to a whoami server
//! every 20 ms, each on its own thread (a slow one never delays the next), recording
//! when it started and which uplink it left through (the ISP of the source address the
//! server saw), or that it failed.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns_lab::Netns;

#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// When the connection attempt started.
    pub at: Instant,
    /// The ISP it left through; `None`: it failed (no answer within the timeout).
    pub isp: Option<usize>,
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Hard bound of one traffic run, whatever the caller does.
const MAX_RUN: Duration = Duration::from_secs(30);

impl Traffic {
    /// Starts a connection every `every` from `ns` to `server`; each may take up to
    /// `timeout`.
    pub fn start(ns: &Netns, server: SocketAddr, every: Duration, timeout: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let path = ns.path();
        let (stop2, attempts2) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut workers = Vec::new();
            let mut k: u32 = 0;
            while !stop2.load(Ordering::SeqCst) && start.elapsed() < MAX_RUN {
                // On a fixed grid, so the spacing does not drift with thread start-up.
                let due = start + every * k;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                k += 1;
                let (attempts, path) = (attempts2.clone(), path.clone());
                workers.push(std::thread::spawn(move || {
                    let at = Instant::now();
                    let isp =
                        whoami_in(&path, server, timeout).and_then(netns_lab::lab::addr::isp_of);
                    attempts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Attempt { at, isp });
                }));
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Traffic {
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    /// Attempts finished so far, in start order.
    pub fn snapshot(&self) -> Vec<Attempt> {
        let mut v = self
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_by_key(|a| a.at);
        v
    }

    /// Stops, waits for the attempts in flight, returns them all in start order.
    pub fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// On this (short-lived) thread: enter the namespace at `path`, connect, read the
/// address the server saw.
fn whoami_in(path: &str, server: SocketAddr, timeout: Duration) -> Option<IpAddr> {
    let f = std::fs::File::open(path).ok()?;
    // SAFETY: setns only changes this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let stream = TcpStream::connect_timeout(&server, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.trim().parse().ok()
}

/// From `cut` to the start of the first attempt that left through `backup`: how long
/// after the failure a new connection works again.
pub fn to_backup(attempts: &[Attempt], cut: Instant, backup: usize) -> Option<Duration> {
    attempts
        .iter()
        .find(|a| a.at >= cut && a.isp == Some(backup))
        .map(|a| a.at - cut)
}

/// The client's own view: from the first failed attempt started at or after `cut` to
/// the first successful one after it (0 if none failed; `None` if none succeeded after).
pub fn client_outage(attempts: &[Attempt], cut: Instant) -> Option<Duration> {
    let mut first_fail: Option<Instant> = None;
    for a in attempts.iter().filter(|a| a.at >= cut) {
        match (a.isp, first_fail) {
            (None, None) => first_fail = Some(a.at),
            (Some(_), Some(f)) => return Some(a.at - f),
            _ => {}
        }
    }
    match first_fail {
        None => Some(Duration::ZERO),
        Some(_) => None,
    }
}

/// Attempts that started at or after `cut` and failed.
pub fn failures_after(attempts: &[Attempt], cut: Instant) -> usize {
    attempts
        .iter()
        .filter(|a| a.at >= cut && a.isp.is_none())
        .count()
}
