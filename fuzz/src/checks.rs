//! The checks of the fuzz targets that need nothing but `hydrogen` and `std`: the reference
//! decoders, the raw-bytes targets `decode_simple`, `decode_length` and `deframe`, and what they
//! share.
//!
//! This one file is compiled twice: as a module of the fuzz crate (`hydrogen_fuzz`), and by
//! `tests/fuzz_regressions.rs` in the root crate (with `#[path]`), which replays the regression
//! inputs through the very same checks with plain `cargo test`. So it must not use anything else
//! (no `arbitrary`, no `libfuzzer-sys`).
//!
//! Every decode goes through the library's own [`Deframer`], the read side of `Framed`: nothing
//! here re-implements it.

use std::fmt;
use std::io::{self, Read};

use hydrogen::codec::{Codec, Deframer, FrameError, LengthPrefixed, SimpleFrame};
use hydrogen::{__fuzz, Frames, RecvStatus};

/// What feeding a byte stream to a [`Deframer`] gave.
#[derive(PartialEq, Eq)]
pub struct Outcome {
    /// The payloads of the frames decoded, in order (before the error, if there is one).
    pub frames: Vec<Vec<u8>>,
    /// `Ok(n)`: no error, `n` bytes of an incomplete frame left buffered. `Err`: the first error;
    /// `Framed` closes the connection there, so nothing after it is fed.
    pub end: Result<usize, FrameError>,
}

impl Outcome {
    /// An outcome from payloads given as slices.
    pub fn new(frames: &[&[u8]], end: Result<usize, FrameError>) -> Outcome {
        Outcome {
            frames: frames.iter().map(|f| f.to_vec()).collect(),
            end,
        }
    }
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
        "{what}: outcomes differ (first differing frame: {first_diff:?}, {} vs {} frames)\n \
         got: {got:?}\nwant: {want:?}",
        got.frames.len(),
        want.frames.len()
    );
}

/// The codec's error inside an error of the deframer. Any other error means the deframer
/// found a `Decoded` breaking the rules of `Codec::decode` (or failed otherwise): a bug, so
/// this panics.
#[track_caller]
pub fn frame_error(err: &io::Error) -> FrameError {
    match err.get_ref().and_then(|e| e.downcast_ref::<FrameError>()) {
        Some(frame_error) if err.kind() == io::ErrorKind::InvalidData => frame_error.clone(),
        _ => panic!("the deframer failed with an error that is not a FrameError: {err:?}"),
    }
}

/// Checks what a [`Deframer`] holds between calls: an idle one holds no allocation at all; a
/// started frame's buffer holds its bytes and room that grew by what arrived, or a leftover
/// that was not worth shrinking.
#[track_caller]
pub fn check_held<C: Codec>(deframer: &Deframer<C>) {
    let held = deframer.partial().len();
    let len = deframer.buffered_input();
    let capacity = __fuzz::read_buffer_capacity(deframer);
    assert_eq!(held > 0, deframer.has_partial_frame());
    if held == 0 {
        assert_eq!(
            (len, capacity),
            (0, 0),
            "no frame started, yet a read buffer is held"
        );
        return;
    }
    let bound = __fuzz::rbuf_len_for(held)
        .max(4 * held + 3)
        .max(__fuzz::RBUF_SHRINK_ABOVE);
    assert!(
        held <= len && len <= bound && len <= capacity,
        "{held} bytes held in a read buffer of {len} initialised bytes (at most {bound}), \
         capacity {capacity}"
    );
}

/// Feeds `reads` in order through [`Deframer::ingest`], stopping at the first error, and checks
/// what it holds after each.
pub fn feed<'a, C: Codec>(codec: C, reads: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut deframer = Deframer::new(codec);
    let mut frames = Frames::new();
    let mut end = Ok(());
    for read in reads {
        end = deframer.ingest(read, &mut frames);
        if end.is_err() {
            break;
        }
        check_held(&deframer);
    }
    Outcome {
        frames: frames.iter().map(<[u8]>::to_vec).collect(),
        end: match end {
            Ok(()) => Ok(deframer.partial().len()),
            Err(err) => Err(frame_error(&err)),
        },
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
    let whole = feed(codec.clone(), [data]);
    let small = feed(codec.clone(), small_reads(data));
    assert_same(&small, &whole, "small reads vs one read");
    whole
}

