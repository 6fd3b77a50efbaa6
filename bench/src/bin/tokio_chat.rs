//! The tokio peer of the fan-out benchmark: a chat server on tokio's multi-threaded runtime.
//! Every frame a client sends is relayed, unchanged, to every other connected client.
//!
//! One `tokio::sync::broadcast` channel carries `(sender id, encoded frame)` to every
//! connection; it holds [`CHANNEL`] frames, so that a member only lags (misses frames) if it
//! falls that far behind. A task per connection subscribes, splits its socket and runs two
//! halves side by side until either ends:
//!
//! - the reader reads into a `BytesMut`, and for every complete frame splits its bytes off the
//!   buffer (no copy: the frame goes out exactly as it came in) and `send`s them into the channel;
//! - the writer `recv`s one frame, then takes everything else already in the channel for it
//!   (`try_recv`, up to [`BATCH`] frames), skips the connection's own frames, and writes the
//!   rest with one `write_all`.
//!
//! A receiver that lagged (`RecvError::Lagged`) counts the frames it missed and goes on; the
//! total, if any, is printed on stderr at exit. `--block-ms N` makes a `BLOCK` frame sleep N ms
//! (blocking the runtime worker) before it is relayed; `--max-buffered` is refused. See
//! `hydrogen_bench::server_cli` for the command line and the framings.
#![forbid(unsafe_code)]

use std::io;
use std::process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hydrogen_bench::server_cli::{self, Framing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

const NAME: &str = "tokio_chat";

/// Frames the broadcast channel holds: 64k, far more than the benchmark's rooms have in
/// flight.
const CHANNEL: usize = 64 * 1024;

/// Frames the writer takes from the channel for one write.
const BATCH: usize = 256;

/// Free room the read buffer keeps before a read; it is reallocated
/// ([`server_cli::READ_CHUNK`] bytes) when less is left.
const READ_ROOM: usize = 4 * 1024;

/// The writer's buffer is released after a write that grew it past this.
const OUT_KEEP: usize = 1024 * 1024;

/// What goes through the channel: the id of the connection that sent the frame, and the frame.
type Message = (u64, Bytes);

/// Frames skipped by receivers that lagged, over all connections.
static LAGGED: AtomicU64 = AtomicU64::new(0);

/// Reads frames and sends each into the channel, until the peer closes or breaks the framing.
async fn read_frames(
    mut rd: ReadHalf<'_>,
    id: u64,
    framing: Framing,
    block: Duration,
    tx: &broadcast::Sender<Message>,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(server_cli::READ_CHUNK);
    loop {
        buf.reserve(READ_ROOM);
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        while let Some((payload, len)) = framing.decode(&buf)? {
            server_cli::maybe_block(&buf[payload], block);
            // Fails only with no receiver at all; this connection's own is always there.
            let _ = tx.send((id, buf.split_to(len).freeze()));
        }
    }
}

/// Writes every frame of the channel that another connection sent, in batches.
async fn write_frames(
    mut wr: WriteHalf<'_>,
    id: u64,
    mut rx: broadcast::Receiver<Message>,
) -> io::Result<()> {
    let mut out = Vec::new();
    loop {
        match rx.recv().await {
            Ok((from, frame)) if from != id => out.extend_from_slice(&frame),
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                LAGGED.fetch_add(n, Ordering::Relaxed);
            }
            Err(RecvError::Closed) => return Ok(()),
        }
        for _ in 1..BATCH {
            match rx.try_recv() {
                Ok((from, frame)) if from != id => out.extend_from_slice(&frame),
                Ok(_) => {}
                Err(TryRecvError::Lagged(n)) => {
                    LAGGED.fetch_add(n, Ordering::Relaxed);
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
            if out.capacity() > OUT_KEEP {
                out = Vec::new();
            }
        }
    }
}

/// Serves one member until it leaves (or breaks the framing, or its socket fails).
async fn serve(
    mut stream: TcpStream,
    id: u64,
    framing: Framing,
    block: Duration,
    tx: broadcast::Sender<Message>,
) -> io::Result<()> {
    let rx = tx.subscribe();
    let (rd, wr) = stream.split();
    tokio::select! {
        r = read_frames(rd, id, framing, block, &tx) => r,
        r = write_frames(wr, id, rx) => r,
    }
}

/// Whether an accept error means the process is out of some resource (rather than one failed
/// connection), so that retrying at once would only spin.
fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

async fn accept_loop(listener: TcpListener, framing: Framing, block: Duration) {
    let (tx, _) = broadcast::channel::<Message>(CHANNEL);
    let mut next_id = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                if stream.set_nodelay(true).is_err() {
                    continue;
                }
                let (id, tx) = (next_id, tx.clone());
                next_id += 1;
                tokio::spawn(async move {
                    // A reset or a framing error ends only this member; nothing to report.
                    let _ = serve(stream, id, framing, block, tx).await;
                });
            }
            Err(err) if out_of_resources(&err) => {
                eprintln!("{NAME}: accept: {err}; pausing 10 ms");
                let pause = || std::thread::sleep(Duration::from_millis(10));
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
    let listener = TcpListener::from_std(server_cli::bind_listener(args.addr, false)?)?;
    server_cli::print_listening(listener.local_addr()?);
    tokio::spawn(accept_loop(listener, args.framing, args.block));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn main() {
    let args = server_cli::parse_args_about(
        NAME,
        "A chat server for the fan-out benchmark (tokio, one broadcast channel): every frame is \
         relayed to every other connection.",
    );
    server_cli::refuse_max_buffered(NAME, &args);
    server_cli::refuse_proxy_protocol(NAME, &args);
    server_cli::refuse_tls(NAME, &args);
    server_cli::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .unwrap_or_else(|err| server_cli::fail(NAME, err));
    if let Err(err) = runtime.block_on(run(args)) {
        server_cli::fail(NAME, err);
    }
    let lagged = LAGGED.load(Ordering::Relaxed);
    if lagged > 0 {
        eprintln!("{NAME}: receivers lagged and skipped {lagged} frame(s) in all");
    }
    // Open connections are simply dropped with the process.
    process::exit(0);
}
