//! Results of the benchmark suite: one [`Run`] per server process, summarized over rounds into a
//! Markdown report, a raw CSV file and an SVG chart of the connection sweep.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::load::Mode;

/// One load configuration, run against every server in every round.
#[derive(Debug, Clone)]
pub struct Case {
    /// The scenario it belongs to (`latency`, `c100`, ..., `sweep`).
    pub scenario: &'static str,
    /// Unique name: the scenario, or `sweep-N` for a point of the sweep.
    pub name: String,
    /// Loadgen mode.
    pub mode: Mode,
    /// Connections (concurrent loops for churn).
    pub conns: usize,
    /// Frames in flight per connection.
    pub depth: usize,
    /// Payload bytes.
    pub size: usize,
}

impl Case {
    /// `100 × 16 × 64 B`, or a description of the idle and churn loads.
    pub fn load(&self) -> String {
        match self.mode {
            Mode::Echo => format!(
                "{} × {} × {}",
                thousands(self.conns as f64),
                self.depth,
                bytes(self.size)
            ),
            Mode::Idle => format!("{} idle conns", thousands(self.conns as f64)),
            Mode::Churn => format!("{} loops × {}", self.conns, bytes(self.size)),
        }
    }
}

/// One server process under one load: what the suite measured, or why it failed.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// [`Case::name`].
    pub case: String,
    /// [`Case::scenario`].
    pub scenario: String,
    /// Server name (`hydrogen`, `tokio`, `mio`).
    pub server: String,
    /// 1-based round.
    pub round: u32,
    /// Loadgen mode name.
    pub mode: String,
    /// Connections or loops.
    pub conns: usize,
    /// Frames in flight per connection.
    pub depth: usize,
    /// Payload bytes.
    pub size: usize,
    /// Measured window as reported by loadgen, seconds.
    pub window_secs: f64,
    /// Frames (echo), cycles (churn) or check pings (idle) counted in the window.
    pub ops: u64,
    /// Frames/s or cycles/s.
    pub rate: f64,
    /// Latency quantiles in microseconds: per frame (echo), per cycle (churn), per check ping
    /// (idle).
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Connect attempts loadgen had to repeat.
    pub retries: u64,
    /// Server CPU (user + system) over the window, in clock ticks.
    pub cpu_ticks: Option<u64>,
    /// Clock ticks per second.
    pub clk_tck: u64,
    /// Server RSS before loadgen started, KiB.
    pub rss_base_kib: Option<u64>,
    /// Server RSS at the start of the window (for idle: after settling), KiB.
    pub rss_start_kib: Option<u64>,
    /// Server RSS at the end of the window, KiB.
    pub rss_end_kib: Option<u64>,
    /// How the server ended after SIGTERM (`0`, `signal 9 after timeout`, ...).
    pub server_exit: String,
    /// Why the run failed; such runs are left out of the summaries.
    pub error: Option<String>,
}

impl Run {
    /// Server CPU microseconds per frame (echo) or per cycle (churn).
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        let ticks = self.cpu_ticks?;
        if self.ops == 0 || self.clk_tck == 0 || self.mode == "idle" {
            return None;
        }
        Some(ticks as f64 * 1e6 / self.clk_tck as f64 / self.ops as f64)
    }

    /// Server CPU over the window, milliseconds.
    pub fn cpu_ms(&self) -> Option<f64> {
        let ticks = self.cpu_ticks?;
        (self.clk_tck > 0).then(|| ticks as f64 * 1e3 / self.clk_tck as f64)
    }

    /// Idle mode: server memory per connection, bytes.
    pub fn rss_per_conn(&self) -> Option<f64> {
        if self.mode != "idle" {
            return None;
        }
        let (base, start) = (self.rss_base_kib?, self.rss_start_kib?);
        (self.conns > 0).then(|| (start as f64 - base as f64) * 1024.0 / self.conns as f64)
    }

    /// Fills the measured fields from loadgen's `RESULT` line.
    pub fn set_result(&mut self, result: &BTreeMap<String, String>) -> Result<(), String> {
        let get = |k: &str| -> Result<f64, String> {
            result
                .get(k)
                .ok_or(format!("RESULT line without {k}="))?
                .parse::<f64>()
                .map_err(|_| format!("RESULT line: bad value for {k}"))
        };
        self.window_secs = get("secs")?;
        (self.ops, self.rate) = match self.mode.as_str() {
            "echo" => (get("frames")? as u64, get("fps")?),
            "churn" => (get("cycles")? as u64, get("cps")?),
            _ => (get("pings")? as u64, 0.0),
        };
        self.p50_us = get("p50_us")?;
        self.p99_us = get("p99_us")?;
        self.p999_us = get("p999_us")?;
        self.max_us = get("max_us")?;
        self.retries = get("retries").unwrap_or(0.0) as u64;
        Ok(())
    }
}

