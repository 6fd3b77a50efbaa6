//! [`WriteQueue`]: frames in, bytes out, for any transport.

use std::fmt;
use std::io::{self, Write};

use super::{Codec, FrameError};

/// Encoded frames waiting to be written, without the I/O: frames in, bytes out.
///
/// [`push`](WriteQueue::push) encodes a frame at the back; [`chunk`](WriteQueue::chunk) is the
/// bytes not yet written, in order, and [`advance`](WriteQueue::advance) drops those the
/// transport managed to write. [`write_to`](WriteQueue::write_to) does both against a
/// non-blocking [`Write`], as [`Stream::flush`](crate::Stream::flush) must.
///
/// Memory stays low without copying on every write: the written prefix is dropped by
/// [`compact`](WriteQueue::compact) once it is more than half of the buffer (`write_to` does
/// that when the writer would block), and once everything is written the buffer is freed,
/// unless its allocation is small enough to keep for the next frames (512 bytes by default,
/// [`with_keep`](WriteQueue::with_keep) to change it).
///
/// ```
/// use hydrogen::codec::{SimpleFrame, WriteQueue};
///
/// let mut queue = WriteQueue::new();
/// queue.push(&mut SimpleFrame, b"hi")?;
/// queue.push(&mut SimpleFrame, b"")?;
/// assert_eq!(queue.chunk(), [0x01, 0, 2, b'h', b'i', 0x17, 0x01, 0, 0, 0x17]);
///
/// // The transport wrote 4 bytes.
/// queue.advance(4);
/// assert_eq!(queue.pending(), 6);
/// assert_eq!(queue.chunk(), [b'i', 0x17, 0x01, 0, 0, 0x17]);
///
/// // Or let the queue write itself to any `Write`.
/// let mut out = Vec::new();
/// queue.write_to(&mut out)?;
/// assert!(queue.is_empty());
/// assert_eq!(out, [b'i', 0x17, 0x01, 0, 0, 0x17]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct WriteQueue {
    /// Encoded frames; `buf[..pos]` is already written.
    buf: Vec<u8>,
    pos: usize,
    /// An empty buffer keeps its allocation only up to this capacity.
    keep: usize,
}

impl WriteQueue {
    /// How much allocation an empty queue keeps, unless changed with
    /// [`with_keep`](WriteQueue::with_keep): 512 bytes.
    pub const DEFAULT_KEEP: usize = 512;

    /// An empty queue. It allocates nothing until the first frame.
    pub const fn new() -> Self {
        WriteQueue::with_keep(Self::DEFAULT_KEEP)
    }

    /// An empty queue that, once written out, keeps an allocation of up to `keep` bytes for the
    /// next frames instead of [`DEFAULT_KEEP`](WriteQueue::DEFAULT_KEEP).
    pub const fn with_keep(keep: usize) -> Self {
        WriteQueue {
            buf: Vec::new(),
            pos: 0,
            keep,
        }
    }

    /// Encodes one frame with `codec` at the back of the queue.
    ///
    /// # Errors
    ///
    /// The codec's [`FrameError`] (for example, a payload too large for the format); the queue
    /// is then unchanged.
    pub fn push<C: Codec + ?Sized>(
        &mut self,
        codec: &mut C,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        let before = self.buf.len();
        if let Err(e) = codec.encode(payload, &mut self.buf) {
            self.buf.truncate(before);
            return Err(e);
        }
        Ok(())
    }

