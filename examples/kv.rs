//! A key-value store with prefix subscriptions: per-connection state in the session.
//!
//! Each client's subscriptions live in its `Session`, which the library hands to every
//! callback of that connection as `&mut`, with no lock, and back by value when the connection
//! is removed. The only shared state is what really is shared: the store, and the index from
//! prefix to subscribers that a `SET` needs to find who to tell. Removing a connection cleans
//! the index from the subscriptions its session lists, so nothing else is keyed by connection.
//!
//! Commands are text frames (in the chosen framing), words separated by one space:
//!
//! | request         | reply                  | and                                          |
//! |-----------------|------------------------|----------------------------------------------|
//! | `SET key value` | `OK`                   | every subscriber to a prefix of `key` gets `PUB key value` first |
//! | `GET key`       | `VAL value` or `NIL`   |                                              |
//! | `DEL key`       | `OK` or `NIL`          | subscribers get `DEL key`                    |
//! | `SUB prefix`    | `OK`                   | from now on this connection gets `PUB`/`DEL` for keys under `prefix` (`SUB` alone: every key) |
//! | `UNSUB prefix`  | `OK` or `NIL`          |                                              |
//! | `STATS`         | `SUBS n COMMANDS m`    | this connection's subscriptions and commands so far |
//!
//! Anything else gets `ERR ...` and the connection stays open. A subscriber sees the
//! changes to its keys in the order the store made them: they are sent while the store's lock
//! is held, which `Socket::send` allows (it never blocks and never calls back).
//!
//! ```text
//! cargo run --release --example kv                      # 127.0.0.1:1337, SimpleFrame
//! cargo run --release --example kv -- --addr 127.0.0.1:4000 --framing u32
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::process::ExitCode;

use clap::Parser;
use hydrogen::{CloseReason, Config, Handler, Server, Socket};
use parking_lot::Mutex;

mod support;

/// A key-value store with prefix subscriptions. Stops cleanly on SIGINT (Ctrl-C) or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "kv")]
struct Cli {
    #[command(flatten)]
    server: support::ServerArgs,
}

/// One connection's state: no lock, no map keyed by connection.
#[derive(Debug, Default)]
struct Session {
    /// The prefixes this connection subscribed to.
    subscriptions: BTreeSet<String>,
    /// Commands it sent.
    commands: u64,
}

/// The shared state.
#[derive(Default)]
struct Kv {
    store: Mutex<BTreeMap<String, String>>,
    /// Prefix -> subscribers, by connection id.
    index: Mutex<HashMap<String, HashMap<u64, Socket>>>,
}

impl Kv {
    /// Sends `message` to every subscriber of a prefix of `key` (each once, even if it
    /// subscribed to several such prefixes).
    fn publish(&self, key: &str, message: &[u8]) {
        let index = self.index.lock();
        let mut told = BTreeSet::new();
        // The prefixes of `key`, shortest first, the empty one included.
        let prefixes = key
            .char_indices()
            .map(|(i, _)| &key[..i])
            .chain(std::iter::once(key));
        for prefix in prefixes {
            for (id, socket) in index.get(prefix).into_iter().flatten() {
                if told.insert(*id) {
                    // Fails only for a subscriber on its way out; its removal unsubscribes it.
                    let _ = socket.send(message);
                }
            }
        }
    }

