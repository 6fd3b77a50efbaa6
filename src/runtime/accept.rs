//! Accepting: taking connections off the listener, refusing past `max_connections`, pausing
//! on resource errors, and opening each one (socket options, the transport's stream, the
//! table, epoll, the session, the first turn).

use std::io;
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::net::{self, NetStream, PeerAddr};
use crate::runtime::clock;
use crate::runtime::conn::{Conn, RunningGuard};
use crate::runtime::queue::Task;
use crate::runtime::shared::ConnOf;
use crate::runtime::table;
use crate::runtime::timeouts::Stamps;
use crate::runtime::worker::{Worker, panic_message};
use crate::transport::Accepted;
use crate::{CloseReason, Handler, Socket, Stream, Transport};

/// The `errno` values accept pauses on.
mod libc_errno {
    use nix::errno::Errno;
    pub const EMFILE: i32 = Errno::EMFILE as i32;
    pub const ENFILE: i32 = Errno::ENFILE as i32;
    pub const ENOBUFS: i32 = Errno::ENOBUFS as i32;
    pub const ENOMEM: i32 = Errno::ENOMEM as i32;
}

/// Connections accepted per listener wake-up before other work gets a turn.
const ACCEPT_BUDGET: usize = 64;

/// Connection ids come from one process-wide counter, so an id names one connection of one
/// server for the life of the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<T: Transport, H: Handler> Worker<'_, T, H> {
    /// Accepts pending connections on the listener with this index, up to a budget.
    ///
    /// Past `max_connections`, an accepted connection is closed at once. On a resource error
    /// (out of descriptors or memory) accepting pauses: the connection waits in the backlog,
    /// nothing spins, and the next housekeeping tick (at most 100 ms later) tries again.
    pub(crate) fn accept(&mut self, listener: usize) {
        let core = self.core;
        if core.lifecycle().draining() {
            return;
        }
        let Some(socket) = core.listeners.get(listener) else {
            return;
        };
        for _ in 0..ACCEPT_BUDGET {
            match socket.accept() {
                Ok((tcp, peer)) => {
                    let limit = core.settings.max_connections;
                    if core.open.load(Ordering::Acquire) >= limit {
                        core.stats.refused.fetch_add(1, Ordering::Relaxed);
                        core.telemetry.refused.increment(1);
                        tracing::debug!(%peer, limit, "connection refused: at max_connections");
                        drop(tcp);
                        continue;
                    }
                    self.open(tcp, peer);
                }
                Err(err) => match err.raw_os_error() {
                    _ if err.kind() == io::ErrorKind::WouldBlock => return,
                    Some(
                        libc_errno::EMFILE
                        | libc_errno::ENFILE
                        | libc_errno::ENOBUFS
                        | libc_errno::ENOMEM,
                    ) => {
                        if !core.accept_paused.swap(true, Ordering::AcqRel) {
                            core.telemetry.accept_pauses.increment(1);
                            tracing::warn!(error = %err, "accept failed; pausing accept until descriptors free up");
                            self.retime();
                        }
                        return;
                    }
                    // The peer gave up already, or a transient network error: next one.
                    _ => {
                        tracing::debug!(error = %err, "accept failed");
                        continue;
                    }
                },
            }
        }
        core.queue.push(Task::Accept(listener));
    }

    /// Sets up one accepted connection and gives it its first turn.
    fn open(&mut self, tcp: NetStream, peer: PeerAddr) {
        let core = self.core;
        let proxied = core.settings.proxy_protocol;
        // Only a trusted proxy may say who the client is: anyone else's header would be a
        // claim to any address. A Unix-domain peer is local, so trusted. An IPv4 peer of a
        // dual-stack listener comes as `::ffff:a.b.c.d`: checked as the IPv4 address.
        if proxied
            && let Some(ip) = peer.ip().map(|ip| ip.to_canonical())
            && !core.trusted.iter().any(|net| net.contains(&ip))
        {
            let reason = CloseReason::ProxyRefused(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{ip} is not a trusted proxy (Config::proxy_from)"),
            ));
            tracing::debug!(%peer, %reason, "connection refused");
            core.stats.count_shutdown(&reason);
            core.telemetry.closed(&reason);
            drop(tcp);
            return;
        }
        if let Err(err) = tcp.set_nonblocking(true) {
            tracing::warn!(%peer, error = %err, "cannot make the socket non-blocking");
            return;
        }
        net::apply_options(&tcp, &core.settings.sockets, &peer);
        let built = panic::catch_unwind(AssertUnwindSafe(|| {
            core.transport.open(Accepted::new(tcp, peer.clone()))
        }));
        let stream = match built {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "connection refused by the transport");
                return;
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                tracing::error!(%peer, %message, "Transport::open panicked; connection refused");
                return;
            }
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::downgrade(&core.queue);
        let limits = core.settings.limits;
        let buffers = core.buffers.clone();
        let Some(conn) = core.table.insert(id, |slot| {
            Conn::new(id, slot, peer.clone(), stream, queue, limits, buffers)
        }) else {
            tracing::warn!(%peer, "connection table full");
            return;
        };
        core.open.fetch_add(1, Ordering::AcqRel);
        core.stats.accepted.fetch_add(1, Ordering::Relaxed);
        core.telemetry.accepted.increment(1);
        core.telemetry.open.increment(1.0);
        let now = clock::now();
        // A stream with an opening phase (a TLS handshake) reaches the handler only once it
        // is established (`Worker::establish`), and is timed out meanwhile.
        let established = panic::catch_unwind(AssertUnwindSafe(|| {
            let state = conn.state.lock();
            let stream = state
                .stream
                .as_ref()
                .expect("new connection has its stream");
            (stream.is_established(), stream.tls_info())
        }));
        let Ok((mut established, tls)) = established else {
            tracing::error!(%peer, "Stream::is_established panicked; connection refused");
            self.unregister(&conn);
            return;
        };
        if proxied {
            // Not the handler's until the header is read (`Worker::read_header`).
            conn.expect_header();
            established = false;
        }
        if !established {
            conn.begin_establishing(now);
            self.establishing(true);
        }
        let stamps = Stamps {
            active: now,
            partial: 0,
            establishing: conn.establishing_since(),
            header: proxied,
        };
        if let Some(due) = core.settings.timeouts.next_check(now, stamps) {
            core.deadlines.arm(due, id, conn.slot);
        }
        let registered = {
            let state = conn.state.lock();
            let stream = state
                .stream
                .as_ref()
                .expect("new connection has its stream");
            core.poller
                .add_socket(stream.as_fd(), table::token(conn.slot, id))
        };
        if let Err(err) = registered {
            tracing::warn!(%peer, error = %err, "cannot register the connection with epoll");
            if !established {
                self.establishing(false);
            }
            self.unregister(&conn);
            return;
        }
        if established {
            tracing::debug!(conn = id, %peer, fd = conn.fd, "connection opened");
            core.count_opened();
            let opened = panic::catch_unwind(AssertUnwindSafe(|| {
                let socket = Socket::new(conn.clone());
                let _running = RunningGuard::enter(id);
                if let Some(tls) = tls {
                    conn.set_tls_info(tls);
                }
                core.handler
                    .on_connection_opened(&mut conn.session.lock(), &socket);
            }));
            if let Err(payload) = opened {
                self.recover(&conn, payload);
                return;
            }
        } else {
            tracing::debug!(conn = id, %peer, fd = conn.fd, "connection accepted; establishing");
        }
        // Its registration reports the socket at once, so the first read follows at once too.
        self.drive_guarded(&conn, false);
    }

    /// Takes a connection that never got going out of the table again (its socket is not in
    /// epoll), without callbacks.
    fn unregister(&self, conn: &ConnOf<T, H>) {
        let core = self.core;
        let stream = conn.state.lock().stream.take();
        drop(stream);
        core.table.remove(conn.slot, conn.id);
        core.open.fetch_sub(1, Ordering::AcqRel);
        core.telemetry.open.decrement(1.0);
    }
}
