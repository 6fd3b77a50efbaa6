//! The worker loop: wait on epoll, claim connections, drive their streams, run callbacks.
//!
//! The workers share one epoll instance in leader/follower fashion (see [`Worker::run`]): the
//! worker that receives an event for an idle connection claims it and drives it to the end of
//! its turn. Sockets are registered edge-triggered, so a turn must
//! read until the stream reports `Drained` (or schedule another turn), and any event that
//! arrives while a turn is running leaves a note (`Claim::RunningAgain`) that makes the owner
//! go round once more before it lets go.

use std::any::Any;
use std::io;
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::handler::CloseReason;
use crate::runtime::clock;
use crate::runtime::conn::{Conn, Next, Round, RunningGuard, State};
use crate::runtime::queue::Task;
use crate::runtime::shared::{ConnOf, Core};
#[cfg(doc)]
use crate::runtime::shared::{EVENT_INTERVAL, POLL_GAP_NANOS};
use crate::runtime::{header, table};
use crate::sys::epoll::{Event, Events};
use crate::{Frames, Handler, RecvStatus, Socket, Stream, Transport};

/// Events taken from epoll per wait; all but the first go to the queue for the other workers.
const EVENT_BATCH: usize = 32;
/// Rounds one turn may take (each round reads until drained) before the connection is sent to
/// the back of the queue.
const MAX_ROUNDS: usize = 8;
/// A worker keeps at most this much frame buffer between turns.
const FRAMES_KEEP: usize = 256 * 1024;
/// Frames delivered between two hand-offs of the writes their broadcasts asked for.
const FLUSH_EVERY: u64 = 16;
/// Extra reads a round may make after a short one, when a short read does not mean drained
/// (after a hang-up or urgent data).
const EXTRA_READS: usize = 4;

/// One worker thread's loop and its reusable buffers.
pub(crate) struct Worker<'a, T: Transport, H: Handler> {
    pub(crate) core: &'a Core<T, H>,
    frames: Frames,
}

impl<'a, T: Transport, H: Handler> Worker<'a, T, H> {
    pub fn new(core: &'a Core<T, H>) -> Self {
        crate::runtime::conn::set_worker_queue(&core.queue);
        Worker {
            core,
            frames: Frames::new(),
        }
    }

    /// Serves until the server stops, as leader or follower.
    ///
    /// At most one worker waits in `epoll_wait` (the leader: whoever holds `poll_lock`). It
    /// lets go of the lock as soon as events arrive, queues the rest of the batch for the other
    /// workers (with more than one) and runs the first itself. Idle
    /// workers sleep on the queue and wake for queued work, and take over the polling if the
    /// leader is still busy when they run out of it. So under light load one thread serves a
    /// request from wake-up to reply, with no hand-off, and under heavy load every worker has
    /// a share of each batch.
    ///
    /// Two rules keep polling from stalling:
    /// - once the workers have run [`EVENT_INTERVAL`] queued tasks, or for [`POLL_GAP_NANOS`],
    ///   since the last poll, the next worker to take one looks at epoll first (without
    ///   waiting), unless another worker is waiting there already, so queued work cannot
    ///   starve new events;
    /// - while the leader runs callbacks, the [monitor](crate::runtime::monitor) wakes an idle worker
    ///   to poll in its place if no poll has returned for a millisecond or so, so a callback
    ///   that blocks delays only its own connection while any worker is free.
    ///
    /// Measured against a design where every worker waits in `epoll_wait` (the kernel then
    /// wakes the longest sleeper, so consecutive requests on one connection alternate between
    /// threads), this served 2.4 times the round trips on one connection; see BENCHMARKS.md.
    pub fn run(&mut self) -> io::Result<()> {
        let core = self.core;
        let mut events = Events::with_capacity(EVENT_BATCH);
        loop {
            if core.queue.must_stop() {
                return Ok(());
            }
            if let Some(task) = core.queue.pop() {
                if core.stats.poll_due() {
                    // Enough queued work in a row: look at epoll first, without waiting. If
                    // the lock is taken, another worker is at epoll: nothing starves.
                    if let Some(lead) = core.poll_lock.try_lock() {
                        // With other workers, the task goes back to the queue for whoever is
                        // free: the poll's first event runs here next, and may block.
                        let hand_back = core.settings.threads > 1;
                        if hand_back {
                            core.queue.push_local(task);
                        }
                        self.lead(lead, &mut events, false)?;
                        if hand_back {
                            continue;
                        }
                    } else {
                        core.stats.polled();
                    }
                }
                self.on_task(task);
                continue;
            }
            if let Some(lead) = core.poll_lock.try_lock() {
                self.lead(lead, &mut events, true)?;
                continue;
            }
            core.idle_workers.fetch_add(1, Ordering::AcqRel);
            let task = core.queue.wait();
            core.idle_workers.fetch_sub(1, Ordering::AcqRel);
            self.on_task(task);
        }
    }

