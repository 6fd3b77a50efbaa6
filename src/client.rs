//! A small blocking client that speaks any [`Codec`].
//!
//! [`Client`] is meant for tests, command-line tools and simple programs that talk to a
//! `hydrogen` server one request at a time. It uses plain blocking I/O on one socket; it is not
//! built for many connections or for reading and writing at the same time from different threads.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::Frames;
use crate::codec::{Codec, Deframer, FrameError, WriteQueue};

/// How many bytes one read asks for when no frame is started.
const READ_CHUNK: usize = 16 * 1024;

/// An empty write buffer keeps its allocation only up to this capacity.
const WBUF_KEEP: usize = 64 * 1024;

/// A blocking TCP client that sends and receives frames with a [`Codec`].
///
/// Intended for tests, tools and simple clients. Reads are buffered: [`recv`](Client::recv)
/// returns frames already buffered before it reads from the socket again. Writes are buffered
/// too: [`feed`](Client::feed) queues frames, [`flush`](Client::flush) writes them, and
/// [`send`](Client::send) does both. It is a [`Deframer`] and a [`WriteQueue`] over a blocking
/// socket.
///
/// ```no_run
/// use hydrogen::client::Client;
/// use hydrogen::SimpleFrame;
///
/// let mut client = Client::connect("127.0.0.1:7000", SimpleFrame)?;
/// client.send(b"ping")?;
/// match client.recv()? {
///     Some(reply) => println!("got {} bytes", reply.len()),
///     None => println!("server closed the connection"),
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Client<C> {
    tcp: TcpStream,
    /// The TLS session over `tcp`, for a client made with `connect_tls`.
    #[cfg(feature = "tls")]
    tls: Option<Box<rustls::ClientConnection>>,
    /// The read side, and the codec.
    input: Deframer<C>,
    /// Frames decoded and not yet returned: `frames[next..]`.
    frames: Frames,
    next: usize,
    /// The error the input ended with, returned once the frames before it are.
    failed: Option<io::Error>,
    /// Encoded frames not yet written.
    output: WriteQueue,
}

