//! Raw bytes through `LengthPrefixed` with bounds 4096, the default and none, decoded by the
//! library's `Deframer` (`Framed`'s read side); see `hydrogen_fuzz::check_length`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hydrogen_fuzz::check_length(data);
});
