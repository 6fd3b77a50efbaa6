//! One connection: its stream, its claim state, and the [`Link`] behind its [`Socket`](crate::Socket)s.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, MutexGuard};

use crate::ConnectionInfo;
use crate::Stream;
use crate::config::OutboundPolicy;
use crate::group::{Members, Membership};
use crate::handler::CloseReason;
use crate::net::PeerAddr;
use crate::proxy::ProxyHeader;
use crate::runtime::buffers::{Buffers, PAUSE_FLOOR};
use crate::runtime::clock;
use crate::runtime::queue::{Queue, Task};
use crate::runtime::table::Keyed;
use crate::runtime::telemetry;
use crate::socket::{Link, SendError};
use crate::stream::TlsInfo;

thread_local! {
    /// Id of the connection whose callbacks this thread is running (0: none). A send to that
    /// connection is only queued: its owner flushes every reply at once when the callback returns.
    static RUNNING: Cell<u64> = const { Cell::new(0) };
    /// The queue of the server whose worker this thread is (its address; 0: not a worker),
    /// and the flushes that broadcasts from its callbacks asked for, sent when the batch of
    /// callbacks is over ([`send_deferred_flushes`]): the members' writes then carry the whole
    /// batch's frames, and the other workers are woken once, not once per member.
    static WORKER_QUEUE: Cell<usize> = const { Cell::new(0) };
    static DEFERRED_FLUSHES: RefCell<Vec<Task>> = const { RefCell::new(Vec::new()) };
}

/// Marks this thread as a worker of the server with `queue`.
pub(crate) fn set_worker_queue(queue: &Arc<Queue>) {
    WORKER_QUEUE.set(Arc::as_ptr(queue) as usize);
}

/// Queues the flushes the last batch of callbacks deferred.
pub(crate) fn send_deferred_flushes(queue: &Queue) {
    DEFERRED_FLUSHES.with_borrow_mut(|tasks| {
        if tasks.is_empty() {
            return;
        }
        for task in tasks.drain(..) {
            queue.push_local(task);
        }
        queue.notifier().notify();
    });
}

/// Marks this thread as running callbacks of connection `id` until the guard drops.
pub(crate) struct RunningGuard(u64);

impl RunningGuard {
    pub fn enter(id: u64) -> RunningGuard {
        RunningGuard(RUNNING.replace(id))
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        RUNNING.set(self.0);
    }
}

/// Who may drive a connection. The connection is driven only by the thread that moved it to
/// `Running`, from then until it sets `Idle` or `Queued` again; everything else that wants the
/// connection driven (an epoll event, a close from another thread) either claims it, if idle,
/// schedules a turn, or leaves a note for the owner.
///
/// | from           | event                                   | to             |
/// |----------------|-----------------------------------------|----------------|
/// | `Idle`         | an epoll event: a worker claims it      | `Running`      |
/// | `Idle`         | a request: a turn is queued ([`nudge`](State::nudge)) | `Queued` |
/// | `Queued`       | the queued turn is taken                | `Running`      |
/// | `Queued`       | an epoll event or a request             | `Queued` (the queued turn reads until drained) |
/// | `Running`      | event / request meanwhile               | `RunningAgain` |
/// | `RunningAgain` | owner starts another round              | `Running`      |
/// | `Running`      | owner finishes its turn                 | `Idle`         |
/// | `Running`/`RunningAgain` | owner stops early with work left, and queues a turn | `Queued` |
///
/// Every transition happens under the connection's lock, so a request that lands just as the
/// owner finishes is either seen by the owner (`RunningAgain`) or finds the connection `Idle`
/// and is scheduled: a wake-up is never lost. `Queued` keeps a connection that went to the back
/// of the queue from being driven again by each epoll event meanwhile, so the poll that comes
/// between runs of queued work serves the connections that were waiting, not the busy ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    Idle,
    Queued,
    Running,
    RunningAgain,
}

/// The mutable part of a connection, under its lock.
pub(crate) struct State<S> {
    /// `None` once the connection is closed: the socket is out of epoll and closed.
    pub stream: Option<S>,
    pub claim: Claim,
    /// The peer closed its side: nothing more to read, close once the output is written.
    pub read_closed: bool,
    /// epoll reported a hang-up or an error: no more data will arrive, so a short read does
    /// not mean the end was seen; read until the stream reports it.
    pub hangup: bool,
    /// The peer sent urgent data (epoll reported `EPOLLPRI`). Reads stop short at an urgent
    /// mark, so from then on a short read does not mean drained either: like `hangup`, read
    /// until the stream reports `WouldBlock`. The urgent byte itself is dropped by the kernel
    /// (no `SO_OOBINLINE`); the bytes around it stay in order.
    pub urgent: bool,
    /// Bytes the stream held at the last count (see [`Buffers`]).
    pub held: usize,
    /// Not read while the server is over `max_buffered`: this connection held too much.
    pub read_paused: bool,
    /// Set when the connection must close at the owner's next look (a local close, or an
    /// error seen by a thread that was not the owner).
    pub closing: Option<CloseReason>,
    /// The groups the connection is in, to leave them when it closes (allocated on the first
    /// join).
    pub groups: Option<Box<Memberships>>,
    /// Frames queued to the connection (sends and broadcasts), for introspection: counted
    /// under the lock every send takes anyway, so a send pays no atomic for it.
    pub frames_out: u64,
}

