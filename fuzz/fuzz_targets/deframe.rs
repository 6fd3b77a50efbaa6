//! A scripted socket (read sizes, `WouldBlock`, `Interrupted`, budgets, EOF) played to the
//! library's `Deframer::read_from`, as `Framed::recv` reads; see `hydrogen_fuzz::check_deframe`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hydrogen_fuzz::check_deframe(data));
