//! [`LengthPrefixed`]: a `u32` length, then the payload.

use super::{Codec, Decoded, FrameError};

/// Frames made of the payload length as a big-endian `u32`, followed by the payload.
///
/// Every codec value carries an upper bound on the payload length, [`max_frame_len`]
/// (8 MiB by [`Default`]). A received header announcing more is rejected as soon as its four bytes
/// have arrived, before any of the payload, and no memory is ever reserved based on a length the
/// peer claims. The bound also applies when encoding. Whatever the bound, the format itself cannot
/// carry more than `u32::MAX` bytes.
///
/// ```
/// use hydrogen::codec::{Codec, FrameError, LengthPrefixed};
///
/// let mut codec = LengthPrefixed::new(16);
/// let mut wire = Vec::new();
/// codec.encode(b"hello", &mut wire).unwrap();
/// assert_eq!(wire, [0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
///
/// // A header claiming 17 bytes is refused before the payload arrives.
/// assert_eq!(
///     codec.decode(&[0, 0, 0, 17]),
///     Err(FrameError::TooLarge { len: 17, max: 16 })
/// );
/// ```
///
/// [`max_frame_len`]: LengthPrefixed::max_frame_len
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthPrefixed {
    max_frame_len: usize,
}

impl LengthPrefixed {
    /// The payload bound used by [`LengthPrefixed::default`]: 8 MiB.
    pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

    /// The size of the length header.
    const HEADER: usize = 4;

    /// Creates a codec accepting payloads of at most `max_frame_len` bytes.
    ///
    /// Values above `u32::MAX` act as `u32::MAX`, the most the header can express.
    pub const fn new(max_frame_len: usize) -> LengthPrefixed {
        LengthPrefixed { max_frame_len }
    }

    /// The largest payload, in bytes, this codec encodes or accepts, as given to
    /// [`new`](LengthPrefixed::new).
    pub const fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The bound actually enforced: the configured one, capped by what the header can express.
    fn limit(&self) -> usize {
        self.max_frame_len
            .min(usize::try_from(u32::MAX).unwrap_or(usize::MAX))
    }
}

impl Default for LengthPrefixed {
    /// A codec with a bound of [`DEFAULT_MAX_FRAME_LEN`](LengthPrefixed::DEFAULT_MAX_FRAME_LEN).
    fn default() -> LengthPrefixed {
        LengthPrefixed::new(LengthPrefixed::DEFAULT_MAX_FRAME_LEN)
    }
}

impl Codec for LengthPrefixed {
    /// The configured maximum frame length (capped at `u32::MAX`, what the prefix can say).
    fn max_payload(&self) -> usize {
        self.limit()
    }

