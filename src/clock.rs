//! A coarse, process-wide clock for timeouts: milliseconds since the first use, advanced by the
//! servers' housekeeping ticks, read on hot paths for the price of an atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();
/// Milliseconds since `START` as of the latest tick, plus one (so 0 can mean "never").
static NOW: AtomicU64 = AtomicU64::new(1);

/// The time of the latest tick, in milliseconds (never 0).
#[inline]
pub(crate) fn now() -> u64 {
    NOW.load(Ordering::Relaxed)
}

/// Reads the real clock, moves the coarse one forward, and returns it.
pub(crate) fn advance() -> u64 {
    let start = *START.get_or_init(Instant::now);
    let ms = start.elapsed().as_millis() as u64 + 1;
    NOW.fetch_max(ms, Ordering::Relaxed).max(ms)
}

#[cfg(test)]
mod tests {
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
