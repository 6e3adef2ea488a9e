//! The client side of the control socket, for the CLI (blocking, no runtime needed).

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::api::{ClientRequest, Event, Refusal, Reply};

/// How long `status`, `link` and the first line of `events` wait for the daemon's
/// answer. The loop answers them between two events, in milliseconds; this only guards
/// against a stuck daemon.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `reload` (and `apply` handing over to a daemon) waits: a reload re-reads the
/// file and applies the whole plan with a read-back of the kernel, which on a busy router
/// with thousands of rules takes a few seconds of nft alone.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// How long connecting may take: a daemon whose listen queue is full does not accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Exit 3: nothing listens on the socket (no file, or a stale one).
    #[error("{0}")]
    NoDaemon(String),
    /// Exit 3: a daemon listens but cannot be talked to (it does not accept or answer
    /// in time, or the socket is root's).
    #[error("{0}")]
    Unreachable(String),
    /// The daemon answered with a refusal (its exit code and message).
    #[error("{0}")]
    Refused(Refusal),
    /// Exit 1: the conversation broke off.
    #[error("{0}")]
    Broken(String),
}

fn unreachable(socket: &Path, e: &std::io::Error) -> ClientError {
    let s = socket.display();
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => ClientError::NoDaemon(format!(
            "no multiwan daemon answers on {s}: is `multiwan run` running?"
        )),
        ErrorKind::PermissionDenied => ClientError::Unreachable(format!(
            "cannot connect to {s}: permission denied (the control socket is root's: run \
             this as root)"
        )),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Unreachable(format!(
            "the multiwan daemon on {s} did not accept the connection within \
             {CONNECT_TIMEOUT:?}: it may be stuck; see its log (journalctl -u multiwan)"
        )),
        _ => ClientError::Unreachable(format!(
            "cannot connect to {s}: {e}: is `multiwan run` running?"
        )),
    }
}

/// Connects, giving up after [`CONNECT_TIMEOUT`] (a blocking connect to a Unix socket
/// whose listen queue is full would wait for as long as the daemon is stuck).
fn connect_stream(socket: &Path) -> std::io::Result<UnixStream> {
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // For a Unix socket, connect() waits at most the send timeout.
    sock.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    sock.connect(&SockAddr::unix(socket)?)?;
    Ok(sock.into())
}

/// Whether a daemon listens on `socket` (it accepts connections, or is there but too
/// stuck to accept one). A missing socket file, or a stale one nothing listens on, is
/// no daemon. Nothing is sent: the daemon just sees a client that went away.
pub fn daemon_listens(socket: &Path) -> bool {
    match connect_stream(socket) {
        Ok(_) => true,
        Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

fn connect(
    socket: &Path,
    request: &ClientRequest,
    timeout: Duration,
) -> Result<UnixStream, ClientError> {
    let mut stream = connect_stream(socket).map_err(|e| unreachable(socket, &e))?;
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.set_read_timeout(Some(timeout)))
        .map_err(|e| ClientError::Broken(format!("setting up {}: {e}", socket.display())))?;
    let mut line = serde_json::to_string(request).expect("requests always encode");
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => silent(socket, timeout),
            _ => ClientError::Broken(format!("sending to {}: {e}", socket.display())),
        })?;
    Ok(stream)
}

/// Exit 3, like no daemon at all: one that accepts but does not answer is of no more use.
fn silent(socket: &Path, timeout: Duration) -> ClientError {
    ClientError::Unreachable(format!(
        "the multiwan daemon on {} did not answer within {timeout:?}: it may be stuck; see \
         its log (journalctl -u multiwan)",
        socket.display()
    ))
}

fn read_reply(
    reader: &mut impl BufRead,
    socket: &Path,
    line: &mut String,
    timeout: Duration,
) -> Result<Option<Reply>, ClientError> {
    line.clear();
    match reader.read_line(line) {
        Ok(0) => Ok(None),
        Ok(_) => serde_json::from_str(line.trim()).map(Some).map_err(|e| {
            ClientError::Broken(format!(
                "the daemon on {} sent something this multiwan does not understand ({e}); \
                 are the daemon and the command the same version?",
                socket.display()
            ))
        }),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(silent(socket, timeout))
        }
        Err(e) => Err(ClientError::Broken(format!(
            "reading from {}: {e}",
            socket.display()
        ))),
    }
}