/// The groups a connection is in (boxed in [`State`], which most connections leave empty).
#[derive(Debug, Default)]
pub(crate) struct Memberships(pub Vec<Membership>);

/// What the owner of a connection does once a round of its turn is over
/// ([`State::finish_round`]).
#[derive(Debug)]
pub(crate) enum Next {
    /// Something happened during the round: go round once more (the claim stays `Running`).
    Again,
    /// Nothing left to do: the connection is `Idle` until the next event or request.
    Release,
    /// Work is left, but the turn is over: the connection is `Queued` and the owner must queue
    /// a turn for it, after unlocking.
    Requeue,
    /// The connection must close now, for this reason; the owner finalizes it.
    Close(CloseReason),
}

impl<S> State<S> {
    /// A connection's state as it opens: nothing seen yet, nothing held.
    pub fn new(stream: S, claim: Claim) -> State<S> {
        State {
            stream: Some(stream),
            claim,
            read_closed: false,
            hangup: false,
            urgent: false,
            held: 0,
            read_paused: false,
            closing: None,
            groups: None,
            frames_out: 0,
        }
    }

    /// An epoll event for the connection: records what it reported and returns `true` if the
    /// caller now owns the connection (it was `Idle`), or leaves the owner a note. A
    /// connection with a turn queued is left alone: that turn reads until drained.
    #[inline]
    pub fn claim_for_event(&mut self, hangup: bool, urgent: bool) -> bool {
        if self.stream.is_none() {
            return false;
        }
        self.hangup |= hangup;
        self.urgent |= urgent;
        match self.claim {
            Claim::Idle => {
                self.claim = Claim::Running;
                true
            }
            Claim::Queued | Claim::RunningAgain => false,
            Claim::Running => {
                self.claim = Claim::RunningAgain;
                false
            }
        }
    }

    /// A queued turn is taken: returns `true` if the caller now owns the connection, or leaves
    /// the owner a note if another thread got to it first.
    #[inline]
    pub fn claim_for_turn(&mut self) -> bool {
        if self.stream.is_none() {
            return false;
        }
        match self.claim {
            Claim::Idle | Claim::Queued => {
                self.claim = Claim::Running;
                true
            }
            Claim::RunningAgain => false,
            Claim::Running => {
                self.claim = Claim::RunningAgain;
                false
            }
        }
    }

    /// Asks for a turn: returns `true` if the connection was idle and the caller must now
    /// schedule one (it is marked `Queued`), or returns `false` if a turn is queued already or
    /// the running owner was left a note. Use [`Conn::request`], which schedules after
    /// unlocking.
    #[inline]
    pub fn nudge(&mut self) -> bool {
        match self.claim {
            Claim::Idle => {
                self.claim = Claim::Queued;
                true
            }
            Claim::Running => {
                self.claim = Claim::RunningAgain;
                false
            }
            Claim::Queued | Claim::RunningAgain => false,
        }
    }

    /// Ends a round of the owner's turn, after its output was written as far as the socket
    /// took it: decides whether the connection closes, goes round again, is let go or goes to
    /// the back of the queue.
    ///
    /// - `pending_output`: the stream still holds output;
    /// - `busy`: work is in flight (frames on the blocking pool or waiting for it, or a
    ///   [`Hold`](crate::Hold)), so neither the peer's close nor the drain closes it yet;
    /// - `draining`: the server is draining, so a connection whose output is all written
    ///   closes;
    /// - `more`: the round stopped at its read budget with input left;
    /// - `may_go_again`: the turn has rounds left.
    ///
    /// A connection paused for memory is not read again until resumed (after a hang-up it is:
    /// what is left in the socket is bounded, and reading it lets the close free the memory),
    /// nor is one paused by the application or blocked on a full pool (`blocked`).
    pub fn finish_round(&mut self, round: Round) -> Next {
        let Round {
            pending_output,
            busy,
            draining,
            more,
            blocked,
            may_go_again,
        } = round;
        if self.closing.is_none() && !pending_output && !busy {
            if draining {
                self.closing = Some(CloseReason::Shutdown { flushed: true });
            } else if self.read_closed {
                self.closing = Some(CloseReason::PeerClosed);
            }
        }
        if let Some(reason) = self.closing.take() {
            return Next::Close(reason);
        }
        let more = more && !blocked && (self.hangup || !self.read_paused);
        if self.claim == Claim::RunningAgain && may_go_again && !more {
            self.claim = Claim::Running;
            return Next::Again;
        }
        // Stopped early with input left, or still wanted after the last round: go to the back
        // of the queue so other connections get their turn first.
        if more || self.claim == Claim::RunningAgain {
            self.claim = Claim::Queued;
            Next::Requeue
        } else {
            self.claim = Claim::Idle;
            Next::Release
        }
    }
}

