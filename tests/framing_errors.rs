//! Hostile and unusual framing: oversized and malformed headers, boundary lengths, byte-by-byte
//! and all-at-once delivery, resets and FINs in the middle of a frame. Bad input closes only the
//! offending connection, with the reason that says why.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;

use hydrogen::client::Client;
use hydrogen::{Codec, LengthPrefixed, SimpleFrame};

use common::{
    DEADLINE, Recorder, TestServer, assert_closed_by_server, config, reset_on_close, wait_until,
};

/// A connected client with a read timeout, so a missing reply fails instead of hanging.
fn client<C: Codec>(addr: SocketAddr, codec: C) -> Client<C> {
    let c = Client::connect(addr, codec).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c
}

#[track_caller]
fn round_trip<C: Codec>(c: &mut Client<C>, payload: &[u8]) {
    c.send(payload).unwrap();
    let reply = c.recv().unwrap().expect("reply, not end of stream");
    assert_eq!(reply, payload, "echo differs");
}

/// The wire bytes of `payloads` framed by `codec`, back to back.
fn wire<C: Codec>(mut codec: C, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        codec.encode(p, &mut out).unwrap();
    }
    out
}

/// Whether connection `id` has been removed (so far).
fn is_removed<C>(handler: &Recorder<C>, id: u64) -> bool {
    handler.removed.lock().iter().any(|(i, _)| *i == id)
}

#[test]
fn oversized_length_prefix_is_a_protocol_error_and_others_keep_echoing() {
    let codec = LengthPrefixed::new(1024);
    let handler = Arc::new(Recorder::echo(codec));
    let server = TestServer::start(config(2), handler.clone());

    let mut good = client(server.addr, codec);
    round_trip(&mut good, b"before");
    let good_id = handler.nth_opened(1).id();

    // 1025 = max + 1, then the largest header there is, followed by junk that must not be
    // waited for (the header alone decides).
    for (n, announced) in [(2, 1025u32), (3, u32::MAX)] {
        let mut bad = TcpStream::connect(server.addr).unwrap();
        let mut bytes = announced.to_be_bytes().to_vec();
        if announced == u32::MAX {
            bytes.extend_from_slice(&[0x55; 100]);
        }
        bad.write_all(&bytes).unwrap();
        let id = handler.nth_opened(n).id();
        assert_eq!(
            handler.removal_of(id),
            "protocol",
            "header announcing {announced:#x} bytes"
        );
        assert_closed_by_server(&bad, &format!("header {announced:#x}"));
        assert!(handler.frames_of(id).is_empty(), "no frame delivered");

        // The good connection never noticed.
        round_trip(&mut good, &announced.to_be_bytes());
        assert!(!is_removed(&handler, good_id), "good connection removed");
    }

    // A second, new connection is served as well.
    let mut second = client(server.addr, codec);
    for i in 0..10u8 {
        round_trip(&mut second, &[i; 1024]);
    }
    round_trip(&mut good, b"after");
    assert!(!is_removed(&handler, good_id));
    server.stop().unwrap();
}

#[test]
fn simple_frame_with_wrong_start_or_end_byte_is_a_protocol_error() {
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server = TestServer::start(config(2), handler.clone());
    let mut good = client(server.addr, SimpleFrame);
    round_trip(&mut good, b"hello");

    // Wrong start byte: rejected from the first byte.
    let mut bad_start = TcpStream::connect(server.addr).unwrap();
    bad_start
        .write_all(&[0x02, 0x00, 0x01, b'x', SimpleFrame::END])
        .unwrap();
    let id = handler.nth_opened(2).id();
    assert_eq!(handler.removal_of(id), "protocol", "wrong start byte");
    assert_closed_by_server(&bad_start, "wrong start byteX");
    assert!(handler.frames_of(id).is_empty());

    // A good frame, then one with a wrong end byte: the first is delivered and answered,
    // then the connection is closed.
    let mut bad_end = client(server.addr, SimpleFrame);
    let mut bytes = wire(SimpleFrame, &[b"fine".to_vec()]);
    bytes.extend_from_slice(&[SimpleFrame::START, 0x00, 0x01, b'x', 0x18]);
    bad_end.get_ref().write_all(&bytes).unwrap();
    let id = handler.nth_opened(3).id();
    assert_eq!(handler.removal_of(id), "protocol", "wrong end byte");
    assert_eq!(handler.frames_of(id), vec![b"fine".to_vec()]);
    assert_eq!(
        bad_end.recv().unwrap().as_deref(),
        Some(&b"fine"[..]),
        "the frame before the bad one is answered"
    );
    assert_closed_by_server(bad_end.get_ref(), "wrong end byte");

    round_trip(&mut good, b"still here");
    server.stop().unwrap();
}

