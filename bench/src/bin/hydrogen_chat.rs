//! The hydrogen chat server of the fan-out benchmark: every frame a client sends is relayed,
//! unchanged, to every other connected client, as in `examples/chat.rs`.
//!
//! Every connection joins one `Group` in `on_connection_opened` (and leaves it by closing);
//! each frame is relayed with `Group::broadcast_except`: encoded once, shared by the members'
//! write queues, written by the workers in coalesced `writev`s. A member may fall 64 MiB behind
//! (`LagPolicy`, `OnLag::Disconnect`) before it is dropped as a slow consumer, as much as
//! `sendloop_chat` (the same server written with a loop of `Socket::send`) allows with
//! `Config::max_outbound`.
//!
//! Same command line as the echo servers (`hydrogen_bench::server_cli`): `--addr`, `--threads`,
//! `--framing`, `--max-frame`; `--block-ms N` makes a `BLOCK` frame sleep N ms before it is
//! relayed; `--max-buffered` is refused. Prints `listening on ADDR`; SIGINT or SIGTERM
//! (`ShutdownHandle::shutdown_on_signals`) stops the server and the process exits with status 0.
#![forbid(unsafe_code)]

use std::io;
use std::process;
use std::time::Duration;

use hydrogen::{
    Config, Group, Handler, LagPolicy, LengthPrefixed, OnLag, Server, SimpleFrame, Socket,
};
use hydrogen_bench::server_cli::{self, Framing};

const NAME: &str = "hydrogen_chat";

/// Bytes of room traffic a member may have unsent before it is dropped as a slow consumer.
const MAX_LAG: usize = 64 << 20;

/// The room.
struct Chat {
    room: Group,
    /// How long a `BLOCK` frame sleeps before it is relayed (`--block-ms`).
    block: Duration,
}

impl Handler for Chat {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.room.join(socket);
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        server_cli::maybe_block(frame, self.block);
        self.room.broadcast_except(frame, socket);
    }
}

fn serve(framing: hydrogen::Framing, args: &server_cli::ServerArgs) -> io::Result<()> {
    let config = Config {
        framing,
        addr: args.addr.ip().to_string(),
        port: args.addr.port(),
        max_threads: args.threads,
        backlog: server_cli::BACKLOG as u32,
        ..Config::default()
    };
    let server = Server::bind(config)?;
    // Before any thread starts, so that they all inherit the blocked signals.
    server.shutdown_handle().shutdown_on_signals()?;
    server_cli::print_listening(server.local_addr()?);
    let chat = Chat {
        room: Group::with_policy(LagPolicy {
            max_lag: MAX_LAG,
            on_lag: OnLag::Disconnect,
        }),
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