impl<C: Codec> Client<C> {
    /// Connects to `addr` and sets `TCP_NODELAY`, so small frames go out at once.
    ///
    /// # Errors
    ///
    /// Any error from resolving the address, connecting, or setting the option.
    pub fn connect<A: ToSocketAddrs>(addr: A, codec: C) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        Ok(Client::from_stream(tcp, codec))
    }

    /// Connects like [`connect`](Client::connect), giving up on each address after
    /// `timeout`.
    ///
    /// A name that resolves to several addresses is tried in turn, each with the whole
    /// `timeout`; the last error is returned if none answers.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] if an address did not answer in time (and none other did),
    /// [`io::ErrorKind::InvalidInput`] for a zero timeout or a name that resolves to nothing,
    /// or any other error from resolving, connecting or setting the option.
    pub fn connect_timeout<A: ToSocketAddrs>(
        addr: A,
        codec: C,
        timeout: Duration,
    ) -> io::Result<Self> {
        let mut last = None;
        for addr in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(tcp) => {
                    tcp.set_nodelay(true)?;
                    return Ok(Client::from_stream(tcp, codec));
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
        }))
    }

    /// Wraps a connected socket as it is, without changing any option.
    ///
    /// The socket is expected to be in blocking mode; in non-blocking mode, `recv` and `flush`
    /// return `WouldBlock` errors that can simply be retried.
    pub fn from_stream(tcp: TcpStream, codec: C) -> Self {
        Client {
            tcp,
            #[cfg(feature = "tls")]
            tls: None,
            input: Deframer::new(codec),
            frames: Frames::new(),
            next: 0,
            failed: None,
            output: WriteQueue::with_keep(WBUF_KEEP),
        }
    }

    /// Encodes one frame and writes it, together with any frames queued by
    /// [`feed`](Client::feed).
    ///
    /// # Errors
    ///
    /// The codec's [`FrameError`] as kind [`io::ErrorKind::InvalidData`] (nothing is queued or
    /// written then), or any error from [`flush`](Client::flush).
    pub fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        self.feed(payload)?;
        self.flush()
    }

    /// Encodes one frame into the write buffer without writing anything, so several frames can
    /// go out in one write with [`flush`](Client::flush).
    ///
    /// # Errors
    ///
    /// The codec's [`FrameError`] as kind [`io::ErrorKind::InvalidData`]; the write buffer is
    /// then unchanged.
    pub fn feed(&mut self, payload: &[u8]) -> io::Result<()> {
        self.output.push(self.input.codec_mut(), payload)?;
        Ok(())
    }

    /// Writes every buffered byte, blocking until the socket has taken them all.
    ///
    /// # Errors
    ///
    /// Any write error other than `Interrupted` (which is retried), or
    /// [`io::ErrorKind::WriteZero`] if the socket accepts no bytes. The bytes not yet written stay
    /// buffered, so a later `flush` continues where this one stopped.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            match self.write_some() {
                Ok(0) => {
                    self.output.compact();
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ));
                }
                Ok(n) => self.output.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.output.compact();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Returns the next frame's payload, reading from the socket (and blocking) only when no
    /// complete frame is buffered.
    ///
    /// Returns `Ok(None)` when the server closed the connection cleanly, between frames.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::UnexpectedEof`] if the connection closed in the middle of a frame.
    /// - [`io::ErrorKind::InvalidData`] (wrapping a [`FrameError`]) if the bytes received are not
    ///   valid framing. The connection cannot recover from that.
    /// - `WouldBlock` or `TimedOut` when a [read timeout](Client::set_read_timeout) expires;
    ///   bytes of a partly received frame stay buffered, so `recv` can be called again.
    /// - Any other read error.
    pub fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(payload) = self.frames.get(self.next) {
                self.next += 1;
                return Ok(Some(payload.to_vec()));
            }
            if let Some(err) = &self.failed {
                return Err(same_error(err));
            }
            self.frames.clear();
            self.next = 0;
            let mut scratch = [0u8; READ_CHUNK];
            let buf = self.input.read_buf(&mut scratch, usize::MAX);
            #[cfg(feature = "tls")]
            let read = read_some(&mut self.tcp, self.tls.as_deref_mut(), buf);
            #[cfg(not(feature = "tls"))]
            let read = (&self.tcp).read(buf);
            match read {
                Ok(0) => {
                    self.input.eof()?;
                    return Ok(None);
                }
                Ok(n) => {
                    // Frames decoded before bad input are returned first, then the error.
                    if let Err(err) = self.input.commit(&scratch, n, &mut self.frames) {
                        self.failed = Some(err);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets how long [`recv`](Client::recv) waits for bytes before failing; `None` waits forever.
    ///
    /// # Errors
    ///
    /// As [`TcpStream::set_read_timeout`]; notably a zero duration is rejected.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(timeout)
    }

    /// Closes the sending side: the server sees end of stream, and replies can still be read.
    ///
    /// Bytes queued with [`feed`](Client::feed) but not flushed are not sent.
    ///
    /// # Errors
    ///
    /// As [`TcpStream::shutdown`].
    ///
    /// Over TLS, a `close_notify` is sent first: the clean end of the TLS stream.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            while tls.wants_write() {
                tls.write_tls(&mut self.tcp)?;
            }
        }
        self.tcp.shutdown(Shutdown::Write)
    }

    /// Writes some of the write buffer's first run: to the socket, or through TLS.
    fn write_some(&mut self) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            let mut stream = rustls::Stream::new(&mut **tls, &mut self.tcp);
            let n = stream.write(self.output.chunk())?;
            stream.flush()?;
            return Ok(n);
        }
        (&self.tcp).write(self.output.chunk())
    }

    /// The underlying socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }
}

