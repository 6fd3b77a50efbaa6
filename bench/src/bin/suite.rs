//! `suite`: runs loadgen against the hydrogen, tokio and mio echo servers, scenario by scenario,
//! round by round, each run on a fresh server process, and writes a Markdown report, a CSV file
//! and an SVG chart. See `bench/README.md`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use hydrogen_bench::child::{
    Guard, cpu_ticks, describe, kill_children_on_signals, line_reader, rss_kib, sibling_binaries,
    start_server,
};
use hydrogen_bench::cli::{self, List};
use hydrogen_bench::load::Mode;
use hydrogen_bench::report::{self, Case, Run, Settings};

const ALL_SERVERS: [&str; 3] = ["hydrogen", "tokio", "mio"];
const ALL_SCENARIOS: [&str; 7] = [
    "latency", "c100", "c1000", "large", "idle", "churn", "sweep",
];
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Slack on top of warm-up and window for loadgen (opening 10,000 connections, checks).
const LOADGEN_SLACK: Duration = Duration::from_secs(90);

/// The command line; [`Cli::args`] fills in the defaults that depend on `--smoke`.
#[derive(Debug, Parser)]
#[command(
    // A flag given twice: the last one counts, as with the hand-written parsers before.
    args_override_self = true,
    name = "suite",
    about = "Runs loadgen against each echo server (fresh process per run, servers rotated \
             within each round) and writes OUT/results.md, OUT/results.csv and OUT/chart.svg.",
    after_help = "The server binaries and loadgen must sit next to this executable:\n\
                  build with `cargo build --release -p hydrogen-bench`."
)]
struct Cli {
    /// Rounds per scenario (default 3; --smoke: 1)
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: Option<u32>,
    /// Measured window per run, seconds (default 5; --smoke: 1)
    #[arg(long, value_name = "S", value_parser = cli::secs(0.1, 600.0))]
    secs: Option<f64>,
    /// Warm-up before the window, seconds (default 1; --smoke: 0.5)
    #[arg(long, value_name = "W", value_parser = cli::secs(0.0, 600.0))]
    warmup: Option<f64>,
    /// Comma-separated, from hydrogen,tokio,mio, in run order; any other NAME runs the binary
    /// NAME_echo found next to the suite
    #[arg(long, value_name = "LIST", default_value_t = List::of(&ALL_SERVERS),
          value_parser = cli::list_of_names)]
    servers: List,
    /// Comma-separated, from latency,c100,c1000,large,idle,churn,sweep
    #[arg(long, value_name = "LIST", default_value_t = List::of(&ALL_SCENARIOS),
          value_parser = cli::list_of(&ALL_SCENARIOS))]
    scenarios: List,
    /// A quick check: 1 round, 1 s windows, 0.5 s warm-up, at most 100 connections (idle: 500),
    /// sweep 1/10/100; explicit flags still win
    #[arg(long)]
    smoke: bool,
    /// Output directory
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
}

#[derive(Debug, PartialEq)]
struct Args {
    rounds: u32,
    secs: f64,
    warmup: f64,
    servers: Vec<String>,
    scenarios: Vec<String>,
    smoke: bool,
    out: PathBuf,
}

impl Cli {
    fn args(self) -> Args {
        let smoke = self.smoke;
        let mut scenarios = self.scenarios.0;
        // Run the scenarios in the canonical order whatever the order given.
        scenarios.sort_by_key(|s| ALL_SCENARIOS.iter().position(|a| a == s));
        Args {
            rounds: self.rounds.unwrap_or(if smoke { 1 } else { 3 }),
            secs: self.secs.unwrap_or(if smoke { 1.0 } else { 5.0 }),
            warmup: self.warmup.unwrap_or(if smoke { 0.5 } else { 1.0 }),
            servers: self.servers.0,
            scenarios,
            smoke,
            out: self.out,
        }
    }
}

