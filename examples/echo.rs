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
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

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

#[derive(Debug, Clone, Copy)]
enum Framing {
    Simple,
    U32,
}

struct Args {
    config: Config,
    framing: Framing,
}

/// Splits `HOST:PORT` on its last ':'; `[::1]:PORT` gives host `::1`.
fn parse_addr(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--addr {s:?}: expected HOST:PORT"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("--addr {s:?}: empty host"));
    }
    let port = port
        .parse()
        .map_err(|_| format!("--addr {s:?}: invalid port {port:?}"))?;
    Ok((host.to_string(), port))
}

/// `Ok(None)` means `--help`.
fn parse_args() -> Result<Option<Args>, String> {
    // Config's defaults: 127.0.0.1:1337, one worker per CPU, a backlog of 1024.
    let mut config = Config::default();
    let mut framing = Framing::Simple;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => (config.addr, config.port) = parse_addr(&value("--addr")?)?,
            "--framing" => {
                framing = match value("--framing")?.as_str() {
                    "simple" => Framing::Simple,
                    "u32" => Framing::U32,
                    other => {
                        return Err(format!(
                            "--framing {other:?}: expected \"simple\" or \"u32\""
                        ));
                    }
                }
            }
            "--threads" => {
                let v = value("--threads")?;
                config.max_threads = match v.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(format!("--threads {v:?}: expected a number of at least 1")),
                };
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Args { config, framing }))
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
    let Args { config, framing } = match parse_args() {
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

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::builder()
                .with_default_directive(LevelFilter::WARN.into())
                .from_env_lossy(),
        )
        .with_writer(io::stderr)
        .init();

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