#[test]
fn zero_length_max_length_and_max_plus_one_frames() {
    const MAX: usize = 4096;
    let codec = LengthPrefixed::new(MAX);
    let handler = Arc::new(Recorder::echo(codec));
    let server = TestServer::start(config(2), handler.clone());

    let mut c = client(server.addr, codec);
    let full: Vec<u8> = (0..MAX).map(|i| (i * 7 + i / 256) as u8).collect();
    c.feed(b"").unwrap();
    c.feed(&full).unwrap();
    c.flush().unwrap();
    // max + 1, header and payload, written raw (the client's codec refuses to encode it).
    let mut over = ((MAX + 1) as u32).to_be_bytes().to_vec();
    over.extend(std::iter::repeat_n(0xEE, MAX + 1));
    // The server may close as soon as it has the header; what becomes of the rest is moot.
    let _ = c.get_ref().write_all(&over);

    assert_eq!(c.recv().unwrap().expect("empty frame echoed"), b"");
    let echoed = c.recv().unwrap().expect("max-length frame echoed");
    assert!(
        echoed == full,
        "max-length frame differs ({} bytes)",
        echoed.len()
    );
    assert_closed_by_server(c.get_ref(), "max + 1 frame");
    let id = handler.nth_opened(1).id();
    assert_eq!(handler.removal_of(id), "protocol");
    assert_eq!(handler.frames_of(id), vec![Vec::new(), full]);

    // SimpleFrame: the largest payload the format carries, 65535 bytes, and an empty one.
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server2 = TestServer::start(config(2), handler.clone());
    let mut c = client(server2.addr, SimpleFrame);
    let max: Vec<u8> = (0..SimpleFrame::MAX_PAYLOAD)
        .map(|i| (i % 253) as u8)
        .collect();
    round_trip(&mut c, &max);
    round_trip(&mut c, b"");
    round_trip(&mut c, &max);
    let id = handler.nth_opened(1).id();
    assert!(!is_removed(&handler, id));
    server2.stop().unwrap();
    server.stop().unwrap();
}

/// Payloads of assorted sizes, empty ones and bytes that look like framing among them.
fn assorted_payloads() -> Vec<Vec<u8>> {
    let mut payloads = vec![
        Vec::new(),
        vec![SimpleFrame::START],
        vec![SimpleFrame::END, SimpleFrame::START, 0, 0, 0],
        b"hello".to_vec(),
        Vec::new(),
    ];
    for len in [1usize, 2, 3, 4, 5, 17, 255, 256, 300] {
        payloads.push((0..len).map(|i| (i * 13 + len) as u8).collect());
    }
    payloads
}

fn byte_by_byte<C: Codec + Clone + Sync>(codec: C) {
    let handler = Arc::new(Recorder::echo(codec.clone()));
    let server = TestServer::start(config(2), handler.clone());
    let payloads = assorted_payloads();
    let bytes = wire(codec.clone(), &payloads);

    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut reader = Client::from_stream(tcp.try_clone().unwrap(), codec);
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    let writer = thread::spawn(move || {
        let mut tcp = tcp;
        for b in &bytes {
            tcp.write_all(std::slice::from_ref(b)).unwrap();
        }
        bytes.len()
    });
    for (i, p) in payloads.iter().enumerate() {
        let got = reader
            .recv()
            .unwrap()
            .unwrap_or_else(|| panic!("frame {i}: end of stream"));
        assert_eq!(&got, p, "frame {i} differs or out of order");
    }
    let written = writer.join().unwrap();
    let id = handler.nth_opened(1).id();
    assert_eq!(
        handler.frames_of(id),
        payloads,
        "frames delivered in order ({written} one-byte writes)"
    );
    assert!(!is_removed(&handler, id));
    server.stop().unwrap();
}

#[test]
fn frames_written_one_byte_per_write_are_echoed_intact_and_in_order() {
    byte_by_byte(LengthPrefixed::new(1024));
    byte_by_byte(SimpleFrame);
}