/// What the owner saw at the end of a round, for [`State::finish_round`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Round {
    pub pending_output: bool,
    pub busy: bool,
    pub draining: bool,
    pub more: bool,
    pub blocked: bool,
    pub may_go_again: bool,
}

/// Frames of a connection not yet handed to the handler: queued behind work on the blocking
/// pool, or read before the application paused reading. Under its own lock, apart from the
/// [`State`], and held only to move frames in or out.
#[derive(Debug, Default)]
pub(crate) struct Work {
    /// In arrival order; they go before anything read later.
    pub frames: VecDeque<Box<[u8]>>,
    /// A pool job for this connection is queued or running: it, and only it, delivers
    /// `frames` until it clears this.
    pub offloaded: bool,
    /// The connection closed while `offloaded`: the pool job calls
    /// `on_connection_removed` with this reason once its callback returns.
    pub removal: Option<CloseReason>,
}

impl Work {
    const EMPTY: Work = Work {
        frames: VecDeque::new(),
        offloaded: false,
        removal: None,
    };

    fn busy(&self) -> bool {
        self.offloaded || !self.frames.is_empty() || self.removal.is_some()
    }
}

/// A connection's [`Work`], locked ([`Conn::lock_work`]).
pub(crate) struct WorkGuard<'a> {
    work: MutexGuard<'a, Option<Box<Work>>>,
    hint: &'a AtomicBool,
}

impl std::ops::Deref for WorkGuard<'_> {
    type Target = Work;

    fn deref(&self) -> &Work {
        static EMPTY: Work = Work::EMPTY;
        self.work.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for WorkGuard<'_> {
    fn deref_mut(&mut self) -> &mut Work {
        self.work.get_or_insert_with(Box::default)
    }
}

impl Drop for WorkGuard<'_> {
    fn drop(&mut self) {
        let busy = self.work.as_ref().is_some_and(|work| work.busy());
        if !busy {
            *self.work = None;
        }
        self.hint.store(busy, Ordering::Release);
    }
}

/// A pull of group frames stops once the stream holds this much output.
pub(crate) const PULL_WINDOW: usize = 64 * 1024;
/// Pulls in one write, while the socket takes everything, before the rest waits its turn.
const PULL_ROUNDS: usize = 4;

/// Per-connection copies of the send limits, so a send needs nothing but the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_outbound: usize,
    pub policy: OutboundPolicy,
}

/// A connection's PROXY header and the client address taken from it.
#[derive(Debug)]
struct Proxied {
    header: ProxyHeader,
    client: PeerAddr,
}

/// One connection: fixed facts, the locked [`State`], and the handler's session.
pub(crate) struct Conn<S, U> {
    pub id: u64,
    pub slot: usize,
    /// The socket's peer: with the PROXY protocol, the proxy (see [`addr`](Conn::addr)).
    pub peer: PeerAddr,
    pub fd: RawFd,
    pub state: Mutex<State<S>>,
    /// The handler's session. Locked only by whoever runs the connection's callbacks (the
    /// owner, or the pool job while `Work::offloaded`), one at a time, so never contended.
    pub session: Mutex<U>,
    /// Frames waiting for the pool or for reading to resume: allocated only while there are
    /// some, so a connection that never offloads nor pauses pays a pointer. Use
    /// [`lock_work`](Conn::lock_work).
    work: Mutex<Option<Box<Work>>>,
    /// `work` holds frames or is offloaded: read without the lock on every turn.
    work_hint: AtomicBool,
    /// The application paused reading ([`Socket::pause_reading`](crate::Socket::pause_reading)):
    /// set and cleared under the state lock, read between frames without it.
    paused_hint: AtomicBool,
    /// [`Hold`](crate::Hold)s the application keeps on the connection.
    holds: AtomicU32,
    /// Frames handed to the handler, for introspection (frames out are in [`State`]).
    pub frames_in: AtomicU64,
    /// A flush task is queued for broadcast frames ([`Task::Flush`]): later ones ride on it.
    flush_wanted: AtomicBool,
    /// Set, besides `State::closing`, once a close is requested: the owner reads it between
    /// frames without taking the lock, to stop delivering a batch to a closed connection.
    closing_hint: AtomicBool,
    /// Coarse time ([`clock::now`]) bytes last moved, for the idle timeout.
    pub last_active: AtomicU64,
    /// Coarse time the stream started holding an incomplete frame, 0 when it holds none.
    pub partial_since: AtomicU64,
    /// Coarse time the connection was accepted while its stream is not established yet (a TLS
    /// handshake under way), 0 once it is: the handler has been told
    /// (`on_connection_opened`) exactly when this is 0. Set by the owner only.
    establishing_since: AtomicU64,
    /// What the stream learned while being established ([`Stream::tls_info`]), set once
    /// before the handler is told of the connection.
    tls: OnceLock<Box<TlsInfo>>,
    /// The PROXY header the connection began with, and the client it names; set once, by the
    /// owner, before the handler is told of the connection.
    proxy: OnceLock<Box<Proxied>>,
    /// The PROXY header has not been read yet (`Config::proxy_protocol`): the connection is
    /// establishing, and its socket's first bytes are the header's.
    header_pending: AtomicBool,
    /// The outbound budget and what to do past it (copied from the `Config`).
    limits: Limits,
    /// Where to schedule a turn. Weak, so a handle kept after the server stops does not keep
    /// the server's descriptors open.
    queue: Weak<Queue>,
    /// The server-wide byte count this connection's buffers are part of.
    pub buffers: Arc<Buffers>,
}

