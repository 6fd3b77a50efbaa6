//! A chat room: every frame a client sends is passed on to every other connected client.
//!
//! Shows how to talk to connections other than the one a callback is for: the handler keeps
//! a `Group` that every connection joins in `on_connection_opened` (and leaves by closing), and
//! relays each frame with `Group::broadcast_except`. The frame is encoded once and shared by
//! the members' write queues; the writes are left to the workers and coalesced, so a member
//! that reads slowly holds nobody up, and one that falls too far behind is disconnected
//! (its `LagPolicy`).
//!
//! ```text
//! cargo run --release --example chat                       # 127.0.0.1:1337, SimpleFrame
//! cargo run --release --example chat -- --framing u32 --addr 127.0.0.1:4000
//! cargo run --release --features tls --example chat -- --tls-cert cert.pem --tls-key key.pem
//! cargo run --release --example chat -- --proxy-protocol --proxy-from 10.0.0.0/8  # behind HAProxy
//! cargo run --release --example chat -- --unix /tmp/chat.sock --reuse-port        # one of several
//! ```
//!
//! Frames are relayed unchanged (no sender name is added). Connect two or more clients with
//! `hydrogen::client::Client`, or any program that speaks the framing; what one sends, the
//! others receive. Stops cleanly on SIGINT or SIGTERM, like `echo.rs`.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use hydrogen::{CloseReason, Group, Handler, LagPolicy, OnLag, Server, Socket};

mod support;

/// A chat room: every frame received is relayed, unchanged, to all other connections. Stops
/// cleanly on SIGINT (Ctrl-C) or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "chat")]
struct Cli {
    #[command(flatten)]
    server: support::ServerArgs,
}

struct Chat {
    /// Everyone in the room. The room is shared state, so it lives in the handler (what
    /// belongs to one connection would go in its session).
    room: Group,
}

impl Default for Chat {
    fn default() -> Chat {
        Chat {
            // A member may fall 4 MiB behind the room; past that it is disconnected
            // (`CloseReason::SlowConsumer`) rather than let its backlog grow or hold anyone up.
            room: Group::with_policy(LagPolicy {
                max_lag: 4 * 1024 * 1024,
                on_lag: OnLag::Disconnect,
            }),
        }
    }
}

impl Handler for Chat {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        tracing::info!(id = socket.id(), peer = %socket.peer_addr(), "joined");
        self.room.join(socket);
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        // Encoded once, shared by every member's write queue; written by the workers, in
        // one vectored write per member for whatever is queued by then.
        self.room.broadcast_except(frame, socket);
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        // It has left the room already: a closed connection leaves its groups.
        tracing::info!(id = socket.id(), %reason, "left");
    }
}

/// Binds, serves until SIGINT or SIGTERM, and returns once the server has stopped.
fn serve(args: &support::ServerArgs) -> io::Result<()> {
    let tls = args.tls()?;
    let server = Server::bind(args.config())?;
    support::announce(&server)?;

    // Ctrl-C or SIGTERM starts the drain; `run` returns when it is done.
    server.shutdown_handle().shutdown_on_signals()?;

    args.run(tls, server, Chat::default()).map(drop)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    support::init_logging();
    support::exit(serve(&cli.server))
}