/// The load configurations, in run order.
fn cases(args: &Args) -> Vec<Case> {
    let cap = |n: usize| if args.smoke { n.min(100) } else { n };
    let echo = |scenario: &'static str, name: String, conns, depth, size| Case {
        scenario,
        name,
        mode: Mode::Echo,
        conns,
        depth,
        size,
    };
    let mut out = Vec::new();
    for s in &args.scenarios {
        match s.as_str() {
            "latency" => out.push(echo("latency", s.clone(), 1, 1, 64)),
            "c100" => out.push(echo("c100", s.clone(), cap(100), 16, 64)),
            "c1000" => out.push(echo("c1000", s.clone(), cap(1000), 4, 64)),
            "large" => out.push(echo("large", s.clone(), cap(50), 4, 16 * 1024)),
            "idle" => out.push(Case {
                scenario: "idle",
                name: s.clone(),
                mode: Mode::Idle,
                conns: if args.smoke { 500 } else { 10_000 },
                depth: 1,
                size: 64,
            }),
            "churn" => out.push(Case {
                scenario: "churn",
                name: s.clone(),
                mode: Mode::Churn,
                conns: 8,
                depth: 1,
                size: 64,
            }),
            "sweep" => {
                let points: &[usize] = if args.smoke {
                    &[1, 10, 100]
                } else {
                    &[1, 10, 100, 1000, 10_000]
                };
                for &n in points {
                    // One connection, depth 1, 64 B is exactly the latency scenario: reuse it.
                    if n == 1 && args.scenarios.iter().any(|s| s == "latency") {
                        continue;
                    }
                    out.push(echo("sweep", format!("sweep-{n}"), n, 1, 64));
                }
            }
            _ => unreachable!("validated scenario"),
        }
    }
    out
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit; the servers and loadgen inherit
/// it (loadgen raises its own too).
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("suite: warning: cannot raise RLIMIT_NOFILE to {hard}: {e}");
    }
}

/// Everything a run needs besides its case.
struct Ctx {
    bin_dir: PathBuf,
    loadgen: PathBuf,
    secs: f64,
    warmup: f64,
    clk_tck: u64,
    logs: PathBuf,
}

