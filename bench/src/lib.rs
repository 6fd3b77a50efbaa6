//! Shared pieces of the benchmark suite.
pub mod child;
pub mod cli;
pub mod load;
pub mod report;
pub mod server_cli;
