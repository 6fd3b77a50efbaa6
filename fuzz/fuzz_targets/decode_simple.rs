//! Raw bytes through `SimpleFrame`, decoded by the library's `Deframer` (`Framed`'s read side);
//! see `hydrogen_fuzz::check_simple`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hydrogen_fuzz::check_simple(data);
});
