//! The hydrogen server of the blocking-work benchmark, with the library's ordered blocking pool.
//!
//! The handler says every frame is to be offloaded (`Handler::offload`), so each request runs
//! on the blocking pool of `--pool` threads (`Config::blocking_threads`), one connection's
//! requests one at a time and in order, while the `--threads` I/O workers never wait. The
//! reply is sent from the pool thread with `Socket::send`.
//!
//! See `hydrogen_bench::blocking` for the command line and the contract of the blocking servers.
#![forbid(unsafe_code)]

use std::process;
use std::thread;
use std::time::Duration;

use hydrogen::{Config, Handler, Server, Socket};
use hydrogen_bench::blocking;
use hydrogen_bench::server_cli;

const NAME: &str = "hydrogen_blocking";

struct Work(Duration);

impl Handler for Work {
    type Session = ();

    fn offload(&self, _frame: &[u8]) -> bool {
        true
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        thread::sleep(self.0);
        let _ = socket.send(frame);
    }
}

fn main() {
    let args = blocking::parse_args(NAME);
    server_cli::raise_nofile_limit();
    let config = Config {
        addr: args.addr.ip().to_string(),
        port: args.addr.port(),
        max_threads: args.threads,
        blocking_threads: args.pool,
        // Work in flight at a signal is dropped with the process, as the peers do.
        drain_timeout: Duration::ZERO,
        ..Config::default()
    };
    let server = Server::bind(config).unwrap_or_else(|err| server_cli::fail(NAME, err));
    if let Err(err) = server.shutdown_handle().shutdown_on_signals() {
        server_cli::fail(NAME, err);
    }
    server_cli::print_listening(
        server
            .local_addr()
            .unwrap_or_else(|e| server_cli::fail(NAME, e)),
    );
    if let Err(err) = server.run(Work(args.work)) {
        server_cli::fail(NAME, err);
    }
    process::exit(0);
}
