//! Running the `nft` binary: sending batches, checking them, listing and deleting the
//! table. Asynchronous (tokio processes, stdin written asynchronously), so the daemon's
//! event loop keeps answering while nft works.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::Stdio;

use nftables::batch::Batch;
use nftables::helper::{NftablesError, DEFAULT_NFT};
use nftables::schema::NfListObject;
use tokio::io::AsyncWriteExt;

use super::batch::NftBatch;
use super::existing::Existing;
use super::lower::table_obj;
use crate::kernel::error::{KernelError, Result};

/// `nft <args>`, with `stdin` fed to it when given; returns what it printed.
pub(super) async fn nft(
    args: &[&str],
    stdin: Option<&str>,
) -> std::result::Result<String, NftablesError> {
    let nft = DEFAULT_NFT.unwrap_or("nft");
    let program = OsString::from(nft);
    let exec = |inner| NftablesError::NftExecution {
        program: program.clone(),
        inner,
    };
    let mut child = tokio::process::Command::new(nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(exec)?;
    let mut written = Ok(());
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads all of stdin before it answers, so writing first cannot deadlock.
        written = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    let out = child.wait_with_output().await.map_err(exec)?;
    written.map_err(exec)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftablesError::NftFailed {
            program,
            hint: format!("running nft {}", args.join(" ")),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// `nft [-j] <args> -f -` with the batch on stdin.
async fn feed(batch: &NftBatch, args: &[&str]) -> std::result::Result<(), NftablesError> {
    // A text batch is fed as it is (no copy: it may hold 100,000 set elements).
    let json_text;
    let (text, json) = match batch {
        NftBatch::Json(j) => {
            json_text = serde_json::to_string(j).map_err(NftablesError::NftInvalidJson)?;
            (json_text.as_str(), true)
        }
        NftBatch::Text(t) => (t.as_str(), false),
    };
    let mut all: Vec<&str> = Vec::new();
    if json {
        all.push("-j");
    }
    all.extend_from_slice(args);
    all.extend_from_slice(&["-f", "-"]);
    nft(&all, Some(text)).await.map(|_| ())
}

/// Runs the batch through `nft -c` (the kernel validates the whole transaction, then it
/// is aborted): nothing changes.
pub async fn check(batch: &NftBatch) -> Result<()> {
    let what = "the generated ruleset (check mode; a bug in multiwan, please report it)";
    feed(batch, &["-c"])
        .await
        .map_err(|e| KernelError::nft(what, e))
}

/// Sends the batch: one `nft -j -f -` (or `nft -f -`), one kernel transaction.
pub async fn send(batch: &NftBatch, table: &str) -> Result<()> {
    feed(batch, &[])
        .await
        .map_err(|e| KernelError::nft(format!("the ruleset for table inet {table}"), e))
}

/// Removes `table inet <name>` if it exists; returns whether it did.
pub async fn delete_table(name: &str) -> Result<bool> {
    if !Existing::read_terse(name).await?.table {
        return Ok(false);
    }
    let mut b = Batch::new();
    // `add` first makes the delete succeed even if the table vanished in between.
    b.add(NfListObject::Table(table_obj(name)));
    b.delete(NfListObject::Table(table_obj(name)));
    feed(&NftBatch::Json(b.to_nftables()), &[])
        .await
        .map_err(|e| KernelError::nft(format!("deleting table inet {name}"), e))?;
    Ok(true)
}

/// Packets per named counter of `table inet <name>` (empty if the table is absent).
pub async fn read_counters(name: &str) -> Result<BTreeMap<String, u64>> {
    Ok(Existing::read_terse(name).await?.counters)
}
