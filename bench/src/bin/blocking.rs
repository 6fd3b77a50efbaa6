//! `blocking`: runs `blocking_load` against blocking-work servers and prints a Markdown table.
//!
//! For each round, for each server NAME of `--servers` in turn (so rounds are interleaved), it
//! starts a fresh `NAME_blocking` found next to itself with `--addr 127.0.0.1:0 --threads T
//! --work-ms M --pool P` and any `--server-args`, reads the port from its `listening on` line,
//! runs `blocking_load --conns C --secs S --warmup W --work-ms M` against it, and stops it
//! (SIGTERM, SIGKILL after 3 s). The table gives, per server, the median over its successful
//! rounds (and the range, with more than one round) of requests per second, the ideal rate
//! `C * 1000 / M`, the ratio to it, p50 and p99 latency, and p99 over the work time. See
//! `hydrogen_bench::blocking` for what a blocking server does and `bench/README.md`.
//!
//! A failed run (the server does not start or dies, blocking_load reports an error) is reported
//! on stderr and under the table, left out of the medians, and makes the exit status 1; so does a
//! server that does not exit with status 0 on SIGTERM.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use hydrogen_bench::blocking::MAX_WORK_MS;
use hydrogen_bench::child::{
    Guard, describe, kill_children_on_signals, line_reader, sibling_binaries, start_listening,
};
use hydrogen_bench::cli::{self, List};
use hydrogen_bench::report::{self, Stat};
use hydrogen_bench::server_cli;

const NAME: &str = "blocking";
const LOAD: &str = "blocking_load";
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// On top of warm-up and window for blocking_load: its connect bound (10 s), one stall bound
/// (10 s or ten times the work) for the last requests, and some slack.
const LOAD_SLACK: Duration = Duration::from_secs(30);

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(
    // A flag given twice: the last one counts, as in the other binaries.
    args_override_self = true,
    name = NAME,
    about = "Runs blocking_load against each blocking-work server NAME_blocking (fresh process \
             per run, servers interleaved within each round) and prints a Markdown table of the \
             medians.",
    after_help = "The server binaries and blocking_load must sit next to this executable:\n\
                  build with `cargo build --release -p hydrogen-bench`."
)]
struct Cli {
    /// Comma-separated server names, in run order; NAME runs the binary NAME_blocking
    #[arg(long, value_name = "LIST", default_value_t = List::of(&["tokio"]),
          value_parser = cli::list_of_names)]
    servers: List,
    /// Rounds per server; the table shows the median
    #[arg(long, value_name = "R", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Measured window per run, seconds
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = cli::secs(0.1, 600.0))]
    secs: f64,
    /// Warm-up before the window, seconds
    #[arg(long, value_name = "W", default_value_t = 1.0, value_parser = cli::secs(0.0, 600.0))]
    warmup: f64,
    /// Connections, one request in flight each
    #[arg(long, value_name = "C", default_value_t = 50,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    conns: usize,
    /// Blocking work per request, milliseconds
    #[arg(long, value_name = "M", default_value_t = 20,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_WORK_MS))]
    work_ms: u64,
    /// The servers' --pool: most threads running blocking work at once
    #[arg(long, value_name = "P", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pool: usize,
    /// The servers' --threads: I/O worker threads
    #[arg(long, value_name = "T", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    threads: usize,
    /// More arguments for every server, split on whitespace (e.g. --server-args='--foo 1')
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        default_value = ""
    )]
    server_args: String,
}

/// What one run measured (from blocking_load's `RESULT` line).
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// One run of one server.
struct Run {
    server: String,
    round: u32,
    result: Result<Figures, String>,
    /// How the server ended when stopped ("0" is the expected status); `None` if it never
    /// started.
    exit: Option<String>,
}

impl Cli {
    fn ideal_rps(&self) -> f64 {
        self.conns as f64 * 1000.0 / self.work_ms as f64
    }

    /// The stall bound of blocking_load for this work.
    fn stall(&self) -> Duration {
        Duration::from_secs(10).max(Duration::from_millis(self.work_ms) * 10)
    }
}

