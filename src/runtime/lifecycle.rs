//! The server's lifecycle: one state for the whole server, which only moves forward.
//!
//! | from                       | event                                                   | to         |
//! |----------------------------|---------------------------------------------------------|------------|
//! | `Serving`                  | [`ShutdownHandle::shutdown`](crate::ShutdownHandle), a signal | `ShutdownAsked` |
//! | `ShutdownAsked`            | a worker sees the notice and starts the drain           | `Draining` |
//! | `Draining`                 | the last connection closes, or the drain deadline passes | `Stopping` |
//! | any                        | a zero `drain_timeout`, a worker fails, `run` returns   | `Stopping` |
//!
//! In `Serving` the server accepts and reads. From `Draining` on it accepts nothing, delivers
//! no new frames and closes each connection once its output is written. In `Stopping` the
//! workers return, and `run` closes what is left.
//!
//! Each transition is one atomic `fetch_max`, so any thread may ask for any later phase and
//! exactly one caller is told it made the move: that caller does what the move calls for
//! (starting the drain, waking every worker to return).

use std::sync::atomic::{AtomicU8, Ordering};

/// Where a server is in its life; ordered, since it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    Serving = 0,
    ShutdownAsked = 1,
    Draining = 2,
    Stopping = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Serving,
            1 => Phase::ShutdownAsked,
            2 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }
}

/// The one owner of the server's [`Phase`].
#[derive(Debug)]
pub(crate) struct Lifecycle(AtomicU8);

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle(AtomicU8::new(Phase::Serving as u8))
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves to `to` unless the server is there or further already. Returns `true` if this
    /// call made the move.
    pub fn advance(&self, to: Phase) -> bool {
        Phase::from_u8(self.0.fetch_max(to as u8, Ordering::AcqRel)) < to
    }

    /// A shutdown was asked for (the drain may have started, or be over).
    #[inline]
    pub fn shutdown_asked(&self) -> bool {
        self.phase() >= Phase::ShutdownAsked
    }

    /// The drain has started: accept nothing, deliver no new frames.
    #[inline]
    pub fn draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// The workers must return.
    #[inline]
    pub fn stopping(&self) -> bool {
        self.phase() == Phase::Stopping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_only_and_one_caller_makes_each_move() {
        let life = Lifecycle::default();
        assert_eq!(life.phase(), Phase::Serving);
        assert!(!life.shutdown_asked());
        assert!(life.advance(Phase::ShutdownAsked));
        assert!(!life.advance(Phase::ShutdownAsked), "already there");
        assert!(life.shutdown_asked() && !life.draining());
        assert!(life.advance(Phase::Draining));
        assert!(life.draining() && !life.stopping());
        assert!(life.advance(Phase::Stopping));
        assert!(!life.advance(Phase::Draining), "never backwards");
        assert_eq!(life.phase(), Phase::Stopping);
        assert!(life.shutdown_asked() && life.draining() && life.stopping());
    }

    #[test]
    fn stopping_skips_the_drain() {
        let life = Lifecycle::default();
        assert!(life.advance(Phase::Stopping));
        assert!(
            !life.advance(Phase::Draining),
            "a stopped server does not start a drain"
        );
        assert!(
            life.draining(),
            "past the drain counts as draining: nothing is accepted"
        );
    }

    #[test]
    fn concurrent_callers_see_one_winner() {
        let life = Lifecycle::default();
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| usize::from(life.advance(Phase::Draining))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
    }
}