impl<S: Stream, U: Default> Conn<S, U> {
    /// A new connection, claimed (`Running`) by the thread that accepted it.
    pub fn new(
        id: u64,
        slot: usize,
        peer: PeerAddr,
        stream: S,
        queue: Weak<Queue>,
        limits: Limits,
        buffers: Arc<Buffers>,
    ) -> Conn<S, U> {
        use std::os::fd::AsRawFd;
        Conn {
            id,
            slot,
            peer,
            fd: stream.as_fd().as_raw_fd(),
            state: Mutex::new(State::new(stream, Claim::Running)),
            session: Mutex::new(U::default()),
            work: Mutex::new(None),
            work_hint: AtomicBool::new(false),
            paused_hint: AtomicBool::new(false),
            holds: AtomicU32::new(0),
            flush_wanted: AtomicBool::new(false),
            frames_in: AtomicU64::new(0),
            closing_hint: AtomicBool::new(false),
            last_active: AtomicU64::new(clock::now()),
            partial_since: AtomicU64::new(0),
            establishing_since: AtomicU64::new(0),
            tls: OnceLock::new(),
            proxy: OnceLock::new(),
            header_pending: AtomicBool::new(false),
            limits,
            queue,
            buffers,
        }
    }

    /// Takes the session, for `on_connection_removed`.
    pub fn take_session(&self) -> U {
        std::mem::take(&mut *self.session.lock())
    }
}

impl<S: Stream, U> Conn<S, U> {
    /// Whether frames wait in [`Work`] or a pool job runs for the connection (a hint, read
    /// without the lock; exact for the owner, which alone adds frames).
    #[inline]
    pub fn has_work(&self) -> bool {
        self.work_hint.load(Ordering::Acquire)
    }

