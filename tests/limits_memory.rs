//! The server-wide memory ceiling, `Config::max_buffered`: peers that each send part of a large
//! frame are paused once the total passes it, resumed as memory frees, closed with
//! `CloseReason::MaxBuffered` past the second threshold, and everyone else is served
//! throughout.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::TestHandler;
use hydrogen::{Accepted, CloseReason, Config, Framed, Handler, LengthPrefixed, Socket, Transport};
use parking_lot::Mutex;

use common::{DEADLINE, config, reason_kind, wait_until};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Echoes small frames, counts large ones (without answering), records removals. With
/// `small_window`, each connection gets a small kernel receive buffer, so a peer the server
/// stops reading stalls after a few KiB instead of filling megabytes of kernel memory.
struct Holder {
    budget: usize,
    small_window: bool,
    large: Mutex<Vec<(u64, usize)>>,
    removed: Mutex<Vec<(u64, &'static str)>>,
}

impl Holder {
    fn new(budget: usize, small_window: bool) -> Arc<Holder> {
        Arc::new(Holder {
            budget,
            small_window,
            large: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
        })
    }

    fn removals(&self, kind: &str) -> usize {
        self.removed
            .lock()
            .iter()
            .filter(|(_, k)| *k == kind)
            .count()
    }
}

impl Handler for Holder {
    type Session = ();

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        if frame.len() > 64 * KIB {
            self.large.lock().push((socket.id(), frame.len()));
        } else {
            let _ = socket.send(frame);
        }
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        self.removed.lock().push((socket.id(), reason_kind(reason)));
    }
}

impl Transport for Holder {
    type Stream = Framed<LengthPrefixed>;

    fn open(&self, conn: Accepted) -> io::Result<Framed<LengthPrefixed>> {
        let tcp = conn.into_tcp()?;
        tcp.set_nodelay(true)?;
        if self.small_window {
            socket2::SockRef::from(&tcp).set_recv_buffer_size(32 * KIB)?;
        }
        Ok(Framed::new(tcp, LengthPrefixed::new(16 * MIB)).with_read_budget(self.budget))
    }
}

impl TestHandler for Arc<Holder> {
    type Transport = Arc<Holder>;

    fn transport(&self) -> Arc<Holder> {
        self.clone()
    }
}

fn ceiling(limit: usize) -> Config {
    Config {
        max_buffered: Some(limit),
        frame_timeout: None,
        ..config(2)
    }
}

/// A peer that sends one large frame in the background and then holds the connection.
/// `done` is set once the kernel took every byte.
struct Sender {
    done: Arc<AtomicBool>,
    /// Bytes the kernel took so far.
    sent: Arc<AtomicUsize>,
    /// Send only the first `head` bytes until this is set.
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<usize>,
}

