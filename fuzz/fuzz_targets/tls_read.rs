//! Arbitrary bytes from a client, read by the server-side TLS stream; see
//! `hydrogen_fuzz::tls::check_tls_read`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hydrogen_fuzz::tls::check_tls_read(data));
