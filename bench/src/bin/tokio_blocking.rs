//! The tokio peer of the blocking-work benchmark: tokio's multi-threaded runtime with `--threads`
//! I/O workers, one task per connection, and the blocking work of each request on tokio's
//! blocking pool, the way tokio's documentation says to run blocking code.
//!
//! Per connection the task reads SimpleFrame requests; for each complete one it runs the work
//! (`std::thread::sleep(--work-ms)`) with `tokio::task::spawn_blocking`, awaits it, and writes
//! the reply, the request's payload, with `write_all`. The requests of one connection are taken
//! one after another, so the replies keep their order (the load sends one request at a time per
//! connection anyway). The blocking pool is capped with `max_blocking_threads(--pool)`; beyond
//! that many requests at once, tokio queues the work.
//!
//! See `hydrogen_bench::blocking` for the command line and the contract of the blocking servers.
#![forbid(unsafe_code)]

use std::io;
use std::process;
use std::time::Duration;

use hydrogen_bench::blocking::{self, BlockingServerArgs};
use hydrogen_bench::server_cli::{self, Framing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

const NAME: &str = "tokio_blocking";

/// Bytes read per `read` call.
const READ_CHUNK: usize = 4096;

/// Serves one connection until the peer closes it or breaks the framing.
async fn serve(mut stream: TcpStream, work: Duration) -> io::Result<()> {
    // Received bytes not yet forming a whole request.
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut reply = Vec::new();
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        while let Some((payload, consumed)) = Framing::Simple.decode(&buf[pos..])? {
            let payload = buf[pos..][payload].to_vec();
            pos += consumed;
            let payload = tokio::task::spawn_blocking(move || {
                std::thread::sleep(work);
                payload
            })
            .await
            .map_err(io::Error::other)?;
            reply.clear();
            Framing::Simple.encode(&payload, &mut reply);
            stream.write_all(&reply).await?;
        }
        buf.drain(..pos);
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

async fn accept_loop(listener: TcpListener, work: Duration) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                if stream.set_nodelay(true).is_err() {
                    continue;
                }
                tokio::spawn(async move {
                    // A reset or a framing error ends only this connection; nothing to report.
                    let _ = serve(stream, work).await;
                });
            }
            Err(err) if out_of_resources(&err) => {
                eprintln!("{NAME}: accept: {err}; pausing 10 ms");
                // No timer in this build of tokio: sleep on the blocking pool instead.
                let pause = || std::thread::sleep(Duration::from_millis(10));
                let _ = tokio::task::spawn_blocking(pause).await;
            }
            // Failures of one connection (ECONNABORTED and the like).
            Err(_) => {}
        }
    }
}

async fn run(args: BlockingServerArgs) -> io::Result<()> {
    // Installed before the listening line, so that a signal sent as soon as it is read is
    // already handled.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = TcpListener::from_std(server_cli::bind_listener(args.addr, false)?)?;
    server_cli::print_listening(listener.local_addr()?);
    tokio::spawn(accept_loop(listener, args.work));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn main() {
    let args = blocking::parse_args(NAME);
    server_cli::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .max_blocking_threads(args.pool)
        .enable_all()
        .build()
        .unwrap_or_else(|err| server_cli::fail(NAME, err));
    if let Err(err) = runtime.block_on(run(args)) {
        server_cli::fail(NAME, err);
    }
    // Open connections and work still running are simply dropped with the process (dropping
    // the runtime would wait for the blocking tasks).
    process::exit(0);
}
