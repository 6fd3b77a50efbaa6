//! Limits under pressure: the connection cap, the idle timeout, and the frame timeout against
//! a slowloris crowd.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hydrogen::client::Client;
use hydrogen::{Codec, Config, LengthPrefixed, SimpleFrame};

use common::{
    DEADLINE, Recorder, RssProbe, TestServer, assert_closed_by_server, config, is_timeout, serial,
    wait_until,
};

const MIB: u64 = 1 << 20;

#[test]
fn past_max_connections_a_connection_is_closed_at_once_without_callbacks() {
    let _serial = serial();
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server = TestServer::start(
        Config {
            max_connections: 3,
            ..config(2)
        },
        handler.clone(),
    );
    let mut clients: Vec<Client<SimpleFrame>> = (0..3u8)
        .map(|i| {
            let mut c = Client::connect(server.addr, SimpleFrame).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            c.send(&[i]).unwrap();
            assert_eq!(c.recv().unwrap().expect("echo"), [i], "client {i}");
            c
        })
        .collect();
    wait_until("three connections opened", || {
        handler.opened.lock().len() == 3
    });

    // The fourth: accepted by the kernel, closed by the server at once.
    let mut fourth = Client::connect(server.addr, SimpleFrame).unwrap();
    fourth.set_read_timeout(Some(DEADLINE)).unwrap();
    let start = Instant::now();
    let _ = fourth.send(b"let me in"); // may already fail with a reset
    match fourth.recv() {
        Ok(None) => {}
        Ok(Some(frame)) => panic!("the fourth connection was served: {frame:?}"),
        Err(e) if is_timeout(&e) => {
            panic!(
                "the fourth connection was left open for {:?}",
                start.elapsed()
            )
        }
        Err(_) => {} // reset: the server closed it with our frame unread
    }
    let refused_after = start.elapsed();
    assert_eq!(
        handler.opened.lock().len(),
        3,
        "no callback for the refused connection"
    );
    assert_eq!(
        handler.fds.lock().len(),
        3,
        "on_new_connection not called for the refused connection"
    );

    // The three are still served.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(b"again").unwrap();
        assert_eq!(c.recv().unwrap().expect("echo"), b"again", "client {i}");
    }

    // One leaves; once it is removed, a new client is served.
    let first_id = handler.nth_opened(1).id();
    drop(clients.remove(0));
    assert_eq!(handler.removal_of(first_id), "peer_closed");
    let mut fifth = Client::connect(server.addr, SimpleFrame).unwrap();
    fifth.set_read_timeout(Some(DEADLINE)).unwrap();
    fifth.send(b"my turn").unwrap();
    assert_eq!(fifth.recv().unwrap().expect("echo"), b"my turn");
    assert_eq!(handler.opened.lock().len(), 4);

    let summary = server.stop().unwrap();
    assert_eq!(
        summary.refused, 1,
        "{summary:?} (the fourth was closed after {refused_after:?})"
    );
    assert_eq!(summary.accepted, 4, "{summary:?}");
}

#[test]
fn idle_timeout_removes_a_silent_client_and_keeps_a_chatty_one() {
    let _serial = serial();
    const IDLE: Duration = Duration::from_millis(300);
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server = TestServer::start(
        Config {
            idle_timeout: Some(IDLE),
            frame_timeout: None,
            ..config(2)
        },
        handler.clone(),
    );

    let connected = Instant::now();
    let silent = TcpStream::connect(server.addr).unwrap();
    let silent_id = handler.nth_opened(1).id();

    let addr = server.addr;
    let pinger = thread::spawn(move || {
        let mut c = Client::connect(addr, SimpleFrame).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let start = Instant::now();
        let mut pings = 0u32;
        while start.elapsed() < Duration::from_millis(1500) {
            c.send(&pings.to_be_bytes()).unwrap();
            let reply = c
                .recv()
                .unwrap_or_else(|e| panic!("ping {pings} after {:?}: {e}", start.elapsed()))
                .unwrap_or_else(|| panic!("ping {pings}: closed after {:?}", start.elapsed()));
            assert_eq!(reply, pings.to_be_bytes());
            pings += 1;
            thread::sleep(Duration::from_millis(50)); // a client that speaks every 50 ms
        }
        (c, pings)
    });

    assert_eq!(handler.removal_of(silent_id), "idle_timeout");
    let idle_for = connected.elapsed();
    assert!(
        idle_for >= IDLE - Duration::from_millis(100),
        "removed after {idle_for:?}, before the {IDLE:?} idle timeout"
    );
    assert_closed_by_server(&silent, "the idle connection");

    let (mut chatty, pings) = pinger.join().unwrap();
    let chatty_id = handler.nth_opened(2).id();
    assert!(
        !handler.removed.lock().iter().any(|(i, _)| *i == chatty_id),
        "the chatty client was removed ({pings} pings)"
    );
    chatty.send(b"still here").unwrap();
    assert_eq!(chatty.recv().unwrap().expect("echo"), b"still here");
    assert!(pings >= 10, "only {pings} pings in 1.5 s");
    eprintln!(
        "idle timeout: silent client removed after {idle_for:?}; chatty client made {pings} pings"
    );
    server.stop().unwrap();
}

