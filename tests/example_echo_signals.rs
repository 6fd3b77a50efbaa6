//! The main example end to end: `examples/echo` serves, and SIGTERM (through
//! `ShutdownHandle::shutdown_on_signals`) drains it and ends the process with status 0.
//! A child process, since a signal is for a whole process.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hydrogen::SimpleFrame;
use hydrogen::client::Client;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use common::DEADLINE;

/// Kills the child if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn sigterm_drains_the_echo_example_and_it_exits_cleanly() {
    let mut child = Guard(
        Command::new(common::example_binary("echo"))
            .args(["--addr", "127.0.0.1:0", "--threads", "2"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the echo example"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the first line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");

    let mut client = Client::connect(addr, SimpleFrame).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.send(b"before the signal").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"before the signal");

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).expect("send SIGTERM");

    // The drain closes the idle connection cleanly (end of stream, not a reset)...
    assert_eq!(client.recv().unwrap(), None, "closed by the drain");
    // ...and the process ends by itself, successfully.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the example did not exit after SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(
        rest.contains("shut down"),
        "stdout after the address: {rest:?}"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("drained 1 connections"), "stderr: {err:?}");
}