/// The figures of a `RESULT` line.
fn figures(result: &BTreeMap<String, String>) -> Result<Figures, String> {
    let get = |k: &str| -> Result<f64, String> {
        result
            .get(k)
            .ok_or(format!("RESULT line without {k}="))?
            .parse::<f64>()
            .map_err(|_| format!("RESULT line: bad value for {k}"))
    };
    Ok(Figures {
        rps: get("rps")?,
        p50_us: get("p50_us")?,
        p99_us: get("p99_us")?,
    })
}

/// Runs blocking_load against `addr`; its figures.
fn load(cli: &Cli, bin: &Path, addr: std::net::SocketAddr) -> Result<Figures, String> {
    let mut child = Command::new(bin)
        .args(["--addr", &addr.to_string()])
        .args(["--conns", &cli.conns.to_string()])
        .args(["--secs", &cli.secs.to_string()])
        .args(["--warmup", &cli.warmup.to_string()])
        .args(["--work-ms", &cli.work_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut guard = Guard::new(child);
    let lines = line_reader(stdout);
    let errors = line_reader(stderr);
    let limit = Duration::from_secs_f64(cli.secs + cli.warmup) + cli.stall() + LOAD_SLACK;
    let deadline = Instant::now() + limit;
    let mut result = None;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(r) = report::parse_result(&line) {
                    result = Some(r);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "{LOAD} did not finish within {:.0} s; killed",
                    limit.as_secs_f64()
                ));
            }
        }
    }
    let status = guard
        .wait_for(Duration::from_secs(10))?
        .ok_or(format!("{LOAD} closed its stdout but did not exit"))?;
    // It has exited: its stderr reaches EOF promptly.
    let mut last_err = None;
    let stderr_deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(line) =
        errors.recv_timeout(stderr_deadline.saturating_duration_since(Instant::now()))
    {
        last_err = Some(line);
    }
    if !status.success() {
        return Err(format!(
            "{LOAD} failed ({}): {}",
            describe(status),
            last_err.unwrap_or_default()
        ));
    }
    figures(&result.ok_or(format!("{LOAD} printed no RESULT line"))?)
}

/// One run: a fresh server, blocking_load against it, the server stopped.
fn run_one(cli: &Cli, bin_dir: &Path, server: &str, round: u32) -> Run {
    let bin = bin_dir.join(format!("{server}_blocking"));
    let (threads, work_ms, pool) = (
        cli.threads.to_string(),
        cli.work_ms.to_string(),
        cli.pool.to_string(),
    );
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--threads",
        &threads,
        "--work-ms",
        &work_ms,
        "--pool",
        &pool,
    ];
    args.extend(cli.server_args.split_whitespace());
    let mut run = Run {
        server: server.to_string(),
        round,
        result: Err("not run".to_string()),
        exit: None,
    };
    // The servers' stderr is ours: a warning of theirs shows up beside the progress lines.
    let (mut guard, addr) = match start_listening(&bin, &args, Stdio::inherit()) {
        Ok(started) => started,
        Err(e) => {
            run.result = Err(e);
            return run;
        }
    };
    run.result = load(cli, &bin_dir.join(LOAD), addr);
    if let Ok(Some(status)) = guard.child.try_wait() {
        let e = format!(
            "{server}_blocking exited during the run ({})",
            describe(status)
        );
        run.result = Err(match run.result {
            Ok(_) => e,
            Err(load) => format!("{e}; {load}"),
        });
    }
    run.exit = Some(guard.stop(STOP_TIMEOUT));
    run
}

/// `12,345` of a rate, `20.1` of microseconds as milliseconds, three decimals of a ratio.
fn rate(x: f64) -> String {
    report::thousands(x)
}
fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}
fn x3(x: f64) -> String {
    format!("{x:.3}")
}

/// The median, and the range when the values differ.
fn cell(stat: Option<Stat>, fmt: fn(f64) -> String, spread: bool) -> String {
    match stat {
        None => "n/a".to_string(),
        Some(s) if spread && s.min != s.max => {
            format!("{} ({}–{})", fmt(s.median), fmt(s.min), fmt(s.max))
        }
        Some(s) => fmt(s.median),
    }
}

