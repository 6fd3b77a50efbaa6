//! [`Server`]: binds, runs the workers, and shuts down.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::thread;

use crate::net::{ListenAddr, Listener};
use crate::runtime::queue::Queue;
use crate::runtime::shared::Core;
use crate::runtime::table::{self, Table};
use crate::runtime::worker::Worker;
use crate::sys::epoll::Poller;
use crate::sys::signal::Termination;
use crate::sys::timer::Ticker;
use crate::{Config, Handler, Transport};

/// Upper bound on the connection table's shards; beyond it, more shards buy nothing with the
/// shard locks held for a lookup only.
const MAX_SHARDS: usize = 64;

/// A bound TCP server, ready to [`run`](Server::run).
///
/// ```no_run
/// use hydrogen::{Config, Framing, Handler, LengthPrefixed, Server, Socket};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     type Session = ();
///
///     fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
///         let _ = socket.send(frame);
///     }
/// }
///
/// fn main() -> std::io::Result<()> {
///     let config = Config {
///         framing: Framing::LengthPrefixed(LengthPrefixed::default()),
///         ..Config::default()
///     };
///     let server = Server::bind(config)?;
///     println!("listening on {}", server.local_addr()?);
///     let summary = server.run(Echo)?;
///     println!("served {} connections", summary.accepted);
///     Ok(())
/// }
/// ```
pub struct Server {
    config: Config,
    /// `Config::addr`'s first, then `Config::listen`'s.
    listeners: Vec<Listener>,
    poller: Poller,
    queue: Arc<Queue>,
    ticker: Ticker,
}

impl Server {
    /// Creates the listening sockets (`Config::addr`/`port`, then each of
    /// [`Config::listen`], with `SO_REUSEADDR`, [`Config::reuse_port`] and the configured
    /// backlog) and the epoll instance. Connections that arrive before [`run`](Server::run)
    /// wait in the backlog.
    ///
    /// An IPv6 address in `Config::listen` serves IPv6 only, so that `0.0.0.0` and `[::]`
    /// on one port can both be listed; `Config::addr` keeps the system's default (on Linux,
    /// `"::"` takes IPv4 connections too).
    ///
    /// # Errors
    ///
    /// An invalid `Config`, an address that does not resolve, or a failure to bind (the port is
    /// in use, say, or a Unix-domain path another server listens on) or to listen; the
    /// message names the address.
    pub fn bind(config: Config) -> io::Result<Server> {
        config.validate()?;
        let addr = config.socket_addr()?;
        let mut listeners = Vec::with_capacity(1 + config.listen.len());
        listeners.push(Listener::bind(&ListenAddr::Tcp(addr), &config, false)?);
        for extra in &config.listen {
            listeners.push(Listener::bind(extra, &config, true)?);
        }

        let poller = Poller::new()?;
        let queue = Arc::new(Queue::new()?);
        let ticker = Ticker::new()?;
        for (index, listener) in listeners.iter().enumerate() {
            poller.add_input(listener, table::listener_token(index))?;
            tracing::info!(addr = %listener.local_addr()?, "listening");
        }
        poller.add_input(queue.notifier().as_fd(), table::NOTIFY)?;
        poller.add_input(&ticker, table::TIMER)?;
        Ok(Server {
            config,
            listeners,
            poller,
            queue,
            ticker,
        })
    }

