//! [`SimpleFrame`]: the `simple-stream` wire format.

use super::{Codec, Decoded, FrameError};

/// The framing of the `simple-stream` crate: a start byte `0x01`, the payload length as a
/// big-endian `u16`, the payload, and an end byte `0x17`.
///
/// | bytes      | meaning                         |
/// |------------|---------------------------------|
/// | 1          | [`START`](SimpleFrame::START), `0x01` |
/// | 2          | payload length, big-endian      |
/// | length     | payload                         |
/// | 1          | [`END`](SimpleFrame::END), `0x17` |
///
/// Payloads may be 0 to [`MAX_PAYLOAD`](SimpleFrame::MAX_PAYLOAD) (65535) bytes long, all of them
/// usable (the original crate could not carry the last few lengths).
///
/// ```
/// use hydrogen::codec::{Codec, SimpleFrame};
///
/// let mut wire = Vec::new();
/// SimpleFrame.encode(b"hello", &mut wire).unwrap();
/// assert_eq!(wire, [0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0x17]);
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimpleFrame;

impl SimpleFrame {
    /// The byte every frame starts with.
    pub const START: u8 = 0x01;
    /// The byte every frame ends with.
    pub const END: u8 = 0x17;
    /// The largest payload a frame can carry, in bytes.
    pub const MAX_PAYLOAD: usize = u16::MAX as usize;

    /// Start byte plus the two length bytes.
    const HEADER: usize = 3;
}

impl Codec for SimpleFrame {
    /// [`MAX_PAYLOAD`](SimpleFrame::MAX_PAYLOAD): 65535 bytes.
    fn max_payload(&self) -> usize {
        Self::MAX_PAYLOAD
    }

