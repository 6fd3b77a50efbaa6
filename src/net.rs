//! Addresses and sockets beyond one TCP port: [`ListenAddr`] (a TCP address or a Unix-domain
//! path to listen on), [`PeerAddr`] (who is on the other end), [`NetStream`] (an accepted
//! TCP or Unix-domain socket), [`Keepalive`]; and, inside the crate, the listeners themselves
//! and the socket options the [`Config`] asks for.

use std::fmt;
use std::fs;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, UnixAddr, sendmsg};
use socket2::{Domain, Protocol, SockAddr, SockRef, TcpKeepalive, Type};

use crate::Config;

/// An address a [`Server`](crate::Server) listens on, besides `Config::addr`/`Config::port`
/// ([`Config::listen`]).
///
/// Parses from `"127.0.0.1:7000"`, `"[::1]:7000"` (TCP), and `"unix:/run/app.sock"` or any
/// string starting with `/` or `.` (a Unix-domain socket path):
///
/// ```
/// use hydrogen::ListenAddr;
///
/// let tcp: ListenAddr = "[::1]:7000".parse().unwrap();
/// assert_eq!(tcp, ListenAddr::Tcp("[::1]:7000".parse().unwrap()));
/// let unix: ListenAddr = "unix:/tmp/app.sock".parse().unwrap();
/// assert_eq!(unix, ListenAddr::Unix("/tmp/app.sock".into()));
/// assert_eq!(unix.to_string(), "unix:/tmp/app.sock");
/// assert!("localhost".parse::<ListenAddr>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address, IPv4 or IPv6.
    Tcp(SocketAddr),
    /// A Unix-domain stream socket at this path. A stale socket file left by a server that
    /// died is removed at bind; a live one (a server accepts on it) is an error, as is a file
    /// that is not a socket. The file is removed again when the server stops.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = io::Error;

    fn from_str(s: &str) -> io::Result<ListenAddr> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid(format!(
                    "{s:?}: a Unix-domain address needs a path"
                )));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            invalid(format!(
                "{s:?} is neither an IP address with a port (127.0.0.1:7000, [::1]:7000) nor a Unix-domain path (unix:/path)"
            ))
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> ListenAddr {
        ListenAddr::Tcp(addr)
    }
}

/// The address of a connection's peer ([`Socket::peer_addr`](crate::Socket::peer_addr)).
///
/// With the PROXY protocol on ([`Config::proxy_protocol`]), it is the client's address from
/// the header, not the proxy's.
///
/// ```
/// use hydrogen::PeerAddr;
///
/// let addr: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
/// let peer = PeerAddr::from(addr);
/// assert_eq!(peer, addr);
/// assert_eq!(peer.ip(), Some(addr.ip()));
/// assert_eq!(PeerAddr::Unix(None).to_string(), "unix:(unnamed)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// A TCP peer (or the client a PROXY header names).
    Tcp(SocketAddr),
    /// A peer on a Unix-domain socket, with the path it is bound to if any (clients usually
    /// are not bound, so this is mostly `None`).
    Unix(Option<PathBuf>),
}

impl PeerAddr {
    /// The peer's IP address, `None` for a Unix-domain peer.
    pub fn ip(&self) -> Option<IpAddr> {
        self.tcp().map(|addr| addr.ip())
    }

    /// The peer's TCP address, `None` for a Unix-domain peer.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Tcp(addr) => Some(*addr),
            PeerAddr::Unix(_) => None,
        }
    }

    /// Whether the peer is on a Unix-domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, PeerAddr::Unix(_))
    }

    fn of_unix(addr: &std::os::unix::net::SocketAddr) -> PeerAddr {
        PeerAddr::Unix(addr.as_pathname().map(Path::to_path_buf))
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => addr.fmt(f),
            PeerAddr::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            PeerAddr::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        PeerAddr::Tcp(addr)
    }
}

impl PartialEq<SocketAddr> for PeerAddr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.tcp() == Some(*other)
    }
}

