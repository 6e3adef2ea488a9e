//! Small helpers shared by the scenarios: statistics, timestamped line capture of a
//! child's output, Ctrl-C handling, timing of commands.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT / SIGTERM set a flag instead of killing the bench, so the scenario in
/// progress stops at its next check and every lab is dropped (namespaces deleted).
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Fails once the user asked to stop.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in small steps, failing early if interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Polls `cond` every 5 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<bool> {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(true);
        }
        check_interrupted()?;
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a command to completion and returns its output and wall time; fails with its
/// stderr if it fails.
pub fn timed(cmd: &mut Command) -> Result<(Duration, Output)> {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((took, out))
}

// ------------------------------------------------------------------ statistics

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median (mean of the two middle values for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn max(values: &[f64]) -> f64 {
    values
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f64::NAN, f64::max)
}

/// "12.3" / "n/a", one decimal for values below 100, none above.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x.abs() < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// "12 34 56" for a detail line.
pub fn fmt_list(values: &[f64]) -> String {
    values
        .iter()
        .map(|x| fmt_num(*x))
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------ CPU accounting

/// Machine-wide busy and total CPU time (`/proc/stat`) and this process's own (all its
/// threads, `/proc/self/stat`), in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    busy: u64,
    total: u64,
    me: u64,
}

pub fn cpu_sample() -> CpuSample {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    let me = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| {
            let rest = t.rsplit_once(')')?.1.to_string();
            let v: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(v.iter().sum())
        })
        .unwrap_or(0);
    CpuSample {
        busy: total - idle,
        total,
        me,
    }
}

impl CpuSample {
    /// Share of the machine's CPU (all cores, %) used since `earlier` by everything but
    /// this process: other engineers' work, and kernel threads (softirq work done in
    /// ksoftirqd counts here too).
    pub fn foreign_pct_since(&self, earlier: &CpuSample) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let me = self.me.saturating_sub(earlier.me) as f64;
        ((busy - me) / total * 100.0).max(0.0)
    }
}

// ------------------------------------------------------------------ line capture

/// Every line a child writes on one stream, each with the instant it was read.
#[derive(Clone, Default)]
pub struct LineLog {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl LineLog {
    /// Reads `stream` on a thread until EOF.
    pub fn spawn(stream: impl Read + Send + 'static) -> LineLog {
        let log = LineLog::default();
        let lines = log.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((now, line));
            }
        });
        log
    }

    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first line containing `needle`, waiting up to `timeout` for it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Option<(Instant, String)>> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.lines().into_iter().find(|(_, l)| l.contains(needle));
            found.is_some()
        })?;
        Ok(found)
    }

    /// The whole text, for error messages.
    pub fn text(&self) -> String {
        self.lines()
            .into_iter()
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ------------------------------------------------------------------ machine

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `nproc`, kernel release, CPU model.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "nproc {nproc} ({cpu}), kernel {}",
        read_trim("/proc/sys/kernel/osrelease")
    )
}

/// The 1-minute load average, to show how busy the shared machine was.
pub fn loadavg() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// First line of `program --version`.
pub fn version_of(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(str::to_string)
        })
        .unwrap_or_else(|| format!("{program}: not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 1.0]), 1.0);
        assert_eq!(max(&[1.0, 5.0, f64::NAN]), 5.0);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(123.6), "124");
        assert_eq!(fmt_num(f64::NAN), "n/a");
    }
}
