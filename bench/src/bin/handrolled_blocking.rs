//! hydrogen with a hand-rolled pool, the way a user would offload blocking work without the
//! library's pool: `--pool` threads of one's own fed by a channel, each request handed over
//! with a `Socket` (and a `Hold`, so a half-closed connection waits for its reply), the reply
//! sent from the pool thread. It keeps no per-connection order: two requests of one connection
//! in flight at once may be answered out of order (the benchmark's load sends one at a time per
//! connection, so the comparison is fair; restoring order by hand takes a queue per
//! connection, which is what `Handler::offload` does).
//!
//! See `hydrogen_bench::blocking` for the command line and the contract of the blocking servers.
#![forbid(unsafe_code)]

use std::process;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Sender, unbounded};
use hydrogen::{Config, Handler, Hold, Server, Socket};
use hydrogen_bench::blocking;
use hydrogen_bench::server_cli;

const NAME: &str = "handrolled_blocking";

struct Handoff(Sender<(Hold, Vec<u8>)>);

impl Handler for Handoff {
    type Session = ();

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        let _ = self.0.send((socket.hold(), frame.to_vec()));
    }
}

fn main() {
    let args = blocking::parse_args(NAME);
    server_cli::raise_nofile_limit();
    let config = Config {
        addr: args.addr.ip().to_string(),
        port: args.addr.port(),
        max_threads: args.threads,
        drain_timeout: Duration::ZERO,
        ..Config::default()
    };
    let server = Server::bind(config).unwrap_or_else(|err| server_cli::fail(NAME, err));
    if let Err(err) = server.shutdown_handle().shutdown_on_signals() {
        server_cli::fail(NAME, err);
    }
    // Started after the signals are blocked, so that the threads inherit the mask.
    let (tx, rx) = unbounded::<(Hold, Vec<u8>)>();
    for i in 0..args.pool {
        let rx = rx.clone();
        let work = args.work;
        thread::Builder::new()
            .name(format!("pool-{i}"))
            .spawn(move || {
                for (hold, frame) in rx {
                    thread::sleep(work);
                    let _ = hold.socket().send(&frame);
                }
            })
            .unwrap_or_else(|err| server_cli::fail(NAME, err));
    }
    server_cli::print_listening(
        server
            .local_addr()
            .unwrap_or_else(|e| server_cli::fail(NAME, e)),
    );
    if let Err(err) = server.run(Handoff(tx)) {
        server_cli::fail(NAME, err);
    }
    process::exit(0);
}