/// An accepted connection's socket: TCP or Unix-domain. What [`Framed`](crate::Framed) and
/// the TLS stream read and write; [`Accepted::into_stream`](crate::Accepted::into_stream)
/// gives it to a [`Transport`](crate::Transport).
///
/// Reads and writes go to the socket as for a [`TcpStream`], and writes never raise
/// `SIGPIPE` (they are sent with `MSG_NOSIGNAL`, gathered writes included).
#[derive(Debug)]
pub enum NetStream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain stream connection.
    Unix(UnixStream),
}

impl NetStream {
    /// The TCP socket, for its options or addresses; `None` on a Unix-domain connection.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            NetStream::Tcp(tcp) => Some(tcp),
            NetStream::Unix(_) => None,
        }
    }

    /// The Unix-domain socket; `None` on a TCP connection.
    pub fn unix(&self) -> Option<&UnixStream> {
        match self {
            NetStream::Tcp(_) => None,
            NetStream::Unix(unix) => Some(unix),
        }
    }

    /// Shuts down one or both directions, as [`TcpStream::shutdown`].
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            NetStream::Tcp(tcp) => tcp.shutdown(how),
            NetStream::Unix(unix) => unix.shutdown(how),
        }
    }

    /// Moves the socket in or out of non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            NetStream::Tcp(tcp) => tcp.set_nonblocking(nonblocking),
            NetStream::Unix(unix) => unix.set_nonblocking(nonblocking),
        }
    }

    /// Socket options through `socket2` (whatever the family supports).
    pub fn sock_ref(&self) -> SockRef<'_> {
        SockRef::from(self)
    }
}

impl From<TcpStream> for NetStream {
    fn from(tcp: TcpStream) -> NetStream {
        NetStream::Tcp(tcp)
    }
}

impl From<UnixStream> for NetStream {
    fn from(unix: UnixStream) -> NetStream {
        NetStream::Unix(unix)
    }
}

impl AsFd for NetStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            NetStream::Tcp(tcp) => tcp.as_fd(),
            NetStream::Unix(unix) => unix.as_fd(),
        }
    }
}

impl AsRawFd for NetStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Read for &NetStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            NetStream::Tcp(tcp) => (&*tcp).read(buf),
            NetStream::Unix(unix) => (&*unix).read(buf),
        }
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match *self {
            NetStream::Tcp(tcp) => (&*tcp).read_vectored(bufs),
            NetStream::Unix(unix) => (&*unix).read_vectored(bufs),
        }
    }
}

impl Write for &NetStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// One `sendmsg` with `MSG_NOSIGNAL`: a peer gone does not raise `SIGPIPE` (a plain
    /// `writev`, which the standard library's gathered write is, would).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let fd = self.as_fd().as_raw_fd();
        loop {
            match sendmsg::<UnixAddr>(fd, bufs, &[], MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for NetStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for NetStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// TCP keepalive probes ([`Config::keepalive`]): after `idle` without traffic the kernel
/// sends a probe every `interval`, and drops the connection after `count` unanswered ones
/// (the handler then sees [`CloseReason::Reset`](crate::CloseReason::Reset)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Quiet time before the first probe (`TCP_KEEPIDLE`), whole seconds, at least 1 s.
    pub idle: Duration,
    /// Time between probes (`TCP_KEEPINTVL`), whole seconds, at least 1 s.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`), at least 1.
    pub count: u32,
}

impl Default for Keepalive {
    /// Probes after 60 s of quiet, every 10 s, 5 of them: a dead peer is noticed within
    /// about two minutes (the kernel's own defaults take over two hours).
    fn default() -> Keepalive {
        Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 5,
        }
    }
}

/// A listening socket of the server.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocketFile),
}

/// A Unix-domain listener and the file it made, removed when the listener is dropped if it
/// is still the same file (another server may have taken the path over since).
#[derive(Debug)]
pub(crate) struct UnixSocketFile {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this listener bound.
    file: (u64, u64),
}

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
            && let Err(err) = fs::remove_file(&self.path)
        {
            tracing::debug!(path = %self.path.display(), error = %err, "cannot remove the socket file");
        }
    }
}

