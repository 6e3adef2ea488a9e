//! The name of multiwan's routing protocol number, so `ip route` and `ip rule` print
//! `proto multiwan` instead of `proto 77`: one file in `/etc/iproute2/rt_protos.d/`.
//!
//! The file is host-global and the same for every instance, so apply writes it when it
//! is missing or different and flush leaves it (another instance may still use it).

use std::path::{Path, PathBuf};

use super::error::{KernelError, Result};
use super::RTPROT_MULTIWAN;

/// Where iproute2 reads extra protocol names from.
pub const RT_PROTOS_DIR: &str = "/etc/iproute2/rt_protos.d";

/// The file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("multiwan.conf")
}

/// The file's content.
pub fn render() -> String {
    format!(
        "# Written by multiwan: the routing protocol number on its routes and ip rules.\n\
         {RTPROT_MULTIWAN} multiwan\n"
    )
}

fn io(what: &'static str, path: PathBuf, source: std::io::Error) -> KernelError {
    KernelError::Io {
        what,
        path,
        source,
        hint: "multiwan must run as root with /etc/iproute2 writable (only names matter here: routing works without it)",
    }
}

/// Writes the file if it is missing or different; returns whether it did.
pub fn write(dir: &Path) -> Result<bool> {
    // Several instances (or tests) may write at once: each beside it under its own name.
    let tmp = dir.join(format!(
        ".multiwan.conf.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    super::rt_tables::replace_if_different(&path(dir), &tmp, &render(), io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_when_missing_or_different() {
        let dir = std::env::temp_dir().join(format!("mw-rt-protos-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(write(&dir).unwrap());
        assert!(!write(&dir).unwrap());
        assert!(std::fs::read_to_string(path(&dir))
            .unwrap()
            .ends_with("77 multiwan\n"));
        std::fs::write(path(&dir), "77 something\n").unwrap();
        assert!(write(&dir).unwrap());
        assert!(!write(&dir).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
