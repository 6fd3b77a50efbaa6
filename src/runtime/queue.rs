//! The work queue: events handed from the polling worker to the others, and what epoll does
//! not deliver (turns asked for from other threads, shutdown), over one channel.

use std::io;
use std::sync::Weak;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::runtime::lifecycle::{Lifecycle, Phase};
use crate::runtime::table::Inspect;
use crate::sys::epoll::Event;
use crate::sys::eventfd::Notifier;

/// Work for a worker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Task {
    /// An epoll event the polling worker passed on (it keeps the first of a batch).
    Event(Event),
    /// Give this connection a turn: a close was requested, a send from another thread failed, a
    /// timeout expired, or its last turn stopped early to let others run.
    Conn { slot: usize, id: u64 },
    /// Write what broadcasts queued for this connection.
    Flush { slot: usize, id: u64 },
    /// Keep accepting on this listener (its index): the last accept loop stopped at its
    /// budget.
    Accept(usize),
    /// Take over the polling: nobody is waiting in `epoll_wait` and the leader is busy
    /// (sent by the [monitor](crate::runtime::monitor)).
    Poll,
    /// Return: the server is stopping.
    Stop,
}

/// A channel of [`Task`]s, the notifier that wakes the worker waiting in `epoll_wait`, and the
/// server's [`Lifecycle`] (here because [`ShutdownHandle`](crate::ShutdownHandle) holds the
/// queue).
///
/// Idle workers other than the poller block on the channel, so a task sent to it wakes one of
/// them directly; the notifier is for the poller, which sleeps in `epoll_wait` instead.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: Sender<Task>,
    rx: Receiver<Task>,
    notifier: Notifier,
    lifecycle: Lifecycle,
    /// How many workers block on the channel at most (one `Stop` each on stopping).
    workers: AtomicUsize,
    /// The running server's connection table, for introspection.
    inspector: parking_lot::Mutex<Option<Weak<dyn Inspect>>>,
}

impl Queue {
    pub fn new() -> io::Result<Queue> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Queue {
            tx,
            rx,
            notifier: Notifier::new()?,
            lifecycle: Lifecycle::default(),
            workers: AtomicUsize::new(0),
            inspector: parking_lot::Mutex::new(None),
        })
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Registers the table the server runs with (`None` once it stopped).
    pub fn set_inspector(&self, table: Option<Weak<dyn Inspect>>) {
        *self.inspector.lock() = table;
    }

    /// The open connections of the running server (none if it is not running).
    pub fn connections(&self) -> Vec<crate::ConnectionInfo> {
        let table = self.inspector.lock().as_ref().and_then(Weak::upgrade);
        table.map(|t| t.connections()).unwrap_or_default()
    }

    pub fn set_workers(&self, n: usize) {
        self.workers.store(n, Ordering::Release);
    }

    /// Queues a task from anywhere, waking an idle worker or the poller for it.
    pub fn push(&self, task: Task) {
        self.push_local(task);
        self.notifier.notify();
    }

    /// Queues a task from the worker that polls: an idle worker blocked on the channel wakes
    /// for it; if none is idle, the poller takes it itself before it polls again.
    pub fn push_local(&self, task: Task) {
        // The receiver lives in `self`, so the channel is never disconnected.
        let _ = self.tx.send(task);
    }

    /// Takes a task if one is waiting.
    pub fn pop(&self) -> Option<Task> {
        self.rx.try_recv().ok()
    }

    /// Sleeps until a task arrives.
    pub fn wait(&self) -> Task {
        self.rx.recv().unwrap_or(Task::Stop)
    }

    /// Asks for a shutdown: the worker that polls next sees the notice and starts the drain.
    pub fn shut_down(&self) {
        if self.lifecycle.advance(Phase::ShutdownAsked) {
            self.notifier.notify();
        }
    }

    /// Tells every worker to return: the poller through the notifier, the others with a `Stop`
    /// each.
    pub fn stop(&self) {
        if !self.lifecycle.advance(Phase::Stopping) {
            return;
        }
        for _ in 0..self.workers.load(Ordering::Acquire).max(1) {
            self.push_local(Task::Stop);
        }
        self.notifier.notify();
    }

    pub fn must_stop(&self) -> bool {
        self.lifecycle.stopping()
    }
}
