//! [`WriteQueue`]: frames in, bytes out, for any transport.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

use super::{Codec, FrameError};

/// Buffers one vectored write takes at most (tokio's `Framed` and Linux's `UIO_FASTIOV` use
/// the same bound).
pub const MAX_IOVECS: usize = 64;

/// Segments queued before a [`WriteQueue`]'s own buffer, in order.
#[derive(Clone, Default)]
struct Front {
    segs: VecDeque<Segment>,
    /// `segs[0].bytes()[..pos]` is already written.
    pos: usize,
    /// Bytes of `segs` not yet written.
    bytes: usize,
    /// Bytes of shared frames in `segs` not yet written.
    shared: usize,
}

/// Segments of at most this many bytes are copied together before a write
/// ([`WriteQueue::coalesce_small`]), once at least [`COALESCE_MIN`] of them lead the queue, into
/// runs of at most [`COALESCE_MAX`] bytes.
const COALESCE_SEGMENT: usize = 512;
const COALESCE_MIN: usize = 8;
const COALESCE_MAX: usize = 64 * 1024;

/// Segments an empty queue keeps room for.
const FRONT_KEEP: usize = 32;
/// The most a freed buffer's successor reserves up front (`WriteQueue::hint`).
const HINT_MAX: usize = 16 * 1024;

/// A run of queued bytes that comes before the queue's own tail buffer.
#[derive(Clone)]
enum Segment {
    /// Bytes encoded into the queue's buffer, set aside when a shared frame came after them.
    Own(Vec<u8>),
    /// An encoded frame shared with other queues (a broadcast): a reference, not a copy.
    Shared(Bytes),
}

