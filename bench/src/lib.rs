//! Shared pieces of the benchmark suite.
pub mod server_cli;
pub mod load;
pub mod report;
