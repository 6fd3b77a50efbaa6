//! Idle and frame timeouts at a cost proportional to what is due, not to the connections open.
//!
//! Each connection has one entry in an ordered set, at the earliest time it could expire. The
//! entry is not moved when the connection is active (that would cost a lock per read); instead
//! the tick takes only the entries that are due, and for each either closes the connection or
//! puts it back at its real next deadline, computed from its activity stamps. A connection is
//! therefore looked at about once per timeout period however busy it is, and an idle server
//! with thousands of connections looks at none of them on most ticks.
//!
//! Why the entry is never late: at the time `t` an entry is (re)armed, the connection's known
//! deadlines are `last_active + idle`, with a frame in progress `partial_since + frame`, and
//! while the stream is not established `accepted + handshake`.
//! Activity after `t` only moves the idle deadline later, and a frame that starts after `t`
//! cannot expire before `t + frame`. So the minimum of those is a lower bound of every deadline
//! the connection can reach before the entry comes due.

use std::collections::BTreeSet;

use parking_lot::Mutex;

use crate::handler::CloseReason;

/// The timeouts in force, in [`clock`](crate::runtime::clock) milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub idle: Option<u64>,
    pub frame: Option<u64>,
    /// Applies only while a connection is not established (see [`Stamps::establishing`]).
    pub handshake: Option<u64>,
    /// Applies only while a connection waits for its PROXY header (see [`Stamps::header`]).
    pub header: Option<u64>,
}

/// A connection's activity stamps, in [`clock`](crate::runtime::clock) milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stamps {
    /// Bytes last moved.
    pub active: u64,
    /// The incomplete frame held began (0: none).
    pub partial: u64,
    /// The connection was accepted and is not established yet (0: established).
    pub establishing: u64,
    /// The connection's PROXY header has not arrived yet (it is establishing since
    /// `establishing`).
    pub header: bool,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.idle.is_some()
            || self.frame.is_some()
            || self.handshake.is_some()
            || self.header.is_some()
    }

    /// Which timeout, if any, has passed at `now` for a connection with these stamps. A
    /// PROXY header timeout wins, then a handshake timeout, then a frame timeout.
    pub fn expired(&self, now: u64, stamps: Stamps) -> Option<CloseReason> {
        let Stamps {
            active,
            partial,
            establishing,
            header,
        } = stamps;
        if let Some(limit) = self.header
            && header
            && establishing != 0
            && now.saturating_sub(establishing) > limit
        {
            return Some(CloseReason::ProxyHeaderTimeout);
        }
        if let Some(limit) = self.handshake
            && establishing != 0
            && now.saturating_sub(establishing) > limit
        {
            return Some(CloseReason::HandshakeTimeout);
        }
        if let Some(limit) = self.frame
            && partial != 0
            && now.saturating_sub(partial) > limit
        {
            return Some(CloseReason::FrameTimeout);
        }
        if let Some(limit) = self.idle
            && now.saturating_sub(active) > limit
        {
            return Some(CloseReason::IdleTimeout);
        }
        None
    }

    /// The earliest time at which a connection looked at `now` could be expired (see the
    /// module documentation), or `None` if no timeout is set.
    pub fn next_check(&self, now: u64, stamps: Stamps) -> Option<u64> {
        let Stamps {
            active,
            partial,
            establishing,
            header,
        } = stamps;
        let idle = self.idle.map(|limit| active.saturating_add(limit));
        let frame = self.frame.map(|limit| {
            let start = if partial != 0 { partial } else { now };
            start.saturating_add(limit)
        });
        // Established connections never go back, so only a connection establishing now has
        // a handshake deadline.
        let handshake = self
            .handshake
            .filter(|_| establishing != 0)
            .map(|limit| establishing.saturating_add(limit));
        let proxy = self
            .header
            .filter(|_| header && establishing != 0)
            .map(|limit| establishing.saturating_add(limit));
        let due = [idle, frame, handshake, proxy]
            .into_iter()
            .flatten()
            .min()?;
        // Expired means strictly past the deadline.
        Some(due.saturating_add(1).max(now.saturating_add(1)))
    }
}

/// Connections ordered by when they must next be looked at: `(due, id, slot)`.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    set: Mutex<BTreeSet<(u64, u64, usize)>>,
}

impl Deadlines {
    /// Looks at connection `id` in `slot` again at `due`.
    pub fn arm(&self, due: u64, id: u64, slot: usize) {
        self.set.lock().insert((due, id, slot));
    }

    /// Re-arms many at once.
    pub fn arm_all(&self, entries: impl IntoIterator<Item = (u64, u64, usize)>) {
        let mut set = self.set.lock();
        set.extend(entries);
    }

