//! Shared pieces of the benchmark suite.