#[test]
fn slowloris_clients_are_cut_off_by_the_frame_timeout() {
    let _serial = serial();
    const N: usize = 1000;
    const FRAME_TIMEOUT: Duration = Duration::from_secs(1);
    const TRICKLE_EVERY: Duration = Duration::from_millis(300);
    const TRICKLE_FOR: Duration = Duration::from_secs(5);
    let memory = RssProbe::start();
    let handler = Arc::new(Recorder::echo(LengthPrefixed::default()));
    let server = TestServer::start(
        Config {
            frame_timeout: Some(FRAME_TIMEOUT),
            ..config(2)
        },
        handler.clone(),
    );

    // A frame announcing 1000 bytes, sent one byte at a time: never finished in time.
    let mut slow_frame = 1000u32.to_be_bytes().to_vec();
    slow_frame.resize(4 + 1000, 0xAA);
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(&slow_frame[..1]).unwrap();
        conns.push(tcp);
    }
    wait_until("the slowloris connections to open", || {
        handler.opened.lock().len() >= N
    });
    let slow_ids: HashSet<u64> = handler.opened.lock().iter().map(|s| s.id()).collect();
    assert_eq!(slow_ids.len(), N);

    // One driver thread trickles a byte to each of them every 300 ms, for 5 s at most.
    let (round_tx, round_rx) = mpsc::channel::<usize>();
    let trickle_start = Instant::now();
    let driver = thread::spawn(move || {
        let mut sent = vec![1usize; N];
        let mut alive = vec![true; N];
        let mut rounds = 0;
        while trickle_start.elapsed() < TRICKLE_FOR && alive.iter().any(|a| *a) {
            thread::sleep(TRICKLE_EVERY); // the slow client's pace
            for i in 0..N {
                if !alive[i] {
                    continue;
                }
                let byte = slow_frame[sent[i].min(slow_frame.len() - 1)];
                match conns[i].write(&[byte]) {
                    Ok(1) => sent[i] += 1,
                    _ => alive[i] = false, // the server closed it
                }
            }
            rounds += 1;
            let _ = round_tx.send(rounds);
        }
        let still_alive = alive.iter().filter(|a| **a).count();
        (rounds, still_alive, sent.into_iter().max().unwrap_or(0))
    });

    // While they trickle, a fresh client is served promptly.
    round_rx
        .recv_timeout(DEADLINE)
        .expect("the driver's first round");
    let mut fresh = Client::connect(server.addr, LengthPrefixed::default()).unwrap();
    fresh.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..5u32 {
        let t = Instant::now();
        fresh.send(&i.to_be_bytes()).unwrap();
        assert_eq!(fresh.recv().unwrap().expect("echo"), i.to_be_bytes());
        worst = worst.max(t.elapsed());
    }
    let removed_meanwhile = handler
        .removed
        .lock()
        .iter()
        .filter(|(id, _)| slow_ids.contains(id))
        .count();
    assert!(
        worst < Duration::from_secs(1),
        "a fresh client's round trip took {worst:?} while {N} slowloris clients trickled"
    );
    assert!(
        removed_meanwhile < N,
        "the liveness check did not overlap the trickle (all {N} removed already)"
    );

    // Every slowloris connection is removed for its frame timeout.
    wait_until("every slowloris connection to be removed", || {
        handler
            .removed
            .lock()
            .iter()
            .filter(|(id, _)| slow_ids.contains(id))
            .count()
            == N
    });
    let all_removed_after = trickle_start.elapsed();
    let kinds: Vec<&str> = handler
        .removed
        .lock()
        .iter()
        .filter(|(id, _)| slow_ids.contains(id))
        .map(|(_, k)| *k)
        .collect();
    let timed_out = kinds.iter().filter(|k| **k == "frame_timeout").count();
    assert_eq!(
        timed_out,
        N,
        "removal reasons: {:?}",
        kinds
            .iter()
            .filter(|k| **k != "frame_timeout")
            .collect::<Vec<_>>()
    );
    let (rounds, still_alive, max_sent) = driver.join().unwrap();
    assert_eq!(still_alive, 0, "the driver still had open connections");

    // The fresh client is still served, and memory stayed bounded.
    fresh.send(b"after").unwrap();
    assert_eq!(fresh.recv().unwrap().expect("echo"), b"after");
    let memory = memory.assert_growth_below(64 * MIB, "slowloris");
    eprintln!(
        "slowloris: {N} removed {all_removed_after:?} after the trickle began ({rounds} rounds, \
         at most {max_sent} bytes sent by one); fresh round trip worst {worst:?} \
         ({removed_meanwhile} removed by then); {memory}"
    );
    server.stop().unwrap();
}