/// The `SimpleFrame` format as its documentation states it, decoded without the codec:
/// `0x01`, a big-endian `u16` length, the payload, `0x17`, each error reported as soon as the
/// byte that shows it is there.
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
/// states it, decoded without the codec: a big-endian `u32` length, rejected as soon as the
/// header is complete if over the bound, then the payload.
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

/// The `decode_simple` target: returns the outcome, checked against the reference.
pub fn check_simple(data: &[u8]) -> Outcome {
    let got = decode_both_ways(&SimpleFrame, data);
    assert_same(&got, &reference_simple(data), "SimpleFrame vs reference");
    got
}

/// The bounds `decode_length` decodes every input with: a small one so that `TooLarge` is
/// common, the default, and none at all (a claimed 4 GiB must still allocate nothing).
pub const LENGTH_BOUNDS: [usize; 3] = [4096, LengthPrefixed::DEFAULT_MAX_FRAME_LEN, usize::MAX];

/// The `decode_length` target: returns the outcome for each of [`LENGTH_BOUNDS`], checked
/// against the reference.
pub fn check_length(data: &[u8]) -> [Outcome; 3] {
    LENGTH_BOUNDS.map(|max| {
        let got = decode_both_ways(&LengthPrefixed::new(max), data);
        let what = format!("LengthPrefixed::new({max}) vs reference");
        assert_same(&got, &reference_length(max, data), &what);
        got
    })
}

/// What the peer and the socket do, in the `deframe` target.
#[derive(Debug, Default)]
pub struct Script {
    /// Which codec: 0 `SimpleFrame`, 1 `LengthPrefixed::new(4096)`, 2 the default (8 MiB),
    /// 3 unbounded.
    pub codec: u8,
    /// Keep the batch between `read_from` calls instead of clearing it as the server does
    /// (so a completed buffer meets a non-empty batch and is copied, not adopted).
    pub keep_batch: bool,
    /// The peer closes once everything is sent.
    pub eof: bool,
    /// The bytes the peer sends.
    pub wire: Vec<u8>,
    /// What the socket does on each read, in order; once they are used up, every read gets
    /// as much as it asks for.
    pub steps: Vec<Step>,
    /// The read budget of each `read_from` call, in turn (256 KiB if none).
    pub budgets: Vec<usize>,
}

/// What the socket does on one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Return at most this many bytes (at least 1), as a socket that has received only so many.
    Read(usize),
    /// Fail with `WouldBlock`.
    WouldBlock,
    /// Fail with `Interrupted`.
    Interrupted,
}

/// The wire of a `deframe` input stops growing past this many bytes.
pub const DEFRAME_MAX_WIRE: usize = 256 * 1024;

impl Script {
    /// Reads a script from raw fuzzer bytes (any bytes are a script).
    ///
    /// Byte 0 is the configuration: bits 0–1 the codec, bit 2 `keep_batch`, bit 3 `eof`. Then
    /// operations until the input ends, each an opcode byte (tag in the top 3 bits, `a` in the
    /// low 5) and its arguments; a missing argument byte reads as 0:
    ///
    /// | tag | arguments | meaning |
    /// |---|---|---|
    /// | 0 | `a + 1` bytes | those bytes go on the wire as they are |
    /// | 1 | `n` (1 byte) | a frame with an `n`-byte payload |
    /// | 2 | `n` (u16 big-endian) | a frame with an `n × (a + 1)`-byte payload |
    /// | 3 | | a read of at most `a + 1` bytes |
    /// | 4 | `n` (u16 big-endian) | a read of at most `(n + 1) × (a + 1)` bytes |
    /// | 5 | | a read fails with `WouldBlock` |
    /// | 6 | | a read fails with `Interrupted` |
    /// | 7 | `n` (u16 big-endian) | the next budget is `(n + 1) × (a + 1)` bytes |
    ///
    /// Frames are encoded with the script's codec; one it refuses (too large) is left out.
    /// Payload byte `i` of frame `k` is `i × 31 + k`.
    pub fn parse(data: &[u8]) -> Script {
        let mut bytes = data.iter().copied();
        let config = bytes.next().unwrap_or(0);
        let mut script = Script {
            codec: config & 3,
            keep_batch: config & 4 != 0,
            eof: config & 8 != 0,
            ..Script::default()
        };
        let mut frames = 0usize;
        while let Some(op) = bytes.next() {
            let a = usize::from(op & 0x1f);
            let payload_len = match op >> 5 {
                0 => {
                    for _ in 0..=a {
                        let byte = bytes.next().unwrap_or(0);
                        if script.wire.len() < DEFRAME_MAX_WIRE {
                            script.wire.push(byte);
                        }
                    }
                    None
                }
                1 => Some(usize::from(bytes.next().unwrap_or(0))),
                2 => Some(u16_arg(&mut bytes) * (a + 1)),
                3 => {
                    script.steps.push(Step::Read(a + 1));
                    None
                }
                4 => {
                    script
                        .steps
                        .push(Step::Read((u16_arg(&mut bytes) + 1) * (a + 1)));
                    None
                }
                5 => {
                    script.steps.push(Step::WouldBlock);
                    None
                }
                6 => {
                    script.steps.push(Step::Interrupted);
                    None
                }
                _ => {
                    script.budgets.push((u16_arg(&mut bytes) + 1) * (a + 1));
                    None
                }
            };
            if let Some(len) = payload_len
                && script.wire.len() + len < DEFRAME_MAX_WIRE
            {
                let payload: Vec<u8> = (0..len).map(|i| (i * 31 + frames) as u8).collect();
                if script.encode(&payload).is_ok() {
                    frames += 1;
                }
            }
        }
        script
    }