impl Listener {
    /// Binds and listens on `addr` with the options of `config`. An IPv6 `addr` serves IPv6
    /// only if `v6_only` (else also IPv4, as mapped addresses, per the system's default).
    pub fn bind(addr: &ListenAddr, config: &Config, v6_only: bool) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(addr) => bind_tcp(*addr, config, v6_only).map(Listener::Tcp),
            ListenAddr::Unix(path) => bind_unix(path, config).map(Listener::Unix),
        }
    }

    /// Accepts one connection (non-blocking).
    pub fn accept(&self) -> io::Result<(NetStream, PeerAddr)> {
        match self {
            Listener::Tcp(listener) => listener
                .accept()
                .map(|(tcp, peer)| (NetStream::Tcp(tcp), PeerAddr::Tcp(peer))),
            Listener::Unix(file) => file
                .listener
                .accept()
                .map(|(unix, peer)| (NetStream::Unix(unix), PeerAddr::of_unix(&peer))),
        }
    }

    /// Stops listening: connections not accepted yet are reset and new ones refused (a
    /// listening socket shut down for reading leaves the listening state on Linux).
    pub fn stop_listening(&self) {
        if let Err(err) = SockRef::from(self).shutdown(Shutdown::Read)
            && err.kind() != io::ErrorKind::NotConnected
        {
            tracing::debug!(error = %err, "cannot shut the listener down");
        }
    }

    /// Where it listens (with the real port of a port 0).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(file) => Ok(ListenAddr::Unix(file.path.clone())),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(listener) => listener.as_fd(),
            Listener::Unix(file) => file.listener.as_fd(),
        }
    }
}

fn bind_tcp(addr: SocketAddr, config: &Config, v6_only: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if config.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() && v6_only {
        // So that `0.0.0.0` on the same port can be a listener of its own (Linux's default,
        // `net.ipv6.bindv6only = 0`, would make `[::]` take IPv4 too, and the two clash).
        socket.set_only_v6(true)?;
    }
    // Set on the listener, they are the accepted sockets' from the start: the receive
    // buffer must be, for the window scale agreed in the handshake to allow for it.
    if let Some(size) = config.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = config.send_buffer {
        socket.set_send_buffer_size(size)?;
    }
    socket
        .bind(&addr.into())
        .map_err(|err| io::Error::new(err.kind(), format!("cannot bind {addr}: {err}")))?;
    socket
        .listen(config.backlog as i32)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))?;
    Ok(TcpListener::from(socket))
}

fn bind_unix(path: &Path, config: &Config) -> io::Result<UnixSocketFile> {
    let shown = path.display();
    remove_stale_socket(path)?;
    let socket = socket2::Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    if let Some(size) = config.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = config.send_buffer {
        socket.set_send_buffer_size(size)?;
    }
    socket
        .bind(&SockAddr::unix(path)?)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot bind unix:{shown}: {err}")))?;
    let meta = fs::symlink_metadata(path)?;
    let file = (meta.dev(), meta.ino());
    // The mode is set before `listen`, so no client can connect while the file still has
    // the umask's permissions.
    let made = UnixSocketFile {
        listener: UnixListener::from(std::os::fd::OwnedFd::from(socket)),
        path: path.to_path_buf(),
        file,
    };
    if let Some(mode) = config.unix_mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot set the mode of unix:{shown} to {mode:o}: {err}"),
            )
        })?;
    }
    SockRef::from(&made.listener)
        .listen(config.backlog as i32)
        .map_err(|err| {
            io::Error::new(err.kind(), format!("cannot listen on unix:{shown}: {err}"))
        })?;
    Ok(made)
}