    /// The TCP address the server listens on (`Config::addr`/`port`, with the real port when
    /// `Config::port` was 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.listeners[0].local_addr()? {
            ListenAddr::Tcp(addr) => Ok(addr),
            ListenAddr::Unix(_) => unreachable!("the first listener is Config::addr's"),
        }
    }

    /// Every address the server listens on: `Config::addr`/`port` first, then
    /// [`Config::listen`]'s, in order (with real ports for port 0).
    pub fn local_addrs(&self) -> io::Result<Vec<ListenAddr>> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    /// A handle that stops this server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            queue: Arc::downgrade(&self.queue),
        }
    }

    /// Serves connections with `handler`, in the configured
    /// [`Framing`](crate::Framing), until a [`ShutdownHandle`] stops the server, and returns
    /// what happened. See [`run_with`](Server::run_with).
    ///
    /// # Errors
    ///
    /// As for [`run_with`](Server::run_with).
    pub fn run<H: Handler>(self, handler: H) -> io::Result<RunSummary> {
        let framing = self.config.framing;
        self.run_with(framing, handler)
    }

    /// Serves connections with `handler` until a [`ShutdownHandle`] stops the server, and
    /// returns what happened; `transport` makes each accepted connection's
    /// [`Stream`](crate::Stream) (any [`Codec`](crate::Codec) will do).
    ///
    /// Runs `Config::max_threads` workers, the calling thread among them. Shutdown drains:
    /// the server stops accepting and reading, keeps writing what each connection has queued
    /// for up to [`Config::drain_timeout`], and closes each connection as its queue empties
    /// ([`CloseReason::Shutdown`](crate::CloseReason::Shutdown) says whether it did). Then every
    /// thread is joined and every descriptor the server opened is closed before `run` returns.
    ///
    /// # Errors
    ///
    /// Fails if a worker thread cannot be spawned, if `epoll_wait` fails, or if a worker thread
    /// died (callback panics are caught, so this means a bug in the library); the server is shut
    /// down first in each case.
    pub fn run_with<T: Transport, H: Handler>(
        self,
        transport: T,
        handler: H,
    ) -> io::Result<RunSummary> {
        let threads = self.config.max_threads;
        let shards = (threads * 4)
            .next_power_of_two()
            .min(MAX_SHARDS)
            .min(self.config.pre_allocated.max(1).next_power_of_two());
        let core = Core::new(
            &self.config,
            transport,
            handler,
            Arc::new(Table::new(shards, self.config.pre_allocated)),
            self.poller,
            self.listeners,
            self.queue,
            self.ticker,
        );
        crate::runtime::clock::advance();
        let inspector: Arc<dyn crate::runtime::table::Inspect> = core.table.clone();
        core.queue.set_inspector(Some(Arc::downgrade(&inspector)));
        drop(inspector);
        Worker::new(&core).retime();

        let result = thread::scope(|scope| {
            let mut spawned = Vec::with_capacity(threads - 1);
            let mut result = Ok(());
            for i in 1..threads {
                let core = &core;
                let worker = thread::Builder::new()
                    .name(format!("hydrogen-worker-{i}"))
                    .spawn_scoped(scope, move || {
                        let result = Worker::new(core).run();
                        if result.is_err() {
                            core.queue.stop();
                        }
                        result
                    });
                match worker {
                    Ok(handle) => spawned.push(handle),
                    Err(err) => {
                        result = Err(err);
                        core.queue.stop();
                        break;
                    }
                }
            }
            // With one worker there is nobody to hand the polling to.
            if result.is_ok() && threads > 1 {
                let core = &core;
                let monitor = thread::Builder::new()
                    .name("hydrogen-watch".into())
                    .spawn_scoped(scope, move || crate::runtime::monitor::watch(core));
                if let Err(err) = monitor {
                    result = Err(err);
                    core.queue.stop();
                }
            }
            if result.is_ok() {
                // A panic here must not unwind past the scope, which would wait forever for the
                // other workers: stop them first.
                result = panic::catch_unwind(AssertUnwindSafe(|| Worker::new(&core).run()))
                    .unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")));
            }
            core.queue.stop();
            for handle in spawned {
                let joined = handle
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")));
                if result.is_ok() {
                    result = joined;
                }
            }
            // The monitor sees the stop at its next look, or now if it is parked.
            core.monitor.unpark();
            result
        });
        // Callbacks running on the pool finish first: their sessions go to the final close.
        core.pool.stop();
        core.queue.set_inspector(None);
        core.close_all();
        let summary = core.stats.summary();
        tracing::info!(?summary, "server stopped");
        result.map(|()| summary)
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.local_addrs().ok())
            .field("config", &self.config)
            .finish()
    }
}

/// What [`Server::run`] reports when it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// Connections accepted from the listener, including those that never reached the
    /// handler: refused by the transport, failing or timing out in their TLS handshake, or
    /// without a valid PROXY header. Refusals at `max_connections` are counted in `refused`
    /// instead.
    pub accepted: u64,
    /// Connections that reached the handler: `on_connection_opened` ran for each.
    pub opened: u64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: u64,
    /// Connections the shutdown closed after writing everything queued for them.
    pub drained: u64,
    /// Connections the shutdown cut off: closed with output still queued, or with frames
    /// not yet handled or work in flight (a pool job, a [`Hold`](crate::Hold)), when the
    /// drain timed out.
    pub abandoned: u64,
    /// Connections refused by the PROXY protocol check before reaching the handler: from an
    /// untrusted source, or with a missing or malformed header
    /// ([`CloseReason::ProxyRefused`](crate::CloseReason::ProxyRefused)).
    pub proxy_refused: u64,
    /// Connections closed because no PROXY header arrived within
    /// [`Config::proxy_header_timeout`](crate::Config::proxy_header_timeout).
    pub proxy_timed_out: u64,
    /// The most queued tasks (connection turns, handed-on events) the workers ran back to
    /// back with nobody looking at epoll: how long new events, accepts and the shutdown
    /// notice could wait behind queued work. Bounded by a small constant (the runtime polls
    /// between runs of queued work); a large figure points at a runtime bug.
    pub longest_poll_gap: u64,
}

