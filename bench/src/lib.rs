//! Shared pieces of the benchmark suite.
#![forbid(unsafe_code)]
pub mod blocking;
pub mod child;
pub mod cli;
pub mod fanout;
pub mod load;
pub mod report;
pub mod server_cli;
pub mod tls;
