//! [`Deframer`]: bytes in, frames out, for any transport.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};

use super::{Codec, check_decoded};
use crate::{Frames, RecvStatus};

/// Size of the per-thread buffer [`Deframer::read_from`] reads into.
const SCRATCH_LEN: usize = 64 * 1024;

/// A read buffer holding a small leftover in a much larger allocation is shrunk once its
/// initialised length exceeds this.
pub const RBUF_SHRINK_ABOVE: usize = 64 * 1024;

/// The smallest buffer an incomplete frame gets.
pub const RBUF_MIN: usize = 4 * 1024;

/// The most initialised room a read buffer keeps ahead of the bytes it holds. The buffer grows
/// by what arrived (as much again, at least [`RBUF_MIN`], at most this), so a peer that sends
/// part of a large frame commits little more memory than it sent.
pub const RBUF_STEP_MAX: usize = 64 * 1024;

/// The length of a read buffer holding `held` bytes, with room for the next read.
pub fn rbuf_len_for(held: usize) -> usize {
    held + held.clamp(RBUF_MIN, RBUF_STEP_MAX)
}

thread_local! {
    /// The buffer `read_from` reads into, allocated once per thread. It is taken out while in
    /// use, so a nested call (from inside a codec, say) allocates its own instead of failing.
    static SCRATCH: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

fn take_scratch() -> Box<[u8]> {
    SCRATCH
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0u8; SCRATCH_LEN].into_boxed_slice())
}

fn put_scratch(buf: Box<[u8]>) {
    // Fails only while the thread is exiting; the buffer is then simply dropped.
    let _ = SCRATCH.try_with(|cell| cell.set(Some(buf)));
}

/// The read side of a framed connection, without the I/O: bytes in, complete frames out.
///
/// A `Deframer` owns a [`Codec`] and the bytes of at most one incomplete frame. It does no I/O
/// of its own, so any transport can drive it: [`Framed`](crate::Framed) over TCP, a stream of
/// your own over a Unix socket, or a TLS session that decrypts records into plaintext. There
/// are three ways in:
///
/// - [`read_from`](Deframer::read_from) reads a non-blocking [`Read`] until it reports
///   `WouldBlock`, a short read, the end of the stream, or a byte budget used up, exactly as
///   [`Stream::recv`](crate::Stream::recv) must: the usual way for a socket.
/// - [`read_buf`](Deframer::read_buf) and [`commit`](Deframer::commit), for a transport that
///   reads in its own way: the deframer says where the next read goes, the transport reads
///   into it and reports how many bytes arrived.
/// - [`ingest`](Deframer::ingest) takes bytes that came from elsewhere (decrypted, say).
///
/// All three give the same frames whatever the sizes of the reads, and keep memory low:
///
/// - With no frame started, reads go into a scratch buffer (for `read_from`, one 64 KiB buffer
///   per thread, shared by every connection that thread serves) and complete frames are
///   decoded straight from it. Only the bytes of a trailing incomplete frame are copied out and
///   kept, so an idle connection holds no read buffer.
/// - Once a frame is started, the next reads go straight into its buffer, behind its first
///   bytes. The buffer grows by what arrived (as much again, between 4 KiB and 64 KiB at a
///   time), never by the length the peer claims, and is freed as soon as the frame completes.
///   When it holds exactly one whole frame, the buffer itself is handed to [`Frames`] instead of
///   copying the payload out, if the batch is empty.
/// - A small leftover after a large frame does not pin the large allocation: it is shrunk.
///
/// Malformed input is an error of kind [`io::ErrorKind::InvalidData`] wrapping the codec's
/// [`FrameError`](super::FrameError); the frames decoded before it are already in the batch.
/// The stream cannot be resynchronised after that: close the connection.
///
/// The codec is called in a fixed pattern, which a codec that keeps state may rely on: each call
/// is given a buffer starting at a frame boundary, and after a call returned `Ok(None)` the next
/// one is given the same bytes followed by those that arrived since.
///
/// ```
/// use hydrogen::Frames;
/// use hydrogen::codec::{Codec, Deframer, SimpleFrame};
///
/// let mut wire = Vec::new();
/// SimpleFrame.encode(b"hello", &mut wire)?;
/// SimpleFrame.encode(b"world", &mut wire)?;
///
/// let mut deframer = Deframer::new(SimpleFrame);
/// let mut frames = Frames::new();
/// // The first frame and a piece of the second arrive, then the rest.
/// deframer.ingest(&wire[..12], &mut frames)?;
/// assert_eq!(frames.iter().collect::<Vec<_>>(), [b"hello"]);
/// assert!(deframer.has_partial_frame());
/// deframer.ingest(&wire[12..], &mut frames)?;
/// assert_eq!(frames.get(1), Some(&b"world"[..]));
/// assert!(!deframer.has_partial_frame());
/// assert_eq!(deframer.buffered_input(), 0);
/// // The end of the stream between frames is a clean end.
/// deframer.eof()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Deframer<C> {
    codec: C,
    /// Holds the bytes of an incomplete frame in `rbuf[..rlen]`; the rest is initialised room
    /// for the frame's next bytes. Empty (no allocation) whenever no frame is incomplete.
    rbuf: Vec<u8>,
    rlen: usize,
}