    /// Takes every entry due at `now`: `(id, slot)`, earliest first.
    pub fn take_due(&self, now: u64) -> Vec<(u64, usize)> {
        let mut set = self.set.lock();
        let Some(&(first, _, _)) = set.first() else {
            return Vec::new();
        };
        if first > now {
            return Vec::new();
        }
        let later = set.split_off(&(now.saturating_add(1), 0, 0));
        let due = std::mem::replace(&mut *set, later);
        drop(set);
        due.into_iter().map(|(_, id, slot)| (id, slot)).collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Limits = Limits {
        idle: Some(1_000),
        frame: Some(300),
        handshake: None,
        header: None,
    };

    fn at(active: u64, partial: u64) -> Stamps {
        Stamps {
            active,
            partial,
            establishing: 0,
            header: false,
        }
    }

    #[test]
    fn expiry_matches_the_limits() {
        assert!(
            BOTH.expired(1_000, at(0, 0)).is_none(),
            "exactly at the limit"
        );
        assert!(matches!(
            BOTH.expired(1_001, at(0, 0)),
            Some(CloseReason::IdleTimeout)
        ));
        assert!(matches!(
            BOTH.expired(500, at(450, 100)),
            Some(CloseReason::FrameTimeout)
        ));
        assert!(BOTH.expired(500, at(450, 300)).is_none());
        let none = Limits {
            idle: None,
            frame: None,
            handshake: None,
            header: None,
        };
        assert!(none.expired(u64::MAX, at(0, 1)).is_none());
        assert_eq!(none.next_check(5, at(5, 0)), None);
    }

    #[test]
    fn next_check_is_never_after_a_reachable_deadline() {
        // No frame in progress: a frame starting now could expire at now + 300.
        assert_eq!(BOTH.next_check(100, at(100, 0)), Some(401));
        // A frame in progress since 50.
        assert_eq!(BOTH.next_check(100, at(100, 50)), Some(351));
        // Idle nearer than any frame.
        let idle_only = Limits {
            idle: Some(1_000),
            frame: None,
            handshake: None,
            header: None,
        };
        assert_eq!(idle_only.next_check(900, at(10, 0)), Some(1_011));
        // Already past: look again at the next tick, not in the past.
        assert_eq!(idle_only.next_check(5_000, at(10, 0)), Some(5_001));
    }

    #[test]
    fn handshake_timeout_applies_only_while_establishing() {
        let limits = Limits {
            handshake: Some(500),
            ..BOTH
        };
        let establishing = Stamps {
            active: 100,
            partial: 0,
            establishing: 100,
            header: false,
        };
        assert!(
            limits.expired(600, establishing).is_none(),
            "exactly at the limit"
        );
        assert!(matches!(
            limits.expired(601, establishing),
            Some(CloseReason::HandshakeTimeout)
        ));
        // It wins over a frame timeout due at the same time.
        let both = Stamps {
            partial: 100,
            ..establishing
        };
        assert!(matches!(
            limits.expired(700, both),
            Some(CloseReason::HandshakeTimeout)
        ));
        // Established: no handshake deadline, the others as before.
        assert!(limits.expired(601, at(590, 0)).is_none());
        assert_eq!(limits.next_check(100, establishing), Some(401));
        let handshake_only = Limits {
            idle: None,
            frame: None,
            handshake: Some(500),
            header: None,
        };
        assert_eq!(handshake_only.next_check(100, establishing), Some(601));
        assert_eq!(handshake_only.next_check(100, at(100, 0)), None);
    }

    #[test]
    fn proxy_header_timeout_applies_only_while_the_header_is_awaited() {
        let limits = Limits {
            idle: None,
            frame: None,
            handshake: Some(10_000),
            header: Some(5_000),
        };
        let waiting = Stamps {
            active: 100,
            partial: 0,
            establishing: 100,
            header: true,
        };
        assert_eq!(limits.next_check(100, waiting), Some(5_101));
        assert!(
            limits.expired(5_100, waiting).is_none(),
            "exactly at the limit"
        );
        assert!(matches!(
            limits.expired(5_101, waiting),
            Some(CloseReason::ProxyHeaderTimeout)
        ));
        // Header read, TLS handshake still under way: the handshake timeout only.
        let handshaking = Stamps {
            header: false,
            ..waiting
        };
        assert!(limits.expired(5_101, handshaking).is_none());
        assert_eq!(limits.next_check(100, handshaking), Some(10_101));
    }

    /// The sweep was O(connections): it scanned the whole table on every tick. With 15,000
    /// connections armed for later, a tick takes only what is due.
    #[test]
    fn timeout_sweep_scanned_every_connection() {
        let deadlines = Deadlines::default();
        for id in 0..15_000u64 {
            deadlines.arm(10_000 + id, id, id as usize);
        }
        assert!(deadlines.take_due(9_999).is_empty());
        assert_eq!(deadlines.len(), 15_000);
        let due = deadlines.take_due(10_009);
        assert_eq!(due.len(), 10, "only the ten due entries are taken");
        assert_eq!(due[0], (0, 0));
        assert_eq!(deadlines.len(), 14_990);
        deadlines.arm_all([(20_000, 1, 1)]);
        assert_eq!(deadlines.len(), 14_991);
    }
}
