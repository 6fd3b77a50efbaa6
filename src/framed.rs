//! [`Framed`]: a ready-made [`Stream`] pairing a TCP socket with a [`Codec`].

use std::fmt;
use std::io;
use std::net::Shutdown;

use crate::net::NetStream;
use std::os::fd::{AsFd, BorrowedFd};

use crate::codec::{Codec, Deframer, LengthPrefixed, SimpleFrame, WriteQueue};
use crate::{Frames, RecvStatus, Stream};

/// Broadcast frames of at most this many bytes (encoded) are copied into the write queue's
/// buffer rather than queued by reference: copying a few dozen bytes costs less than a
/// segment of its own and keeps a run of them in one contiguous write.
pub(crate) const SHARED_COPY: usize = 512;

/// A [`Stream`] over an accepted TCP connection, framed by a [`Codec`].
///
/// This is the stream to use unless you need a transport of your own: give it the accepted
/// socket and a codec, and it reads, decodes, encodes and writes as the [`Stream`] contract asks.
/// It is a [`Deframer`] and a [`WriteQueue`] over the socket; a transport of your own can be
/// built from the same two.
///
/// - Reads go into a 64 KiB buffer shared by all connections of a worker thread. Complete frames
///   are decoded straight from it; only the bytes of an incomplete frame are kept by the
///   connection, and that buffer is freed once the frame completes, so an idle connection holds
///   no read buffer.
/// - Each [`recv`](Stream::recv) reads at most a budget of bytes
///   ([`DEFAULT_READ_BUDGET`](Framed::DEFAULT_READ_BUDGET), 256 KiB, unless changed with
///   [`with_read_budget`](Framed::with_read_budget)) so one busy peer cannot hold a worker; it
///   then returns [`RecvStatus::MoreAvailable`].
/// - [`send`](Stream::send) only encodes into a write queue; [`flush`](Stream::flush) writes it.
///   Once the queue is written out its memory is released, except for a buffer of at most
///   512 bytes kept for the next small replies.
///
/// ```no_run
/// use std::net::TcpListener;
/// use hydrogen::{Framed, LengthPrefixed, LengthPrefixedStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let (tcp, _) = listener.accept()?;
/// let stream: LengthPrefixedStream =
///     Framed::new(tcp, LengthPrefixed::new(1024 * 1024)).with_read_budget(64 * 1024);
/// // ... hand `stream` to the server.
/// # let _ = stream;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Framed<C> {
    tcp: NetStream,
    /// The read side, and the codec.
    input: Deframer<C>,
    /// Encoded frames waiting to be written.
    output: WriteQueue,
    read_budget: usize,
}

/// A [`Framed`] stream speaking the [`SimpleFrame`] format.
pub type SimpleStream = Framed<SimpleFrame>;

/// A [`Framed`] stream speaking the [`LengthPrefixed`] format.
pub type LengthPrefixedStream = Framed<LengthPrefixed>;

impl<C> Framed<C> {
    /// How many bytes one [`recv`](Stream::recv) call reads at most, unless changed with
    /// [`with_read_budget`](Framed::with_read_budget): 256 KiB.
    pub const DEFAULT_READ_BUDGET: usize = 256 * 1024;
}

impl<C: Codec> Framed<C> {
    /// Wraps an accepted connection.
    ///
    /// It does not change any socket option: the server puts the socket in non-blocking mode
    /// and sets `TCP_NODELAY` ([`Config::nodelay`](crate::Config::nodelay)) before its
    /// [`Transport`](crate::Transport) makes the stream.
    pub fn new(tcp: impl Into<NetStream>, codec: C) -> Self {
        Framed {
            tcp: tcp.into(),
            input: Deframer::new(codec),
            output: WriteQueue::new(),
            read_budget: Self::DEFAULT_READ_BUDGET,
        }
    }

    /// Sets how many bytes one [`recv`](Stream::recv) call reads at most before it returns
    /// [`RecvStatus::MoreAvailable`] to let other connections have a turn. A budget of 0 is
    /// treated as 1.
    pub fn with_read_budget(mut self, bytes: usize) -> Self {
        self.read_budget = bytes.max(1);
        self
    }

