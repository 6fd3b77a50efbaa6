//! The poll monitor: makes sure some worker polls while any worker is free, so that one callback
//! that blocks (or one long batch) delays only its own connection.
//!
//! The workers take turns at `epoll_wait` (see [`Worker::run`](crate::runtime::worker::Worker::run)):
//! the leader returns from it, runs the first event itself, and nobody polls until some worker
//! is free to. Idle workers sleep on the queue, not on epoll, since handing each event to a
//! sleeping thread costs a wake-up and a cache miss per request. So a leader stuck in user code
//! would freeze every other connection, however many workers sleep.
//!
//! Like Go's `sysmon`, a thread of its own looks every [`TICK`] while the server is busy. If
//! nobody is waiting in `epoll_wait`, no wait has returned since its last look, and a worker is
//! idle, it wakes that worker with a [`Task::Poll`]; that worker then takes the poll lock and
//! becomes the leader. When the leader has been waiting in `epoll_wait` for [`PARK_AFTER`]
//! looks in a row, the server is idle and the monitor parks until a wait returns, so an idle
//! server has no periodic wake-ups.
//!
//! The cost on the hot path is one atomic increment and one atomic load per return from
//! `epoll_wait` (see [`Monitor::polled`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::runtime::queue::Task;
use crate::runtime::shared::Core;

/// How often the monitor looks while the server is busy: the longest a blocked leader delays
/// the other connections while a worker is idle (between one and two ticks).
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// Consecutive looks that find the leader waiting in `epoll_wait` before the monitor parks.
const PARK_AFTER: u32 = 10;

/// Shared between the workers and the monitor thread.
#[derive(Debug, Default)]
pub(crate) struct Monitor {
    /// Returns from `epoll_wait` so far, by any worker.
    polls: AtomicU64,
    /// The monitor is parked (or about to be): the next return from `epoll_wait` wakes it.
    parked: AtomicBool,
    /// Set to wake the parked monitor; the condvar's mutex.
    wake: Mutex<bool>,
    woken: Condvar,
}

impl Monitor {
    /// Called by a worker each time `epoll_wait` returns.
    #[inline]
    pub fn polled(&self) {
        // SeqCst pairs with `park`: either the monitor sees this poll, or this load sees it
        // parked.
        self.polls.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.unpark();
        }
    }

    /// Wakes the monitor if it is parked (also used on stopping).
    pub fn unpark(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            *self.wake.lock() = true;
            self.woken.notify_one();
        }
    }

    /// Parks until a poll returns, unless one returned since `seen` (or `waiting` no longer
    /// holds). Returns at once in that case.
    fn park(&self, seen: u64, waiting: impl Fn() -> bool) {
        self.parked.store(true, Ordering::SeqCst);
        if self.polls.load(Ordering::SeqCst) != seen || !waiting() {
            self.parked.store(false, Ordering::SeqCst);
            return;
        }
        let mut wake = self.wake.lock();
        while !*wake && self.parked.load(Ordering::SeqCst) {
            self.woken.wait(&mut wake);
        }
        *wake = false;
    }
}

/// The monitor thread's loop; returns when the server stops.
pub(crate) fn watch<T: crate::Transport, H: crate::Handler>(core: &Core<T, H>) {
    let monitor = &core.monitor;
    let mut seen = monitor.polls.load(Ordering::SeqCst);
    let mut waiting_looks = 0;
    while !core.queue.must_stop() {
        std::thread::sleep(TICK);
        let polls = monitor.polls.load(Ordering::SeqCst);
        // The poll lock is held only around `epoll_wait`.
        if core.poll_lock.is_locked() {
            waiting_looks += 1;
            if waiting_looks >= PARK_AFTER {
                waiting_looks = 0;
                monitor.park(polls, || {
                    core.poll_lock.is_locked() && !core.queue.must_stop()
                });
                seen = monitor.polls.load(Ordering::SeqCst);
                continue;
            }
        } else {
            waiting_looks = 0;
            if polls == seen && core.idle_workers.load(Ordering::Acquire) > 0 {
                tracing::trace!("no worker polled for a tick; waking an idle one to poll");
                core.queue.push_local(Task::Poll);
            }
        }
        seen = polls;
    }
}
