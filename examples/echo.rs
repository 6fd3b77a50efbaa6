//! An echo server: every frame a client sends comes straight back to it.
//!
//! It shows the parts most servers need: a `Handler` that builds a `Framed` stream per
//! connection (with `TCP_NODELAY`), a choice of framing at run time through a function generic
//! over the `Codec`, and a clean shutdown on SIGINT or SIGTERM through the server's
//! `ShutdownHandle`.
//!
//! ```text
//! cargo run --release --example echo                       # 127.0.0.1:1337, SimpleFrame
//! cargo run --release --example echo -- --framing u32 --addr 127.0.0.1:4000 --threads 2
//! cargo run --release -p hydrogen-bench --bin loadgen -- --addr 127.0.0.1:4000 --framing u32
//! ```
//!
//! It prints `listening on ADDR` once bound, and `shut down` when it has stopped after Ctrl-C or
//! `kill -TERM`. Log output goes to stderr; set `RUST_LOG=hydrogen=debug` to see connections come
//! and go (the default shows warnings only).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;

use hydrogen::{Codec, Config, Framed, Handler, LengthPrefixed, Server, SimpleFrame, Socket};

mod support;

use support::{Args, Framing};

const USAGE: &str = "\
Usage: echo [--addr HOST:PORT] [--framing simple|u32] [--threads N]

An echo server: every frame received is sent back to its sender.

Options:
  --addr HOST:PORT         address to listen on (default 127.0.0.1:1337; [::1]:PORT for IPv6)
  --framing simple|u32     simple: 0x01, u16 BE length, payload, 0x17 (default)
                           u32: u32 BE length, payload (at most 8 MiB)
  --threads N              worker threads (default: the number of CPUs)
  -h, --help               print this help

Stops cleanly on SIGINT (Ctrl-C) or SIGTERM.
";

/// Echoes every frame back to its connection. One instance serves all connections.
struct Echo<C> {
    /// Cloned into each connection's stream: a codec value belongs to one connection.
    codec: C,
}

impl<C: Codec + Clone + Sync> Handler<Framed<C>> for Echo<C> {
    fn on_new_connection(&self, tcp: TcpStream, _peer: SocketAddr) -> io::Result<Framed<C>> {
        // Small request/response frames: do not let Nagle's algorithm hold replies back.
        tcp.set_nodelay(true)?;
        Ok(Framed::new(tcp, self.codec.clone()))
    }

    fn on_frame(&self, socket: &Socket, frame: &[u8]) {
        // Queued here, written when the callback returns. Fails only if the connection is
        // already closing, and then there is no one to tell.
        let _ = socket.send(frame);
    }
}

/// Binds, serves until SIGINT or SIGTERM, and returns once the server has stopped.
///
/// Generic over the codec because the server's type names its stream type: `Server<Framed<C>,
/// Echo<C>>` is a different type for each framing.
fn serve<C: Codec + Clone + Sync>(codec: C, config: Config) -> io::Result<()> {
    let server = Server::<Framed<C>, Echo<C>>::bind(config)?;
    println!("listening on {}", server.local_addr()?);

    // Ctrl-C or SIGTERM starts the drain; `run` returns when it is done.
    server.shutdown_handle().shutdown_on_signals()?;

    let summary = server.run(Echo { codec })?;
    eprintln!(
        "drained {} connections, abandoned {} (accepted {}, refused {})",
        summary.drained, summary.abandoned, summary.accepted, summary.refused
    );
    Ok(())
}

fn main() -> ExitCode {
    let Args { config, framing } = match support::parse_args(Config::default()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("error: {err}\n(run with --help for usage)");
            return ExitCode::from(2);
        }
    };

    support::init_logging();

    let result = match framing {
        Framing::Simple => serve(SimpleFrame, config),
        Framing::U32 => serve(LengthPrefixed::default(), config),
    };
    match result {
        Ok(()) => {
            println!("shut down");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