    /// Appends bytes already encoded (by a framing that is not a [`Codec`], say).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes not yet written, in order (empty when none are).
    pub fn chunk(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// How many bytes are queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every queued byte is written.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Marks the first `n` bytes of [`chunk`](WriteQueue::chunk) as written. Once nothing is
    /// left, the buffer is freed unless it is small enough to keep.
    ///
    /// # Panics
    ///
    /// If `n` is more than [`pending`](WriteQueue::pending).
    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.pending(),
            "advanced {n} bytes past the {} pending",
            self.pending()
        );
        self.pos += n;
        if self.pos == self.buf.len() {
            self.release();
        }
    }

    /// Drops the written prefix once it is more than half of the buffer, so a queue that is
    /// written out slowly does not grow for ever. Called by [`write_to`](WriteQueue::write_to)
    /// when the writer would block; call it likewise when a write of your own is short.
    pub fn compact(&mut self) {
        if self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Writes the queue to `writer` until it is empty or `writer` reports `WouldBlock`;
    /// `Interrupted` is retried. This is [`Stream::flush`](crate::Stream::flush) for a
    /// non-blocking writer.
    ///
    /// # Errors
    ///
    /// Any error of `writer` other than `WouldBlock` and `Interrupted`, or
    /// [`io::ErrorKind::WriteZero`] if it accepts no bytes. The bytes not written stay queued.
    pub fn write_to<W: Write + ?Sized>(&mut self, writer: &mut W) -> io::Result<()> {
        while !self.is_empty() {
            match writer.write(self.chunk()) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ));
                }
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.compact();
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.release();
        Ok(())
    }

    /// Empties the written-out buffer, freeing it unless it is small enough to keep.
    fn release(&mut self) {
        self.pos = 0;
        if self.buf.capacity() > self.keep {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// The buffer's allocated capacity, for tests of its memory.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl Default for WriteQueue {
    /// [`WriteQueue::new`].
    fn default() -> Self {
        WriteQueue::new()
    }
}

impl fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteQueue")
            .field("pending", &self.pending())
            .field("keep", &self.keep)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{LengthPrefixed, SimpleFrame};

    /// A non-blocking writer that takes at most `room` bytes, then would block.
    struct Pipe {
        out: Vec<u8>,
        room: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room).min(1000);
            self.room -= n;
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn push_error_leaves_queue_unchanged() {
        let mut queue = WriteQueue::new();
        queue.push(&mut SimpleFrame, b"queued").unwrap();
        let queued = queue.chunk().to_vec();
        let err = queue.push(&mut SimpleFrame, &[0u8; 65_536]).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 65_536,
                max: 65_535
            }
        );
        assert_eq!(queue.chunk(), queued);
        queue.push(&mut SimpleFrame, &[0u8; 65_535]).unwrap();
        assert_eq!(queue.pending(), queued.len() + 65_539);
    }

    #[test]
    fn compaction_drops_written_prefix_past_half() {
        let mut queue = WriteQueue::new();
        queue.push_bytes(&(0u8..10).collect::<Vec<_>>());
        queue.advance(5);
        queue.compact();
        assert_eq!((queue.buf.len(), queue.pos), (10, 5), "exactly half: kept");
        queue.advance(1);
        queue.compact();
        assert_eq!(queue.buf, [6, 7, 8, 9]);
        assert_eq!(queue.pos, 0);
        assert_eq!(queue.chunk(), [6, 7, 8, 9]);
        assert!(!queue.is_empty());
    }

    #[test]
    fn written_out_buffer_is_kept_only_if_small() {
        let mut queue = WriteQueue::new();
        queue.push(&mut SimpleFrame, b"tiny").unwrap();
        queue.advance(8);
        assert!(queue.is_empty());
        assert!(queue.capacity() > 0 && queue.capacity() <= WriteQueue::DEFAULT_KEEP);

        queue.push(&mut SimpleFrame, &[1; 1000]).unwrap();
        queue.advance(1003);
        assert_eq!(queue.chunk(), [0x17]);
        queue.advance(1);
        assert_eq!(queue.capacity(), 0, "over 512 bytes: freed");

        let mut queue = WriteQueue::with_keep(4096);
        queue.push(&mut SimpleFrame, &[1; 1000]).unwrap();
        queue.advance(1004);
        assert!(queue.capacity() >= 1004, "kept");
    }

    #[test]
    fn write_to_keeps_order_across_would_block() {
        let mut queue = WriteQueue::new();
        let mut codec = LengthPrefixed::default();
        let payload = |i: usize| -> Vec<u8> { (0..3000).map(|j| (i + j) as u8).collect() };
        let mut want = Vec::new();
        for i in 0..20 {
            queue.push(&mut codec, &payload(i)).unwrap();
            codec.encode(&payload(i), &mut want).unwrap();
        }
        let mut pipe = Pipe {
            out: Vec::new(),
            room: 0,
        };
        while !queue.is_empty() {
            pipe.room = 7_777;
            queue.write_to(&mut pipe).unwrap();
            assert_eq!(queue.pending(), want.len() - pipe.out.len());
            assert!(queue.pos <= queue.buf.len() / 2, "compacted at WouldBlock");
        }
        assert_eq!(pipe.out, want);
        assert_eq!(queue.capacity(), 0, "large buffer released");
        // Nothing queued: nothing written, no error.
        queue.write_to(&mut pipe).unwrap();
    }

    #[test]
    fn write_to_errors() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut queue = WriteQueue::new();
        queue.push_bytes(b"abc");
        let err = queue.write_to(&mut Full).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        assert_eq!(queue.chunk(), b"abc");
        let mut out: &mut [u8] = &mut [0u8; 2];
        // A full slice accepts no more bytes: WriteZero after the first two.
        assert_eq!(
            queue.write_to(&mut out).unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
        assert_eq!(queue.chunk(), b"c");
    }

    #[test]
    #[should_panic(expected = "past the 3 pending")]
    fn advance_past_pending_panics() {
        let mut queue = WriteQueue::default();
        queue.push_bytes(b"abc");
        queue.advance(4);
    }

    #[test]
    fn debug_output() {
        let mut queue = WriteQueue::new();
        queue.push_bytes(b"abc");
        assert_eq!(format!("{queue:?}"), "WriteQueue { pending: 3, keep: 512 }");
    }
}
