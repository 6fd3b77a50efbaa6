//! [`Frames`]: the reusable batch a [`Stream`](crate::Stream) fills with decoded frames.

use std::fmt;

/// A batch of complete frames, filled by [`Stream::recv`](crate::Stream::recv).
///
/// All payloads live back to back in one buffer, so a batch of many small frames costs no
/// allocation per frame, and the buffers are reused from one `recv` to the next: each worker thread
/// owns one `Frames` and clears it before every call.
///
/// ```
/// use hydrogen::Frames;
///
/// let mut frames = Frames::new();
/// frames.push(b"hello");
/// frames.push(b"");
/// assert_eq!(frames.len(), 2);
/// assert_eq!(frames.iter().collect::<Vec<_>>(), [&b"hello"[..], &b""[..]]);
/// ```
#[derive(Default, Clone)]
pub struct Frames {
    /// Every payload, back to back (or, after [`adopt`](Frames::adopt), one read buffer that
    /// still holds its frame's header).
    data: Vec<u8>,
    /// `spans[i]` is where frame `i` lies in `data`.
    spans: Vec<(usize, usize)>,
}

impl Frames {
    /// Creates an empty batch. It allocates nothing until the first push.
    pub fn new() -> Frames {
        Frames::default()
    }

    /// Appends one frame's payload (copied).
    #[inline]
    pub fn push(&mut self, payload: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(payload);
        self.spans.push((start, self.data.len()));
    }

    /// Takes a whole read buffer holding one frame at `payload`, without copying it when the
    /// batch is empty (a large frame then costs no copy here). Otherwise the payload is copied
    /// as by [`push`](Frames::push).
    pub(crate) fn adopt(&mut self, buffer: Vec<u8>, payload: std::ops::Range<usize>) {
        if self.spans.is_empty() {
            self.data = buffer;
            self.spans.push((payload.start, payload.end));
        } else {
            self.push(&buffer[payload]);
        }
    }

    /// The number of frames in the batch.
    #[inline]
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the batch holds no frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The total payload bytes in the batch.
    #[inline]
    pub fn bytes(&self) -> usize {
        self.spans.iter().map(|(start, end)| end - start).sum()
    }

    /// The payload of frame `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let &(start, end) = self.spans.get(index)?;
        Some(&self.data[start..end])
    }

    /// The payloads, in the order they were pushed.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            frames: self,
            next: 0,
        }
    }

    /// Removes every frame, keeping the memory for the next batch.
    pub fn clear(&mut self) {
        self.data.clear();
        self.spans.clear();
    }

    /// Clears the batch and gives back its memory if it grew past `limit` bytes, so one burst of
    /// large frames does not pin that much memory on a worker for good.
    pub(crate) fn reset(&mut self, limit: usize) {
        self.clear();
        if self.data.capacity() > limit {
            self.data = Vec::new();
        }
        if self.spans.capacity() * std::mem::size_of::<(usize, usize)>() > limit {
            self.spans = Vec::new();
        }
    }
}

impl fmt::Debug for Frames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frames")
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl<'a> IntoIterator for &'a Frames {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over the payloads of a [`Frames`] batch.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    frames: &'a Frames,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let &(start, end) = self.frames.spans.get(self.next)?;
        self.next += 1;
        Some(&self.frames.data[start..end])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.frames.spans.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_get_iter_agree() {
        let mut frames = Frames::new();
        assert!(frames.is_empty());
        for payload in [&b"a"[..], b"", b"bcd"] {
            frames.push(payload);
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames.bytes(), 4);
        assert_eq!(frames.get(0), Some(&b"a"[..]));
        assert_eq!(frames.get(1), Some(&b""[..]));
        assert_eq!(frames.get(2), Some(&b"bcd"[..]));
        assert_eq!(frames.get(3), None);
        let all: Vec<&[u8]> = frames.iter().collect();
        assert_eq!(all, [&b"a"[..], b"", b"bcd"]);
        assert_eq!(frames.iter().len(), 3);
    }

    #[test]
    fn adopt_takes_the_buffer_when_empty_and_copies_otherwise() {
        let mut frames = Frames::new();
        let buffer = vec![0, 0, 0, 3, b'a', b'b', b'c'];
        let pointer = buffer.as_ptr();
        frames.adopt(buffer, 4..7);
        assert_eq!(frames.get(0), Some(&b"abc"[..]));
        assert_eq!(frames.data.as_ptr(), pointer, "no copy");
        assert_eq!(frames.bytes(), 3);
        frames.adopt(vec![9, b'x'], 1..2);
        assert_eq!(frames.iter().collect::<Vec<_>>(), [&b"abc"[..], &b"x"[..]]);
        frames.clear();
        assert!(frames.is_empty());
    }

    #[test]
    fn reset_keeps_small_and_frees_large_buffers() {
        let mut frames = Frames::new();
        frames.push(&[7u8; 100]);
        frames.reset(1024);
        assert!(frames.is_empty());
        assert!(frames.data.capacity() >= 100);
        frames.push(&vec![7u8; 4096]);
        frames.reset(1024);
        assert_eq!(frames.data.capacity(), 0);
    }
}
