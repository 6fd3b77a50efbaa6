//! `loadgen`: drives an echo server and verifies every reply. See `hydrogen_bench::load`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use hydrogen_bench::load;

fn main() -> ExitCode {
    // Usage errors exit with status 2, `--help` with 0.
    let opts = load::parse_args(std::env::args_os()).unwrap_or_else(|err| err.exit());
    match load::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: error: {err}");
            ExitCode::FAILURE
        }
    }
}
