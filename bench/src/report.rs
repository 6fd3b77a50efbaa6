//! Results of the benchmark suite: one [`Run`] per server process, summarized over rounds into a
//! Markdown report, a raw CSV file and an SVG chart of the connection sweep.
//!
//! A case is either a `loadgen` load against the echo servers or a fan-out room of
//! `fanout_load` against the chat servers ([`Kind`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use procfs::Current as _;

use crate::load::{Mode, Proxy};

/// The scenario of plain accepts, the baseline of the PROXY protocol scenarios: the other
/// accept scenarios are named after it (`accept-proxy-v1`, `accept-proxy-v2`).
pub const ACCEPT: &str = "accept";

/// A fan-out room: members that only receive, and members that send `rate` frames per second
/// each (and receive the other senders' frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Members that only receive.
    pub receivers: usize,
    /// Members that send.
    pub senders: usize,
    /// Frames per second per sender.
    pub rate: u32,
}

impl Room {
    /// Members of the room.
    pub fn members(&self) -> usize {
        self.receivers + self.senders
    }

    /// Deliveries per second the senders offer: every frame goes to every other member.
    pub fn offered(&self) -> f64 {
        self.senders as f64 * f64::from(self.rate) * (self.members() - 1) as f64
    }
}

/// What drives a case, and so which server binaries it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `loadgen` in this mode, against the echo servers (`NAME_echo`).
    Loadgen(Mode),
    /// `fanout_load` in this room, against the chat servers (`NAME_chat`).
    Fanout(Room),
}

impl Kind {
    /// The mode's name: loadgen's (`echo`, `idle`, `churn`), or `fanout`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Loadgen(mode) => mode.name(),
            Kind::Fanout(_) => "fanout",
        }
    }
}

/// One load configuration, run against every server in every round.
#[derive(Debug, Clone)]
pub struct Case {
    /// The scenario it belongs to (`latency`, `c100`, ..., `sweep`, `fanout`).
    pub scenario: &'static str,
    /// Unique name: the scenario, `sweep-N` for a point of the sweep, `fanout-...` for a room.
    pub name: String,
    /// The load generator and its mode.
    pub kind: Kind,
    /// Connections (concurrent loops for churn, members for a room).
    pub conns: usize,
    /// Frames in flight per connection (0 for a room: it is open loop).
    pub depth: usize,
    /// Payload bytes.
    pub size: usize,
    /// Whether the connections speak TLS (the `tls-*` scenarios: `--tls-cert`/`--tls-key` to
    /// the server, `--tls-ca` to loadgen).
    pub tls: bool,
    /// Whether every connection starts with a PROXY protocol header, and which version (the
    /// `accept-proxy-*` scenarios: `--proxy-protocol` to the server, `--proxy` to loadgen).
    pub proxy: Option<Proxy>,
}

impl Case {
    /// `100 × 16 × 64 B`, or a description of the idle and churn loads and of a room.
    pub fn load(&self) -> String {
        match self.kind {
            Kind::Loadgen(Mode::Echo) => format!(
                "{} × {} × {}",
                thousands(self.conns as f64),
                self.depth,
                bytes(self.size)
            ),
            Kind::Loadgen(Mode::Idle) => format!("{} idle conns", thousands(self.conns as f64)),
            Kind::Loadgen(Mode::Churn) => format!("{} loops × {}", self.conns, bytes(self.size)),
            Kind::Fanout(room) => format!(
                "{} receivers + {} senders × {}/s",
                thousands(room.receivers as f64),
                room.senders,
                thousands(f64::from(room.rate)),
            ),
        }
    }

    /// Whether this case is loadgen in `mode`.
    pub fn is(&self, mode: Mode) -> bool {
        self.kind == Kind::Loadgen(mode)
    }

    /// Whether this is one of the accept scenarios ([`ACCEPT`] and its PROXY variants), which
    /// the report puts in a table of their own, as ratios to plain accepts.
    pub fn is_accept(&self) -> bool {
        self.scenario
            .strip_prefix(ACCEPT)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    }

    /// The header column of the accept table.
    fn header(&self) -> &'static str {
        match self.proxy {
            None => "none",
            Some(Proxy::V1) => "v1 TCP4 line",
            Some(Proxy::V2) => "v2 IPv4, 28 B",
        }
    }
}

