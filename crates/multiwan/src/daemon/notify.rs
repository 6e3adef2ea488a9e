//! systemd's notification protocol (`Type=notify`): a datagram to `$NOTIFY_SOCKET`.
//! Without that variable (not started by systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
    } else {
        sock.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// The first plan is applied: systemd may consider the service started.
pub fn ready(summary: &str) {
    send(&format!("READY=1\nSTATUS={summary}"));
}

/// A reload starts (`systemctl reload` shows the unit "reloading" until [`ready`]).
/// `MONOTONIC_USEC` is what `Type=notify-reload` requires; plain `notify` accepts it.
pub fn reloading() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

pub fn status(summary: &str) {
    send(&format!("STATUS={summary}"));
}

pub fn stopping() {
    send("STOPPING=1");
}

pub fn watchdog() {
    send("WATCHDOG=1");
}

/// Half of `$WATCHDOG_USEC`, when systemd's watchdog is on for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}
