//! The unbuffered session: a `rustls::server::UnbufferedServerConnection` between the socket
//! and hydrogen's frame decoder and write queue, with hydrogen owning every buffer. What
//! [`TlsTransport`](super::TlsTransport) gives each connection.
//!
//! rustls's buffered `ServerConnection` keeps a 4 KiB incoming-record buffer (and its plaintext
//! and output queues) for the connection's whole life, about 4.2 KB of the 6.5 KB an idle
//! session holds; here an idle connection holds no buffer at all:
//!
//! - Reads go into a per-thread buffer (64 KiB of room, shared by every connection the thread
//!   serves); rustls decrypts the records there and their plaintext goes at once into the
//!   frame decoder. Reads go on until `WouldBlock`, the end of the stream, the read budget, or
//!   a short read (which took all the socket had: more data raises a new edge), as
//!   [`Framed`](crate::Framed)'s do; after a hang-up the runtime reads on past short reads.
//!   Only bytes rustls has not discarded (an incomplete record, or the records of a handshake
//!   message it is still joining) are copied out and kept, exactly, until the rest arrives.
//! - Writes encrypt the queue's bytes (at most [`TLS_BUFFER_LIMIT`] of plaintext at a time)
//!   straight into a per-thread buffer, after whatever rustls has of its own (handshake
//!   messages, alerts, a key update's answer), and write the records with one `write`; only
//!   what the socket does not take is copied out and kept, in order.
//! - rustls's own output, produced while reading, is encoded into the kept output at once, so
//!   [`pending_output`](Stream::pending_output) counts it and the server writes it without a
//!   frame being sent. rustls queues its answer to a peer's `KeyUpdate` until it next encrypts
//!   application data, and only then hands it over (behind the data it encrypted, under the old
//!   key: in the wrong order); an encryption into an empty buffer, which rustls refuses for
//!   the size after handing the answer over, moves it out first, after every read and before
//!   every write.
//! - The unbuffered session does not say which server name (SNI) the client asked for, so it is
//!   read from the ClientHello (see `sni.rs`).
//!
//! Early (0-RTT) data, if a configuration of your own enables it, is discarded: hydrogen
//! delivers frames only once the handshake is done.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::thread::LocalKey;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};

use super::sni::{self, Hello};
use super::stream::{TLS_BUFFER_LIMIT, TlsSocket, end_of_stream, session_info};
use crate::codec::{Codec, Deframer, WriteQueue};
use crate::{Frames, RecvStatus, SharedFrame, Stream, TlsInfo};

/// Room a read gets in the per-thread read buffer, behind the bytes kept from earlier reads.
const READ_ROOM: usize = 64 * 1024;

/// Room below which the read buffer grows (by [`READ_ROOM`]) before the next read.
const READ_ROOM_MIN: usize = 4 * 1024;

/// A per-thread buffer grown past this (by a large handshake message, say) is not kept.
const SCRATCH_KEEP: usize = 256 * 1024;

/// Bytes a record adds to its plaintext, at most, with the usual cipher suites (header 5,
/// TLS 1.2's explicit nonce 8, tag 16, TLS 1.3's content type 1): the first guess of the room
/// a batch needs. rustls says if it needs more.
const RECORD_OVERHEAD: usize = 40;

/// The plaintext of one record, at most (rustls's default fragment size).
const MAX_FRAGMENT: usize = 16 * 1024;

/// How many of rustls's own records (handshake messages, alerts) are encoded in one go, at
/// most: more than any flight has, and a bound on the loop.
const MAX_OWN_RECORDS: usize = 64;

/// The ClientHello is looked for in at most this many bytes from the connection's start.
const MAX_HELLO_BYTES: usize = 80 * 1024;

