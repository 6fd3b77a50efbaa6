//! The blocking pool: threads apart from the I/O workers that run the frames a handler
//! offloads ([`Handler::offload`]), each connection's one at a time and in order.
//!
//! A connection's frames wait in its [`Work`] queue. The I/O worker that reads them appends
//! them and, if no job runs for the connection yet, marks it `offloaded` and sends the
//! connection to the pool's channel: one job per connection, not per frame. The pool thread
//! that takes the job runs the queued frames in order until the queue is empty (or the
//! connection closes, or its reading is paused), then clears `offloaded` and asks for a turn
//! of the connection, so that its owner notices (a half-closed connection closes once its
//! replies are written, the drain closes it, a connection blocked on a full pool is read
//! again). Until then every frame read for the connection queues behind the job, so order
//! holds whatever the handler offloads.
//!
//! The I/O workers never wait for the pool: sending a job never blocks (the channel is
//! unbounded; what bounds it is `Config::blocking_queue`: past it, a connection with frames
//! waiting is not read until its job has run them, so TCP pushes back on the peer).
//!
//! Threads are started on demand, one whenever a job is sent while none is idle, up to
//! `Config::blocking_threads`, and live until the server stops.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::handler::CloseReason;
use crate::runtime::conn::{Conn, Work};
use crate::runtime::worker::{panic_message, removed};
use crate::{Handler, Socket, Stream};

/// Logged once per process when a handler offloads with no pool configured.
static WARNED_NO_POOL: AtomicBool = AtomicBool::new(false);

/// A job: the connection whose queued frames to run (`None`: a thread's cue to exit).
type Job<S, H> = Option<Arc<Conn<S, <H as Handler>::Session>>>;

/// The pool of one server.
pub(crate) struct Pool<S, H: Handler> {
    inner: Arc<Inner<S, H>>,
}

struct Inner<S, H: Handler> {
    handler: Arc<H>,
    tx: Sender<Job<S, H>>,
    rx: Receiver<Job<S, H>>,
    /// `Config::blocking_threads`.
    max_threads: usize,
    /// `Config::blocking_queue`.
    bound: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Threads waiting for a job and not yet claimed by a job sent.
    idle: AtomicUsize,
    /// Frames queued in connections' [`Work`] and not yet started, across the server.
    waiting: AtomicUsize,
    /// Set once the server stops: threads finish the callback they are in and exit.
    stopping: AtomicBool,
}

impl<S: Stream, H: Handler> Pool<S, H> {
    pub fn new(handler: Arc<H>, max_threads: usize, bound: usize) -> Pool<S, H> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Pool {
            inner: Arc::new(Inner {
                handler,
                tx,
                rx,
                max_threads,
                bound,
                threads: Mutex::new(Vec::new()),
                idle: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// Whether frames may be offloaded at all; if not, says so in the log once.
    pub fn available(&self) -> bool {
        if self.inner.max_threads > 0 {
            return true;
        }
        if !WARNED_NO_POOL.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "Handler::offload asked for the blocking pool, but Config::blocking_threads \
                 is 0: running the frame on the I/O worker"
            );
        }
        false
    }

    /// Past `Config::blocking_queue` frames waiting: connections with frames waiting are not
    /// read.
    #[inline]
    pub fn over(&self) -> bool {
        self.inner.waiting.load(Ordering::Relaxed) > self.inner.bound
    }

    /// Counts frames added to (positive) or taken from a connection's queue.
    pub fn count(&self, added: usize, taken: usize) {
        count(&self.inner, added, taken);
    }

    /// Sends a job for `conn`, which its owner just marked `offloaded`, starting a thread
    /// if none is idle and the pool may grow.
    pub fn submit(&self, conn: Arc<Conn<S, H::Session>>) {
        let inner = &self.inner;
        // Cannot fail: the pool holds the receiver.
        let _ = inner.tx.send(Some(conn));
        // Claim an idle thread for the job, or start one. The claim is taken here, not by the
        // thread when it wakes, so that two jobs sent at once never count on the same idle
        // thread (the second would wait for a thread to finish its work).
        let claimed = inner
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if claimed {
            return;
        }
        let mut threads = inner.threads.lock();
        if threads.len() >= inner.max_threads || inner.stopping.load(Ordering::Acquire) {
            return; // the job waits for the next thread free
        }
        let shared = inner.clone();
        let spawned = thread::Builder::new()
            .name(format!("hydrogen-blocking-{}", threads.len() + 1))
            .spawn(move || serve(&shared));
        match spawned {
            Ok(handle) => threads.push(handle),
            // The job waits for a thread that exists; with none, `stop` runs it.
            Err(err) => tracing::error!(error = %err, "cannot start a blocking pool thread"),
        }
    }

    /// Stops the pool: every thread finishes the callback it is in, then exits, and is
    /// joined. Jobs not started are ended here ([`cut_off`]).
    pub fn stop(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *inner.threads.lock());
        for _ in 0..threads.len() {
            let _ = inner.tx.send(None);
        }
        for handle in threads {
            if handle.join().is_err() {
                tracing::error!("a blocking pool thread panicked");
            }
        }
        while let Ok(job) = inner.rx.try_recv() {
            if let Some(conn) = job {
                cut_off(inner, &conn);
            }
        }
    }
}