    /// Encodes one frame onto the wire with the script's codec.
    fn encode(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        match self.codec {
            0 => SimpleFrame.encode(payload, &mut self.wire),
            1 => LengthPrefixed::new(4096).encode(payload, &mut self.wire),
            2 => LengthPrefixed::default().encode(payload, &mut self.wire),
            _ => LengthPrefixed::new(usize::MAX).encode(payload, &mut self.wire),
        }
    }

    /// What the reference decoder of the script's codec makes of the wire.
    pub fn reference(&self) -> Outcome {
        match self.codec {
            0 => reference_simple(&self.wire),
            1 => reference_length(4096, &self.wire),
            2 => reference_length(LengthPrefixed::DEFAULT_MAX_FRAME_LEN, &self.wire),
            _ => reference_length(usize::MAX, &self.wire),
        }
    }
}

/// A big-endian `u16` argument; missing bytes read as 0.
fn u16_arg(bytes: &mut impl Iterator<Item = u8>) -> usize {
    let hi = bytes.next().unwrap_or(0);
    let lo = bytes.next().unwrap_or(0);
    usize::from(u16::from_be_bytes([hi, lo]))
}

/// A socket that plays a [`Script`]: the wire arrives as the steps say.
#[derive(Debug)]
pub struct ScriptedSocket<'a> {
    wire: &'a [u8],
    /// How many bytes of `wire` were read.
    pub sent: usize,
    steps: std::slice::Iter<'a, Step>,
    eof: bool,
}

impl<'a> ScriptedSocket<'a> {
    /// The socket for `script`, nothing read yet.
    pub fn new(script: &'a Script) -> Self {
        ScriptedSocket {
            wire: &script.wire,
            sent: 0,
            steps: script.steps.iter(),
            eof: script.eof,
        }
    }

    /// Whether every byte was read.
    pub fn drained(&self) -> bool {
        self.sent == self.wire.len()
    }
}

impl Read for ScriptedSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let most = match self.steps.next() {
            Some(Step::WouldBlock) => return Err(io::ErrorKind::WouldBlock.into()),
            Some(Step::Interrupted) => return Err(io::ErrorKind::Interrupted.into()),
            Some(Step::Read(n)) => (*n).max(1),
            None => usize::MAX,
        };
        let rest = &self.wire[self.sent..];
        if rest.is_empty() {
            if self.eof {
                return Ok(0);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = most.min(buf.len()).min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.sent += n;
        Ok(n)
    }
}

/// The `deframe` target: plays the script's socket to a [`Deframer`] through `read_from`, call
/// after call as `Framed::recv` is called, and checks that
///
/// - the frames (collected from the batch after each call, or from one batch kept throughout)
///   and the error are the reference decoder's, and the bytes left buffered are the wire's last
///   ones;
/// - an idle deframer holds no buffer, and a started frame's buffer stays within the growth
///   rule ([`check_held`]) after every call;
/// - each call's status is right: `MoreAvailable` only with the budget used up, `Eof` only at
///   the end of the wire between frames, "connection closed mid-frame" at the end in a frame;
/// - feeding the same reads to [`Deframer::ingest`] gives the same outcome.
pub fn check_deframe(data: &[u8]) {
    let script = Script::parse(data);
    match script.codec {
        0 => play(SimpleFrame, &script),
        1 => play(LengthPrefixed::new(4096), &script),
        2 => play(LengthPrefixed::default(), &script),
        _ => play(LengthPrefixed::new(usize::MAX), &script),
    }
}

