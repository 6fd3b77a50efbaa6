//! A coarse, process-wide clock for timeouts: milliseconds since the first use, advanced by the
//! servers' housekeeping ticks, read on hot paths for the price of an atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();
/// Milliseconds since `START` as of the latest tick, plus one (so 0 can mean "never").
static NOW: AtomicU64 = AtomicU64::new(1);

/// The time of the latest tick, in milliseconds (never 0).
#[inline]
pub(crate) fn now() -> u64 {
    NOW.load(Ordering::Relaxed)
}

/// Nanoseconds since the first use, from the real clock (a vDSO call, no system call).
#[inline]
pub(crate) fn nanos() -> u64 {
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Reads the real clock, moves the coarse one forward, and returns it.
pub(crate) fn advance() -> u64 {
    let start = *START.get_or_init(Instant::now);
    let ms = start.elapsed().as_millis() as u64 + 1;
    NOW.fetch_max(ms, Ordering::Relaxed).max(ms)
}

/// A duration in this clock's milliseconds, saturating: `Duration::MAX` (and anything past
/// `u64::MAX` ms) becomes `u64::MAX`, "never".
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The coarse time `timeout` after `now`, saturating at `u64::MAX` ("never").
pub(crate) fn deadline(now: u64, timeout: Duration) -> u64 {
    now.saturating_add(millis(timeout))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// `Duration::MAX` as a drain timeout wrapped the deadline around to the past (and
    /// panicked in debug builds); it must mean "never".
    #[test]
    fn huge_timeout_overflowed_the_deadline() {
        assert_eq!(super::millis(Duration::MAX), u64::MAX);
        assert_eq!(super::deadline(5_000, Duration::MAX), u64::MAX);
        assert_eq!(
            super::deadline(u64::MAX - 1, Duration::from_secs(1)),
            u64::MAX
        );
        assert_eq!(super::deadline(5, Duration::from_millis(10)), 15);
    }

    #[test]
    fn advances_monotonically_and_never_reads_zero() {
        let a = super::advance();
        assert!(a >= 1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = super::advance();
        assert!(b >= a + 4, "{a} then {b}");
        assert!(super::now() >= b);
    }
}