/// Parses `RESULT k=v k=v ...` into its pairs; `None` for any other line.
pub fn parse_result(line: &str) -> Option<BTreeMap<String, String>> {
    let rest = line.strip_prefix("RESULT ")?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Median, minimum and maximum of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    /// `None` for no values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// `1234567` → `1,234,567` (rounded to an integer).
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn bytes(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// Three significant digits, without exponent; thousands separators from 1,000 on.
pub fn sig3(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        thousands(x)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a == 0.0 {
        "0".to_string()
    } else {
        format!("{x:.3}")
    }
}

fn cell(stat: Option<Stat>, fmt: fn(f64) -> String, spread: bool) -> String {
    match stat {
        None => "n/a".to_string(),
        Some(s) if spread && s.min != s.max => {
            format!("{} ({}–{})", fmt(s.median), fmt(s.min), fmt(s.max))
        }
        Some(s) => fmt(s.median),
    }
}

fn ratio(value: Option<Stat>, tokio: Option<Stat>) -> String {
    match (value, tokio) {
        (Some(v), Some(t)) if t.median > 0.0 => format!("{:.2}", v.median / t.median),
        _ => "—".to_string(),
    }
}

/// The suite's settings, for the report's header.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rounds per case and server.
    pub rounds: u32,
    /// Measured window, seconds.
    pub secs: f64,
    /// Warm-up, seconds.
    pub warmup: f64,
    /// Servers in the order they were run.
    pub servers: Vec<String>,
    /// Clock ticks per second used for the CPU figures.
    pub clk_tck: u64,
    /// Whether this was a `--smoke` run.
    pub smoke: bool,
}

/// Successful runs of one case and server.
fn ok_runs<'a>(runs: &'a [Run], case: &str, server: &str) -> Vec<&'a Run> {
    runs.iter()
        .filter(|r| r.case == case && r.server == server && r.error.is_none())
        .collect()
}

fn stat_of(runs: &[&Run], f: impl Fn(&Run) -> Option<f64>) -> Option<Stat> {
    Stat::of(runs.iter().filter_map(|r| f(r)))
}

