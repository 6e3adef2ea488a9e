//! Continuous traffic, as a user makes it: a new TCP connection to a whoami server at
//! a fixed pace, each recording when it started and which ISP it left through (or that
//! it failed). The tests and `multiwan demo` measure outages with it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Netns;

#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub at: Instant,
    /// The ISP it left through, `None` if it failed.
    pub isp: Option<usize>,
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Starts a connection every `every` from `ns` to `server:port`; each may take up
    /// to `timeout`.
    pub fn start(
        ns: &Netns,
        server: IpAddr,
        port: u16,
        every: Duration,
        timeout: Duration,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let ns_name = ns.name().to_string();
        let (stop2, attempts2) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            // Each attempt on its own thread, so a slow one does not delay the next.
            let mut workers = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                let at = Instant::now();
                let attempts = attempts2.clone();
                let name = ns_name.clone();
                workers.push(std::thread::spawn(move || {
                    // IPv4 (also v4-mapped) or the lab's IPv6 ISP prefixes.
                    let isp = whoami_in(&name, server, port, timeout).and_then(|a| {
                        crate::lab::addr::isp_of(a).or_else(|| crate::lab::addr6::isp_of(a))
                    });
                    attempts.lock().unwrap().push(Attempt { at, isp });
                }));
                std::thread::sleep(every);
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

    /// Stops and returns every attempt, in start order.
    pub fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut v = self.attempts.lock().unwrap().clone();
        v.sort_by_key(|a| a.at);
        v
    }

    /// Attempts so far.
    pub fn snapshot(&self) -> Vec<Attempt> {
        let mut v = self.attempts.lock().unwrap().clone();
        v.sort_by_key(|a| a.at);
        v
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

/// On this thread: enter namespace `name`, connect, read the address the server saw.
fn whoami_in(name: &str, server: IpAddr, port: u16, timeout: Duration) -> Option<IpAddr> {
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).ok()?;
    // SAFETY: setns changes only this (short-lived) thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let stream = std::net::TcpStream::connect_timeout(&(server, port).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.trim().parse().ok()
}

/// The longest run of failed attempts started at or after `from`, as (first failure,
/// first success after it) — the outage a user saw.
pub fn outage_after(attempts: &[Attempt], from: Instant) -> Option<Duration> {
    let mut first_fail: Option<Instant> = None;
    for a in attempts.iter().filter(|a| a.at >= from) {
        match (a.isp, first_fail) {
            (None, None) => first_fail = Some(a.at),
            (Some(_), Some(f)) => return Some(a.at - f),
            _ => {}
        }
    }
    first_fail.map(|_| Duration::MAX)
}
