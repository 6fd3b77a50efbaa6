//! Termination signals, taken synchronously with `sigwait` by a thread of our own.

use std::io;

use nix::sys::signal::{SigSet, Signal};

/// SIGINT and SIGTERM, blocked in the thread that made this value (and in every thread it
/// starts afterwards, which inherit the mask), so that only [`wait`](Self::wait) receives them.
#[derive(Debug)]
pub(crate) struct Termination(SigSet);

impl Termination {
    pub fn block() -> io::Result<Termination> {
        let set = SigSet::from_iter([Signal::SIGINT, Signal::SIGTERM]);
        set.thread_block()?;
        Ok(Termination(set))
    }

    /// Waits for one of the signals and returns its name.
    pub fn wait(&self) -> io::Result<&'static str> {
        Ok(self.0.wait()?.as_str())
    }
}
