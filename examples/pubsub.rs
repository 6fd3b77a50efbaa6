//! A publish/subscribe feed server: topics are `Group`s, subscribers fall behind by a bounded
//! amount, and a periodic log line shows who is connected.
//!
//! Commands are text frames (in the chosen framing), words separated by one space:
//!
//! | request               | reply       | and                                                      |
//! |-----------------------|-------------|----------------------------------------------------------|
//! | `SUB topic`           | `OK`        | from now on this connection gets `MSG topic message` for every `PUB` to `topic` |
//! | `UNSUB topic`         | `OK`, `NIL` |                                                          |
//! | `PUB topic message`   | `OK n`      | `MSG topic message` to the topic's `n` subscribers (the publisher too, if subscribed) |
//!
//! A publish is encoded once and shared by every subscriber's write queue, and never waits
//! for a slow subscriber. A feed is about the latest news, so a subscriber that falls more than
//! `--max-lag` bytes behind loses its oldest undelivered messages (`OnLag::DropOldest`)
//! instead of holding memory or being cut off; what it gets stays in order. Messages from one
//! publisher reach every subscriber in the order they were published.
//!
//! With `--stats-every SECS`, a log line every SECS seconds lists the connections, from
//! `ShutdownHandle::connections`: a stand-in for an admin endpoint.
//!
//! ```text
//! cargo run --release --example pubsub -- --stats-every 5
//! ```

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::Parser;
use hydrogen::{
    CloseReason, Config, Group, Handler, LagPolicy, OnLag, Server, ShutdownHandle, Socket,
};
use parking_lot::Mutex;

mod support;

/// A publish/subscribe feed server. Stops cleanly on SIGINT (Ctrl-C) or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "pubsub")]
struct Cli {
    #[command(flatten)]
    server: support::ServerArgs,
    /// Bytes of undelivered messages a subscriber may hold before its oldest are dropped.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_lag: usize,
    /// Log a line about the open connections every SECS seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    stats_every: u64,
}

/// One connection's subscriptions.
#[derive(Debug, Default)]
struct Subscriptions(BTreeSet<String>);

struct Feed {
    topics: Mutex<HashMap<String, Group>>,
    policy: LagPolicy,
}

impl Feed {
    fn new(max_lag: usize) -> Feed {
        Feed {
            topics: Mutex::new(HashMap::new()),
            policy: LagPolicy {
                max_lag,
                on_lag: OnLag::DropOldest,
            },
        }
    }

    fn command(&self, subs: &mut Subscriptions, socket: &Socket, frame: &[u8]) -> String {
        let Ok(text) = std::str::from_utf8(frame) else {
            return "ERR not UTF-8".into();
        };
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        match verb {
            "SUB" if !rest.is_empty() => {
                let group = self
                    .topics
                    .lock()
                    .entry(rest.to_string())
                    .or_insert_with(|| Group::with_policy(self.policy))
                    .clone();
                group.join(socket);
                subs.0.insert(rest.to_string());
                "OK".into()
            }
            "UNSUB" if !rest.is_empty() => {
                if !subs.0.remove(rest) {
                    return "NIL".into();
                }
                self.leave(rest, socket);
                "OK".into()
            }
            "PUB" => {
                let Some((topic, message)) = rest.split_once(' ') else {
                    return "ERR usage: PUB topic message".into();
                };
                let group = self.topics.lock().get(topic).cloned();
                let n = group.map_or(0, |g| {
                    g.broadcast(format!("MSG {topic} {message}").as_bytes())
                });
                format!("OK {n}")
            }
            _ => format!("ERR unknown command {text:?}"),
        }
    }

    /// Leaves a topic, and forgets the topic once nobody is subscribed.
    fn leave(&self, topic: &str, socket: &Socket) {
        let mut topics = self.topics.lock();
        if let Some(group) = topics.get(topic) {
            group.leave(socket);
            if group.is_empty() {
                topics.remove(topic);
            }
        }
    }
}

impl Handler for Feed {
    type Session = Subscriptions;

