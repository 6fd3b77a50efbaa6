//! Every operating-system call the server makes lives under this module.
//!
//! `nix` gives safe wrappers for all of them, so the crate needs no `unsafe` at all.

pub(crate) mod epoll;
pub(crate) mod eventfd;
pub(crate) mod signal;
pub(crate) mod timer;