    /// Appends the 4-byte big-endian length and the payload to `out`.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] if the payload is longer than the bound; `out` is left untouched.
    /// The bound does not change the encoding, only what is accepted.
    fn encoding_key(&self) -> Option<&'static str> {
        Some("hydrogen/u32")
    }

    fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let limit = self.limit();
        if payload.len() > limit {
            return Err(FrameError::TooLarge {
                len: payload.len() as u64,
                max: limit,
            });
        }
        // `limit` is at most `u32::MAX`, so this cannot fail; be safe anyway.
        let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
            len: payload.len() as u64,
            max: limit,
        })?;
        out.reserve(Self::HEADER + payload.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        Ok(())
    }

    /// Decodes one frame from the start of `buf`.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] as soon as the four header bytes are present and announce more
    /// than the bound.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, FrameError> {
        let Some(&[a, b, c, d]) = buf.get(..Self::HEADER) else {
            return Ok(None);
        };
        let announced = u32::from_be_bytes([a, b, c, d]);
        let limit = self.limit();
        let len = match usize::try_from(announced) {
            Ok(len) if len <= limit => len,
            _ => {
                return Err(FrameError::TooLarge {
                    len: u64::from(announced),
                    max: limit,
                });
            }
        };
        // `len` <= u32::MAX, so on 64-bit targets this cannot overflow; checked for the others.
        let Some(end) = Self::HEADER.checked_add(len) else {
            return Err(FrameError::TooLarge {
                len: u64::from(announced),
                max: limit,
            });
        };
        if buf.len() < end {
            return Ok(None);
        }
        Ok(Some(Decoded {
            payload: Self::HEADER..end,
            consumed: end,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{check_every_split, check_no_panic, decode_chunks};

    fn encode(codec: &mut LengthPrefixed, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        codec.encode(payload, &mut out).unwrap();
        out
    }

    #[test]
    fn known_vectors() {
        let mut codec = LengthPrefixed::default();
        assert_eq!(
            encode(&mut codec, b"hello"),
            [0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']
        );
        assert_eq!(encode(&mut codec, b""), [0, 0, 0, 0]);
        let wire = [0, 0, 1, 2];
        assert_eq!(codec.decode(&wire), Ok(None));
        let d = codec.decode(&[0, 0, 0, 0, 0xaa]).unwrap().unwrap();
        assert_eq!(
            d,
            Decoded {
                payload: 4..4,
                consumed: 4
            }
        );
    }

    #[test]
    fn defaults_and_getter() {
        assert_eq!(LengthPrefixed::DEFAULT_MAX_FRAME_LEN, 8 * 1024 * 1024);
        assert_eq!(
            LengthPrefixed::default().max_frame_len(),
            LengthPrefixed::DEFAULT_MAX_FRAME_LEN
        );
        assert_eq!(LengthPrefixed::new(5).max_frame_len(), 5);
    }

    #[test]
    fn incomplete_needs_more() {
        let mut codec = LengthPrefixed::default();
        let wire = encode(&mut codec, b"hello");
        for end in 0..wire.len() {
            assert_eq!(codec.decode(&wire[..end]), Ok(None), "prefix {end}");
        }
    }

    #[test]
    fn round_trips() {
        let mut codec = LengthPrefixed::new(100_000);
        for len in [0usize, 1, 255, 256, 65535, 65536, 99_999, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let wire = encode(&mut codec, &payload);
            assert_eq!(wire.len(), len + 4);
            let d = codec.decode(&wire).unwrap().unwrap();
            assert_eq!(d.consumed, wire.len());
            assert_eq!(&wire[d.payload], &payload[..], "len {len}");
        }
    }

    #[test]
    fn max_and_max_plus_one() {
        let mut codec = LengthPrefixed::new(10);
        let wire = encode(&mut codec, &[7u8; 10]);
        let (got, left) = decode_chunks(&mut codec, &[&wire]).unwrap();
        assert_eq!(got, [vec![7u8; 10]]);
        assert_eq!(left, 0);

        let mut out = vec![1u8];
        assert_eq!(
            codec.encode(&[7u8; 11], &mut out),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(out, [1u8], "nothing appended on error");

        // Rejected from the header alone, with no payload present.
        assert_eq!(
            codec.decode(&[0, 0, 0, 11]),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(
            codec.decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max: 10
            })
        );
        // Three header bytes are not enough to tell.
        assert_eq!(codec.decode(&[0xff, 0xff, 0xff]), Ok(None));
    }

    #[test]
    fn zero_bound_allows_only_empty() {
        let mut codec = LengthPrefixed::new(0);
        let wire = encode(&mut codec, b"");
        assert_eq!(codec.decode(&wire).unwrap().unwrap().consumed, 4);
        assert!(codec.encode(b"x", &mut Vec::new()).is_err());
        assert_eq!(
            codec.decode(&[0, 0, 0, 1, b'x']),
            Err(FrameError::TooLarge { len: 1, max: 0 })
        );
    }

    #[test]
    fn huge_bound_is_capped_by_header() {
        let mut codec = LengthPrefixed::new(usize::MAX);
        assert_eq!(codec.max_frame_len(), usize::MAX);
        // A full-size header is accepted and just waits for its payload.
        assert_eq!(codec.decode(&[0xff, 0xff, 0xff, 0xff, 0]), Ok(None));
    }

    #[test]
    fn every_split_point() {
        let big = vec![0u8; 300];
        check_every_split(
            &mut LengthPrefixed::default(),
            &[b"hello", b"", b"\x00\x00\x00\x05", &big, b"x", b""],
        );
    }

    #[test]
    fn never_panics() {
        check_no_panic(&mut LengthPrefixed::new(40), &[0, 0, 0]);
        check_no_panic(&mut LengthPrefixed::new(usize::MAX), &[0, 0, 0]);
    }

    #[test]
    fn max_payload_is_the_configured_limit() {
        assert_eq!(LengthPrefixed::new(4096).max_payload(), 4096);
        assert_eq!(
            LengthPrefixed::default().max_payload(),
            LengthPrefixed::DEFAULT_MAX_FRAME_LEN
        );
        assert_eq!(
            LengthPrefixed::new(usize::MAX).max_payload(),
            u32::MAX as usize
        );
    }
}
