//! "Who am I" servers and their clients: the server tells each client the address it
//! saw the client come from, which is how tests learn which uplink (and which NAT) a
//! connection took.
//!
//! Protocol:
//! * TCP: on accept the server writes the peer's IP address and `\n`, then echoes every
//!   byte it receives until the client closes. A connection can therefore be held open
//!   across link failures and checked byte by byte ([`LongLivedConnection`]).
//! * UDP: every datagram is answered with one datagram holding the sender's IP address
//!   and `\n`. Bind UDP servers to a specific address (not `0.0.0.0`) so that replies
//!   leave from the address the client sent to.
//!
//! Servers and clients create their sockets on a thread that entered the namespace
//! ([`Netns::run`]); the sockets then stay in that namespace whichever thread uses them.

use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::Netns;

/// How often server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Options of the client helpers. `Default` is: no bind, no device, no mark, 2 s.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Source address to bind before connecting (port chosen by the kernel).
    pub bind: Option<IpAddr>,
    /// `SO_BINDTODEVICE`: route lookups are restricted to this interface.
    pub device: Option<String>,
    /// `SO_MARK` (fwmark) of the socket's packets.
    pub mark: Option<u32>,
    /// Connect timeout, and read timeout of every reply.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            bind: None,
            device: None,
            mark: None,
            timeout: Duration::from_secs(2),
        }
    }
}

impl ClientOptions {
    /// Options with this timeout and nothing else.
    pub fn timeout(timeout: Duration) -> Self {
        ClientOptions {
            timeout,
            ..Default::default()
        }
    }

    pub fn with_bind(mut self, addr: IpAddr) -> Self {
        self.bind = Some(addr);
        self
    }

    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    pub fn with_mark(mut self, mark: u32) -> Self {
        self.mark = Some(mark);
        self
    }
}

