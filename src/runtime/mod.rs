//! The runtime behind [`Server::run`](crate::Server::run): worker threads on one shared epoll
//! instance, a sharded table of connections, and what keeps them honest (timeouts, the memory
//! ceiling, the shutdown drain).
//!
//! | file              | owns                                                                  |
//! |-------------------|-----------------------------------------------------------------------|
//! | `shared.rs`       | `Settings` (fixed from the `Config`) and `Core` (state every worker shares), the poll-gap counters |
//! | `lifecycle.rs`    | the server's one lifecycle state: serving, shutdown asked, draining, stopping |
//! | `worker.rs`       | the worker loop: leader/follower polling, claiming and driving connections, closing them |
//! | `accept.rs`       | the accept loop and opening a connection (socket options, the transport, the session) |
//! | `header.rs`       | reading the PROXY protocol header off a new connection's socket        |
//! | `housekeeping.rs` | the timer tick: timeouts, accept back-off, the drain                  |
//! | `conn.rs`         | one connection: its claim state and transitions, its session and queue of frames waiting, requests from other threads, `Socket`'s link |
//! | `table.rs`        | the slab-indexed, lock-sharded connection table and epoll tokens      |
//! | `pool.rs`         | the blocking pool: offloaded frames, each connection's in order, off the I/O workers |
//! | `queue.rs`        | the task channel between workers, and the notifier that wakes the poller |
//! | `monitor.rs`      | the watch thread that hands the polling on while the leader runs a callback |
//! | `timeouts.rs`     | idle and frame timeouts: when each connection must next be checked    |
//! | `buffers.rs`      | the server-wide byte count behind `Config::max_buffered`              |
//! | `telemetry.rs`    | the metrics (through the `metrics` facade) and what each one counts   |
//! | `clock.rs`        | the coarse millisecond clock and saturating deadlines                 |

pub(crate) mod accept;
pub(crate) mod buffers;
pub(crate) mod clock;
pub(crate) mod conn;
pub(crate) mod header;
pub(crate) mod housekeeping;
pub(crate) mod lifecycle;
pub(crate) mod monitor;
pub(crate) mod pool;
pub(crate) mod queue;
pub(crate) mod shared;
pub(crate) mod table;
pub(crate) mod telemetry;
pub(crate) mod timeouts;
pub(crate) mod worker;
