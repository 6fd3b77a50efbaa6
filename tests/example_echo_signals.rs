//! The main example end to end: `examples/echo` serves, and SIGTERM (through
//! `ShutdownHandle::shutdown_on_signals`) drains it and ends the process with status 0.
//! A child process, since a signal is for a whole process.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use hydrogen::SimpleFrame;
use hydrogen::client::Client;
use nix::sys::signal::{Signal, kill};

use common::{ChildGuard, DEADLINE};

#[test]
fn sigterm_drains_the_echo_example_and_it_exits_cleanly() {
    let mut child = ChildGuard(
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

    kill(child.pid(), Signal::SIGTERM).expect("send SIGTERM");

    // The drain closes the idle connection cleanly (end of stream, not a reset)...
    assert_eq!(client.recv().unwrap(), None, "closed by the drain");
    // ...and the process ends by itself, successfully.
    let status = child
        .wait_exit(DEADLINE)
        .expect("the example did not exit after SIGTERM");
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