    fn command(&self, session: &mut Session, socket: &Socket, frame: &[u8]) -> String {
        let Ok(text) = std::str::from_utf8(frame) else {
            return "ERR not UTF-8".into();
        };
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        match verb {
            "SET" => {
                let Some((key, value)) = rest.split_once(' ') else {
                    return "ERR usage: SET key value".into();
                };
                let mut store = self.store.lock();
                store.insert(key.to_string(), value.to_string());
                // Under the store's lock: subscribers see changes in the store's order.
                self.publish(key, format!("PUB {key} {value}").as_bytes());
                "OK".into()
            }
            "GET" if !rest.is_empty() => match self.store.lock().get(rest) {
                Some(value) => format!("VAL {value}"),
                None => "NIL".into(),
            },
            "DEL" if !rest.is_empty() => {
                let mut store = self.store.lock();
                if store.remove(rest).is_none() {
                    return "NIL".into();
                }
                self.publish(rest, format!("DEL {rest}").as_bytes());
                "OK".into()
            }
            "SUB" => {
                if session.subscriptions.insert(rest.to_string()) {
                    self.index
                        .lock()
                        .entry(rest.to_string())
                        .or_default()
                        .insert(socket.id(), socket.clone());
                }
                "OK".into()
            }
            "UNSUB" => {
                if !session.subscriptions.remove(rest) {
                    return "NIL".into();
                }
                self.unsubscribe(rest, socket.id());
                "OK".into()
            }
            "STATS" => format!(
                "SUBS {} COMMANDS {}",
                session.subscriptions.len(),
                session.commands
            ),
            _ => format!("ERR unknown command {verb:?}"),
        }
    }

    fn unsubscribe(&self, prefix: &str, id: u64) {
        let mut index = self.index.lock();
        if let Some(subscribers) = index.get_mut(prefix) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                index.remove(prefix);
            }
        }
    }
}

impl Handler for Kv {
    type Session = Session;

    fn on_frame(&self, session: &mut Session, socket: &Socket, frame: &[u8]) {
        session.commands += 1;
        let reply = self.command(session, socket, frame);
        let _ = socket.send(reply.as_bytes());
    }

    fn on_connection_removed(&self, session: Session, socket: &Socket, reason: &CloseReason) {
        for prefix in &session.subscriptions {
            self.unsubscribe(prefix, socket.id());
        }
        tracing::debug!(id = socket.id(), commands = session.commands, %reason, "client left");
    }
}

fn serve(config: Config) -> io::Result<()> {
    let server = Server::bind(config)?;
    println!("listening on {}", server.local_addr()?);
    server.shutdown_handle().shutdown_on_signals()?;
    server.run(Kv::default()).map(drop)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    support::init_logging();
    support::exit(serve(cli.server.config()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    use crate::support::TextClient;

    #[test]
    fn subscriptions_live_in_the_session() {
        let kv = Arc::new(Kv::default());
        let server = Server::bind(Config {
            port: 0,
            max_threads: 2,
            ..Config::default()
        })
        .unwrap();
        let addr = server.local_addr().unwrap();
        let stop = server.shutdown_handle();
        let running = {
            let kv = kv.clone();
            thread::spawn(move || server.run(kv))
        };

        let mut alice = TextClient::connect(addr);
        let mut bob = TextClient::connect(addr);
        assert_eq!(alice.ask("SUB user:"), "OK");
        assert_eq!(alice.ask("SUB user:b"), "OK");
        assert_eq!(bob.ask("SET user:bob 42"), "OK");
        // Subscribed twice over, told once.
        assert_eq!(alice.next(), "PUB user:bob 42");
        assert_eq!(bob.ask("SET other 1"), "OK");
        assert_eq!(alice.ask("GET user:bob"), "VAL 42", "nothing for `other`");
        assert_eq!(alice.ask("GET nobody"), "NIL");
        assert_eq!(alice.ask("UNSUB user:b"), "OK");
        assert_eq!(alice.ask("UNSUB user:b"), "NIL");
        assert_eq!(bob.ask("DEL user:bob"), "OK");
        assert_eq!(alice.next(), "DEL user:bob");
        assert_eq!(alice.ask("FROB"), "ERR unknown command \"FROB\"");
        assert_eq!(alice.ask("STATS"), "SUBS 1 COMMANDS 8");
        assert_eq!(bob.ask("STATS"), "SUBS 0 COMMANDS 4");

        // Leaving unsubscribes: the index forgets alice.
        drop(alice);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !kv.index.lock().is_empty() {
            assert!(Instant::now() < deadline, "the index still holds alice");
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(bob.ask("SET user:carol 7"), "OK");

        stop.shutdown();
        running.join().unwrap().unwrap();
    }
}
