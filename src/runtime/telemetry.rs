//! Metrics through the [`metrics`] crate's facade: the application installs a recorder
//! (Prometheus, StatsD, anything) and gets hydrogen's counters; without one, every handle is
//! a no-op.
//!
//! The handles are registered once per process, at the first [`Server::run`](crate::Server::run),
//! and shared by every server of the process: install the recorder before that.
//!
//! The metrics and what each counts are listed in the crate documentation ("Metrics").

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::CloseReason;

/// The handles, registered at the first run.
pub(crate) struct Telemetry {
    pub open: Gauge,
    pub accepted: Counter,
    pub opened: Counter,
    pub refused: Counter,
    closed: Vec<(&'static str, Counter)>,
    pub frames_in: Counter,
    pub bytes_in: Counter,
    pub frames_out: Counter,
    pub bytes_out: Counter,
    pub buffered: Gauge,
    pub accept_pauses: Counter,
    pub callbacks: Histogram,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// The process's handles (registered on first use).
#[inline]
pub(crate) fn get() -> &'static Telemetry {
    TELEMETRY.get_or_init(register)
}

fn register() -> Telemetry {
    Telemetry {
        open: gauge!("hydrogen_connections_open"),
        accepted: counter!("hydrogen_connections_accepted_total"),
        opened: counter!("hydrogen_connections_opened_total"),
        refused: counter!("hydrogen_connections_refused_total"),
        closed: CloseReason::KINDS
            .iter()
            .map(|&kind| {
                (
                    kind,
                    counter!("hydrogen_connections_closed_total", "reason" => kind),
                )
            })
            .collect(),
        frames_in: counter!("hydrogen_frames_received_total"),
        bytes_in: counter!("hydrogen_frame_bytes_received_total"),
        frames_out: counter!("hydrogen_frames_sent_total"),
        bytes_out: counter!("hydrogen_frame_bytes_sent_total"),
        buffered: gauge!("hydrogen_buffered_bytes"),
        accept_pauses: counter!("hydrogen_accept_pauses_total"),
        callbacks: histogram!("hydrogen_callback_seconds"),
    }
}

impl Telemetry {
    /// Counts a close.
    pub fn closed(&self, reason: &CloseReason) {
        let kind = reason.kind();
        if let Some((_, counter)) = self.closed.iter().find(|(k, _)| *k == kind) {
            counter.increment(1);
        }
    }
}
