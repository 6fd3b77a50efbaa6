//! An idle server costs nothing: the poll monitor (which watches for a leader stuck in a
//! callback) parks while the server waits for events, so an idle server's threads do not
//! wake up periodically. Its own test binary, so that no other server's threads are counted.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hydrogen::SimpleFrame;

use common::{DEADLINE, Recorder, TestServer, config};

/// Context switches so far of every thread of this process whose name starts with `prefix`.
fn switches(prefix: &str) -> (usize, u64) {
    let mut threads = 0;
    let mut total = 0;
    for task in fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(status) = fs::read_to_string(dir.join("status")) else {
            continue;
        };
        threads += 1;
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().unwrap();
            }
        }
    }
    (threads, total)
}

/// Switches of the server's threads over `window`.
fn switches_over(window: Duration) -> u64 {
    let (_, before) = switches("hydrogen-");
    thread::sleep(window);
    let (_, after) = switches("hydrogen-");
    after - before
}

#[test]
fn idle_server_does_not_wake_up() {
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    // No timeouts: nothing needs the housekeeping tick either.
    let server = TestServer::start(
        hydrogen::Config {
            frame_timeout: None,
            idle_timeout: None,
            ..config(4)
        },
        handler,
    );
    // Some traffic first, so the monitor has been woken and must park again.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    for i in 0..100u8 {
        tcp.write_all(&[0x01, 0, 1, i, 0x17]).unwrap();
        let mut echo = [0; 5];
        tcp.read_exact(&mut echo).unwrap();
        assert_eq!(echo, [0x01, 0, 1, i, 0x17]);
    }
    let (threads, _) = switches("hydrogen-watch");
    assert_eq!(threads, 1, "one monitor thread with 4 workers");

    // The monitor parks after a few quiet looks; a server that ticks wakes about once per
    // millisecond, so 200 ms without load would show some 200 switches.
    let start = Instant::now();
    let mut quiet = switches_over(Duration::from_millis(200));
    while quiet > 2 && start.elapsed() < DEADLINE {
        quiet = switches_over(Duration::from_millis(200));
    }
    assert!(
        quiet <= 2,
        "the idle server's threads switched {quiet} times in 200 ms"
    );
    drop(tcp);
    server.stop().unwrap();
}
