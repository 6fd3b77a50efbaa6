//! Sans-I/O framing: turning payloads into bytes on the wire and back.
//!
//! A [`Codec`] knows one wire format. It never touches a socket: [`Codec::encode`] appends bytes to
//! a buffer and [`Codec::decode`] looks at bytes someone else has read. The same codec therefore
//! serves the server side ([`Framed`](crate::Framed)), the blocking
//! [`Client`](crate::client::Client) and any transport of your own.
//!
//! Two formats are built in:
//!
//! - [`SimpleFrame`]: `0x01`, a big-endian `u16` payload length, the payload, `0x17`. Byte for byte
//!   the format of the `simple-stream` crate.
//! - [`LengthPrefixed`]: a big-endian `u32` payload length, then the payload, with a configurable
//!   upper bound on the length.
//!
//! Around a codec, two I/O-free halves of a connection do the buffering, so a transport of your
//! own (a Unix socket, TLS) need not write it again:
//!
//! - [`Deframer`]: bytes in, frames out. It keeps the bytes of an incomplete frame, reads the
//!   rest of a started frame straight into its buffer and hands a buffer holding one whole frame
//!   over without copying it.
//! - [`WriteQueue`]: frames in, bytes out, with the unwritten rest kept in order.
//!
//! [`Framed`](crate::Framed) is these two over a TCP socket, and the blocking
//! [`Client`](crate::client::Client) uses them too.

use std::error::Error;
use std::fmt;
use std::io;
use std::ops::Range;

pub(crate) mod deframer;
mod length;
mod simple;
mod write_queue;

pub use deframer::Deframer;
pub use length::LengthPrefixed;
pub use simple::SimpleFrame;
pub use write_queue::{MAX_IOVECS, WriteQueue};

/// A wire format: how one payload is written as a frame, and how a frame is recognized in a byte
/// stream.
///
/// A codec is pure: it performs no I/O, and the built-in ones keep no state between calls. It may
/// keep state if a format needs it, since every connection owns its own codec value.
///
/// # Rules for implementations
///
/// - [`encode`](Codec::encode) either appends one whole frame or, on error, appends nothing.
/// - [`decode`](Codec::decode) must not panic on any input. When it returns a frame,
///   `consumed` is at least 1 and at most `buf.len()`, and `payload` lies within
///   `0..consumed`. Callers check this and treat a violation as an error rather than trusting it.
/// - `decode` should report malformed input as soon as it can tell, rather than waiting for more
///   bytes, and must never allocate memory based on a length the peer claims.
///
/// # Example
///
/// ```
/// use hydrogen::codec::{Codec, SimpleFrame};
///
/// let mut codec = SimpleFrame;
/// let mut wire = Vec::new();
/// codec.encode(b"hi", &mut wire).unwrap();
/// assert_eq!(wire, [0x01, 0x00, 0x02, b'h', b'i', 0x17]);
///
/// let frame = codec.decode(&wire).unwrap().unwrap();
/// assert_eq!(&wire[frame.payload], b"hi");
/// assert_eq!(frame.consumed, wire.len());
///
/// // Too few bytes for a whole frame: ask for more.
/// assert_eq!(codec.decode(&wire[..4]).unwrap(), None);
/// ```
pub trait Codec: Send + 'static {
    /// Appends the wire encoding of one frame with this payload to `out`.
    ///
    /// # Errors
    ///
    /// Returns a [`FrameError`] (typically [`FrameError::TooLarge`]) if the format cannot carry
    /// this payload. `out` is then left as it was.
    fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError>;

    /// Looks for one complete frame at the start of `buf`.
    ///
    /// Returns `Ok(Some(decoded))` when `buf` starts with a complete frame, `Ok(None)` when more
    /// bytes are needed to tell.
    ///
    /// # Errors
    ///
    /// Returns a [`FrameError`] when the bytes cannot be the start of a valid frame. The stream
    /// cannot be resynchronized after that, so callers close the connection.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, FrameError>;

    /// The largest payload this codec encodes and accepts, in bytes (`usize::MAX` if the
    /// format sets no bound).
    fn max_payload(&self) -> usize {
        usize::MAX
    }

    /// A name for the wire format, if the encoding of a payload depends on nothing but the
    /// format: two codecs that give the same `Some(name)` encode every payload they both
    /// accept to the same bytes. A broadcast ([`Group`](crate::Group)) then encodes each frame
    /// once and shares the bytes among all members with that format. The default, `None`,
    /// encodes the frame anew for each member, which is always correct.
    fn encoding_key(&self) -> Option<&'static str> {
        None
    }
}

/// Where [`Codec::decode`] found a frame in the buffer it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The payload's position within the decoded buffer.
    pub payload: Range<usize>,
    /// How many bytes at the start of the buffer the whole frame (header, payload, trailer)
    /// occupies; the next frame starts there.
    pub consumed: usize,
}

