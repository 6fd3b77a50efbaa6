//! `loadgen`: drives an echo server and verifies every reply. See `hydrogen_bench::load`.

use std::process::ExitCode;

use hydrogen_bench::load;

fn main() -> ExitCode {
    let opts = match load::parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{}", load::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("loadgen: error: {err}\n(run with --help for usage)");
            return ExitCode::from(2);
        }
    };
    match load::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: error: {err}");
            ExitCode::FAILURE
        }
    }
}
