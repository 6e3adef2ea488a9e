//! Checks of the machine that `apply` and `run` make before touching anything.

use anyhow::{bail, Result};

use crate::config::Config;

/// `ip_forward` off is an error unless `lan` is empty (SPEC §3): a router that does not
/// forward would silently drop every LAN connection.
pub fn check_forwarding(config: &Config) -> Result<()> {
    if config.settings.lan.as_ref().is_some_and(|l| l.is_empty()) {
        return Ok(());
    }
    let value = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if value.trim() != "1" {
        bail!(
            "net.ipv4.ip_forward is off, so LAN traffic would not be forwarded: \
             enable it (sysctl -w net.ipv4.ip_forward=1), or set lan = [] for a router \
             that only steers its own traffic"
        );
    }
    Ok(())
}
