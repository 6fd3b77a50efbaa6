//! [`Config`]: where the server listens and how it is sized.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::thread;
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::Framing;
use crate::net::{Keepalive, ListenAddr};

/// What [`Socket::send`](crate::Socket::send) does when a connection's outbound queue would
/// grow past [`Config::max_outbound`]: the peer is not reading fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OutboundPolicy {
    /// Disconnect the slow consumer: the connection is closed with
    /// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer) and the send fails with
    /// [`SendError::Closed`](crate::SendError::Closed). The default: the stream of frames the
    /// peer sees never has a hole in it.
    #[default]
    Disconnect,
    /// Refuse the frame: the send fails with [`SendError::QueueFull`](crate::SendError::QueueFull)
    /// and the connection stays open. The caller decides (drop, retry later, close).
    Reject,
}

/// Server configuration.
///
/// Build one with struct-update syntax so new fields keep their defaults:
///
/// ```
/// let config = hydrogen::Config {
///     port: 0, // let the OS pick a free port
///     max_threads: 2,
///     ..hydrogen::Config::default()
/// };
/// assert_eq!(config.addr, "127.0.0.1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Host name or IP address to listen on. Default `"127.0.0.1"` (loopback only); use
    /// `"0.0.0.0"` or `"::"` to accept connections from other hosts.
    pub addr: String,
    /// TCP port to listen on. Default `1337`; `0` lets the OS pick one
    /// (see [`Server::local_addr`](crate::Server::local_addr)).
    pub port: u16,
    /// Number of I/O worker threads, the thread calling [`Server::run`](crate::Server::run)
    /// included. Default: the number of CPUs. Blocking work belongs on the blocking pool
    /// ([`blocking_threads`](Config::blocking_threads)); a callback that blocks on an I/O
    /// worker all the same stalls only its own connection while another worker is free (see
    /// [`Handler`](crate::Handler#what-callbacks-may-do)); with all of them blocked, the
    /// server waits for one to return.
    pub max_threads: usize,
    /// Connection slots to allocate up front; the table grows past it on demand. Default `1024`.
    pub pre_allocated: usize,
    /// Length of the kernel's queue of connections not yet accepted (`listen(2)` backlog; the
    /// kernel caps it at `net.core.somaxconn`). Default `1024`.
    pub backlog: u32,
    /// Open connections at most. A connection accepted past it is closed at once (no callback
    /// runs for it) and counted in [`RunSummary::refused`](crate::RunSummary::refused).
    /// Default: the process's soft limit on open files less 64 (for the server's own
    /// descriptors and the application's), at least 1.
    pub max_connections: usize,
    /// Bytes a connection may have queued for writing. Default 4 MiB. A single frame larger
    /// than this is still accepted onto an empty queue.
    pub max_outbound: usize,
    /// What happens when a send would exceed `max_outbound`. Default
    /// [`OutboundPolicy::Disconnect`].
    pub outbound_policy: OutboundPolicy,
    /// Close a connection after this long with no bytes in either direction
    /// ([`CloseReason::IdleTimeout`](crate::CloseReason::IdleTimeout)). Default `None` (never).
    pub idle_timeout: Option<Duration>,
    /// Close a connection that has started a frame and not finished it within this long
    /// ([`CloseReason::FrameTimeout`](crate::CloseReason::FrameTimeout)): the defence against
    /// peers that trickle bytes to hold connections open (slowloris). Default 30 s.
    pub frame_timeout: Option<Duration>,
    /// Close a connection whose stream is not established within this long of its accept
    /// ([`CloseReason::HandshakeTimeout`](crate::CloseReason::HandshakeTimeout)): a TLS
    /// handshake, or any other opening phase of a [`Stream`](crate::Stream) that reports
    /// [`is_established`](crate::Stream::is_established) `false`. Such a connection has not
    /// reached the handler, so it gets no callback. Streams that are established at once (the
    /// plain framings) are not affected. Default 10 s.
    pub handshake_timeout: Option<Duration>,
    /// On shutdown, how long to keep flushing queued writes before closing the connections
    /// that still have some. Default 5 s; zero closes at once; `Duration::MAX` waits for as
    /// long as it takes.
    ///
    /// The drain delivers no new frames: what has been handed to the handler gets its
    /// replies, and a frame not yet handed over when the drain began (in flight, or still in
    /// the socket) is dropped with the connection, which then ends with a clean end of
    /// stream. A request/reply client sees its last request unanswered and the connection
    /// closed, and retries it elsewhere (`tests/haproxy.rs` measures this in a rolling
    /// restart behind HAProxy).
    pub drain_timeout: Duration,
    /// A ceiling on the bytes held across all connections, in incomplete inbound frames plus
    /// outbound queues. Past it the server stops reading from the connections holding the
    /// most (TCP flow control then pushes back on their peers) and reads them again once the
    /// total is back under 7/8 of it; past 1.5 times it, it closes the biggest holders with
    /// [`CloseReason::MaxBuffered`](crate::CloseReason::MaxBuffered). Connections that hold
    /// little, such as request/reply traffic in small frames, keep being served throughout.
    ///
    /// Default: a quarter of the memory the process may use (the machine's, or its cgroup's
    /// limit if lower), so that a flood of partial frames or unread replies cannot take the
    /// machine down while no ordinary workload comes near it. `None` sets no ceiling (each
    /// connection is still bounded by the frame size and `max_outbound`).
    pub max_buffered: Option<usize>,
    /// The framing [`Server::run`](crate::Server::run) speaks on every connection. Default
    /// [`Framing::Simple`]. ([`Server::run_with`](crate::Server::run_with) takes a
    /// [`Transport`](crate::Transport) instead, and ignores this.)
    pub framing: Framing,
    /// Set `TCP_NODELAY` on every accepted socket, so small replies go out at once instead of
    /// waiting for the peer's acknowledgement (Nagle's algorithm). Default `true`: the right
    /// choice for request/reply traffic in small frames; replies written together are still
    /// sent together.
    pub nodelay: bool,
    /// Threads of the blocking pool, which runs the frames the handler offloads
    /// ([`Handler::offload`](crate::Handler::offload)) apart from the `max_threads` I/O
    /// workers. Started on demand, so an unused pool costs nothing. Default 64; 0 means no
    /// pool (offloaded frames then run on the I/O workers). Size it for the blocking work you
    /// expect at once: with 20 ms calls, 64 threads serve at most 3,200 a second.
    pub blocking_threads: usize,
    /// Offloaded frames that may wait for a pool thread, across the server. Past it, a
    /// connection with frames waiting is not read until its frames have run, so TCP pushes
    /// back on its peer; nothing is dropped. Default 1024.
    pub blocking_queue: usize,
    /// More addresses to listen on, besides `addr`/`port`: other TCP addresses (IPv6 beside
    /// IPv4, say) and Unix-domain socket paths ([`ListenAddr`]). Every listener serves the
    /// same handler; [`Server::local_addrs`](crate::Server::local_addrs) lists them all.
    /// Default none.
    pub listen: Vec<ListenAddr>,
    /// Set `SO_REUSEPORT` on the TCP listeners, so that several processes (or several
    /// servers in one process) can listen on the same port, and the kernel spreads the
    /// connections across them. The way to use every core of a host with one process per
    /// core (see the README), and to restart one process while the others keep serving.
    /// Every process sharing the port must set it. Default `false`.
    pub reuse_port: bool,
    /// The mode of Unix-domain socket files made for [`listen`](Config::listen) (such as
    /// `0o660`: connecting needs write permission on the file). Default `None`: what the
    /// process's umask gives.
    pub unix_mode: Option<u32>,
    /// TCP keepalive probes on accepted connections, so that peers that vanished (a host
    /// powered off, a NAT entry dropped) are noticed. Default `None`: no probes.
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`: how long written bytes may stay unacknowledged before the kernel
    /// drops the connection (the handler then sees a reset). Bounds how long a dead peer
    /// with data queued for it holds its buffers. Default `None`: the kernel's retransmission
    /// limits (about 15 minutes).
    pub tcp_user_timeout: Option<Duration>,
    /// `SO_RCVBUF` for accepted connections, in bytes (the kernel doubles it for its own
    /// bookkeeping, and a fixed size turns its auto-tuning off). Set on the listeners, so it
    /// applies from the handshake on. Default `None`: the kernel's auto-tuning.
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` for accepted connections, in bytes; as [`recv_buffer`](Config::recv_buffer).
    /// Default `None`.
    pub send_buffer: Option<usize>,
    /// Read a PROXY protocol header (v1 or v2, told apart by its first bytes) at the start of
    /// every connection, as a load balancer such as HAProxy (`send-proxy`, `send-proxy-v2`)
    /// or nginx (`proxy_protocol on`) sends it. The client's address in it becomes
    /// [`Socket::peer_addr`](crate::Socket::peer_addr); the proxy's stays available
    /// ([`Socket::proxy_addr`](crate::Socket::proxy_addr)), with the header
    /// ([`Socket::proxy_header`](crate::Socket::proxy_header): its TLVs, for instance).
    ///
    /// When on, the header is required: a connection from outside
    /// [`proxy_from`](Config::proxy_from), or whose first bytes are not a valid header, is
    /// closed before it reaches the handler ([`CloseReason::ProxyRefused`](crate::CloseReason::ProxyRefused)),
    /// as is one that sends no complete header within
    /// [`proxy_header_timeout`](Config::proxy_header_timeout). A v2 `LOCAL` header (a proxy's
    /// health check) and a v1 `UNKNOWN` one are accepted, and the connection keeps its real
    /// addresses. Unix-domain connections are trusted sources. Default `false`.
    pub proxy_protocol: bool,
    /// The sources allowed to send a PROXY header (CIDR ranges): the load balancers. A
    /// connection from anywhere else is refused, since its header would let it claim any
    /// address. Default: loopback (`127.0.0.0/8` and `::1/128`).
    pub proxy_from: Vec<IpNet>,
    /// How long a connection may take to send its whole PROXY header. Past it, it is closed
    /// ([`CloseReason::ProxyHeaderTimeout`](crate::CloseReason::ProxyHeaderTimeout)), so that
    /// silent connections cannot pile up (the spec asks for at least 3 s). Default 5 s.
    pub proxy_header_timeout: Duration,
}