    /// The underlying socket, for reading addresses or options.
    pub fn get_ref(&self) -> &NetStream {
        &self.tcp
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        self.input.codec()
    }
}

impl<C: Codec> Stream for Framed<C> {
    /// Reads until the socket reports `WouldBlock` ([`RecvStatus::Drained`]), the peer closes
    /// ([`RecvStatus::Eof`]) or the read budget is used up ([`RecvStatus::MoreAvailable`]),
    /// pushing every complete frame to `frames`.
    ///
    /// # Errors
    ///
    /// - Malformed input: the codec's [`FrameError`](crate::FrameError), as an error of kind
    ///   [`io::ErrorKind::InvalidData`]. Frames decoded before it are already in `frames`.
    /// - The peer closed in the middle of a frame: [`io::ErrorKind::UnexpectedEof`], again after
    ///   the frames before it.
    /// - Any socket error other than `WouldBlock` and `Interrupted`.
    fn recv(&mut self, frames: &mut Frames) -> io::Result<RecvStatus> {
        self.input
            .read_from(&mut &self.tcp, self.read_budget, frames)
    }

    /// Encodes `frame` onto the write queue. Nothing is written until [`flush`](Stream::flush).
    ///
    /// # Errors
    ///
    /// The codec's [`FrameError`](crate::FrameError) (for example, a payload too large for the
    /// format) as kind [`io::ErrorKind::InvalidData`]; the queue is then unchanged.
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.output.push(self.input.codec_mut(), frame)?;
        Ok(())
    }

    /// Queues the frame's shared encoding (made once for every member with the same wire
    /// format): a small frame is copied into the queue's buffer, which one write carries
    /// with its neighbours; a larger one is queued as a reference, not a copy.
    fn send_shared(&mut self, frame: &crate::SharedFrame) -> io::Result<()> {
        let wire = frame.wire(self.input.codec_mut())?;
        if wire.len() <= SHARED_COPY {
            self.output.push_bytes(&wire);
        } else {
            self.output.push_shared(wire.into_owned());
        }
        Ok(())
    }

    /// Writes the queue until it is empty or the socket reports `WouldBlock`.
    ///
    /// # Errors
    ///
    /// Any socket error other than `WouldBlock` and `Interrupted`, or
    /// [`io::ErrorKind::WriteZero`] if the socket accepts no bytes.
    fn flush(&mut self) -> io::Result<()> {
        self.output.write_to(&mut &self.tcp)
    }

    fn pending_output(&self) -> usize {
        self.output.pending()
    }

    fn has_partial_frame(&self) -> bool {
        self.input.has_partial_frame()
    }

    /// The read buffer's initialised length: the incomplete frame's bytes and the room for
    /// its next read.
    fn buffered_input(&self) -> usize {
        self.input.buffered_input()
    }

    /// Shuts the socket down in both directions. A socket that is no longer connected is not an
    /// error.
    fn shutdown(&mut self) -> io::Result<()> {
        match self.tcp.shutdown(Shutdown::Both) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }
}

impl<C> AsFd for Framed<C> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }
}