/// What `fanout_load` reports besides the deliveries and their latency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FanoutFigures {
    /// Members that only receive.
    pub receivers: usize,
    /// Members that send.
    pub senders: usize,
    /// Frames per second per sender asked for.
    pub rate: f64,
    /// Frames sent in the window.
    pub sent: u64,
    /// Deliveries per second offered: frames sent in the window × (members − 1) / window.
    pub offered: f64,
    /// Frames skipped (a gap in a sender's sequence) from the window's opening to the end of
    /// the drain.
    pub lost: u64,
    /// Frames not delivered by the end of the drain.
    pub undelivered: u64,
    /// How late the load generator sent a frame after its deadline at most, ms.
    pub behind_max_ms: f64,
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
    /// Frames (echo), cycles (churn), check pings (idle) or deliveries (fanout) counted in the
    /// window.
    pub ops: u64,
    /// Frames/s, cycles/s or deliveries/s.
    pub rate: f64,
    /// Latency quantiles in microseconds: per frame (echo), per cycle (churn), per check ping
    /// (idle), per delivery (fanout: receive time − send time).
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
    /// The fan-out figures, for a room.
    pub fanout: Option<FanoutFigures>,
}

impl Run {
    /// Server CPU microseconds per frame (echo), per cycle (churn) or per delivery (fanout).
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
            "fanout" => (get("deliveries")? as u64, get("dps")?),
            _ => (get("pings")? as u64, 0.0),
        };
        if self.mode == "fanout" {
            self.fanout = Some(FanoutFigures {
                receivers: get("receivers")? as usize,
                senders: get("senders")? as usize,
                rate: get("rate")?,
                sent: get("sent")? as u64,
                offered: get("offered_dps")?,
                lost: get("lost")? as u64,
                undelivered: get("undelivered")? as u64,
                behind_max_ms: get("behind_max_ms")?,
            });
        }
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
    /// Servers left out of the TLS scenarios, each with the reason (the report says so).
    pub tls_skipped: Vec<(String, String)>,
    /// Servers left out of the PROXY protocol scenarios, each with the reason.
    pub proxy_skipped: Vec<(String, String)>,
}

/// Successful runs of one case and server.
fn ok_runs<'a>(runs: &'a [Run], case: &str, server: &str) -> Vec<&'a Run> {
    runs.iter()
        .filter(|r| r.case == case && r.server == server && r.error.is_none())
        .collect()
}

