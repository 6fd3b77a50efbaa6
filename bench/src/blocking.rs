//! What the blocking-work benchmark shares: the command line of its servers, and the request
//! payload that `blocking_load` sends and checks.
//!
//! A *blocking* server answers each SimpleFrame request (`0x01`, u16 BE length, payload, `0x17`,
//! the [`Framing::Simple`](crate::server_cli::Framing::Simple) of the echo servers) with the same
//! payload, after running a piece of blocking work for it: `std::thread::sleep(work_ms)`, off the
//! I/O threads, on a pool of at most `--pool` threads. It is the stand-in for a handler that has
//! to call something blocking (a file, a database driver, a CPU-heavy step) per request. With N
//! connections each sending one request at a time, an ideal server answers
//! `N * 1000 / work_ms` requests per second (as long as N <= pool), each after `work_ms`.
//!
//! Every server binary `NAME_blocking` follows the same contract, which the `blocking` driver
//! relies on:
//!
//! - `--addr HOST:PORT` (default `127.0.0.1:0`), `--threads N` I/O threads (default 2),
//!   `--work-ms M` (default 20), `--pool P` (default 64); anything else prints the usage on
//!   stderr and exits with status 2. [`BlockingServerCli`] is the clap definition; servers with
//!   options of their own can flatten it into theirs.
//! - Once bound, exactly one line `listening on ADDR` goes to stdout
//!   ([`print_listening`](crate::server_cli::print_listening)), and nothing else.
//! - Every request frame is answered on its connection, in order, by a frame carrying the same
//!   payload, once its work is done.
//! - SIGINT and SIGTERM end the process with status 0.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, CommandFactory, FromArgMatches, Parser};

/// Payload bytes of a request: connection index (u64 BE), then sequence number (u64 BE).
pub const REQUEST: usize = 16;

/// Upper bound of `--work-ms`, for the servers and `blocking_load` alike: one minute.
pub const MAX_WORK_MS: u64 = 60_000;

/// The request payload of request `seq` on connection `conn`.
pub fn request(conn: u64, seq: u64) -> [u8; REQUEST] {
    let mut p = [0u8; REQUEST];
    p[..8].copy_from_slice(&conn.to_be_bytes());
    p[8..].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Checks that `reply` is the payload of request `seq` on connection `conn`, byte for byte.
///
/// # Errors
///
/// What differs: the length, or the connection and sequence number the reply carries (a reply
/// to another request, an earlier or later one, or to another connection's).
pub fn check_reply(conn: u64, seq: u64, reply: &[u8]) -> Result<(), String> {
    let want = request(conn, seq);
    if reply == want {
        return Ok(());
    }
    if reply.len() != REQUEST {
        return Err(format!(
            "connection {conn}: reply to request {seq} has {} payload bytes, expected {REQUEST}",
            reply.len()
        ));
    }
    let c = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    let s = u64::from_be_bytes(reply[8..].try_into().expect("8 bytes"));
    Err(format!(
        "connection {conn}: expected the reply to request {seq}, got one claiming connection {c}, \
         request {s}{}",
        if c == conn && s != seq {
            " (out of order)"
        } else {
            ""
        }
    ))
}

/// The options every blocking server takes (see the module documentation).
#[derive(Debug, Clone, Args)]
pub struct BlockingServerCli {
    /// Address to listen on (port 0: any free port)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0", value_parser = resolve)]
    pub addr: SocketAddr,
    /// I/O worker threads
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub threads: usize,
    /// Blocking work per request: std::thread::sleep of M milliseconds
    #[arg(long, value_name = "M", default_value_t = 20,
          value_parser = RangedU64ValueParser::<u64>::new().range(0..=MAX_WORK_MS))]
    pub work_ms: u64,
    /// Most threads running blocking work at once
    #[arg(long, value_name = "P", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub pool: usize,
}

/// A command of [`BlockingServerCli`] alone, for the servers without options of their own.
#[derive(Debug, Clone, Parser)]
#[command(
    // A flag given twice: the last one counts, as in the other binaries.
    args_override_self = true,
    about = "A blocking-work server for the benchmark: every SimpleFrame request is answered with \
             its own payload after WORK_MS of std::thread::sleep on a pool of at most P threads.",
    after_help = "Prints `listening on ADDR` once bound; exits with status 0 on SIGINT or SIGTERM."
)]
struct ServerCommand {
    #[command(flatten)]
    server: BlockingServerCli,
}

/// The parsed command line, as the servers use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingServerArgs {
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// I/O worker threads.
    pub threads: usize,
    /// The blocking work of one request.
    pub work: Duration,
    /// Most threads running blocking work at once.
    pub pool: usize,
}

impl From<BlockingServerCli> for BlockingServerArgs {
    fn from(cli: BlockingServerCli) -> BlockingServerArgs {
        BlockingServerArgs {
            addr: cli.addr,
            threads: cli.threads,
            work: Duration::from_millis(cli.work_ms),
            pool: cli.pool,
        }
    }
}

/// `--addr`: the first address `HOST:PORT` resolves to.
fn resolve(v: &str) -> Result<SocketAddr, String> {
    v.to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "resolves to nothing".to_string())
}

fn command(name: &'static str) -> clap::Command {
    ServerCommand::command().name(name).bin_name(name)
}

/// Parses the command line of the server called `name`. `--help` prints the usage and exits
/// with status 0; an error prints it on stderr and exits with status 2.
pub fn parse_args(name: &'static str) -> BlockingServerArgs {
    let matches = command(name).get_matches();
    ServerCommand::from_arg_matches(&matches)
        .unwrap_or_else(|err| err.format(&mut command(name)).exit())
        .server
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<BlockingServerArgs, clap::Error> {
        ServerCommand::try_parse_from(std::iter::once(&"tokio_blocking").chain(v))
            .map(|c| c.server.into())
    }

    #[test]
    fn arguments() {
        ServerCommand::command().debug_assert();
        command("tokio_blocking").debug_assert();
        let a = args(&[]).unwrap();
        assert_eq!(
            a,
            BlockingServerArgs {
                addr: "127.0.0.1:0".parse().unwrap(),
                threads: 2,
                work: Duration::from_millis(20),
                pool: 64,
            }
        );
        let a = args(&[
            "--addr",
            "127.0.0.1:9",
            "--threads",
            "4",
            "--work-ms",
            "0",
            "--pool",
            "8",
            "--pool",
            "16",
        ])
        .unwrap();
        assert_eq!((a.addr.port(), a.threads), (9, 4));
        assert_eq!((a.work, a.pool), (Duration::ZERO, 16));
        for bad in [
            &["--threads", "0"][..],
            &["--pool", "0"],
            &["--work-ms", "60001"],
            &["--work-ms", "-1"],
            &["--framing", "simple"],
            &["--threads"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
        let help = args(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn requests_and_replies() {
        let r = request(3, 0x0102);
        assert_eq!(r, [0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 2]);
        check_reply(3, 0x0102, &r).unwrap();
        let e = check_reply(3, 0x0103, &r).unwrap_err();
        assert!(e.contains("out of order"), "{e}");
        let e = check_reply(4, 0x0102, &r).unwrap_err();
        assert!(e.contains("claiming connection 3"), "{e}");
        assert!(!e.contains("out of order"), "{e}");
        let e = check_reply(3, 0x0102, &r[..15]).unwrap_err();
        assert!(e.contains("15 payload bytes"), "{e}");
        assert!(check_reply(3, 0x0102, &[r.as_slice(), &[0]].concat()).is_err());
    }
}
