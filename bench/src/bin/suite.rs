//! `suite`: runs loadgen against the hydrogen, tokio and mio echo servers (and fanout_load
//! against the hydrogen and tokio chat servers), scenario by scenario, round by round, each run
//! on a fresh server process, and writes a Markdown report, a CSV file and an SVG chart. See
//! `bench/README.md`.
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
    start_binary,
};
use hydrogen_bench::cli::{self, List};
use hydrogen_bench::load::{Mode, Proxy};
use hydrogen_bench::report::{self, Case, Kind, Room, Run, Settings};
use hydrogen_bench::tls::{self, CertFiles};

const ALL_SERVERS: [&str; 3] = ["hydrogen", "tokio", "mio"];
const ALL_SCENARIOS: [&str; 15] = [
    "latency",
    "c100",
    "c1000",
    "large",
    "idle",
    "churn",
    "accept",
    "accept-proxy-v1",
    "accept-proxy-v2",
    "sweep",
    "fanout",
    "tls-latency",
    "tls-c100",
    "tls-handshake",
    "tls-idle",
];
/// The servers that must have a chat server (`NAME_chat`) for the fanout scenario; any other
/// name runs it only if it has one (mio has none).
const CHAT_SERVERS: [&str; 2] = ["hydrogen", "tokio"];
/// The fanout scenario's rooms: (name, room). `--smoke` runs [`SMOKE_ROOM`] instead.
const ROOMS: [(&str, Room); 3] = [
    (
        "fanout-1000",
        Room {
            receivers: 1000,
            senders: 4,
            rate: 200,
        },
    ),
    (
        "fanout-100",
        Room {
            receivers: 100,
            senders: 10,
            rate: 1000,
        },
    ),
    (
        "fanout-burst",
        Room {
            receivers: 100,
            senders: 10,
            rate: 5000,
        },
    ),
];
const SMOKE_ROOM: (&str, Room) = (
    "fanout-50",
    Room {
        receivers: 50,
        senders: 2,
        rate: 200,
    },
);
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
    about = "Runs loadgen against each echo server, and fanout_load against each chat server \
             (fresh process per run, servers rotated within each round), and writes \
             OUT/results.md, OUT/results.csv and OUT/chart.svg.",
    after_help = "The server binaries, loadgen and fanout_load must sit next to this \
                  executable:\nbuild with `cargo build --release -p hydrogen-bench`."
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
    /// NAME_echo found next to the suite (and NAME_chat for fanout, if there is one)
    #[arg(long, value_name = "LIST", default_value_t = List::of(&ALL_SERVERS),
          value_parser = cli::list_of_names)]
    servers: List,
    /// Comma-separated, from latency,c100,c1000,large,idle,churn,accept,accept-proxy-v1,
    /// accept-proxy-v2,sweep,fanout,tls-latency,tls-c100,tls-handshake,tls-idle
    #[arg(long, value_name = "LIST", default_value_t = List::of(&ALL_SCENARIOS),
          value_parser = cli::list_of(&ALL_SCENARIOS))]
    scenarios: List,
    /// A quick check: 1 round, 1 s windows, 0.5 s warm-up, at most 100 connections (idle: 500,
    /// tls-idle: 200), sweep 1/10/100, one small fan-out room; explicit flags still win
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
        kind: Kind::Loadgen(Mode::Echo),
        conns,
        depth,
        size,
        tls: false,
        proxy: None,
    };
    let tls = |case: Case| Case { tls: true, ..case };
    // Churn's load: 8 loops of connect, one 64 B echo, close; with a PROXY header or not.
    let accept = |scenario: &'static str, proxy| Case {
        scenario,
        name: scenario.to_string(),
        kind: Kind::Loadgen(Mode::Churn),
        conns: 8,
        depth: 1,
        size: 64,
        tls: false,
        proxy,
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
                kind: Kind::Loadgen(Mode::Idle),
                conns: if args.smoke { 500 } else { 10_000 },
                depth: 1,
                size: 64,
                tls: false,
                proxy: None,
            }),
            "churn" => out.push(Case {
                scenario: "churn",
                name: s.clone(),
                kind: Kind::Loadgen(Mode::Churn),
                conns: 8,
                depth: 1,
                size: 64,
                tls: false,
                proxy: None,
            }),
            "accept" => out.push(accept(report::ACCEPT, None)),
            "accept-proxy-v1" => out.push(accept("accept-proxy-v1", Some(Proxy::V1))),
            "accept-proxy-v2" => out.push(accept("accept-proxy-v2", Some(Proxy::V2))),
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
            "fanout" => {
                let rooms: &[(&str, Room)] = if args.smoke { &[SMOKE_ROOM] } else { &ROOMS };
                for &(name, room) in rooms {
                    out.push(Case {
                        scenario: "fanout",
                        name: name.to_string(),
                        kind: Kind::Fanout(room),
                        conns: room.members(),
                        depth: 0,
                        size: 64,
                        tls: false,
                        proxy: None,
                    });
                }
            }
            "tls-latency" => out.push(tls(echo("tls-latency", s.clone(), 1, 1, 64))),
            "tls-c100" => out.push(tls(echo("tls-c100", s.clone(), cap(100), 16, 64))),
            "tls-handshake" => out.push(Case {
                scenario: "tls-handshake",
                name: s.clone(),
                kind: Kind::Loadgen(Mode::Churn),
                conns: 8,
                depth: 1,
                size: 64,
                tls: true,
                proxy: None,
            }),
            "tls-idle" => out.push(Case {
                scenario: "tls-idle",
                name: s.clone(),
                kind: Kind::Loadgen(Mode::Idle),
                conns: if args.smoke { 200 } else { 5_000 },
                depth: 1,
                size: 64,
                tls: true,
                proxy: None,
            }),
            _ => unreachable!("validated scenario"),
        }
    }
    out
}

