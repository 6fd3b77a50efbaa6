//! `ShutdownHandle::connections`: what an admin endpoint sees of a running server.

mod common;

use std::sync::Arc;

use hydrogen::SimpleFrame;
use hydrogen::client::Client;

use common::{DEADLINE, Recorder, TestServer, config, wait_until};

#[test]
fn connections_lists_each_open_connection_with_its_traffic() {
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let server = TestServer::start(config(2), handler.clone());
    assert!(server.shutdown.connections().is_empty());
    assert!(!server.shutdown.is_stopped());

    let mut busy = Client::connect(server.addr, SimpleFrame).unwrap();
    busy.set_read_timeout(Some(DEADLINE)).unwrap();
    let quiet = Client::connect(server.addr, SimpleFrame).unwrap();
    for i in 0..3u8 {
        busy.send(&[i; 10]).unwrap();
        assert_eq!(busy.recv().unwrap().unwrap(), [i; 10]);
    }
    wait_until("two connections", || {
        server.shutdown.connections().len() == 2
    });
    let conns = server.shutdown.connections();
    let first = handler.nth_opened(1);
    let second = handler.nth_opened(2);
    assert_eq!(
        conns.iter().map(|c| c.id).collect::<Vec<_>>(),
        [first.id(), second.id()],
        "in the order they were accepted"
    );
    let busy_info = conns
        .iter()
        .find(|c| c.peer == busy.get_ref().local_addr().unwrap())
        .expect("the busy client");
    assert_eq!((busy_info.frames_in, busy_info.frames_out), (3, 3));
    assert_eq!(busy_info.queued_bytes, 0);
    assert!(!busy_info.reading_paused && !busy_info.closing);
    let quiet_info = conns
        .iter()
        .find(|c| c.peer == quiet.get_ref().local_addr().unwrap())
        .expect("the quiet client");
    assert_eq!((quiet_info.frames_in, quiet_info.frames_out), (0, 0));

    drop(quiet);
    wait_until("one connection left", || {
        server.shutdown.connections().len() == 1
    });
    let handle = server.shutdown.clone();
    server.stop().unwrap();
    assert!(handle.connections().is_empty(), "nothing once stopped");
    assert!(handle.is_stopped());
}