    fn on_frame(&self, subs: &mut Subscriptions, socket: &Socket, frame: &[u8]) {
        let reply = self.command(subs, socket, frame);
        let _ = socket.send(reply.as_bytes());
    }

    fn on_connection_removed(&self, subs: Subscriptions, socket: &Socket, reason: &CloseReason) {
        // The groups let go of the closed connection already; drop the topics left empty.
        for topic in &subs.0 {
            self.leave(topic, socket);
        }
        tracing::debug!(id = socket.id(), topics = subs.0.len(), %reason, "subscriber left");
    }
}

/// Logs a line about the open connections every `every`, until the server stops.
fn report(handle: ShutdownHandle, every: Duration) {
    thread::spawn(move || {
        loop {
            thread::sleep(every);
            let conns = handle.connections();
            if conns.is_empty() && handle.is_stopped() {
                return;
            }
            // Behind: what its write queue holds, and what its topics broadcast that it has
            // not taken into the queue yet.
            let behind = |c: &hydrogen::ConnectionInfo| c.queued_bytes as u64 + c.group_backlog;
            let most = conns.iter().max_by_key(|c| behind(c));
            tracing::info!(
                connections = conns.len(),
                queued_bytes = conns.iter().map(|c| c.queued_bytes).sum::<usize>(),
                group_backlog = conns.iter().map(|c| c.group_backlog).sum::<u64>(),
                frames_in = conns.iter().map(|c| c.frames_in).sum::<u64>(),
                frames_out = conns.iter().map(|c| c.frames_out).sum::<u64>(),
                most_behind = ?most.map(|c| (c.id, c.peer.clone(), behind(c))),
                "connections"
            );
        }
    });
}

fn serve(config: Config, cli: &Cli) -> io::Result<()> {
    let server = Server::bind(config)?;
    println!("listening on {}", server.local_addr()?);
    let handle = server.shutdown_handle();
    handle.shutdown_on_signals()?;
    if cli.stats_every > 0 {
        report(handle, Duration::from_secs(cli.stats_every));
    }
    server.run(Feed::new(cli.max_lag)).map(drop)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    support::init_logging();
    support::exit(serve(cli.server.config(), &cli))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    use crate::support::TextClient;

    #[test]
    fn topics_are_groups() {
        let feed = Arc::new(Feed::new(1024 * 1024));
        let server = Server::bind(Config {
            port: 0,
            max_threads: 2,
            ..Config::default()
        })
        .unwrap();
        let addr = server.local_addr().unwrap();
        let stop = server.shutdown_handle();
        let running = {
            let feed = feed.clone();
            thread::spawn(move || server.run(feed))
        };

        let mut alice = TextClient::connect(addr);
        let mut bob = TextClient::connect(addr);
        let mut publisher = TextClient::connect(addr);
        assert_eq!(alice.ask("SUB news"), "OK");
        assert_eq!(bob.ask("SUB news"), "OK");
        assert_eq!(bob.ask("SUB sport"), "OK");
        for i in 0..20 {
            assert_eq!(publisher.ask(&format!("PUB news item{i}")), "OK 2");
        }
        assert_eq!(publisher.ask("PUB sport goal"), "OK 1");
        assert_eq!(publisher.ask("PUB weather rain"), "OK 0");
        for i in 0..20 {
            assert_eq!(alice.next(), format!("MSG news item{i}"));
            assert_eq!(bob.next(), format!("MSG news item{i}"));
        }
        assert_eq!(bob.next(), "MSG sport goal");
        assert_eq!(alice.ask("UNSUB news"), "OK");
        assert_eq!(publisher.ask("PUB news late"), "OK 1");
        assert_eq!(bob.next(), "MSG news late");

        // Bob leaves: his topics forget him, and `sport` goes with its last subscriber.
        drop(bob);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !feed.topics.lock().is_empty() {
            assert!(
                Instant::now() < deadline,
                "topics left: {:?}",
                feed.topics.lock().keys()
            );
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(publisher.ask("PUB news gone"), "OK 0");
        assert_eq!(stop.connections().len(), 2, "alice and the publisher");

        stop.shutdown();
        running.join().unwrap().unwrap();
    }
}