/// Why `server` sits out the TLS scenarios, or `None` if it takes part: tokio_echo speaks TLS
/// (tokio-rustls), hydrogen_echo only when built with the `hydrogen-tls` feature (as this suite
/// must then have been: they are built together), and no other server does.
fn tls_skip_reason(server: &str) -> Option<String> {
    match server {
        "tokio" => None,
        "hydrogen" if cfg!(feature = "hydrogen-tls") => None,
        "hydrogen" => Some(
            "the suite was built without the `hydrogen-tls` feature (hydrogen's TLS needs the \
             library's `tls` feature): rebuild with `cargo build --release -p hydrogen-bench \
             --features hydrogen-tls`"
                .to_string(),
        ),
        "mio" => Some("mio_echo has no TLS peer".to_string()),
        other => Some(format!(
            "only tokio_echo and hydrogen_echo take --tls-cert, not {other}_echo"
        )),
    }
}

/// Why `server` sits out the PROXY protocol scenarios, or `None` if it takes part: only
/// hydrogen_echo reads the header (`--proxy-protocol`, the library's `Config::proxy_protocol`).
fn proxy_skip_reason(server: &str) -> Option<String> {
    match server {
        "hydrogen" => None,
        other => Some(format!(
            "only hydrogen_echo takes --proxy-protocol, not {other}_echo"
        )),
    }
}

/// Whether `server` runs `case`: a server without a chat server sits out the rooms, one
/// without TLS the TLS scenarios, one without a PROXY protocol reader the PROXY scenarios.
fn takes_part(case: &Case, server: &str, no_chat: &[&String]) -> bool {
    match case.kind {
        Kind::Fanout(_) => !no_chat.iter().any(|s| *s == server),
        Kind::Loadgen(_) => {
            (!case.tls || tls_skip_reason(server).is_none())
                && (case.proxy.is_none() || proxy_skip_reason(server).is_none())
        }
    }
}

/// The order of the runs: every case's rounds in turn, except the accept cases, whose rounds
/// are interleaved (round 1 of each accept case, then round 2, ...) so that the PROXY and plain
/// runs the report divides are close in time. Each entry is a case index and a round; within
/// it, every server in turn.
fn schedule(cases: &[Case], rounds: u32) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cases.len() {
        let group = if cases[i].is_accept() {
            cases[i..].iter().take_while(|c| c.is_accept()).count()
        } else {
            1
        };
        for round in 1..=rounds {
            out.extend((i..i + group).map(|c| (c, round)));
        }
        i += group;
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
    fanout_load: PathBuf,
    secs: f64,
    warmup: f64,
    clk_tck: u64,
    logs: PathBuf,
    /// The test certificate of the TLS scenarios, if any is selected.
    tls: Option<CertFiles>,
}

