//! Guarantees 2 and 3: sending through socket handles, from worker threads and others, in and
//! out of callbacks, and while the connection closes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crossbeam_channel::RecvTimeoutError;
use hydrogen::client::Client;
use hydrogen::{LengthPrefixed, SendError, SimpleFrame, Socket};
use parking_lot::Mutex;

use common::{DEADLINE, Recorder, TestServer, config, wait_until};

#[test]
fn replies_through_a_handle_from_another_thread_arrive_in_order() {
    let handler = Arc::new(Recorder::new(LengthPrefixed::default(), |_, _| {}));
    let server = TestServer::start(config(2), handler.clone());
    let mut client = Client::connect(server.addr, LengthPrefixed::default()).unwrap();
    let socket = handler.nth_opened(1);

    const N: u32 = 10_000;
    let sender = thread::spawn(move || {
        for i in 0..N {
            socket.send(&i.to_be_bytes()).unwrap();
        }
    });
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    for i in 0..N {
        let frame = client.recv().unwrap().expect("frame");
        assert_eq!(frame, i.to_be_bytes(), "frame {i} out of order");
    }
    sender.join().unwrap();
    server.stop().unwrap();
}

#[test]
fn replies_from_inside_callbacks_arrive_in_order() {
    // Three replies per request, to a pipeline of requests.
    let handler = Arc::new(Recorder::new(SimpleFrame, |socket, frame| {
        let n = u32::from_be_bytes(frame.try_into().unwrap());
        for k in 0..3 {
            socket.send(&(n * 3 + k).to_be_bytes()).unwrap();
        }
    }));
    let server = TestServer::start(config(2), handler);
    let mut client = Client::connect(server.addr, SimpleFrame).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    const REQUESTS: u32 = 2_000;
    for n in 0..REQUESTS {
        client.feed(&n.to_be_bytes()).unwrap();
    }
    client.flush().unwrap();
    for i in 0..REQUESTS * 3 {
        let frame = client.recv().unwrap().expect("frame");
        assert_eq!(frame, i.to_be_bytes());
    }
    server.stop().unwrap();
}

#[test]
fn send_from_another_thread_reaches_a_silent_peer() {
    let handler = Arc::new(Recorder::new(SimpleFrame, |_, _| {}));
    let server = TestServer::start(config(2), handler.clone());
    let mut client = Client::connect(server.addr, SimpleFrame).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let socket = handler.nth_opened(1);
    // Many rounds, so a send landing just as a worker lets go of the connection is exercised.
    for i in 0..500u32 {
        let socket = socket.clone();
        let pusher = thread::spawn(move || socket.send(&i.to_be_bytes()));
        let frame = client.recv().expect("push arrives with no input").unwrap();
        assert_eq!(frame, i.to_be_bytes());
        pusher.join().unwrap().unwrap();
    }
    server.stop().unwrap();
}

/// Eight threads send as fast as they can while the connection is closed under them, once by
/// the application and once by the peer.
fn senders_race_a_close(close_locally: bool) {
    let handler = Arc::new(Recorder::new(SimpleFrame, |_, _| {}));
    let server = TestServer::start(config(4), handler.clone());
    let client = Client::connect(server.addr, SimpleFrame).unwrap();
    let socket = handler.nth_opened(1);

    // The client never reads: what the server cannot write stays queued until the close.
    let started = Arc::new(std::sync::Barrier::new(9));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    for t in 0..8u8 {
        let socket = socket.clone();
        let started = started.clone();
        let done_tx = done_tx.clone();
        thread::spawn(move || {
            started.wait();
            let mut ok = 0u64;
            let mut closed = false;
            for i in 0..200_000u32 {
                match socket.send(&[t, (i % 251) as u8]) {
                    Ok(()) if closed => panic!("a send succeeded after one reported Closed"),
                    Ok(()) => ok += 1,
                    Err(SendError::Closed) => {
                        closed = true;
                        if i.is_multiple_of(64) && socket.is_closed() {
                            break;
                        }
                    }
                    Err(other) => panic!("unexpected send error: {other}"),
                }
            }
            done_tx.send((ok, closed)).unwrap();
        });
    }
    drop(done_tx);
    started.wait();
    if close_locally {
        socket.close();
    } else {
        // Close with a reset (SO_LINGER of zero).
        socket2::SockRef::from(client.get_ref())
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
    }
    drop(client);
    let mut results = Vec::new();
    loop {
        match done_rx.recv_timeout(DEADLINE) {
            Ok(r) => results.push(r),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("a sender is stuck (deadlock?)"),
        }
    }
    assert_eq!(results.len(), 8, "a sender panicked");
    assert!(
        results.iter().all(|(_, closed)| *closed),
        "every sender saw Closed"
    );
    let expected = if close_locally { "local" } else { "reset" };
    assert_eq!(handler.removal_of(socket.id()), expected);
    assert_eq!(handler.removed.lock().len(), 1, "removed exactly once");
    server.stop().unwrap();
}

