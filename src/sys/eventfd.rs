//! An eventfd that wakes the worker waiting in `epoll_wait`.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// Wakes a worker out of `epoll_wait` through an eventfd registered with the [`Poller`](super::epoll::Poller).
///
/// Redundant wakes are skipped: only the first [`notify`](Self::notify) after a worker
/// [`acknowledge`](Self::acknowledge)d writes to the eventfd.
#[derive(Debug)]
pub(crate) struct Notifier {
    fd: EventFd,
    /// Set by `notify`, cleared by `acknowledge`; while set, further notifies are free.
    signalled: AtomicBool,
}

impl Notifier {
    pub fn new() -> io::Result<Notifier> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Notifier {
            fd,
            signalled: AtomicBool::new(false),
        })
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Makes the eventfd readable, which wakes one waiting worker.
    pub fn notify(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // EAGAIN would mean the counter is about to overflow, which needs 2^64 unread
            // wakes; the fd is then readable anyway, so every error is safe to ignore.
            let _ = self.fd.write(1);
        }
    }

    /// Called by the worker that received the eventfd's event, before it looks for work.
    ///
    /// The counter is consumed first and the flag cleared after. In the other order a
    /// `notify` landing between the two would find the flag clear, set it and write, and the
    /// read would then swallow that write: the flag would stay set with nothing pending, and
    /// every later `notify` would be skipped for good. In this order a `notify` before the
    /// clear is skipped (its task is already queued, and the caller looks for work next), and
    /// one after it writes a fresh edge.
    pub fn acknowledge(&self) {
        // Reset the counter. EAGAIN means another worker already did.
        let _ = self.fd.read();
        self.signalled.store(false, Ordering::Release);
    }

    /// Whether a wake is recorded: the flag is set, so `notify` would skip its write.
    #[cfg(test)]
    fn is_signalled(&self) -> bool {
        self.signalled.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use std::sync::{Arc, Barrier};
    use std::thread;

    /// Tells whether the eventfd's counter is non-zero, without consuming it: a level-triggered
    /// registration of its own reports it readable while the counter is.
    struct Probe(Epoll);

    impl Probe {
        fn new(notifier: &Notifier) -> Probe {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
            let event = EpollEvent::new(EpollFlags::EPOLLIN, 7);
            epoll.add(notifier.as_fd(), event).unwrap();
            Probe(epoll)
        }

        fn pending(&self) -> bool {
            let mut events = [EpollEvent::empty(); 1];
            self.0.wait(&mut events, EpollTimeout::ZERO).unwrap() == 1
        }
    }

    /// The invariant the notifier lives by: whenever the flag says "signalled", the eventfd is
    /// readable, so the worker that polls next wakes. Races `acknowledge` against `notify`
    /// many times; with the flag cleared before the read, some round ends with the flag set and
    /// the counter consumed, and every later `notify` would be skipped.
    #[test]
    fn notifier_race_loses_wakeups() {
        let notifier = Arc::new(Notifier::new().unwrap());
        let rounds = 20_000;
        let barrier = Arc::new(Barrier::new(2));
        let other = {
            let (notifier, barrier) = (notifier.clone(), barrier.clone());
            thread::spawn(move || {
                for _ in 0..rounds {
                    barrier.wait();
                    notifier.notify();
                    barrier.wait();
                }
            })
        };
        let probe = Probe::new(&notifier);
        let mut lost = 0;
        for _ in 0..rounds {
            notifier.notify();
            barrier.wait();
            notifier.acknowledge();
            barrier.wait();
            if notifier.is_signalled() && !probe.pending() {
                lost += 1;
                // Put the pair back in step for the next round.
                notifier.signalled.store(false, Ordering::Release);
            }
        }
        other.join().unwrap();
        assert_eq!(
            lost, 0,
            "{lost} of {rounds} rounds left a wake recorded but not pending"
        );
    }
}
