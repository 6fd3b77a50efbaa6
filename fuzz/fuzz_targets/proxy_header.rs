//! Raw bytes as the start of a connection to a server with the PROXY protocol on, through
//! `hydrogen::proxy::parse_header`; see `hydrogen_fuzz::check_proxy_header`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hydrogen_fuzz::check_proxy_header(data);
});
