//! What the workers of one server share: [`Settings`] fixed from the [`Config`] at start, and
//! [`Core`], the runtime state every worker reads and changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::handler::CloseReason;
use crate::net::{Listener, SocketOptions};
use crate::runtime::buffers::Buffers;
use crate::runtime::clock;
use crate::runtime::conn::{Conn, Limits};
use crate::runtime::lifecycle::Lifecycle;
use crate::runtime::monitor::Monitor;
use crate::runtime::pool::Pool;
use crate::runtime::queue::Queue;
use crate::runtime::table::Table;
use crate::runtime::telemetry::{self, Telemetry};
use crate::runtime::timeouts;
use crate::sys::epoll::Poller;
use crate::sys::timer::Ticker;
use crate::{Config, Handler, RunSummary, Transport};

/// The connection type of a server with transport `T` and handler `H`.
pub(crate) type ConnOf<T, H> = Conn<<T as Transport>::Stream, <H as Handler>::Session>;

/// Queued tasks the workers run in a row before one looks at epoll again (without waiting),
/// so turns that requeue themselves (connections that keep sending) cannot keep new events,
/// accepts, ticks and the shutdown notice waiting: tokio's `event_interval`, and its value.
pub(crate) const EVENT_INTERVAL: u64 = 61;
/// The same bound in time, for queued turns that are expensive: a poll is due once this long
/// has passed since the last. Chosen by measurement (BENCHMARKS.md, "Stalls"): with four
/// connections uploading 64 KiB frames on two workers, a ping-pong probe's p99 was 13 ms with
/// the count alone, under 1 ms with this, for a zero-timeout `epoll_wait` (about a
/// microsecond) at most every 200 µs.
pub(crate) const POLL_GAP_NANOS: u64 = 200_000;

/// What the runtime takes from the [`Config`], fixed for the server's life.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Worker threads (`Config::max_threads`).
    pub threads: usize,
    /// The outbound budget and what to do past it, copied into every connection.
    pub limits: Limits,
    pub max_connections: usize,
    /// The housekeeping period the timeouts need, if any are set.
    pub tick: Option<Duration>,
    /// The period the handshake timeout needs while a connection is establishing.
    pub handshake_tick: Option<Duration>,
    pub timeouts: timeouts::Limits,
    pub drain_timeout: Duration,
    /// What is set on every accepted TCP socket.
    pub sockets: SocketOptions,
    /// Read a PROXY header first on every connection (`Config::proxy_protocol`).
    pub proxy_protocol: bool,
}

impl Settings {
    pub fn new(config: &Config) -> Settings {
        let millis = |d: Duration| clock::millis(d).max(1);
        Settings {
            threads: config.max_threads,
            limits: Limits {
                max_outbound: config.max_outbound,
                policy: config.outbound_policy,
            },
            max_connections: config.max_connections,
            tick: config.tick(),
            handshake_tick: config.handshake_tick(),
            timeouts: timeouts::Limits {
                idle: config.idle_timeout.map(millis),
                frame: config.frame_timeout.map(millis),
                handshake: config.handshake_timeout.map(millis),
                header: config
                    .proxy_protocol
                    .then(|| millis(config.proxy_header_timeout)),
            },
            drain_timeout: config.drain_timeout,
            sockets: SocketOptions::new(config),
            proxy_protocol: config.proxy_protocol,
        }
    }
}

/// Everything the workers of one server share.
pub(crate) struct Core<T: Transport, H: Handler> {
    pub settings: Settings,
    /// Shared with the blocking pool's threads.
    pub handler: Arc<H>,
    pub transport: T,
    /// Runs the frames the handler offloads.
    pub pool: Pool<T::Stream, H>,
    /// Shared with the queue's inspector, for [`ShutdownHandle::connections`](crate::ShutdownHandle::connections).
    pub table: Arc<Table<ConnOf<T, H>>>,
    pub poller: Poller,
    /// Where the server listens; a listener's index is its epoll token's tag
    /// ([`table::listener_token`]).
    pub listeners: Vec<Listener>,
    /// Sources a PROXY header is taken from (`Config::proxy_from`).
    pub trusted: Vec<ipnet::IpNet>,
    /// The work queue; it also holds the server's [`Lifecycle`].
    pub queue: Arc<Queue>,
    pub ticker: Ticker,
    /// When each connection must next be checked against the timeouts.
    pub deadlines: timeouts::Deadlines,
    /// Connections in the table (opened, not yet finalized).
    pub open: AtomicUsize,
    /// Connections whose stream is not established yet: while any is, the housekeeping tick
    /// runs for the handshake timeout (see `Worker::establishing`).
    pub establishing: AtomicUsize,
    pub stats: Stats,
    /// Accepting stopped on a resource error; the next tick retries.
    pub accept_paused: AtomicBool,
    /// Coarse time ([`clock`]) the drain gives up at.
    pub drain_deadline: AtomicU64,
    /// Serialises changes of the ticker's period.
    pub retiming: Mutex<()>,
    /// Held by the one worker waiting in `epoll_wait` (the leader).
    pub poll_lock: Mutex<()>,
    /// Workers asleep on the queue, waiting for work.
    pub idle_workers: AtomicUsize,
    /// Watches that some worker polls while the leader is busy.
    pub monitor: Monitor,
    /// The bytes held across all connections, against `max_buffered`.
    pub buffers: Arc<Buffers>,
    /// The metrics handles.
    pub telemetry: &'static Telemetry,
}

