//! The work queue: what epoll does not deliver, carried over a channel with an eventfd wake.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::sys::epoll::Notifier;

/// Work for a worker that did not come from epoll.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Task {
    /// Give this connection a turn: a close was requested, a send from another thread failed, or
    /// its last turn stopped early to let others run.
    Conn { slot: usize, id: u64 },
    /// Keep accepting: the last accept loop stopped at its budget.
    Accept,
}

/// A channel of [`Task`]s plus the notifier that wakes a worker out of `epoll_wait` for them,
/// and the shutdown flag.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: Sender<Task>,
    rx: Receiver<Task>,
    notifier: Notifier,
    /// Shutdown was asked for: the workers drain the connections.
    shutdown: AtomicBool,
    /// The workers must return now.
    stop: AtomicBool,
}

impl Queue {
    pub fn new() -> io::Result<Queue> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Queue {
            tx,
            rx,
            notifier: Notifier::new()?,
            shutdown: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Queues a task and wakes a worker for it.
    pub fn push(&self, task: Task) {
        // The receiver lives in `self`, so the channel is never disconnected.
        let _ = self.tx.send(task);
        self.notifier.notify();
    }

    /// Takes one task, and wakes another worker if more are waiting, so tasks are shared out.
    pub fn pop(&self) -> Option<Task> {
        let task = self.rx.try_recv().ok()?;
        if !self.rx.is_empty() {
            self.notifier.notify();
        }
        Some(task)
    }

    /// Asks for a shutdown: a worker starts the drain.
    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.notifier.notify();
    }

    pub fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Tells every worker to return (each passes the word on as it goes).
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        self.notifier.notify();
    }

    pub fn must_stop(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}