/// Whether `server` was run at all for `case` (a failed run counts): the servers left out of a
/// scenario (no chat server, no TLS) get no row.
fn was_run(runs: &[Run], case: &str, server: &str) -> bool {
    runs.iter().any(|r| r.case == case && r.server == server)
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

    let echo: Vec<&Case> = cases.iter().filter(|c| c.is(Mode::Echo)).collect();
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
            for s in settings
                .servers
                .iter()
                .filter(|s| was_run(runs, &c.name, s))
            {
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

    accept_table(&mut md, cases, runs, settings, &rounds_note);

    for c in cases.iter().filter(|c| c.is(Mode::Churn) && !c.is_accept()) {
        if c.tls {
            let _ = writeln!(md, "### TLS handshakes ({})\n", c.load());
            let _ = writeln!(
                md,
                "Each loop: connect, a full TLS 1.3 handshake (no resumption), send one frame, \
                 read and verify its echo, close (SO_LINGER 0). cycles/s is handshakes per \
                 second; latency is per whole cycle. Server CPU per handshake = server CPU over \
                 the window / cycles. {rounds_note}\n"
            );
        } else {
            let _ = writeln!(md, "### Connection churn ({})\n", c.load());
            let _ = writeln!(
                md,
                "Each loop: connect, send one frame, read and verify its echo, close (SO_LINGER \
                 0). Latency is per whole cycle. Server CPU per cycle = server CPU over the \
                 window / cycles. {rounds_note}\n"
            );
        }
        let _ = writeln!(
            md,
            "| Server | cycles/s | {x} | p50 µs | p99 µs | {x} | CPU µs/cycle | {x} |"
        );
        let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|");
        let tokio = ok_runs(runs, &c.name, "tokio");
        let t_rate = stat_of(&tokio, |r| Some(r.rate));
        let t_p99 = stat_of(&tokio, |r| Some(r.p99_us));
        let t_cpu = stat_of(&tokio, Run::cpu_us_per_op);
        for s in settings
            .servers
            .iter()
            .filter(|s| was_run(runs, &c.name, s))
        {
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

    for c in cases.iter().filter(|c| c.is(Mode::Idle)) {
        let what = if c.tls {
            "Idle TLS connections"
        } else {
            "Idle connections"
        };
        let _ = writeln!(md, "### {what} ({})\n", c.load());
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
        for s in settings
            .servers
            .iter()
            .filter(|s| was_run(runs, &c.name, s))
        {
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

    fanout_table(&mut md, cases, runs, settings, &rounds_note);
    tls_note(&mut md, cases, settings);

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

/// The accept table, if there are accept cases: connections per second and server CPU per
/// connection, with and without the PROXY header, as ratios to the same server's plain
/// accepts in the same run.
fn accept_table(md: &mut String, cases: &[Case], runs: &[Run], settings: &Settings, note: &str) {
    let accept: Vec<&Case> = cases.iter().filter(|c| c.is_accept()).collect();
    let Some(first) = accept.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "### Accept throughput, with and without the PROXY header ({})\n",
        first.load()
    );
    let _ = writeln!(
        md,
        "Each loop: connect, send one frame (after a PROXY protocol header in the same write, \
         for accept-proxy-*), read and verify its echo, close (SO_LINGER 0); conn/s = cycles \
         per second. The PROXY scenarios run hydrogen_echo with --proxy-protocol \
         (Config::proxy_protocol). Server CPU per connection = server CPU over the window / \
         cycles. The accept cases' rounds are interleaved (round 1 of each, then round 2, ...). \
         {note} `x plain`: ratio of medians to the same server's `{ACCEPT}` in this run; \
         `per round`: the same ratio round by round; `+CPU`: the extra server CPU per \
         connection (median − plain's median).\n"
    );
    let _ = writeln!(
        md,
        "| Scenario | Header | Server | conn/s | x plain | per round | p50 µs | p99 µs \
         | CPU µs/conn | x plain | +CPU µs/conn |"
    );
    let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for c in &accept {
        for s in settings
            .servers
            .iter()
            .filter(|s| was_run(runs, &c.name, s))
        {
            let rs = ok_runs(runs, &c.name, s);
            let plain = ok_runs(runs, ACCEPT, s);
            let rate = stat_of(&rs, |r| Some(r.rate));
            let cpu = stat_of(&rs, Run::cpu_us_per_op);
            let p_rate = stat_of(&plain, |r| Some(r.rate));
            let p_cpu = stat_of(&plain, Run::cpu_us_per_op);
            // Paired by round: the runs of a round are next to each other in time.
            let per_round: Vec<String> = rs
                .iter()
                .filter_map(|r| {
                    let p = plain.iter().find(|p| p.round == r.round)?;
                    (p.rate > 0.0).then(|| format!("{:.2}", r.rate / p.rate))
                })
                .collect();
            let extra = match (cpu, p_cpu) {
                (Some(v), Some(p)) => format!("{:+.2}", v.median - p.median),
                _ => "—".to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.name,
                c.header(),
                s,
                cell(rate, thousands, true),
                ratio(rate, p_rate),
                if per_round.is_empty() {
                    "—".to_string()
                } else {
                    per_round.join(", ")
                },
                cell(stat_of(&rs, |r| Some(r.p50_us)), sig3, false),
                cell(stat_of(&rs, |r| Some(r.p99_us)), sig3, true),
                cell(cpu, sig3, true),
                ratio(cpu, p_cpu),
                extra,
            );
        }
    }
    md.push('\n');
    if accept.iter().any(|c| c.proxy.is_some()) {
        for (server, why) in &settings.proxy_skipped {
            let _ = writeln!(
                md,
                "**{server} was skipped in the PROXY protocol scenarios**: {why}.\n"
            );
        }
    }
}

/// What the TLS scenarios were, and which servers sat them out and why, if there are any.
fn tls_note(md: &mut String, cases: &[Case], settings: &Settings) {
    let tls: Vec<&str> = cases
        .iter()
        .filter(|c| c.tls)
        .map(|c| c.name.as_str())
        .collect();
    if tls.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "TLS scenarios ({}): rustls 0.23 on both ends with the aws-lc-rs provider and its \
         defaults (TLS 1.3), a self-signed ECDSA P-256 certificate made at the start of the \
         run, verified by the client; tokio's peer is tokio-rustls.",
        tls.join(", ")
    );
    for (server, why) in &settings.tls_skipped {
        let _ = writeln!(
            md,
            "\n**{server} was skipped in the TLS scenarios**: {why}."
        );
    }
    md.push('\n');
}

/// The fan-out table, if there are rooms.
fn fanout_table(md: &mut String, cases: &[Case], runs: &[Run], settings: &Settings, note: &str) {
    let rooms: Vec<&Case> = cases
        .iter()
        .filter(|c| matches!(c.kind, Kind::Fanout(_)))
        .collect();
    if rooms.is_empty() {
        return;
    }
    let x = "x tokio";
    let _ = writeln!(md, "### Fan-out (chat room)\n");
    let _ = writeln!(
        md,
        "Every frame a member sends is relayed to every other member (u32 framing, 64 B \
         payloads); the senders send open loop at a fixed rate each. Offered = frames sent in \
         the window × (members − 1) / window; delivered = frames received by all the members in \
         the window / window. Latency is per delivery, from the sender's write to the \
         receiver's read (CLOCK_MONOTONIC). Server CPU per delivery = server CPU over the window \
         / deliveries. Lost: frames skipped in a sender's sequence (window and drain); \
         undelivered: frames still missing 3 s after the senders stopped. {note} `{x}`: ratio \
         of medians to tokio.\n"
    );
    let _ = writeln!(
        md,
        "| Room | Server | offered/s | delivered/s | {x} | CPU µs/delivery | {x} | p50 µs \
         | p99 µs | {x} | lost | undelivered |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let fig = |r: &Run, f: fn(&FanoutFigures) -> f64| r.fanout.as_ref().map(f);
    let mut not_run = Vec::new();
    for c in &rooms {
        let tokio = ok_runs(runs, &c.name, "tokio");
        let t_rate = stat_of(&tokio, |r| Some(r.rate));
        let t_p99 = stat_of(&tokio, |r| Some(r.p99_us));
        let t_cpu = stat_of(&tokio, Run::cpu_us_per_op);
        for s in &settings.servers {
            if !runs.iter().any(|r| r.case == c.name && r.server == *s) {
                if !not_run.contains(s) {
                    not_run.push(s.clone());
                }
                continue;
            }
            let rs = ok_runs(runs, &c.name, s);
            let rate = stat_of(&rs, |r| Some(r.rate));
            let p99 = stat_of(&rs, |r| Some(r.p99_us));
            let cpu = stat_of(&rs, Run::cpu_us_per_op);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.load(),
                s,
                cell(stat_of(&rs, |r| fig(r, |f| f.offered)), thousands, false),
                cell(rate, thousands, true),
                ratio(rate, t_rate),
                cell(cpu, sig3, true),
                ratio(cpu, t_cpu),
                cell(stat_of(&rs, |r| Some(r.p50_us)), sig3, false),
                cell(p99, sig3, true),
                ratio(p99, t_p99),
                cell(stat_of(&rs, |r| fig(r, |f| f.lost as f64)), thousands, true),
                cell(
                    stat_of(&rs, |r| fig(r, |f| f.undelivered as f64)),
                    thousands,
                    true
                ),
            );
        }
    }
    if !not_run.is_empty() {
        let _ = writeln!(
            md,
            "\nNot run: {} (no chat server `NAME_chat` next to the suite).",
            not_run.join(", ")
        );
    }
    md.push('\n');
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
         `--threads 2`; loadgen and fanout_load with `--threads 2`, on the same machine",
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

/// The 8 fan-out columns of a CSV row, empty for the other modes.
fn fanout_fields(f: Option<&FanoutFigures>) -> String {
    match f {
        None => ",,,,,,,".to_string(),
        Some(f) => format!(
            "{},{},{},{},{:.1},{},{},{:.3}",
            f.receivers,
            f.senders,
            f.rate,
            f.sent,
            f.offered,
            f.lost,
            f.undelivered,
            f.behind_max_ms
        ),
    }
}

/// `results.csv`: one row per run, raw.
pub fn csv(runs: &[Run]) -> String {
    let mut out = String::from(
        "case,scenario,server,round,mode,conns,depth,size,window_secs,ops,rate,p50_us,p99_us,\
         p999_us,max_us,retries,server_cpu_ticks,clk_tck,server_cpu_us_per_op,server_cpu_ms,\
         rss_base_kib,rss_start_kib,rss_end_kib,rss_per_conn_bytes,receivers,senders,\
         rate_per_sender,sent,offered_dps,lost,undelivered,behind_max_ms,server_exit,error\n",
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{:.3},{},{:.1},{:.2},{:.2},{:.2},{:.2},{},{},{},{},{},{},{},{},{},{},{},{}",
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
            fanout_fields(r.fanout.as_ref()),
            csv_field(&r.server_exit),
            csv_field(r.error.as_deref().unwrap_or("")),
        );
    }
    out
}

/// Colour of a server's line in the chart.
fn colour(server: &str, i: usize) -> RGBColor {
    match server {
        "hydrogen" => RGBColor(0xe8, 0x59, 0x0c),
        "tokio" => RGBColor(0x1c, 0x7e, 0xd6),
        "mio" => RGBColor(0x2f, 0x9e, 0x44),
        _ => [
            RGBColor(0x70, 0x48, 0xe8),
            RGBColor(0xc2, 0x25, 0x5c),
            RGBColor(0x49, 0x50, 0x57),
        ][i % 3],
    }
}

/// A point of a series: x, and the median, min and max of y.
struct Point {
    x: f64,
    y: Stat,
}

struct Series {
    name: String,
    colour: RGBColor,
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

/// Decade bounds around `min..=max`.
fn decades(min: f64, max: f64) -> (f64, f64) {
    let lo = 10f64.powf(min.max(1e-9).log10().floor());
    let mut hi = 10f64.powf(max.max(1e-9).log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

const FONT: &str = "sans-serif";
const TEXT: RGBColor = RGBColor(0x21, 0x25, 0x29);
const GREY: RGBColor = RGBColor(0x49, 0x50, 0x57);

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// One panel: axes, grid, and per series its min–max bars, its line of medians and markers.
/// The x axis (connections) is logarithmic; the y axis is when `y_log`.
fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    y_label: &str,
    series: &[Series],
    x_range: (f64, f64),
    y_log: bool,
    y_fmt: fn(f64) -> String,
) -> DrawResult {
    let ymin = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.y.min))
        .fold(f64::INFINITY, f64::min);
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.y.max))
        .fold(0.0, f64::max);
    // A little room left and right of the first and last decade for the markers.
    let x_range = (x_range.0 / 1.25)..(x_range.1 * 1.25);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(
            title,
            (FONT, 15).into_font().style(FontStyle::Bold).color(&TEXT),
        )
        .margin_top(8)
        .margin_right(24)
        .x_label_area_size(40)
        .y_label_area_size(64);
    let n = series.len() as f64;
    // Each server is nudged sideways a little so that the bars do not hide each other.
    let nudge = |i: usize, x: f64| x * 10f64.powf((i as f64 - (n - 1.0) / 2.0) * 0.012);
    let x_fmt = |v: &f64| short(*v);
    let y_fmt = |v: &f64| y_fmt(*v);

    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_labels(6)
                .y_labels(6)
                .max_light_lines(4)
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&y_fmt)
                .x_desc("connections (log scale)")
                .y_desc(y_label)
                .label_style((FONT, 12).into_font().color(&GREY))
                .axis_desc_style((FONT, 13).into_font().color(&TEXT))
                .bold_line_style(RGBColor(0xe9, 0xec, 0xef))
                .light_line_style(RGBColor(0xf4, 0xf5, 0xf7))
                .axis_style(RGBColor(0x86, 0x8e, 0x96))
                .draw()?;
            for (i, s) in series.iter().enumerate() {
                let c = s.colour;
                chart.draw_series(s.points.iter().filter(|p| p.y.max > p.y.min).map(|p| {
                    ErrorBar::new_vertical(
                        nudge(i, p.x),
                        p.y.min,
                        p.y.median,
                        p.y.max,
                        c.mix(0.6).stroke_width(1),
                        6,
                    )
                }))?;
                chart.draw_series(LineSeries::new(
                    s.points.iter().map(|p| (nudge(i, p.x), p.y.median)),
                    c.stroke_width(2),
                ))?;
                chart.draw_series(
                    s.points
                        .iter()
                        .map(|p| Circle::new((nudge(i, p.x), p.y.median), 4, c.filled())),
                )?;
            }
        }};
    }
    if y_log {
        let (lo, hi) = decades(ymin, ymax);
        draw!(builder.build_cartesian_2d(x_range.log_scale(), (lo..hi).log_scale())?);
    } else {
        let hi = ymax.max(1.0) * 1.1;
        draw!(builder.build_cartesian_2d(x_range.log_scale(), 0.0..hi)?);
    }
    Ok(())
}