/// [`check_deframe`] with the script's codec.
fn play<C: Codec + Clone>(codec: C, script: &Script) {
    let want = script.reference();
    let mut deframer = Deframer::new(codec.clone());
    let mut socket = ScriptedSocket::new(script);
    let mut frames = Frames::new();
    let mut got = Vec::new();
    let mut calls = 0usize;
    let end = loop {
        let budget = if script.budgets.is_empty() {
            256 * 1024
        } else {
            script.budgets[calls % script.budgets.len()]
        };
        calls += 1;
        let before = socket.sent;
        let result = deframer.read_from(&mut socket, budget, &mut frames);
        if !script.keep_batch {
            got.extend(frames.iter().map(<[u8]>::to_vec));
            frames.clear();
        }
        match result {
            Ok(status) => {
                check_held(&deframer);
                let held = deframer.partial();
                assert_eq!(
                    held,
                    &script.wire[socket.sent - held.len()..socket.sent],
                    "the bytes held are not the last ones read"
                );
                match status {
                    RecvStatus::MoreAvailable => {
                        assert_eq!(socket.sent - before, budget, "MoreAvailable under budget");
                    }
                    RecvStatus::Drained => {
                        if socket.drained() && !script.eof {
                            break Ok(held.len());
                        }
                    }
                    RecvStatus::Eof => {
                        assert!(socket.drained() && script.eof, "Eof before the end");
                        assert!(!deframer.has_partial_frame());
                        break Ok(0);
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                assert!(socket.drained() && script.eof, "{err} before the end");
                assert_eq!(err.to_string(), "connection closed mid-frame");
                let held = deframer.partial().len();
                assert!(held > 0, "{err} between frames");
                break Ok(held);
            }
            Err(err) => break Err(frame_error(&err)),
        }
    };
    if script.keep_batch {
        got.extend(frames.iter().map(<[u8]>::to_vec));
    }
    let read_from = Outcome { frames: got, end };
    assert_same(&read_from, &want, "read_from vs reference");

    // The same reads, handed over as bytes.
    let mut reads = Vec::new();
    let mut rest = &script.wire[..];
    for step in &script.steps {
        if let Step::Read(n) = *step {
            let (read, tail) = rest.split_at((n.max(1)).min(rest.len()));
            reads.push(read);
            rest = tail;
        }
    }
    reads.push(rest);
    assert_same(&feed(codec, reads), &want, "ingest vs reference");
}

/// The `proxy_header` target: [`hydrogen::proxy::parse_header`] on arbitrary bytes must not
/// panic, and must answer consistently however the bytes arrive. A header it accepts is at
/// most [`MAX_V2_LENGTH`](hydrogen::proxy::MAX_V2_LENGTH) bytes and no longer than the input,
/// parses the same from its own bytes, and every shorter prefix of it asks for more; an
/// input it asks more of is shorter than the longest header; an input it refuses stays
/// refused when more bytes follow. Returns what the whole input gave.
pub fn check_proxy_header(
    data: &[u8],
) -> Result<Option<(hydrogen::proxy::ProxyHeader, usize)>, hydrogen::proxy::HeaderError> {
    use hydrogen::proxy::{MAX_V2_LENGTH, parse_header};
    let got = parse_header(data);
    match &got {
        Ok(Some((header, len))) => {
            assert!(*len <= data.len() && *len <= MAX_V2_LENGTH, "length {len}");
            let again = parse_header(&data[..*len]).expect("its own bytes parse");
            assert_eq!(again.as_ref().map(|(h, l)| (h, *l)), Some((header, *len)));
            // Prefixes: all of them for a short header, a sample for a long one.
            let step = (*len / 64).max(1);
            for cut in (0..*len).step_by(step) {
                assert_eq!(
                    parse_header(&data[..cut]),
                    Ok(None),
                    "prefix of {cut} of a {len}-byte header"
                );
            }
            // TLVs can be walked to the end.
            let _ = header.tlvs().map(|t| t.value.len()).sum::<usize>();
        }
        Ok(None) => assert!(
            data.len() < MAX_V2_LENGTH,
            "{} bytes and no verdict",
            data.len()
        ),
        Err(err) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\0more");
            assert!(parse_header(&longer).is_err(), "{err} then accepted");
            assert!(!err.to_string().is_empty());
        }
    }
    got
}
