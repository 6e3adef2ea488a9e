//! The daemon's side of the control socket (protocol: see the module above).

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use super::REQUEST_TIMEOUT;
use crate::api::{ClientRequest, DaemonHandle, Refusal, Reply};

/// A request line longer than this is not a request.
const MAX_REQUEST: usize = 64 * 1024;

/// The listening socket; removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the socket at `path`, mode 0600.
///
/// A socket file that nothing answers on is stale (a daemon that was killed) and is
/// replaced; one that a daemon answers on is an error, as is anything that is not a
/// socket. The socket is bound under a temporary name, restricted to 0600 and then
/// renamed into place, so it is never reachable with looser permissions.
pub fn bind(path: &Path) -> Result<ControlSocket> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if super::client::daemon_listens(path) {
                bail!(
                    "another multiwan daemon answers on {}: stop it first (two daemons \
                     would fight over the same kernel state), or give this one its own \
                     nft_table",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
            tracing::info!("removed the stale control socket {}", path.display());
        }
        Ok(_) => bail!(
            "{} exists and is not a socket: move it away, or set settings.socket to \
             another path",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "creating {} for the control socket (multiwan must run as root; or set \
                 settings.socket)",
                dir.display()
            )
        })?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("listening on the control socket {}", tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("creating the control socket {}", path.display()));
    }
    Ok(ControlSocket {
        listener,
        path: path.to_path_buf(),
    })
}

/// Serves clients until the daemon's request channel closes.
pub async fn serve(socket: ControlSocket, daemon: DaemonHandle) {
    loop {
        let stream = match socket.listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if daemon.is_closed() {
            return;
        }
        tokio::spawn(client(stream, daemon.clone()));
    }
}

async fn client(stream: UnixStream, daemon: DaemonHandle) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut limited = (&mut reader).take(MAX_REQUEST as u64);
        limited.read_line(&mut line).await
    })
    .await;
    let reply = match read {
        Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return,
        Ok(Ok(_)) => match serde_json::from_str::<ClientRequest>(line.trim()) {
            Err(e) => Reply::refused(Refusal::usage(format!(
                "not a multiwan request ({e}); use the multiwan command of the same version"
            ))),
            Ok(ClientRequest::Events) => {
                events(reader, write, daemon).await;
                return;
            }
            Ok(request) => answer(request, &daemon).await,
        },
    };
    let _ = write.write_all(reply.to_line().as_bytes()).await;
    let _ = write.shutdown().await;
}

async fn answer(request: ClientRequest, daemon: &DaemonHandle) -> Reply {
    match request {
        ClientRequest::Status => match daemon.status().await {
            Ok(status) => Reply::status(status),
            Err(gone) => Reply::refused(gone.into()),
        },
        ClientRequest::Reload => Reply::outcome(daemon.reload().await),
        ClientRequest::Link { link, action } => Reply::outcome(daemon.link(link, action).await),
        ClientRequest::Events => unreachable!("served by events()"),
    }
}

/// Streams events until the client closes its end or the daemon stops.
async fn events(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    daemon: DaemonHandle,
) {
    let mut events = match daemon.subscribe().await {
        Ok(events) => events,
        Err(gone) => {
            let _ = write
                .write_all(Reply::refused(gone.into()).to_line().as_bytes())
                .await;
            return;
        }
    };
    if write
        .write_all(Reply::message("subscribed").to_line().as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut sink = Vec::new();
    loop {
        let reply = tokio::select! {
            r = events.recv() => match r {
                Ok(event) => Reply { event: Some(event), ..Reply::default() },
                Err(broadcast::error::RecvError::Lagged(n)) => Reply { lagged: Some(n), ..Reply::default() },
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // Anything the client sends is ignored; end of file means it went away.
            r = reader.read_buf(&mut sink) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => { sink.clear(); continue; }
            },
        };
        if write.write_all(reply.to_line().as_bytes()).await.is_err() {
            return;
        }
    }
}