/// Which kind of [`WhoAmIServer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A whoami server (see the module docs) running on threads, stopped when dropped:
/// the listening socket closes and every open connection is closed.
#[derive(Debug)]
pub struct WhoAmIServer {
    proto: Proto,
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<IpAddr>>>,
    open: Arc<AtomicUsize>,
    main: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl WhoAmIServer {
    /// A TCP whoami server listening on `addr` inside `ns` (port 0: the kernel picks
    /// one, see [`WhoAmIServer::local_addr`]).
    pub fn tcp(ns: &Netns, addr: SocketAddr) -> Result<WhoAmIServer> {
        let listener = ns
            .run(move || TcpListener::bind(addr))?
            .with_context(|| format!("binding TCP {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let mut server = WhoAmIServer::new(Proto::Tcp, local);
        let (stop, seen, open, workers) = (
            server.stop.clone(),
            server.seen.clone(),
            server.open.clone(),
            server.workers.clone(),
        );
        server.main = Some(
            std::thread::Builder::new()
                .name(format!("whoami-tcp-{local}"))
                .spawn(move || accept_loop(listener, stop, seen, open, workers))?,
        );
        Ok(server)
    }

    /// A UDP whoami server bound to `addr` inside `ns`.
    pub fn udp(ns: &Netns, addr: SocketAddr) -> Result<WhoAmIServer> {
        let socket = ns
            .run(move || UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr} in {}", ns.name()))?;
        socket.set_read_timeout(Some(POLL))?;
        let local = socket.local_addr()?;
        let mut server = WhoAmIServer::new(Proto::Udp, local);
        let (stop, seen) = (server.stop.clone(), server.seen.clone());
        server.main = Some(
            std::thread::Builder::new()
                .name(format!("whoami-udp-{local}"))
                .spawn(move || udp_loop(socket, stop, seen))?,
        );
        Ok(server)
    }

    fn new(proto: Proto, local: SocketAddr) -> WhoAmIServer {
        WhoAmIServer {
            proto,
            local,
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::default(),
            open: Arc::default(),
            main: None,
            workers: Arc::default(),
        }
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The address and port the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer address of every connection accepted (TCP) or datagram answered (UDP),
    /// in order.
    pub fn seen(&self) -> Vec<IpAddr> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections accepted (TCP) or datagrams answered (UDP) so far.
    pub fn served(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// TCP connections currently open.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for WhoAmIServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(main) = self.main.take() {
            let _ = main.join();
        }
        let workers = mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<IpAddr>>>,
    open: Arc<AtomicUsize>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        if !wait_readable(listener.as_raw_fd(), POLL) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(_) => continue, // WouldBlock, ECONNABORTED, …
        };
        let peer_ip = peer.ip().to_canonical();
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(peer_ip);
        open.fetch_add(1, Ordering::SeqCst);
        let (stop, open) = (stop.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("whoami-conn-{peer}"))
            .spawn(move || {
                let _ = serve_connection(stream, peer_ip, &stop);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        let mut workers = workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.retain(|w| !w.is_finished());
        if let Ok(handle) = spawned {
            workers.push(handle);
        }
    }
}

fn serve_connection(mut stream: TcpStream, peer: IpAddr, stop: &AtomicBool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.write_all(format!("{peer}\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => stream.write_all(&buf[..n])?,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn udp_loop(socket: UdpSocket, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<IpAddr>>>) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let ip = peer.ip().to_canonical();
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(ip);
                let _ = socket.send_to(format!("{ip}\n").as_bytes(), peer);
            }
            Err(_) => continue, // timeout: look at the stop flag
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects to a TCP whoami server from inside `ns` and returns the address the server
/// saw. `bind` is the source address to use (None: the kernel chooses).
pub fn tcp_whoami(
    ns: &Netns,
    server: IpAddr,
    port: u16,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<IpAddr> {
    let opts = ClientOptions {
        bind,
        ..ClientOptions::timeout(timeout)
    };
    tcp_whoami_with(ns, SocketAddr::new(server, port), &opts)
}

/// [`tcp_whoami`] with every [`ClientOptions`].
pub fn tcp_whoami_with(ns: &Netns, server: SocketAddr, opts: &ClientOptions) -> Result<IpAddr> {
    let mut stream = tcp_connect(ns, server, opts)?;
    read_whoami_line(&mut stream, opts.timeout)
        .with_context(|| format!("reading the whoami line from {server} in {}", ns.name()))
}

/// Sends one datagram to a UDP whoami server from inside `ns` and returns the address
/// the server saw. One try: a lost datagram (or reply) is an error after `timeout`.
pub fn udp_whoami(
    ns: &Netns,
    server: IpAddr,
    port: u16,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<IpAddr> {
    let opts = ClientOptions {
        bind,
        ..ClientOptions::timeout(timeout)
    };
    udp_whoami_with(ns, SocketAddr::new(server, port), &opts)
}

/// [`udp_whoami`] with every [`ClientOptions`].
pub fn udp_whoami_with(ns: &Netns, server: SocketAddr, opts: &ClientOptions) -> Result<IpAddr> {
    let bind = opts.bind.unwrap_or(match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let (device, mark) = (opts.device.clone(), opts.mark);
    let socket = ns
        .run(move || -> io::Result<UdpSocket> {
            let socket = UdpSocket::bind(SocketAddr::new(bind, 0))?;
            set_socket_options(socket.as_raw_fd(), device.as_deref(), mark)?;
            socket.connect(server)?;
            Ok(socket)
        })?
        .with_context(|| format!("UDP socket to {server} in {}", ns.name()))?;
    socket.set_read_timeout(Some(opts.timeout.max(Duration::from_millis(1))))?;
    socket
        .send(b"whoami?\n")
        .with_context(|| format!("sending to {server} from {}", ns.name()))?;
    let mut buf = [0u8; 128];
    let n = socket.recv(&mut buf).with_context(|| {
        format!(
            "no UDP whoami reply from {server} to {} within {:?}",
            ns.name(),
            opts.timeout
        )
    })?;
    parse_whoami(&buf[..n])
}

/// A TCP connection to a whoami server held open for survival tests: every
/// [`LongLivedConnection::exchange`] sends bytes of a running pattern and checks that
/// the same bytes come back, in order.
#[derive(Debug)]
pub struct LongLivedConnection {
    stream: TcpStream,
    seen_as: IpAddr,
    local: SocketAddr,
    peer: SocketAddr,
    offset: u64,
    timeout: Duration,
}

impl LongLivedConnection {
    /// Opens a connection from `ns` to `server:port` (optionally from source `bind`) and
    /// reads the whoami line. `timeout` applies to the connect and to every read.
    pub fn open(
        ns: &Netns,
        server: IpAddr,
        port: u16,
        bind: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<LongLivedConnection> {
        let opts = ClientOptions {
            bind,
            ..ClientOptions::timeout(timeout)
        };
        LongLivedConnection::open_with(ns, SocketAddr::new(server, port), &opts)
    }

    /// [`LongLivedConnection::open`] with every [`ClientOptions`].
    pub fn open_with(
        ns: &Netns,
        server: SocketAddr,
        opts: &ClientOptions,
    ) -> Result<LongLivedConnection> {
        let mut stream = tcp_connect(ns, server, opts)?;
        let seen_as = read_whoami_line(&mut stream, opts.timeout)
            .with_context(|| format!("reading the whoami line from {server}"))?;
        Ok(LongLivedConnection {
            local: stream.local_addr()?,
            peer: server,
            stream,
            seen_as,
            offset: 0,
            timeout: opts.timeout,
        })
    }

    /// The address the server saw this connection come from.
    pub fn seen_as(&self) -> IpAddr {
        self.seen_as
    }

    /// The client side's address and port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Bytes sent and verified so far.
    pub fn exchanged(&self) -> u64 {
        self.offset
    }

    /// Changes the per-read timeout of later exchanges.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `n_bytes` (in chunks of at most 16 KiB, each read back before the next) and
    /// verifies the echo byte for byte. Fails if a chunk does not come back in full
    /// within the timeout, or differs.
    pub fn exchange(&mut self, n_bytes: usize) -> Result<()> {
        const CHUNK: usize = 16 * 1024;
        self.stream
            .set_read_timeout(Some(self.timeout.max(Duration::from_millis(1))))?;
        self.stream
            .set_write_timeout(Some(self.timeout.max(Duration::from_millis(1))))?;
        let mut left = n_bytes;
        let mut back = vec![0u8; CHUNK];
        while left > 0 {
            let len = left.min(CHUNK);
            let start = self.offset;
            let chunk: Vec<u8> = (0..len as u64).map(|i| pattern(start + i)).collect();
            self.stream.write_all(&chunk).with_context(|| {
                format!(
                    "sending bytes {start}..{} on {} -> {}",
                    start + len as u64,
                    self.local,
                    self.peer
                )
            })?;
            self.stream.read_exact(&mut back[..len]).with_context(|| {
                format!(
                    "echo of bytes {start}..{} on {} -> {} did not come back within {:?}",
                    start + len as u64,
                    self.local,
                    self.peer,
                    self.timeout
                )
            })?;
            if let Some(i) = (0..len).find(|&i| back[i] != chunk[i]) {
                bail!(
                    "echo differs at byte {} on {} -> {}",
                    start + i as u64,
                    self.local,
                    self.peer
                );
            }
            self.offset += len as u64;
            left -= len;
        }
        Ok(())
    }
}

/// Byte `i` of the stream a [`LongLivedConnection`] sends (251 is prime, so a shifted
/// or repeated chunk is caught).
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn read_whoami_line(stream: &mut TcpStream, timeout: Duration) -> Result<IpAddr> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::with_capacity(48);
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out after {timeout:?}");
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut byte) {
            Ok(0) => bail!("connection closed before the whoami line"),
            Ok(_) if byte[0] == b'\n' => return parse_whoami(&line),
            Ok(_) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => bail!("whoami line too long"),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => bail!("timed out after {timeout:?}"),
            Err(e) => return Err(e.into()),
        }
    }
}

fn parse_whoami(bytes: &[u8]) -> Result<IpAddr> {
    let text = String::from_utf8_lossy(bytes);
    text.trim()
        .parse()
        .map_err(|_| anyhow!("bad whoami reply {text:?}"))
}

/// A TCP connection to `server` whose socket is created inside `ns`.
fn tcp_connect(ns: &Netns, server: SocketAddr, opts: &ClientOptions) -> Result<TcpStream> {
    let opts2 = opts.clone();
    ns.run(move || connect_in_current_netns(server, &opts2))?
        .with_context(|| {
            let mut how = String::new();
            if let Some(bind) = opts.bind {
                how.push_str(&format!(" from {bind}"));
            }
            if let Some(dev) = &opts.device {
                how.push_str(&format!(" on {dev}"));
            }
            if let Some(mark) = opts.mark {
                how.push_str(&format!(" mark {mark:#x}"));
            }
            format!(
                "TCP connect to {server}{how} in {} (timeout {:?})",
                ns.name(),
                opts.timeout
            )
        })
}

fn connect_in_current_netns(server: SocketAddr, opts: &ClientOptions) -> io::Result<TcpStream> {
    let family = match server {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_socket_options(fd.as_raw_fd(), opts.device.as_deref(), opts.mark)?;
    if let Some(bind) = opts.bind {
        let (sa, len) = sockaddr(SocketAddr::new(bind, 0));
        // SAFETY: sa is a valid sockaddr of length len.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), &sa as *const _ as *const _, len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (sa, len) = sockaddr(server);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), &sa as *const _ as *const _, len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        if !wait_writable(fd.as_raw_fd(), opts.timeout) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", opts.timeout),
            ));
        }
        let mut so_error: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of the right size.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut so_error as *mut _ as *mut _,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if so_error != 0 {
            return Err(io::Error::from_raw_os_error(so_error));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn set_socket_options(fd: RawFd, device: Option<&str>, mark: Option<u32>) -> io::Result<()> {
    if let Some(device) = device {
        // SAFETY: setsockopt with a buffer and its length.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                device.as_ptr() as *const _,
                device.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(mark) = mark {
        let mark = mark as libc::c_uint;
        // SAFETY: setsockopt with a c_uint.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_MARK,
                &mark as *const _ as *const _,
                mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return true;
        }
        if rc == 0 {
            return false;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    poll_fd(fd, libc::POLLIN, timeout)
}

/// Writable or failed (POLLERR / POLLHUP also end the wait; SO_ERROR tells which).
fn wait_writable(fd: RawFd, timeout: Duration) -> bool {
    poll_fd(fd, libc::POLLOUT, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoami_lines_parse() {
        assert_eq!(
            parse_whoami(b"100.64.1.2\n").unwrap(),
            "100.64.1.2".parse::<IpAddr>().unwrap()
        );
        assert!(parse_whoami(b"garbage").is_err());
    }

    #[test]
    fn pattern_is_not_periodic_on_powers_of_two() {
        assert_ne!(pattern(0), pattern(256));
        assert_ne!(pattern(0), pattern(16 * 1024));
    }
}