/// The server binary a case runs for `server`: `SERVER_echo`, or `SERVER_chat` for a room.
fn server_binary(case: &Case, server: &str) -> String {
    match case.kind {
        Kind::Loadgen(_) => format!("{server}_echo"),
        Kind::Fanout(_) => format!("{server}_chat"),
    }
}

/// One run: a fresh server, the load generator against it, the server's CPU and memory around
/// the window.
fn measure(ctx: &Ctx, case: &Case, run: &mut Run, log: &mut File) -> Result<(), String> {
    let _ = writeln!(
        log,
        "=== {} round {} ({})",
        case.name,
        run.round,
        report::utc_now()
    );
    let bin = server_binary(case, &run.server);
    let tls = if case.tls {
        let files = ctx.tls.as_ref().ok_or("a TLS case without a certificate")?;
        Some((path_arg(&files.cert)?, path_arg(&files.key)?))
    } else {
        None
    };
    let mut server_args = vec!["--threads", "2"];
    if let Some((cert, key)) = &tls {
        server_args.extend(["--tls-cert", cert, "--tls-key", key]);
    }
    if case.proxy.is_some() {
        server_args.push("--proxy-protocol");
    }
    let (mut server, addr) = start_binary(&ctx.bin_dir, &bin, &server_args, log)?;
    let pid = server.pid();
    run.rss_base_kib = Some(rss_kib(pid)?);

    let idle = case.is(Mode::Idle);
    // Idle: at least 1 s of hold, for the memory to settle before it is sampled.
    let secs = if idle { ctx.secs.max(1.0) } else { ctx.secs };
    let warmup = if idle { 0.0 } else { ctx.warmup };
    let (load, mut command) = match case.kind {
        Kind::Loadgen(mode) => {
            let mut c = Command::new(&ctx.loadgen);
            c.args(["--addr", &addr.to_string(), "--framing", "u32"])
                .args(["--mode", mode.name()])
                .args(["--conns", &case.conns.to_string()])
                .args(["--depth", &case.depth.to_string()])
                .args(["--size", &case.size.to_string()]);
            if let Some((cert, _)) = &tls {
                c.args(["--tls-ca", cert]);
            }
            if let Some(proxy) = case.proxy {
                c.args(["--proxy", proxy.name()]);
            }
            (&ctx.loadgen, c)
        }
        Kind::Fanout(room) => {
            let mut c = Command::new(&ctx.fanout_load);
            c.args(["--addr", &addr.to_string()])
                .args(["--receivers", &room.receivers.to_string()])
                .args(["--senders", &room.senders.to_string()])
                .args(["--rate", &room.rate.to_string()])
                .args(["--payload", &case.size.to_string()]);
            (&ctx.fanout_load, c)
        }
    };
    let load_name = load.file_name().map_or_else(
        || load.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut child = command
        .args(["--secs", &secs.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .args(["--threads", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", load.display()))?;
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
                    "{load_name} did not finish within {:.0} s; killed",
                    (Duration::from_secs_f64(secs + warmup) + LOADGEN_SLACK).as_secs_f64()
                ));
            }
        }
    }
    let status = loadgen
        .wait_for(Duration::from_secs(10))?
        .ok_or(format!("{load_name} closed its stdout but did not exit"))?;
    // It has exited: its stderr reaches EOF promptly.
    let mut stderr_text = Vec::new();
    let stderr_deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(line) =
        errors.recv_timeout(stderr_deadline.saturating_duration_since(Instant::now()))
    {
        stderr_text.push(line);
    }
    if !status.success() {
        let msg = stderr_text.last().cloned().unwrap_or_default();
        return Err(format!("{load_name} failed ({}): {msg}", describe(status)));
    }
    if let Ok(Some(status)) = server.child.try_wait() {
        return Err(format!(
            "{bin} exited during the run ({})",
            describe(status)
        ));
    }
    let (Some(t0), Some(t1)) = (ticks_start, ticks_end) else {
        return Err(format!(
            "{load_name} did not print MEASURE_START and MEASURE_END"
        ));
    };
    run.cpu_ticks = Some(t1.saturating_sub(t0));
    let result = result.ok_or(format!("{load_name} printed no RESULT line"))?;
    run.set_result(&result)?;
    run.server_exit = server.stop(STOP_TIMEOUT);
    Ok(())
}