impl<C: fmt::Debug> fmt::Debug for Framed<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framed")
            .field("tcp", &self.tcp)
            .field("codec", self.input.codec())
            .field("buffered_in", &self.input.partial().len())
            .field("pending_out", &self.output.pending())
            .field("read_budget", &self.read_budget)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::thread;
    use std::time::{Duration, Instant};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A connected pair: the server end non-blocking (as the library uses it), the peer blocking.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        peer.set_nodelay(true).unwrap();
        (server, peer)
    }

    fn simple(payloads: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        for p in payloads {
            SimpleFrame.encode(p, &mut wire).unwrap();
        }
        wire
    }

    fn collect(frames: &Frames) -> Vec<Vec<u8>> {
        frames.iter().map(<[u8]>::to_vec).collect()
    }

    /// Waits until `n` bytes are readable on the (non-blocking) server socket.
    fn wait_readable(tcp: &TcpStream, n: usize) {
        let mut buf = vec![0u8; n];
        let start = Instant::now();
        loop {
            match tcp.peek(&mut buf) {
                Ok(got) if got >= n => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("peek: {e}"),
            }
            assert!(start.elapsed() < TIMEOUT, "bytes never arrived");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Calls `recv` until it returns Eof or an error, sleeping when drained.
    fn recv_to_end<C: Codec>(
        stream: &mut Framed<C>,
        frames: &mut Frames,
    ) -> io::Result<RecvStatus> {
        let start = Instant::now();
        loop {
            match stream.recv(frames)? {
                RecvStatus::Eof => return Ok(RecvStatus::Eof),
                RecvStatus::MoreAvailable => {}
                RecvStatus::Drained => thread::sleep(Duration::from_millis(1)),
            }
            assert!(start.elapsed() < TIMEOUT, "no end of stream");
        }
    }

    #[test]
    fn frames_round_trip() {
        let (server, peer) = pair();
        let mut stream = Framed::new(server, SimpleFrame);
        let mut client = Client::from_stream(peer, SimpleFrame);
        for p in [&b"one"[..], b"", b"three"] {
            client.feed(p).unwrap();
        }
        client.flush().unwrap();
        let wire_len = simple(&[b"one", b"", b"three"]).len();
        wait_readable(stream.get_ref().tcp().unwrap(), wire_len);

        let mut frames = Frames::new();
        assert_eq!(stream.recv(&mut frames).unwrap(), RecvStatus::Drained);
        assert_eq!(collect(&frames), [&b"one"[..], b"", b"three"]);
        assert_eq!(stream.input.capacity(), 0);

        // And back the other way.
        for p in collect(&frames) {
            stream.send(&p).unwrap();
        }
        assert!(stream.has_pending_output());
        stream.flush().unwrap();
        assert!(!stream.has_pending_output());
        assert_eq!(client.recv().unwrap().unwrap(), b"one");
        assert_eq!(client.recv().unwrap().unwrap(), b"");
        assert_eq!(client.recv().unwrap().unwrap(), b"three");

        // The peer closes: Eof.
        client.shutdown_write().unwrap();
        frames.clear();
        assert_eq!(
            recv_to_end(&mut stream, &mut frames).unwrap(),
            RecvStatus::Eof
        );
        assert!(frames.is_empty());
        stream.shutdown().unwrap();
        assert_eq!(client.recv().unwrap(), None);
        // Shutting down again is fine.
        stream.shutdown().unwrap();
    }

    #[test]
    fn frames_split_across_reads() {
        let (server, mut peer) = pair();
        let mut stream = Framed::new(server, SimpleFrame);
        let big = vec![0xabu8; 70_000 - 4];
        let payloads: Vec<&[u8]> = vec![b"alpha", b"", &big[..60_000], b"omega"];
        let wire = simple(&payloads);
        let mut frames = Frames::new();
        let mut sent = 0;
        // Uneven pieces, each one drained before the next is written.
        for piece in [1usize, 2, 5, 3, 700, 40_000, 19_000, 7] {
            let end = (sent + piece).min(wire.len());
            peer.write_all(&wire[sent..end]).unwrap();
            wait_readable(stream.get_ref().tcp().unwrap(), end - sent);
            assert_eq!(stream.recv(&mut frames).unwrap(), RecvStatus::Drained);
            sent = end;
        }
        peer.write_all(&wire[sent..]).unwrap();
        wait_readable(stream.get_ref().tcp().unwrap(), wire.len() - sent);
        assert_eq!(stream.recv(&mut frames).unwrap(), RecvStatus::Drained);
        assert_eq!(collect(&frames), payloads);
        assert_eq!(stream.input.capacity(), 0, "read buffer released");
    }

    /// A partial frame's buffer doubled with a zero-filling resize: a peer that sent 3 MiB of
    /// an 8 MB frame had 4 MiB committed for it. The initialised length must track what
    /// arrived.
    #[test]
    fn partial_frame_committed_twice_its_size() {
        let (server, mut peer) = pair();
        let mut stream = Framed::new(server, LengthPrefixed::new(16 << 20));
        let sent = 3 << 20;
        let writer = thread::spawn(move || {
            let mut wire = 8_000_000u32.to_be_bytes().to_vec();
            wire.resize(sent, 0x5a);
            peer.write_all(&wire).unwrap();
            peer
        });
        let mut frames = Frames::new();
        let start = Instant::now();
        while stream.input.partial().len() < sent {
            if stream.recv(&mut frames).unwrap() == RecvStatus::Drained {
                thread::sleep(Duration::from_millis(1));
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "only {} bytes arrived",
                stream.input.partial().len()
            );
        }
        let _peer = writer.join().unwrap();
        assert!(frames.is_empty());
        assert!(
            stream.input.buffered_input() <= sent + crate::codec::deframer::RBUF_STEP_MAX,
            "{} bytes initialised for {sent} received",
            stream.input.buffered_input()
        );
    }

    #[test]
    fn budget_returns_more_available() {
        let (server, mut peer) = pair();
        let mut stream = Framed::new(server, LengthPrefixed::default()).with_read_budget(1000);
        let payload = [5u8; 496];
        let mut wire = Vec::new();
        for _ in 0..10 {
            LengthPrefixed::default()
                .encode(&payload, &mut wire)
                .unwrap();
        }
        assert_eq!(wire.len(), 5000);
        peer.write_all(&wire).unwrap();
        wait_readable(stream.get_ref().tcp().unwrap(), wire.len());

        let mut frames = Frames::new();
        let mut calls = 0;
        let mut more = 0;
        loop {
            calls += 1;
            match stream.recv(&mut frames).unwrap() {
                RecvStatus::MoreAvailable => more += 1,
                RecvStatus::Drained => break,
                RecvStatus::Eof => panic!("unexpected eof"),
            }
            assert!(calls < 100);
        }
        assert_eq!(more, 5, "5000 bytes with a budget of 1000");
        assert_eq!(frames.len(), 10);
        assert!(frames.iter().all(|f| f == payload));
    }

    #[test]
    fn zero_budget_still_reads() {
        let (server, mut peer) = pair();
        let mut stream = Framed::new(server, SimpleFrame).with_read_budget(0);
        let wire = simple(&[b"ab"]);
        peer.write_all(&wire).unwrap();
        wait_readable(stream.get_ref().tcp().unwrap(), wire.len());
        let mut frames = Frames::new();
        while stream.recv(&mut frames).unwrap() == RecvStatus::MoreAvailable {}
        assert_eq!(collect(&frames), [b"ab"]);
    }

    #[test]
    fn eof_mid_frame_is_an_error_after_earlier_frames() {
        let (server, mut peer) = pair();
        let mut stream = Framed::new(server, SimpleFrame);
        let mut wire = simple(&[b"whole", b"cut short"]);
        wire.truncate(wire.len() - 3);
        peer.write_all(&wire).unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let mut frames = Frames::new();
        let err = recv_to_end(&mut stream, &mut frames).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(err.to_string(), "connection closed mid-frame");
        assert_eq!(collect(&frames), [b"whole"]);
    }

    #[test]
    fn protocol_error_keeps_good_frames() {
        let (server, mut peer) = pair();
        let mut stream = Framed::new(server, SimpleFrame);
        let mut wire = simple(&[b"good", b"also good"]);
        wire.extend_from_slice(&[0x02, 0x00, 0x01, b'x', 0x17]);
        peer.write_all(&wire).unwrap();
        let mut frames = Frames::new();
        let err = recv_to_end(&mut stream, &mut frames).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err.get_ref().unwrap().downcast_ref::<crate::FrameError>();
        assert_eq!(
            inner,
            Some(&crate::FrameError::BadStartByte { found: 0x02 })
        );
        assert_eq!(collect(&frames), [&b"good"[..], b"also good"]);
    }

    #[test]
    fn protocol_error_in_buffered_frame() {
        // The bad end byte arrives in a later read, so it is found in the connection's buffer.
        let (server, mut peer) = pair();
        let mut stream = Framed::new(server, SimpleFrame);
        let mut frames = Frames::new();
        let wire = simple(&[b"first"]);
        peer.write_all(&wire).unwrap();
        peer.write_all(&[0x01, 0x00, 0x02, b'a']).unwrap();
        wait_readable(stream.get_ref().tcp().unwrap(), wire.len() + 4);
        assert_eq!(stream.recv(&mut frames).unwrap(), RecvStatus::Drained);
        assert_eq!(stream.input.partial().len(), 4);
        peer.write_all(&[b'b', 0x00]).unwrap();
        let err = recv_to_end(&mut stream, &mut frames).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(collect(&frames), [b"first"]);
    }

    #[test]
    fn too_large_header_rejected_before_payload() {
        let (server, mut peer) = pair();
        let mut stream = Framed::new(server, LengthPrefixed::new(1024));
        peer.write_all(&[0, 0, 4, 1]).unwrap();
        let mut frames = Frames::new();
        let err = recv_to_end(&mut stream, &mut frames).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(frames.is_empty());
    }

    #[test]
    fn send_error_leaves_queue_unchanged() {
        let (server, _peer) = pair();
        let mut stream = Framed::new(server, SimpleFrame);
        stream.send(b"queued").unwrap();
        let queued = stream.output.chunk().to_vec();
        let err = stream.send(&vec![0u8; 65_536]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(stream.output.chunk(), queued);
        stream.send(&vec![0u8; 65_535]).unwrap();
        assert_eq!(stream.output.pending(), queued.len() + 65_539);
    }

    #[test]
    fn flush_with_full_socket_keeps_order() {
        const FRAME: usize = 64 * 1024 - 4;
        const COUNT: usize = 256; // 16 MiB, more than the loopback socket buffers hold
        let (server, peer) = pair();
        let mut stream = Framed::new(server, LengthPrefixed::default());
        let payload = |i: usize| -> Vec<u8> { (0..FRAME).map(|j| (i + j) as u8).collect() };
        for i in 0..COUNT {
            stream.send(&payload(i)).unwrap();
        }
        stream.flush().unwrap();
        assert!(
            stream.has_pending_output(),
            "the peer is not reading, so the socket must fill up"
        );

        let reader = thread::spawn(move || {
            let mut client = Client::from_stream(peer, LengthPrefixed::default());
            for i in 0..COUNT {
                let got = client.recv().unwrap().unwrap();
                assert!(got == payload(i), "frame {i} differs");
            }
            assert_eq!(client.recv().unwrap(), None);
        });

        let start = Instant::now();
        while stream.has_pending_output() {
            stream.flush().unwrap();
            thread::sleep(Duration::from_micros(200));
            assert!(start.elapsed() < TIMEOUT * 3, "flush never finished");
        }
        assert_eq!(stream.output.capacity(), 0, "write buffer released");
        stream.shutdown().unwrap();
        reader.join().unwrap();
    }

    #[test]
    fn small_write_buffer_is_kept() {
        let (server, _peer) = pair();
        let mut stream = Framed::new(server, SimpleFrame);
        stream.send(b"tiny").unwrap();
        stream.flush().unwrap();
        assert!(!stream.has_pending_output());
        assert!(
            stream.output.capacity() > 0 && stream.output.capacity() <= WriteQueue::DEFAULT_KEEP
        );
    }

    #[test]
    fn as_fd_and_accessors() {
        use std::os::fd::AsRawFd;
        let (server, _peer) = pair();
        let raw = server.as_raw_fd();
        let stream = Framed::new(server, LengthPrefixed::new(7));
        assert_eq!(stream.as_fd().as_raw_fd(), raw);
        assert_eq!(stream.codec().max_frame_len(), 7);
        assert_eq!(stream.get_ref().as_fd().as_raw_fd(), raw);
        assert_eq!(
            LengthPrefixedStream::DEFAULT_READ_BUDGET,
            stream.read_budget
        );
        let dbg = format!("{stream:?}");
        assert!(dbg.contains("Framed") && dbg.contains("LengthPrefixed"));
    }
}