#[test]
fn eight_senders_and_a_local_close() {
    senders_race_a_close(true);
}

#[test]
fn eight_senders_and_a_peer_reset() {
    senders_race_a_close(false);
}

#[test]
fn inside_callbacks_send_to_self_and_others_and_close() {
    let registry: Arc<Mutex<Vec<Socket>>> = Arc::default();
    let reg = registry.clone();
    let handler = Arc::new(Recorder::new(
        SimpleFrame,
        move |socket, frame| match frame {
            b"join" => {
                reg.lock().push(socket.clone());
                socket.send(b"joined").unwrap();
            }
            b"relay" => {
                let others: Vec<Socket> = reg
                    .lock()
                    .iter()
                    .filter(|s| s.id() != socket.id())
                    .cloned()
                    .collect();
                for other in others {
                    // The other may have gone; that is its business.
                    let _ = other.send(b"relayed");
                }
                socket.send(b"ack").unwrap();
            }
            b"bye" => {
                socket.send(b"bye").unwrap();
                socket.close();
                assert!(matches!(socket.send(b"late"), Err(SendError::Closed)));
            }
            _ => panic!("unknown request"),
        },
    ));
    let server = TestServer::start(config(2), handler.clone());
    let mut a = Client::connect(server.addr, SimpleFrame).unwrap();
    let mut b = Client::connect(server.addr, SimpleFrame).unwrap();
    for c in [&a, &b] {
        c.set_read_timeout(Some(DEADLINE)).unwrap();
    }
    a.send(b"join").unwrap();
    assert_eq!(a.recv().unwrap().unwrap(), b"joined");
    b.send(b"join").unwrap();
    assert_eq!(b.recv().unwrap().unwrap(), b"joined");

    a.send(b"relay").unwrap();
    assert_eq!(a.recv().unwrap().unwrap(), b"ack");
    assert_eq!(b.recv().unwrap().unwrap(), b"relayed");

    a.send(b"bye").unwrap();
    assert_eq!(a.recv().unwrap().unwrap(), b"bye");
    assert_eq!(a.recv().unwrap(), None, "closed after the goodbye");
    let a_id = handler.opened.lock()[0].id();
    assert_eq!(handler.removal_of(a_id), "local");

    // B is unaffected, and relaying to the closed A is harmless.
    b.send(b"relay").unwrap();
    assert_eq!(b.recv().unwrap().unwrap(), b"ack");
    server.stop().unwrap();
    let removed = handler.removed.lock().clone();
    assert_eq!(removed.len(), 2);
    assert!(removed.contains(&(a_id, "local")));
}

#[test]
fn closing_from_another_thread_while_idle_removes_promptly() {
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server = TestServer::start(config(2), handler.clone());
    let mut client = Client::connect(server.addr, SimpleFrame).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let socket = handler.nth_opened(1);
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    thread::spawn(move || {
        socket.send(b"last words").unwrap();
        socket.close();
        f.store(true, Ordering::Release);
    })
    .join()
    .unwrap();
    assert!(flag.load(Ordering::Acquire));
    assert_eq!(client.recv().unwrap().unwrap(), b"last words");
    assert_eq!(client.recv().unwrap(), None);
    let id = handler.opened.lock()[0].id();
    assert_eq!(handler.removal_of(id), "local");
    wait_until("one removal", || handler.removed.lock().len() == 1);
    server.stop().unwrap();
}