/// Loopback, IPv4 and IPv6: a proxy on the same host.
fn default_proxy_from() -> Vec<IpNet> {
    vec![
        IpNet::from(Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("valid prefix")),
        IpNet::from(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid prefix")),
    ]
}

/// The soft limit on open files, less a reserve, as the default connection cap.
fn default_max_connections() -> usize {
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub(64).max(1)
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: "127.0.0.1".to_string(),
            port: 1337,
            max_threads: thread::available_parallelism().map_or(1, |n| n.get()),
            pre_allocated: 1024,
            backlog: 1024,
            max_connections: default_max_connections(),
            max_outbound: 4 * 1024 * 1024,
            outbound_policy: OutboundPolicy::Disconnect,
            idle_timeout: None,
            frame_timeout: Some(Duration::from_secs(30)),
            handshake_timeout: Some(Duration::from_secs(10)),
            drain_timeout: Duration::from_secs(5),
            max_buffered: Some(crate::runtime::buffers::default_max_buffered()),
            framing: Framing::default(),
            nodelay: true,
            blocking_threads: 64,
            blocking_queue: 1024,
            listen: Vec::new(),
            reuse_port: false,
            unix_mode: None,
            keepalive: None,
            tcp_user_timeout: None,
            recv_buffer: None,
            send_buffer: None,
            proxy_protocol: false,
            proxy_from: default_proxy_from(),
            proxy_header_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Resolves `addr` and `port` to the address the server binds (the first one, if the name
    /// resolves to several).
    ///
    /// # Errors
    ///
    /// Fails if the name does not resolve.
    pub fn socket_addr(&self) -> io::Result<SocketAddr> {
        (self.addr.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("address {:?} resolves to nothing", self.addr),
                )
            })
    }

    /// Checks the fields that have no meaningful value at zero.
    pub(crate) fn validate(&self) -> io::Result<()> {
        if self.max_threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::max_threads must be at least 1",
            ));
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::backlog must be between 1 and i32::MAX",
            ));
        }
        if self.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::max_connections must be at least 1",
            ));
        }
        if self.max_buffered == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::max_buffered must be positive (use None for no ceiling)",
            ));
        }
        if self.proxy_header_timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::proxy_header_timeout must be positive",
            ));
        }
        if self.proxy_protocol && self.proxy_from.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::proxy_protocol is on but Config::proxy_from trusts no source",
            ));
        }
        if let Some(k) = self.keepalive
            && (k.idle < Duration::from_secs(1)
                || k.interval < Duration::from_secs(1)
                || k.count == 0)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::keepalive needs an idle time and an interval of at least 1 s, and a count of at least 1",
            ));
        }
        if self.tcp_user_timeout == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::tcp_user_timeout must be positive (use None for the kernel's default)",
            ));
        }
        if let Some(mode) = self.unix_mode
            && mode > 0o777
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("Config::unix_mode {mode:#o} is not a permission mode (at most 0o777)"),
            ));
        }
        for (name, size) in [
            ("recv_buffer", self.recv_buffer),
            ("send_buffer", self.send_buffer),
        ] {
            if let Some(size) = size
                && (size == 0 || size > i32::MAX as usize / 2)
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "Config::{name} of {size} bytes is out of range (use None for the kernel's auto-tuning)"
                    ),
                ));
            }
        }
        if self.listen.len() + 1 > crate::runtime::table::MAX_LISTENERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::listen has too many addresses",
            ));
        }
        for (name, timeout) in [
            ("idle_timeout", self.idle_timeout),
            ("frame_timeout", self.frame_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ] {
            if timeout == Some(Duration::ZERO) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("Config::{name} must be positive (use None to disable it)"),
                ));
            }
        }
        Ok(())
    }

    /// How often the housekeeping tick must run to enforce the timeouts on time (a quarter of
    /// the shortest, between 10 ms and 1 s), or `None` if no timeout is set. The handshake
    /// timeout is left out: it needs the tick only while a connection is being established
    /// ([`handshake_tick`](Config::handshake_tick)).
    pub(crate) fn tick(&self) -> Option<Duration> {
        let shortest = [self.idle_timeout, self.frame_timeout]
            .into_iter()
            .flatten()
            .min()?;
        Some(tick_for(shortest))
    }

    /// The tick the handshake timeout (and the PROXY header timeout, if the protocol is on)
    /// needs while some connection is not established yet.
    pub(crate) fn handshake_tick(&self) -> Option<Duration> {
        let header = self.proxy_protocol.then_some(self.proxy_header_timeout);
        [self.handshake_timeout, header]
            .into_iter()
            .flatten()
            .min()
            .map(tick_for)
    }
}