/// Malformed or unrepresentable frame.
///
/// Converting it into an [`io::Error`] gives kind [`io::ErrorKind::InvalidData`], which the library
/// reports as a protocol error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The first byte of a frame is not the format's start marker.
    BadStartByte {
        /// The byte found where the start marker belongs.
        found: u8,
    },
    /// The byte after a frame's payload is not the format's end marker.
    BadEndByte {
        /// The byte found where the end marker belongs.
        found: u8,
    },
    /// A payload is longer than the format or its configuration allows: either one being
    /// encoded, or one announced by a received frame header.
    TooLarge {
        /// The payload length, in bytes.
        len: u64,
        /// The largest payload allowed, in bytes.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadStartByte { found } => {
                write!(f, "invalid frame start byte 0x{found:02x}")
            }
            FrameError::BadEndByte { found } => write!(f, "invalid frame end byte 0x{found:02x}"),
            FrameError::TooLarge { len, max } => write!(
                f,
                "frame payload of {len} bytes exceeds the limit of {max} bytes"
            ),
        }
    }
}

impl Error for FrameError {}

impl From<FrameError> for io::Error {
    /// Wraps the frame error in an [`io::Error`] of kind [`io::ErrorKind::InvalidData`].
    fn from(err: FrameError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// Checks a codec's answer against the rules of [`Codec::decode`] for a buffer of `len` bytes,
/// so a buggy codec yields an error instead of a panic or an endless loop.
pub(crate) fn check_decoded(decoded: &Decoded, len: usize) -> io::Result<()> {
    let Decoded { payload, consumed } = decoded;
    if *consumed == 0 || *consumed > len || payload.start > payload.end || payload.end > *consumed {
        return Err(io::Error::other(format!(
            "codec returned an invalid frame (payload {payload:?}, consumed {consumed}) \
             for a buffer of {len} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes every frame in `chunks`, fed one chunk at a time the way a reader would: bytes of
    /// an incomplete frame are kept and the next chunk is appended to them.
    pub(crate) fn decode_chunks<C: Codec>(
        codec: &mut C,
        chunks: &[&[u8]],
    ) -> Result<(Vec<Vec<u8>>, usize), FrameError> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            while let Some(d) = codec.decode(&buf[pos..])? {
                check_decoded(&d, buf.len() - pos).unwrap();
                out.push(buf[pos..][d.payload].to_vec());
                pos += d.consumed;
            }
            buf.drain(..pos);
        }
        Ok((out, buf.len()))
    }

    /// Encodes `payloads` back to back, then checks that splitting the stream at every byte
    /// offset decodes to the same payloads with nothing left over.
    pub(crate) fn check_every_split<C: Codec>(codec: &mut C, payloads: &[&[u8]]) {
        let mut wire = Vec::new();
        for p in payloads {
            codec.encode(p, &mut wire).unwrap();
        }
        for split in 0..=wire.len() {
            let (a, b) = wire.split_at(split);
            let (got, left) = decode_chunks(codec, &[a, b]).unwrap();
            assert_eq!(got, payloads, "split at {split}");
            assert_eq!(left, 0, "split at {split}");
        }
        // Also one byte at a time.
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let (got, left) = decode_chunks(codec, &bytes).unwrap();
        assert_eq!(got, payloads);
        assert_eq!(left, 0);
    }

    /// Feeds pseudo-random bytes (and every prefix of them) to the decoder: it must not panic
    /// and must only return frames that obey the rules.
    pub(crate) fn check_no_panic<C: Codec>(codec: &mut C, seed_bytes: &[u8]) {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Often start with a plausible header so decoding gets past the first byte.
            if round % 2 == 0 && !buf.is_empty() {
                let n = seed_bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&seed_bytes[..n]);
            }
            for end in 0..=buf.len() {
                if let Ok(Some(d)) = codec.decode(&buf[..end]) {
                    check_decoded(&d, end).unwrap();
                }
            }
        }
    }

    #[test]
    fn errors_display_and_convert() {
        let e = FrameError::BadStartByte { found: 0x02 };
        assert_eq!(e.to_string(), "invalid frame start byte 0x02");
        let e = FrameError::BadEndByte { found: 0xff };
        assert_eq!(e.to_string(), "invalid frame end byte 0xff");
        let e = FrameError::TooLarge { len: 10, max: 9 };
        assert_eq!(
            e.to_string(),
            "frame payload of 10 bytes exceeds the limit of 9 bytes"
        );
        let io_err = io::Error::from(e.clone());
        assert_eq!(io_err.kind(), io::ErrorKind::InvalidData);
        let inner = io_err.get_ref().unwrap().downcast_ref::<FrameError>();
        assert_eq!(inner, Some(&e));
    }

    #[test]
    fn check_decoded_rejects_bad_answers() {
        let ok = Decoded {
            payload: 1..3,
            consumed: 4,
        };
        assert!(check_decoded(&ok, 4).is_ok());
        assert!(check_decoded(&ok, 3).is_err());
        let zero = Decoded {
            payload: 0..0,
            consumed: 0,
        };
        assert!(check_decoded(&zero, 4).is_err());
        let past = Decoded {
            payload: 1..5,
            consumed: 4,
        };
        assert!(check_decoded(&past, 8).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = Decoded {
            payload: 3..1,
            consumed: 4,
        };
        assert!(check_decoded(&reversed, 8).is_err());
    }
}