/// One open connection, as [`ShutdownHandle::connections`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Its id ([`Socket::id`](crate::Socket::id)).
    pub id: u64,
    /// The peer's address ([`Socket::peer_addr`](crate::Socket::peer_addr): with the PROXY
    /// protocol, the client's).
    pub peer: crate::PeerAddr,
    /// Bytes in its write queue, not yet written.
    pub queued_bytes: usize,
    /// Payload bytes broadcast to its [`Group`](crate::Group)s that it has not taken into its
    /// write queue yet: how far it lags behind its groups (what a
    /// [`LagPolicy`](crate::LagPolicy) bounds), on top of `queued_bytes`.
    pub group_backlog: u64,
    /// How long since bytes last moved either way (to the housekeeping clock's millisecond).
    pub idle: std::time::Duration,
    /// Frames handed to the handler.
    pub frames_in: u64,
    /// Frames queued to it: sends and broadcasts.
    pub frames_out: u64,
    /// The [`Group`](crate::Group)s it is in.
    pub groups: usize,
    /// Reading is paused by the application ([`Socket::pause_reading`](crate::Socket::pause_reading)).
    pub reading_paused: bool,
    /// A close is under way.
    pub closing: bool,
}

/// Stops a [`Server`] from any thread, and looks at it; cheap to clone.
///
/// Shutting down a server that has not started running makes its `run` return at once; a
/// handle to a server that has stopped does nothing.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    queue: Weak<Queue>,
}

impl ShutdownHandle {
    /// Asks the server to stop: it stops accepting and reading, drains what is queued (up to
    /// [`Config::drain_timeout`]) and closes every connection. Returns at once; `run` returns
    /// once all that is done.
    pub fn shutdown(&self) {
        if let Some(queue) = self.queue.upgrade() {
            queue.shut_down();
        }
    }

    /// Whether the server has stopped (or is stopping): `run` has returned or is about to.
    pub fn is_stopped(&self) -> bool {
        self.queue.upgrade().is_none_or(|queue| queue.must_stop())
    }

    /// The open connections of the running server, in the order they were accepted: a
    /// snapshot, for an admin endpoint or a periodic log line. Empty before
    /// [`Server::run`] starts and after it returns.
    ///
    /// It locks each connection briefly in turn (as a send does), so it is meant for
    /// occasional looks, not for every frame.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.queue
            .upgrade()
            .map(|queue| queue.connections())
            .unwrap_or_default()
    }

    /// Shuts the server down when the process receives SIGINT (Ctrl-C) or SIGTERM.
    ///
    /// Blocks both signals in the calling thread and starts a thread that waits for them with
    /// `sigwait`. Call it before [`Server::run`] and before starting threads of your own: threads
    /// started later inherit the blocked mask (the server's workers among them), while a thread
    /// started earlier could still receive a signal and let it kill the process. The waiting
    /// thread is not joined; it ends with the process.
    ///
    /// ```no_run
    /// # use hydrogen::{Config, Server};
    /// # fn run(handler: impl hydrogen::Handler) -> std::io::Result<()> {
    /// let server = Server::bind(Config::default())?;
    /// server.shutdown_handle().shutdown_on_signals()?;
    /// let summary = server.run(handler)?; // returns after Ctrl-C, once drained
    /// eprintln!("drained {} connections", summary.drained);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Fails if the signal mask cannot be changed or the thread cannot be started.
    pub fn shutdown_on_signals(&self) -> io::Result<()> {
        let termination = Termination::block()?;
        let handle = self.clone();
        thread::Builder::new()
            .name("hydrogen-signals".into())
            .spawn(move || match termination.wait() {
                Ok(signal) => {
                    tracing::info!(signal, "shutting down on a signal");
                    handle.shutdown();
                }
                Err(err) => tracing::error!(error = %err, "sigwait failed"),
            })?;
        Ok(())
    }
}
