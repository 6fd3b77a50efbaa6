//! What the echo and chat examples share: their command line and their log set-up. Not an
//! example itself (Cargo builds only `examples/*.rs` and `examples/*/main.rs`).

// Each example uses the part it needs.
#![allow(dead_code)]

use std::io;

use hydrogen::Config;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The framing chosen with `--framing`.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    Simple,
    U32,
}

/// The parsed command line.
pub struct Args {
    pub config: Config,
    pub framing: Framing,
}

/// Splits `HOST:PORT` on its last ':'; `[::1]:PORT` gives host `::1`.
pub fn parse_addr(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--addr {s:?}: expected HOST:PORT"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("--addr {s:?}: empty host"));
    }
    let port = port
        .parse()
        .map_err(|_| format!("--addr {s:?}: invalid port {port:?}"))?;
    Ok((host.to_string(), port))
}

/// Parses `--addr HOST:PORT`, `--framing simple|u32` and `--threads N` over `config`'s values;
/// `Ok(None)` means `--help`.
pub fn parse_args(mut config: Config) -> Result<Option<Args>, String> {
    let mut framing = Framing::Simple;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => (config.addr, config.port) = parse_addr(&value("--addr")?)?,
            "--framing" => {
                framing = match value("--framing")?.as_str() {
                    "simple" => Framing::Simple,
                    "u32" => Framing::U32,
                    other => {
                        return Err(format!(
                            "--framing {other:?}: expected \"simple\" or \"u32\""
                        ));
                    }
                }
            }
            "--threads" => {
                let v = value("--threads")?;
                config.max_threads = match v.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(format!("--threads {v:?}: expected a number of at least 1")),
                };
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Args { config, framing }))
}

/// Logs to stderr at the level `RUST_LOG` asks for, warnings by default.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::builder()
                .with_default_directive(LevelFilter::WARN.into())
                .from_env_lossy(),
        )
        .with_writer(io::stderr)
        .init();
}
