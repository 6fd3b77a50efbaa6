//! Replays the fuzz regression inputs in `fuzz/regressions/` (see `fuzz/README.md`) with the
//! checks of the fuzz targets, so an input that once broke the framing is tried by every
//! `cargo test`, with no fuzzing tools.
//!
//! The checks are the fuzz targets' own: `fuzz/src/checks.rs` is compiled into this test too
//! (the root crate cannot depend on the fuzz crate, which needs libFuzzer). Every decode goes
//! through the library's `Deframer`, the read side of `Framed`.
//!
//! `decode_simple` and `decode_length` files are decoded as one read, as small reads and (when
//! short) as two reads split at every offset; all ways must agree, every `Decoded` must obey the
//! rules of `Codec::decode`, and the result must equal that of a reference decoder written from
//! the format's documentation. The hand-made files must also give the outcome listed below.
//! `deframe` files are scripts played to `Deframer::read_from` (see `Script::parse`).

use std::fs;
use std::path::PathBuf;

use hydrogen::codec::{FrameError, LengthPrefixed, SimpleFrame};

#[path = "../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use checks::{LENGTH_BOUNDS, Outcome, Script, Step, assert_same, feed};

fn outcome(frames: &[&[u8]], end: Result<usize, FrameError>) -> Outcome {
    Outcome::new(frames, end)
}

/// Checks that two reads split at every offset of `data` give `want` (for files up to 4 KiB).
fn check_every_split<C: hydrogen::Codec + Clone>(
    codec: &C,
    name: &str,
    data: &[u8],
    want: &Outcome,
) {
    if data.len() > 4096 {
        return;
    }
    for split in 0..=data.len() {
        let (a, b) = data.split_at(split);
        assert_same(
            &feed(codec.clone(), [a, b]),
            want,
            &format!("{name}: split at {split}"),
        );
    }
    assert_same(
        &feed(codec.clone(), data.chunks(1)),
        want,
        &format!("{name}: bytewise"),
    );
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
        let got = checks::check_simple(data);
        check_every_split(&SimpleFrame, name, data, &got);
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
        let got = checks::check_length(data);
        for (i, max) in LENGTH_BOUNDS.into_iter().enumerate() {
            let label = format!("{name} (max {max})");
            check_every_split(&LengthPrefixed::new(max), &label, data, &got[i]);
            if let Some(want) = &want {
                assert_eq!(got[i], want[i], "{label}: documented outcome");
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

/// The documented outcome of each hand-made `deframe` script: the payload lengths, then the end.
fn deframe_expected(name: &str) -> Option<(Vec<usize>, Result<usize, FrameError>)> {
    use FrameError::*;
    Some(match name {
        "empty" => (vec![], Ok(0)),
        "simple-small-reads" => (vec![5, 0, 300], Ok(0)),
        "length-adopt-large" => (vec![200_000], Ok(0)),
        "length-shrink-leftover" => (vec![200_000], Ok(6)),
        "length-4096-too-large" => (
            vec![2],
            Err(TooLarge {
                len: 4097,
                max: 4096,
            }),
        ),
        "simple-eof-mid-frame" => (vec![5], Ok(5)),
        "budgets-wouldblock-keep-batch" => ((0..10).collect(), Ok(0)),
        "simple-bad-end-in-buffer" => (vec![3], Err(BadEndByte { found: 0x00 })),
        "unbounded-claims-4gib" => (vec![], Ok(7)),
        _ => return None,
    })
}

#[test]
fn deframe_regressions() {
    let files = regression_files("deframe");
    for (name, data) in &files {
        checks::check_deframe(data);
        if let Some((lens, end)) = deframe_expected(name) {
            let want = Script::parse(data).reference();
            let got_lens: Vec<usize> = want.frames.iter().map(Vec::len).collect();
            assert_eq!(
                (got_lens, want.end),
                (lens, end),
                "{name}: documented outcome"
            );
        }
    }
    check_named(
        "deframe",
        &files,
        &[
            "empty",
            "simple-small-reads",
            "length-adopt-large",
            "length-shrink-leftover",
            "length-4096-too-large",
            "simple-eof-mid-frame",
            "budgets-wouldblock-keep-batch",
            "simple-bad-end-in-buffer",
            "unbounded-claims-4gib",
        ],
    );
}

/// The script format reads as `Script::parse` documents it.
#[test]
fn deframe_script_format() {
    let script = Script::parse(&[
        0x0d, // LengthPrefixed::new(4096), keep the batch, EOF
        0x01, 0xaa, 0xbb, // 2 raw bytes
        0x20, 0x02, // a 2-byte frame
        0x41, 0x00, 0x03, // a frame of 3 × 2 bytes
        0x62, // a read of at most 3 bytes
        0x81, 0x00, 0x04, // a read of at most 5 × 2
        0xa0, 0xc0, // WouldBlock, Interrupted
        0xe2, 0x00, 0x01, // a budget of 2 × 3
    ]);
    assert_eq!(
        (script.codec, script.keep_batch, script.eof),
        (1, true, true)
    );
    let mut wire = vec![0xaa, 0xbb, 0, 0, 0, 2, 0, 31];
    wire.extend_from_slice(&[0, 0, 0, 6]);
    wire.extend((0..6).map(|i| (i * 31 + 1) as u8));
    assert_eq!(script.wire, wire);
    assert_eq!(
        script.steps,
        [
            Step::Read(3),
            Step::Read(10),
            Step::WouldBlock,
            Step::Interrupted
        ]
    );
    assert_eq!(script.budgets, [6]);
}

/// What each `proxy_header` file must give: `Some(Ok(Some(len)))` a header of `len` bytes,
/// `Some(Ok(None))` more needed, `Some(Err(()))` refused.
fn proxy_expected(name: &str) -> Option<Result<Option<usize>, ()>> {
    Some(match name {
        "v1-tcp4" => Ok(Some(42)),
        "v1-tcp6" => Ok(Some(32)),
        "v1-unknown" => Ok(Some(15)),
        "v2-proxy-tlvs" => Ok(Some(16 + 12 + 14 + 6)),
        "v2-local" => Ok(Some(16)),
        "v1-partial" | "v2-partial" => Ok(None),
        "v1-too-long" | "v1-cr-without-lf" | "v2-tlv-overrun" | "v2-too-long" | "not-a-header" => {
            Err(())
        }
        _ => return None,
    })
}

#[test]
fn proxy_header_regressions() {
    let files = regression_files("proxy_header");
    check_named(
        "proxy_header",
        &files,
        &[
            "v1-tcp4",
            "v2-proxy-tlvs",
            "v2-local",
            "v2-too-long",
            "not-a-header",
        ],
    );
    for (name, data) in &files {
        let got = checks::check_proxy_header(data)
            .map(|parsed| parsed.map(|(_, len)| len))
            .map_err(|_| ());
        if let Some(want) = proxy_expected(name) {
            assert_eq!(got, want, "proxy_header/{name}");
        }
    }
}

/// The `tls_read` target's check (`fuzz/src/tls.rs`, compiled here too), with the TLS
/// feature.
#[cfg(feature = "tls")]
#[path = "../fuzz/src/tls.rs"]
mod tls_check;

/// Replays `fuzz/regressions/tls_read` through both TLS streams' read paths.
#[cfg(feature = "tls")]
#[test]
fn tls_read_regressions() {
    let files = regression_files("tls_read");
    check_named(
        "tls_read",
        &files,
        &[
            "plaintext-second-fatal-alert",
            "handshake-record-then-bad-record",
        ],
    );
    for (_, data) in &files {
        tls_check::check_tls_read(data);
    }
}