/// A quarter of `timeout`, between 10 ms and 1 s.
fn tick_for(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_resolves_to_loopback() {
        let addr = Config::default().socket_addr().unwrap();
        assert_eq!(addr, "127.0.0.1:1337".parse().unwrap());
    }

    #[test]
    fn zero_threads_is_rejected() {
        let config = Config {
            max_threads: 0,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn fleet_options_out_of_range_are_rejected_by_name() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    proxy_header_timeout: Duration::ZERO,
                    ..Config::default()
                },
                "proxy_header_timeout",
            ),
            (
                Config {
                    proxy_protocol: true,
                    proxy_from: Vec::new(),
                    ..Config::default()
                },
                "proxy_from",
            ),
            (
                Config {
                    keepalive: Some(Keepalive {
                        idle: Duration::from_millis(10),
                        ..Keepalive::default()
                    }),
                    ..Config::default()
                },
                "keepalive",
            ),
            (
                Config {
                    tcp_user_timeout: Some(Duration::ZERO),
                    ..Config::default()
                },
                "tcp_user_timeout",
            ),
            (
                Config {
                    unix_mode: Some(0o1777),
                    ..Config::default()
                },
                "unix_mode",
            ),
            (
                Config {
                    recv_buffer: Some(0),
                    ..Config::default()
                },
                "recv_buffer",
            ),
            (
                Config {
                    send_buffer: Some(usize::MAX),
                    ..Config::default()
                },
                "send_buffer",
            ),
        ];
        for (config, name) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        let fine = Config {
            proxy_protocol: true,
            keepalive: Some(Keepalive::default()),
            unix_mode: Some(0o660),
            recv_buffer: Some(1 << 20),
            ..Config::default()
        };
        fine.validate().unwrap();
    }

    #[test]
    fn tick_follows_the_shortest_timeout() {
        let mut config = Config {
            idle_timeout: None,
            frame_timeout: None,
            ..Config::default()
        };
        assert_eq!(config.tick(), None);
        config.idle_timeout = Some(Duration::from_secs(60));
        assert_eq!(config.tick(), Some(Duration::from_secs(1)));
        config.frame_timeout = Some(Duration::from_millis(400));
        assert_eq!(config.tick(), Some(Duration::from_millis(100)));
        config.frame_timeout = Some(Duration::from_millis(1));
        assert_eq!(config.tick(), Some(Duration::from_millis(10)));
        config.frame_timeout = Some(Duration::ZERO);
        assert!(config.validate().is_err());
        config.frame_timeout = None;
        config.idle_timeout = None;
        assert_eq!(
            config.tick(),
            None,
            "the handshake timeout ticks only on demand"
        );
        assert_eq!(config.handshake_tick(), Some(Duration::from_secs(1)));
        config.handshake_timeout = Some(Duration::from_millis(200));
        assert_eq!(config.handshake_tick(), Some(Duration::from_millis(50)));
        config.handshake_timeout = Some(Duration::ZERO);
        assert!(config.validate().is_err());
    }

    #[test]
    fn default_connection_cap_leaves_room_below_the_fd_limit() {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let cap = Config::default().max_connections;
        assert!(cap >= 1 && (cap as u64) < soft.max(65));
    }

    #[test]
    fn unresolvable_name_is_an_error() {
        let config = Config {
            addr: "no such host.invalid".to_string(),
            ..Config::default()
        };
        assert!(config.socket_addr().is_err());
    }
}
