//! A periodic timer on a timerfd, registered with the poller like any other descriptor.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timer::Expiration;
use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags, TimerSetTimeFlags};

/// Drives the housekeeping tick: timeouts, accept back-off and the shutdown drain.
#[derive(Debug)]
pub(crate) struct Ticker {
    fd: TimerFd,
}

impl Ticker {
    pub fn new() -> io::Result<Ticker> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        Ok(Ticker { fd })
    }

    /// Ticks every `period`, or never with `None`.
    pub fn set_period(&self, period: Option<Duration>) -> io::Result<()> {
        match period {
            Some(p) => {
                let p = TimeSpec::from_duration(p.max(Duration::from_millis(1)));
                self.fd
                    .set(Expiration::Interval(p), TimerSetTimeFlags::empty())?;
            }
            None => self.fd.unset()?,
        }
        Ok(())
    }

    /// Consumes the expirations that made the descriptor readable.
    pub fn acknowledge(&self) {
        // EAGAIN: another worker consumed them first.
        let _ = self.fd.wait();
    }
}

impl AsFd for Ticker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