/// Title, subtitle, legend and the two panels.
fn draw_chart(
    root: DrawingArea<SVGBackend, Shift>,
    settings: &Settings,
    fps: &[Series],
    p99: &[Series],
    x_range: (f64, f64),
) -> DrawResult {
    let (width, _) = root.dim_in_pixel();
    let centre = width as i32 / 2;
    root.fill(&WHITE)?;
    let centred = Pos::new(HPos::Center, VPos::Top);
    root.draw(&Text::new(
        "Echo server: throughput and p99 latency against connections",
        (centre, 14),
        (FONT, 20)
            .into_font()
            .style(FontStyle::Bold)
            .color(&TEXT)
            .pos(centred),
    ))?;
    let rounds = if settings.rounds == 1 {
        "one round".to_string()
    } else {
        format!("median of {} rounds, bars: min–max", settings.rounds)
    };
    root.draw(&Text::new(
        format!(
            "1 frame in flight per connection, 64 B payloads, u32 framing, {} s windows, server \
             and load generator on 2 threads each; {rounds}",
            settings.secs
        ),
        (centre, 40),
        (FONT, 13).into_font().color(&GREY).pos(centred),
    ))?;
    // Legend, centred: a line with a marker, then the name; items 28 px apart.
    let font = (FONT, 14).into_font().color(&TEXT);
    let widths: Vec<i32> = fps
        .iter()
        .map(|s| {
            let (w, _) = root.estimate_text_size(&s.name, &font).unwrap_or((60, 14));
            35 + w as i32
        })
        .collect();
    let total = widths.iter().sum::<i32>() + 28 * (widths.len() as i32 - 1);
    let mut x = centre - total / 2;
    for (s, w) in fps.iter().zip(&widths) {
        let c = s.colour;
        root.draw(&PathElement::new(
            vec![(x, 72), (x + 28, 72)],
            c.stroke_width(2),
        ))?;
        root.draw(&Circle::new((x + 14, 72), 4, c.filled()))?;
        root.draw(&Text::new(
            s.name.clone(),
            (x + 35, 72),
            font.pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += w + 28;
    }
    let body = root.split_vertically(90).1;
    let (left, right) = body.split_horizontally(width / 2);
    panel(
        &left.margin(0, 0, 10, 20),
        "Throughput",
        "frames per second",
        fps,
        x_range,
        false,
        short,
    )?;
    panel(
        &right.margin(0, 0, 10, 20),
        "p99 round-trip latency",
        "p99 latency (log scale)",
        p99,
        x_range,
        true,
        time_label,
    )?;
    root.present()?;
    Ok(())
}

/// `chart.svg`: throughput and p99 latency against connections for the sweep (depth 1, 64 B),
/// one line per server. `Ok(None)` if there are no sweep results.
pub fn chart_svg(
    cases: &[Case],
    runs: &[Run],
    settings: &Settings,
) -> Result<Option<String>, String> {
    // The sweep's points, by connection count; the `latency` case has the same flags as a
    // one-connection sweep point and stands in for it.
    let mut points: Vec<(usize, &str)> = cases
        .iter()
        .filter(|c| c.scenario == "sweep")
        .map(|c| (c.conns, c.name.as_str()))
        .collect();
    if points.is_empty() {
        return Ok(None);
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
        return Ok(None);
    }
    let x_range = decades(points[0].0 as f64, points[points.len() - 1].0 as f64);
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (1000, 470)).into_drawing_area();
    draw_chart(root, settings, &fps_series, &p99_series, x_range)
        .map_err(|e| format!("drawing the chart: {e}"))?;
    Ok(Some(svg))
}

/// Current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    utc(jiff::Timestamp::now())
}