impl Sender {
    /// With `small`, a 32 KiB send buffer: the peer stalls soon after the server stops
    /// reading it.
    fn start(addr: SocketAddr, frame: usize, head: usize, small: bool) -> Sender {
        let tcp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if small {
            tcp.set_send_buffer_size(32 * KIB).unwrap();
        }
        tcp.connect(&addr.into()).unwrap();
        let mut tcp: TcpStream = tcp.into();
        tcp.set_nodelay(true).unwrap();
        tcp.set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let sent_so_far = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(AtomicBool::new(head >= frame));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, n, g, s) = (done.clone(), sent_so_far.clone(), go.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut wire = (frame as u32).to_be_bytes().to_vec();
            wire.resize(4 + frame, 0x42);
            let mut sent = 0;
            let start = Instant::now();
            while sent < wire.len() && !s.load(Ordering::Relaxed) && start.elapsed() < DEADLINE * 2
            {
                let end = if g.load(Ordering::Relaxed) {
                    wire.len()
                } else {
                    4 + head
                };
                if sent == end {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                match tcp.write(&wire[sent..end]) {
                    Ok(k) => {
                        sent += k;
                        n.store(sent, Ordering::Release);
                    }
                    Err(e) if common::is_timeout(&e) => {}
                    Err(_) => break, // closed by the server
                }
            }
            if sent == wire.len() {
                d.store(true, Ordering::Release);
            }
            // Hold the connection until told to stop, then reset it: with the server not
            // reading, a FIN would wait behind the unsent bytes for the window to open.
            while !s.load(Ordering::Relaxed) && start.elapsed() < DEADLINE * 2 {
                thread::sleep(Duration::from_millis(2));
            }
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            drop(tcp);
            sent
        });
        Sender {
            done,
            sent: sent_so_far,
            go,
            stop,
            thread,
        }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// One echo round trip on `tcp`.
fn echo(tcp: &mut TcpStream, payload: &[u8]) {
    let mut wire = (payload.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(payload);
    tcp.write_all(&wire).unwrap();
    let mut back = vec![0; wire.len()];
    tcp.read_exact(&mut back)
        .expect("a well-behaved connection is served");
    assert_eq!(back, wire);
}

/// Past the ceiling the connections holding partial frames are not read, so their peers
/// stall; a well-behaved connection is still served; once one holder leaves and the total
/// falls under 7/8 of the ceiling, the other is read again and its frame completes.
#[test]
fn max_buffered_pauses_the_holders_and_resumes_them() {
    let handler = Holder::new(16 * KIB, true);
    let server = common::TestServer::start(ceiling(MIB), handler.clone());
    let mut good = TcpStream::connect(server.addr).unwrap();
    good.set_read_timeout(Some(DEADLINE)).unwrap();
    echo(&mut good, b"before");

    // Two peers each send the first 400 KiB of a 700 KiB frame: together under the 1 MiB
    // ceiling. Then the rest: together past it, each alone under it.
    const FRAME: usize = 700 * KIB;
    const HEAD: usize = 400 * KIB;
    let a = Sender::start(server.addr, FRAME, HEAD, true);
    let b = Sender::start(server.addr, FRAME, HEAD, true);
    wait_until("both heads to be sent", || {
        a.sent.load(Ordering::Acquire) == 4 + HEAD && b.sent.load(Ordering::Acquire) == 4 + HEAD
    });
    a.go.store(true, Ordering::Relaxed);
    b.go.store(true, Ordering::Relaxed);
    // Not a synchronisation: time must pass to show the peers stay stalled. Without the
    // ceiling both frames arrive in milliseconds.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        assert!(
            !(a.done.load(Ordering::Acquire) && b.done.load(Ordering::Acquire)),
            "two 700 KiB frames were read in full past a 1 MiB max_buffered"
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert!(handler.large.lock().is_empty());
    for i in 0..20 {
        echo(&mut good, format!("while paused {i}").as_bytes());
    }
    assert_eq!(
        handler.removals("max_buffered"),
        0,
        "under 1.5 x: nobody closed"
    );

    // Both are paused (or one finished just before the total passed the ceiling): the other
    // one leaving (a reset: the server sees it even while not reading) frees its memory, and
    // the paused one is read again.
    let (leaver, stayer) = if a.done.load(Ordering::Acquire) {
        (a, b)
    } else {
        (b, a)
    };
    let stayer_done = stayer.done.clone();
    leaver.finish();
    wait_until("the paused peer to be read again", || {
        stayer_done.load(Ordering::Acquire)
    });
    wait_until("its frame to complete", || {
        handler.large.lock().iter().any(|&(_, len)| len == FRAME)
    });
    echo(&mut good, b"after");
    stayer.finish();
    drop(good);
    server.stop().unwrap();
}

/// Far past the ceiling (1.5 x), the biggest holders are closed with `MaxBuffered`, and the
/// others keep being served.
#[test]
fn max_buffered_closes_the_biggest_holders_past_the_hard_limit() {
    // The default read budget (256 KiB): each holder may read that much past the ceiling
    // before it is paused, so eight of them go well past 1.5 x.
    let handler = Holder::new(256 * KIB, false);
    let server = common::TestServer::start(ceiling(MIB), handler.clone());
    let mut good = TcpStream::connect(server.addr).unwrap();
    good.set_read_timeout(Some(DEADLINE)).unwrap();
    echo(&mut good, b"before");
    let senders: Vec<Sender> = (0..8)
        .map(|_| Sender::start(server.addr, 8 * MIB, 8 * MIB, false))
        .collect();
    wait_until("holders to be closed past the hard limit", || {
        handler.removals("max_buffered") > 0
    });
    for i in 0..20 {
        echo(&mut good, format!("during {i}").as_bytes());
    }
    for s in senders {
        s.finish();
    }
    assert!(handler.large.lock().is_empty(), "no 8 MiB frame completed");
    echo(&mut good, b"after");
    drop(good);
    let summary = server.stop().unwrap();
    assert_eq!(summary.accepted, 9, "{summary:?}");
}