impl<C> Deframer<C> {
    /// A deframer decoding with `codec`, holding nothing.
    pub fn new(codec: C) -> Self {
        Deframer {
            codec,
            rbuf: Vec::new(),
            rlen: 0,
        }
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// The codec, mutably: to encode with it (see [`WriteQueue::push`](super::WriteQueue::push)).
    pub fn codec_mut(&mut self) -> &mut C {
        &mut self.codec
    }

    /// Whether the start of a frame is held, waiting for its rest.
    pub fn has_partial_frame(&self) -> bool {
        self.rlen > 0
    }

    /// The bytes of the incomplete frame held (empty when none is).
    pub fn partial(&self) -> &[u8] {
        &self.rbuf[..self.rlen]
    }

    /// Bytes of memory held for input: the incomplete frame's bytes and the initialised room
    /// for its next read (0 when no frame is started). This is what
    /// [`Stream::buffered_input`](crate::Stream::buffered_input) should report.
    pub fn buffered_input(&self) -> usize {
        self.rbuf.len()
    }

    /// The read buffer's allocated capacity, for tests of its memory.
    pub(crate) fn capacity(&self) -> usize {
        self.rbuf.capacity()
    }
}

impl<C: Codec> Deframer<C> {
    /// Checks the end of the stream: `Ok` between frames, an error of kind
    /// [`io::ErrorKind::UnexpectedEof`] ("connection closed mid-frame") if a frame was started.
    /// It changes nothing.
    ///
    /// # Errors
    ///
    /// As above.
    pub fn eof(&self) -> io::Result<()> {
        if self.rlen > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-frame",
            ));
        }
        Ok(())
    }

    /// Reads `reader` until it reports `WouldBlock` or reads fewer bytes than asked
    /// ([`RecvStatus::Drained`]), the stream ends ([`RecvStatus::Eof`]), or `budget` bytes were
    /// read ([`RecvStatus::MoreAvailable`]), pushing every complete frame to `frames`.
    ///
    /// This is [`Stream::recv`](crate::Stream::recv) for a non-blocking reader; `Interrupted`
    /// is retried. A budget of 0 is treated as 1.
    ///
    /// # Errors
    ///
    /// - Malformed input: the codec's [`FrameError`](super::FrameError), as an error of kind
    ///   [`io::ErrorKind::InvalidData`]. Frames decoded before it are already in `frames`.
    /// - The stream ended in the middle of a frame: [`io::ErrorKind::UnexpectedEof`], again
    ///   after the frames before it.
    /// - Any error of `reader` other than `WouldBlock` and `Interrupted`.
    ///
    /// ```
    /// use std::io;
    /// use hydrogen::codec::{Deframer, LengthPrefixed};
    /// use hydrogen::{Frames, RecvStatus};
    ///
    /// let wire = [0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0];
    /// let mut deframer = Deframer::new(LengthPrefixed::default());
    /// let mut frames = Frames::new();
    /// // A byte slice reads like a socket whose peer sent `wire` and closed.
    /// let status = deframer.read_from(&mut &wire[..], 1 << 20, &mut frames)?;
    /// assert_eq!(status, RecvStatus::Drained); // a short read: everything that had arrived
    /// assert_eq!(frames.iter().collect::<Vec<_>>(), [&b"hi"[..], b""]);
    /// assert_eq!(deframer.read_from(&mut &[][..], 1 << 20, &mut frames)?, RecvStatus::Eof);
    /// # Ok::<(), io::Error>(())
    /// ```
    pub fn read_from<R: Read + ?Sized>(
        &mut self,
        reader: &mut R,
        budget: usize,
        frames: &mut Frames,
    ) -> io::Result<RecvStatus> {
        let mut scratch = take_scratch();
        let result = self.read_loop(reader, &mut scratch, budget.max(1), frames);
        put_scratch(scratch);
        result
    }

    fn read_loop<R: Read + ?Sized>(
        &mut self,
        reader: &mut R,
        scratch: &mut [u8],
        budget: usize,
        frames: &mut Frames,
    ) -> io::Result<RecvStatus> {
        let mut read = 0;
        loop {
            let room = budget - read;
            if room == 0 {
                return Ok(RecvStatus::MoreAvailable);
            }
            let target = self.read_buf(scratch, room);
            let want = target.len();
            match reader.read(target) {
                Ok(0) => {
                    self.eof()?;
                    return Ok(RecvStatus::Eof);
                }
                Ok(n) => {
                    read += n;
                    self.commit(scratch, n, frames)?;
                    if n < want {
                        // A short read took all the socket had. Data arriving from now on
                        // raises a new edge, so another read now would only return WouldBlock.
                        return Ok(RecvStatus::Drained);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(RecvStatus::Drained);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Where the next read should go, at most `max` bytes long: with no frame started, the
    /// start of `scratch` (which the deframer only borrows); with one started, the room behind
    /// its bytes in the deframer's own buffer, which grows here if it is full. Read into it,
    /// then call [`commit`](Deframer::commit) with the same `scratch` and the number of bytes
    /// read.
    ///
    /// The buffer is empty only if `max` is 0 or, with no frame started, `scratch` is empty;
    /// a read into an empty buffer cannot tell the end of the stream, so do not read then.
    ///
    /// ```
    /// use std::io::Read;
    /// use hydrogen::Frames;
    /// use hydrogen::codec::{Deframer, SimpleFrame};
    ///
    /// let mut input = &[0x01, 0x00, 0x02, b'o', b'k', 0x17][..];
    /// let mut deframer = Deframer::new(SimpleFrame);
    /// let mut scratch = [0u8; 4]; // small, to show a frame spanning reads
    /// let mut frames = Frames::new();
    /// loop {
    ///     let buf = deframer.read_buf(&mut scratch, usize::MAX);
    ///     let n = input.read(buf)?;
    ///     if n == 0 {
    ///         deframer.eof()?;
    ///         break;
    ///     }
    ///     deframer.commit(&scratch, n, &mut frames)?;
    /// }
    /// assert_eq!(frames.get(0), Some(&b"ok"[..]));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read_buf<'a>(&'a mut self, scratch: &'a mut [u8], max: usize) -> &'a mut [u8] {
        if self.rlen > 0 {
            self.room(max)
        } else {
            let len = max.min(scratch.len());
            &mut scratch[..len]
        }
    }

    /// The room behind the incomplete frame's bytes, at most `max` bytes, growing the buffer
    /// first if it is full.
    fn room(&mut self, max: usize) -> &mut [u8] {
        if self.rlen == self.rbuf.len() {
            // Grow by what arrived, never by a claimed length. Only the initialised length is
            // bounded: `resize` reserves capacity geometrically, which costs address space but
            // no memory until written.
            self.rbuf.resize(rbuf_len_for(self.rlen), 0);
        }
        let end = self.rbuf.len().min(self.rlen.saturating_add(max));
        &mut self.rbuf[self.rlen..end]
    }

    /// Takes the `n` bytes just read into the buffer [`read_buf`](Deframer::read_buf) gave (so
    /// `scratch` must be the one passed to it), pushing every frame they complete to `frames`.
    /// `n` = 0 does nothing: the end of the stream is for [`eof`](Deframer::eof) to judge.
    ///
    /// # Errors
    ///
    /// Malformed input, as for [`read_from`](Deframer::read_from); the frames before it are
    /// already in `frames`.
    ///
    /// # Panics
    ///
    /// If `n` is more than the buffer `read_buf` gave could hold.
    pub fn commit(&mut self, scratch: &[u8], n: usize, frames: &mut Frames) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        if self.rlen > 0 {
            assert!(
                n <= self.rbuf.len() - self.rlen,
                "committed {n} bytes, more than the read buffer had room for"
            );
            self.rlen += n;
            self.decode_buffered(frames)
        } else {
            self.decode_fresh(&scratch[..n], frames)
        }
    }

    /// Takes `data`, bytes that arrived from elsewhere (decrypted by a TLS session, say), and
    /// pushes every frame they complete to `frames`.
    ///
    /// It gives the same frames as reading `data` with [`read_from`](Deframer::read_from), and
    /// keeps memory the same way: complete frames are decoded straight from `data`, and the
    /// bytes of a started frame are copied into its buffer as reads would fill it.
    ///
    /// # Errors
    ///
    /// Malformed input, as for [`read_from`](Deframer::read_from); the frames before it are
    /// already in `frames`, and the bytes after it are not looked at.
    pub fn ingest(&mut self, mut data: &[u8], frames: &mut Frames) -> io::Result<()> {
        while !data.is_empty() {
            if self.rlen == 0 {
                return self.decode_fresh(data, frames);
            }
            let room = self.room(data.len());
            let n = room.len();
            room.copy_from_slice(&data[..n]);
            data = &data[n..];
            self.rlen += n;
            self.decode_buffered(frames)?;
        }
        Ok(())
    }

    /// Decodes every complete frame in freshly read `data` (with no frame started), and keeps
    /// the bytes of a trailing incomplete frame.
    fn decode_fresh(&mut self, data: &[u8], frames: &mut Frames) -> io::Result<()> {
        let used = decode_all(&mut self.codec, data, frames)?;
        let tail = &data[used..];
        if !tail.is_empty() {
            self.rbuf.clear();
            self.rbuf.resize(rbuf_len_for(tail.len()), 0);
            self.rbuf[..tail.len()].copy_from_slice(tail);
            self.rlen = tail.len();
        }
        Ok(())
    }

    /// Decodes every complete frame in `rbuf[..rlen]`, keeping the bytes of a trailing
    /// incomplete frame at the front.
    fn decode_buffered(&mut self, frames: &mut Frames) -> io::Result<()> {
        let buffered = &self.rbuf[..self.rlen];
        let Some(first) = self.codec.decode(buffered)? else {
            return Ok(());
        };
        check_decoded(&first, self.rlen)?;
        // The common case for a large frame: the buffer holds exactly one, complete. Hand the
        // whole buffer over instead of copying the payload out of it.
        if first.consumed == self.rlen {
            let mut buffer = std::mem::take(&mut self.rbuf);
            buffer.truncate(self.rlen);
            self.rlen = 0;
            frames.adopt(buffer, first.payload);
            return Ok(());
        }
        frames.push(&buffered[first.payload]);
        let used =
            first.consumed + decode_all(&mut self.codec, &buffered[first.consumed..], frames)?;
        if used == self.rlen {
            self.rbuf = Vec::new();
            self.rlen = 0;
            return Ok(());
        }
        self.rbuf.copy_within(used..self.rlen, 0);
        self.rlen -= used;
        // A small leftover after a large frame should not pin the large allocation.
        if self.rbuf.len() > RBUF_SHRINK_ABOVE && self.rlen < self.rbuf.len() / 4 {
            self.rbuf.truncate(rbuf_len_for(self.rlen));
            self.rbuf.shrink_to_fit();
        }
        Ok(())
    }
}

/// Pushes every complete frame at the start of `buf` and returns how many bytes they occupy.
fn decode_all<C: Codec>(codec: &mut C, buf: &[u8], frames: &mut Frames) -> io::Result<usize> {
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let Some(decoded) = codec.decode(rest)? else {
            break;
        };
        check_decoded(&decoded, rest.len())?;
        frames.push(&rest[decoded.payload]);
        pos += decoded.consumed;
    }
    Ok(pos)
}

impl<C: fmt::Debug> fmt::Debug for Deframer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deframer")
            .field("codec", &self.codec)
            .field("partial", &self.rlen)
            .field("buffered", &self.rbuf.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Decoded, FrameError, LengthPrefixed, SimpleFrame};

    fn simple(payloads: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        for p in payloads {
            SimpleFrame.encode(p, &mut wire).unwrap();
        }
        wire
    }

    fn length(payloads: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        for p in payloads {
            LengthPrefixed::default().encode(p, &mut wire).unwrap();
        }
        wire
    }

    fn collect(frames: &Frames) -> Vec<Vec<u8>> {
        frames.iter().map(<[u8]>::to_vec).collect()
    }

    /// Feeds `wire` through `read_buf` and `commit`, each read at most `read` bytes long.
    fn commit_in_reads<C: Codec>(
        deframer: &mut Deframer<C>,
        mut wire: &[u8],
        read: usize,
        frames: &mut Frames,
    ) -> io::Result<()> {
        let mut scratch = vec![0u8; SCRATCH_LEN];
        while !wire.is_empty() {
            let buf = deframer.read_buf(&mut scratch, read);
            let n = buf.len().min(wire.len());
            buf[..n].copy_from_slice(&wire[..n]);
            wire = &wire[n..];
            deframer.commit(&scratch, n, frames)?;
        }
        Ok(())
    }

    /// A reader that hands out its bytes in reads of the sizes given (then whatever is asked),
    /// with an `Interrupted` error before each, and reports `WouldBlock` once empty.
    struct Trickle<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.data.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let size = if self.sizes.is_empty() {
                usize::MAX
            } else {
                self.sizes.remove(0)
            };
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn frames_split_across_reads() {
        let big = vec![0xabu8; 70_000 - 4];
        let payloads: Vec<&[u8]> = vec![b"alpha", b"", &big[..60_000], b"omega"];
        let wire = simple(&payloads);
        for read in [1, 2, 3, 7, 700, 4096, 40_000, usize::MAX] {
            let mut deframer = Deframer::new(SimpleFrame);
            let mut frames = Frames::new();
            commit_in_reads(&mut deframer, &wire, read, &mut frames).unwrap();
            assert_eq!(collect(&frames), payloads, "reads of {read}");
            assert!(!deframer.has_partial_frame());
            assert_eq!(deframer.capacity(), 0, "read buffer released");
            deframer.eof().unwrap();

            let mut deframer = Deframer::new(SimpleFrame);
            let mut frames = Frames::new();
            for piece in wire.chunks(read.min(wire.len())) {
                deframer.ingest(piece, &mut frames).unwrap();
            }
            assert_eq!(collect(&frames), payloads, "ingests of {read}");
            assert_eq!(deframer.capacity(), 0);
        }
    }

    #[test]
    fn every_split_of_two_reads() {
        let wire = length(&[b"one", b"", &[7u8; 300], b"four"]);
        for split in 0..=wire.len() {
            let mut deframer = Deframer::new(LengthPrefixed::default());
            let mut frames = Frames::new();
            deframer.ingest(&wire[..split], &mut frames).unwrap();
            assert_eq!(
                deframer.partial().len(),
                wire[..split].len() - frames.iter().map(|f| f.len() + 4).sum::<usize>()
            );
            deframer.ingest(&wire[split..], &mut frames).unwrap();
            assert_eq!(frames.len(), 4, "split at {split}");
            assert_eq!(frames.get(2), Some(&[7u8; 300][..]));
            assert_eq!(deframer.buffered_input(), 0);
        }
    }

    #[test]
    fn buffer_grows_by_what_arrived() {
        // The first bytes of an 8 MB frame: 4 KiB of room at first, then as much again as
        // arrived, at most 64 KiB at a time.
        let mut deframer = Deframer::new(LengthPrefixed::new(16 << 20));
        let mut frames = Frames::new();
        deframer
            .ingest(&8_000_000u32.to_be_bytes(), &mut frames)
            .unwrap();
        assert_eq!(deframer.buffered_input(), 4 + RBUF_MIN);
        let mut scratch = [0u8; 16];
        let room = deframer.read_buf(&mut scratch, usize::MAX).len();
        assert_eq!(room, RBUF_MIN, "the rest of the buffer, not the scratch");
        commit_in_reads(&mut deframer, &vec![0x5a; room], usize::MAX, &mut frames).unwrap();
        assert_eq!(deframer.partial().len(), 4 + RBUF_MIN);
        // Full: the next read grows it.
        assert_eq!(
            deframer.read_buf(&mut scratch, usize::MAX).len(),
            4 + RBUF_MIN
        );
        assert_eq!(deframer.buffered_input(), 2 * (4 + RBUF_MIN));

        // 3 MiB in, in 64 KiB reads: never more than 64 KiB initialised beyond it.
        let sent = 3 << 20;
        let held = deframer.partial().len();
        commit_in_reads(
            &mut deframer,
            &vec![0x5a; sent - held],
            64 * 1024,
            &mut frames,
        )
        .unwrap();
        assert!(frames.is_empty());
        assert_eq!(deframer.partial().len(), sent);
        assert!(
            deframer.buffered_input() <= sent + RBUF_STEP_MAX,
            "{} bytes initialised for {sent} received",
            deframer.buffered_input()
        );
    }

    #[test]
    fn started_frame_is_read_into_its_buffer_and_adopted() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let wire = length(&[&payload]);
        let mut deframer = Deframer::new(LengthPrefixed::default());
        let mut frames = Frames::new();
        deframer.ingest(&wire[..1000], &mut frames).unwrap();
        let start = deframer.partial().as_ptr();
        let mut scratch = [0u8; 64];
        let buf = deframer.read_buf(&mut scratch, usize::MAX);
        assert_eq!(
            buf.as_ptr(),
            start.wrapping_add(1000),
            "behind the frame's bytes"
        );
        // The rest arrives in reads of whatever room there is: the buffer is handed over whole.
        commit_in_reads(&mut deframer, &wire[1000..], usize::MAX, &mut frames).unwrap();
        assert_eq!(collect(&frames), std::slice::from_ref(&payload));
        assert_eq!(deframer.capacity(), 0);
        let first = frames.get(0).unwrap().as_ptr();
        assert!(
            first != payload.as_ptr() && first != wire.as_ptr(),
            "adopted, not the caller's bytes"
        );

        // With a frame already in the batch, the payload is copied instead; same frames.
        let mut frames = Frames::new();
        frames.push(b"earlier");
        let mut deframer = Deframer::new(LengthPrefixed::default());
        deframer.ingest(&wire[..1000], &mut frames).unwrap();
        commit_in_reads(&mut deframer, &wire[1000..], usize::MAX, &mut frames).unwrap();
        assert_eq!(collect(&frames), [b"earlier".to_vec(), payload]);
    }

    #[test]
    fn adopted_buffer_is_the_partial_one() {
        let wire = simple(&[b"hello"]);
        let mut deframer = Deframer::new(SimpleFrame);
        let mut frames = Frames::new();
        deframer.ingest(&wire[..4], &mut frames).unwrap();
        let start = deframer.partial().as_ptr();
        deframer.ingest(&wire[4..], &mut frames).unwrap();
        assert_eq!(frames.get(0), Some(&b"hello"[..]));
        assert_eq!(
            frames.get(0).unwrap().as_ptr(),
            start.wrapping_add(3),
            "no copy"
        );
    }

    #[test]
    fn small_leftover_after_a_large_frame_is_shrunk() {
        let big = vec![1u8; 200_000];
        let mut wire = length(&[&big, b"next"]);
        wire.truncate(wire.len() - 2); // the second frame's last 2 bytes have not arrived
        let mut deframer = Deframer::new(LengthPrefixed::default());
        let mut frames = Frames::new();
        deframer.ingest(&wire[..10], &mut frames).unwrap();
        // Everything else in one read: the buffer holds the big frame and 6 more bytes.
        commit_in_reads(&mut deframer, &wire[10..], usize::MAX, &mut frames).unwrap();
        assert_eq!(collect(&frames), [big]);
        assert_eq!(deframer.partial(), [0, 0, 0, 4, b'n', b'e']);
        assert_eq!(deframer.buffered_input(), rbuf_len_for(6));
        assert!(deframer.capacity() < RBUF_SHRINK_ABOVE);
        deframer.ingest(b"xt", &mut frames).unwrap();
        assert_eq!(frames.get(1), Some(&b"next"[..]));
        assert_eq!(deframer.capacity(), 0);
    }

    #[test]
    fn leftover_in_a_small_buffer_stays_in_place() {
        // Two frames and the start of a third complete in the buffer: the rest moves to the
        // front, and a buffer of at most 64 KiB is not shrunk.
        let wire = simple(&[b"aaaa", b"bbbb", b"cccc"]);
        let mut deframer = Deframer::new(SimpleFrame);
        let mut frames = Frames::new();
        deframer.ingest(&wire[..2], &mut frames).unwrap();
        let len = deframer.buffered_input();
        deframer.ingest(&wire[2..19], &mut frames).unwrap();
        assert_eq!(collect(&frames), [b"aaaa", b"bbbb"]);
        assert_eq!(deframer.partial(), &wire[16..19]);
        assert_eq!(deframer.buffered_input(), len);
    }

    #[test]
    fn protocol_error_keeps_good_frames() {
        let mut wire = simple(&[b"good", b"also good"]);
        wire.extend_from_slice(&[0x02, 0x00, 0x01, b'x', 0x17]);
        let mut deframer = Deframer::new(SimpleFrame);
        let mut frames = Frames::new();
        let err = deframer.ingest(&wire, &mut frames).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err.get_ref().unwrap().downcast_ref::<FrameError>();
        assert_eq!(inner, Some(&FrameError::BadStartByte { found: 0x02 }));
        assert_eq!(collect(&frames), [&b"good"[..], b"also good"]);
    }

    #[test]
    fn protocol_error_in_buffered_frame() {
        // The bad end byte arrives in a later read, so it is found in the deframer's buffer.
        let mut deframer = Deframer::new(SimpleFrame);
        let mut frames = Frames::new();
        let mut wire = simple(&[b"first"]);
        wire.extend_from_slice(&[0x01, 0x00, 0x02, b'a']);
        deframer.ingest(&wire, &mut frames).unwrap();
        assert_eq!(deframer.partial().len(), 4);
        let err = deframer.ingest(&[b'b', 0x00], &mut frames).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(collect(&frames), [b"first"]);
    }

    #[test]
    fn too_large_header_rejected_before_payload() {
        let mut deframer = Deframer::new(LengthPrefixed::new(1024));
        let mut frames = Frames::new();
        let err = deframer.ingest(&[0, 0, 4, 1], &mut frames).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(frames.is_empty());
        assert_eq!(deframer.buffered_input(), 0, "nothing kept for it");
    }

    #[test]
    fn eof_mid_frame_is_an_error() {
        let mut wire = simple(&[b"whole", b"cut short"]);
        wire.truncate(wire.len() - 3);
        let mut deframer = Deframer::new(SimpleFrame);
        let mut frames = Frames::new();
        let err = deframer
            .read_from(&mut &wire[..], 1 << 20, &mut frames)
            .and_then(|_| deframer.read_from(&mut &[][..], 1 << 20, &mut frames))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(err.to_string(), "connection closed mid-frame");
        assert_eq!(collect(&frames), [b"whole"]);
        assert_eq!(deframer.eof().unwrap_err().kind(), err.kind());
    }

    #[test]
    fn read_from_reports_why_it_stopped() {
        let payload = [5u8; 496];
        let wire = length(&[&payload[..]; 10]);
        assert_eq!(wire.len(), 5000);
        let mut deframer = Deframer::new(LengthPrefixed::default());
        let mut frames = Frames::new();
        let mut reader = Trickle {
            data: &wire,
            sizes: vec![],
            interrupt: false,
        };
        let mut more = 0;
        loop {
            match deframer.read_from(&mut reader, 1000, &mut frames).unwrap() {
                RecvStatus::MoreAvailable => more += 1,
                RecvStatus::Drained => break,
                RecvStatus::Eof => panic!("unexpected eof"),
            }
        }
        assert_eq!(more, 5, "5000 bytes with a budget of 1000");
        assert_eq!(frames.len(), 10);
        assert!(frames.iter().all(|f| f == payload));

        // A short read ends the call: the socket had nothing more.
        let mut reader = Trickle {
            data: &wire,
            sizes: vec![10, 4990],
            interrupt: false,
        };
        let mut frames = Frames::new();
        let status = deframer.read_from(&mut reader, 1 << 20, &mut frames);
        assert_eq!(status.unwrap(), RecvStatus::Drained);
        assert_eq!(frames.len(), 0);
        assert_eq!(deframer.partial().len(), 10);
        let status = deframer.read_from(&mut reader, 1 << 20, &mut frames);
        assert_eq!(status.unwrap(), RecvStatus::Drained);
        assert_eq!(frames.len(), 10);
    }

    #[test]
    fn zero_budget_still_reads() {
        let wire = simple(&[b"ab"]);
        let mut deframer = Deframer::new(SimpleFrame);
        let mut frames = Frames::new();
        let mut reader = &wire[..];
        while deframer.read_from(&mut reader, 0, &mut frames).unwrap() == RecvStatus::MoreAvailable
        {
        }
        assert_eq!(collect(&frames), [b"ab"]);
    }

    #[test]
    fn other_read_errors_are_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
        let mut deframer = Deframer::new(SimpleFrame);
        let err = deframer
            .read_from(&mut Broken, 100, &mut Frames::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn commit_of_nothing_changes_nothing() {
        let mut deframer = Deframer::new(SimpleFrame);
        let mut frames = Frames::new();
        deframer.commit(&[], 0, &mut frames).unwrap();
        deframer.ingest(&[0x01, 0x00], &mut frames).unwrap();
        deframer.commit(&[], 0, &mut frames).unwrap();
        assert_eq!(deframer.partial(), [0x01, 0x00]);
        deframer.ingest(&[], &mut frames).unwrap();
        assert_eq!(deframer.partial(), [0x01, 0x00]);
        assert!(frames.is_empty());
    }

    #[test]
    #[should_panic(expected = "more than the read buffer had room for")]
    fn commit_past_the_room_panics() {
        let mut deframer = Deframer::new(SimpleFrame);
        let mut frames = Frames::new();
        deframer.ingest(&[0x01], &mut frames).unwrap();
        let room = deframer.read_buf(&mut [], usize::MAX).len();
        let _ = deframer.commit(&[], room + 1, &mut frames);
    }

    #[test]
    fn read_buf_respects_max_and_scratch() {
        let mut deframer = Deframer::new(SimpleFrame);
        let mut scratch = [0u8; 100];
        assert_eq!(deframer.read_buf(&mut scratch, 10).len(), 10);
        assert_eq!(deframer.read_buf(&mut scratch, usize::MAX).len(), 100);
        assert_eq!(deframer.read_buf(&mut scratch, 0).len(), 0);
        deframer.ingest(&[0x01], &mut Frames::new()).unwrap();
        assert_eq!(deframer.read_buf(&mut scratch, 10).len(), 10);
        assert_eq!(deframer.read_buf(&mut [], usize::MAX).len(), RBUF_MIN);
    }

    /// A codec breaking the rules of `Codec::decode` gets an error, not a panic.
    #[test]
    fn invalid_decoded_is_an_error() {
        struct Liar;
        impl Codec for Liar {
            fn encode(&mut self, _: &[u8], _: &mut Vec<u8>) -> Result<(), FrameError> {
                Ok(())
            }
            fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, FrameError> {
                Ok((buf.len() >= 2).then(|| Decoded {
                    payload: 0..1,
                    consumed: buf.len() + 1,
                }))
            }
        }
        let mut deframer = Deframer::new(Liar);
        let err = deframer.ingest(b"ab", &mut Frames::new()).unwrap_err();
        assert!(err.to_string().contains("invalid frame"), "{err}");
        let mut deframer = Deframer::new(Liar);
        deframer.ingest(b"a", &mut Frames::new()).unwrap();
        let err = deframer.ingest(b"b", &mut Frames::new()).unwrap_err();
        assert!(err.to_string().contains("invalid frame"), "{err}");
    }

    #[test]
    fn accessors_and_debug() {
        let mut deframer = Deframer::new(LengthPrefixed::new(7));
        assert_eq!(deframer.codec().max_frame_len(), 7);
        assert_eq!(deframer.codec_mut().max_frame_len(), 7);
        deframer.ingest(&[0, 0], &mut Frames::new()).unwrap();
        let dbg = format!("{deframer:?}");
        assert!(
            dbg.contains("Deframer") && dbg.contains("partial: 2"),
            "{dbg}"
        );
    }
}
