//! Guarantees 4, 6 and 9: removal reasons, data before a FIN, and a prompt first reply.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use hydrogen::client::Client;
use hydrogen::{LengthPrefixed, SimpleFrame};

use common::{DEADLINE, Recorder, TestServer, config};

#[test]
fn each_connection_is_removed_once_with_a_reason_that_tells_how() {
    let handler = Arc::new(Recorder::new(SimpleFrame, |socket, frame| {
        if frame == b"close me" {
            socket.close();
        } else {
            let _ = socket.send(frame);
        }
    }));
    let server = TestServer::start(config(2), handler.clone());
    let addr = server.addr;

    // Peer close: an orderly FIN.
    let mut peer = Client::connect(addr, SimpleFrame).unwrap();
    peer.send(b"hi").unwrap();
    assert_eq!(peer.recv().unwrap().unwrap(), b"hi");
    drop(peer);
    let id = handler.nth_opened(1).id();
    assert_eq!(handler.removal_of(id), "peer_closed");

    // Reset: SO_LINGER of zero makes close send an RST.
    let reset = Client::connect(addr, SimpleFrame).unwrap();
    let id = handler.nth_opened(2).id();
    socket2::SockRef::from(reset.get_ref())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(reset);
    assert_eq!(handler.removal_of(id), "reset");

    // Protocol error: a wrong SimpleFrame start byte.
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(&[0x02, 0x00, 0x01, b'x', 0x17]).unwrap();
    let id = handler.nth_opened(3).id();
    assert_eq!(handler.removal_of(id), "protocol");

    // Local close, from inside the connection's own callback.
    let mut local = Client::connect(addr, SimpleFrame).unwrap();
    local.send(b"close me").unwrap();
    let id = handler.nth_opened(4).id();
    assert_eq!(handler.removal_of(id), "local");
    local.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(local.recv().unwrap(), None);

    // Server shutdown, with a connection still open.
    let _open = Client::connect(addr, SimpleFrame).unwrap();
    let id = handler.nth_opened(5).id();
    server.stop().unwrap();
    assert_eq!(handler.removal_of(id), "shutdown");

    // Exactly once each, and only for opened connections.
    let removed = handler.removed.lock().clone();
    assert_eq!(removed.len(), 5, "{removed:?}");
    let opened: Vec<u64> = handler.opened.lock().iter().map(|s| s.id()).collect();
    for id in opened {
        assert_eq!(removed.iter().filter(|(i, _)| *i == id).count(), 1);
    }
}

#[test]
fn frames_sent_just_before_fin_are_delivered_and_answered() {
    let handler = Arc::new(Recorder::echo(LengthPrefixed::default()));
    let server = TestServer::start(config(2), handler.clone());
    for round in 0..20 {
        let mut client = Client::connect(server.addr, LengthPrefixed::default()).unwrap();
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        const N: u32 = 100;
        for i in 0..N {
            client.feed(&i.to_be_bytes()).unwrap();
        }
        client.flush().unwrap();
        // Half-close at once: the frames and the FIN may arrive in a single read.
        client.shutdown_write().unwrap();
        for i in 0..N {
            let frame = client
                .recv()
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: reply {i} missing after the half-close"));
            assert_eq!(frame, i.to_be_bytes());
        }
        assert_eq!(client.recv().unwrap(), None, "then the server closes");
        let id = handler.nth_opened(round + 1).id();
        assert_eq!(handler.frames_of(id).len(), N as usize);
        assert_eq!(handler.removal_of(id), "peer_closed");
    }
    server.stop().unwrap();
}

#[test]
fn frames_in_the_same_segment_as_the_fin_are_delivered() {
    let handler = Arc::new(Recorder::new(SimpleFrame, |_, _| {}));
    let server = TestServer::start(config(2), handler.clone());
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.write_all(&[0x01, 0x00, 0x02, b'h', b'i', 0x17])
        .unwrap();
    raw.shutdown(Shutdown::Write).unwrap();
    let id = handler.nth_opened(1).id();
    assert_eq!(handler.removal_of(id), "peer_closed");
    assert_eq!(handler.frames_of(id), vec![b"hi".to_vec()]);
    server.stop().unwrap();
}

#[test]
fn first_frame_on_a_new_connection_is_answered_at_once() {
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server = TestServer::start(config(2), handler);
    // The original waited up to a second before serving a new connection: a reply well
    // under that, twenty times over, rules such a timeout out.
    for i in 0..20u8 {
        let mut client = Client::connect(server.addr, SimpleFrame).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        client.send(&[i]).unwrap();
        let reply = client
            .recv()
            .expect("first reply without waiting for a timeout");
        assert_eq!(reply.unwrap(), [i]);
    }
    // And with a wait between connect and the first frame, so the connection is idle first.
    let mut client = Client::connect(server.addr, SimpleFrame).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Not synchronisation: a pause, so the first frame comes to a connection that went idle.
    std::thread::sleep(Duration::from_millis(50));
    client.send(b"late").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"late");
    server.stop().unwrap();
}
