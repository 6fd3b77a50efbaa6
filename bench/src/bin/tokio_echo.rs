//! The tokio peer of the benchmark: an echo server on tokio's multi-threaded runtime, one task
//! per connection, written the way a careful tokio server is.
//!
//! Per connection the task waits for readability (`readable().await`, which holds no buffer),
//! then reads once with `try_read` into a 64 KiB buffer owned by the worker thread, decodes every
//! complete frame straight from it, encodes all the replies into one per-thread output buffer and
//! writes them with `try_write`. Only what a connection must keep between turns is its own: the
//! bytes of an incomplete frame and the replies the socket did not take (written with
//! `write_all().await` before reading again, which is the backpressure). Both are freed once
//! drained, so an idle connection holds no buffer at all, only its task.
//!
//! With `--block-ms N`, a frame whose payload starts with `BLOCK` sleeps N ms with
//! `std::thread::sleep` before its echo, blocking the runtime worker thread as a naive user's
//! handler would. `--max-frame` bounds the `u32` framing as in hydrogen_echo; `--max-buffered`
//! (hydrogen's `Config::max_buffered`, which has no equivalent here) is refused with status 2.
//!
//! With `--tls-cert FILE --tls-key FILE` every connection is TLS (tokio-rustls's
//! `TlsAcceptor`; rustls 0.23 with the aws-lc-rs provider and its default suites, see
//! `hydrogen_bench::tls`): the task first completes the handshake, then reads decrypted bytes
//! into a per-connection buffer, appends every reply to a per-connection output buffer, and
//! writes and flushes that (one TLS record batch, one `write`) only when no more input is ready
//! or it reaches 64 KiB. Waiting for input holds neither buffer: the task awaits the socket's
//! readiness first, as in the plain path. rustls's own per-connection state (its record buffers)
//! stays with the connection.
//!
//! See `hydrogen_bench::server_cli` for the command line and the framings.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::process;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hydrogen_bench::server_cli::{self, Framing, READ_CHUNK};
use hydrogen_bench::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const NAME: &str = "tokio_echo";

/// The per-thread output buffer is released after a turn that grew it past this.
const OUT_KEEP: usize = 1024 * 1024;

/// Buffers shared by all the connections a worker thread serves; only used between two awaits.
struct Scratch {
    read: Box<[u8]>,
    out: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        read: vec![0u8; READ_CHUNK].into_boxed_slice(),
        out: Vec::new(),
    });
}

/// What one read turn found.
enum Turn {
    /// Keep serving; `pending` holds any replies the socket did not take.
    Continue,
    /// The peer closed the connection.
    Eof,
    /// The peer broke the framing: close once the replies to the frames before are written.
    Bad(io::Error),
}

/// One read, then the echo of every frame it completed. Synchronous: the per-thread scratch is
/// never held across an await.
fn turn(
    stream: &TcpStream,
    framing: Framing,
    block: Duration,
    scratch: &mut Scratch,
    leftover: &mut Vec<u8>,
    pending: &mut Vec<u8>,
) -> io::Result<Turn> {
    let Scratch { read, out } = scratch;
    let n = match stream.try_read(read) {
        Ok(0) => return Ok(Turn::Eof),
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(Turn::Continue);
        }
        Err(e) => return Err(e),
    };
    out.clear();
    let decoded = framing.echo_ingest(leftover, &read[..n], out, block);
    let mut written = 0;
    while written < out.len() {
        match stream.try_write(&out[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => written += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if written < out.len() {
        pending.extend_from_slice(&out[written..]);
    }
    if out.capacity() > OUT_KEEP {
        *out = Vec::new();
    }
    match decoded {
        Ok(()) => Ok(Turn::Continue),
        Err(bad) => Ok(Turn::Bad(bad.into())),
    }
}

/// Serves one connection until the peer closes it or breaks the framing.
async fn serve(mut stream: TcpStream, framing: Framing, block: Duration) -> io::Result<()> {
    // The bytes of an incomplete frame, and the replies the socket has not taken yet.
    let mut leftover = Vec::new();
    let mut pending = Vec::new();
    loop {
        stream.readable().await?;
        let turn = SCRATCH.with_borrow_mut(|scratch| {
            turn(
                &stream,
                framing,
                block,
                scratch,
                &mut leftover,
                &mut pending,
            )
        })?;
        if let Turn::Eof = turn {
            return Ok(());
        }
        if !pending.is_empty() {
            stream.write_all(&pending).await?;
            pending = Vec::new();
        }
        if let Turn::Bad(err) = turn {
            return Err(err);
        }
    }
}

/// Decrypted bytes read per TLS read: one full TLS record's plaintext.
const TLS_READ: usize = 16 * 1024;

/// The replies of a TLS connection are written once this much is buffered, even if more input
/// is ready.
const TLS_OUT_FLUSH: usize = 64 * 1024;

/// One read of decrypted bytes into `buf` if some are ready now: `None` if the read would wait
/// (rustls holds no plaintext and the socket has nothing), `Some(Ok(0))` at the end of the
/// stream. The read is polled once with the task's own waker and dropped if pending, which
/// `read_buf` allows (it is cancel safe).
async fn read_ready(
    stream: &mut TlsStream<TcpStream>,
    buf: &mut BytesMut,
) -> Option<io::Result<usize>> {
    buf.reserve(TLS_READ);
    let mut read = pin!(stream.read_buf(buf));
    poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Pending => Poll::Ready(None),
        Poll::Ready(result) => Poll::Ready(Some(result)),
    })
    .await
}