/// The Markdown tables: echo cases, churn, idle; then any failures and server problems.
pub fn tables(cases: &[Case], runs: &[Run], settings: &Settings) -> String {
    let mut md = String::new();
    // The ratio columns show "—" when tokio was not run.
    let x = "x tokio";
    let rounds_note = if settings.rounds > 1 {
        format!(
            "Median of {} rounds, (min–max) over the rounds when they differ.",
            settings.rounds
        )
    } else {
        "One round: no spread.".to_string()
    };

    let echo: Vec<&Case> = cases.iter().filter(|c| c.mode == Mode::Echo).collect();
    if !echo.is_empty() {
        let _ = writeln!(md, "### Echo throughput and latency\n");
        let _ = writeln!(
            md,
            "Closed loop, u32 framing; load = connections × frames in flight × payload. \
             Latency is per frame round trip. Server CPU = user + system time of the server \
             process over the window, divided by the frames echoed. {rounds_note} \
             `{x}`: ratio of medians to tokio (throughput: higher is better; CPU and p99: lower \
             is better).\n"
        );
        let _ = writeln!(
            md,
            "| Scenario | Load | Server | frames/s | {x} | p50 µs | p99 µs | {x} | p99.9 µs \
             | CPU µs/frame | {x} |"
        );
        let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for c in &echo {
            let tokio = ok_runs(runs, &c.name, "tokio");
            let t_rate = stat_of(&tokio, |r| Some(r.rate));
            let t_p99 = stat_of(&tokio, |r| Some(r.p99_us));
            let t_cpu = stat_of(&tokio, Run::cpu_us_per_op);
            for s in &settings.servers {
                let rs = ok_runs(runs, &c.name, s);
                let rate = stat_of(&rs, |r| Some(r.rate));
                let p50 = stat_of(&rs, |r| Some(r.p50_us));
                let p99 = stat_of(&rs, |r| Some(r.p99_us));
                let p999 = stat_of(&rs, |r| Some(r.p999_us));
                let cpu = stat_of(&rs, Run::cpu_us_per_op);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.name,
                    c.load(),
                    s,
                    cell(rate, thousands, true),
                    ratio(rate, t_rate),
                    cell(p50, sig3, false),
                    cell(p99, sig3, true),
                    ratio(p99, t_p99),
                    cell(p999, sig3, false),
                    cell(cpu, sig3, true),
                    ratio(cpu, t_cpu),
                );
            }
        }
        md.push('\n');
    }

    for c in cases.iter().filter(|c| c.mode == Mode::Churn) {
        let _ = writeln!(md, "### Connection churn ({})\n", c.load());
        let _ = writeln!(
            md,
            "Each loop: connect, send one frame, read and verify its echo, close (SO_LINGER 0). \
             Latency is per whole cycle. Server CPU per cycle = server CPU over the window / \
             cycles. {rounds_note}\n"
        );
        let _ = writeln!(
            md,
            "| Server | cycles/s | {x} | p50 µs | p99 µs | {x} | CPU µs/cycle | {x} |"
        );
        let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|");
        let tokio = ok_runs(runs, &c.name, "tokio");
        let t_rate = stat_of(&tokio, |r| Some(r.rate));
        let t_p99 = stat_of(&tokio, |r| Some(r.p99_us));
        let t_cpu = stat_of(&tokio, Run::cpu_us_per_op);
        for s in &settings.servers {
            let rs = ok_runs(runs, &c.name, s);
            let rate = stat_of(&rs, |r| Some(r.rate));
            let p99 = stat_of(&rs, |r| Some(r.p99_us));
            let cpu = stat_of(&rs, Run::cpu_us_per_op);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s,
                cell(rate, thousands, true),
                ratio(rate, t_rate),
                cell(stat_of(&rs, |r| Some(r.p50_us)), sig3, false),
                cell(p99, sig3, true),
                ratio(p99, t_p99),
                cell(cpu, sig3, true),
                ratio(cpu, t_cpu),
            );
        }
        md.push('\n');
    }

    for c in cases.iter().filter(|c| c.mode == Mode::Idle) {
        let _ = writeln!(md, "### Idle connections ({})\n", c.load());
        let _ = writeln!(
            md,
            "Memory per connection = (server RSS after the connections are open and checked, \
             settled – RSS before loadgen started) / connections. CPU = server CPU while the \
             connections sit idle (10 ms tick resolution). Ping p99: the check echo sent on \
             every connection at once. {rounds_note}\n"
        );
        let _ = writeln!(
            md,
            "| Server | bytes/conn | {x} | RSS before, MiB | RSS idle, MiB | CPU while idle, ms \
             | ping p99 µs |"
        );
        let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|");
        let tokio = ok_runs(runs, &c.name, "tokio");
        let t_mem = stat_of(&tokio, Run::rss_per_conn);
        let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
        for s in &settings.servers {
            let rs = ok_runs(runs, &c.name, s);
            let mem = stat_of(&rs, Run::rss_per_conn);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s,
                cell(mem, thousands, true),
                ratio(mem, t_mem),
                cell(stat_of(&rs, |r| mib(r.rss_base_kib)), sig3, false),
                cell(stat_of(&rs, |r| mib(r.rss_start_kib)), sig3, false),
                cell(stat_of(&rs, Run::cpu_ms), sig3, true),
                cell(stat_of(&rs, |r| Some(r.p99_us)), sig3, false),
            );
        }
        md.push('\n');
    }

    let failed: Vec<&Run> = runs.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "### Failed runs (left out of the tables above)\n");
        for r in failed {
            let _ = writeln!(
                md,
                "- {} / {} / round {}: {}",
                r.case,
                r.server,
                r.round,
                r.error.as_deref().unwrap_or("").replace('\n', " ")
            );
        }
        md.push('\n');
    }
    let unclean: Vec<&Run> = runs
        .iter()
        .filter(|r| !r.server_exit.is_empty() && r.server_exit != "0")
        .collect();
    if !unclean.is_empty() {
        let _ = writeln!(md, "### Servers that did not exit cleanly on SIGTERM\n");
        for r in unclean {
            let _ = writeln!(
                md,
                "- {} / {} / round {}: {}",
                r.case, r.server, r.round, r.server_exit
            );
        }
        md.push('\n');
    }
    md
}

