//! Shared helpers for the integration tests: a server on a free loopback port, run in a
//! background thread, and small waiting utilities with deadlines.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hydrogen::{Config, Handler, RunSummary, Server, ShutdownHandle, Transport};

/// A generous upper bound for anything that should happen "at once": only a broken server
/// gets near it.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A server running in a background thread on 127.0.0.1 with an OS-chosen port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<RunSummary>>>,
}

impl TestServer {
    /// Binds with `config` (its address and port are replaced by 127.0.0.1:0) and runs
    /// `handler` with the transport it names (a [`Recorder`] records the descriptors).
    #[track_caller]
    pub fn start<H: TestHandler>(config: Config, handler: H) -> TestServer {
        let transport = handler.transport();
        TestServer::start_with(config, transport, handler)
    }

    /// Binds with `config` (its address and port are replaced by 127.0.0.1:0) and runs
    /// `handler` over `transport`.
    #[track_caller]
    pub fn start_with<T: Transport, H: Handler>(
        config: Config,
        transport: T,
        handler: H,
    ) -> TestServer {
        let config = Config {
            addr: "127.0.0.1".to_string(),
            port: 0,
            ..config
        };
        let server = Server::bind(config).expect("bind");
        let addr = server.local_addr().expect("local_addr");
        let shutdown = server.shutdown_handle();
        let thread = thread::Builder::new()
            .name("test-server".into())
            .spawn(move || server.run_with(transport, handler))
            .expect("spawn server thread");
        TestServer {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Shuts the server down and waits for `run` to return, giving its result.
    #[track_caller]
    pub fn stop(mut self) -> io::Result<RunSummary> {
        self.shutdown.shutdown();
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("server thread panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shutdown.shutdown();
            let _ = thread.join();
        }
    }
}

/// Config for tests: `threads` workers, everything else default.
pub fn config(threads: usize) -> Config {
    Config {
        max_threads: threads,
        ..Config::default()
    }
}

/// Config for tests over u32 length-prefixed frames: `threads` workers.
pub fn length_config(threads: usize) -> Config {
    Config {
        framing: hydrogen::LengthPrefixed::default().into(),
        ..config(threads)
    }
}

impl TestServer {
    /// A u32 length-prefixed client of this server, with a read timeout of [`DEADLINE`].
    #[track_caller]
    pub fn connect_length(&self) -> hydrogen::client::Client<hydrogen::LengthPrefixed> {
        let client =
            hydrogen::client::Client::connect(self.addr, hydrogen::LengthPrefixed::default())
                .expect("connect");
        client
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        client
    }
}

/// Polls `cond` until it holds, panicking with `what` after [`DEADLINE`].
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

use std::net::TcpStream;

use std::sync::Arc;

use hydrogen::{Accepted, CloseReason, Codec, Framed, Socket};
use parking_lot::Mutex;

/// A handler that knows the transport it is tested over.
pub trait TestHandler: Handler {
    type Transport: Transport;
    fn transport(&self) -> Self::Transport;
}

/// A built-in framing that records each accepted socket's descriptor number.
pub struct Recording<C> {
    codec: C,
    fds: Arc<Mutex<Vec<i32>>>,
}

impl<C: Codec + Clone + Sync> Transport for Recording<C> {
    type Stream = Framed<C>;

    fn open(&self, conn: Accepted) -> io::Result<Framed<C>> {
        use std::os::fd::AsRawFd;
        self.fds.lock().push(conn.stream().as_raw_fd());
        Ok(Framed::new(conn.into_stream(), self.codec.clone()))
    }
}

impl<C: Codec + Clone + Sync> TestHandler for Arc<Recorder<C>> {
    type Transport = Recording<C>;

    fn transport(&self) -> Recording<C> {
        Recording {
            codec: self.codec.clone(),
            fds: self.fds.clone(),
        }
    }
}

/// A short name for each removal reason, for assertions.
pub fn reason_kind(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::PeerClosed => "peer_closed",
        CloseReason::Reset => "reset",
        CloseReason::Protocol(_) => "protocol",
        CloseReason::Io(_) => "io",
        CloseReason::Local => "local",
        CloseReason::Shutdown { flushed: true } => "shutdown",
        CloseReason::Shutdown { flushed: false } => "shutdown_unflushed",
        CloseReason::IdleTimeout => "idle_timeout",
        CloseReason::FrameTimeout => "frame_timeout",
        CloseReason::SlowConsumer => "slow_consumer",
        CloseReason::MaxBuffered => "max_buffered",
        CloseReason::Panicked(_) => "panicked",
        _ => "other",
    }
}

type FrameFn = dyn Fn(&Socket, &[u8]) + Send + Sync;

/// A handler over a built-in framing that records every callback, and runs `on_frame` for
/// each frame (after recording it).
pub struct Recorder<C> {
    codec: C,
    on_frame: Box<FrameFn>,
    /// Every socket opened, in order.
    pub opened: Mutex<Vec<Socket>>,
    /// Every frame received: (connection id, payload).
    pub frames: Mutex<Vec<(u64, Vec<u8>)>>,
    /// Every removal: (connection id, reason kind).
    pub removed: Mutex<Vec<(u64, &'static str)>>,
    /// Every descriptor number the transport saw, in order.
    pub fds: Arc<Mutex<Vec<i32>>>,
}

impl<C: Codec + Clone> Recorder<C> {
    pub fn new(codec: C, on_frame: impl Fn(&Socket, &[u8]) + Send + Sync + 'static) -> Self {
        Recorder {
            codec,
            on_frame: Box::new(on_frame),
            opened: Mutex::new(Vec::new()),
            frames: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
            fds: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A recorder that echoes every frame.
    pub fn echo(codec: C) -> Self {
        Self::new(codec, |socket, frame| {
            let _ = socket.send(frame);
        })
    }

    /// Waits until `n` connections have been opened and returns the `n`-th (1-based).
    #[track_caller]
    pub fn nth_opened(&self, n: usize) -> Socket {
        wait_until("a connection to open", || self.opened.lock().len() >= n);
        self.opened.lock()[n - 1].clone()
    }

    /// Waits until connection `id` is removed and returns the reason kind.
    #[track_caller]
    pub fn removal_of(&self, id: u64) -> &'static str {
        wait_until("a connection to be removed", || {
            self.removed.lock().iter().any(|(i, _)| *i == id)
        });
        self.removed
            .lock()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, kind)| *kind)
            .unwrap()
    }