    /// Polls as the leader (waiting for events if `block`), lets go of the poll lock as soon
    /// as the wait returns, and handles the batch.
    ///
    /// With other workers, the rest of the batch goes to the queue before the first event
    /// runs: whoever is free takes it, the leader included once it is done. Kept back, it
    /// would wait behind a callback that blocks (the monitor can hand the polling to an idle
    /// worker, not these events).
    fn lead(
        &mut self,
        lead: parking_lot::MutexGuard<'_, ()>,
        events: &mut Events,
        block: bool,
    ) -> io::Result<()> {
        let core = self.core;
        let waited = core.poller.wait(events, block);
        drop(lead);
        core.stats.polled();
        core.monitor.polled();
        let mut batch = waited?;
        let Some(first) = batch.next() else {
            return Ok(());
        };
        if core.settings.threads > 1 {
            for event in batch.by_ref() {
                core.queue.push_local(Task::Event(event));
            }
        }
        self.on_any_event(first);
        for event in batch {
            self.on_any_event(event);
        }
        Ok(())
    }

    fn on_task(&mut self, task: Task) {
        match task {
            Task::Event(event) => self.on_any_event(event),
            Task::Conn { slot, id } => self.on_turn(slot, table::tag(id)),
            Task::Flush { slot, id } => self.on_flush(slot, id),
            Task::Accept(listener) => self.accept(listener),
            Task::Poll | Task::Stop => {}
        }
    }

    fn on_any_event(&mut self, event: Event) {
        match event.token {
            table::NOTIFY => self.on_notify(),
            table::TIMER => self.on_tick(),
            token => {
                if let Some(listener) = table::listener_index(token) {
                    self.accept(listener);
                    return;
                }
                let (slot, tag) = table::split(token);
                self.on_event(slot, tag, event.readable, event.hangup, event.urgent);
            }
        }
    }

    fn on_notify(&mut self) {
        let queue = &self.core.queue;
        queue.notifier().acknowledge();
        if queue.lifecycle().shutdown_asked() {
            self.begin_drain(); // unless it has started already
        }
    }

    /// An epoll event for the connection in `slot`: claim it and drive it, or, if another
    /// thread is driving it, leave it a note; if a turn is queued for it, that turn will read.
    fn on_event(&mut self, slot: usize, tag: u64, readable: bool, hangup: bool, urgent: bool) {
        let Some(conn) = self.core.table.get(slot, tag) else {
            tracing::trace!(slot, "event for a connection that is gone");
            return;
        };
        if conn.state.lock().claim_for_event(hangup, urgent) {
            self.drive_guarded(&conn, readable);
        }
    }

    /// A turn queued for the connection in `slot` (see [`Claim`](crate::runtime::conn::Claim)): take
    /// it and drive it.
    fn on_turn(&mut self, slot: usize, tag: u64) {
        let Some(conn) = self.core.table.get(slot, tag) else {
            return;
        };
        if conn.state.lock().claim_for_turn() {
            self.drive_guarded(&conn, true);
        }
    }

