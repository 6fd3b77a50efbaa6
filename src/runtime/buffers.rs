//! The server-wide memory ceiling, [`Config::max_buffered`](crate::Config::max_buffered).
//!
//! Every connection's share is what its stream holds: the bytes of an incomplete inbound frame
//! ([`Stream::buffered_input`](crate::Stream::buffered_input)) plus its outbound queue
//! ([`Stream::pending_output`](crate::Stream::pending_output)). The owner of a turn records the
//! share at the end of each round, a send from another thread after it writes, and the close
//! gives it back; the server-wide total is one atomic counter.
//!
//! | total                               | what happens                                           |
//! |-------------------------------------|--------------------------------------------------------|
//! | over `max_buffered`                 | a connection holding [`Buffers::share`] or more is no longer read ("paused"): TCP flow control pushes back on its peer |
//! | back to 7/8 of `max_buffered`       | every paused connection is read again                   |
//! | over 1.5 × `max_buffered`           | the paused connections holding the most are closed with [`CloseReason::MaxBuffered`](crate::CloseReason::MaxBuffered) until the rest fits, and a send that leaves a connection holding more than 64 KiB closes it |
//!
//! Connections that hold little (request/reply traffic whose frames complete at once, replies
//! the socket takes at once) are never paused, so they keep being served. A paused connection
//! holding an incomplete frame is also subject to
//! [`Config::frame_timeout`](crate::Config::frame_timeout) as usual.
//!
//! Anchor: Envoy's overload manager, which stops reading and then resets the streams using the
//! most memory as the heap grows past configured thresholds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Over the ceiling, a connection holding at least this much is paused whatever the fair
/// share: enough for a few ordinary frames in flight, far below an attacker's partial frame.
pub(crate) const PAUSE_FLOOR: usize = 64 * 1024;

/// The byte accounting behind `max_buffered`, shared by the workers and the [`Link`]s of the
/// connections.
///
/// [`Link`]: crate::socket::Link
#[derive(Debug)]
pub(crate) struct Buffers {
    /// The ceiling (`usize::MAX` when there is none).
    limit: usize,
    /// Bytes held across all connections.
    total: AtomicUsize,
    /// Connections paused for holding too much: `(slot, id)`, possibly closed since.
    paused: Mutex<Vec<(usize, u64)>>,
    /// `paused` is not empty (read without its lock).
    any_paused: AtomicBool,
    /// A worker is closing connections past the hard limit.
    shedding: AtomicBool,
}

impl Buffers {
    pub fn new(limit: Option<usize>) -> Buffers {
        Buffers {
            limit: limit.unwrap_or(usize::MAX),
            total: AtomicUsize::new(0),
            paused: Mutex::new(Vec::new()),
            any_paused: AtomicBool::new(false),
            shedding: AtomicBool::new(false),
        }
    }

    /// Records that a connection which held `*held` bytes now holds `now`.
    #[inline]
    pub fn set(&self, held: &mut usize, now: usize) {
        if now > *held {
            self.total.fetch_add(now - *held, Ordering::Relaxed);
        } else if now < *held {
            self.total.fetch_sub(*held - now, Ordering::Relaxed);
        }
        *held = now;
    }

    /// Bytes held across all connections.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The ceiling is passed: connections holding a [`share`](Self::share) are paused.
    #[inline]
    pub fn over(&self) -> bool {
        self.total() > self.limit
    }

    /// The second threshold (1.5 × the ceiling) is passed: the biggest holders are closed.
    #[inline]
    pub fn over_hard(&self) -> bool {
        self.total() > self.limit.saturating_add(self.limit / 2)
    }

    /// Some connections are paused and the total is back under 7/8 of the ceiling.
    #[inline]
    pub fn may_resume(&self) -> bool {
        self.any_paused.load(Ordering::Relaxed) && self.total() <= self.limit - self.limit / 8
    }

    /// Over the ceiling, a connection holding this much or more is paused: its fair share of
    /// the ceiling among `open` connections, and never more than [`PAUSE_FLOOR`].
    pub fn share(&self, open: usize) -> usize {
        (self.limit / open.max(1)).min(PAUSE_FLOOR)
    }

    /// Remembers a paused connection, to resume (or shed) it later.
    pub fn pause(&self, slot: usize, id: u64) {
        self.paused.lock().push((slot, id));
        self.any_paused.store(true, Ordering::Relaxed);
    }

    /// Takes every paused connection, to resume them.
    pub fn take_paused(&self) -> Vec<(usize, u64)> {
        let mut paused = self.paused.lock();
        self.any_paused.store(false, Ordering::Relaxed);
        std::mem::take(&mut *paused)
    }

    /// The paused connections, left paused.
    pub fn paused(&self) -> Vec<(usize, u64)> {
        self.paused.lock().clone()
    }

    /// How far the total is over the ceiling.
    pub fn excess(&self) -> usize {
        self.total().saturating_sub(self.limit)
    }

    /// Claims the right to shed; `false` if another worker is at it.
    pub fn start_shedding(&self) -> bool {
        !self.shedding.swap(true, Ordering::Acquire)
    }

    pub fn done_shedding(&self) {
        self.shedding.store(false, Ordering::Release);
    }
}

/// The default ceiling: a quarter of the memory this process may use (the machine's, or the
/// cgroup's limit if lower), 1 GiB if neither can be read.
///
/// A quarter leaves room for everything else the process and the kernel's socket buffers need,
/// while no ordinary workload comes near it: 15,000 connections each with a 64 KiB frame in
/// flight hold under 1 GiB.
pub(crate) fn default_max_buffered() -> usize {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| parse_mem_total(&meminfo));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|max| max.trim().parse::<usize>().ok());
    match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c) / 4,
        (Some(m), None) => m / 4,
        (None, Some(c)) => c / 4,
        (None, None) => 1 << 30,
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let b = Buffers::new(Some(800));
        let mut a = 0;
        let mut c = 0;
        b.set(&mut a, 500);
        b.set(&mut c, 300);
        assert_eq!(b.total(), 800);
        assert!(!b.over());
        b.set(&mut c, 301);
        assert!(b.over() && !b.over_hard());
        b.set(&mut a, 900);
        assert!(b.over_hard());
        assert_eq!(b.excess(), 401);
        b.pause(3, 7);
        assert!(!b.may_resume());
        b.set(&mut a, 0);
        b.set(&mut c, 700);
        assert!(b.may_resume(), "700 <= 7/8 of 800");
        assert_eq!(b.take_paused(), [(3, 7)]);
        assert!(!b.may_resume());
        assert_eq!(b.share(4), 200);
        assert_eq!(b.share(0), 800);
        assert_eq!(Buffers::new(Some(1 << 40)).share(2), PAUSE_FLOOR);
    }

    #[test]
    fn no_ceiling_is_never_over() {
        let b = Buffers::new(None);
        let mut a = 0;
        b.set(&mut a, usize::MAX / 2);
        assert!(!b.over() && !b.over_hard());
    }

    #[test]
    fn mem_total_parses() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_576_000 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
        assert!(default_max_buffered() >= 1 << 20);
    }
}