    /// The payloads received on connection `id`, in order.
    pub fn frames_of(&self, id: u64) -> Vec<Vec<u8>> {
        self.frames
            .lock()
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

impl<C: Codec + Clone + Sync> hydrogen::Handler for Recorder<C> {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.opened.lock().push(socket.clone());
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        self.frames.lock().push((socket.id(), frame.to_vec()));
        (self.on_frame)(socket, frame);
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        self.removed.lock().push((socket.id(), reason_kind(reason)));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the hardening tests.

/// The process's resident set size (`VmRSS` in `/proc/self/status`), in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// How many descriptors the process has open (entries of `/proc/self/fd`, less the one the
/// listing itself opens).
pub fn count_open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
        .saturating_sub(1)
}

/// Makes `close` send a reset (RST) instead of a FIN: `SO_LINGER` with a zero timeout.
pub fn reset_on_close(tcp: &TcpStream) {
    socket2::SockRef::from(tcp)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

/// Serialises the tests of one binary that measure the whole process (RSS, CPU, timing):
/// hold the guard for the test's duration. A test that panicked while holding it does not
/// block the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether an I/O error is a read timeout (`WouldBlock` or `TimedOut`) rather than a close.
pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Asserts that the server closed `tcp`: a read returns end of stream or an error (a reset)
/// within [`DEADLINE`], not a timeout. Bytes still arriving before the close are skipped.
#[track_caller]
pub fn assert_closed_by_server(tcp: &TcpStream, what: &str) {
    use std::io::Read;
    tcp.set_read_timeout(Some(DEADLINE))
        .expect("set_read_timeout");
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match (&*tcp).read(&mut buf) {
            Ok(0) => return,
            Ok(_) if start.elapsed() < DEADLINE => continue,
            Ok(_) => panic!("{what}: still receiving data after {DEADLINE:?}"),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                panic!("{what}: not closed within {:?}", start.elapsed())
            }
            Err(_) => return,
        }
    }
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (`5` to `/proc/self/clear_refs`,
/// Linux 4.0 and later). Returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak RSS (`VmHWM` in `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

/// Measures how much the process's memory grows over a stretch of a test: the RSS at the end
/// and, where the kernel lets the peak be reset, the peak RSS in between.
pub struct RssProbe {
    before: u64,
    peak_tracked: bool,
}

impl RssProbe {
    pub fn start() -> RssProbe {
        let peak_tracked = reset_peak_rss();
        RssProbe {
            before: rss_bytes(),
            peak_tracked,
        }
    }

    /// Asserts that neither the current RSS nor the peak since `start` exceeds the RSS at
    /// `start` by `limit` bytes; returns a description of the figures.
    #[track_caller]
    pub fn assert_growth_below(&self, limit: u64, what: &str) -> String {
        let now = rss_bytes();
        let peak = if self.peak_tracked {
            peak_rss_bytes().max(now)
        } else {
            now
        };
        let figures = format!(
            "RSS {} KiB -> {} KiB (peak {} KiB{}), growth {} KiB, peak growth {} KiB",
            self.before / 1024,
            now / 1024,
            peak / 1024,
            if self.peak_tracked { "" } else { ", untracked" },
            now.saturating_sub(self.before) / 1024,
            peak.saturating_sub(self.before) / 1024,
        );
        assert!(
            now.saturating_sub(self.before) < limit && peak.saturating_sub(self.before) < limit,
            "{what}: memory grew by {} KiB or more: {figures}",
            limit / 1024
        );
        figures
    }
}

/// The binary of the example `name` (`target/<profile>/examples/<name>`), built by
/// `cargo test` with the other targets, or here if this test was selected alone.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    // One build at a time when the tests of a binary start together.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_build = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples")
        .join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--example", name])
            .status()
            .expect("run cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// A child process (an example server, HAProxy), killed if the test ends or fails while it
/// still runs.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Waits up to `limit` for the child to exit by itself: its status, or `None` if it is
    /// still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The child's process id, for signals.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.id() as i32)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