    /// Locks the connection's [`Work`]; unlocking updates the hint and frees the queue once
    /// it holds nothing.
    #[inline]
    pub fn lock_work(&self) -> WorkGuard<'_> {
        WorkGuard {
            work: self.work.lock(),
            hint: &self.work_hint,
        }
    }

    /// Whether the application paused reading (a hint, read without the lock).
    #[inline]
    pub fn reading_paused(&self) -> bool {
        self.paused_hint.load(Ordering::Acquire)
    }

    /// Work in flight that keeps the connection open after the peer's close, and through
    /// the drain: frames not yet handled, a pool job, or a [`Hold`](crate::Hold).
    #[inline]
    pub fn busy(&self) -> bool {
        self.has_work() || self.holds.load(Ordering::Acquire) > 0
    }

    /// Counts what the stream holds now against `max_buffered`.
    #[inline]
    pub fn account(&self, state: &mut State<S>) {
        if let Some(stream) = state.stream.as_ref() {
            let now = stream.buffered_input() + stream.pending_output();
            self.buffers.set(&mut state.held, now);
        }
    }

    /// Records why the connection must close, unless a reason is already recorded.
    pub fn set_closing(&self, state: &mut State<S>, reason: CloseReason) {
        if state.closing.is_none() {
            state.closing = Some(reason);
            self.closing_hint.store(true, Ordering::Release);
        }
    }

    /// Whether a close was requested (a hint, read without the lock).
    #[inline]
    pub fn closing_requested(&self) -> bool {
        self.closing_hint.load(Ordering::Acquire)
    }

    /// Whether the handler knows of the connection (`on_connection_opened` was called, or is
    /// being called): its stream was established. Exact for the owner, which alone sets it.
    #[inline]
    pub fn is_opened(&self) -> bool {
        self.establishing_since.load(Ordering::Acquire) == 0
    }

    /// When the connection began establishing, 0 once established (for the handshake
    /// timeout).
    #[inline]
    pub fn establishing_since(&self) -> u64 {
        self.establishing_since.load(Ordering::Relaxed)
    }

    /// Marks a connection just accepted as not established yet: its stream is in its opening
    /// phase (a TLS handshake) since `now`.
    pub fn begin_establishing(&self, now: u64) {
        self.establishing_since.store(now.max(1), Ordering::Release);
    }

    /// The client's address: the one its PROXY header gave, or the socket's peer.
    pub fn addr(&self) -> &PeerAddr {
        self.proxy
            .get()
            .map_or(&self.peer, |proxied| &proxied.client)
    }

    /// Marks a connection just accepted as waiting for its PROXY header (before
    /// [`begin_establishing`](Conn::begin_establishing)).
    pub fn expect_header(&self) {
        self.header_pending.store(true, Ordering::Release);
    }

    /// The socket's peer (the proxy) once a PROXY header was read, `LOCAL` included.
    pub fn proxy_addr(&self) -> Option<&PeerAddr> {
        self.proxy.get().map(|_| &self.peer)
    }

    /// Whether the PROXY header is still to be read.
    pub fn header_pending(&self) -> bool {
        self.header_pending.load(Ordering::Acquire)
    }

    /// Records the PROXY header read (by the owner, once).
    pub fn set_header(&self, header: ProxyHeader) {
        let client = header
            .source()
            .map_or_else(|| self.peer.clone(), PeerAddr::Tcp);
        let _ = self.proxy.set(Box::new(Proxied { header, client }));
        self.header_pending.store(false, Ordering::Release);
    }

    /// Records what the stream learned while being established (once; a second call is
    /// ignored).
    pub fn set_tls_info(&self, tls: TlsInfo) {
        let _ = self.tls.set(Box::new(tls));
    }

    /// Records that the stream is established, with what it learned on the way: from now on
    /// the connection is the handler's. Returns `false` if it was already.
    pub fn mark_established(&self, tls: Option<TlsInfo>) -> bool {
        if self.is_opened() {
            return false;
        }
        if let Some(tls) = tls {
            self.set_tls_info(tls);
        }
        self.establishing_since.store(0, Ordering::Release);
        true
    }

    /// Records that bytes moved (for the idle timeout).
    #[inline]
    pub fn touch(&self) {
        self.last_active.store(clock::now(), Ordering::Relaxed);
    }

    /// A request from a thread that may not own the connection: locks it, applies `change`,
    /// and, if `change` returns `true`, makes sure a worker acts on it (a note for the owner,
    /// or a queued turn, scheduled after unlocking: nothing is woken under the lock). Returns
    /// what `change` returned; a closed connection is left alone (`false`).
    pub fn request(&self, change: impl FnOnce(&Self, &mut State<S>) -> bool) -> bool {
        let mut state = self.state.lock();
        if state.stream.is_none() || !change(self, &mut state) {
            return false;
        }
        self.submit(state);
        true
    }

    /// Finishes a request made with the lock held: nudges, unlocks, then schedules.
    fn submit(&self, mut state: MutexGuard<'_, State<S>>) {
        let schedule = state.nudge();
        drop(state);
        if schedule {
            self.schedule();
        }
    }

    /// Closes the connection from a thread that may not own it, with the lock held: records
    /// the reason (unless one is recorded already) and makes sure a worker acts on it.
    pub fn close_locked(&self, mut state: MutexGuard<'_, State<S>>, reason: CloseReason) {
        self.set_closing(&mut state, reason);
        self.submit(state);
    }

    /// Schedules a turn on a worker.
    fn schedule(&self) {
        if let Some(queue) = self.queue.upgrade() {
            queue.push(Task::Conn {
                slot: self.slot,
                id: self.id,
            });
        }
    }

    /// A queued flush is about to run: broadcasts from now on queue another.
    #[inline]
    pub fn flush_taken(&self) {
        self.flush_wanted.store(false, Ordering::Release);
    }

    /// Queues a flush task ([`Task::Flush`]): from a callback on a worker of this server, at
    /// the end of its batch; else at once.
    fn queue_flush(&self) {
        let task = Task::Flush {
            slot: self.slot,
            id: self.id,
        };
        if RUNNING.get() != 0 && WORKER_QUEUE.get() == Weak::as_ptr(&self.queue) as usize {
            DEFERRED_FLUSHES.with_borrow_mut(|tasks| tasks.push(task));
        } else if let Some(queue) = self.queue.upgrade() {
            queue.push(task);
        }
    }

    /// Group frames are left for the connection after a write that emptied its stream: a
    /// flush task takes them (unless one is queued already), after the connections queued
    /// before it.
    pub fn flush_again(&self) {
        if !self.flush_wanted.swap(true, Ordering::AcqRel) {
            self.queue_flush();
        }
    }

    /// Moves the frames broadcast to the connection's groups, and not yet taken, into its
    /// stream, until it holds `window` bytes (see [`group::pull`](crate::group::pull));
    /// returns whether some are left.
    pub fn pull_groups(&self, state: &mut State<S>, window: usize) -> bool
    where
        S: Stream,
    {
        let (Some(groups), Some(stream)) = (state.groups.as_deref(), state.stream.as_mut()) else {
            return false;
        };
        let pulled = crate::group::pull(stream, self.id, &groups.0, window);
        if pulled.frames > 0 {
            state.frames_out += pulled.frames;
            let telemetry = telemetry::get();
            telemetry.frames_out.increment(pulled.frames);
            telemetry.bytes_out.increment(pulled.bytes);
        }
        pulled.more
    }

    /// Pulls group frames and writes, in up to [`PULL_ROUNDS`] rounds of [`PULL_WINDOW`]
    /// bytes while the socket takes everything. Returns whether group frames are left with
    /// the stream written out (the caller arranges [`flush_again`](Conn::flush_again)).
    pub fn pull_and_flush(&self, state: &mut State<S>) -> io::Result<bool>
    where
        S: Stream,
    {
        for _ in 0..PULL_ROUNDS {
            let more = self.pull_groups(state, PULL_WINDOW);
            let Some(stream) = state.stream.as_mut() else {
                return Ok(false);
            };
            if stream.has_pending_output() {
                stream.flush()?;
            }
            if !more || stream.has_pending_output() {
                return Ok(false); // nothing left, or the writable edge comes back for it
            }
        }
        Ok(true)
    }

    /// Queues a turn for a connection its owner just marked `Queued` ([`Next::Requeue`]).
    pub fn requeue(&self) {
        self.schedule();
    }
}