fn first(reply: Option<Reply>, socket: &Path) -> Result<Reply, ClientError> {
    let Some(reply) = reply else {
        return Err(ClientError::Broken(format!(
            "the daemon on {} closed the connection without an answer; see its log",
            socket.display()
        )));
    };
    if reply.ok == Some(true) {
        return Ok(reply);
    }
    Err(ClientError::Refused(Refusal {
        code: reply.code.unwrap_or(1),
        message: reply
            .error
            .unwrap_or_else(|| "the daemon refused without saying why".into()),
    }))
}

/// How long the answer to `request` may take.
pub fn timeout_for(request: &ClientRequest) -> Duration {
    match request {
        ClientRequest::Reload => RELOAD_TIMEOUT,
        ClientRequest::Status | ClientRequest::Events | ClientRequest::Link { .. } => {
            ANSWER_TIMEOUT
        }
    }
}

/// Sends one request and returns the daemon's (successful) answer.
pub fn request(socket: &Path, request: &ClientRequest) -> Result<Reply, ClientError> {
    let timeout = timeout_for(request);
    let stream = connect(socket, request, timeout)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let reply = read_reply(&mut reader, socket, &mut line, timeout)?;
    first(reply, socket)
}

/// Subscribes to events and calls `each` for every one until it returns false.
/// Returns `Ok(())` when `each` stopped, an error when the daemon went away.
pub fn events(socket: &Path, mut each: impl FnMut(EventLine) -> bool) -> Result<(), ClientError> {
    let timeout = timeout_for(&ClientRequest::Events);
    let stream = connect(socket, &ClientRequest::Events, timeout)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    first(read_reply(&mut reader, socket, &mut line, timeout)?, socket)?;
    // Events come whenever they come.
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(|e| ClientError::Broken(e.to_string()))?;
    loop {
        let Some(reply) = read_reply(&mut reader, socket, &mut line, timeout)? else {
            return Err(ClientError::Unreachable(format!(
                "the daemon on {} closed the connection (stopped or restarted)",
                socket.display()
            )));
        };
        let item = match (reply.event, reply.lagged) {
            (Some(e), _) => EventLine::Event(e),
            (None, Some(n)) => EventLine::Lagged(n),
            _ => continue,
        };
        if !each(item) {
            return Ok(());
        }
    }
}

/// One line of the event stream.
#[derive(Debug, Clone)]
pub enum EventLine {
    Event(Event),
    /// This many events were dropped because the client read too slowly.
    Lagged(u64),
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    use super::*;

    fn path(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("mw-client-{}-{tag}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn only_a_listener_is_a_daemon() {
        let missing = path("missing");
        assert!(!daemon_listens(&missing));
        assert!(matches!(
            request(&missing, &ClientRequest::Status),
            Err(ClientError::NoDaemon(_))
        ));

        let stale = path("stale");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(!daemon_listens(&stale));
        assert!(matches!(
            request(&stale, &ClientRequest::Status),
            Err(ClientError::NoDaemon(_))
        ));

        let live = path("live");
        let listener = UnixListener::bind(&live).unwrap();
        assert!(daemon_listens(&live));
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The probe above: a client that goes away without a word.
            let mut nothing = Vec::new();
            s.read_to_end(&mut nothing).unwrap();
            assert!(nothing.is_empty());
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert_eq!(line, "{\"request\":\"reload\"}\n");
            (&s).write_all(Reply::refused(Refusal::usage("no")).to_line().as_bytes())
                .unwrap();
        });
        match request(&live, &ClientRequest::Reload) {
            Err(ClientError::Refused(r)) => assert_eq!(r, Refusal::usage("no")),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
        for p in [stale, live] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn reload_may_take_longer_than_the_rest() {
        assert_eq!(timeout_for(&ClientRequest::Reload), RELOAD_TIMEOUT);
        assert_eq!(timeout_for(&ClientRequest::Status), ANSWER_TIMEOUT);
        assert!(RELOAD_TIMEOUT > ANSWER_TIMEOUT);
    }
}
