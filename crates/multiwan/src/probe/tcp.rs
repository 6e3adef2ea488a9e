//! TCP connect probes (and the pinned connect that `http` builds on).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Protocol, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::{describe, link_socket, source_for, ProbeEndpoint, ProbeOutcome};

/// Good when the three-way handshake completes. A refused connection means the host is
/// up, but the service the operator chose to watch is not: that is a failed probe.
pub(crate) async fn probe(ep: &ProbeEndpoint, target: SocketAddr) -> ProbeOutcome {
    let started = Instant::now();
    match connect(ep, target).await {
        // Dropping the stream resets the connection (SO_LINGER 0, see `connect`).
        Ok(_stream) => ProbeOutcome::Answered(started.elapsed()),
        Err(reason) => ProbeOutcome::Failed(reason),
    }
}

/// Connects to `target` from the link's address, through its device, with its mark.
/// The error is a probe's failure reason.
pub(crate) async fn connect(ep: &ProbeEndpoint, target: SocketAddr) -> Result<TcpStream, String> {
    let local = source_for(ep, target.ip()).map_err(|e| e.to_string())?;
    let socket = link_socket(ep, local, Type::STREAM, Protocol::TCP).map_err(|e| e.to_string())?;
    // Close with an RST: a probe every 200 ms would otherwise leave a few hundred
    // TIME_WAIT sockets per link around, and the peer has nothing to flush.
    socket
        .set_linger(Some(Duration::ZERO))
        .map_err(|e| format!("cannot set SO_LINGER on a probe socket: {}", describe(&e)))?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket
        .connect(target)
        .await
        .map_err(|e| connect_error(target, &e))
}

fn connect_error(target: SocketAddr, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => format!("{target}: connection refused"),
        _ => format!("cannot connect to {target}: {}", describe(e)),
    }
}