/// Ends a job the stop cut off. A connection closed meanwhile gets its
/// `on_connection_removed` here; an open one keeps its frames, so the final close sees the
/// work cut off and reports the drain as unfinished.
fn cut_off<S: Stream, H: Handler>(inner: &Inner<S, H>, conn: &Arc<Conn<S, H::Session>>) {
    let mut work = conn.lock_work();
    work.offloaded = false;
    let removal = work.removal.take();
    if removal.is_some() {
        discard(inner, &mut work);
    }
    drop(work);
    if let Some(reason) = removal {
        removed(&*inner.handler, conn, &reason);
    }
}

/// Drops a connection's waiting frames (it is closing) and ends its job.
fn discard<S, H: Handler>(inner: &Inner<S, H>, work: &mut Work) {
    count(inner, 0, work.frames.len());
    work.frames.clear();
    work.offloaded = false;
}

fn count<S, H: Handler>(inner: &Inner<S, H>, added: usize, taken: usize) {
    if added > 0 {
        inner.waiting.fetch_add(added, Ordering::Relaxed);
    }
    if taken > 0 {
        inner.waiting.fetch_sub(taken, Ordering::Relaxed);
    }
}

/// A pool thread: takes jobs until the pool stops. It starts for a job, and counts itself
/// idle each time it is done with one (the sender of the next job claims it).
fn serve<S: Stream, H: Handler>(inner: &Inner<S, H>) {
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            inner.idle.fetch_add(1, Ordering::AcqRel);
        }
        let Ok(Some(conn)) = inner.rx.recv() else {
            return;
        };
        if inner.stopping.load(Ordering::Acquire) {
            // Leave it for `stop`, which finishes what was not started.
            let _ = inner.tx.send(Some(conn));
            return;
        }
        run(inner, &conn);
    }
}

/// What a job does next, decided under the work lock.
enum Step {
    Frame(Box<[u8]>),
    Remove(CloseReason),
    Done,
}

/// Runs a connection's queued frames in order, until none is left, the connection closes,
/// or its reading is paused.
fn run<S: Stream, H: Handler>(inner: &Inner<S, H>, conn: &Arc<Conn<S, H::Session>>) {
    let socket = Socket::new(conn.clone());
    let _span = tracing::trace_span!("offload", conn = conn.id).entered();
    loop {
        let step = {
            let mut work = conn.lock_work();
            next_step(inner, conn, &mut work)
        };
        match step {
            Step::Frame(frame) => {
                let telemetry = crate::runtime::telemetry::get();
                telemetry.frames_in.increment(1);
                conn.frames_in.fetch_add(1, Ordering::Relaxed);
                telemetry.bytes_in.increment(frame.len() as u64);
                let started = std::time::Instant::now();
                let ran = panic::catch_unwind(AssertUnwindSafe(|| {
                    let mut session = conn.session.lock();
                    inner.handler.on_frame(&mut session, &socket, &frame);
                }));
                telemetry.callbacks.record(started.elapsed().as_secs_f64());
                if let Err(payload) = ran {
                    let message = panic_message(payload.as_ref());
                    tracing::error!(conn = conn.id, %message, "panic in an offloaded on_frame; closing the connection");
                    conn.request(|conn, state| {
                        conn.set_closing(state, CloseReason::Panicked(message));
                        true
                    });
                }
                if inner.stopping.load(Ordering::Acquire) {
                    // Done with the callback it was in; the rest is cut off by the stop.
                    cut_off(inner, conn);
                    return;
                }
            }
            Step::Remove(reason) => {
                removed(&*inner.handler, conn, &reason);
                return;
            }
            Step::Done => {
                // The owner decides what is next: close after a half-close or in the drain,
                // read again if the queue had blocked reading.
                conn.request(|_, _| true);
                return;
            }
        }
    }
}

/// The next frame of the job, or why it ends. Ending clears `offloaded`, so the owner
/// delivers the next frames itself.
fn next_step<S: Stream, H: Handler>(
    inner: &Inner<S, H>,
    conn: &Conn<S, H::Session>,
    work: &mut Work,
) -> Step {
    if let Some(reason) = work.removal.take() {
        // Closed while the last callback ran: the rest is never delivered.
        discard(inner, work);
        return Step::Remove(reason);
    }
    if conn.closing_requested() {
        // Closing: undelivered frames are dropped, as on the I/O workers; the owner's close
        // calls `on_connection_removed`.
        discard(inner, work);
        return Step::Done;
    }
    if conn.reading_paused() {
        // Paused from a callback: the frames wait in order for `resume_reading`.
        work.offloaded = false;
        return Step::Done;
    }
    match work.frames.pop_front() {
        Some(frame) => {
            count(inner, 0, 1);
            Step::Frame(frame)
        }
        None => {
            work.offloaded = false;
            Step::Done
        }
    }
}
