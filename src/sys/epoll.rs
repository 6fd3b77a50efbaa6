//! A thin edge-triggered epoll wrapper and an eventfd notifier.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// One readiness report: the token it was registered with and whether it reports input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub token: u64,
    /// Data, a hang-up or an error may be waiting: worth a read.
    pub readable: bool,
    /// The peer hung up or the socket has an error: read until the end, not just until a
    /// short read.
    pub hangup: bool,
    /// The peer sent urgent (`MSG_OOB`) data. A read stops short at the urgent mark with
    /// more input behind it and no new edge to come, so a short read does not mean drained.
    pub urgent: bool,
}

/// A reusable buffer for [`Poller::wait`].
pub(crate) struct Events(Vec<EpollEvent>);

impl Events {
    pub fn with_capacity(n: usize) -> Events {
        Events(vec![EpollEvent::empty(); n.max(1)])
    }
}

/// The epoll instance every worker waits on.
///
/// Sockets are registered once, edge-triggered, for input and output together, and never
/// modified: who may touch a connection is decided by the connection's claim state, not by
/// re-arming, which saves an `epoll_ctl` per wake-up. Several threads may call [`wait`](Self::wait)
/// at once; the kernel wakes one waiter per new event.
#[derive(Debug)]
pub(crate) struct Poller {
    epoll: Epoll,
}

const HANGUP: EpollFlags = EpollFlags::EPOLLRDHUP
    .union(EpollFlags::EPOLLHUP)
    .union(EpollFlags::EPOLLERR);

const READABLE: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLPRI)
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLHUP)
    .union(EpollFlags::EPOLLERR);

impl Poller {
    pub fn new() -> io::Result<Poller> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(Poller { epoll })
    }

    /// Registers a connection socket: input, urgent data, output and peer hang-up,
    /// edge-triggered.
    pub fn add_socket(&self, fd: impl AsFd, token: u64) -> io::Result<()> {
        let flags = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLPRI
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLET;
        Ok(self.epoll.add(fd, EpollEvent::new(flags, token))?)
    }

    /// Registers a descriptor for input only, edge-triggered (the listener and the notifier).
    pub fn add_input(&self, fd: impl AsFd, token: u64) -> io::Result<()> {
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        Ok(self.epoll.add(fd, EpollEvent::new(flags, token))?)
    }

    /// Removes a descriptor. Must happen before the descriptor is closed, so the kernel never
    /// reports a later socket that reuses the number under this one's token.
    pub fn delete(&self, fd: impl AsFd) -> io::Result<()> {
        Ok(self.epoll.delete(fd)?)
    }

    /// Waits for at least one event and returns those that arrived; with `block` false, returns
    /// at once with what is ready. An interrupted wait returns no events.
    pub fn wait<'a>(
        &self,
        events: &'a mut Events,
        block: bool,
    ) -> io::Result<impl Iterator<Item = Event> + 'a> {
        let timeout = if block {
            EpollTimeout::NONE
        } else {
            EpollTimeout::ZERO
        };
        let n = match self.epoll.wait(&mut events.0, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(events.0[..n].iter().map(|ev| Event {
            token: ev.data(),
            readable: ev.events().intersects(READABLE),
            hangup: ev.events().intersects(HANGUP),
            urgent: ev.events().contains(EpollFlags::EPOLLPRI),
        }))
    }
}

/// Wakes a worker out of `epoll_wait` through an eventfd registered with the [`Poller`].
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
