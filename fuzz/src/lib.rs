//! Shared code of the fuzz targets in `fuzz_targets/`.
//!
//! - [`Reader`] is the read side of `hydrogen::Framed` without the socket: it decodes every
//!   complete frame of a read, keeps the bytes of an incomplete one and appends the next read to
//!   them, with the same two paths (`decode_all` straight from the read, or from the buffer) and
//!   the same checks of each [`Decoded`]. Unlike `Framed`, which turns a broken [`Decoded`] into
//!   an error, it panics, so the fuzzer reports it.
//! - [`check_simple`] and [`check_length`] are the raw-bytes targets: the input as one read and
//!   as many small reads ([`small_reads`]) must give the same [`Outcome`], and that outcome must
//!   equal the one of a small reference decoder written from the format's documentation.
//! - [`check_roundtrip`] is the structured target: encode payloads, cut the stream into reads,
//!   decode, and get the payloads back.
//!
//! `tests/fuzz_regressions.rs` in the root crate repeats the decode loop and the reference
//! decoders (it cannot depend on this crate), so keep the two in step.

use std::borrow::Cow;
use std::fmt;

use arbitrary::Arbitrary;
use hydrogen::Frames;
use hydrogen::codec::{Codec, Decoded, FrameError, LengthPrefixed, SimpleFrame};

/// What feeding a byte stream to a [`Reader`] gave.
#[derive(PartialEq, Eq)]
pub struct Outcome {
    /// The payloads of the frames decoded, in order (before the error, if there is one).
    pub frames: Vec<Vec<u8>>,
    /// `Ok(n)`: no error, `n` bytes of an incomplete frame left buffered. `Err`: the first error;
    /// `Framed` closes the connection there, so nothing after it is fed.
    pub end: Result<usize, FrameError>,
}

impl fmt::Debug for Outcome {
    /// Frames as their lengths and first bytes: a failing 64 KiB frame stays readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frames: Vec<String> = self
            .frames
            .iter()
            .map(|p| format!("{} bytes {:02x?}", p.len(), &p[..p.len().min(8)]))
            .collect();
        f.debug_struct("Outcome")
            .field("frames", &frames)
            .field("end", &self.end)
            .finish()
    }
}

/// Panics with a message naming the first difference if `got` is not `want`.
#[track_caller]
pub fn assert_same(got: &Outcome, want: &Outcome, what: &str) {
    if got == want {
        return;
    }
    let first_diff = got
        .frames
        .iter()
        .zip(&want.frames)
        .position(|(a, b)| a != b);
    panic!(
        "{what}: outcomes differ (first differing frame: {first_diff:?})\n got: {got:?}\nwant: {want:?}"
    );
}

/// Pushes every complete frame at the start of `buf` to `frames` and returns how many bytes they
/// occupy: `Framed`'s `decode_all`, with its `check_decoded` turned into assertions.
pub fn decode_all<C: Codec>(
    codec: &mut C,
    buf: &[u8],
    frames: &mut Frames,
) -> Result<usize, FrameError> {
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let Some(Decoded { payload, consumed }) = codec.decode(rest)? else {
            break;
        };
        assert!(
            consumed >= 1 && consumed <= rest.len(),
            "consumed {consumed} of a {}-byte buffer",
            rest.len()
        );
        assert!(
            payload.start <= payload.end && payload.end <= consumed,
            "payload {payload:?} outside the {consumed} bytes consumed"
        );
        frames.push(&rest[payload]);
        pos += consumed;
    }
    Ok(pos)
}

/// The read side of `Framed`, fed from memory instead of a socket.
#[derive(Debug)]
pub struct Reader<C> {
    codec: C,
    /// The bytes of an incomplete frame, and nothing else between reads.
    rbuf: Vec<u8>,
    frames: Frames,
}

impl<C: Codec> Reader<C> {
    /// A reader with nothing buffered.
    pub fn new(codec: C) -> Self {
        Reader {
            codec,
            rbuf: Vec::new(),
            frames: Frames::new(),
        }
    }

