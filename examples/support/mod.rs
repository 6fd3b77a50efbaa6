//! What the examples share: their server command line and their log set-up. Not an example
//! itself (Cargo builds only `examples/*.rs` and `examples/*/main.rs`).

// Each example uses the part it needs.
#![allow(dead_code)]

use std::io;
use std::process::ExitCode;

use clap::Args;
use hydrogen::{Config, Framing, Handler, ListenAddr, RunSummary, Server};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The options every example server takes.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on, HOST:PORT ([::1]:PORT for IPv6).
    #[arg(long, default_value = "127.0.0.1:1337", value_parser = parse_addr)]
    pub addr: (String, u16),
    /// Framing: "simple" (0x01, u16 BE length, payload, 0x17) or "u32" (u32 BE length,
    /// payload, at most 8 MiB).
    #[arg(long, default_value = "simple")]
    pub framing: Framing,
    /// Worker threads [default: the number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Also listen on this Unix-domain socket path (a stale socket file left by a dead
    /// server is replaced; a live one is an error).
    #[arg(long, value_name = "PATH")]
    pub unix: Option<std::path::PathBuf>,
    /// Set SO_REUSEPORT, so that several processes can serve --addr together (the kernel
    /// spreads connections over them): run one per core.
    #[arg(long)]
    pub reuse_port: bool,
    /// Require a PROXY protocol header (v1 or v2) on every connection, as HAProxy's
    /// send-proxy / send-proxy-v2 send it; the client address in it is the peer's.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// With --proxy-protocol: the sources allowed to send the header [default: loopback,
    /// 127.0.0.0/8,::1/128].
    #[arg(
        long,
        value_name = "CIDR[,CIDR...]",
        value_delimiter = ',',
        requires = "proxy_protocol"
    )]
    pub proxy_from: Vec<hydrogen::IpNet>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, RSA or SEC1).
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// The server's configuration: these options over the defaults.
    pub fn config(&self) -> Config {
        let defaults = Config::default();
        Config {
            addr: self.addr.0.clone(),
            port: self.addr.1,
            framing: self.framing,
            max_threads: self.threads.map_or(defaults.max_threads, usize::from),
            listen: self.unix.iter().cloned().map(ListenAddr::Unix).collect(),
            reuse_port: self.reuse_port,
            proxy_protocol: self.proxy_protocol,
            proxy_from: if self.proxy_from.is_empty() {
                defaults.proxy_from.clone()
            } else {
                self.proxy_from.clone()
            },
            ..defaults
        }
    }
}

/// The TLS configuration an example serves with (none for plain TCP, and always none
/// without the `tls` feature).
pub struct Tls(#[cfg(feature = "tls")] Option<hydrogen::tls::TlsConfig>);

impl ServerArgs {
    /// Loads `--tls-cert` and `--tls-key`, if given: call it before binding, so that a bad
    /// certificate or key (the error names the file) fails before anything listens.
    pub fn tls(&self) -> io::Result<Tls> {
        #[cfg(feature = "tls")]
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            return Ok(Tls(Some(hydrogen::tls::TlsConfig::from_pem_files(
                cert, key,
            )?)));
        }
        Ok(Tls(
            #[cfg(feature = "tls")]
            None,
        ))
    }

    /// Runs `server` with `handler`: over TLS with `tls` (in the configured framing), else in
    /// plain TCP.
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub fn run<H: Handler>(&self, tls: Tls, server: Server, handler: H) -> io::Result<RunSummary> {
        #[cfg(feature = "tls")]
        if let Tls(Some(tls)) = tls {
            return server.run_with(hydrogen::tls::TlsTransport::new(tls, self.framing), handler);
        }
        server.run(handler)
    }
}

/// Prints `listening on ADDR` for each address `server` listens on, `--addr` first (a
/// Unix-domain one as `unix:PATH`).
pub fn announce(server: &Server) -> io::Result<()> {
    for addr in server.local_addrs()? {
        println!("listening on {addr}");
    }
    Ok(())
}

/// Splits `HOST:PORT` on its last ':'; `[::1]:PORT` gives host `::1`.
pub fn parse_addr(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("{s:?}: empty host"));
    }
    let port = port
        .parse()
        .map_err(|_| format!("{s:?}: invalid port {port:?}"))?;
    Ok((host.to_string(), port))
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

/// The exit of an example server: `shut down` after a clean stop, or the error.
pub fn exit(result: io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => {
            println!("shut down");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A text client for the examples' tests: SimpleFrame, a 10 s read timeout.
#[cfg(test)]
pub struct TextClient(hydrogen::client::Client<hydrogen::SimpleFrame>);

#[cfg(test)]
impl TextClient {
    pub fn connect(addr: std::net::SocketAddr) -> TextClient {
        let client = hydrogen::client::Client::connect(addr, hydrogen::SimpleFrame).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        TextClient(client)
    }

    /// Sends `request` and returns the next frame.
    pub fn ask(&mut self, request: &str) -> String {
        self.0.send(request.as_bytes()).unwrap();
        self.next()
    }

    /// The next frame, as text.
    pub fn next(&mut self) -> String {
        String::from_utf8(self.0.recv().unwrap().expect("a frame")).unwrap()
    }
}
