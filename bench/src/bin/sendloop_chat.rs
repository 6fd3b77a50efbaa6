//! hydrogen's chat server as it had to be written before `Group`: every frame a client sends is
//! relayed, unchanged, to every other connected client by a loop of `Socket::send`, kept for
//! comparison with `hydrogen_chat` (run it as `--servers sendloop`).
//!
//! The handler keeps a `Socket` for every member in a map, filled in `on_connection_opened` and
//! emptied in `on_connection_removed`; for each frame it copies the other members' handles out
//! of the map and sends the frame to each with `Socket::send`. `Config::max_outbound` is 64 MiB,
//! so that a member is not disconnected as a slow consumer during a burst.
//!
//! Same command line as the echo servers (`hydrogen_bench::server_cli`): `--addr`, `--threads`,
//! `--framing`, `--max-frame`; `--block-ms N` makes a `BLOCK` frame sleep N ms before it is
//! relayed; `--max-buffered` is refused. Prints `listening on ADDR`; SIGINT or SIGTERM
//! (`ShutdownHandle::shutdown_on_signals`) stops the server and the process exits with status 0.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::process;
use std::time::Duration;

use hydrogen::{CloseReason, Config, Handler, LengthPrefixed, Server, SimpleFrame, Socket};
use hydrogen_bench::server_cli::{self, Framing};
use parking_lot::Mutex;

const NAME: &str = "sendloop_chat";

/// Bytes a member may have queued for writing before it is dropped as a slow consumer.
const MAX_OUTBOUND: usize = 64 << 20;

/// The room: every open connection, by id.
struct Chat {
    members: Mutex<HashMap<u64, Socket>>,
    /// How long a `BLOCK` frame sleeps before it is relayed (`--block-ms`).
    block: Duration,
}

impl Handler for Chat {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.members.lock().insert(socket.id(), socket.clone());
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        server_cli::maybe_block(frame, self.block);
        // Copy the handles out and let go of the lock before sending.
        let others: Vec<Socket> = self
            .members
            .lock()
            .iter()
            .filter(|&(&id, _)| id != socket.id())
            .map(|(_, other)| other.clone())
            .collect();
        for other in others {
            // Fails only for a member that is leaving; `on_connection_removed` drops it.
            let _ = other.send(frame);
        }
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, _: &CloseReason) {
        self.members.lock().remove(&socket.id());
    }
}

fn serve(framing: hydrogen::Framing, args: &server_cli::ServerArgs) -> io::Result<()> {
    let config = Config {
        framing,
        addr: args.addr.ip().to_string(),
        port: args.addr.port(),
        max_threads: args.threads,
        backlog: server_cli::BACKLOG as u32,
        max_outbound: MAX_OUTBOUND,
        ..Config::default()
    };
    let server = Server::bind(config)?;
    // Before any thread starts, so that they all inherit the blocked signals.
    server.shutdown_handle().shutdown_on_signals()?;
    server_cli::print_listening(server.local_addr()?);
    let chat = Chat {
        members: Mutex::new(HashMap::new()),
        block: args.block,
    };
    server.run(chat).map(drop)
}

fn main() {
    let args = server_cli::parse_args_about(
        NAME,
        "A chat server for the fan-out benchmark: every frame is relayed to every other \
         connection.",
    );
    server_cli::refuse_max_buffered(NAME, &args);
    server_cli::refuse_proxy_protocol(NAME, &args);
    server_cli::refuse_tls(NAME, &args);
    server_cli::raise_nofile_limit();
    let result = match args.framing {
        Framing::U32 { max } => serve(LengthPrefixed::new(max).into(), &args),
        Framing::Simple => serve(SimpleFrame.into(), &args),
    };
    match result {
        Ok(()) => process::exit(0),
        Err(err) => server_cli::fail(NAME, err),
    }
}
