//! A chat room: every frame a client sends is passed on to every other connected client.
//!
//! Shows how to talk to connections other than the one a callback is for: the handler keeps a
//! `Socket` handle for each open connection in a map, filled in `on_connection_opened` and
//! emptied in `on_connection_removed`, and sends through those handles. A `Socket` can be
//! cloned, kept and used from any thread; once its connection is gone, `send` fails with
//! `SendError::Closed` (and never reaches a later connection that reused the slot).
//!
//! ```text
//! cargo run --release --example chat                       # 127.0.0.1:1337, SimpleFrame
//! cargo run --release --example chat -- --framing u32 --addr 127.0.0.1:4000
//! ```
//!
//! Frames are relayed unchanged (no sender name is added). Connect two or more clients with
//! `hydrogen::client::Client`, or any program that speaks the framing; what one sends, the
//! others receive. Stops cleanly on SIGINT or SIGTERM, like `echo.rs`.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;

use hydrogen::{
    CloseReason, Codec, Config, Framed, Handler, LengthPrefixed, SendError, Server, SimpleFrame,
    Socket,
};
use parking_lot::Mutex;

mod support;

use support::{Args, Framing};

const USAGE: &str = "\
Usage: chat [--addr HOST:PORT] [--framing simple|u32] [--threads N]

A chat room: every frame received is relayed, unchanged, to all other connections.

Options:
  --addr HOST:PORT         address to listen on (default 127.0.0.1:1337; [::1]:PORT for IPv6)
  --framing simple|u32     simple: 0x01, u16 BE length, payload, 0x17 (default)
                           u32: u32 BE length, payload (at most 8 MiB)
  --threads N              worker threads (default: the number of CPUs)
  -h, --help               print this help

Stops cleanly on SIGINT (Ctrl-C) or SIGTERM.
";

struct Chat<C> {
    codec: C,
    /// Every open connection, by id.
    members: Mutex<HashMap<u64, Socket>>,
}

impl<C: Codec + Clone + Sync> Handler<Framed<C>> for Chat<C> {
    fn on_new_connection(&self, tcp: TcpStream, _peer: SocketAddr) -> io::Result<Framed<C>> {
        tcp.set_nodelay(true)?;
        Ok(Framed::new(tcp, self.codec.clone()))
    }

    fn on_connection_opened(&self, socket: &Socket) {
        tracing::info!(id = socket.id(), peer = %socket.peer_addr(), "joined");
        self.members.lock().insert(socket.id(), socket.clone());
    }

    fn on_frame(&self, socket: &Socket, frame: &[u8]) {
        // Copy the handles out and let go of the lock before sending: a send may write to the
        // socket, and other workers need the map meanwhile.
        let others: Vec<Socket> = self
            .members
            .lock()
            .iter()
            .filter(|&(&id, _)| id != socket.id())
            .map(|(_, other)| other.clone())
            .collect();
        for other in others {
            match other.send(frame) {
                Ok(()) => {}
                // Left (or is leaving) meanwhile; `on_connection_removed` drops it from the map.
                Err(SendError::Closed) => {}
                Err(err) => tracing::warn!(to = other.id(), error = %err, "relay failed"),
            }
        }
    }

    fn on_connection_removed(&self, socket: &Socket, reason: &CloseReason) {
        self.members.lock().remove(&socket.id());
        tracing::info!(id = socket.id(), %reason, "left");
    }
}

/// Binds, serves until SIGINT or SIGTERM, and returns once the server has stopped.
fn serve<C: Codec + Clone + Sync>(codec: C, config: Config) -> io::Result<()> {
    let server = Server::<Framed<C>, Chat<C>>::bind(config)?;
    println!("listening on {}", server.local_addr()?);

    // Ctrl-C or SIGTERM starts the drain; `run` returns when it is done.
    server.shutdown_handle().shutdown_on_signals()?;

    server
        .run(Chat {
            codec,
            members: Mutex::new(HashMap::new()),
        })
        .map(drop)
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