impl<S: Stream, U> Conn<S, U> {
    /// A snapshot of the connection for [`ShutdownHandle::connections`](crate::ShutdownHandle::connections);
    /// `None` once closed.
    pub fn info(&self, now: u64) -> Option<ConnectionInfo> {
        let state = self.state.lock();
        let stream = state.stream.as_ref()?;
        let idle = now.saturating_sub(self.last_active.load(Ordering::Relaxed));
        Some(ConnectionInfo {
            id: self.id,
            peer: self.addr().clone(),
            queued_bytes: stream.pending_output(),
            group_backlog: state
                .groups
                .as_ref()
                .map_or(0, |g| crate::group::backlog(&g.0)),
            idle: std::time::Duration::from_millis(idle),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: state.frames_out,
            groups: state.groups.as_ref().map_or(0, |g| g.0.len()),
            reading_paused: self.reading_paused(),
            closing: state.closing.is_some(),
        })
    }
}

impl<S, U> Keyed for Conn<S, U> {
    fn id(&self) -> u64 {
        self.id
    }
}

impl<S: Stream, U: Send + 'static> Link for Conn<S, U> {
    fn id(&self) -> u64 {
        self.id
    }

    fn peer_addr(&self) -> PeerAddr {
        self.addr().clone()
    }

    fn proxy_header(&self) -> Option<&ProxyHeader> {
        self.proxy.get().map(|proxied| &proxied.header)
    }

    fn proxy_addr(&self) -> Option<&PeerAddr> {
        self.proxy.get().map(|_| &self.peer)
    }

    fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.get().map(|tls| &**tls)
    }

    fn send(&self, frame: &[u8]) -> Result<(), SendError> {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return Err(SendError::Closed);
        }
        // Frames broadcast before this send go before it.
        self.pull_groups(&mut state, usize::MAX);
        // One borrow of the guard, so the stream and the count are borrowed apart.
        let fields = &mut *state;
        let Some(stream) = fields.stream.as_mut() else {
            return Err(SendError::Closed);
        };
        let over = |queued: usize| queued > 0 && queued + frame.len() > self.limits.max_outbound;
        if over(stream.pending_output()) {
            // Make room if the socket takes anything, before calling the peer slow.
            let flushed = stream.flush();
            if flushed.is_err() || over(stream.pending_output()) {
                let reason = match flushed {
                    Err(err) => CloseReason::from_io(err),
                    Ok(()) if self.limits.policy == OutboundPolicy::Reject => {
                        return Err(SendError::QueueFull);
                    }
                    Ok(()) => CloseReason::SlowConsumer,
                };
                tracing::debug!(conn = self.id, %reason, "closing on send");
                self.close_locked(state, reason);
                return Err(SendError::Closed);
            }
        }
        stream.send(frame).map_err(SendError::Rejected)?;
        fields.frames_out += 1;
        let telemetry = telemetry::get();
        telemetry.frames_out.increment(1);
        telemetry.bytes_out.increment(frame.len() as u64);
        if RUNNING.get() == self.id {
            // Our own callback: the owner flushes when the callback returns.
            return Ok(());
        }
        // Another thread, or another connection's callback. The lock makes this thread the only
        // writer for now, whoever owns the turn; write at once. If the socket is full, the
        // kernel reports it writable later and a worker flushes the rest.
        match stream.flush() {
            Ok(()) => {
                self.touch();
                self.account(&mut state);
                if self.buffers.over_hard() && state.held > PAUSE_FLOOR {
                    // Far past the ceiling, and this queue is among the big ones.
                    tracing::debug!(
                        conn = self.id,
                        held = state.held,
                        "closing on send: max_buffered"
                    );
                    self.close_locked(state, CloseReason::MaxBuffered);
                    return Err(SendError::Closed);
                }
                Ok(())
            }
            Err(err) => {
                tracing::debug!(conn = self.id, error = %err, "write failed");
                self.close_locked(state, CloseReason::from_io(err));
                Err(SendError::Closed)
            }
        }
    }

    fn close(&self) {
        self.request(|conn, state| {
            if state.closing.is_some() {
                return false;
            }
            conn.set_closing(state, CloseReason::Local);
            true
        });
    }

    fn is_closed(&self) -> bool {
        let state = self.state.lock();
        state.stream.is_none() || state.closing.is_some()
    }

    fn pause_reading(&self) {
        // Read under the state lock by the owner (before a read, and at the round's end), so
        // a pause is seen by the next round at the latest.
        let _state = self.state.lock();
        self.paused_hint.store(true, Ordering::Release);
    }

    fn resume_reading(&self) {
        // A turn, which reads: what arrived while paused raised no new edge, and frames read
        // before the pause may wait in `work`.
        self.request(|conn, _| conn.paused_hint.swap(false, Ordering::AcqRel) || conn.has_work());
    }

    fn hold(&self) {
        self.holds.fetch_add(1, Ordering::AcqRel);
    }

    fn release(&self) {
        if self.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last hold: a turn decides whether the connection closes now.
            self.request(|_, _| true);
        }
    }

    fn group_ready(&self) {
        if RUNNING.get() == self.id {
            return; // its own callback: the owner takes the frames when it writes
        }
        // Taken by a worker, not here: a broadcast never waits on a member's socket, and
        // frames broadcast before that flush runs go out with it, in one vectored write.
        if self.flush_wanted.load(Ordering::Relaxed)
            || self.flush_wanted.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.queue_flush();
    }

    fn close_slow(&self) {
        self.request(|conn, state| {
            if state.closing.is_some() {
                return false;
            }
            conn.set_closing(state, CloseReason::SlowConsumer);
            true
        });
    }

    fn join_group(&self, membership: Membership) -> bool {
        let mut state = self.state.lock();
        if state.stream.is_none() || state.closing.is_some() {
            return false;
        }
        state.groups.get_or_insert_default().0.push(membership);
        true
    }

    fn leave_group(&self, group: &Arc<Members>) {
        let mut state = self.state.lock();
        if let Some(groups) = state.groups.as_mut() {
            groups
                .0
                .retain(|m| !std::ptr::eq(m.group.as_ptr(), Arc::as_ptr(group)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(claim: Claim) -> State<()> {
        State::new((), claim)
    }

    fn round(pending_output: bool, draining: bool, more: bool, may_go_again: bool) -> Round {
        Round {
            pending_output,
            draining,
            more,
            may_go_again,
            ..Round::default()
        }
    }

    /// A request schedules a turn only for an idle connection, and marks it queued so that
    /// later requests (and epoll events) do not queue or run it again.
    #[test]
    fn nudge_schedules_once() {
        let mut s = state(Claim::Idle);
        assert!(s.nudge(), "idle: the caller schedules");
        assert_eq!(s.claim, Claim::Queued);
        assert!(!s.nudge(), "queued already");
        assert_eq!(s.claim, Claim::Queued);

        let mut s = state(Claim::Running);
        assert!(!s.nudge(), "running: a note for the owner");
        assert_eq!(s.claim, Claim::RunningAgain);
        assert!(!s.nudge());
        assert_eq!(s.claim, Claim::RunningAgain);
    }

    #[test]
    fn an_event_claims_only_an_idle_connection() {
        let mut s = state(Claim::Idle);
        assert!(s.claim_for_event(false, false));
        assert_eq!(s.claim, Claim::Running);
        assert!(!s.claim_for_event(true, false), "running: a note");
        assert_eq!(s.claim, Claim::RunningAgain);
        assert!(s.hangup, "the note keeps what epoll reported");
        assert!(!s.claim_for_event(false, true));
        assert_eq!(s.claim, Claim::RunningAgain);
        assert!(s.urgent);

        let mut s = state(Claim::Queued);
        assert!(!s.claim_for_event(false, false), "a queued turn will read");
        assert_eq!(s.claim, Claim::Queued);

        let mut s = state(Claim::Idle);
        s.stream = None;
        assert!(!s.claim_for_event(true, true), "closed: nothing to claim");
        assert_eq!(s.claim, Claim::Idle);
    }

    #[test]
    fn a_queued_turn_claims_unless_someone_runs_it() {
        for from in [Claim::Idle, Claim::Queued] {
            let mut s = state(from);
            assert!(s.claim_for_turn(), "{from:?}");
            assert_eq!(s.claim, Claim::Running);
        }
        let mut s = state(Claim::Running);
        assert!(!s.claim_for_turn());
        assert_eq!(s.claim, Claim::RunningAgain);
        let mut s = state(Claim::RunningAgain);
        assert!(!s.claim_for_turn());
        assert_eq!(s.claim, Claim::RunningAgain);
        let mut s = state(Claim::Queued);
        s.stream = None;
        assert!(!s.claim_for_turn());
    }

    #[test]
    fn finish_round_goes_again_releases_requeues_or_closes() {
        // Nothing happened meanwhile: let go.
        let mut s = state(Claim::Running);
        assert!(matches!(
            s.finish_round(round(false, false, false, true)),
            Next::Release
        ));
        assert_eq!(s.claim, Claim::Idle);

        // A note: once more, while rounds are left.
        let mut s = state(Claim::RunningAgain);
        assert!(matches!(
            s.finish_round(round(false, false, false, true)),
            Next::Again
        ));
        assert_eq!(s.claim, Claim::Running);
        let mut s = state(Claim::RunningAgain);
        assert!(matches!(
            s.finish_round(round(false, false, false, false)),
            Next::Requeue
        ));
        assert_eq!(s.claim, Claim::Queued);

        // Input left at the read budget: the back of the queue, note or not.
        for from in [Claim::Running, Claim::RunningAgain] {
            let mut s = state(from);
            assert!(matches!(
                s.finish_round(round(false, false, true, true)),
                Next::Requeue
            ));
            assert_eq!(s.claim, Claim::Queued);
        }

        // Paused for memory: input left is not a reason to come back, unless hung up.
        let mut s = state(Claim::Running);
        s.read_paused = true;
        assert!(matches!(
            s.finish_round(round(false, false, true, true)),
            Next::Release
        ));
        let mut s = state(Claim::Running);
        s.read_paused = true;
        s.hangup = true;
        assert!(matches!(
            s.finish_round(round(false, false, true, true)),
            Next::Requeue
        ));

        // Work in flight (pool, hold): neither the peer's close nor the drain closes it yet.
        let mut s = state(Claim::Running);
        s.read_closed = true;
        let busy = Round {
            busy: true,
            ..round(false, true, false, true)
        };
        assert!(matches!(s.finish_round(busy), Next::Release));
        // Paused by the application or blocked on a full pool (the owner passes either as
        // `blocked`): input left does not requeue.
        let mut s = state(Claim::Running);
        let blocked = Round {
            blocked: true,
            ..round(false, false, true, true)
        };
        assert!(matches!(s.finish_round(blocked), Next::Release));

        // Closes: a recorded reason first, then the peer's close or the drain once written.
        let mut s = state(Claim::RunningAgain);
        s.closing = Some(CloseReason::Local);
        assert!(matches!(
            s.finish_round(round(true, true, true, true)),
            Next::Close(CloseReason::Local)
        ),);
        let mut s = state(Claim::Running);
        s.read_closed = true;
        assert!(matches!(
            s.finish_round(round(false, false, false, true)),
            Next::Close(CloseReason::PeerClosed)
        ),);
        let mut s = state(Claim::Running);
        s.read_closed = true;
        assert!(
            matches!(
                s.finish_round(round(true, false, false, true)),
                Next::Release
            ),
            "the peer closed, but output is left to write"
        );
        let mut s = state(Claim::Running);
        assert!(matches!(
            s.finish_round(round(false, true, false, true)),
            Next::Close(CloseReason::Shutdown { flushed: true })
        ),);
        let mut s = state(Claim::Running);
        assert!(
            matches!(
                s.finish_round(round(true, true, false, true)),
                Next::Release
            ),
            "draining, but output is left to write"
        );
    }
}