/// The whole `results.md`: header with the machine and settings, the tables, the method.
pub fn markdown(cases: &[Case], runs: &[Run], settings: &Settings, chart: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# hydrogen benchmark results\n");
    let _ = writeln!(md, "- Date: {}", utc_now());
    let _ = writeln!(md, "- Kernel: {}", kernel_release());
    let _ = writeln!(md, "- CPU: {} ({} logical CPUs)", cpu_model(), cpu_count());
    let _ = writeln!(
        md,
        "- Rounds: {}; measured window: {} s after {} s of warm-up{}",
        settings.rounds,
        settings.secs,
        settings.warmup,
        if settings.smoke { " (smoke run)" } else { "" }
    );
    let _ = writeln!(
        md,
        "- Servers, run in this order within each round: {}; each run a fresh process with \
         `--threads 2`; loadgen with `--threads 2`, on the same machine",
        settings.servers.join(", ")
    );
    let _ = writeln!(
        md,
        "- CPU time from /proc/PID/stat in clock ticks ({} per second)\n",
        settings.clk_tck
    );
    md.push_str(&tables(cases, runs, settings));
    if chart {
        let _ = writeln!(
            md,
            "![Throughput and p99 latency against connections](chart.svg)\n"
        );
    }
    let _ = writeln!(
        md,
        "Raw numbers, one row per run: `results.csv`. Method: `bench/README.md`."
    );
    md
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

fn opt_f(v: Option<f64>, decimals: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.decimals$}"))
}

/// `results.csv`: one row per run, raw.
pub fn csv(runs: &[Run]) -> String {
    let mut out = String::from(
        "case,scenario,server,round,mode,conns,depth,size,window_secs,ops,rate,p50_us,p99_us,\
         p999_us,max_us,retries,server_cpu_ticks,clk_tck,server_cpu_us_per_op,server_cpu_ms,\
         rss_base_kib,rss_start_kib,rss_end_kib,rss_per_conn_bytes,server_exit,error\n",
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{:.3},{},{:.1},{:.2},{:.2},{:.2},{:.2},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&r.case),
            csv_field(&r.scenario),
            csv_field(&r.server),
            r.round,
            r.mode,
            r.conns,
            r.depth,
            r.size,
            r.window_secs,
            r.ops,
            r.rate,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            r.retries,
            opt(r.cpu_ticks),
            r.clk_tck,
            opt_f(r.cpu_us_per_op(), 4),
            opt_f(r.cpu_ms(), 1),
            opt(r.rss_base_kib),
            opt(r.rss_start_kib),
            opt(r.rss_end_kib),
            opt_f(r.rss_per_conn(), 0),
            csv_field(&r.server_exit),
            csv_field(r.error.as_deref().unwrap_or("")),
        );
    }
    out
}

/// Colour of a server's line in the chart.
fn colour(server: &str, i: usize) -> &'static str {
    match server {
        "hydrogen" => "#e8590c",
        "tokio" => "#1c7ed6",
        "mio" => "#2f9e44",
        _ => ["#7048e8", "#c2255c", "#495057"][i % 3],
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A point of a series: x, and the median, min and max of y.
struct Point {
    x: f64,
    y: Stat,
}

struct Series {
    name: String,
    colour: &'static str,
    points: Vec<Point>,
}

/// Short label for a count: 1, 10, 100, 1k, 10k, 1.5M.
fn short(x: f64) -> String {
    let (v, suffix) = if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s}{suffix}")
}