thread_local! {
    /// The buffer reads go into, taken out while in use (a nested use allocates its own).
    static READ_SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The buffer writes are encrypted into, likewise.
    static WRITE_SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

fn take_scratch(key: &'static LocalKey<Cell<Vec<u8>>>) -> Vec<u8> {
    key.try_with(Cell::take).unwrap_or_default()
}

fn put_scratch(key: &'static LocalKey<Cell<Vec<u8>>>, buf: Vec<u8>) {
    if buf.capacity() <= SCRATCH_KEEP {
        // Fails only while the thread is exiting; the buffer is then simply dropped.
        let _ = key.try_with(|cell| cell.set(buf));
    }
}

pub(super) struct Unbuffered<C, S> {
    socket: S,
    tls: UnbufferedServerConnection,
    /// Received bytes rustls has not discarded yet, exactly (no spare room); no allocation
    /// when there are none, as on an idle connection.
    incoming: Vec<u8>,
    /// Encrypted records the socket has not taken yet: `outgoing[sent..]`; no allocation when
    /// empty.
    outgoing: Vec<u8>,
    sent: usize,
    /// The plaintext's read side, and the codec.
    input: Deframer<C>,
    /// Encoded frames not yet encrypted.
    output: WriteQueue,
    /// The connection's first bytes, kept only while the ClientHello is incomplete.
    hello: Vec<u8>,
    /// The server name the ClientHello asked for.
    server_name: Option<Box<str>>,
    pub(super) read_budget: usize,
    /// The server name is still to be read from the ClientHello.
    hello_pending: bool,
    /// rustls failed (a protocol error, its alert queued or sent) or the framing did: nothing
    /// more is read.
    failed: bool,
    /// The peer's `close_notify` arrived (or the TCP stream ended): nothing more is read.
    read_done: bool,
    /// rustls processed the peer's `close_notify`.
    peer_closed: bool,
}

impl<C: Codec, S: TlsSocket> Unbuffered<C, S> {
    pub(super) fn new(
        session: UnbufferedServerConnection,
        socket: S,
        codec: C,
        read_budget: usize,
    ) -> Unbuffered<C, S> {
        Unbuffered {
            socket,
            tls: session,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            input: Deframer::new(codec),
            output: WriteQueue::new(),
            hello: Vec::new(),
            server_name: None,
            read_budget,
            hello_pending: true,
            failed: false,
            read_done: false,
            peer_closed: false,
        }
    }

    /// The handshake is over: application data goes both ways.
    fn established(&self) -> bool {
        !self.tls.is_handshaking()
    }

    pub(super) fn session(&self) -> &UnbufferedServerConnection {
        &self.tls
    }

    pub(super) fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    pub(super) fn codec(&self) -> &C {
        self.input.codec()
    }

    pub(super) fn get_ref(&self) -> &S {
        &self.socket
    }

    /// Reads until the socket is drained, the stream ends, or the budget is spent, with
    /// `buf[..*held]` the bytes kept from before; on return `buf[..*held]` is what rustls has
    /// not discarded.
    fn read_loop(
        &mut self,
        buf: &mut Vec<u8>,
        held: &mut usize,
        frames: &mut Frames,
    ) -> io::Result<RecvStatus> {
        let mut read = 0;
        loop {
            if buf.len() - *held < READ_ROOM_MIN {
                buf.resize(*held + READ_ROOM, 0);
            }
            let room = buf.len() - *held;
            let got = match self.socket.read(&mut buf[*held..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(RecvStatus::Drained),
                Err(e) => return Err(e),
            };
            if got == 0 {
                // The TCP stream's end: everything before it is processed already.
                self.read_done = true;
                return self.end();
            }
            if self.hello_pending {
                self.read_hello(&buf[*held..*held + got]);
            }
            *held += got;
            self.process(buf, held, frames)?;
            if self.peer_closed {
                // `close_notify`, after which rustls reads no more.
                self.read_done = true;
                return self.end();
            }
            read += got;
            if read >= self.read_budget {
                return Ok(RecvStatus::MoreAvailable);
            }
            if got < room {
                // A short read took all the socket had, as in `Framed`: data arriving from now
                // on raises a new edge, so another read now would only return WouldBlock (the
                // runtime reads on after a hang-up, when no new edge comes).
                return Ok(RecvStatus::Drained);
            }
        }
    }

    /// Looks for the server name in the connection's first bytes, `new` the latest of them.
    fn read_hello(&mut self, new: &[u8]) {
        let found = if self.hello.is_empty() {
            sni::server_name(new)
        } else {
            self.hello.extend_from_slice(new);
            sni::server_name(&self.hello)
        };
        match found {
            Hello::Incomplete => {
                if self.hello.is_empty() {
                    self.hello.extend_from_slice(new);
                }
                if self.hello.len() > MAX_HELLO_BYTES {
                    self.hello_pending = false;
                    self.hello = Vec::new();
                }
            }
            Hello::Done(name) => {
                self.server_name = name;
                self.hello_pending = false;
                self.hello = Vec::new();
            }
        }
    }

    /// Lets rustls process the records in `buf[..*held]`: plaintext into the frame decoder,
    /// rustls's own output into `outgoing`. Drops what rustls discards, so `buf[..*held]` is
    /// then what it keeps. On a TLS error the alert is written at once (as far as the socket
    /// takes it) and nothing is read again.
    fn process(&mut self, buf: &mut [u8], held: &mut usize, frames: &mut Frames) -> io::Result<()> {
        let mut done = 0;
        let mut probed = false;
        let mut failure: Option<io::Error> = None;
        let mut tls_error = None;
        loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut buf[done..*held]);
            let mut extra = 0;
            let mut stop = false;
            match state {
                Err(err) => {
                    tls_error = Some(err);
                    stop = true;
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                extra += record.discard;
                                if let Err(err) = self.input.ingest(record.payload, frames) {
                                    failure = Some(err);
                                    break;
                                }
                            }
                            Err(err) => {
                                tls_error = Some(err);
                                break;
                            }
                        }
                    }
                    stop = failure.is_some() || tls_error.is_some();
                }
                Ok(ConnectionState::ReadEarlyData(mut early)) => {
                    // 0-RTT data is not taken (see the module documentation).
                    while let Some(record) = early.next_record() {
                        match record {
                            Ok(record) => extra += record.discard,
                            Err(err) => {
                                tls_error = Some(err);
                                stop = true;
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut own)) => {
                    if let Err(err) = encode(&mut own, &mut self.outgoing) {
                        failure = Some(err);
                        stop = true;
                    }
                }
                // The records are in `outgoing`, which `flush` writes, in order.
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if probed {
                        stop = true;
                    } else {
                        probed = true;
                        move_key_update_out(&mut traffic);
                    }
                }
                Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
                Ok(_) => stop = true, // BlockedHandshake (more bytes needed), Closed
            }
            done += discard + extra;
            if stop {
                break;
            }
        }
        if let Some(err) = tls_error {
            let err = self.fail(err, &mut buf[done.min(*held)..*held]);
            *held = 0;
            return Err(err);
        }
        buf.copy_within(done..*held, 0);
        *held -= done;
        if let Some(err) = failure {
            self.failed = true;
            return Err(err);
        }
        Ok(())
    }

    /// After a TLS error: encodes what rustls queued (the alert, after whatever of its own it
    /// had produced first: a ServerHello, when the failure came later in the handshake),
    /// writes what the socket takes of it at once, and reads nothing more.
    ///
    /// rustls hands out queued records before it looks at input again, one per call, and
    /// [`wants_write`](rustls::CommonState::wants_write) says whether any is left. No call is
    /// made once none is: it would deframe the bad bytes again and, after a record error,
    /// queue a second fatal alert (a debug assertion in rustls). `rest` is the input as
    /// rustls last saw it, which it requires (its handshake joiner keeps offsets into it).
    fn fail(&mut self, err: rustls::Error, rest: &mut [u8]) -> io::Error {
        self.failed = true;
        self.incoming = Vec::new();
        self.hello = Vec::new();
        for _ in 0..MAX_OWN_RECORDS {
            if !self.tls.wants_write() {
                break;
            }
            match self.tls.process_tls_records(rest).state {
                Ok(ConnectionState::EncodeTlsData(mut own)) => {
                    if encode(&mut own, &mut self.outgoing).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => break,
            }
        }
        let _ = self.write_out();
        io::Error::new(io::ErrorKind::InvalidData, format!("TLS error: {err}"))
    }

    /// Writes `outgoing` until none is left (`Ok(true)`) or the socket is full (`Ok(false)`).
    fn write_out(&mut self) -> io::Result<bool> {
        let written = write_some(&mut self.socket, &self.outgoing[self.sent..]);
        match written {
            Ok(n) => self.sent += n,
            Err(err) => {
                self.outgoing = Vec::new();
                self.sent = 0;
                return Err(err);
            }
        }
        if self.sent == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.sent = 0;
            Ok(true)
        } else {
            if self.sent > self.outgoing.len() / 2 {
                self.outgoing.drain(..self.sent);
                self.outgoing.shrink_to_fit();
                self.sent = 0;
            }
            Ok(false)
        }
    }

    /// Encrypts up to [`TLS_BUFFER_LIMIT`] bytes of the queue into `out`, after any records of
    /// rustls's own. Called with `outgoing` empty, once the handshake is over.
    fn seal(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut probed = false;
        for _ in 0..MAX_OWN_RECORDS {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let mut stop = true;
            let mut result = Ok(());
            match state {
                Ok(ConnectionState::EncodeTlsData(mut own)) => {
                    result = encode(&mut own, out);
                    stop = result.is_err();
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    stop = false;
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if probed {
                        result = seal_queue(&mut self.output, &mut traffic, out);
                    } else {
                        probed = true;
                        move_key_update_out(&mut traffic);
                        stop = false;
                    }
                }
                // Not writable (closed), or records read but not processed (never: `recv`
                // processes every complete record): nothing to encrypt now.
                Ok(_) => {}
                Err(err) => {
                    result = Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS error: {err}"),
                    ));
                }
            }
            if discard > 0 {
                self.incoming.drain(..discard.min(self.incoming.len()));
            }
            result?;
            if stop {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Encodes `close_notify` behind the output kept.
    fn close_notify(&mut self) {
        for _ in 0..MAX_OWN_RECORDS {
            let state = self.tls.process_tls_records(&mut self.incoming).state;
            match state {
                Ok(ConnectionState::EncodeTlsData(mut own)) => {
                    if encode(&mut own, &mut self.outgoing).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let out = &mut self.outgoing;
                    let start = out.len();
                    out.resize(start + 64, 0);
                    let n = match traffic.queue_close_notify(&mut out[start..]) {
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => {
                            out.resize(start + required_size, 0);
                            traffic.queue_close_notify(&mut out[start..]).unwrap_or(0)
                        }
                        other => other.unwrap_or(0),
                    };
                    out.truncate(start + n);
                    return;
                }
                _ => return, // closed already, or still in the handshake
            }
        }
    }

    /// How the stream ended once reading is over (see [`end_of_stream`]).
    fn end(&self) -> io::Result<RecvStatus> {
        end_of_stream(!self.established(), self.peer_closed, &self.input)
    }
}

