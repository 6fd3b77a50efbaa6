//! A thin edge-triggered epoll wrapper.

use std::io;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

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