    fn encoding_key(&self) -> Option<&'static str> {
        Some("hydrogen/simple")
    }

    /// Appends `0x01`, the length, the payload and `0x17` to `out`.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] if the payload is longer than
    /// [`MAX_PAYLOAD`](SimpleFrame::MAX_PAYLOAD); `out` is left untouched.
    fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let Ok(len) = u16::try_from(payload.len()) else {
            return Err(FrameError::TooLarge {
                len: payload.len() as u64,
                max: Self::MAX_PAYLOAD,
            });
        };
        out.reserve(payload.len() + Self::HEADER + 1);
        out.push(Self::START);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        out.push(Self::END);
        Ok(())
    }

    /// Decodes one frame from the start of `buf`.
    ///
    /// # Errors
    ///
    /// [`FrameError::BadStartByte`] as soon as the first byte is not `0x01`;
    /// [`FrameError::BadEndByte`] once the byte after the payload is available and is not `0x17`.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, FrameError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != Self::START {
            return Err(FrameError::BadStartByte { found: first });
        }
        let Some(&[hi, lo]) = buf.get(1..Self::HEADER) else {
            return Ok(None);
        };
        let end = Self::HEADER + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(&last) = buf.get(end) else {
            return Ok(None);
        };
        if last != Self::END {
            return Err(FrameError::BadEndByte { found: last });
        }
        Ok(Some(Decoded {
            payload: Self::HEADER..end,
            consumed: end + 1,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{check_every_split, check_no_panic, decode_chunks};

    fn encode(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        SimpleFrame.encode(payload, &mut out).unwrap();
        out
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            encode(b"hello"),
            [0x01, 0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x17]
        );
        assert_eq!(encode(b""), [0x01, 0x00, 0x00, 0x17]);
        assert_eq!(SimpleFrame::START, 0x01);
        assert_eq!(SimpleFrame::END, 0x17);
        assert_eq!(SimpleFrame::MAX_PAYLOAD, 65535);
    }

    #[test]
    fn decode_known_vectors() {
        let wire = [0x01, 0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x17, 0xaa];
        let d = SimpleFrame.decode(&wire).unwrap().unwrap();
        assert_eq!(
            d,
            Decoded {
                payload: 3..8,
                consumed: 9
            }
        );
        assert_eq!(&wire[d.payload], b"hello");
        let d = SimpleFrame
            .decode(&[0x01, 0x00, 0x00, 0x17])
            .unwrap()
            .unwrap();
        assert_eq!(
            d,
            Decoded {
                payload: 3..3,
                consumed: 4
            }
        );
    }

    #[test]
    fn incomplete_needs_more() {
        let wire = encode(b"hello");
        for end in 0..wire.len() {
            assert_eq!(SimpleFrame.decode(&wire[..end]), Ok(None), "prefix {end}");
        }
    }

    #[test]
    fn round_trips() {
        for len in [0usize, 1, 2, 100, 1000, 65531, 65532, 65533, 65534, 65535] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let wire = encode(&payload);
            assert_eq!(wire.len(), len + 4);
            let d = SimpleFrame.decode(&wire).unwrap().unwrap();
            assert_eq!(d.consumed, wire.len());
            assert_eq!(&wire[d.payload], &payload[..], "len {len}");
        }
    }

    #[test]
    fn max_payload_and_too_large() {
        let max = vec![0x17u8; 65535];
        let wire = encode(&max);
        assert_eq!(&wire[..3], [0x01, 0xff, 0xff]);
        assert_eq!(*wire.last().unwrap(), 0x17);
        let (got, left) = decode_chunks(&mut SimpleFrame, &[&wire]).unwrap();
        assert_eq!(got, [max]);
        assert_eq!(left, 0);

        let mut out = vec![9u8];
        let err = SimpleFrame.encode(&[0u8; 65536], &mut out).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 65536,
                max: 65535
            }
        );
        assert_eq!(out, [9u8], "nothing appended on error");
    }

    #[test]
    fn every_split_point() {
        let big = vec![0x01u8; 300];
        check_every_split(
            &mut SimpleFrame,
            &[b"hello", b"", b"\x01\x17\x00", &big, b"x", b""],
        );
    }

    #[test]
    fn bad_start_byte_reported_at_once() {
        assert_eq!(
            SimpleFrame.decode(&[0x02]),
            Err(FrameError::BadStartByte { found: 0x02 })
        );
        assert_eq!(
            SimpleFrame.decode(&[0x17, 0x00, 0x00, 0x17]),
            Err(FrameError::BadStartByte { found: 0x17 })
        );
        // After a good frame.
        let mut wire = encode(b"ok");
        wire.push(0xee);
        let err = decode_chunks(&mut SimpleFrame, &[&wire]).unwrap_err();
        assert_eq!(err, FrameError::BadStartByte { found: 0xee });
    }

    #[test]
    fn bad_end_byte() {
        assert_eq!(
            SimpleFrame.decode(&[0x01, 0x00, 0x02, b'a', b'b', 0x18]),
            Err(FrameError::BadEndByte { found: 0x18 })
        );
        assert_eq!(
            SimpleFrame.decode(&[0x01, 0x00, 0x00, 0x00]),
            Err(FrameError::BadEndByte { found: 0x00 })
        );
        // Not reported before the end byte is there.
        assert_eq!(
            SimpleFrame.decode(&[0x01, 0x00, 0x02, b'a', b'b']),
            Ok(None)
        );
    }

    #[test]
    fn never_panics() {
        check_no_panic(&mut SimpleFrame, &[0x01, 0x00]);
    }

    #[test]
    fn max_payload_is_the_format_limit() {
        assert_eq!(SimpleFrame.max_payload(), 65535);
        let mut out = Vec::new();
        assert!(
            SimpleFrame
                .encode(&vec![0; SimpleFrame.max_payload()], &mut out)
                .is_ok()
        );
        assert!(
            SimpleFrame
                .encode(&vec![0; SimpleFrame.max_payload() + 1], &mut out)
                .is_err()
        );
    }
}
