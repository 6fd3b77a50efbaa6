//! Guarantee 8: binding a busy port is an error; after shutdown `run` returns with every
//! thread joined and every descriptor it opened closed. Alone in its binary so that the thread
//! and descriptor counts are not disturbed by other tests.

mod common;

use std::fs;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;

use hydrogen::client::Client;
use hydrogen::{Config, Server, SimpleFrame};

use common::{DEADLINE, Recorder, TestServer, config, wait_until};

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn bind_and_shutdown() {
    // Everything in one test: the counts below are per process.
    let threads_at_start = threads();
    busy_port_is_an_error();
    shutdown_before_run_returns_at_once();
    shutdown_joins_threads_and_closes_descriptors(threads_at_start);
    several_servers_in_one_process();
}

fn busy_port_is_an_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = Config {
        port: taken.local_addr().unwrap().port(),
        ..Config::default()
    };
    let err = Server::bind(config).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains("cannot bind"), "{err}");
}

fn shutdown_before_run_returns_at_once() {
    let server = Server::bind(Config {
        port: 0,
        ..config(3)
    })
    .unwrap();
    server.shutdown_handle().shutdown();
    server.run(Recorder::echo(SimpleFrame)).unwrap();
}

/// Waits until the process has `n` threads. `run` joins its threads before it returns, but a
/// joined thread (`std::thread::scope` waits for each closure's end) can still be listed in
/// `/proc/self/task` for a moment while the kernel finishes its exit: only a thread count that
/// stays wrong past the deadline is a thread left running.
#[track_caller]
fn wait_for_threads(n: usize, what: &str) {
    wait_until(what, || threads() == n);
}

fn shutdown_joins_threads_and_closes_descriptors(threads_at_start: usize) {
    // The servers of the tests before this one have exited.
    wait_for_threads(threads_at_start, "the earlier servers' threads to exit");
    let fds_before = open_fds();
    let threads_before = threads();

    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server = TestServer::start(config(4), handler.clone());
    let mut clients: Vec<Client<SimpleFrame>> = (0..10)
        .map(|_| Client::connect(server.addr, SimpleFrame).unwrap())
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        client.send(&[i as u8]).unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), [i as u8]);
    }
    let kept = handler.nth_opened(10); // a handle that outlives the server
    server.stop().unwrap();

    assert_eq!(handler.removed.lock().len(), 10);
    assert!(handler.removed.lock().iter().all(|(_, k)| *k == "shutdown"));
    assert!(kept.send(b"after").is_err());
    for client in clients.iter_mut() {
        assert_eq!(client.recv().unwrap(), None, "server closed the connection");
    }
    drop(clients);
    wait_for_threads(threads_before, "every worker thread to be joined");
    // The handle still held must not keep any server descriptor open.
    assert_eq!(open_fds(), fds_before, "every descriptor closed");
    drop(kept);
}

fn several_servers_in_one_process() {
    let a = Arc::new(Recorder::echo(SimpleFrame));
    let b = Arc::new(Recorder::new(SimpleFrame, |socket, frame| {
        let mut reply = frame.to_vec();
        reply.reverse();
        let _ = socket.send(&reply);
    }));
    let server_a = TestServer::start(config(2), a.clone());
    let server_b = TestServer::start(config(2), b.clone());
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let addr = if i % 2 == 0 {
                server_a.addr
            } else {
                server_b.addr
            };
            thread::spawn(move || {
                let mut c = Client::connect(addr, SimpleFrame).unwrap();
                c.set_read_timeout(Some(DEADLINE)).unwrap();
                for _ in 0..100 {
                    c.send(b"abc").unwrap();
                    let want: &[u8] = if i % 2 == 0 { b"abc" } else { b"cba" };
                    assert_eq!(c.recv().unwrap().unwrap(), want);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until("all clients gone", || {
        a.removed.lock().len() == 2 && b.removed.lock().len() == 2
    });
    server_a.stop().unwrap();
    server_b.stop().unwrap();
}