/// Encodes one of rustls's own records at the end of `out`.
fn encode<D>(own: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> io::Result<()> {
    let need = match own.encode(&mut []) {
        Ok(_) | Err(EncodeError::AlreadyEncoded) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
    };
    let start = out.len();
    out.resize(start + need, 0);
    match own.encode(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(err) => {
            out.truncate(start);
            Err(io::Error::other(format!(
                "TLS: cannot encode a record: {err}"
            )))
        }
    }
}

/// Makes rustls hand over its queued answer to a peer's `KeyUpdate` (if any), to be encoded
/// before any application data: an encryption into an empty buffer, which it refuses for the
/// size only after handing the answer over (see the module documentation).
fn move_key_update_out<D>(traffic: &mut WriteTraffic<'_, D>) {
    let _ = traffic.encrypt(&[0], &mut []);
}

/// Encrypts up to [`TLS_BUFFER_LIMIT`] bytes of `queue` at the end of `out`, taking them off
/// the queue.
fn seal_queue<D>(
    queue: &mut WriteQueue,
    traffic: &mut WriteTraffic<'_, D>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let mut taken = 0;
    while taken < TLS_BUFFER_LIMIT {
        let chunk = queue.chunk();
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len().min(TLS_BUFFER_LIMIT - taken);
        let plain = &chunk[..n];
        let start = out.len();
        out.resize(
            start + n + n.div_ceil(MAX_FRAGMENT).max(1) * RECORD_OVERHEAD,
            0,
        );
        let sealed = match traffic.encrypt(plain, &mut out[start..]) {
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(start + required_size, 0);
                traffic.encrypt(plain, &mut out[start..])
            }
            other => other,
        };
        match sealed {
            Ok(len) => out.truncate(start + len),
            Err(err) => {
                out.truncate(start);
                return Err(io::Error::other(format!("TLS: cannot encrypt: {err}")));
            }
        }
        queue.advance(n);
        taken += n;
    }
    Ok(())
}