    /// One read: `Framed::ingest`.
    pub fn ingest(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if self.rbuf.is_empty() {
            let used = decode_all(&mut self.codec, data, &mut self.frames)?;
            self.rbuf.extend_from_slice(&data[used..]);
            return Ok(());
        }
        self.rbuf.extend_from_slice(data);
        let used = decode_all(&mut self.codec, &self.rbuf, &mut self.frames)?;
        self.rbuf.drain(..used);
        Ok(())
    }

    /// Feeds `reads` in order, stopping at the first error.
    pub fn feed<'a>(mut self, reads: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut end = Ok(());
        for read in reads {
            end = self.ingest(read);
            if end.is_err() {
                break;
            }
        }
        Outcome {
            frames: self.frames.iter().map(<[u8]>::to_vec).collect(),
            end: end.map(|()| self.rbuf.len()),
        }
    }
}

/// Inputs up to this long are also fed one byte per read; longer ones in reads of 1, 2, 3, …
/// bytes, which keeps the executions fast.
pub const BYTEWISE_MAX: usize = 1024;

/// `data` cut into reads: one per byte if it is at most [`BYTEWISE_MAX`] bytes long, otherwise
/// reads of 1, 2, 3, … bytes.
pub fn small_reads(data: &[u8]) -> Vec<&[u8]> {
    if data.len() <= BYTEWISE_MAX {
        return data.chunks(1).collect();
    }
    let mut reads = Vec::new();
    let mut rest = data;
    let mut len = 1;
    while !rest.is_empty() {
        let (read, tail) = rest.split_at(len.min(rest.len()));
        reads.push(read);
        rest = tail;
        len += 1;
    }
    reads
}

/// Feeds `data` as one read and as [`small_reads`]; both must give the same outcome, which is
/// returned.
pub fn decode_both_ways<C: Codec + Clone>(codec: &C, data: &[u8]) -> Outcome {
    let whole = Reader::new(codec.clone()).feed([data]);
    let small = Reader::new(codec.clone()).feed(small_reads(data));
    assert_same(&small, &whole, "small reads vs one read");
    whole
}

/// The `SimpleFrame` format as its documentation states it, decoded without the codec.
pub fn reference_simple(data: &[u8]) -> Outcome {
    let mut frames = Vec::new();
    let mut rest = data;
    let end = loop {
        match rest {
            [] => break Ok(0),
            [first, ..] if *first != 0x01 => break Err(FrameError::BadStartByte { found: *first }),
            [_, hi, lo, tail @ ..] => {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                match tail.get(len) {
                    None => break Ok(rest.len()),
                    Some(&0x17) => frames.push(tail[..len].to_vec()),
                    Some(&found) => break Err(FrameError::BadEndByte { found }),
                }
                rest = &tail[len + 1..];
            }
            _ => break Ok(rest.len()),
        }
    };
    Outcome { frames, end }
}

/// The `LengthPrefixed` format with bound `max` (capped at `u32::MAX`) as its documentation
/// states it, decoded without the codec.
pub fn reference_length(max: usize, data: &[u8]) -> Outcome {
    let limit = max.min(u32::MAX as usize);
    let mut frames = Vec::new();
    let mut rest = data;
    let end = loop {
        let [a, b, c, d, tail @ ..] = rest else {
            break Ok(rest.len());
        };
        let len = u32::from_be_bytes([*a, *b, *c, *d]);
        if len as usize > limit {
            break Err(FrameError::TooLarge {
                len: u64::from(len),
                max: limit,
            });
        }
        let Some(payload) = tail.get(..len as usize) else {
            break Ok(rest.len());
        };
        frames.push(payload.to_vec());
        rest = &tail[len as usize..];
    };
    Outcome { frames, end }
}

/// The `decode_simple` target.
pub fn check_simple(data: &[u8]) {
    let got = decode_both_ways(&SimpleFrame, data);
    assert_same(&got, &reference_simple(data), "SimpleFrame vs reference");
}

/// The bounds `decode_length` decodes every input with: a small one so that `TooLarge` is
/// common, the default, and none at all (a claimed 4 GiB must still allocate nothing).
pub const LENGTH_BOUNDS: [usize; 3] = [4096, LengthPrefixed::DEFAULT_MAX_FRAME_LEN, usize::MAX];

/// The `decode_length` target.
pub fn check_length(data: &[u8]) {
    for max in LENGTH_BOUNDS {
        let got = decode_both_ways(&LengthPrefixed::new(max), data);
        let what = format!("LengthPrefixed::new({max}) vs reference");
        assert_same(&got, &reference_length(max, data), &what);
    }
}