impl<T: Transport, H: Handler> Core<T, H> {
    /// The runtime state for a server about to run: empty table, no connection open.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        transport: T,
        handler: H,
        table: Arc<Table<ConnOf<T, H>>>,
        poller: Poller,
        listeners: Vec<Listener>,
        queue: Arc<Queue>,
        ticker: Ticker,
    ) -> Core<T, H> {
        let settings = Settings::new(config);
        queue.set_workers(settings.threads);
        let handler = Arc::new(handler);
        Core {
            settings,
            pool: Pool::new(
                handler.clone(),
                config.blocking_threads,
                config.blocking_queue,
            ),
            handler,
            transport,
            table,
            poller,
            listeners,
            trusted: config.proxy_from.clone(),
            queue,
            ticker,
            deadlines: Default::default(),
            open: AtomicUsize::new(0),
            establishing: AtomicUsize::new(0),
            stats: Stats::default(),
            accept_paused: AtomicBool::new(false),
            drain_deadline: AtomicU64::new(u64::MAX),
            retiming: Mutex::new(()),
            poll_lock: Mutex::new(()),
            idle_workers: AtomicUsize::new(0),
            monitor: Monitor::default(),
            buffers: Arc::new(Buffers::new(config.max_buffered)),
            telemetry: telemetry::get(),
        }
    }

    /// The server's lifecycle (see [`Lifecycle`]).
    #[inline]
    pub fn lifecycle(&self) -> &Lifecycle {
        self.queue.lifecycle()
    }

    /// Counts a connection reaching the handler, for [`RunSummary::opened`] and its metric.
    pub fn count_opened(&self) {
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        self.telemetry.opened.increment(1);
    }
}

/// Counters behind [`RunSummary`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub accepted: AtomicU64,
    pub opened: AtomicU64,
    pub refused: AtomicU64,
    pub drained: AtomicU64,
    pub abandoned: AtomicU64,
    pub proxy_refused: AtomicU64,
    pub proxy_timed_out: AtomicU64,
    /// Queued tasks run since a worker last looked at epoll (reset by every poll).
    pub since_poll: AtomicU64,
    /// The most `since_poll` reached.
    pub longest_poll_gap: AtomicU64,
    /// When a worker last looked at epoll ([`clock::nanos`]).
    pub last_poll: AtomicU64,
}

impl Stats {
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            accepted: self.accepted.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            drained: self.drained.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            proxy_refused: self.proxy_refused.load(Ordering::Relaxed),
            proxy_timed_out: self.proxy_timed_out.load(Ordering::Relaxed),
            longest_poll_gap: self.longest_poll_gap.load(Ordering::Relaxed),
        }
    }

    /// Counts one queued task run; returns how many ran since the last poll.
    #[inline]
    fn task_run(&self) -> u64 {
        self.since_poll.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a queued task and tells whether a worker should look at epoll before running
    /// it: after [`EVENT_INTERVAL`] tasks in a row, or [`POLL_GAP_NANOS`] since the last poll.
    #[inline]
    pub fn poll_due(&self) -> bool {
        self.task_run() >= EVENT_INTERVAL
            || clock::nanos().saturating_sub(self.last_poll.load(Ordering::Relaxed))
                >= POLL_GAP_NANOS
    }

    /// Records a poll: the run of queued tasks before it ends.
    #[inline]
    pub fn polled(&self) {
        self.last_poll.store(clock::nanos(), Ordering::Relaxed);
        let gap = self.since_poll.swap(0, Ordering::Relaxed);
        if gap > self.longest_poll_gap.load(Ordering::Relaxed) {
            self.longest_poll_gap.fetch_max(gap, Ordering::Relaxed);
        }
    }

    /// Counts a connection closed by the shutdown.
    pub fn count_shutdown(&self, reason: &CloseReason) {
        match reason {
            CloseReason::Shutdown { flushed: true } => &self.drained,
            CloseReason::Shutdown { flushed: false } => &self.abandoned,
            CloseReason::ProxyRefused(_) => &self.proxy_refused,
            CloseReason::ProxyHeaderTimeout => &self.proxy_timed_out,
            _ => return,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}