    /// Writes what broadcasts queued for a connection: under its lock, like a send from
    /// another thread, whoever owns its turn. What the socket does not take waits for its
    /// next writable edge, which drives the connection as usual.
    fn on_flush(&mut self, slot: usize, id: u64) {
        let Some(conn) = self.core.table.get_id(slot, id) else {
            return;
        };
        let mut state = conn.state.lock();
        conn.flush_taken();
        if state.closing.is_some() || state.stream.is_none() {
            return;
        }
        match conn.pull_and_flush(&mut state) {
            Ok(more) => {
                conn.touch();
                conn.account(&mut state);
                if more {
                    drop(state);
                    conn.flush_again();
                }
            }
            Err(err) => {
                tracing::debug!(conn = conn.id, error = %err, "write failed");
                conn.close_locked(state, CloseReason::from_io(err));
            }
        }
    }

    /// [`drive`](Self::drive), with a panic in user code (a callback or a `Stream` method)
    /// caught: the connection is closed with [`CloseReason::Panicked`] and the worker goes on.
    /// No lock is held across user code except the connection's own, which unwinding releases
    /// (`parking_lot` locks are not poisoned).
    pub(super) fn drive_guarded(&mut self, conn: &Arc<ConnOf<T, H>>, read: bool) {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.drive(conn, read)));
        if let Err(payload) = outcome {
            self.frames.reset(FRAMES_KEEP);
            self.recover(conn, payload);
        }
    }

    /// Closes a connection whose owner's turn was cut short by a panic.
    pub(super) fn recover(&self, conn: &Arc<ConnOf<T, H>>, payload: Box<dyn Any + Send>) {
        // Broadcasts made before the panic still get written.
        crate::runtime::conn::send_deferred_flushes(&self.core.queue);
        let message = panic_message(payload.as_ref());
        tracing::error!(conn = conn.id, %message, "panic while serving a connection; closing it");
        let state = conn.state.lock();
        if state.stream.is_some() {
            self.finalize(conn, state, CloseReason::Panicked(message));
        }
    }

    /// Drives a connection this thread has claimed until its turn ends: rounds of read,
    /// deliver, write, until [`State::finish_round`] lets go of it, queues it again or closes
    /// it.
    fn drive(&mut self, conn: &Arc<ConnOf<T, H>>, mut read: bool) {
        let socket = Socket::new(conn.clone());
        let _span = tracing::trace_span!("conn", id = conn.id, fd = conn.fd).entered();
        let mut round = 0;
        loop {
            round += 1;
            let status = if read {
                self.read(conn)
            } else {
                Ok(RecvStatus::Drained)
            };
            if !conn.is_opened() {
                self.establish(conn, &socket);
            }
            self.deliver(conn, &socket);
            crate::runtime::conn::send_deferred_flushes(&self.core.queue);
            let mut state = conn.state.lock();
            let more = self.write(conn, &mut state, status);
            let round = Round {
                pending_output: has_pending_output(&state),
                busy: conn.busy(),
                draining: self.core.lifecycle().draining(),
                more,
                blocked: self.read_blocked(conn),
                may_go_again: round < MAX_ROUNDS,
            };
            match state.finish_round(round) {
                Next::Again => read = true,
                Next::Release => {
                    drop(state);
                    self.relieve();
                    return;
                }
                Next::Requeue => {
                    drop(state);
                    conn.requeue();
                    self.relieve();
                    return;
                }
                Next::Close(reason) => {
                    self.finalize(conn, state, reason);
                    return;
                }
            }
        }
    }

    /// A round's read, into the worker's frame batch, with the lock held only for the
    /// stream call: as far as the stream's read budget goes, or nothing if the connection is
    /// closing, closed for reading or paused for memory.
    fn read(&mut self, conn: &ConnOf<T, H>) -> io::Result<RecvStatus> {
        let mut state = conn.state.lock();
        // After a hang-up or urgent data, a short read does not mean drained.
        let read_on = state.hangup || state.urgent;
        self.check_memory(conn, &mut state);
        // A connection paused for memory is read again once the peer hangs up: what is left
        // in the socket is bounded, and reading it lets the close free the memory. One paused
        // by the application, or with frames waiting for a full pool, is not.
        if state.closing.is_some()
            || state.read_closed
            || (state.read_paused && !state.hangup)
            || self.read_blocked(conn)
        {
            return Ok(RecvStatus::Drained);
        }
        if conn.header_pending() {
            let Some(stream) = state.stream.as_ref() else {
                return Ok(RecvStatus::Drained);
            };
            match header::read(stream.as_fd(), state.hangup) {
                Ok(None) => return Ok(RecvStatus::Drained),
                Ok(Some(header)) => conn.set_header(header),
                Err(reason) => {
                    tracing::debug!(conn = conn.id, peer = %conn.peer, %reason, "connection refused");
                    conn.set_closing(&mut state, reason);
                    return Ok(RecvStatus::Drained);
                }
            }
        }
        let Some(stream) = state.stream.as_mut() else {
            return Ok(RecvStatus::Drained);
        };
        let mut status = stream.recv(&mut self.frames);
        // A stream may stop at a short read: more data would raise a new edge. But after a
        // hang-up none comes, so read on until the end shows; and a read stops short at an
        // urgent mark with data behind it, so read on past it (bounded: each extra read
        // returns data, the end, WouldBlock or an error).
        let mut extra = 0;
        while read_on && extra < EXTRA_READS && matches!(status, Ok(RecvStatus::Drained)) {
            status = stream.recv(&mut self.frames);
            extra += 1;
        }
        // Timeout bookkeeping: relaxed stores, no clock read. The frame timeout runs from the
        // start of the frame now incomplete: restamp whenever a frame completed before it.
        conn.touch();
        let since = conn.partial_since.load(Ordering::Relaxed);
        if !stream.has_partial_frame() {
            if since != 0 {
                conn.partial_since.store(0, Ordering::Relaxed);
            }
        } else if since == 0 || !self.frames.is_empty() {
            conn.partial_since.store(clock::now(), Ordering::Relaxed);
        }
        if self.core.lifecycle().draining() {
            // Shutting down: new frames are not delivered, but input is still read (and
            // dropped) so that closing does not find unread bytes, which would make the
            // kernel reset the connection and lose queued output.
            self.frames.clear();
        }
        status
    }

    /// The establishment phase (see [`Stream#establishment`]): once a read leaves the stream
    /// established, the connection is the handler's: `on_connection_opened` runs, before the
    /// round's frames are delivered. Until then no frame may arrive; a stream that pushes
    /// some breaks its contract, and the connection closes as a protocol error (no frame is
    /// dropped silently).
    fn establish(&mut self, conn: &Arc<ConnOf<T, H>>, socket: &Socket) {
        let mut state = conn.state.lock();
        let Some(stream) = state.stream.as_ref() else {
            return;
        };
        if conn.header_pending() || !stream.is_established() {
            if !self.frames.is_empty() {
                self.frames.reset(FRAMES_KEEP);
                let err = io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the stream produced frames before it was established",
                );
                conn.set_closing(&mut state, CloseReason::Protocol(err));
            }
            return;
        }
        let tls = stream.tls_info();
        conn.mark_established(tls);
        drop(state);
        self.core.count_opened();
        self.establishing(false);
        if conn.proxy_addr().is_some() {
            tracing::debug!(conn = conn.id, peer = %conn.addr(), proxy = %conn.peer, fd = conn.fd, "connection opened");
        } else {
            tracing::debug!(conn = conn.id, peer = %conn.addr(), fd = conn.fd, "connection opened");
        }
        let _running = RunningGuard::enter(conn.id);
        self.core
            .handler
            .on_connection_opened(&mut conn.session.lock(), socket);
    }

    /// Whether the connection is not read because frames of it wait for a pool that has
    /// `Config::blocking_queue` frames waiting already. Its job's end asks for a turn, so it is
    /// read again then.
    #[inline]
    fn pool_blocked(&self, conn: &ConnOf<T, H>) -> bool {
        conn.has_work() && self.core.pool.over()
    }

    /// Whether the connection is not to be read: paused by the application, or blocked on a
    /// full pool.
    #[inline]
    fn read_blocked(&self, conn: &ConnOf<T, H>) -> bool {
        conn.reading_paused() || self.pool_blocked(conn)
    }

    /// Hands the round's frames to the handler, with no lock of the library held, until the
    /// connection is closed (from a callback or another thread).
    ///
    /// Frames still waiting from before (behind a pool job, or held back by a pause) go
    /// first. From the first frame the handler offloads, or once reading is paused, the rest
    /// are queued in the connection's [`Work`](crate::runtime::conn::Work) instead, for the
    /// pool job or for the resume.
    fn deliver(&mut self, conn: &Arc<ConnOf<T, H>>, socket: &Socket) {
        let core = self.core;
        let earlier = if conn.has_work() {
            let mut work = conn.lock_work();
            if work.offloaded || conn.reading_paused() {
                // Behind a pool job, or paused: everything waits, in order.
                let added = self.frames.len();
                work.frames.extend(self.frames.iter().map(Box::from));
                drop(work);
                core.pool.count(added, 0);
                self.frames.reset(FRAMES_KEEP);
                return;
            }
            let earlier = std::mem::take(&mut work.frames);
            drop(work);
            core.pool.count(0, earlier.len());
            earlier
        } else if self.frames.is_empty() {
            return;
        } else {
            Default::default()
        };
        let _running = RunningGuard::enter(conn.id);
        let telemetry = core.telemetry;
        let started = std::time::Instant::now();
        let (mut delivered, mut delivered_bytes) = (0u64, 0usize);
        let mut session = None;
        let mut route = Route::Here;
        let mut queued: Vec<Box<[u8]>> = Vec::new();
        let mut step = |frame: Pending<'_>| {
            if route == Route::Here {
                let bytes = frame.bytes();
                route = if conn.closing_requested() {
                    Route::Drop
                } else if conn.reading_paused() {
                    Route::Wait
                } else if core.handler.offload(bytes) && core.pool.available() {
                    Route::Pool
                } else {
                    Route::Here
                };
            }
            match route {
                Route::Here => {
                    let session = session.get_or_insert_with(|| conn.session.lock());
                    delivered += 1;
                    delivered_bytes += frame.bytes().len();
                    core.handler.on_frame(session, socket, frame.bytes());
                    if delivered % FLUSH_EVERY == 0 {
                        // A long batch hands its broadcasts' writes on as it goes, so the
                        // other workers write while this one reads.
                        crate::runtime::conn::send_deferred_flushes(&core.queue);
                    }
                }
                Route::Wait | Route::Pool => queued.push(frame.into_owned()),
                Route::Drop => {}
            }
        };
        for frame in earlier {
            step(Pending::Owned(frame));
        }
        for frame in &self.frames {
            step(Pending::Borrowed(frame));
        }
        if session.is_some() {
            conn.frames_in.fetch_add(delivered, Ordering::Relaxed);
            telemetry.callbacks.record(started.elapsed().as_secs_f64());
            telemetry.frames_in.increment(delivered);
            telemetry.bytes_in.increment(delivered_bytes as u64);
        }
        drop(session);
        self.frames.reset(FRAMES_KEEP);
        if queued.is_empty() {
            return;
        }
        let added = queued.len();
        let mut work = conn.lock_work();
        // Frames queued from another thread cannot exist (only the owner adds), but a pool
        // job's leftovers would go first.
        work.frames.extend(queued);
        let submit = route == Route::Pool && !work.offloaded;
        work.offloaded |= submit;
        drop(work);
        core.pool.count(added, 0);
        if submit {
            core.pool.submit(conn.clone());
        }
    }

    /// Records how the round's read ended and writes what the callbacks queued, as far as
    /// the socket takes it. Returns whether input is left (the read stopped at its budget).
    fn write(
        &self,
        conn: &ConnOf<T, H>,
        state: &mut State<T::Stream>,
        status: io::Result<RecvStatus>,
    ) -> bool {
        let mut more = false;
        match status {
            Ok(RecvStatus::Drained) => {}
            Ok(RecvStatus::MoreAvailable) => more = true,
            Ok(RecvStatus::Eof) => state.read_closed = true,
            Err(err) => conn.set_closing(state, CloseReason::from_io(err)),
        }
        // Whether anything was to be written, and how that went: `Ok(true)` leaves group
        // frames for a flush task.
        let written = if state.groups.is_some() {
            if self.core.lifecycle().draining() {
                // Everything broadcast to it before the drain goes out with the rest.
                conn.pull_groups(state, usize::MAX);
            }
            Some(conn.pull_and_flush(state))
        } else {
            let stream = state
                .stream
                .as_mut()
                .expect("only the owner closes a connection");
            stream
                .has_pending_output()
                .then(|| stream.flush().map(|()| false))
        };
        match written {
            None => {}
            Some(Ok(more)) => {
                conn.touch();
                if more {
                    conn.flush_again();
                }
            }
            Some(Err(err)) => {
                state.closing.get_or_insert(CloseReason::from_io(err));
            }
        }
        if state.closing.is_none() {
            conn.account(state);
            self.check_memory(conn, state);
        }
        more
    }

    /// Pauses reading a connection that holds its share or more while the server is over
    /// `max_buffered`.
    fn check_memory(&self, conn: &ConnOf<T, H>, state: &mut State<T::Stream>) {
        if !state.read_paused && self.core.buffers.over() && state.held >= self.share() {
            self.pause(conn, state);
        }
    }

    /// Over `max_buffered`, a connection holding this much or more is paused.
    fn share(&self) -> usize {
        self.core
            .buffers
            .share(self.core.open.load(Ordering::Relaxed))
    }

    /// Stops reading a connection that holds too much while the server is over `max_buffered`.
    fn pause(&self, conn: &ConnOf<T, H>, state: &mut State<T::Stream>) {
        state.read_paused = true;
        self.core.buffers.pause(conn.slot, conn.id);
        tracing::debug!(
            conn = conn.id,
            held = state.held,
            total = self.core.buffers.total(),
            "max_buffered passed: reading paused"
        );
    }

    /// Acts on the memory ceiling after memory was freed or taken: resumes the paused
    /// connections once the total is low enough, or closes the biggest holders past the hard
    /// limit.
    pub(crate) fn relieve(&self) {
        let buffers = &self.core.buffers;
        self.core.telemetry.buffered.set(buffers.total() as f64);
        if buffers.may_resume() {
            self.resume_paused();
        } else if buffers.over_hard() && buffers.start_shedding() {
            self.shed();
            buffers.done_shedding();
        }
    }

    /// Reads every paused connection again: each gets a turn, since edge-triggered epoll will
    /// not report input that arrived while it was paused.
    fn resume_paused(&self) {
        let core = self.core;
        let paused = core.buffers.take_paused();
        tracing::debug!(
            count = paused.len(),
            total = core.buffers.total(),
            "under max_buffered again: reading resumed"
        );
        for (slot, id) in paused {
            let Some(conn) = core.table.get_id(slot, id) else {
                continue;
            };
            conn.request(|_, state| std::mem::take(&mut state.read_paused));
        }
    }

    /// Past the hard limit: closes the paused connections holding the most until what is
    /// left fits under the ceiling. Connections already closing count as freed.
    fn shed(&self) {
        let core = self.core;
        let mut holders: Vec<(usize, Arc<ConnOf<T, H>>)> = core
            .buffers
            .paused()
            .into_iter()
            .filter_map(|(slot, id)| core.table.get_id(slot, id))
            .map(|conn| {
                let held = conn.state.lock().held;
                (held, conn)
            })
            .collect();
        holders.sort_by_key(|h| std::cmp::Reverse(h.0));
        let mut excess = core.buffers.excess();
        for (held, conn) in holders {
            if excess == 0 {
                break;
            }
            let state = conn.state.lock();
            if state.stream.is_none() {
                continue;
            }
            excess = excess.saturating_sub(held);
            if state.closing.is_some() {
                continue; // its memory is about to be freed
            }
            tracing::warn!(
                conn = conn.id,
                peer = %conn.addr(),
                held,
                total = core.buffers.total(),
                "far past max_buffered: closing one of the biggest holders"
            );
            conn.close_locked(state, CloseReason::MaxBuffered);
        }
    }

    /// Closes a connection this thread owns and tells the handler.
    fn finalize(
        &self,
        conn: &Arc<ConnOf<T, H>>,
        mut state: parking_lot::MutexGuard<'_, State<T::Stream>>,
        reason: CloseReason,
    ) {
        let core = self.core;
        let mut stream = state.stream.take().expect("finalized twice");
        state.claim = crate::runtime::conn::Claim::Idle;
        // Closed before it was established: the handler never heard of it.
        let opened = conn.is_opened();
        if matches!(reason, CloseReason::Local | CloseReason::Shutdown { .. }) {
            discard_input(&mut stream);
        }
        // Out of epoll before the descriptor is closed, so its number can be reused safely.
        if let Err(err) = core.poller.delete(stream.as_fd()) {
            tracing::debug!(conn = conn.id, error = %err, "epoll delete failed");
        }
        core.buffers.set(&mut state.held, 0);
        let groups = state.groups.take();
        drop(state);
        if let Some(groups) = groups {
            crate::group::leave_all(conn.id, groups.0);
        }
        shut_and_drop(conn.id, stream);
        core.table.remove(conn.slot, conn.id);
        core.open.fetch_sub(1, Ordering::AcqRel);
        core.stats.count_shutdown(&reason);
        core.telemetry.open.decrement(1.0);
        core.telemetry.closed(&reason);
        tracing::debug!(conn = conn.id, peer = %conn.addr(), %reason, "connection removed");
        // Frames not delivered are dropped. If a pool job is in a callback of the connection,
        // it calls `on_connection_removed` once that returns, so the two never overlap.
        let mut work = conn.lock_work();
        let dropped = work.frames.len();
        if dropped > 0 {
            work.frames.clear();
        }
        let reason = if work.offloaded {
            work.removal = Some(reason);
            None
        } else {
            Some(reason)
        };
        drop(work);
        core.pool.count(0, dropped);
        if !opened {
            self.establishing(false);
        } else if let Some(reason) = reason {
            removed(&*core.handler, conn, &reason);
        }
        if core.lifecycle().draining() {
            self.check_drained();
        }
        self.relieve();
    }
}