/// The directory of the binaries, checked to hold every one the cases need: loadgen and
/// `NAME_echo` of every server for the echo cases; fanout_load and the chat servers of
/// [`CHAT_SERVERS`] for the rooms.
fn locate_binaries(servers: &[String], cases: &[Case]) -> Result<PathBuf, String> {
    let mut names = Vec::new();
    if cases.iter().any(|c| matches!(c.kind, Kind::Loadgen(_))) {
        names.extend(servers.iter().map(|s| format!("{s}_echo")));
        names.push("loadgen".to_string());
    }
    if cases.iter().any(|c| matches!(c.kind, Kind::Fanout(_))) {
        names.extend(
            servers
                .iter()
                .filter(|s| CHAT_SERVERS.contains(&s.as_str()))
                .map(|s| format!("{s}_chat")),
        );
        names.push("fanout_load".to_string());
    }
    sibling_binaries(&names)
}

/// A path as a command-line argument.
fn path_arg(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))
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
    let cases = cases(args);
    let bin_dir = locate_binaries(&args.servers, &cases)?;
    // The servers without a chat server sit the rooms out.
    let no_chat: Vec<&String> = args
        .servers
        .iter()
        .filter(|s| !bin_dir.join(format!("{s}_chat")).is_file())
        .collect();
    let rooms = cases
        .iter()
        .filter(|c| matches!(c.kind, Kind::Fanout(_)))
        .count();
    if rooms > 0 && !no_chat.is_empty() {
        eprintln!(
            "suite: note: no chat server for {}: left out of the fanout scenario",
            no_chat
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // The TLS scenarios: who sits them out, and a fresh certificate for those who do not.
    let tls_cases = cases.iter().filter(|c| c.tls).count();
    let tls_skipped: Vec<(String, String)> = if tls_cases > 0 {
        args.servers
            .iter()
            .filter_map(|s| tls_skip_reason(s).map(|why| (s.clone(), why)))
            .collect()
    } else {
        Vec::new()
    };
    for (server, why) in &tls_skipped {
        eprintln!("suite: note: {server} skipped in the TLS scenarios: {why}");
    }
    // The PROXY protocol scenarios: who sits them out.
    let proxy_skipped: Vec<(String, String)> = if cases.iter().any(|c| c.proxy.is_some()) {
        args.servers
            .iter()
            .filter_map(|s| proxy_skip_reason(s).map(|why| (s.clone(), why)))
            .collect()
    } else {
        Vec::new()
    };
    for (server, why) in &proxy_skipped {
        eprintln!("suite: note: {server} skipped in the PROXY protocol scenarios: {why}");
    }
    let tls = if tls_cases > 0 {
        let files = tls::write_test_cert(&args.out.join("tls"))?;
        eprintln!(
            "suite: TLS: self-signed ECDSA P-256 certificate for {} in {}",
            tls::SERVER_NAME,
            files.cert.display()
        );
        Some(files)
    } else {
        None
    };
    raise_nofile_limit();
    kill_children_on_signals("suite");
    let logs = args.out.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let ctx = Ctx {
        loadgen: bin_dir.join("loadgen"),
        fanout_load: bin_dir.join("fanout_load"),
        bin_dir,
        secs: args.secs,
        warmup: args.warmup,
        clk_tck: procfs::ticks_per_second(),
        logs,
        tls,
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

    let settings = Settings {
        rounds: args.rounds,
        secs: args.secs,
        warmup: args.warmup,
        servers: args.servers.clone(),
        clk_tck: ctx.clk_tck,
        smoke: args.smoke,
        tls_skipped: tls_skipped.clone(),
        proxy_skipped: proxy_skipped.clone(),
    };
    let runs_per_round = |case: &Case| {
        args.servers
            .iter()
            .filter(|s| takes_part(case, s, &no_chat))
            .count()
    };
    let total = cases.iter().map(runs_per_round).sum::<usize>() * args.rounds as usize;
    eprintln!(
        "suite: {} cases x {} rounds x {} servers{} = {total} runs; results in {}",
        cases.len(),
        args.rounds,
        args.servers.len(),
        if (rooms > 0 && !no_chat.is_empty())
            || !tls_skipped.is_empty()
            || !proxy_skipped.is_empty()
        {
            " (fewer where a server sits a scenario out)"
        } else {
            ""
        },
        args.out.display()
    );
    let csv_path = args.out.join("results.csv");
    let started = Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    for (case, round) in schedule(&cases, args.rounds) {
        let case = &cases[case];
        for server in &args.servers {
            if !takes_part(case, server, &no_chat) {
                continue;
            }
            let mut run = Run {
                case: case.name.clone(),
                scenario: case.scenario.to_string(),
                server: server.clone(),
                round,
                mode: case.kind.name().to_string(),
                conns: case.conns,
                depth: case.depth,
                size: case.size,
                clk_tck: ctx.clk_tck,
                ..Run::default()
            };
            let log = log_files.get_mut(server).expect("log file per server");
            eprint!(
                "[{:>3}/{total}] {:<15} round {round} {:<9} ",
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
                "suite: note: {s}'s servers wrote {noisy} line(s) to stderr, see {}",
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
        "fanout" => {
            let f = run.fanout.unwrap_or_default();
            format!(
                "dps={:.0} of {:.0} p50={:.0}us p99={:.0}us{cpu} lost={} undelivered={} \
                 behind={:.1}ms{exit}",
                run.rate, f.offered, run.p50_us, run.p99_us, f.lost, f.undelivered, f.behind_max_ms
            )
        }
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

    #[test]
    fn fanout_rooms() {
        let rooms = |v: &[&str]| -> Vec<(String, Kind, usize)> {
            cases(&args(v).unwrap())
                .into_iter()
                .map(|c| (c.name, c.kind, c.conns))
                .collect()
        };
        let room = |receivers, senders, rate| {
            Kind::Fanout(Room {
                receivers,
                senders,
                rate,
            })
        };
        assert_eq!(
            rooms(&["--scenarios", "fanout"]),
            [
                ("fanout-1000".to_string(), room(1000, 4, 200), 1004),
                ("fanout-100".to_string(), room(100, 10, 1000), 110),
                ("fanout-burst".to_string(), room(100, 10, 5000), 110),
            ]
        );
        assert_eq!(
            rooms(&["--scenarios", "fanout", "--smoke"]),
            [("fanout-50".to_string(), room(50, 2, 200), 52)]
        );
        // Last of the plain scenarios in the canonical order (the TLS ones follow), and in the
        // default run.
        let all = rooms(&["--smoke"]);
        let room = all.iter().position(|c| c.0 == "fanout-50").unwrap();
        assert_eq!(all[room + 1].0, "tls-latency");
        let c = &cases(&args(&["--scenarios", "fanout,c100"]).unwrap())[1];
        assert_eq!(
            (server_binary(c, "tokio"), c.kind.name()),
            ("tokio_chat".into(), "fanout")
        );
        let c = &cases(&args(&["--scenarios", "c100"]).unwrap())[0];
        assert_eq!(server_binary(c, "mio"), "mio_echo");
    }

    #[test]
    fn tls_scenarios() {
        let tls = |v: &[&str]| -> Vec<(String, Kind, usize, usize, bool)> {
            cases(&args(v).unwrap())
                .into_iter()
                .filter(|c| c.scenario.starts_with("tls-"))
                .map(|c| (c.name, c.kind, c.conns, c.depth, c.tls))
                .collect()
        };
        let want = |idle| {
            vec![
                (
                    "tls-latency".to_string(),
                    Kind::Loadgen(Mode::Echo),
                    1,
                    1,
                    true,
                ),
                (
                    "tls-c100".to_string(),
                    Kind::Loadgen(Mode::Echo),
                    100,
                    16,
                    true,
                ),
                (
                    "tls-handshake".to_string(),
                    Kind::Loadgen(Mode::Churn),
                    8,
                    1,
                    true,
                ),
                (
                    "tls-idle".to_string(),
                    Kind::Loadgen(Mode::Idle),
                    idle,
                    1,
                    true,
                ),
            ]
        };
        // In the default run and in the smoke run, after the plain scenarios.
        assert_eq!(tls(&[]), want(5000));
        assert_eq!(tls(&["--smoke"]), want(200));
        let all = cases(&args(&["--smoke"]).unwrap());
        assert_eq!(all.last().unwrap().name, "tls-idle");
        assert!(
            all.iter()
                .filter(|c| !c.scenario.starts_with("tls-"))
                .all(|c| !c.tls)
        );
        // The same server binaries as the plain cases.
        let c = &cases(&args(&["--scenarios", "tls-idle,tls-c100"]).unwrap());
        assert_eq!(c[0].name, "tls-c100");
        assert_eq!(server_binary(&c[1], "tokio"), "tokio_echo");
    }

    #[test]
    fn accept_scenarios() {
        let a = args(&[
            "--scenarios",
            "accept-proxy-v2,sweep,accept,churn,accept-proxy-v1",
            "--smoke",
            "--rounds",
            "2",
        ])
        .unwrap();
        let cs = cases(&a);
        let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "churn",
                "accept",
                "accept-proxy-v1",
                "accept-proxy-v2",
                "sweep-1",
                "sweep-10",
                "sweep-100"
            ]
        );
        // Churn's load, with the header or not; only the accept cases are in the accept table.
        for c in &cs[..4] {
            assert_eq!(
                (c.kind, c.conns, c.depth, c.size, c.tls),
                (Kind::Loadgen(Mode::Churn), 8, 1, 64, false)
            );
            assert_eq!(c.is_accept(), c.name != "churn", "{}", c.name);
            assert_eq!(server_binary(c, "hydrogen"), "hydrogen_echo");
        }
        assert!(cs[4..].iter().all(|c| !c.is_accept() && c.proxy.is_none()));
        let proxies: Vec<_> = cs[..4].iter().map(|c| c.proxy).collect();
        assert_eq!(proxies, [None, None, Some(Proxy::V1), Some(Proxy::V2)]);
        // Plain accepts for every server, the PROXY ones for hydrogen only.
        for s in ["hydrogen", "tokio", "mio", "old_hydrogen"] {
            assert!(takes_part(&cs[1], s, &[]), "{s}");
            for c in &cs[2..4] {
                assert_eq!(takes_part(c, s, &[]), s == "hydrogen", "{s}");
            }
        }
        assert_eq!(proxy_skip_reason("hydrogen"), None);
        assert!(proxy_skip_reason("tokio").unwrap().contains("tokio_echo"));
        // The accept cases' rounds are interleaved, the others' are not.
        assert_eq!(
            schedule(&cs, 2),
            [
                (0, 1),
                (0, 2),
                (1, 1),
                (2, 1),
                (3, 1),
                (1, 2),
                (2, 2),
                (3, 2),
                (4, 1),
                (4, 2),
                (5, 1),
                (5, 2),
                (6, 1),
                (6, 2)
            ]
        );
        // In the default and smoke runs, right after churn.
        for v in [&[][..], &["--smoke"]] {
            let all = cases(&args(v).unwrap());
            let churn = all.iter().position(|c| c.name == "churn").unwrap();
            let next: Vec<&str> = all[churn + 1..churn + 4]
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(next, ["accept", "accept-proxy-v1", "accept-proxy-v2"]);
        }
    }

    #[test]
    fn who_sits_out_the_tls_scenarios() {
        assert_eq!(tls_skip_reason("tokio"), None);
        assert_eq!(
            tls_skip_reason("hydrogen").is_none(),
            cfg!(feature = "hydrogen-tls")
        );
        if cfg!(not(feature = "hydrogen-tls")) {
            assert!(
                tls_skip_reason("hydrogen")
                    .unwrap()
                    .contains("--features hydrogen-tls")
            );
        }
        assert!(tls_skip_reason("mio").unwrap().contains("no TLS"));
        assert!(
            tls_skip_reason("old_hydrogen")
                .unwrap()
                .contains("old_hydrogen_echo")
        );

        let a = args(&["--scenarios", "tls-c100,c100,fanout", "--smoke"]).unwrap();
        let cs = cases(&a);
        let (plain, room, tls) = (&cs[0], &cs[1], &cs[2]);
        assert!(!plain.tls && tls.tls);
        let tokio = "tokio".to_string();
        let no_chat = vec![&tokio];
        for s in ["hydrogen", "tokio", "mio"] {
            assert!(takes_part(plain, s, &[]), "{s}");
            assert_eq!(takes_part(tls, s, &[]), tls_skip_reason(s).is_none(), "{s}");
        }
        assert!(!takes_part(room, "tokio", &no_chat));
        assert!(takes_part(room, "hydrogen", &no_chat));
    }
}