/// The Markdown report: settings, the table, then failures and unclean exits.
fn table(cli: &Cli, runs: &[Run]) -> String {
    let ideal = cli.ideal_rps();
    let work_us = cli.work_ms as f64 * 1000.0;
    let spread = cli.rounds > 1;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Blocking work: {} connections, one request at a time each, {} ms of blocking work per \
         request (pool {}, {} I/O threads); median of {} round(s){}, {} s window after {} s \
         warm-up.\n",
        cli.conns,
        cli.work_ms,
        cli.pool,
        cli.threads,
        cli.rounds,
        if spread {
            " (range in parentheses)"
        } else {
            ""
        },
        cli.secs,
        cli.warmup
    );
    md.push_str("| server | req/s | ideal req/s | x ideal | p50 ms | p99 ms | p99 / work |\n");
    md.push_str("|---|--:|--:|--:|--:|--:|--:|\n");
    for server in &cli.servers.0 {
        let ok: Vec<&Figures> = runs
            .iter()
            .filter(|r| &r.server == server)
            .filter_map(|r| r.result.as_ref().ok())
            .collect();
        let stat = |f: fn(&Figures) -> f64| Stat::of(ok.iter().map(|r| f(r)));
        let (rps, p50, p99) = (stat(|f| f.rps), stat(|f| f.p50_us), stat(|f| f.p99_us));
        let _ = writeln!(
            md,
            "| {server} | {} | {} | {} | {} | {} | {} |",
            cell(rps, rate, spread),
            rate(ideal),
            rps.map_or("n/a".to_string(), |s| x3(s.median / ideal)),
            cell(p50, ms, spread),
            cell(p99, ms, spread),
            p99.map_or("n/a".to_string(), |s| x3(s.median / work_us)),
        );
    }
    let failed: Vec<&Run> = runs.iter().filter(|r| r.result.is_err()).collect();
    if !failed.is_empty() {
        md.push_str("\nFailed runs (left out of the medians):\n\n");
        for r in failed {
            if let Err(e) = &r.result {
                let _ = writeln!(md, "- {} round {}: {e}", r.server, r.round);
            }
        }
    }
    let unclean: Vec<(&Run, &str)> = runs
        .iter()
        .filter_map(|r| Some((r, r.exit.as_deref()?)))
        .filter(|(_, exit)| *exit != "0")
        .collect();
    if !unclean.is_empty() {
        md.push_str("\nServers that did not exit with status 0 on SIGTERM:\n\n");
        for (r, exit) in unclean {
            let _ = writeln!(md, "- {} round {}: {exit}", r.server, r.round);
        }
    }
    md
}

/// One progress line for stderr.
fn progress(cli: &Cli, run: &Run) -> String {
    let exit = match run.exit.as_deref() {
        None | Some("0") => String::new(),
        Some(e) => format!(" (server exit: {e})"),
    };
    match &run.result {
        Ok(f) => format!(
            "{:.0} req/s ({:.3}x ideal) p50={:.2}ms p99={:.2}ms{exit}",
            f.rps,
            f.rps / cli.ideal_rps(),
            f.p50_us / 1000.0,
            f.p99_us / 1000.0
        ),
        Err(e) => format!("FAILED: {e}{exit}"),
    }
}

/// Everything; `Ok(false)` if a run failed or a server did not exit cleanly.
fn run(cli: &Cli) -> Result<bool, String> {
    let names: Vec<String> = cli
        .servers
        .0
        .iter()
        .map(|s| format!("{s}_blocking"))
        .chain([LOAD.to_string()])
        .collect();
    let bin_dir: PathBuf = sibling_binaries(&names)?;
    server_cli::raise_nofile_limit();
    kill_children_on_signals(NAME);
    let total = cli.rounds as usize * cli.servers.0.len();
    let mut runs = Vec::with_capacity(total);
    for round in 1..=cli.rounds {
        for server in &cli.servers.0 {
            eprint!(
                "[{:>2}/{total}] {server:<10} round {round} ",
                runs.len() + 1
            );
            let run = run_one(cli, &bin_dir, server, round);
            eprintln!("{}", progress(cli, &run));
            runs.push(run);
        }
    }
    println!("{}", table(cli, &runs));
    Ok(runs
        .iter()
        .all(|r| r.result.is_ok() && r.exit.as_deref() == Some("0")))
}