/// Writes the buffered replies as TLS records and flushes them to the socket.
async fn write_out(stream: &mut TlsStream<TcpStream>, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    stream.flush().await
}

/// Serves one TLS connection, once the handshake is done, until the peer closes it or breaks
/// the framing.
async fn serve_tls(
    mut stream: TlsStream<TcpStream>,
    framing: Framing,
    block: Duration,
) -> io::Result<()> {
    // Decrypted input not yet echoed (at most a trailing incomplete frame between reads), and
    // the replies not yet written.
    let mut input = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = match read_ready(&mut stream, &mut input).await {
            Some(result) => result?,
            None => {
                // No more input ready: write what it asked for, release the buffers (an idle
                // connection keeps none), and wait for the socket.
                write_out(&mut stream, &mut out).await?;
                out = Vec::new();
                if input.is_empty() {
                    input = BytesMut::new();
                }
                stream.get_ref().0.readable().await?;
                continue;
            }
        };
        if n == 0 {
            return write_out(&mut stream, &mut out).await;
        }
        match framing.echo_all(&input, &mut out, block) {
            Ok(used) => input.advance(used),
            Err(bad) => {
                // The replies to the frames before the bad one still go out.
                write_out(&mut stream, &mut out).await?;
                return Err(io::Error::other(bad.to_string()));
            }
        }
        if out.len() >= TLS_OUT_FLUSH {
            write_out(&mut stream, &mut out).await?;
        }
    }
}

/// Completes the handshake of a TLS connection, then serves it.
async fn accept_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    framing: Framing,
    block: Duration,
) -> io::Result<()> {
    let stream = acceptor.accept(stream).await?;
    serve_tls(stream, framing, block).await
}

/// Whether an accept error means the process is out of some resource (rather than one failed
/// connection), so that retrying at once would only spin.
fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    framing: Framing,
    block: Duration,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                if stream.set_nodelay(true).is_err() {
                    continue;
                }
                // A reset, a failed handshake or a framing error ends only this connection;
                // nothing to report.
                match tls.clone() {
                    None => tokio::spawn(async move {
                        let _ = serve(stream, framing, block).await;
                    }),
                    Some(acceptor) => tokio::spawn(async move {
                        let _ = accept_tls(acceptor, stream, framing, block).await;
                    }),
                };
            }
            Err(err) if out_of_resources(&err) => {
                eprintln!("{NAME}: accept: {err}; pausing 10 ms");
                // No timer in this build of tokio: sleep on the blocking pool instead.
                let pause = || std::thread::sleep(std::time::Duration::from_millis(10));
                let _ = tokio::task::spawn_blocking(pause).await;
            }
            // Failures of one connection (ECONNABORTED and the like).
            Err(_) => {}
        }
    }
}

async fn run(args: server_cli::ServerArgs) -> io::Result<()> {
    // Installed before the listening line, so that a signal sent as soon as it is read is
    // already handled.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let tls = match &args.tls {
        Some(files) => Some(TlsAcceptor::from(
            tls::server_config(&files.cert, &files.key).map_err(io::Error::other)?,
        )),
        None => None,
    };
    let listener = TcpListener::from_std(server_cli::bind_listener(args.addr, false)?)?;
    server_cli::print_listening(listener.local_addr()?);
    tokio::spawn(accept_loop(listener, tls, args.framing, args.block));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn main() {
    let args = server_cli::parse_args(NAME);
    server_cli::refuse_max_buffered(NAME, &args);
    server_cli::refuse_proxy_protocol(NAME, &args);
    server_cli::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .unwrap_or_else(|err| server_cli::fail(NAME, err));
    if let Err(err) = runtime.block_on(run(args)) {
        server_cli::fail(NAME, err);
    }
    // Open connections are simply dropped with the process.
    process::exit(0);
}