/// Label for a duration in microseconds: 10 µs, 1 ms, 1 s.
fn time_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", short(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", short(us / 1e3))
    } else {
        format!("{} µs", short(us))
    }
}

/// A nice step for about `n` ticks from 0 to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// One axis mapping: linear or log10.
#[derive(Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    /// Pixel range.
    p0: f64,
    p1: f64,
}

impl Scale {
    fn map(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.max(1e-12).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.p0 + t * (self.p1 - self.p0)
    }

    /// Decade bounds around `min..=max`.
    fn decades(min: f64, max: f64) -> (f64, f64) {
        let lo = 10f64.powf(min.max(1e-9).log10().floor());
        let mut hi = 10f64.powf(max.max(1e-9).log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        (lo, hi)
    }
}

/// Space between a panel's frame and the ends of its axes' ranges, pixels.
const PAD: f64 = 10.0;

/// Draws one panel: frame, grid, ticks, labels, series with min–max bars.
#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    title: &str,
    y_label: &str,
    series: &[Series],
    x_scale: (f64, f64),
    y_log: bool,
    y_fmt: fn(f64) -> String,
    tooltip: &dyn Fn(&str, f64, f64) -> String,
) {
    let ymin = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.y.min))
        .fold(f64::INFINITY, f64::min);
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.y.max))
        .fold(0.0, f64::max);
    let xs = Scale {
        lo: x_scale.0,
        hi: x_scale.1,
        log: true,
        p0: x0 + PAD,
        p1: x0 + w - PAD,
    };
    let (ylo, yhi, yticks): (f64, f64, Vec<f64>) = if y_log {
        let (lo, hi) = Scale::decades(ymin, ymax);
        let mut t = Vec::new();
        let mut v = lo;
        while v <= hi * 1.0001 {
            t.push(v);
            v *= 10.0;
        }
        (lo, hi, t)
    } else {
        let step = nice_step(ymax.max(1.0), 5.0);
        let hi = (ymax.max(1.0) / step).ceil() * step;
        let n = (hi / step).round() as usize;
        (0.0, hi, (0..=n).map(|i| i as f64 * step).collect())
    };
    let ys = Scale {
        lo: ylo,
        hi: yhi,
        log: y_log,
        p0: y0 + h - PAD,
        p1: y0 + PAD,
    };

    let _ = writeln!(
        svg,
        r#"<g class="panel"><text x="{:.1}" y="{:.1}" class="ptitle">{}</text>"#,
        x0,
        y0 - 12.0,
        esc(title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{x0:.1}" y="{y0:.1}" width="{w:.1}" height="{h:.1}" fill="#fcfcfd" stroke="none"/>"##
    );
    // Horizontal grid and y labels.
    for (i, &v) in yticks.iter().enumerate() {
        let y = ys.map(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e9ecef" stroke-width="1"/><line x1="{:.1}" y1="{y:.1}" x2="{x0:.1}" y2="{y:.1}" stroke="#868e96" stroke-width="1"/>"##,
            x0,
            x0 + w,
            x0 - 5.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="ytick">{}</text>"#,
            x0 - 8.0,
            y + 4.0,
            esc(&y_fmt(v))
        );
        if y_log && i + 1 < yticks.len() {
            for m in 2..10 {
                let ym = ys.map(v * m as f64);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{x0:.1}" y1="{ym:.1}" x2="{:.1}" y2="{ym:.1}" stroke="#f4f5f7" stroke-width="1"/>"##,
                    x0 + w
                );
            }
        }
    }
    // Vertical grid, minor ticks and x labels.
    let mut v = xs.lo;
    while v <= xs.hi * 1.0001 {
        let x = xs.map(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e9ecef" stroke-width="1"/><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#868e96" stroke-width="1"/>"##,
            y0 + h,
            y0 + h,
            y0 + h + 6.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" class="xtick">{}</text>"#,
            y0 + h + 18.0,
            short(v)
        );
        if v * 1.0001 < xs.hi {
            for m in 2..10 {
                let xm = xs.map(v * m as f64);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{xm:.1}" y1="{:.1}" x2="{xm:.1}" y2="{:.1}" stroke="#868e96" stroke-width="1"/>"##,
                    y0 + h,
                    y0 + h + 4.0
                );
            }
        }
        v *= 10.0;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" class="xlabel">connections (log scale)</text>"#,
        x0 + w / 2.0,
        y0 + h + 40.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" class="ylabel">{}</text>"#,
        x0 - 62.0,
        y0 + h / 2.0,
        esc(y_label)
    );
    // Series: min–max bars, then the line, then the markers on top. Each server is nudged
    // sideways a little so that the bars do not hide each other.
    let n = series.len() as f64;
    for (i, s) in series.iter().enumerate() {
        let dx = (i as f64 - (n - 1.0) / 2.0) * 4.0;
        let pts: Vec<(f64, f64, &Point)> = s
            .points
            .iter()
            .map(|p| (xs.map(p.x) + dx, ys.map(p.y.median), p))
            .collect();
        for (x, _, p) in &pts {
            if p.y.max > p.y.min {
                let (ya, yb) = (ys.map(p.y.min), ys.map(p.y.max));
                let _ = writeln!(
                    svg,
                    r#"<path d="M{x:.1},{ya:.1}V{yb:.1}M{:.1},{ya:.1}h6M{:.1},{yb:.1}h6" stroke="{}" stroke-width="1.2" opacity="0.6" fill="none"/>"#,
                    x - 3.0,
                    x - 3.0,
                    s.colour
                );
            }
        }
        let line: Vec<String> = pts
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.2" stroke-linejoin="round"/>"#,
            line.join(" "),
            s.colour
        );
        for (x, y, p) in &pts {
            let _ = writeln!(
                svg,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{}" stroke="#ffffff" stroke-width="1.5"><title>{}</title></circle>"##,
                s.colour,
                esc(&tooltip(&s.name, p.x, p.y.median))
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{x0:.1}" y="{y0:.1}" width="{w:.1}" height="{h:.1}" fill="none" stroke="#ced4da"/></g>"##
    );
}