#[test]
fn ten_thousand_frames_in_one_write_are_echoed_in_order() {
    const N: u32 = 10_000;
    let codec = LengthPrefixed::new(1024);
    let handler = Arc::new(Recorder::echo(codec));
    let server = TestServer::start(config(2), handler.clone());
    let payload = |i: u32| -> Vec<u8> {
        let mut p = i.to_be_bytes().to_vec();
        p.extend((0..i % 61).map(|k| (k + i) as u8));
        p
    };
    let payloads: Vec<Vec<u8>> = (0..N).map(payload).collect();
    let bytes = wire(codec, &payloads);
    let total = bytes.len();

    let mut c = client(server.addr, codec);
    let mut tcp = c.get_ref().try_clone().unwrap();
    // The replies come back while the requests still go out: write from another thread.
    let writer = thread::spawn(move || tcp.write_all(&bytes));
    for (i, p) in payloads.iter().enumerate() {
        let got = c
            .recv()
            .unwrap()
            .unwrap_or_else(|| panic!("frame {i}: end of stream"));
        assert!(&got == p, "frame {i} differs or out of order");
    }
    writer.join().unwrap().unwrap();
    let id = handler.nth_opened(1).id();
    assert_eq!(
        handler.frames_of(id).len(),
        N as usize,
        "frames delivered from one {total}-byte write"
    );
    server.stop().unwrap();
}

#[test]
fn reset_in_the_middle_of_a_frame_is_a_reset() {
    let codec = LengthPrefixed::new(1024);
    let handler = Arc::new(Recorder::echo(codec));
    let server = TestServer::start(config(2), handler.clone());
    let mut c = client(server.addr, codec);
    round_trip(&mut c, b"complete");
    let id = handler.nth_opened(1).id();

    // Three bytes of the next frame, then an abortive close (RST).
    let next = wire(codec, &[b"never finished".to_vec()]);
    c.get_ref().write_all(&next[..3]).unwrap();
    reset_on_close(c.get_ref());
    drop(c);
    assert_eq!(handler.removal_of(id), "reset");
    assert_eq!(handler.frames_of(id), vec![b"complete".to_vec()]);

    // And the server goes on.
    let mut other = client(server.addr, codec);
    round_trip(&mut other, b"next");
    server.stop().unwrap();
}

#[test]
fn truncated_frame_then_fin_is_a_protocol_error() {
    let codec = LengthPrefixed::new(1024);
    let handler = Arc::new(Recorder::echo(codec));
    let server = TestServer::start(config(2), handler.clone());

    // A whole frame, then a header announcing 10 bytes and only 3 of them, then FIN.
    let mut bytes = wire(codec, &[b"whole".to_vec()]);
    bytes.extend_from_slice(&[0, 0, 0, 10, b'a', b'b', b'c']);
    let mut c = client(server.addr, codec);
    c.get_ref().write_all(&bytes).unwrap();
    c.shutdown_write().unwrap();
    let id = handler.nth_opened(1).id();
    assert_eq!(handler.removal_of(id), "protocol", "u32 frame cut by FIN");
    assert_eq!(handler.frames_of(id), vec![b"whole".to_vec()]);
    assert_eq!(
        c.recv().unwrap().as_deref(),
        Some(&b"whole"[..]),
        "the whole frame before the cut is answered"
    );
    assert_closed_by_server(c.get_ref(), "u32 frame cut by FIN");

    // The same with SimpleFrame: the payload is complete but the end byte is missing.
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server2 = TestServer::start(config(2), handler.clone());
    let mut raw = TcpStream::connect(server2.addr).unwrap();
    raw.write_all(&[SimpleFrame::START, 0x00, 0x02, b'h', b'i'])
        .unwrap();
    raw.shutdown(Shutdown::Write).unwrap();
    let id = handler.nth_opened(1).id();
    assert_eq!(handler.removal_of(id), "protocol", "SimpleFrame cut by FIN");
    assert!(handler.frames_of(id).is_empty());
    assert_closed_by_server(&raw, "SimpleFrame cut by FIN");
    server2.stop().unwrap();
    server.stop().unwrap();
}

#[test]
fn half_close_after_complete_frames_gets_every_reply_then_eof() {
    let codec = LengthPrefixed::new(64 * 1024);
    let handler = Arc::new(Recorder::echo(codec));
    let server = TestServer::start(config(2), handler.clone());
    let payloads: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let mut p = i.to_be_bytes().to_vec();
            p.resize(4 + (i as usize * 97) % 5000, i as u8);
            p
        })
        .collect();
    let mut c = client(server.addr, codec);
    for p in &payloads {
        c.feed(p).unwrap();
    }
    c.flush().unwrap();
    c.shutdown_write().unwrap();
    for (i, p) in payloads.iter().enumerate() {
        let got = c
            .recv()
            .unwrap()
            .unwrap_or_else(|| panic!("reply {i} missing after the half-close"));
        assert!(&got == p, "reply {i} differs or out of order");
    }
    assert_eq!(c.recv().unwrap(), None, "then end of stream");
    let id = handler.nth_opened(1).id();
    assert_eq!(handler.removal_of(id), "peer_closed");
    assert_eq!(handler.frames_of(id).len(), payloads.len());
    wait_until("exactly one removal", || handler.removed.lock().len() == 1);
    server.stop().unwrap();
}