fn main() -> ExitCode {
    // Usage errors exit with status 2, `--help` with 0.
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("{NAME}: error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(v: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once(&NAME).chain(v))
    }

    #[test]
    fn arguments() {
        Cli::command().debug_assert();
        let c = args(&[]).unwrap();
        assert_eq!(c.servers.0, ["tokio"]);
        assert_eq!((c.rounds, c.secs, c.warmup), (3, 5.0, 1.0));
        assert_eq!((c.conns, c.work_ms, c.pool, c.threads), (50, 20, 64, 2));
        assert_eq!(c.server_args, "");
        assert_eq!(c.ideal_rps(), 2500.0);
        let c = args(&[
            "--servers",
            "hydrogen,tokio",
            "--rounds",
            "1",
            "--secs",
            "3",
            "--conns",
            "10",
            "--work-ms",
            "5",
            "--pool",
            "8",
            "--server-args",
            "--extra 1",
        ])
        .unwrap();
        assert_eq!(c.servers.0, ["hydrogen", "tokio"]);
        assert_eq!((c.rounds, c.secs), (1, 3.0));
        assert_eq!((c.conns, c.work_ms, c.pool), (10, 5, 8));
        assert_eq!(c.server_args, "--extra 1");
        assert_eq!(c.ideal_rps(), 2000.0);
        let c = args(&["--server-args=--a --b"]).unwrap();
        assert_eq!(
            c.server_args.split_whitespace().collect::<Vec<_>>(),
            ["--a", "--b"]
        );
        for bad in [
            &["--servers", "../x"][..],
            &["--rounds", "0"],
            &["--work-ms", "0"],
            &["--conns", "0"],
            &["--bogus"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn result_line_and_table() {
        let line = "RESULT mode=blocking conns=50 work_ms=20 secs=3.00 requests=7400 rps=2466.7 \
                    p50_us=20100.00 p99_us=21000.00 p999_us=22000.00 max_us=23000.00 \
                    ideal_rps=2500.0 ratio_to_ideal=0.9867 p99_over_work=1.0500 errors=0";
        let f = figures(&report::parse_result(line).unwrap()).unwrap();
        assert_eq!(
            f,
            Figures {
                rps: 2466.7,
                p50_us: 20100.0,
                p99_us: 21000.0
            }
        );
        assert!(figures(&report::parse_result("RESULT rps=1").unwrap()).is_err());

        let cli = args(&["--servers", "tokio,hydrogen", "--rounds", "2"]).unwrap();
        let ok = |rps| Figures { rps, ..f.clone() };
        let runs = vec![
            Run {
                server: "tokio".into(),
                round: 1,
                result: Ok(ok(2400.0)),
                exit: Some("0".into()),
            },
            Run {
                server: "hydrogen".into(),
                round: 1,
                result: Err("boom".into()),
                exit: Some("signal 9".into()),
            },
            Run {
                server: "tokio".into(),
                round: 2,
                result: Ok(ok(2500.0)),
                exit: Some("0".into()),
            },
        ];
        let md = table(&cli, &runs);
        assert!(
            md.contains("| tokio | 2,450 (2,400–2,500) | 2,500 | 0.980 | 20.10 | 21.00 | 1.050 |"),
            "{md}"
        );
        assert!(
            md.contains("| hydrogen | n/a | 2,500 | n/a | n/a | n/a | n/a |"),
            "{md}"
        );
        assert!(md.contains("- hydrogen round 1: boom"), "{md}");
        assert!(md.contains("- hydrogen round 1: signal 9"), "{md}");
    }
}