/// Writes `buf` until all of it is written or the socket is full; how much was written.
fn write_some<W: Write>(socket: &mut W, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match socket.write(&buf[written..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "socket accepted no bytes",
                ));
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

impl<C: Codec, S: TlsSocket> Stream for Unbuffered<C, S> {
    fn recv(&mut self, frames: &mut Frames) -> io::Result<RecvStatus> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS session has failed",
            ));
        }
        if self.read_done {
            return self.end();
        }
        let mut buf = take_scratch(&READ_SCRATCH);
        let mut held = self.incoming.len();
        if buf.len() < held + READ_ROOM {
            buf.resize(held + READ_ROOM, 0);
        }
        buf[..held].copy_from_slice(&self.incoming);
        let result = self.read_loop(&mut buf, &mut held, frames);
        if self.failed || held == 0 {
            self.incoming = Vec::new();
        } else {
            // Exactly the bytes rustls keeps.
            self.incoming.clear();
            self.incoming.extend_from_slice(&buf[..held]);
            if self.incoming.capacity() > 2 * held {
                self.incoming.shrink_to_fit();
            }
        }
        put_scratch(&READ_SCRATCH, buf);
        result
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.output.push(self.input.codec_mut(), frame)?;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        loop {
            if !self.write_out()? {
                return Ok(());
            }
            if self.output.is_empty() || !self.established() || self.failed {
                return Ok(());
            }
            let before = self.output.pending();
            let mut out = take_scratch(&WRITE_SCRATCH);
            out.clear();
            let sealed = self.seal(&mut out);
            let written = write_some(&mut self.socket, &out);
            if let Ok(n) = written
                && n < out.len()
            {
                self.outgoing = out[n..].to_vec();
                self.sent = 0;
            }
            let full = matches!(written, Ok(n) if n < out.len());
            put_scratch(&WRITE_SCRATCH, out);
            sealed?;
            written?;
            if full || before == self.output.pending() {
                return Ok(()); // the socket is full, or nothing could be encrypted now
            }
        }
    }

    fn send_shared(&mut self, frame: &SharedFrame) -> io::Result<()> {
        let wire = frame.wire(self.input.codec_mut())?;
        if wire.len() <= crate::framed::SHARED_COPY {
            self.output.push_bytes(&wire);
        } else {
            self.output.push_shared(wire.into_owned());
        }
        Ok(())
    }

    /// The queue's bytes plus the encrypted bytes kept (rustls's own records included).
    fn pending_output(&self) -> usize {
        self.output.pending() + self.outgoing.len() - self.sent
    }

    /// The frame decoder's bytes plus the TLS bytes kept of an incomplete record.
    fn buffered_input(&self) -> usize {
        self.input.buffered_input() + self.incoming.len()
    }

    fn has_partial_frame(&self) -> bool {
        self.input.has_partial_frame()
    }

    fn is_established(&self) -> bool {
        self.established()
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        Some(session_info(
            &self.tls,
            self.server_name.as_deref().filter(|_| self.established()),
        ))
    }

    fn shutdown(&mut self) -> io::Result<()> {
        if !self.failed {
            let _ = self.flush();
            if self.established() {
                self.close_notify();
            }
        }
        let _ = self.write_out();
        self.socket.shutdown_both()
    }
}

impl<C, S: AsFd> AsFd for Unbuffered<C, S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl<C: fmt::Debug, S: fmt::Debug> fmt::Debug for Unbuffered<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .field("codec", self.input.codec())
            .field("handshaking", &self.tls.is_handshaking())
            .field("buffered_in", &self.input.partial().len())
            .field("tls_in", &self.incoming.len())
            .field("pending_out", &self.output.pending())
            .field("tls_out", &(self.outgoing.len() - self.sent))
            .field("read_budget", &self.read_budget)
            .finish()
    }
}
