//! The mio peer of the benchmark: an echo server with one edge-triggered reactor per thread,
//! written the way a careful mio server is.
//!
//! - Each thread has its own `mio::Poll`, its own listener (all bound to the same port with
//!   `SO_REUSEPORT`, so the kernel spreads new connections over the threads) and its own
//!   connections in a `Slab`. Threads share nothing but the stop flag.
//! - Sockets are registered once for `READABLE | WRITABLE`. A readable event reads until
//!   `WouldBlock` into a 64 KiB buffer owned by the thread, decodes the complete frames straight
//!   from it and writes all their replies at once from a per-thread output buffer. A connection
//!   keeps only the bytes of an incomplete frame and the replies the socket did not take, both
//!   freed once drained: an idle connection holds no buffer.
//! - Backpressure: while replies are pending a connection is not read; the writable event that
//!   drains them resumes reading.
//! - Fairness: one turn reads at most 256 KiB per connection and accepts at most 256 connections;
//!   whatever is left over goes on a list that is served after the next (non-blocking) poll.
//! - SIGINT/SIGTERM are taken by the main thread with `sigwait`, which sets the stop flag and
//!   wakes every reactor through a `mio::Waker`.
//!
//! `--block-ms` and `--max-frame` behave as in the other servers; `--max-buffered` (hydrogen's
//! `Config::max_buffered`) is refused with status 2.
//!
//! See `hydrogen_bench::server_cli` for the command line and the framings.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use hydrogen_bench::server_cli::{self, Framing, READ_CHUNK};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::signal::{SigSet, Signal};
use slab::Slab;

const NAME: &str = "mio_echo";

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

/// Bytes one connection may read in one turn before the others get theirs.
const READ_BUDGET: usize = 256 * 1024;
/// Connections one turn may accept.
const ACCEPT_BUDGET: usize = 256;
/// Events taken per poll.
const EVENTS: usize = 1024;
/// The per-thread output buffer is released after a turn that grew it past this.
const OUT_KEEP: usize = 1024 * 1024;

/// One connection.
struct Conn {
    tcp: TcpStream,
    /// The bytes of an incomplete frame.
    leftover: Vec<u8>,
    /// Replies the socket did not take yet; `pending[written..]` is still to go.
    pending: Vec<u8>,
    written: usize,
    /// Reading stopped with data possibly left (replies pending): resume on writable.
    read_paused: bool,
    /// On the reactor's list of connections to serve again.
    queued: bool,
    /// The peer broke the framing: close once the pending replies are written.
    closing: bool,
}

/// How a connection's turn ended.
enum Status {
    /// Waiting for the next event.
    Idle,
    /// The read budget ran out with data possibly left: serve it again soon.
    More,
    /// The peer closed the connection, or broke the framing and has its replies.
    Closed,
}

impl Conn {
    fn new(tcp: TcpStream) -> Conn {
        Conn {
            tcp,
            leftover: Vec::new(),
            pending: Vec::new(),
            written: 0,
            read_paused: false,
            queued: false,
            closing: false,
        }
    }

