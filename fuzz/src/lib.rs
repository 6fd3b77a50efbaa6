//! Shared code of the fuzz targets in `fuzz_targets/`.
//!
//! Every target decodes with the library's own read side, [`hydrogen::codec::Deframer`] (what
//! `Framed` reads with), so the fuzzer exercises the real code, not a copy of it.
//!
//! - [`checks`] (re-exported here) holds the reference decoders, written from the formats'
//!   documentation, and the raw-bytes targets: [`check_simple`] and [`check_length`] feed the
//!   input as one read and as many small reads through `Deframer::ingest`, and
//!   [`check_deframe`] plays a scripted socket to `Deframer::read_from` with arbitrary read
//!   sizes, `WouldBlock`s, `Interrupted`s and budgets. `tests/fuzz_regressions.rs` in the root
//!   crate compiles that same file to replay the regression inputs.
//! - [`check_roundtrip`] is the structured target: encode payloads through a
//!   [`WriteQueue`], written out in pieces, cut the stream into reads, decode, and get the
//!   payloads back.
//! - [`tls::check_tls_read`] feeds raw bytes to the library's server-side TLS stream.

use std::borrow::Cow;

use arbitrary::Arbitrary;
use hydrogen::codec::{Codec, FrameError, LengthPrefixed, SimpleFrame, WriteQueue};

pub mod checks;
pub mod tls;

pub use checks::*;

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

/// Encodes the payloads with `codec` (whose largest payload is `limit`) into a [`WriteQueue`],
/// which is written out in pieces (at the input's split points) and must give exactly the
/// bytes of encoding them directly. Then cuts the stream at the split points and decodes it
/// read by read, all at once, and as [`small_reads`]: each way must give back exactly the
/// payloads that encoded, in order, with nothing left.
fn roundtrip<C: Codec + Clone>(codec: C, limit: usize, input: &RoundtripInput) {
    let mut encoder = codec.clone();
    let mut queue = WriteQueue::new();
    let mut direct = Vec::new();
    let mut sent = Vec::new();
    for payload in &input.payloads {
        if queue.pending() > MAX_WIRE {
            break;
        }
        let payload = payload.bytes();
        let before = queue.pending();
        match queue.push(&mut encoder, &payload) {
            Ok(()) => {
                assert!(payload.len() <= limit, "encoded {} bytes", payload.len());
                assert!(queue.pending() > before, "encode appended nothing");
                encoder.encode(&payload, &mut direct).unwrap();
                sent.push(payload.into_owned());
            }
            Err(err) => {
                let too_large = FrameError::TooLarge {
                    len: payload.len() as u64,
                    max: limit,
                };
                assert_eq!(err, too_large);
                assert_eq!(queue.pending(), before, "push queued bytes and failed");
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
        .map(|&s| s as usize % (direct.len() + 1))
        .chain([0, direct.len()])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();

    // Write the queue out in the pieces between the cuts, compacting after odd ones.
    let mut wire = Vec::new();
    for (i, w) in cuts.windows(2).enumerate() {
        let n = w[1] - w[0];
        wire.extend_from_slice(&queue.chunk()[..n]);
        queue.advance(n);
        if i % 2 == 1 {
            queue.compact();
        }
        assert_eq!(queue.pending(), direct.len() - w[1]);
    }
    assert!(queue.is_empty());
    assert!(
        wire == direct,
        "the queue wrote other bytes than the codec encodes"
    );

    let reads = cuts.windows(2).map(|w| &wire[w[0]..w[1]]);
    assert_same(&feed(codec.clone(), reads), &want, "split reads");
    assert_same(&feed(codec.clone(), [&wire[..]]), &want, "one read");
    assert_same(&feed(codec, small_reads(&wire)), &want, "small reads");
}
