//! A minimal HTTP/1.1 server for Prometheus: `GET /metrics` (and `HEAD`), one request
//! per connection (`Connection: close`). Anything else gets 404 or 405. The values
//! come from the daemon's event loop over the request channel, like the socket's.

use std::net::SocketAddr;
use std::time::Duration;

use crate::api::DaemonHandle;
use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request head larger than this is refused.
const MAX_HEAD: usize = 8 * 1024;
/// A client must send its request within this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Listens on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "metrics: cannot listen on {addr}; set settings.metrics to a free address, or \"\" \
             to disable metrics"
        )
    })
}

/// Serves scrapes until the daemon's request channel closes.
pub async fn serve(listener: TcpListener, daemon: DaemonHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if daemon.is_closed() {
            return;
        }
        tokio::spawn(connection(stream, daemon.clone()));
    }
}

async fn connection(mut stream: TcpStream, daemon: DaemonHandle) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return,
    };
    let first = head.lines().next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let response = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match daemon.metrics().await.ok() {
            Some(body) => response("200 OK", CONTENT_TYPE, &body, method == "HEAD"),
            None => response(
                "503 Service Unavailable",
                "text/plain",
                "the daemon is stopping\n",
                false,
            ),
        },
        ("GET" | "HEAD", _) => response(
            "404 Not Found",
            "text/plain",
            "multiwan serves /metrics only\n",
            method == "HEAD",
        ),
        _ => response(
            "405 Method Not Allowed",
            "text/plain",
            "use GET /metrics\n",
            false,
        ),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            buf.truncate(end);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> String {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        r.push_str(body);
    }
    r
}
