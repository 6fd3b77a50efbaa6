//! Encode payloads, cut the stream anywhere, decode: the same payloads in the same order; see
//! `hydrogen_fuzz::check_roundtrip`.
#![no_main]

use hydrogen_fuzz::RoundtripInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: RoundtripInput| hydrogen_fuzz::check_roundtrip(&input));
