//! loadgen's TLS client against the tokio-rustls peer (`tokio_echo --tls-cert/--tls-key`), end
//! to end over loopback: each mode for a fraction of a second, every reply verified by loadgen;
//! and the refusals: a client that trusts another certificate, a plain client against a TLS
//! server, and the servers that do not speak TLS.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hydrogen_bench::child::start_listening;
use hydrogen_bench::tls::{CertFiles, write_test_cert};

/// A fresh directory for this test's certificate files.
fn cert_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hydrogen-bench-tls-it-{tag}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Starts `tokio_echo` serving TLS with `files`, on a free port.
fn tls_server(files: &CertFiles) -> (hydrogen_bench::child::Guard, String) {
    let cert = files.cert.to_str().expect("UTF-8 path");
    let key = files.key.to_str().expect("UTF-8 path");
    let (guard, addr) = start_listening(
        Path::new(env!("CARGO_BIN_EXE_tokio_echo")),
        &[
            "--addr",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
        Stdio::inherit(),
    )
    .expect("tokio_echo --tls-cert starts");
    (guard, addr.to_string())
}

#[track_caller]
fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("loadgen runs")
}

/// The `RESULT` line of a successful run.
#[track_caller]
fn result_line(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"MEASURE_START"), "{stdout}");
    assert!(lines.contains(&"MEASURE_END"), "{stdout}");
    lines
        .iter()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line: {stdout}"))
        .to_string()
}

/// The number after `key=` in a RESULT line.
fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .expect("a number")
}

#[test]
fn loadgen_speaks_tls_in_every_mode() {
    let dir = cert_dir("modes");
    let files = write_test_cert(&dir).unwrap();
    let ca = files.cert.to_str().unwrap();
    let (mut server, addr) = tls_server(&files);
    let common = ["--addr", &addr, "--tls-ca", ca, "--secs", "0.3"];

    // Echo, pipelined: 4 connections x 8 frames in flight.
    let line = result_line(&loadgen(
        &[
            &common[..],
            &["--conns", "4", "--depth", "8", "--warmup", "0.1"],
        ]
        .concat(),
    ));
    assert!(
        line.starts_with("RESULT mode=echo conns=4 depth=8"),
        "{line}"
    );
    assert!(field(&line, "frames") > 0.0, "{line}");

    // Frames larger than one TLS record (16 KiB) are split over records and reassembled.
    let line = result_line(&loadgen(
        &[
            &common[..],
            &[
                "--conns", "2", "--depth", "2", "--size", "40000", "--warmup", "0",
            ],
        ]
        .concat(),
    ));
    assert!(field(&line, "frames") > 0.0, "{line}");

    // Idle: every connection handshakes, echoes once, waits, echoes again.
    let line = result_line(&loadgen(
        &[&common[..], &["--mode", "idle", "--conns", "50"]].concat(),
    ));
    assert!(line.starts_with("RESULT mode=idle conns=50"), "{line}");
    assert_eq!(field(&line, "pings"), 100.0, "{line}");

    // Churn: connect, full handshake, one echo, close.
    let line = result_line(&loadgen(
        &[
            &common[..],
            &["--mode", "churn", "--conns", "2", "--warmup", "0.1"],
        ]
        .concat(),
    ));
    assert!(field(&line, "cycles") > 0.0, "{line}");

    assert_eq!(server.stop(std::time::Duration::from_secs(3)), "0");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn tls_mismatches_fail_the_run() {
    let dir = cert_dir("mismatch");
    let files = write_test_cert(&dir).unwrap();
    let other = write_test_cert(&dir.join("other")).unwrap();
    let (mut server, addr) = tls_server(&files);
    // A long window: each of these fails at its first exchange, which ends loadgen at once,
    // and the failure must come before the window could end with no replies.
    let quick = ["--addr", &addr, "--secs", "20", "--warmup", "0"];

    // A client that trusts another certificate refuses the server.
    let out = loadgen(&[&quick[..], &["--tls-ca", other.cert.to_str().unwrap()]].concat());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");

    // A plain client gets no echo from a TLS server: the server drops the connection.
    let out = loadgen(&quick);
    assert_eq!(out.status.code(), Some(1));

    // A CA file that is not there is a usage error.
    let out = loadgen(&[&quick[..], &["--tls-ca", "/nonexistent/ca.pem"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca"));

    assert_eq!(server.stop(std::time::Duration::from_secs(3)), "0");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn servers_without_tls_refuse_the_flags() {
    let dir = cert_dir("refuse");
    let files = write_test_cert(&dir).unwrap();
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let mut servers = vec![
        env!("CARGO_BIN_EXE_mio_echo"),
        env!("CARGO_BIN_EXE_tokio_chat"),
    ];
    if cfg!(not(feature = "hydrogen-tls")) {
        servers.push(env!("CARGO_BIN_EXE_hydrogen_echo"));
    }
    for bin in servers {
        let out = Command::new(bin)
            .args([
                "--addr",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin}: {err}");
        assert!(err.contains("--tls-cert"), "{bin}: {err}");
        if bin.ends_with("hydrogen_echo") {
            assert!(
                err.contains("built without TLS: rebuild with --features hydrogen-tls"),
                "{err}"
            );
        }
    }
    let _ = fs::remove_dir_all(&dir);
}
