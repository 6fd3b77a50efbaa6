//! Guarantee 7: 1 MiB length-prefixed frames to a client that reads slowly arrive intact and
//! in order (partial writes keep the rest, in order).

mod common;

use std::io::Read;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hydrogen::client::Client;
use hydrogen::{Codec, LengthPrefixed};

use common::{DEADLINE, Recorder, TestServer, config};

const MIB: usize = 1 << 20;
const FRAMES: usize = 24;

/// Frame `i`: a byte pattern that differs per frame and per position.
fn frame(i: usize) -> Vec<u8> {
    (0..MIB)
        .map(|k| (k * 31 + i * 7 + k / 4096) as u8)
        .collect()
}

#[test]
fn megabyte_frames_to_a_slow_reader_arrive_intact_and_in_order() {
    let codec = LengthPrefixed::new(2 * MIB);
    let handler = Arc::new(Recorder::echo(codec));
    let server = TestServer::start(config(2), handler);

    let client = Client::connect(server.addr, codec).unwrap();
    let mut reader = client.get_ref().try_clone().unwrap();
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut writer = client;
    let sending = thread::spawn(move || {
        for i in 0..FRAMES {
            writer.send(&frame(i)).unwrap();
        }
        writer
    });

    // Read slowly, in small pieces with pauses, so the server's socket buffer fills and its
    // writes come back partial again and again.
    let mut wire = Vec::with_capacity(FRAMES * (MIB + 4));
    let mut chunk = vec![0u8; 16 * 1024];
    let total = FRAMES * (MIB + 4);
    let mut reads = 0usize;
    while wire.len() < total {
        let n = reader.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed early");
        wire.extend_from_slice(&chunk[..n]);
        reads += 1;
        if reads.is_multiple_of(64) {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let _writer = sending.join().unwrap();

    let mut decoder = codec;
    let mut pos = 0;
    for i in 0..FRAMES {
        let decoded = decoder
            .decode(&wire[pos..])
            .unwrap()
            .unwrap_or_else(|| panic!("frame {i} incomplete"));
        assert!(
            wire[pos..][decoded.payload] == frame(i)[..],
            "frame {i} corrupted or out of order"
        );
        pos += decoded.consumed;
    }
    assert_eq!(pos, wire.len());
    server.stop().unwrap();
}