/// One run: a fresh server, loadgen against it, the server's CPU and memory around the window.
fn measure(ctx: &Ctx, case: &Case, run: &mut Run, log: &mut File) -> Result<(), String> {
    let _ = writeln!(
        log,
        "=== {} round {} ({})",
        case.name,
        run.round,
        report::utc_now()
    );
    let (mut server, addr) = start_server(&ctx.bin_dir, &run.server, &["--threads", "2"], log)?;
    let pid = server.pid();
    run.rss_base_kib = Some(rss_kib(pid)?);

    let idle = case.mode == Mode::Idle;
    // Idle: at least 1 s of hold, for the memory to settle before it is sampled.
    let secs = if idle { ctx.secs.max(1.0) } else { ctx.secs };
    let warmup = if idle { 0.0 } else { ctx.warmup };
    let mut child = Command::new(&ctx.loadgen)
        .args(["--addr", &addr.to_string(), "--framing", "u32"])
        .args(["--mode", case.mode.name()])
        .args(["--conns", &case.conns.to_string()])
        .args(["--depth", &case.depth.to_string()])
        .args(["--size", &case.size.to_string()])
        .args(["--secs", &secs.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .args(["--threads", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", ctx.loadgen.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut loadgen = Guard::new(child);
    let lines = line_reader(stdout);
    let errors = line_reader(stderr);

    let deadline = Instant::now() + Duration::from_secs_f64(secs + warmup) + LOADGEN_SLACK;
    let mut ticks_start = None;
    let mut ticks_end = None;
    let mut result: Option<BTreeMap<String, String>> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line == "MEASURE_START" => {
                ticks_start = Some(cpu_ticks(pid)?);
                if idle {
                    // Let the server's memory settle: three samples 200 ms apart, keep the last.
                    let mut rss = 0;
                    for _ in 0..3 {
                        thread::sleep(Duration::from_millis(200));
                        rss = rss_kib(pid)?;
                    }
                    run.rss_start_kib = Some(rss);
                } else {
                    run.rss_start_kib = Some(rss_kib(pid)?);
                }
            }
            Ok(line) if line == "MEASURE_END" => {
                ticks_end = Some(cpu_ticks(pid)?);
                run.rss_end_kib = Some(rss_kib(pid)?);
            }
            Ok(line) => {
                if let Some(r) = report::parse_result(&line) {
                    result = Some(r);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "loadgen did not finish within {:.0} s; killed",
                    (Duration::from_secs_f64(secs + warmup) + LOADGEN_SLACK).as_secs_f64()
                ));
            }
        }
    }
    let status = loadgen
        .wait_for(Duration::from_secs(10))?
        .ok_or("loadgen closed its stdout but did not exit")?;
    // loadgen has exited: its stderr reaches EOF promptly.
    let mut stderr_text = Vec::new();
    let stderr_deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(line) =
        errors.recv_timeout(stderr_deadline.saturating_duration_since(Instant::now()))
    {
        stderr_text.push(line);
    }
    if !status.success() {
        let msg = stderr_text.last().cloned().unwrap_or_default();
        return Err(format!("loadgen failed ({}): {msg}", describe(status)));
    }
    if let Ok(Some(status)) = server.child.try_wait() {
        return Err(format!(
            "{}_echo exited during the run ({})",
            run.server,
            describe(status)
        ));
    }
    let (Some(t0), Some(t1)) = (ticks_start, ticks_end) else {
        return Err("loadgen did not print MEASURE_START and MEASURE_END".to_string());
    };
    run.cpu_ticks = Some(t1.saturating_sub(t0));
    let result = result.ok_or("loadgen printed no RESULT line")?;
    run.set_result(&result)?;
    run.server_exit = server.stop(STOP_TIMEOUT);
    Ok(())
}

fn locate_binaries(servers: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let names: Vec<String> = servers
        .iter()
        .map(|s| format!("{s}_echo"))
        .chain(["loadgen".to_string()])
        .collect();
    let dir = sibling_binaries(&names)?;
    let loadgen = dir.join("loadgen");
    Ok((dir, loadgen))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn main() -> ExitCode {
    // Usage errors exit with status 2, `--help` with 0.
    let args = Cli::parse().args();
    match run_suite(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("suite: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; `Ok(false)` if some run failed.
fn run_suite(args: &Args) -> Result<bool, String> {
    let (bin_dir, loadgen) = locate_binaries(&args.servers)?;
    raise_nofile_limit();
    kill_children_on_signals("suite");
    let logs = args.out.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let ctx = Ctx {
        bin_dir,
        loadgen,
        secs: args.secs,
        warmup: args.warmup,
        clk_tck: procfs::ticks_per_second(),
        logs,
    };
    let mut log_files = BTreeMap::new();
    for s in &args.servers {
        let path = ctx.logs.join(format!("{s}.log"));
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        log_files.insert(s.clone(), f);
    }

    let cases = cases(args);
    let settings = Settings {
        rounds: args.rounds,
        secs: args.secs,
        warmup: args.warmup,
        servers: args.servers.clone(),
        clk_tck: ctx.clk_tck,
        smoke: args.smoke,
    };
    let total = cases.len() * args.rounds as usize * args.servers.len();
    eprintln!(
        "suite: {} cases x {} rounds x {} servers = {total} runs; results in {}",
        cases.len(),
        args.rounds,
        args.servers.len(),
        args.out.display()
    );
    let csv_path = args.out.join("results.csv");
    let started = Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    for case in &cases {
        for round in 1..=args.rounds {
            for server in &args.servers {
                let mut run = Run {
                    case: case.name.clone(),
                    scenario: case.scenario.to_string(),
                    server: server.clone(),
                    round,
                    mode: case.mode.name().to_string(),
                    conns: case.conns,
                    depth: case.depth,
                    size: case.size,
                    clk_tck: ctx.clk_tck,
                    ..Run::default()
                };
                let log = log_files.get_mut(server).expect("log file per server");
                eprint!(
                    "[{:>3}/{total}] {:<11} round {round} {:<9} ",
                    runs.len() + 1,
                    case.name,
                    server
                );
                if let Err(e) = measure(&ctx, case, &mut run, log) {
                    run.error = Some(e);
                }
                eprintln!("{}", progress(&run));
                runs.push(run);
                // Keep the raw results on disk as they come, in case the suite is interrupted.
                write(&csv_path, &report::csv(&runs))?;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    // A chart that cannot be drawn is left out; the tables are what matters.
    let chart = report::chart_svg(&cases, &runs, &settings).unwrap_or_else(|e| {
        eprintln!("suite: warning: {e}; no chart");
        None
    });
    if let Some(svg) = &chart {
        write(&args.out.join("chart.svg"), svg)?;
    }
    let md = report::markdown(&cases, &runs, &settings, chart.is_some());
    write(&args.out.join("results.md"), &md)?;
    println!("{}", report::tables(&cases, &runs, &settings));
    eprintln!(
        "suite: {total} runs in {:.0} s ({:.1} min); wrote {}, {}{}",
        elapsed,
        elapsed / 60.0,
        args.out.join("results.md").display(),
        csv_path.display(),
        if chart.is_some() {
            format!(", {}", args.out.join("chart.svg").display())
        } else {
            String::new()
        }
    );
    for s in &args.servers {
        let path = ctx.logs.join(format!("{s}.log"));
        let noisy = fs::read_to_string(&path)
            .map(|t| t.lines().filter(|l| !l.starts_with("=== ")).count())
            .unwrap_or(0);
        if noisy > 0 {
            eprintln!(
                "suite: note: {s}_echo wrote {noisy} line(s) to stderr, see {}",
                path.display()
            );
        }
    }
    let failures = runs.iter().filter(|r| r.error.is_some()).count();
    if failures > 0 {
        eprintln!("suite: {failures} run(s) failed; see results.md");
    }
    Ok(failures == 0)
}

/// One progress line for stderr.
fn progress(run: &Run) -> String {
    if let Some(e) = &run.error {
        return format!("FAILED: {e}");
    }
    let cpu = run
        .cpu_us_per_op()
        .map_or(String::new(), |c| format!(" cpu/op={c:.2}us"));
    let exit = if run.server_exit == "0" {
        String::new()
    } else {
        format!(" server exit: {}", run.server_exit)
    };
    match run.mode.as_str() {
        "idle" => format!(
            "rss/conn={:.0}B idle_cpu={:.0}ms ping_p99={:.0}us{exit}",
            run.rss_per_conn().unwrap_or(f64::NAN),
            run.cpu_ms().unwrap_or(f64::NAN),
            run.p99_us
        ),
        "churn" => format!("cps={:.0} p99={:.0}us{cpu}{exit}", run.rate, run.p99_us),
        _ => format!(
            "fps={:.0} p50={:.1}us p99={:.1}us{cpu}{exit}",
            run.rate, run.p50_us, run.p99_us
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(v: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once(&"suite").chain(v)).map(Cli::args)
    }

    #[test]
    fn arguments() {
        Cli::command().debug_assert();
        let a = args(&[]).unwrap();
        assert_eq!((a.rounds, a.secs, a.warmup, a.smoke), (3, 5.0, 1.0, false));
        assert_eq!(a.servers, ALL_SERVERS);
        assert_eq!(a.scenarios, ALL_SCENARIOS);
        assert_eq!(a.out, PathBuf::from("bench/results"));
        let a = args(&["--smoke"]).unwrap();
        assert_eq!((a.rounds, a.secs, a.warmup, a.smoke), (1, 1.0, 0.5, true));
        let a = args(&[
            "--smoke",
            "--rounds",
            "2",
            "--secs",
            "3",
            "--warmup",
            "0",
            "--servers",
            "mio, hydrogen,old_hydrogen,mio",
            "--scenarios",
            "sweep,latency",
            "--out",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!((a.rounds, a.secs, a.warmup), (2, 3.0, 0.0));
        assert_eq!(a.servers, ["mio", "hydrogen", "old_hydrogen"]);
        assert_eq!(a.scenarios, ["latency", "sweep"]);
        assert_eq!(a.out, PathBuf::from("/tmp/x"));
        let a = args(&["--servers", "mio", "--servers", "tokio"]).unwrap();
        assert_eq!(a.servers, ["tokio"]);
        let help = args(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        for bad in [
            &["--rounds", "0"][..],
            &["--rounds", "101"],
            &["--secs", "0.05"],
            &["--secs"],
            &["--warmup", "601"],
            &["--servers", "a,,b"],
            &["--servers", "../x"],
            &["--scenarios", "uploaders"],
            &["--scenarios", ","],
            &["--bogus"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
