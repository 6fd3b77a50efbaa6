//! [`Config`]: where the server listens and how it is sized.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread;

/// Server configuration.
///
/// Build one with struct-update syntax so new fields keep their defaults:
///
/// ```
/// let config = hydrogen::Config {
///     port: 0, // let the OS pick a free port
///     max_threads: 2,
///     ..hydrogen::Config::default()
/// };
/// assert_eq!(config.addr, "127.0.0.1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Host name or IP address to listen on. Default `"127.0.0.1"` (loopback only); use
    /// `"0.0.0.0"` or `"::"` to accept connections from other hosts.
    pub addr: String,
    /// TCP port to listen on. Default `1337`; `0` lets the OS pick one
    /// (see [`Server::local_addr`](crate::Server::local_addr)).
    pub port: u16,
    /// Number of worker threads, the thread calling [`Server::run`](crate::Server::run) included.
    /// Default: the number of CPUs.
    pub max_threads: usize,
    /// Connection slots to allocate up front; the table grows past it on demand. Default `1024`.
    pub pre_allocated: usize,
    /// Length of the kernel's queue of connections not yet accepted (`listen(2)` backlog; the
    /// kernel caps it at `net.core.somaxconn`). Default `1024`.
    pub backlog: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: "127.0.0.1".to_string(),
            port: 1337,
            max_threads: thread::available_parallelism().map_or(1, |n| n.get()),
            pre_allocated: 1024,
            backlog: 1024,
        }
    }
}

impl Config {
    /// Resolves `addr` and `port` to the address the server binds (the first one, if the name
    /// resolves to several).
    ///
    /// # Errors
    ///
    /// Fails if the name does not resolve.
    pub fn socket_addr(&self) -> io::Result<SocketAddr> {
        (self.addr.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("address {:?} resolves to nothing", self.addr),
                )
            })
    }

    /// Checks the fields that have no meaningful value at zero.
    pub(crate) fn validate(&self) -> io::Result<()> {
        if self.max_threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::max_threads must be at least 1",
            ));
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Config::backlog must be between 1 and i32::MAX",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_resolves_to_loopback() {
        let addr = Config::default().socket_addr().unwrap();
        assert_eq!(addr, "127.0.0.1:1337".parse().unwrap());
    }

    #[test]
    fn zero_threads_is_rejected() {
        let config = Config {
            max_threads: 0,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn unresolvable_name_is_an_error() {
        let config = Config {
            addr: "no such host.invalid".to_string(),
            ..Config::default()
        };
        assert!(config.socket_addr().is_err());
    }
}
