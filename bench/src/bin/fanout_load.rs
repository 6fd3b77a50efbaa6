//! `fanout_load`: drives a chat server (every frame relayed to every other member) and checks
//! every delivery. See `hydrogen_bench::fanout`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use hydrogen_bench::fanout;

fn main() -> ExitCode {
    // Usage errors exit with status 2, `--help` with 0.
    let opts = fanout::parse_args(std::env::args_os()).unwrap_or_else(|err| err.exit());
    match fanout::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fanout_load: error: {err}");
            ExitCode::FAILURE
        }
    }
}
