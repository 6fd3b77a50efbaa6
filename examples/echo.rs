//! An echo server: every frame a client sends comes straight back to it.
//!
//! It shows the parts most servers need: a `Handler` with one callback, the framing chosen at
//! run time through `Config::framing`, and a clean shutdown on SIGINT or SIGTERM through the
//! server's `ShutdownHandle`. (`TCP_NODELAY` is on by default: `Config::nodelay`.)
//!
//! ```text
//! cargo run --release --example echo                       # 127.0.0.1:1337, SimpleFrame
//! cargo run --release --example echo -- --framing u32 --addr 127.0.0.1:4000 --threads 2
//! cargo run --release -p hydrogen-bench --bin loadgen -- --addr 127.0.0.1:4000 --framing u32
//! cargo run --release --features tls --example echo -- --tls-cert cert.pem --tls-key key.pem
//! cargo run --release --example echo -- --proxy-protocol --proxy-from 10.0.0.0/8  # behind HAProxy
//! cargo run --release --example echo -- --unix /tmp/echo.sock --reuse-port        # one of several
//! ```
//!
//! Built with `--features tls`, it takes `--tls-cert FILE --tls-key FILE` (PEM) and serves TLS on
//! `--addr` in either framing (the README shows how to make a test certificate).
//!
//! It prints `listening on ADDR` once bound, and `shut down` when it has stopped after Ctrl-C or
//! `kill -TERM`. Log output goes to stderr; set `RUST_LOG=hydrogen=debug` to see connections come
//! and go (the default shows warnings only).

use std::io;
use std::process::ExitCode;

use clap::Parser;
use hydrogen::{Handler, Server, Socket};

mod support;

/// An echo server: every frame received is sent back to its sender. Stops cleanly on SIGINT
/// (Ctrl-C) or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "echo")]
struct Cli {
    #[command(flatten)]
    server: support::ServerArgs,
}

/// Echoes every frame back to its connection. One instance serves all connections.
struct Echo;

impl Handler for Echo {
    /// Nothing to remember per connection.
    type Session = ();

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        // Queued here, written when the callback returns. Fails only if the connection is
        // already closing, and then there is no one to tell.
        let _ = socket.send(frame);
    }
}

/// Binds, serves until SIGINT or SIGTERM, and returns once the server has stopped.
fn serve(args: &support::ServerArgs) -> io::Result<()> {
    let tls = args.tls()?;
    let server = Server::bind(args.config())?;
    support::announce(&server)?;

    // Ctrl-C or SIGTERM starts the drain; `run` returns when it is done.
    server.shutdown_handle().shutdown_on_signals()?;

    let summary = args.run(tls, server, Echo)?;
    eprintln!(
        "drained {} connections, abandoned {} (accepted {}, refused {}, PROXY header refused {}, timed out {})",
        summary.drained,
        summary.abandoned,
        summary.accepted,
        summary.refused,
        summary.proxy_refused,
        summary.proxy_timed_out
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    support::init_logging();
    support::exit(serve(&cli.server))
}
