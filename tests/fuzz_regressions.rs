//! Replays the fuzz regression inputs in `fuzz/regressions/decode_simple` and
//! `fuzz/regressions/decode_length` (see `fuzz/README.md`) with the checks of the fuzz targets,
//! so an input that once broke a codec is tried by every `cargo test`, with no fuzzing tools.
//!
//! Every file is decoded the way `Framed` reads: as one read, one byte per read and (when short)
//! two reads split at every offset. All ways must agree, every `Decoded` must obey the rules of
//! `Codec::decode`, and the result must equal that of a reference decoder written from the
//! format's documentation. The hand-made files must also give the outcome listed below.
//!
//! The decode loop and the reference decoders repeat those of `fuzz/src/lib.rs`, which this
//! crate cannot depend on; keep the two in step.

use std::fmt;
use std::fs;
use std::path::PathBuf;

use hydrogen::codec::{Codec, Decoded, FrameError, LengthPrefixed, SimpleFrame};

/// What feeding a byte stream to the decode loop gave.
#[derive(PartialEq, Eq)]
struct Outcome {
    /// The payloads decoded, in order (before the error, if there is one).
    frames: Vec<Vec<u8>>,
    /// `Ok(n)`: no error and `n` bytes of an incomplete frame buffered; `Err`: the first error.
    end: Result<usize, FrameError>,
}

impl fmt::Debug for Outcome {
    /// Frames as their lengths and first bytes, so a 64 KiB frame stays readable.
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

fn outcome(frames: &[&[u8]], end: Result<usize, FrameError>) -> Outcome {
    Outcome {
        frames: frames.iter().map(|f| f.to_vec()).collect(),
        end,
    }
}

/// Feeds `reads` in order the way `Framed` does: decode every complete frame, keep the bytes of
/// an incomplete one and append the next read to them; stop at the first error.
fn feed<'a, C: Codec>(mut codec: C, reads: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut rbuf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    for read in reads {
        rbuf.extend_from_slice(read);
        let mut pos = 0;
        while pos < rbuf.len() {
            let rest = &rbuf[pos..];
            let decoded = match codec.decode(rest) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(err) => {
                    return Outcome {
                        frames,
                        end: Err(err),
                    };
                }
            };
            let Decoded { payload, consumed } = decoded;
            assert!(
                consumed >= 1 && consumed <= rest.len(),
                "consumed {consumed}"
            );
            assert!(payload.start <= payload.end && payload.end <= consumed);
            frames.push(rest[payload].to_vec());
            pos += consumed;
        }
        rbuf.drain(..pos);
    }
    Outcome {
        frames,
        end: Ok(rbuf.len()),
    }
}

/// Decodes `data` as one read, one byte per read and, if it is at most 4 KiB, as two reads split
/// at every offset; all must agree. Returns the outcome.
fn decode_every_way<C: Codec + Clone>(codec: &C, name: &str, data: &[u8]) -> Outcome {
    let whole = feed(codec.clone(), [data]);
    let bytewise = feed(codec.clone(), data.chunks(1));
    assert_eq!(bytewise, whole, "{name}: one byte per read");
    if data.len() <= 4096 {
        for split in 0..=data.len() {
            let (a, b) = data.split_at(split);
            let got = feed(codec.clone(), [a, b]);
            assert_eq!(got, whole, "{name}: split at {split}");
        }
    }
    whole
}