impl<T: Transport, H: Handler> Core<T, H> {
    /// Closes every connection left after the workers and the pool stopped, telling the
    /// handler.
    pub fn close_all(&self) {
        for conn in self.table.drain() {
            let mut state = conn.state.lock();
            let Some(mut stream) = state.stream.take() else {
                continue;
            };
            // A close requested just before the shutdown keeps its own reason; otherwise one
            // last try to write what is queued tells whether the drain completed: everything
            // written, and no work in flight cut off.
            let busy = conn.busy();
            if state.closing.is_none() {
                state.stream = Some(stream);
                conn.pull_groups(&mut state, usize::MAX);
                stream = state.stream.take().expect("just put back");
            }
            let reason = state.closing.take().unwrap_or_else(|| {
                let flushed = stream.flush().is_ok() && !stream.has_pending_output() && !busy;
                CloseReason::Shutdown { flushed }
            });
            discard_input(&mut stream);
            self.stats.count_shutdown(&reason);
            self.telemetry.open.decrement(1.0);
            self.telemetry.closed(&reason);
            if let Err(err) = self.poller.delete(stream.as_fd()) {
                tracing::debug!(conn = conn.id, error = %err, "epoll delete failed");
            }
            let groups = state.groups.take();
            drop(state);
            if let Some(groups) = groups {
                crate::group::leave_all(conn.id, groups.0);
            }
            shut_and_drop(conn.id, stream);
            if conn.has_work() {
                let mut work = conn.lock_work();
                work.frames.clear();
                work.offloaded = false;
            }
            if conn.is_opened() {
                removed(&*self.handler, &conn, &reason);
            }
        }
    }
}