/// The other side of the slowloris defence: a client that streams frames steadily, each one
/// finished well within the frame timeout, is not cut off because its writes seldom end on a
/// frame boundary (so that some frame is always in progress when a read ends).
#[test]
fn a_steady_stream_of_frames_is_not_cut_off_by_the_frame_timeout() {
    let _serial = serial();
    const FRAME_TIMEOUT: Duration = Duration::from_secs(1);
    const STREAM_FOR: Duration = Duration::from_secs(3);
    const PAYLOAD: usize = 10_000;
    const CHUNK: usize = 7_000;
    let codec = LengthPrefixed::default();
    let handler = Arc::new(Recorder::new(codec, |_, _| {}));
    let server = TestServer::start(
        Config {
            frame_timeout: Some(FRAME_TIMEOUT),
            ..config(2)
        },
        handler.clone(),
    );
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let id = handler.nth_opened(1).id();

    // Frames of 10,004 bytes on the wire, written in 7,000-byte pieces every 2 ms: a frame
    // takes about 3 ms to arrive, and a piece ends on a frame boundary once in 2,501.
    let mut encoder = codec;
    let mut wire = Vec::new();
    let mut frame = 0u32;
    let mut written = 0usize;
    let start = Instant::now();
    let mut write_error = None;
    while start.elapsed() < STREAM_FOR {
        while wire.len() < CHUNK {
            let mut payload = frame.to_be_bytes().to_vec();
            payload.resize(PAYLOAD, frame as u8);
            encoder.encode(&payload, &mut wire).unwrap();
            frame += 1;
        }
        if let Err(e) = tcp.write_all(&wire[..CHUNK]) {
            write_error = Some(e);
            break;
        }
        wire.drain(..CHUNK);
        written += CHUNK;
        thread::sleep(Duration::from_millis(2)); // the stream's pace
    }
    let streamed_for = start.elapsed();
    let complete = written / (PAYLOAD + 4);
    let removed: Vec<_> = handler.removed.lock().clone();
    assert!(
        write_error.is_none() && removed.is_empty(),
        "a client streaming {} KiB/s of {PAYLOAD}-byte frames was removed ({removed:?}) after \
         {streamed_for:?}, having sent {complete} whole frames (write error: {write_error:?})",
        written as u64 * 1000 / streamed_for.as_millis().max(1) as u64 / 1024
    );
    wait_until("every whole frame to be delivered", || {
        handler.frames_of(id).len() >= complete
    });
    eprintln!("steady stream: {complete} frames in {streamed_for:?}, not cut off");
    server.stop().unwrap();
}

/// The connection cap holds when many connections arrive at once, accepted by several workers
/// in parallel.
#[test]
fn max_connections_holds_under_a_burst_of_connects() {
    let _serial = serial();
    const CAP: usize = 10;
    const THREADS: usize = 8;
    const PER_THREAD: usize = 50;
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server = TestServer::start(
        Config {
            max_connections: CAP,
            ..config(4)
        },
        handler.clone(),
    );
    let addr = server.addr;
    let go = Arc::new(std::sync::Barrier::new(THREADS));
    let burst: Vec<_> = (0..THREADS)
        .map(|_| {
            let go = go.clone();
            thread::spawn(move || {
                go.wait();
                (0..PER_THREAD)
                    .map(|_| TcpStream::connect(addr).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Every connection is held open until the server has opened or refused each one.
    let held: Vec<TcpStream> = burst.into_iter().flat_map(|t| t.join().unwrap()).collect();
    for tcp in &held {
        tcp.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
    }
    let mut closed = vec![false; held.len()];
    wait_until("every connection to be opened or refused", || {
        for (tcp, closed) in held.iter().zip(closed.iter_mut()) {
            if !*closed {
                match (&mut &*tcp).read(&mut [0u8; 1]) {
                    Err(e) if is_timeout(&e) => {}
                    _ => *closed = true, // end of stream or reset: refused
                }
            }
        }
        closed.iter().filter(|c| **c).count() + handler.opened.lock().len() >= held.len()
    });
    let opened = handler.opened.lock().len();
    let refused = closed.iter().filter(|c| **c).count();
    assert!(
        opened <= CAP,
        "{opened} connections open at once with max_connections {CAP} ({refused} of {} \
         refused)",
        held.len()
    );
    drop(held);
    let summary = server.stop().unwrap();
    assert_eq!(summary.accepted, opened as u64, "{summary:?}");
    assert_eq!(
        summary.accepted + summary.refused,
        (THREADS * PER_THREAD) as u64,
        "{summary:?}"
    );
}