#[cfg(feature = "tls")]
impl<C: Codec> Client<C> {
    /// Connects to `addr` over TLS (with `TCP_NODELAY`), verifying the server's certificate
    /// for `server_name` against `roots` (see [`tls::roots_from_pem_file`](crate::tls::roots_from_pem_file)
    /// for a self-signed certificate), and completes the handshake.
    ///
    /// ```no_run
    /// use hydrogen::client::Client;
    /// use hydrogen::SimpleFrame;
    ///
    /// let roots = hydrogen::tls::roots_from_pem_file("cert.pem")?;
    /// let mut client = Client::connect_tls("127.0.0.1:4433", SimpleFrame, "localhost", roots)?;
    /// client.send(b"ping")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect`](Client::connect); an invalid `server_name` is
    /// [`io::ErrorKind::InvalidInput`]; a failed handshake (the certificate not trusted, not
    /// for `server_name`, a protocol error) is [`io::ErrorKind::InvalidData`].
    pub fn connect_tls<A: ToSocketAddrs>(
        addr: A,
        codec: C,
        server_name: &str,
        roots: rustls::RootCertStore,
    ) -> io::Result<Self> {
        Client::connect_tls_with(addr, codec, server_name, crate::tls::client_config(roots))
    }

    /// Like [`connect_tls`](Client::connect_tls), with a rustls client configuration of your
    /// own (ALPN, client certificates, other roots).
    ///
    /// # Errors
    ///
    /// As [`connect_tls`](Client::connect_tls).
    pub fn connect_tls_with<A: ToSocketAddrs>(
        addr: A,
        codec: C,
        server_name: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> io::Result<Self> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let mut tls = rustls::ClientConnection::new(config, name)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let mut tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        // Blocking socket: complete_io is fine here (never on the server's workers).
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        let mut client = Client::from_stream(tcp, codec);
        client.tls = Some(Box::new(tls));
        Ok(client)
    }

    /// The TLS session of a client made with [`connect_tls`](Client::connect_tls): the
    /// negotiated ALPN protocol, the version, or a key update (`refresh_traffic_keys`).
    pub fn tls_session(&mut self) -> Option<&mut rustls::ClientConnection> {
        self.tls.as_deref_mut()
    }
}

/// Reads some plaintext: from the socket, or through TLS (a TCP end without `close_notify`
/// is [`io::ErrorKind::UnexpectedEof`] then).
#[cfg(feature = "tls")]
fn read_some(
    tcp: &mut TcpStream,
    tls: Option<&mut rustls::ClientConnection>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match tls {
        Some(tls) => rustls::Stream::new(tls, tcp).read(buf),
        None => tcp.read(buf),
    }
}