/// A frame [`Worker::deliver`] routes: one of the round's batch, or one that waited.
enum Pending<'a> {
    Borrowed(&'a [u8]),
    Owned(Box<[u8]>),
}

impl Pending<'_> {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Pending::Borrowed(frame) => frame,
            Pending::Owned(frame) => frame,
        }
    }

    fn into_owned(self) -> Box<[u8]> {
        match self {
            Pending::Borrowed(frame) => Box::from(frame),
            Pending::Owned(frame) => frame,
        }
    }
}

/// Where [`Worker::deliver`] sends the frames from here on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// To the handler, on this worker.
    Here,
    /// To the connection's queue, for a pool job (started for the first such frame).
    Pool,
    /// To the connection's queue, until reading resumes.
    Wait,
    /// Nowhere: the connection is closing.
    Drop,
}

/// Calls `on_connection_removed` with the connection's session, catching a panic.
pub(crate) fn removed<S: Stream, H: Handler>(
    handler: &H,
    conn: &Arc<Conn<S, H::Session>>,
    reason: &CloseReason,
) {
    let socket = Socket::new(conn.clone());
    let session = conn.take_session();
    guarded(conn.id, "on_connection_removed", || {
        handler.on_connection_removed(session, &socket, reason)
    });
}

/// Whether a connection's stream holds output not yet written.
fn has_pending_output<S: Stream>(state: &State<S>) -> bool {
    state
        .stream
        .as_ref()
        .is_some_and(|stream| stream.has_pending_output())
}

