//! Names for multiwan's routing tables, so `ip route show table isp1` works: one file in
//! `/etc/iproute2/rt_tables.d/`, named after the nft table, which multiwan owns whole.

use std::path::{Path, PathBuf};

use super::error::{KernelError, Result};

/// Where iproute2 reads extra table names from.
pub const RT_TABLES_DIR: &str = "/etc/iproute2/rt_tables.d";

/// The file multiwan owns in `dir`.
pub fn path(dir: &Path, nft_table: &str) -> PathBuf {
    dir.join(format!("{nft_table}.conf"))
}

/// The file's content for `names` (`101 isp1` lines under a header).
pub fn render(names: &[(u32, String)]) -> String {
    let mut out = String::from(
        "# Written by multiwan: routing table names of its links and policies.\n\
         # multiwan owns this file and rewrites or removes it; edit its config instead.\n",
    );
    for (id, name) in names {
        out.push_str(&format!("{id} {name}\n"));
    }
    out
}

fn io(what: &'static str, path: PathBuf, source: std::io::Error) -> KernelError {
    KernelError::Io {
        what,
        path,
        source,
        hint: "multiwan must run as root; set `table_names = false` to not name tables",
    }
}

/// Writes the file if its content differs; with no names, removes it. Returns whether
/// anything changed.
pub fn write(dir: &Path, nft_table: &str, names: &[(u32, String)]) -> Result<bool> {
    if names.is_empty() {
        return remove(dir, nft_table);
    }
    let tmp = dir.join(format!(".{nft_table}.conf.tmp"));
    replace_if_different(&path(dir, nft_table), &tmp, &render(names), io)
}

/// Writes `content` to `path` unless it holds exactly that already; returns whether it
/// wrote. Written to `tmp` beside it, then renamed, so iproute2 never reads half a
/// file. Shared by the rt_tables.d and rt_protos.d files; `io` gives each its hint.
pub(super) fn replace_if_different(
    path: &Path,
    tmp: &Path,
    content: &str,
    io: fn(&'static str, PathBuf, std::io::Error) -> KernelError,
) -> Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(old) if old == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", path.to_path_buf(), e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating directory", dir.to_path_buf(), e))?;
    }
    std::fs::write(tmp, content).map_err(|e| io("writing", tmp.to_path_buf(), e))?;
    std::fs::rename(tmp, path).map_err(|e| io("renaming into", path.to_path_buf(), e))?;
    Ok(true)
}

/// Removes the file if present; returns whether it was.
pub fn remove(dir: &Path, nft_table: &str) -> Result<bool> {
    let path = path(dir, nft_table);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("removing", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_then_removes() {
        let dir = std::env::temp_dir().join(format!("mw-rt-tables-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = vec![(100, "mw_default".to_string()), (101, "isp1".to_string())];
        assert!(write(&dir, "mw", &names).unwrap());
        let text = std::fs::read_to_string(path(&dir, "mw")).unwrap();
        assert!(text.starts_with("# Written by multiwan"));
        assert!(text.ends_with("100 mw_default\n101 isp1\n"));
        assert!(!write(&dir, "mw", &names).unwrap());
        assert!(write(&dir, "mw", &names[1..]).unwrap());
        assert!(write(&dir, "mw", &[]).unwrap());
        assert!(!path(&dir, "mw").exists());
        assert!(!remove(&dir, "mw").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
