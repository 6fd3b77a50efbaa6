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
use std::process::ExitCode;

use clap::Parser;
use hydrogen::{CloseReason, Config, Handler, SendError, Server, Socket};
use parking_lot::Mutex;

mod support;

/// A chat room: every frame received is relayed, unchanged, to all other connections. Stops
/// cleanly on SIGINT (Ctrl-C) or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "chat")]
struct Cli {
    #[command(flatten)]
    server: support::ServerArgs,
}

#[derive(Default)]
struct Chat {
    /// Every open connection, by id: the room is shared state, so it lives in the handler
    /// (what belongs to one connection would go in its session).
    members: Mutex<HashMap<u64, Socket>>,
}

impl Handler for Chat {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        tracing::info!(id = socket.id(), peer = %socket.peer_addr(), "joined");
        self.members.lock().insert(socket.id(), socket.clone());
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
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

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        self.members.lock().remove(&socket.id());
        tracing::info!(id = socket.id(), %reason, "left");
    }
}

/// Binds, serves until SIGINT or SIGTERM, and returns once the server has stopped.
fn serve(config: Config) -> io::Result<()> {
    let server = Server::bind(config)?;
    println!("listening on {}", server.local_addr()?);

    // Ctrl-C or SIGTERM starts the drain; `run` returns when it is done.
    server.shutdown_handle().shutdown_on_signals()?;

    server.run(Chat::default()).map(drop)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    support::init_logging();
    match serve(cli.server.config()) {
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
