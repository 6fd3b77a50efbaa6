//! The establishment phase, without TLS: a stream with an opening header (as the PROXY
//! protocol will have) reaches the handler only once the header is read; a connection that
//! ends or stalls before then gets no callback at all.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use hydrogen::client::Client;
use hydrogen::{
    Accepted, Codec, Config, Framed, Frames, RecvStatus, SimpleFrame, Stream, Transport,
};

use common::{DEADLINE, Recorder, TestServer, assert_closed_by_server, wait_until};

const HEADER: &[u8] = b"HELLO\n";

/// SimpleFrame after a fixed header; frames in the same read as the header's end count.
struct Headed {
    inner: Framed<SimpleFrame>,
    header_seen: usize,
}

impl Stream for Headed {
    fn recv(&mut self, frames: &mut Frames) -> io::Result<RecvStatus> {
        while self.header_seen < HEADER.len() {
            let mut buf = [0u8; 64];
            let want = HEADER.len() - self.header_seen;
            match self.inner.get_ref().read(&mut buf[..want]) {
                Ok(0) => return Ok(RecvStatus::Eof),
                Ok(n) => {
                    if buf[..n] != HEADER[self.header_seen..self.header_seen + n] {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad header"));
                    }
                    self.header_seen += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(RecvStatus::Drained);
                }
                Err(e) => return Err(e),
            }
        }
        self.inner.recv(frames)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.inner.send(frame)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
    fn pending_output(&self) -> usize {
        self.inner.pending_output()
    }
    fn is_established(&self) -> bool {
        self.header_seen == HEADER.len()
    }
    fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown()
    }
}

impl AsFd for Headed {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

struct HeadedTransport;

impl Transport for HeadedTransport {
    type Stream = Headed;
    fn open(&self, conn: Accepted) -> io::Result<Headed> {
        Ok(Headed {
            inner: Framed::new(conn.into_stream(), SimpleFrame),
            header_seen: 0,
        })
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    SimpleFrame.encode(payload, &mut wire).unwrap();
    wire
}

#[test]
fn opened_only_after_the_header_and_never_for_those_that_end_or_stall_before() {
    let handler = Arc::new(Recorder::echo(SimpleFrame));
    let config = Config {
        max_threads: 2,
        handshake_timeout: Some(Duration::from_millis(300)),
        idle_timeout: None,
        frame_timeout: None,
        ..Config::default()
    };
    let server = TestServer::start_with(config, HeadedTransport, handler.clone());

    // A stalled header is closed by the handshake timeout, without a callback.
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.write_all(b"HEL").unwrap();
    assert_closed_by_server(&stalled, "a stalled header");
    assert!(
        handler.opened.lock().is_empty(),
        "opened before its header was read"
    );

    // The header in two pieces, the second with a frame behind it in the same write. The
    // connection is in the table meanwhile, but not the handler's.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(&HEADER[..3]).unwrap();
    wait_until("the connection registered", || {
        server.shutdown.connections().len() == 1
    });
    assert!(
        handler.opened.lock().is_empty(),
        "opened before its header was read"
    );
    let mut rest = HEADER[3..].to_vec();
    rest.extend(frame(b"first"));
    tcp.write_all(&rest).unwrap();
    let mut client = Client::from_stream(tcp, SimpleFrame);
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"first");
    let socket = handler.nth_opened(1);
    assert_eq!(handler.frames_of(socket.id()), [b"first".to_vec()]);
    assert!(socket.tls_info().is_none() && socket.alpn_protocol().is_none());

    // One that ends before its header: no callback either.
    let gone = TcpStream::connect(server.addr).unwrap();
    (&gone).write_all(b"HE").unwrap();
    drop(gone);
    // A bad header: closed, no callback.
    let mut bad = TcpStream::connect(server.addr).unwrap();
    bad.write_all(b"NOPE!!").unwrap();
    assert_closed_by_server(&bad, "a bad header");
    wait_until("only the established connection open", || {
        server.shutdown.connections().len() == 1
    });

    client.send(b"second").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"second");
    drop(client);
    assert_eq!(handler.removal_of(socket.id()), "peer_closed");
    let summary = server.stop().unwrap();
    assert_eq!(summary.accepted, 4);
    assert_eq!(summary.opened, 1, "{summary:?}");
    assert_eq!(handler.opened.lock().len(), 1);
    assert_eq!(
        handler.removed.lock().len(),
        1,
        "{:?}",
        handler.removed.lock()
    );
}