/// `SimpleFrame` as documented: `0x01`, a big-endian `u16` length, the payload, `0x17`.
fn reference_simple(data: &[u8]) -> Outcome {
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

/// `LengthPrefixed::new(max)` as documented: a big-endian `u32` length of at most `max` (capped
/// at `u32::MAX`), rejected as soon as the header is complete, then the payload.
fn reference_length(max: usize, data: &[u8]) -> Outcome {
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

/// The files of `fuzz/regressions/<target>`, sorted by name.
fn regression_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "regressions", target]
        .iter()
        .collect();
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Checks that every file with a documented outcome is there (and so was checked).
fn check_named(target: &str, files: &[(String, Vec<u8>)], named: &[&str]) {
    for name in named {
        assert!(
            files.iter().any(|(n, _)| n == name),
            "fuzz/regressions/{target}/{name} is missing"
        );
    }
}

fn frames_of(payloads: &[&[u8]]) -> Vec<Vec<u8>> {
    payloads.iter().map(|p| p.to_vec()).collect()
}

/// The documented outcome of each hand-made `decode_simple` input.
fn simple_expected(name: &str) -> Option<Outcome> {
    use FrameError::*;
    Some(match name {
        "empty" => outcome(&[], Ok(0)),
        "bad-start-byte" => outcome(&[], Err(BadStartByte { found: 0x02 })),
        "bad-start-after-frame" => outcome(&[b"ok"], Err(BadStartByte { found: 0xee })),
        "bad-end-byte" => outcome(&[], Err(BadEndByte { found: 0x18 })),
        "bad-end-byte-empty-payload" => outcome(&[], Err(BadEndByte { found: 0x00 })),
        "max-payload-65535" => outcome(&[&[0x17; 65535]], Ok(0)),
        "header-ffff-incomplete" => outcome(&[], Ok(5)),
        "truncated" => outcome(&[b"hello"], Ok(5)),
        "split-every-byte" => Outcome {
            frames: frames_of(&[b"hello", b"", b"\x01\x17\x00", &[0x01; 300], b"x"]),
            end: Ok(0),
        },
        _ => return None,
    })
}

#[test]
fn decode_simple_regressions() {
    let files = regression_files("decode_simple");
    for (name, data) in &files {
        let got = decode_every_way(&SimpleFrame, name, data);
        assert_eq!(got, reference_simple(data), "{name}: codec vs reference");
        if let Some(want) = simple_expected(name) {
            assert_eq!(got, want, "{name}: documented outcome");
        }
    }
    check_named(
        "decode_simple",
        &files,
        &[
            "empty",
            "bad-start-byte",
            "bad-start-after-frame",
            "bad-end-byte",
            "bad-end-byte-empty-payload",
            "max-payload-65535",
            "header-ffff-incomplete",
            "truncated",
            "split-every-byte",
        ],
    );
}

/// The bounds the `decode_length` target uses; keep in step with `LENGTH_BOUNDS` in
/// `fuzz/src/lib.rs`.
const LENGTH_BOUNDS: [usize; 3] = [4096, LengthPrefixed::DEFAULT_MAX_FRAME_LEN, usize::MAX];

/// The documented outcome of each hand-made `decode_length` input, for each of
/// [`LENGTH_BOUNDS`].
fn length_expected(name: &str) -> Option<[Outcome; 3]> {
    const DEFAULT: usize = LengthPrefixed::DEFAULT_MAX_FRAME_LEN;
    let too_large = |len: u64, max: usize| outcome(&[], Err(FrameError::TooLarge { len, max }));
    let all = |o: fn() -> Outcome| [o(), o(), o()];
    Some(match name {
        "empty" => all(|| outcome(&[], Ok(0))),
        "len-ffffffff" => [
            too_large(0xffff_ffff, 4096),
            too_large(0xffff_ffff, DEFAULT),
            // Accepted by an unbounded codec: it waits for 4 GiB, reserving nothing.
            outcome(&[], Ok(4)),
        ],
        "len-ffffffff-then-bytes" => [
            too_large(0xffff_ffff, 4096),
            too_large(0xffff_ffff, DEFAULT),
            outcome(&[], Ok(7)),
        ],
        "len-4097" => [
            too_large(4097, 4096),
            outcome(&[], Ok(5)),
            outcome(&[], Ok(5)),
        ],
        "exact-4096" => {
            let payload: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
            let one = || Outcome {
                frames: vec![payload.clone()],
                end: Ok(0),
            };
            [one(), one(), one()]
        }
        "default-plus-one" => [
            too_large(DEFAULT as u64 + 1, 4096),
            too_large(DEFAULT as u64 + 1, DEFAULT),
            outcome(&[], Ok(4)),
        ],
        "zero-length-frames" => all(|| outcome(&[b"", b"", b""], Ok(0))),
        "short-header" => all(|| outcome(&[], Ok(3))),
        "frames-then-too-large" => [
            outcome(
                &[b"hi"],
                Err(FrameError::TooLarge {
                    len: 65535,
                    max: 4096,
                }),
            ),
            outcome(&[b"hi"], Ok(4)),
            outcome(&[b"hi"], Ok(4)),
        ],
        "split-every-byte" => all(|| Outcome {
            frames: frames_of(&[b"hello", b"", b"\x00\x00\x00\x05", &[0; 300], b"x"]),
            end: Ok(0),
        }),
        _ => return None,
    })
}

#[test]
fn decode_length_regressions() {
    let files = regression_files("decode_length");
    for (name, data) in &files {
        let want = length_expected(name);
        for (i, max) in LENGTH_BOUNDS.into_iter().enumerate() {
            let label = format!("{name} (max {max})");
            let got = decode_every_way(&LengthPrefixed::new(max), &label, data);
            assert_eq!(
                got,
                reference_length(max, data),
                "{label}: codec vs reference"
            );
            if let Some(want) = &want {
                assert_eq!(got, want[i], "{label}: documented outcome");
            }
        }
    }
    check_named(
        "decode_length",
        &files,
        &[
            "empty",
            "len-ffffffff",
            "len-ffffffff-then-bytes",
            "len-4097",
            "exact-4096",
            "default-plus-one",
            "zero-length-frames",
            "short-header",
            "frames-then-too-large",
            "split-every-byte",
        ],
    );
}
