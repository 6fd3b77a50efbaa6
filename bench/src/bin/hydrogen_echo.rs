//! The hydrogen server of the benchmark: hydrogen's own echo, with its built-in framed streams.
//!
//! A `Handler` with no session, served in the chosen framing (`Config::framing`:
//! `LengthPrefixed` bounded at `--max-frame`, 1 MiB by default, or `SimpleFrame`; `TCP_NODELAY`
//! is on by default), that answers every frame with `Socket::send`; with `--block-ms N`, a frame whose payload starts
//! with `BLOCK` first sleeps N ms in `on_frame` (blocking the worker, as a naive handler would).
//! `--max-buffered` sets `Config::max_buffered`. SIGINT/SIGTERM are taken by a thread with `sigwait`, which calls the
//! server's `ShutdownHandle`; `run` then returns and the process exits with status 0.
//!
//! With `--tls-cert FILE --tls-key FILE` (only when built with the bench's `hydrogen-tls`
//! feature, which turns on the library's `tls`) the same handler is served over TLS: the
//! certificate and key are loaded with `hydrogen::tls::TlsConfig::from_pem_files` and the server
//! runs with `run_with(TlsTransport::new(tls, framing), ...)`, the framing decoding the
//! decrypted bytes. Built without it, the flags are a usage error (status 2).
//!
//! With `--proxy-protocol`, `Config::proxy_protocol` is on: every connection must start with a
//! PROXY protocol header (v1 or v2), from a source in the default `Config::proxy_from`
//! (loopback), which the library reads and strips before the first frame (the suite's
//! `accept-proxy-*` scenarios).
//!
//! See `hydrogen_bench::server_cli` for the command line and the framings.
#![forbid(unsafe_code)]

use std::io;
use std::process;
use std::thread;
use std::time::Duration;

use hydrogen::{Config, Handler, LengthPrefixed, Server, SimpleFrame, Socket};
use hydrogen_bench::server_cli::{self, Framing};
use nix::sys::signal::{SigSet, Signal};

const NAME: &str = "hydrogen_echo";

/// Why a build without the `hydrogen-tls` feature refuses `--tls-cert`.
const NO_TLS: &str = "built without TLS: rebuild with --features hydrogen-tls";

/// How long `run` may take to return after a signal before the process gives up on it.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Echoes every frame back to its connection.
struct Echo {
    /// How long a `BLOCK` frame sleeps before its echo (`--block-ms`).
    block: Duration,
}

impl Handler for Echo {
    type Session = ();

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        server_cli::maybe_block(frame, self.block);
        // Fails only once the connection is closing; there is no one left to answer then.
        let _ = socket.send(frame);
    }
}

/// Binds, prints the listening line, and serves until a signal stops the server.
fn serve(
    framing: hydrogen::Framing,
    args: &server_cli::ServerArgs,
    signals: SigSet,
) -> io::Result<()> {
    let config = Config {
        framing,
        addr: args.addr.ip().to_string(),
        port: args.addr.port(),
        max_threads: args.threads,
        backlog: server_cli::BACKLOG as u32,
        max_buffered: args.max_buffered,
        proxy_protocol: args.proxy_protocol,
        ..Config::default()
    };
    let server = Server::bind(config)?;
    let stop = server.shutdown_handle();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(err) = signals.wait() {
                server_cli::fail(NAME, format!("sigwait: {err}"));
            }
            stop.shutdown();
            // `run` returning ends the process first; this only bounds a shutdown that hangs.
            thread::sleep(STOP_GRACE);
            eprintln!("{NAME}: the server did not stop within {STOP_GRACE:?}");
            process::exit(1);
        })?;
    server_cli::print_listening(server.local_addr()?);
    let echo = Echo { block: args.block };
    match &args.tls {
        None => server.run(echo).map(drop),
        Some(files) => run_tls(server, files, framing, echo),
    }
}

/// Serves `echo` over TLS with the certificate and key in `files`.
#[cfg(feature = "hydrogen-tls")]
fn run_tls(
    server: Server,
    files: &server_cli::TlsFiles,
    framing: hydrogen::Framing,
    echo: Echo,
) -> io::Result<()> {
    use hydrogen::tls::{TlsConfig, TlsTransport};
    let tls = TlsConfig::from_pem_files(&files.cert, &files.key).map_err(|err| {
        io::Error::other(format!(
            "TLS certificate {} and key {}: {err}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    server
        .run_with(TlsTransport::new(tls, framing), echo)
        .map(drop)
}

/// Without the `hydrogen-tls` feature there is no TLS to serve (`main` already refuses the
/// flags with a usage error before anything is bound).
#[cfg(not(feature = "hydrogen-tls"))]
fn run_tls(_: Server, _: &server_cli::TlsFiles, _: hydrogen::Framing, _: Echo) -> io::Result<()> {
    Err(io::Error::other(NO_TLS))
}

fn main() {
    let args = server_cli::parse_args(NAME);
    if cfg!(not(feature = "hydrogen-tls")) && args.tls.is_some() {
        server_cli::usage_error(NAME, &format!("--tls-cert/--tls-key: {NO_TLS}"));
    }
    server_cli::raise_nofile_limit();

    // Blocked before any thread starts, so every thread inherits the mask and only the signal
    // thread's `sigwait` takes them (one sent before it runs stays pending).
    let signals = SigSet::from_iter([Signal::SIGINT, Signal::SIGTERM]);
    if let Err(err) = signals.thread_block() {
        server_cli::fail(NAME, format!("cannot block SIGINT and SIGTERM: {err}"));
    }

    let result = match args.framing {
        Framing::U32 { max } => serve(LengthPrefixed::new(max).into(), &args, signals),
        Framing::Simple => serve(SimpleFrame.into(), &args, signals),
    };
    match result {
        Ok(()) => process::exit(0),
        Err(err) => server_cli::fail(NAME, err),
    }
}
