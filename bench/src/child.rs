//! Child processes for the drivers (`suite`, `stalls`, `blocking`): starting a server and reading its
//! `listening on ADDR` line, a guard that kills a child left running on any path, a signal
//! thread that takes the children down with the driver, and what `/proc` says about a process.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use procfs::process::Process;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long a server may take to print its `listening on` line, and to accept a connection.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pids of the running children, for the signal thread. At most two run at once: a server
/// and loadgen.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn children() -> MutexGuard<'static, Vec<i32>> {
    CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes SIGINT, SIGTERM and SIGHUP take the children down with the calling program.
///
/// The signals go to `signal-hook`'s handler, which only wakes a thread of ours; that thread
/// SIGKILLs every child still running and exits with status 130. No signal is blocked (a blocked
/// mask would be inherited through `exec`, and tokio_echo, which takes SIGTERM with a handler,
/// would then never see it), and `exec` resets the handlers to the default in the children, so
/// the servers' own SIGTERM handling is untouched. A failure is reported on stderr; the program
/// then runs without it.
pub fn kill_children_on_signals(name: &'static str) {
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("{name}: warning: cannot handle SIGINT, SIGTERM and SIGHUP: {e}");
            return;
        }
    };
    let spawned = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                // Held until the exit, so that no child is registered behind our back.
                let children = children();
                for &pid in children.iter() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                process::exit(130);
            }
        });
    if let Err(e) = spawned {
        eprintln!("{name}: warning: cannot start the signal thread: {e}");
    }
}

/// A child process that is killed (SIGKILL) and reaped if still running when dropped, so that
/// no error path leaves a stray process behind.
pub struct Guard {
    /// The child process.
    pub child: Child,
}

impl Guard {
    /// Takes `child` in charge (and registers it for [`kill_children_on_signals`]).
    pub fn new(child: Child) -> Guard {
        children().push(child.id() as i32);
        Guard { child }
    }

    /// The child's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_for(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(Some(status)),
                Ok(None) if Instant::now() >= deadline => return Ok(None),
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("waiting for a child: {e}")),
            }
        }
    }

    /// SIGTERM, up to `timeout` to exit, then SIGKILL. Describes how it ended.
    pub fn stop(&mut self, timeout: Duration) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("exited early ({status})");
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        match self.wait_for(timeout) {
            Ok(Some(status)) => describe(status),
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                format!(
                    "did not exit within {} s of SIGTERM; killed",
                    timeout.as_secs_f64()
                )
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let pid = self.child.id() as i32;
        children().retain(|&p| p != pid);
    }
}

pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Sends every line of `r` to a channel, from a thread of its own; the channel closes at EOF.
pub fn line_reader(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
pub fn cpu_ticks(pid: Pid) -> Result<u64, String> {
    let stat = Process::new(pid.as_raw())
        .and_then(|p| p.stat())
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    Ok(stat.utime + stat.stime)
}

/// VmRSS of a process, KiB (from /proc/PID/status).
pub fn rss_kib(pid: Pid) -> Result<u64, String> {
    Process::new(pid.as_raw())
        .and_then(|p| p.status())
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?
        .vmrss
        .ok_or(format!("/proc/{pid}/status: no VmRSS"))
}

/// Starts `bin_dir/SERVER_echo --addr 127.0.0.1:0 --framing u32` followed by `args`, its
/// stderr going to `log`; waits for its `listening on ADDR` line and until it accepts a
/// connection, and returns it and its address.
pub fn start_server(
    bin_dir: &Path,
    server: &str,
    args: &[&str],
    log: &File,
) -> Result<(Guard, SocketAddr), String> {
    start_binary(bin_dir, &format!("{server}_echo"), args, log)
}

/// [`start_server`] for the binary `bin_dir/BIN` of any name (`hydrogen_chat`, ...) that takes
/// the echo servers' command line: `--addr 127.0.0.1:0 --framing u32` followed by `args`.
pub fn start_binary(
    bin_dir: &Path,
    bin: &str,
    args: &[&str],
    log: &File,
) -> Result<(Guard, SocketAddr), String> {
    let bin = bin_dir.join(bin);
    let log = log.try_clone().map_err(|e| format!("log file: {e}"))?;
    let mut all = vec!["--addr", "127.0.0.1:0", "--framing", "u32"];
    all.extend_from_slice(args);
    start_listening(&bin, &all, Stdio::from(log))
}

/// Starts the server binary `bin` with exactly `args` (which should make it listen on a free
/// port, e.g. `--addr 127.0.0.1:0`), its stderr going to `stderr`; waits for its `listening on
/// ADDR` line and until it accepts a connection, and returns it and its address.
pub fn start_listening(
    bin: &Path,
    args: &[&str],
    stderr: Stdio,
) -> Result<(Guard, SocketAddr), String> {
    let name = bin.file_name().map_or_else(
        || bin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut guard = Guard::new(child);
    let lines = line_reader(stdout);
    let line = match lines.recv_timeout(STARTUP_TIMEOUT) {
        Ok(line) => line,
        Err(RecvTimeoutError::Disconnected) => {
            // Its stdout closed: it has exited, or is about to.
            let status = guard.wait_for(Duration::from_secs(1)).ok().flatten();
            return Err(format!(
                "{name} closed its stdout without a `listening on` line{}",
                status.map_or(String::new(), |s| format!(" (exited: {s})"))
            ));
        }
        Err(RecvTimeoutError::Timeout) => {
            let status = guard.child.try_wait().ok().flatten();
            return Err(format!(
                "{name} printed no `listening on` line within {} s{}",
                STARTUP_TIMEOUT.as_secs(),
                status.map_or(String::new(), |s| format!(" (exited: {s})"))
            ));
        }
    };
    let addr: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or(format!(
            "{name}: expected `listening on ADDR`, got {line:?}"
        ))?;
    // Keep draining the server's stdout so that it never blocks on a full pipe.
    thread::spawn(move || for _ in lines {});
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{name} does not accept on {addr}: {e}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    // Let the server notice the probe connection closing before the baseline is taken.
    thread::sleep(Duration::from_millis(50));
    Ok((guard, addr))
}

/// The directory of this executable, checked to hold every binary of `names`.
pub fn sibling_binaries(names: &[String]) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("this executable has no parent directory")?
        .to_path_buf();
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !dir.join(n).is_file())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing next to {}: {}; build with `cargo build --release -p hydrogen-bench`",
            exe.display(),
            missing.join(", ")
        ));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings() {
        let me = Pid::this();
        assert!(cpu_ticks(me).is_ok());
        assert!(rss_kib(me).unwrap() > 0);
        // Pids are at most 2^22 on Linux.
        let none = Pid::from_raw(1 << 23);
        assert!(cpu_ticks(none).is_err());
        assert!(rss_kib(none).is_err());
    }

    /// A child started once the signals are taken starts with none of them blocked, as it
    /// would without (a mask blocked here would be inherited through `exec`).
    #[test]
    fn children_start_with_no_signal_blocked() {
        kill_children_on_signals("test");
        let out = Command::new("grep")
            .args(["SigBlk", "/proc/self/status"])
            .output()
            .unwrap();
        let line = String::from_utf8(out.stdout).unwrap();
        let mask = line.trim().strip_prefix("SigBlk:").unwrap().trim();
        assert!(mask.chars().all(|c| c == '0'), "{line}");
    }
}