impl Segment {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Own(v) => v,
            Segment::Shared(b) => b,
        }
    }
}

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
    /// What is queued before `buf` once shared frames are among it: allocated on the first
    /// shared frame, so a queue that never gets one pays a pointer.
    front: Option<Box<Front>>,
    /// Encoded frames after `front`; `buf[..pos]` is already written.
    buf: Vec<u8>,
    pos: usize,
    /// An empty buffer keeps its allocation only up to this capacity.
    keep: u32,
    /// About the bytes the last batches queued, if more than `keep` (at most [`HINT_MAX`]):
    /// the first frame into the empty buffer reserves that much at once, instead of growing it
    /// again by doubling (five or six reallocs for each batch of 16 small replies).
    hint: u32,
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
            front: None,
            buf: Vec::new(),
            pos: 0,
            keep: if keep > u32::MAX as usize {
                u32::MAX
            } else {
                keep as u32
            },
            hint: 0,
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
        // Room for the payload and a header (any codec's that is short; a longer one grows
        // the buffer as usual).
        self.make_room(payload.len().saturating_add(16));
        let before = self.buf.len();
        if let Err(e) = codec.encode(payload, &mut self.buf) {
            self.buf.truncate(before);
            return Err(e);
        }
        Ok(())
    }

    /// Appends bytes already encoded (by a framing that is not a [`Codec`], say).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.make_room(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    /// Appends a frame already encoded and shared with other queues (a broadcast's, say): the
    /// queue keeps a reference to it, not a copy. Its bytes count as
    /// [`shared_pending`](WriteQueue::shared_pending) until written.
    pub fn push_shared(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        let own = if self.pos < self.buf.len() {
            // What is queued in the buffer goes first: set it aside, as it is.
            let mut own = std::mem::take(&mut self.buf);
            own.drain(..self.pos);
            self.pos = 0;
            Some(own)
        } else {
            self.release_buf();
            None
        };
        let front = self.front.get_or_insert_default();
        if let Some(own) = own {
            front.bytes += own.len();
            front.segs.push_back(Segment::Own(own));
        }
        front.bytes += frame.len();
        front.shared += frame.len();
        front.segs.push_back(Segment::Shared(frame));
    }

    /// Bytes of shared frames ([`push_shared`](WriteQueue::push_shared)) not yet written.
    pub fn shared_pending(&self) -> usize {
        self.front.as_ref().map_or(0, |f| f.shared)
    }

    /// Drops shared frames not yet started, oldest first, until at most `max` bytes of shared
    /// frames are pending or none is left to drop (one partly written stays: dropping it would
    /// cut a frame). Returns how many frames were dropped.
    pub fn drop_shared(&mut self, max: usize) -> usize {
        let Some(front) = self.front.as_mut() else {
            return 0;
        };
        let mut dropped = 0;
        let mut i = usize::from(front.pos > 0);
        while front.shared > max && i < front.segs.len() {
            if let Segment::Shared(frame) = &front.segs[i] {
                let len = frame.len();
                front.shared -= len;
                front.bytes -= len;
                front.segs.remove(i);
                dropped += 1;
            } else {
                i += 1;
            }
        }
        if front.segs.is_empty() {
            front.pos = 0;
        }
        dropped
    }

    /// The first run of bytes not yet written, in order (empty when none are). With shared
    /// frames queued, the bytes are in several runs: this is the first, and
    /// [`chunks`](WriteQueue::chunks) gives them all.
    pub fn chunk(&self) -> &[u8] {
        match self
            .front
            .as_ref()
            .and_then(|f| f.segs.front().map(|s| (s, f.pos)))
        {
            Some((first, pos)) => &first.bytes()[pos..],
            None => &self.buf[self.pos..],
        }
    }

    /// Fills `slices` with the runs of bytes not yet written, in order, as many as fit (at
    /// most [`MAX_IOVECS`] are useful to a vectored write); returns how many it filled.
    pub fn chunks<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let (segs, pos) = match self.front.as_deref() {
            Some(front) => (Some(&front.segs), front.pos),
            None => (None, 0),
        };
        let runs = segs
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, seg)| {
                if i == 0 {
                    &seg.bytes()[pos..]
                } else {
                    seg.bytes()
                }
            })
            .chain(std::iter::once(&self.buf[self.pos..]));
        for run in runs {
            if n == slices.len() {
                break;
            }
            if !run.is_empty() {
                slices[n] = IoSlice::new(run);
                n += 1;
            }
        }
        n
    }

    /// How many bytes are queued and not yet written.
    pub fn pending(&self) -> usize {
        self.front.as_ref().map_or(0, |f| f.bytes) + self.buf.len() - self.pos
    }

    /// Whether every queued byte is written.
    pub fn is_empty(&self) -> bool {
        self.pending() == 0
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
        let mut n = n;
        if let Some(front) = self.front.as_mut() {
            while n > 0 {
                let Some(first) = front.segs.front() else {
                    break;
                };
                let left = first.bytes().len() - front.pos;
                let take = n.min(left);
                n -= take;
                front.bytes -= take;
                if matches!(first, Segment::Shared(_)) {
                    front.shared -= take;
                }
                if take == left {
                    front.segs.pop_front();
                    front.pos = 0;
                } else {
                    front.pos += take;
                }
            }
        }
        self.pos += n;
        if self.is_empty() {
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
            let written = if self.front.as_ref().is_none_or(|f| f.segs.is_empty()) {
                writer.write(self.chunk())
            } else {
                // Several runs: one vectored write (`writev`) for up to `MAX_IOVECS` of them,
                // with runs of small frames copied together first so that one write carries
                // many of them (a long queue of small broadcast frames, say).
                self.coalesce_small();
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let n = self.chunks(&mut slices);
                writer.write_vectored(&slices[..n])
            };
            match written {
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

    /// Copies the small segments at the front (up to [`COALESCE_MAX`] bytes in all) into one,
    /// once there are more than a few: a write then carries many small frames without a
    /// buffer each. Shared frames copied stop counting as shared: they are being written.
    fn coalesce_small(&mut self) {
        let Some(front) = self.front.as_mut() else {
            return;
        };
        let small = front
            .segs
            .iter()
            .take_while(|seg| seg.bytes().len() <= COALESCE_SEGMENT)
            .count();
        if small < COALESCE_MIN {
            return;
        }
        let mut merged = Vec::with_capacity(COALESCE_MAX.min(front.bytes));
        while let Some(seg) = front.segs.front() {
            let run = &seg.bytes()[front.pos..];
            if seg.bytes().len() > COALESCE_SEGMENT || merged.len() + run.len() > COALESCE_MAX {
                break;
            }
            merged.extend_from_slice(run);
            if matches!(seg, Segment::Shared(_)) {
                front.shared -= run.len();
            }
            front.pos = 0;
            front.segs.pop_front();
        }
        if !merged.is_empty() {
            front.segs.push_front(Segment::Own(merged));
        }
    }

    /// Empties the written-out queue, freeing the buffer unless it is small enough to keep.
    fn release(&mut self) {
        // A member of a busy group keeps a small segment list for the next broadcasts.
        if let Some(front) = self.front.as_mut() {
            if front.segs.capacity() > FRONT_KEEP {
                self.front = None;
            } else {
                front.segs.clear();
                front.pos = 0;
            }
        }
        self.release_buf();
    }

    /// Empties the written-out buffer, freeing it unless it is small enough to keep.
    fn release_buf(&mut self) {
        self.pos = 0;
        // What the batches used lately: this one's bytes, or three quarters of the hint if
        // that is more, so batches of varying size do not each grow the buffer again, and
        // the hint fades once they get small.
        let used = self.buf.len().min(HINT_MAX) as u32;
        let hint = used.max(self.hint - self.hint / 4);
        self.hint = if hint as usize > self.keep as usize {
            hint
        } else {
            0
        };
        if self.buf.capacity() > self.keep as usize {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// Makes room for `additional` more bytes.
    ///
    /// From its second frame on, the buffer grows to the keep at once (a lone frame takes what
    /// it needs): doubling alone would pass the keep (68, 136, 272, 544 bytes), and a buffer
    /// past it is freed once written, so a few small frames per write would allocate and free
    /// it on every write, from two threads contending on the allocator's lock. An empty buffer
    /// starts at the hint when the last batches passed the keep.
    #[inline]
    fn make_room(&mut self, additional: usize) {
        let len = self.buf.len();
        let need = len.saturating_add(additional);
        if need <= self.buf.capacity() {
            return;
        }
        let keep = self.keep as usize;
        if len == 0 && (self.hint as usize) > need {
            self.buf = Vec::with_capacity(self.hint as usize);
        } else if need <= keep {
            // A lone small frame takes what it needs (most connections send one at a time);
            // a second one takes the buffer to the keep at once.
            let to = if len == 0 { need } else { keep };
            self.buf.reserve_exact(to - len);
        } else {
            self.buf.reserve(additional);
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
            .field("shared", &self.shared_pending())
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

    /// A writer that takes at most `room` bytes per call over however many buffers, and
    /// records how many calls and buffers it saw.
    struct Vectored {
        out: Vec<u8>,
        room: usize,
        calls: usize,
        most_slices: usize,
    }

    impl Write for Vectored {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            self.most_slices = self.most_slices.max(bufs.len());
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.room {
                    break;
                }
            }
            if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn shared_frames_keep_their_place_and_go_out_in_one_vectored_write() {
        let mut queue = WriteQueue::new();
        queue.push(&mut SimpleFrame, b"own1").unwrap();
        queue.push_shared(Bytes::from_static(b"[shared1]"));
        queue.push(&mut SimpleFrame, b"own2").unwrap();
        queue.push_shared(Bytes::from_static(b"[shared2]"));
        queue.push_shared(Bytes::from_static(b""));
        queue.push(&mut SimpleFrame, b"own3").unwrap();
        let mut want = Vec::new();
        for part in [&b"own1"[..], b"[shared1]", b"own2", b"[shared2]", b"own3"] {
            if part.starts_with(b"[") {
                want.extend_from_slice(part);
            } else {
                SimpleFrame.encode(part, &mut want).unwrap();
            }
        }
        assert_eq!(queue.pending(), want.len());
        assert_eq!(queue.shared_pending(), 18);
        let mut w = Vectored {
            out: Vec::new(),
            room: usize::MAX,
            calls: 0,
            most_slices: 0,
        };
        queue.write_to(&mut w).unwrap();
        assert_eq!(w.out, want);
        assert_eq!((w.calls, w.most_slices), (1, 5), "one writev of five runs");
        assert!(queue.is_empty());
        assert_eq!(queue.shared_pending(), 0);
    }

    #[test]
    fn many_small_frames_are_copied_together_into_one_run() {
        let mut queue = WriteQueue::new();
        let mut want = Vec::new();
        for i in 0..100u8 {
            let frame = Bytes::from(vec![i; 64]);
            want.extend_from_slice(&frame);
            queue.push_shared(frame);
        }
        let big = Bytes::from(vec![0xee; 4096]);
        want.extend_from_slice(&big);
        queue.push_shared(big);
        queue.push(&mut SimpleFrame, b"reply").unwrap();
        SimpleFrame.encode(b"reply", &mut want).unwrap();
        let mut w = Vectored {
            out: Vec::new(),
            room: usize::MAX,
            calls: 0,
            most_slices: 0,
        };
        queue.write_to(&mut w).unwrap();
        assert_eq!(w.out, want);
        assert_eq!(
            (w.calls, w.most_slices),
            (1, 3),
            "the hundred small frames in one run, then the big one and the reply"
        );
        assert_eq!(queue.shared_pending(), 0);
    }

    #[test]
    fn short_vectored_writes_resume_in_the_middle_of_a_run() {
        let mut want = Vec::new();
        let mut queue = WriteQueue::new();
        for i in 0..200u8 {
            if i % 3 == 0 {
                let frame = Bytes::from(vec![i; 1 + usize::from(i % 7)]);
                want.extend_from_slice(&frame);
                queue.push_shared(frame);
            } else {
                queue.push(&mut SimpleFrame, &[i; 5]).unwrap();
                SimpleFrame.encode(&[i; 5], &mut want).unwrap();
            }
        }
        let mut w = Vectored {
            out: Vec::new(),
            room: 0,
            calls: 0,
            most_slices: 0,
        };
        // Three bytes a call: every run boundary is crossed in the middle of a write.
        for room in (0..10_000).map(|i| [3, 0, 11][i % 3]) {
            w.room = room;
            queue.write_to(&mut w).unwrap();
            if queue.is_empty() {
                break;
            }
            assert_eq!(queue.pending(), want.len() - w.out.len());
        }
        assert!(queue.is_empty());
        assert_eq!(w.out, want);
        assert!(w.most_slices <= MAX_IOVECS);
    }

    #[test]
    fn dropping_shared_frames_keeps_own_frames_and_a_started_one() {
        let mut queue = WriteQueue::new();
        queue.push_shared(Bytes::from_static(b"AAAA"));
        queue.push(&mut SimpleFrame, b"reply").unwrap();
        queue.push_shared(Bytes::from_static(b"BBBB"));
        queue.push_shared(Bytes::from_static(b"CCCC"));
        queue.advance(2); // AAAA started
        assert_eq!(queue.shared_pending(), 10);
        assert_eq!(queue.drop_shared(6), 1, "BBBB goes; AAAA is started");
        assert_eq!(queue.shared_pending(), 6);
        assert_eq!(queue.drop_shared(0), 1, "CCCC goes; AAAA stays");
        let mut out = Vec::new();
        queue.write_to(&mut out).unwrap();
        let mut want = b"AA".to_vec();
        SimpleFrame.encode(b"reply", &mut want).unwrap();
        assert_eq!(out, want);
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

    /// Five 68-byte frames per write grew the buffer by doubling to 544 bytes, past the
    /// 512-byte keep, so it was freed after every write and allocated again for the next: a
    /// broadcast's members did that on every flush, from two threads, contending on the
    /// allocator's lock (11,000 futex calls a second in the 100-member fan-out room).
    #[test]
    fn a_few_small_frames_per_write_freed_and_reallocated_the_buffer() {
        let mut queue = WriteQueue::new();
        queue.push_bytes(&[3; 68]);
        assert_eq!(
            queue.capacity(),
            68,
            "a lone small frame takes what it needs"
        );
        queue.advance(68);
        let mut first = None;
        for _ in 0..10 {
            for _ in 0..5 {
                queue.push_bytes(&[3; 68]);
            }
            let at = queue.buf.as_ptr();
            assert_eq!(
                *first.get_or_insert(at),
                at,
                "the same allocation every time"
            );
            queue.advance(queue.pending());
            assert_eq!(
                queue.capacity(),
                WriteQueue::DEFAULT_KEEP,
                "kept once written"
            );
        }
    }

    #[test]
    fn a_freed_buffer_is_reserved_again_at_its_last_size_in_one_allocation() {
        let mut queue = WriteQueue::new();
        for _ in 0..16 {
            queue.push(&mut SimpleFrame, &[1; 64]).unwrap();
        }
        let grown = queue.capacity();
        assert!(grown > WriteQueue::DEFAULT_KEEP);
        queue.advance(queue.pending());
        assert_eq!(queue.capacity(), 0, "freed once written");
        // The next batch starts at the size the last one used: one allocation.
        queue.push(&mut SimpleFrame, b"a").unwrap();
        assert_eq!(queue.capacity(), 16 * 68);
        queue.advance(queue.pending());
        assert_eq!(queue.capacity(), 0, "over the keep: freed again");
        // Small batches make the hint fade by a quarter each time: 1,088, 816, 612, then
        // under the keep, forgotten.
        for batch in 0..3 {
            queue.push(&mut SimpleFrame, b"b").unwrap();
            let capacity = queue.capacity();
            queue.advance(queue.pending());
            if batch < 2 {
                assert!(
                    capacity > WriteQueue::DEFAULT_KEEP,
                    "batch {batch}: {capacity}"
                );
            } else {
                assert!(capacity <= WriteQueue::DEFAULT_KEEP, "faded: {capacity}");
            }
        }
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
        assert_eq!(
            format!("{queue:?}"),
            "WriteQueue { pending: 3, shared: 0, keep: 512 }"
        );
    }
}
