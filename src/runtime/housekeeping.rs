//! The housekeeping tick and the shutdown drain: timeouts, accept back-off, and closing every
//! connection once its output is written (or the drain's deadline passes).
//!
//! The tick is a timerfd on the shared epoll instance, so whichever worker is free takes it.
//! It runs only while something needs it: a timeout in the `Config`, a paused accept, or a
//! drain in progress.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::runtime::clock;
use crate::runtime::lifecycle::Phase;
use crate::runtime::timeouts::Stamps;
use crate::runtime::worker::Worker;
use crate::{Handler, Transport};

/// The tick while accept is paused or a drain runs: the bound on how late either notices
/// that it can go on.
const FAST_TICK: Duration = Duration::from_millis(100);

impl<T: Transport, H: Handler> Worker<'_, T, H> {
    /// One housekeeping tick.
    pub(crate) fn on_tick(&mut self) {
        let core = self.core;
        core.ticker.acknowledge();
        let now = clock::advance();
        if core.lifecycle().draining() {
            if now >= core.drain_deadline.load(Ordering::Acquire) {
                tracing::warn!("drain deadline passed; closing the connections left");
                core.queue.stop();
            }
            return;
        }
        if core.accept_paused.swap(false, Ordering::AcqRel) {
            for listener in 0..core.listeners.len() {
                self.accept(listener);
            }
            if !core.accept_paused.load(Ordering::Acquire) {
                tracing::info!("accepting again");
                self.retime();
            }
        }
        if core.settings.timeouts.any() {
            self.sweep(now);
        }
        self.relieve();
    }

    /// Closes the connections past a timeout, looking only at those due (see
    /// [`timeouts`](crate::runtime::timeouts)).
    fn sweep(&self, now: u64) {
        let core = self.core;
        let due = core.deadlines.take_due(now);
        if due.is_empty() {
            return;
        }
        let mut rearm = Vec::new();
        for (id, slot) in due {
            let Some(conn) = core.table.get_id(slot, id) else {
                continue; // closed since
            };
            let stamps = Stamps {
                active: conn.last_active.load(Ordering::Relaxed),
                partial: conn.partial_since.load(Ordering::Relaxed),
                establishing: conn.establishing_since(),
                header: conn.header_pending(),
            };
            let Some(reason) = core.settings.timeouts.expired(now, stamps) else {
                if let Some(next) = core.settings.timeouts.next_check(now, stamps) {
                    rearm.push((next, id, slot));
                }
                continue;
            };
            conn.request(|conn, state| {
                if state.closing.is_some() {
                    return false;
                }
                tracing::debug!(conn = conn.id, peer = %conn.addr(), %reason, "timed out");
                conn.set_closing(state, reason);
                true
            });
        }
        core.deadlines.arm_all(rearm);
    }

    /// Starts the graceful shutdown: stop accepting, stop reading, and give every connection a
    /// turn to write out what it has queued. Connections close as their queues empty; the
    /// workers stop when none is left or the drain's deadline passes.
    pub(crate) fn begin_drain(&mut self) {
        let core = self.core;
        if !core.lifecycle().advance(Phase::Draining) {
            return; // started already, or the server is stopping
        }
        // Stop listening, not just accepting: connections that reach a draining server's
        // backlog would never be served. Shutting a listening socket down makes the kernel
        // refuse new ones (and reset those not yet accepted), so that clients, and load
        // balancers, try another instance at once.
        for listener in &core.listeners {
            if let Err(err) = core.poller.delete(listener) {
                tracing::debug!(error = %err, "cannot remove the listener from epoll");
            }
            listener.stop_listening();
        }
        let drain_timeout = core.settings.drain_timeout;
        if drain_timeout.is_zero() {
            core.queue.stop();
            return;
        }
        let deadline = clock::deadline(clock::advance(), drain_timeout);
        core.drain_deadline.store(deadline, Ordering::Release);
        tracing::info!(timeout = ?drain_timeout, "shutting down: draining connections");
        let mut all = Vec::new();
        core.table.for_each(|conn| all.push(conn.clone()));
        for conn in all {
            // A turn for each: it sees the drain, reads no more and closes once written.
            conn.request(|_, _| true);
        }
        self.retime();
        self.check_drained();
    }

    /// Counts a connection that begins (`true`) or ends (`false`) its establishing phase,
    /// and retimes the tick when the first begins or the last ends.
    pub(crate) fn establishing(&self, begins: bool) {
        let core = self.core;
        let edge = if begins {
            core.establishing.fetch_add(1, Ordering::AcqRel) == 0
        } else {
            core.establishing.fetch_sub(1, Ordering::AcqRel) == 1
        };
        if edge && core.settings.handshake_tick.is_some() {
            self.retime();
        }
    }

    /// Stops the workers once a drain has closed every connection.
    pub(crate) fn check_drained(&self) {
        if self.core.table.is_empty() {
            self.core.queue.stop();
        }
    }

    /// Sets the tick for what currently needs it.
    pub(crate) fn retime(&self) {
        let core = self.core;
        let _serial = core.retiming.lock();
        let busy = core.lifecycle().draining() || core.accept_paused.load(Ordering::Acquire);
        // The handshake timeout needs the tick only while some connection is establishing.
        let tick = match core.settings.handshake_tick {
            Some(handshake) if core.establishing.load(Ordering::Acquire) > 0 => Some(
                core.settings
                    .tick
                    .map_or(handshake, |tick| tick.min(handshake)),
            ),
            _ => core.settings.tick,
        };
        let period = match (busy, tick) {
            (true, Some(tick)) => Some(tick.min(FAST_TICK)),
            (true, None) => Some(FAST_TICK),
            (false, tick) => tick,
        };
        if let Err(err) = core.ticker.set_period(period) {
            tracing::warn!(error = %err, "cannot set the housekeeping timer");
        }
    }
}