/// The input's error again, for each `recv` after the frames before it: a [`FrameError`] as
/// itself, any other error with its kind and message.
fn same_error(err: &io::Error) -> io::Error {
    match err.get_ref().and_then(|e| e.downcast_ref::<FrameError>()) {
        Some(frame_error) => frame_error.clone().into(),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

impl<C: fmt::Debug> fmt::Debug for Client<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let undelivered: usize = self.frames.iter().skip(self.next).map(<[u8]>::len).sum();
        f.debug_struct("Client")
            .field("tcp", &self.tcp)
            .field("codec", self.input.codec())
            .field("buffered_in", &(self.input.partial().len() + undelivered))
            .field("pending_out", &self.output.pending())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{LengthPrefixed, SimpleFrame};
    use std::net::{SocketAddr, TcpListener};
    use std::thread::{self, JoinHandle};

    /// A one-connection server that echoes bytes back as they come, until end of stream.
    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        raw_server(|mut tcp| {
            let mut buf = [0u8; 4096];
            loop {
                match tcp.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tcp.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    }

    /// A one-connection server running `serve`, then closing.
    fn raw_server<F>(serve: F) -> (SocketAddr, JoinHandle<()>)
    where
        F: FnOnce(TcpStream) + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            serve(tcp);
        });
        (addr, handle)
    }

    #[test]
    fn simple_frames_echo() {
        let (addr, server) = echo_server();
        let mut client = Client::connect(addr, SimpleFrame).unwrap();
        assert!(client.get_ref().nodelay().unwrap());
        client.send(b"hello").unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), b"hello");
        client.send(b"").unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), b"");
        let max = vec![0x17u8; 65_535];
        client.send(&max).unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), max);
        client.shutdown_write().unwrap();
        assert_eq!(client.recv().unwrap(), None);
        assert_eq!(client.recv().unwrap(), None, "stays at end of stream");
        server.join().unwrap();
    }

    #[test]
    fn fed_frames_come_back_in_order() {
        let (addr, server) = echo_server();
        let mut client = Client::connect(addr, LengthPrefixed::default()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) * 37]).collect();
        for p in &payloads {
            client.feed(p).unwrap();
        }
        client.flush().unwrap();
        assert!(client.output.is_empty());
        for p in &payloads {
            assert_eq!(&client.recv().unwrap().unwrap(), p);
        }
        client.shutdown_write().unwrap();
        assert_eq!(client.recv().unwrap(), None);
        server.join().unwrap();
    }

    #[test]
    fn large_frame_spans_many_reads() {
        let (addr, server) = echo_server();
        let mut client = Client::connect(addr, LengthPrefixed::default()).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        client.send(&big).unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), big);
        assert_eq!(client.output.capacity(), 0, "large write buffer released");
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn feed_error_leaves_buffer_unchanged() {
        let (addr, server) = echo_server();
        let mut client = Client::connect(addr, LengthPrefixed::new(4)).unwrap();
        client.feed(b"abcd").unwrap();
        let err = client.send(b"abcde").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(client.output.chunk(), [0, 0, 0, 4, b'a', b'b', b'c', b'd']);
        client.flush().unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), b"abcd");
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn eof_mid_frame() {
        let (addr, server) = raw_server(|mut tcp| {
            tcp.write_all(&[0x01, 0x00, 0x02, b'o', b'k', 0x17])
                .unwrap();
            tcp.write_all(&[0x01, 0x00, 0x05, b'h']).unwrap();
        });
        let mut client = Client::connect(addr, SimpleFrame).unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), b"ok");
        let err = client.recv().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        server.join().unwrap();
    }

    #[test]
    fn bad_framing_is_invalid_data() {
        let (addr, server) = raw_server(|mut tcp| {
            tcp.write_all(&[0x01, 0x00, 0x01, b'x', 0x17, 0x05])
                .unwrap();
        });
        let mut client = Client::connect(addr, SimpleFrame).unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), b"x");
        let err = client.recv().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("0x05"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn read_timeout_keeps_partial_frame() {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (addr, server) = raw_server(move |mut tcp| {
            tcp.write_all(&[0, 0, 0, 3, b'a']).unwrap();
            go_rx.recv().unwrap();
            tcp.write_all(b"bc").unwrap();
        });
        let mut client = Client::connect(addr, LengthPrefixed::default()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let err = client.recv().unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err:?}"
        );
        go_tx.send(()).unwrap();
        client.set_read_timeout(None).unwrap();
        assert_eq!(client.recv().unwrap().unwrap(), b"abc");
        assert_eq!(client.recv().unwrap(), None);
        server.join().unwrap();
    }

    #[test]
    fn connect_timeout_gives_up_when_the_server_does_not_answer() {
        // A loopback listener that never accepts, with a backlog of one: once its accept
        // queue is full the kernel drops further SYNs, so a connect hangs until it times out.
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(1).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut queued = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let err = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the backlog never filled"
            );
            match Client::connect_timeout(addr, SimpleFrame, Duration::from_millis(200)) {
                Ok(client) => queued.push(client),
                Err(err) => break err,
            }
            assert!(
                queued.len() < 64,
                "a backlog of one took {} connections",
                queued.len()
            );
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err:?}");
        let err = Client::connect_timeout("127.0.0.1:9", SimpleFrame, Duration::ZERO).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let (addr, server) = echo_server();
        let mut client =
            Client::connect_timeout(addr, SimpleFrame, Duration::from_secs(5)).unwrap();
        client.send(b"hi").unwrap();
        assert_eq!(client.recv().unwrap().as_deref(), Some(&b"hi"[..]));
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn debug_output() {
        let (addr, server) = echo_server();
        let client = Client::connect(addr, SimpleFrame).unwrap();
        let dbg = format!("{client:?}");
        assert!(
            dbg.contains("Client") && dbg.contains("SimpleFrame"),
            "{dbg}"
        );
        drop(client);
        server.join().unwrap();
    }
}