/// Clears the way for a Unix-domain listener at `path`: nothing there is fine; a socket
/// nobody accepts on (left by a server that died) is removed; a live socket, or a file of
/// another kind, is an error.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let shown = path.display();
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io::Error::new(err.kind(), format!("unix:{shown}: {err}"))),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("unix:{shown} exists and is not a socket; not removing it"),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("unix:{shown}: another server is listening on it"),
        )),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %shown, "removing a stale socket file");
            fs::remove_file(path).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot remove the stale unix:{shown}: {err}"),
                )
            })
        }
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("unix:{shown} exists and cannot be checked: {err}"),
        )),
    }
}

/// Sets the per-connection options of `config` on an accepted socket; a failure is logged and
/// the connection kept (the options are tuning, not correctness).
pub(crate) fn apply_options(stream: &NetStream, config: &SocketOptions, peer: &PeerAddr) {
    let NetStream::Tcp(tcp) = stream else {
        return;
    };
    let sock = SockRef::from(tcp);
    if config.nodelay
        && let Err(err) = sock.set_tcp_nodelay(true)
    {
        tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
    }
    if let Some(keepalive) = config.keepalive {
        let params = TcpKeepalive::new()
            .with_time(keepalive.idle)
            .with_interval(keepalive.interval)
            .with_retries(keepalive.count);
        if let Err(err) = sock.set_tcp_keepalive(&params) {
            tracing::debug!(%peer, error = %err, "cannot set TCP keepalive");
        }
    }
    if let Some(timeout) = config.user_timeout
        && let Err(err) = sock.set_tcp_user_timeout(Some(timeout))
    {
        tracing::debug!(%peer, error = %err, "cannot set TCP_USER_TIMEOUT");
    }
}

/// The options set on every accepted TCP socket, from the [`Config`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketOptions {
    pub nodelay: bool,
    pub keepalive: Option<Keepalive>,
    pub user_timeout: Option<Duration>,
}

impl SocketOptions {
    pub fn new(config: &Config) -> SocketOptions {
        SocketOptions {
            nodelay: config.nodelay,
            keepalive: config.keepalive,
            user_timeout: config.tcp_user_timeout,
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hydrogen-net-{}-{name}", std::process::id()))
    }

    #[test]
    fn listen_addr_parses_tcp_and_unix() {
        assert_eq!(
            "127.0.0.1:80".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "./app.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("./app.sock".into())
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("127.0.0.1".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn a_stale_socket_file_is_removed_a_live_one_is_an_error() {
        let path = temp_path("stale");
        let _ = fs::remove_file(&path);
        // A socket file nobody accepts on: what a killed server leaves.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        remove_stale_socket(&path).unwrap();
        assert!(!path.exists());

        let live = UnixListener::bind(&path).unwrap();
        let err = remove_stale_socket(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(path.exists(), "a live socket is left alone");
        drop(live);
        fs::remove_file(&path).unwrap();

        fs::write(&path, b"not a socket").unwrap();
        let err = remove_stale_socket(&path).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert!(path.exists(), "a regular file is never removed");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unix_listener_sets_the_mode_and_removes_only_its_own_file() {
        let path = temp_path("mode");
        let _ = fs::remove_file(&path);
        let config = Config {
            unix_mode: Some(0o600),
            ..Config::default()
        };
        let listener = Listener::bind(&ListenAddr::Unix(path.clone()), &config, true).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let client = UnixStream::connect(&path).unwrap();
        let (stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(err) => panic!("accept: {err}"),
            }
        };
        assert!(peer.is_unix());
        (&client).write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        stream.set_nonblocking(false).unwrap();
        (&stream).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        drop(listener);
        assert!(!path.exists(), "the listener removes its socket file");

        // A file that replaced ours is not removed.
        let listener = Listener::bind(&ListenAddr::Unix(path.clone()), &config, true).unwrap();
        fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        drop(listener);
        assert!(path.exists(), "another server's socket file stays");
        drop(other);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn writes_to_a_closed_peer_fail_without_sigpipe() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let stream = NetStream::from(a);
        let err = (&stream)
            .write_vectored(&[IoSlice::new(b"x"), IoSlice::new(b"y")])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