    /// Writes the pending replies; true once none are left.
    fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.pending.len() {
            match self.tcp.write(&self.pending[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pending = Vec::new();
        self.written = 0;
        Ok(true)
    }

    /// Writes `out` (nothing is pending when this is called) and keeps what the socket did not
    /// take.
    fn write_out(&mut self, out: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < out.len() {
            match self.tcp.write(&out[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if written < out.len() {
            self.pending.extend_from_slice(&out[written..]);
        }
        Ok(())
    }

    /// One turn: write what is pending, then (if the socket was readable, or reading was
    /// paused) read, echo and write until `WouldBlock`, backpressure or the budget.
    fn drive(
        &mut self,
        readable: bool,
        framing: Framing,
        block: Duration,
        scratch: &mut [u8],
        out: &mut Vec<u8>,
    ) -> io::Result<Status> {
        if !self.flush()? {
            if readable {
                self.read_paused = true;
            }
            return Ok(Status::Idle);
        }
        if self.closing {
            return Ok(Status::Closed);
        }
        if !readable && !self.read_paused {
            return Ok(Status::Idle);
        }
        self.read_paused = false;
        let mut budget = READ_BUDGET;
        loop {
            let n = match self.tcp.read(scratch) {
                Ok(0) => return Ok(Status::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Status::Idle),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out.clear();
            let decoded = framing.echo_ingest(&mut self.leftover, &scratch[..n], out, block);
            self.write_out(out)?;
            if decoded.is_err() {
                // Malformed input: answer the frames before it, then close.
                self.closing = true;
                return Ok(if self.pending.is_empty() {
                    Status::Closed
                } else {
                    Status::Idle
                });
            }
            if !self.pending.is_empty() {
                // The socket is full: read no more until the replies are out.
                self.read_paused = true;
                return Ok(Status::Idle);
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                return Ok(Status::More);
            }
        }
    }
}

/// One thread's event loop.
struct Reactor {
    poll: Poll,
    listener: TcpListener,
    listener_queued: bool,
    conns: Slab<Conn>,
    framing: Framing,
    /// `--block-ms`.
    block: Duration,
    scratch: Box<[u8]>,
    out: Vec<u8>,
    /// Connections (and the listener) with work left from an earlier turn.
    again: Vec<Token>,
    stop: Arc<AtomicBool>,
}

impl Reactor {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        let mut batch = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = if self.again.is_empty() {
                None
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            std::mem::swap(&mut batch, &mut self.again);
            for event in &events {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(key) => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        self.drive(key, readable);
                    }
                }
            }
            for token in batch.drain(..) {
                match token {
                    LISTENER => {
                        self.listener_queued = false;
                        self.accept();
                    }
                    Token(key) => {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.queued = false;
                            self.drive(key, true);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            match self.listener.accept() {
                Ok((mut tcp, _peer)) => {
                    if tcp.set_nodelay(true).is_err() {
                        continue;
                    }
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key());
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(err) = self.poll.registry().register(&mut tcp, token, interest) {
                        eprintln!("{NAME}: register: {err}");
                        continue;
                    }
                    entry.insert(Conn::new(tcp));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(
                            nix::libc::EMFILE
                                | nix::libc::ENFILE
                                | nix::libc::ENOBUFS
                                | nix::libc::ENOMEM
                        )
                    ) =>
                {
                    // Out of descriptors or memory: the waiting connections are taken when the
                    // next one arrives.
                    eprintln!("{NAME}: accept: {e}");
                    return;
                }
                // One failed connection (ECONNABORTED and the like).
                Err(_) => {}
            }
        }
        if !self.listener_queued {
            self.listener_queued = true;
            self.again.push(LISTENER);
        }
    }

    fn drive(&mut self, key: usize, readable: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // an event for a connection closed earlier in this batch
        };
        match conn.drive(
            readable,
            self.framing,
            self.block,
            &mut self.scratch,
            &mut self.out,
        ) {
            Ok(Status::Idle) => {}
            Ok(Status::More) => {
                if !conn.queued {
                    conn.queued = true;
                    self.again.push(Token(key));
                }
            }
            // Closing the socket also takes it out of the epoll set. A framing error, a reset
            // or any other error ends only this connection.
            Ok(Status::Closed) | Err(_) => drop(self.conns.remove(key)),
        }
        if self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        }
    }
}

/// Binds one listener per thread on the same port, makes the reactors, and returns them with
/// their wakers and the address they listen on.
fn reactors(
    args: &server_cli::ServerArgs,
    stop: &Arc<AtomicBool>,
) -> io::Result<(Vec<Reactor>, Vec<Waker>, SocketAddr)> {
    let first = server_cli::bind_listener(args.addr, true)?;
    // With port 0 the first bind picks the port; the others join it.
    let local = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..args.threads {
        listeners.push(server_cli::bind_listener(local, true)?);
    }
    let mut reactors = Vec::with_capacity(args.threads);
    let mut wakers = Vec::with_capacity(args.threads);
    for std_listener in listeners {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(std_listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        wakers.push(Waker::new(poll.registry(), WAKER)?);
        reactors.push(Reactor {
            poll,
            listener,
            listener_queued: false,
            conns: Slab::new(),
            framing: args.framing,
            block: args.block,
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            again: Vec::new(),
            stop: Arc::clone(stop),
        });
    }
    Ok((reactors, wakers, local))
}

fn main() {
    let args = server_cli::parse_args(NAME);
    server_cli::refuse_max_buffered(NAME, &args);
    server_cli::refuse_proxy_protocol(NAME, &args);
    server_cli::refuse_tls(NAME, &args);
    server_cli::raise_nofile_limit();

    // Blocked before any thread starts, so every thread inherits the mask and only `sigwait`
    // below takes these signals (one sent before it runs stays pending).
    let signals = SigSet::from_iter([Signal::SIGINT, Signal::SIGTERM]);
    if let Err(err) = signals.thread_block() {
        server_cli::fail(NAME, format!("cannot block SIGINT and SIGTERM: {err}"));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (reactors, wakers, local) =
        reactors(&args, &stop).unwrap_or_else(|err| server_cli::fail(NAME, err));
    let mut threads = Vec::with_capacity(reactors.len());
    for (i, mut reactor) in reactors.into_iter().enumerate() {
        let spawned = thread::Builder::new()
            .name(format!("mio-reactor-{i}"))
            .spawn(move || {
                if let Err(err) = reactor.run() {
                    eprintln!("{NAME}: reactor {i}: {err}");
                }
            });
        threads.push(spawned.unwrap_or_else(|err| server_cli::fail(NAME, err)));
    }
    server_cli::print_listening(local);

    if let Err(err) = signals.wait() {
        server_cli::fail(NAME, format!("sigwait: {err}"));
    }
    stop.store(true, Ordering::Relaxed);
    for waker in &wakers {
        if let Err(err) = waker.wake() {
            eprintln!("{NAME}: wake: {err}");
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    process::exit(0);
}