/// Reads and drops what the peer sent and nobody will handle, before a graceful close: a socket
/// closed with unread input is reset by the kernel, and the peer may then lose what it had not
/// read yet of our last replies. Bounded: a few budgets' worth, errors ignored.
/// A panic in the stream's code is caught here: the close must go on.
fn discard_input<S: Stream>(stream: &mut S) {
    let discard = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut sink = Frames::new();
        for _ in 0..4 {
            let more = matches!(stream.recv(&mut sink), Ok(RecvStatus::MoreAvailable));
            sink.clear();
            if !more {
                break;
            }
        }
    }));
    if discard.is_err() {
        tracing::error!("Stream::recv panicked while discarding input before a close");
    }
}

/// Shuts a stream down and drops it (closing its socket), catching a panic in its code.
fn shut_and_drop<S: Stream>(conn: u64, mut stream: S) {
    let done = panic::catch_unwind(AssertUnwindSafe(move || {
        if let Err(err) = stream.shutdown() {
            tracing::trace!(conn, error = %err, "shutdown failed");
        }
    }));
    if let Err(payload) = done {
        let message = panic_message(payload.as_ref());
        tracing::error!(conn, %message, "Stream::shutdown or drop panicked");
    }
}

/// Runs a callback whose panic can only be logged (nothing is left to close).
fn guarded(conn: u64, what: &str, f: impl FnOnce()) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
        let message = panic_message(payload.as_ref());
        tracing::error!(conn, callback = what, %message, "callback panicked");
    }
}

/// The message of a panic payload, for the log and [`CloseReason::Panicked`].
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
