//! The metrics: with a recorder installed (a small one of the test's own, through the
//! `metrics` facade as any application would), the counters follow what the server did.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hydrogen::client::Client;
use hydrogen::{LengthPrefixed, SimpleFrame};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

use common::{DEADLINE, Recorder as Handler, TestServer, config, wait_until};

/// Counters and gauges by name and labels; histograms count their samples.
#[derive(Default)]
struct Store {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

/// A histogram that counts its samples into a slot of the store.
struct Samples(Arc<AtomicU64>);

impl HistogramFn for Samples {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Store {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let mut name = key.name().to_string();
        for label in key.labels() {
            name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
        }
        self.values.lock().unwrap().entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.values
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> f64 {
        f64::from_bits(self.counter(name))
    }
}

struct Installed(&'static Store);

impl Recorder for Installed {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.slot(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.slot(key))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Samples(self.0.slot(key))))
    }
}

#[test]
fn counters_follow_connections_frames_and_closes() {
    let store: &'static Store = Box::leak(Box::default());
    metrics::set_global_recorder(Installed(store)).expect("the only recorder of this test");

    let handler = Arc::new(Handler::echo(LengthPrefixed::default()));
    let server = TestServer::start(
        hydrogen::Config {
            framing: LengthPrefixed::default().into(),
            ..config(2)
        },
        handler.clone(),
    );
    let mut good = Client::connect(server.addr, LengthPrefixed::default()).unwrap();
    good.set_read_timeout(Some(DEADLINE)).unwrap();
    for i in 0..10u8 {
        good.send(&[i; 100]).unwrap();
        assert_eq!(good.recv().unwrap().unwrap(), [i; 100]);
    }
    // A client speaking the wrong framing: a protocol error (a SimpleFrame header announces
    // a length the u32 framing refuses).
    let mut bad = Client::connect(server.addr, SimpleFrame).unwrap();
    bad.send(&[0xff; 200]).unwrap();
    wait_until("the protocol error", || {
        store.counter("hydrogen_connections_closed_total{reason=protocol}") == 1
    });
    assert_eq!(store.counter("hydrogen_connections_accepted_total"), 2);
    // Plaintext has no handshake: both reached the handler, the bad one included.
    assert_eq!(store.counter("hydrogen_connections_opened_total"), 2);
    assert_eq!(store.counter("hydrogen_frames_received_total"), 10);
    assert_eq!(store.counter("hydrogen_frame_bytes_received_total"), 1000);
    assert_eq!(store.counter("hydrogen_frames_sent_total"), 10);
    assert_eq!(store.counter("hydrogen_frame_bytes_sent_total"), 1000);
    assert_eq!(store.gauge("hydrogen_connections_open"), 1.0);
    wait_until("callback timings", || {
        store.counter("hydrogen_callback_seconds") >= 1
    });

    drop(good);
    wait_until("the peer's close", || {
        store.counter("hydrogen_connections_closed_total{reason=peer_closed}") == 1
    });
    assert_eq!(store.gauge("hydrogen_connections_open"), 0.0);
    drop(bad);
    server.stop().unwrap();
}
