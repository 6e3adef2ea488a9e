//! `socket cgroupv2` matches: which cgroups exist now, and the table as it can be
//! loaded.

use std::borrow::Cow;
use std::collections::BTreeMap;

use sha2::Digest;

use super::batch::*;
use crate::plan::nft::{Match, NftTable};

/// Where nft looks up the paths of `socket cgroupv2` matches.
const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// `statfs` type of a cgroup v2 hierarchy.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The id of cgroup v2 `path` (relative to /sys/fs/cgroup), if it exists there now.
fn cgroup2_id(path: &str) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let full = std::path::Path::new(CGROUP2_ROOT).join(path);
    let meta = std::fs::metadata(&full).ok()?;
    let c = std::ffi::CString::new(full.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs with a NUL-terminated path and a zeroed buffer of the right type.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.f_type as u64;
    (meta.is_dir() && magic == CGROUP2_SUPER_MAGIC).then(|| meta.ino())
}

/// The table as it can be loaded now. nft turns a `socket cgroupv2` path into the
/// cgroup's id when it loads the rule, and refuses the whole batch if the path does not
/// exist; so rules naming a cgroup that does not exist now (a service that is not
/// running, or no cgroup v2 hierarchy at /sys/fs/cgroup) are left out, with a note for
/// each, and the ids of the cgroups that do exist are folded into the digest: a cgroup
/// that appears, or comes back with a new id (a restarted service), makes the next
/// apply rewrite the table. Tables without cgroup matches are returned as they are.
pub fn with_live_cgroups(table: &NftTable) -> (Cow<'_, NftTable>, Vec<String>) {
    if !matches_cgroups(table) {
        return (Cow::Borrowed(table), Vec::new());
    }
    let mut live = table.clone();
    let mut notes = Vec::new();
    let mut ids = BTreeMap::new();
    for chain in &mut live.chains {
        chain.rules.retain(|r| {
            r.matches.iter().all(|m| match m {
                Match::SocketCgroupv2 { path, .. } => {
                    let id = *ids.entry(path.clone()).or_insert_with(|| cgroup2_id(path));
                    if id.is_none() {
                        notes.push(format!(
                            "{}: cgroup {CGROUP2_ROOT}/{path} does not exist (or is not cgroup \
                             v2); not installed until it does",
                            r.comment.as_deref().unwrap_or("a rule")
                        ));
                    }
                    id.is_some()
                }
                _ => true,
            })
        });
    }
    notes.dedup();
    let text = format!("{ids:?}");
    let hash = sha2::Sha256::digest(text.as_bytes());
    live.digest = format!(
        "{}+cg{}",
        table.digest,
        hash.iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    (Cow::Owned(live), notes)
}
