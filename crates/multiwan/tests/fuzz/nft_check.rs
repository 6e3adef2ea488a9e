//! `nft -c` over many rulesets at once, in a namespace made for it.

use multiwan::kernel::nft;
use multiwan::plan::nft::NftTable;
use multiwan::render;
use netns_lab::Netns;

use crate::common;

/// `nft <args> -c -f -` in `ns` (with the cgroup v2 hierarchy mounted, where `socket
/// cgroupv2` paths are looked up); nft's complaint on failure.
fn nft_check(ns: &Netns, args: &[&str], script: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = common::with_cgroup2(ns, "nft");
    let mut child = cmd
        .args(args)
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nft");
    let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Rulesets per nft call: one transaction of this many tables is still fast.
const BATCH: usize = 50;

/// The scripts (by index; `None`: nothing to check) that nft refuses, with its
/// message: checked `BATCH` at a time, one by one only in a batch that fails.
fn refused(
    ns: &Netns,
    args: &[&str],
    scripts: &[Option<String>],
    join: fn(&[&str]) -> String,
) -> Vec<(usize, String)> {
    let present: Vec<(usize, &str)> = scripts
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.as_deref()?)))
        .collect();
    let mut out = Vec::new();
    for chunk in present.chunks(BATCH) {
        let texts: Vec<&str> = chunk.iter().map(|(_, s)| *s).collect();
        if nft_check(ns, args, &join(&texts)).is_ok() {
            continue;
        }
        for (i, script) in chunk {
            if let Err(e) = nft_check(ns, args, &join(&[script])) {
                out.push((*i, e));
            }
        }
    }
    out
}

/// Several JSON batches as one: their command lists, one after the other.
fn join_json(batches: &[&str]) -> String {
    let commands: Vec<serde_json::Value> = batches
        .iter()
        .flat_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["nftables"].as_array().cloned().unwrap_or_default()
        })
        .filter(|c| c.get("metainfo").is_none())
        .collect();
    serde_json::json!({ "nftables": commands }).to_string()
}

/// Checks every accepted config's ruleset with `nft -c`, in a namespace made for it,
/// in both forms: the text `multiwan plan` prints and the JSON batch `apply` sends
/// (tables matching cgroups are sent as text, so they have no JSON form). Panics with
/// the config and nft's message for those nft refuses.
pub fn nft_check_all(accepted: &[(String, NftTable)]) {
    let ns = Netns::new(netns_lab::unique_name("mwfz", "nftc")).expect("creating a namespace");
    let tables: Vec<NftTable> = accepted
        .iter()
        .enumerate()
        .map(|(i, (_, table))| NftTable {
            name: format!("fz{i}"),
            ..table.clone()
        })
        .collect();
    let text: Vec<Option<String>> = tables
        .iter()
        .map(|t| Some(render::nft_text::table(t)))
        .collect();
    let json: Vec<Option<String>> = tables
        .iter()
        .map(|t| match nft::to_batch(t, &nft::Existing::default()) {
            nft::NftBatch::Json(j) => Some(serde_json::to_string(&j).unwrap()),
            nft::NftBatch::Text(_) => None,
        })
        .collect();
    eprintln!(
        "nft -c: {} rulesets as text, {} as JSON",
        text.len(),
        json.iter().flatten().count()
    );
    let failures = [
        ("text", &text, refused(&ns, &[], &text, |s| s.concat())),
        ("JSON", &json, refused(&ns, &["-j"], &json, join_json)),
    ];
    for (form, scripts, refused) in failures {
        if let Some((i, e)) = refused.first() {
            panic!(
                "{} of {} accepted configs plan to rulesets whose {form} form nft -c \
                 refuses; the first:\n--- config\n{}\n--- ruleset\n{}\n--- nft\n{e}",
                refused.len(),
                accepted.len(),
                accepted[*i].0,
                scripts[*i].as_deref().unwrap_or_default()
            );
        }
    }
}