/// `chart.svg`: throughput and p99 latency against connections for the sweep (depth 1, 64 B),
/// one line per server. `None` if there are no sweep results.
pub fn chart_svg(cases: &[Case], runs: &[Run], settings: &Settings) -> Option<String> {
    // The sweep's points, by connection count; the `latency` case has the same flags as a
    // one-connection sweep point and stands in for it.
    let mut points: Vec<(usize, &str)> = cases
        .iter()
        .filter(|c| c.scenario == "sweep")
        .map(|c| (c.conns, c.name.as_str()))
        .collect();
    if points.is_empty() {
        return None;
    }
    if !points.iter().any(|(n, _)| *n == 1)
        && let Some(l) = cases.iter().find(|c| c.name == "latency")
    {
        points.push((1, l.name.as_str()));
    }
    points.sort_unstable();

    let mut fps_series = Vec::new();
    let mut p99_series = Vec::new();
    for (i, s) in settings.servers.iter().enumerate() {
        let mut fps = Vec::new();
        let mut p99 = Vec::new();
        for &(conns, case) in &points {
            let rs = ok_runs(runs, case, s);
            if let Some(st) = stat_of(&rs, |r| Some(r.rate)) {
                fps.push(Point {
                    x: conns as f64,
                    y: st,
                });
            }
            if let Some(st) = stat_of(&rs, |r| Some(r.p99_us)) {
                p99.push(Point {
                    x: conns as f64,
                    y: st,
                });
            }
        }
        fps_series.push(Series {
            name: s.clone(),
            colour: colour(s, i),
            points: fps,
        });
        p99_series.push(Series {
            name: s.clone(),
            colour: colour(s, i),
            points: p99,
        });
    }
    if fps_series.iter().all(|s| s.points.is_empty()) {
        return None;
    }
    let x_range = Scale::decades(points[0].0 as f64, points[points.len() - 1].0 as f64);

    let (width, height) = (1000.0, 470.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif">
<style>
text {{ fill: #212529; }}
.title {{ font-size: 19px; font-weight: 600; text-anchor: middle; }}
.subtitle {{ font-size: 12.5px; fill: #495057; text-anchor: middle; }}
.ptitle {{ font-size: 14px; font-weight: 600; }}
.xtick {{ font-size: 11.5px; fill: #495057; text-anchor: middle; }}
.ytick {{ font-size: 11.5px; fill: #495057; text-anchor: end; }}
.xlabel, .ylabel {{ font-size: 12.5px; fill: #343a40; text-anchor: middle; }}
.legend {{ font-size: 13px; }}
</style>
<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="30" class="title">Echo server: throughput and p99 latency against connections</text>"#,
        width / 2.0
    );
    let rounds = if settings.rounds == 1 {
        "one round".to_string()
    } else {
        format!("median of {} rounds, bars: min–max", settings.rounds)
    };
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="50" class="subtitle">1 frame in flight per connection, 64 B payloads, u32 framing, {} s windows, server and load generator on 2 threads each; {}</text>"#,
        width / 2.0,
        settings.secs,
        esc(&rounds)
    );
    // Legend, centred; each item as wide as its label needs (about 7.5 px a character).
    let widths: Vec<f64> = fps_series
        .iter()
        .map(|s| 35.0 + 7.5 * s.name.chars().count() as f64 + 28.0)
        .collect();
    let mut x = width / 2.0 - (widths.iter().sum::<f64>() - 28.0) / 2.0;
    for (s, w) in fps_series.iter().zip(&widths) {
        let _ = writeln!(
            svg,
            r##"<g class="legend"><line x1="{x:.1}" y1="72" x2="{:.1}" y2="72" stroke="{c}" stroke-width="2.2"/><circle cx="{:.1}" cy="72" r="4" fill="{c}" stroke="#ffffff" stroke-width="1.5"/><text x="{:.1}" y="76.5">{}</text></g>"##,
            x + 28.0,
            x + 14.0,
            x + 35.0,
            esc(&s.name),
            c = s.colour
        );
        x += w;
    }
    let fps_tip = |name: &str, x: f64, y: f64| {
        format!("{name}, {} conns: {} frames/s", thousands(x), thousands(y))
    };
    let p99_tip =
        |name: &str, x: f64, y: f64| format!("{name}, {} conns: p99 {} µs", thousands(x), sig3(y));
    panel(
        &mut svg,
        95.0,
        115.0,
        370.0,
        290.0,
        "Throughput",
        "frames per second",
        &fps_series,
        x_range,
        false,
        short,
        &fps_tip,
    );
    panel(
        &mut svg,
        595.0,
        115.0,
        370.0,
        290.0,
        "p99 round-trip latency",
        "p99 latency (log scale)",
        &p99_series,
        x_range,
        true,
        time_label,
        &p99_tip,
    );
    svg.push_str("</svg>\n");
    Some(svg)
}

/// Current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Logical CPUs available to this process.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_formats() {
        let s = Stat::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of([1.0, 2.0]).unwrap().median, 1.5);
        assert!(Stat::of([]).is_none());
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(sig3(0.8123), "0.812");
        assert_eq!(sig3(12.34), "12.3");
        assert_eq!(short(10_000.0), "10k");
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(time_label(1000.0), "1 ms");
        assert_eq!(nice_step(1_234_000.0, 5.0), 250_000.0);
    }

    #[test]
    fn parses_result_lines() {
        let m = parse_result("RESULT mode=echo conns=1 fps=12.5 errors=0").unwrap();
        assert_eq!(m["fps"], "12.5");
        assert!(parse_result("MEASURE_START").is_none());
    }

    #[test]
    fn civil_date_is_sane() {
        let d = utc_now();
        assert!(d.starts_with("20"), "{d}");
        assert_eq!(d.len(), "2026-01-01 00:00 UTC".len());
    }
}