fn utc(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// `uname -r`. (procfs's `KernelVersion` keeps only the numbers; the report shows it whole.)
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model() -> String {
    procfs::CpuInfo::current()
        .ok()
        .and_then(|info| info.model_name(0).map(str::to_string))
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
        assert_eq!(decades(1.0, 100.0), (1.0, 100.0));
        assert_eq!(decades(3.0, 2000.0), (1.0, 10_000.0));
    }

    #[test]
    fn parses_result_lines() {
        let m = parse_result("RESULT mode=echo conns=1 fps=12.5 errors=0").unwrap();
        assert_eq!(m["fps"], "12.5");
        assert!(parse_result("MEASURE_START").is_none());
    }

    #[test]
    fn fanout_results() {
        let line = "RESULT mode=fanout receivers=100 senders=10 rate=1000 payload=64 secs=3.00 \
                    sent=30000 offered_dps=1089970.0 deliveries=3000000 dps=1000000.0 \
                    p50_us=1500.00 p99_us=8400.00 p999_us=9000.00 max_us=9500.00 lost=3 \
                    undelivered=7 behind_max_ms=8.900 retries=0 errors=0";
        let room = Room {
            receivers: 100,
            senders: 10,
            rate: 1000,
        };
        assert_eq!(room.offered(), 1_090_000.0);
        let case = Case {
            scenario: "fanout",
            name: "fanout-100".into(),
            kind: Kind::Fanout(room),
            conns: 110,
            depth: 0,
            size: 64,
            tls: false,
            proxy: None,
        };
        assert_eq!(case.load(), "100 receivers + 10 senders × 1,000/s");
        let mut runs = Vec::new();
        for (server, ticks) in [("hydrogen", 600), ("tokio", 300)] {
            let mut run = Run {
                case: case.name.clone(),
                scenario: "fanout".into(),
                server: server.into(),
                round: 1,
                mode: case.kind.name().into(),
                conns: 110,
                size: 64,
                clk_tck: 100,
                cpu_ticks: Some(ticks),
                server_exit: "0".into(),
                ..Run::default()
            };
            run.set_result(&parse_result(line).unwrap()).unwrap();
            runs.push(run);
        }
        let r = &runs[1];
        assert_eq!((r.ops, r.rate, r.p99_us), (3_000_000, 1_000_000.0, 8400.0));
        assert_eq!(r.cpu_us_per_op(), Some(1.0));
        let f = r.fanout.unwrap();
        assert_eq!(
            (f.receivers, f.senders, f.rate, f.sent),
            (100, 10, 1000.0, 30_000)
        );
        assert_eq!((f.offered, f.lost, f.undelivered), (1_089_970.0, 3, 7));
        assert_eq!(f.behind_max_ms, 8.9);

        let settings = Settings {
            rounds: 1,
            secs: 3.0,
            warmup: 1.0,
            servers: vec!["hydrogen".into(), "tokio".into(), "mio".into()],
            clk_tck: 100,
            smoke: false,
            tls_skipped: Vec::new(),
            proxy_skipped: Vec::new(),
        };
        let md = tables(std::slice::from_ref(&case), &runs, &settings);
        assert!(md.contains("### Fan-out (chat room)"), "{md}");
        assert!(
            md.contains(
                "| 100 receivers + 10 senders × 1,000/s | hydrogen | 1,089,970 | 1,000,000 | \
                 1.00 | 2.00 | 2.00 | 1,500 | 8,400 | 1.00 | 3 | 7 |"
            ),
            "{md}"
        );
        assert!(md.contains("Not run: mio"), "{md}");
        assert!(!md.contains("| mio |"), "{md}");

        let text = csv(&runs);
        let lines: Vec<&str> = text.lines().collect();
        let columns = lines[0].split(',').count();
        assert!(
            lines.iter().all(|l| l.split(',').count() == columns),
            "{text}"
        );
        assert!(
            lines[2].contains(",100,10,1000,30000,1089970.0,3,7,8.900,0,"),
            "{text}"
        );
        // The other modes leave the fan-out columns empty.
        let echo = csv(&[Run::default()]);
        assert_eq!(echo.lines().nth(1).unwrap().split(',').count(), columns);
    }

    /// The sweep of BENCHMARKS.md's last full run, three rounds around each median.
    fn sweep_runs() -> (Vec<Case>, Vec<Run>, Settings) {
        let data = [
            (
                "hydrogen",
                [16_820.0, 107_590.0, 138_867.0, 132_696.0, 93_590.0],
                [98.5, 481.0, 4256.0, 13_435.0, 139_330.0],
            ),
            (
                "tokio",
                [15_747.0, 103_242.0, 147_681.0, 105_373.0, 90_285.0],
                [106.0, 921.0, 4391.0, 32_981.0, 323_224.0],
            ),
            (
                "mio",
                [16_424.0, 115_753.0, 157_251.0, 124_187.0, 90_021.0],
                [100.0, 1358.0, 7999.0, 14_402.0, 148_636.0],
            ),
        ];
        let conns = [1, 10, 100, 1000, 10_000];
        let cases: Vec<Case> = conns
            .iter()
            .map(|&n| Case {
                scenario: "sweep",
                name: format!("sweep-{n}"),
                kind: Kind::Loadgen(Mode::Echo),
                conns: n,
                depth: 1,
                size: 64,
                tls: false,
                proxy: None,
            })
            .collect();
        let mut runs = Vec::new();
        for (server, rates, p99s) in data {
            for (i, case) in cases.iter().enumerate() {
                for (round, f) in [(1, 0.95), (2, 1.0), (3, 1.08)] {
                    runs.push(Run {
                        case: case.name.clone(),
                        scenario: "sweep".into(),
                        server: server.into(),
                        round,
                        rate: rates[i] * f,
                        p99_us: p99s[i] * f,
                        ..Run::default()
                    });
                }
            }
        }
        let settings = Settings {
            rounds: 3,
            secs: 5.0,
            warmup: 1.0,
            servers: vec!["hydrogen".into(), "tokio".into(), "mio".into()],
            clk_tck: 100,
            smoke: false,
            tls_skipped: Vec::new(),
            proxy_skipped: Vec::new(),
        };
        (cases, runs, settings)
    }

    #[test]
    fn tls_tables_name_the_servers_left_out() {
        let case = |name: &str, mode, conns| Case {
            scenario: "tls",
            name: name.into(),
            kind: Kind::Loadgen(mode),
            conns,
            depth: 1,
            size: 64,
            tls: true,
            proxy: None,
        };
        let cases = [
            case("tls-latency", Mode::Echo, 1),
            case("tls-handshake", Mode::Churn, 8),
            case("tls-idle", Mode::Idle, 200),
        ];
        let runs: Vec<Run> = cases
            .iter()
            .map(|c| Run {
                case: c.name.clone(),
                server: "tokio".into(),
                round: 1,
                mode: c.kind.name().into(),
                conns: c.conns,
                rate: 1000.0,
                ..Run::default()
            })
            .collect();
        let settings = Settings {
            rounds: 1,
            secs: 1.0,
            warmup: 0.5,
            servers: vec!["hydrogen".into(), "tokio".into(), "mio".into()],
            clk_tck: 100,
            smoke: true,
            tls_skipped: vec![
                ("hydrogen".into(), "built without it".into()),
                ("mio".into(), "no TLS peer".into()),
            ],
            proxy_skipped: Vec::new(),
        };
        let md = tables(&cases, &runs, &settings);
        assert!(md.contains("### TLS handshakes (8 loops × 64 B)"), "{md}");
        assert!(
            md.contains("### Idle TLS connections (200 idle conns)"),
            "{md}"
        );
        assert!(
            md.contains("| tls-latency | 1 × 1 × 64 B | tokio | 1,000 | 1.00 |"),
            "{md}"
        );
        // No rows for the servers that were not run, and the reasons instead.
        assert!(
            !md.contains("| hydrogen |") && !md.contains("| mio |"),
            "{md}"
        );
        assert!(
            !md.contains("tls-latency | 1 × 1 × 64 B | hydrogen"),
            "{md}"
        );
        assert!(md.contains("**hydrogen was skipped in the TLS scenarios**: built without it."));
        assert!(md.contains("**mio was skipped in the TLS scenarios**: no TLS peer."));
        // Nothing about TLS without TLS cases.
        let plain = Case {
            tls: false,
            ..cases[0].clone()
        };
        assert!(!tables(&[plain], &runs, &settings).contains("TLS"));
    }

    #[test]
    fn accept_table_gives_ratios_to_plain_accepts() {
        let case = |name: &'static str, proxy| Case {
            scenario: name,
            name: name.into(),
            kind: Kind::Loadgen(Mode::Churn),
            conns: 8,
            depth: 1,
            size: 64,
            tls: false,
            proxy,
        };
        let cases = [
            case("churn", None),
            case(ACCEPT, None),
            case("accept-proxy-v1", Some(Proxy::V1)),
            case("accept-proxy-v2", Some(Proxy::V2)),
        ];
        assert_eq!(
            cases.iter().map(Case::is_accept).collect::<Vec<_>>(),
            [false, true, true, true]
        );
        let mut runs = Vec::new();
        for (c, rates) in cases.iter().zip([
            [10_000.0, 10_000.0],
            [20_000.0, 10_000.0],
            [19_000.0, 9_000.0],
            [20_000.0, 9_500.0],
        ]) {
            for (server, rate) in ["hydrogen", "tokio"].into_iter().zip(rates) {
                if c.proxy.is_some() && server == "tokio" {
                    continue;
                }
                for round in 1..=2 {
                    runs.push(Run {
                        case: c.name.clone(),
                        scenario: c.scenario.into(),
                        server: server.into(),
                        round,
                        mode: "churn".into(),
                        conns: 8,
                        size: 64,
                        window_secs: 1.0,
                        ops: rate as u64,
                        // Round 2 is 10% slower.
                        rate: rate * if round == 2 { 0.9 } else { 1.0 },
                        cpu_ticks: Some(if c.proxy.is_some() { 42 } else { 40 }),
                        clk_tck: 100,
                        ..Run::default()
                    });
                }
            }
        }
        let settings = Settings {
            rounds: 2,
            secs: 1.0,
            warmup: 0.5,
            servers: vec!["hydrogen".into(), "tokio".into()],
            clk_tck: 100,
            smoke: false,
            tls_skipped: Vec::new(),
            proxy_skipped: vec![("tokio".into(), "no PROXY reader".into())],
        };
        let md = tables(&cases, &runs, &settings);
        assert!(
            md.contains(
                "### Accept throughput, with and without the PROXY header (8 loops × 64 B)"
            ),
            "{md}"
        );
        // churn keeps its own table; the accept cases are only in theirs.
        assert!(md.contains("### Connection churn (8 loops × 64 B)"), "{md}");
        assert_eq!(md.matches("### Connection churn").count(), 1, "{md}");
        // hydrogen: 19,000 / 20,000 (and 0.95 in each round); CPU 420 µs / 19,000 cycles
        // against 400 / 20,000.
        assert!(
            md.contains("| accept-proxy-v1 | v1 TCP4 line | hydrogen | 18,050 (17,100–19,000) | 0.95 | 0.95, 0.95 |"),
            "{md}"
        );
        assert!(md.contains("| 22.1 | 1.11 | +2.11 |"), "{md}");
        assert!(
            md.contains("| accept | none | tokio | 9,500 (9,000–10,000) | 1.00 | 1.00, 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| accept-proxy-v2 | v2 IPv4, 28 B | hydrogen |"),
            "{md}"
        );
        assert!(
            !md.contains("accept-proxy-v2 | v2 IPv4, 28 B | tokio"),
            "{md}"
        );
        assert!(
            md.contains("**tokio was skipped in the PROXY protocol scenarios**: no PROXY reader.")
        );
        // No accept table, and no note, without accept cases.
        let md = tables(&cases[..1], &runs, &settings);
        assert!(!md.contains("Accept") && !md.contains("PROXY"), "{md}");
    }

    #[test]
    fn chart_of_the_sweep() {
        let (cases, runs, settings) = sweep_runs();
        let svg = chart_svg(&cases, &runs, &settings).unwrap().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "Throughput",
            "p99 round-trip latency",
            "hydrogen",
            "tokio",
            "mio",
            "10k",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        if let Some(path) = std::env::var_os("CHART_OUT") {
            std::fs::write(path, &svg).unwrap();
        }
        // Without sweep results there is no chart.
        assert_eq!(chart_svg(&cases[..0], &runs, &settings), Ok(None));
    }

    #[test]
    fn civil_date_is_sane() {
        let d = utc_now();
        assert!(d.starts_with("20"), "{d}");
        assert_eq!(d.len(), "2026-01-01 00:00 UTC".len());
        let at = |s| utc(jiff::Timestamp::from_second(s).unwrap());
        assert_eq!(at(0), "1970-01-01 00:00 UTC");
        assert_eq!(at(951_868_799), "2000-02-29 23:59 UTC");
        assert_eq!(at(1_795_000_000), "2026-11-18 11:06 UTC");
    }
}