/// The input of the `roundtrip` target.
#[derive(Debug, Arbitrary)]
pub struct RoundtripInput {
    /// The codec that encodes and decodes.
    pub codec: CodecChoice,
    /// The payloads, encoded back to back.
    pub payloads: Vec<Payload>,
    /// Where the encoded stream is cut into reads (each taken modulo the stream length + 1).
    pub splits: Vec<u32>,
}

/// Which codec the `roundtrip` target uses.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum CodecChoice {
    /// [`SimpleFrame`].
    Simple,
    /// [`LengthPrefixed::new`] with a small bound.
    Length(u16),
    /// [`LengthPrefixed::default`].
    LengthDefault,
    /// [`LengthPrefixed::new`]`(usize::MAX)`.
    LengthUnbounded,
}

/// One payload of the `roundtrip` target.
#[derive(Debug, Arbitrary)]
pub enum Payload {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` (at most [`MAX_FILL`]) copies of `byte`: reaches `SimpleFrame`'s 65535-byte limit
    /// and past it from a few input bytes.
    Fill {
        /// The byte repeated.
        byte: u8,
        /// How many times.
        len: u32,
    },
}

/// The longest [`Payload::Fill`].
pub const MAX_FILL: usize = 70_000;

/// No more payloads are encoded once the stream is this long.
pub const MAX_WIRE: usize = 256 * 1024;

impl Payload {
    /// The payload's bytes.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match self {
            Payload::Bytes(b) => Cow::Borrowed(b),
            Payload::Fill { byte, len } => Cow::Owned(vec![*byte; (*len as usize).min(MAX_FILL)]),
        }
    }
}

/// The `roundtrip` target.
pub fn check_roundtrip(input: &RoundtripInput) {
    match input.codec {
        CodecChoice::Simple => roundtrip(SimpleFrame, SimpleFrame::MAX_PAYLOAD, input),
        CodecChoice::Length(max) => {
            roundtrip(LengthPrefixed::new(max.into()), max.into(), input);
        }
        CodecChoice::LengthDefault => roundtrip(
            LengthPrefixed::default(),
            LengthPrefixed::DEFAULT_MAX_FRAME_LEN,
            input,
        ),
        CodecChoice::LengthUnbounded => {
            roundtrip(LengthPrefixed::new(usize::MAX), u32::MAX as usize, input);
        }
    }
}

/// Encodes the payloads with `codec` (whose largest payload is `limit`), cuts the stream at the
/// input's split points and decodes it read by read, all at once, and as [`small_reads`]: each
/// way must give back exactly the payloads that encoded, in order, with nothing left.
fn roundtrip<C: Codec + Clone>(codec: C, limit: usize, input: &RoundtripInput) {
    let mut encoder = codec.clone();
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    for payload in &input.payloads {
        if wire.len() > MAX_WIRE {
            break;
        }
        let payload = payload.bytes();
        let before = wire.len();
        match encoder.encode(&payload, &mut wire) {
            Ok(()) => {
                assert!(payload.len() <= limit, "encoded {} bytes", payload.len());
                assert!(wire.len() > before, "encode appended nothing");
                sent.push(payload.into_owned());
            }
            Err(err) => {
                let too_large = FrameError::TooLarge {
                    len: payload.len() as u64,
                    max: limit,
                };
                assert_eq!(err, too_large);
                assert_eq!(wire.len(), before, "encode appended bytes and failed");
            }
        }
    }
    let want = Outcome {
        frames: sent,
        end: Ok(0),
    };

    let mut cuts: Vec<usize> = input
        .splits
        .iter()
        .map(|&s| s as usize % (wire.len() + 1))
        .chain([0, wire.len()])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let reads = cuts.windows(2).map(|w| &wire[w[0]..w[1]]);
    assert_same(
        &Reader::new(codec.clone()).feed(reads),
        &want,
        "split reads",
    );
    assert_same(
        &Reader::new(codec.clone()).feed([&wire[..]]),
        &want,
        "one read",
    );
    assert_same(
        &Reader::new(codec).feed(small_reads(&wire)),
        &want,
        "small reads",
    );
}
