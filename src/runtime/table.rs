//! The connection table: a slab split into independently locked shards, and the epoll token
//! layout that addresses it.
//!
//! # Tokens
//!
//! Every connection socket is registered with epoll under a 64-bit token:
//!
//! | bits   | meaning                                                   |
//! |--------|-----------------------------------------------------------|
//! | 63..32 | slot: the connection's index in the table                 |
//! | 31..0  | tag: the low 32 bits of the connection's unique id         |
//!
//! Slots are reused (most recently freed first) and so are file descriptor numbers, but ids
//! never are: an event that was already fetched for a connection that has since closed finds
//! a different tag in the slot and is dropped. A stale event could only hit a new tenant of
//! the same slot after 2^32 more connections, while that one event was still in flight.
//! Tokens with slot `u32::MAX` are reserved for the listener, the notifier and the timer.

use std::sync::Arc;

use parking_lot::Mutex;
use slab::Slab;

/// Tokens of the listening sockets: slot `u32::MAX`, the listener's index as the tag (see
/// [`listener_token`]).
const LISTENER_BASE: u64 = (SLOT_LIMIT as u64) << TAG_BITS;
/// Listeners a server may have (far more than anyone needs; the tags above are taken).
pub(crate) const MAX_LISTENERS: usize = 1024;
/// Token of the notifier's eventfd.
pub(crate) const NOTIFY: u64 = u64::MAX - 1;
/// Token of the housekeeping timer.
pub(crate) const TIMER: u64 = u64::MAX - 2;

const TAG_BITS: u32 = 32;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Slots at or above this value would collide with the reserved tokens.
const SLOT_LIMIT: usize = u32::MAX as usize;

/// The token a connection in `slot` with this `id` is registered under.
#[inline]
pub(crate) fn token(slot: usize, id: u64) -> u64 {
    debug_assert!(slot < SLOT_LIMIT);
    ((slot as u64) << TAG_BITS) | (id & TAG_MASK)
}

/// The token of the server's `index`th listener.
#[inline]
pub(crate) fn listener_token(index: usize) -> u64 {
    debug_assert!(index < MAX_LISTENERS);
    LISTENER_BASE | index as u64
}

/// The listener index a token names, if it names one.
#[inline]
pub(crate) fn listener_index(token: u64) -> Option<usize> {
    let index = token.checked_sub(LISTENER_BASE)?;
    (index < MAX_LISTENERS as u64).then_some(index as usize)
}

/// Splits a connection token into its slot and tag.
#[inline]
pub(crate) fn split(token: u64) -> (usize, u64) {
    ((token >> TAG_BITS) as usize, token & TAG_MASK)
}

/// Connection ids are unique per process, so the tag check also holds across servers.
#[inline]
pub(crate) fn tag(id: u64) -> u64 {
    id & TAG_MASK
}

/// The table contract a stored value must meet: it knows its own id.
pub(crate) trait Keyed {
    fn id(&self) -> u64;
}

/// A sharded slab of `Arc<T>`. Shard `i` holds the slots whose low bits are `i`, so a slot
/// number names its shard without any lookup; shards are locked only to insert, look up (one
/// `Arc` clone) or remove, never while a connection is driven.
pub(crate) struct Table<T> {
    shards: Box<[Mutex<Slab<Arc<T>>>]>,
    /// log2 of the number of shards (a power of two).
    shift: u32,
}

impl<T: Keyed> Table<T> {
    /// A table with `shards` shards (rounded up to a power of two) and room for `capacity`
    /// entries before any shard grows.
    pub fn new(shards: usize, capacity: usize) -> Table<T> {
        let shards = shards.max(1).next_power_of_two();
        let per_shard = capacity.div_ceil(shards);
        Table {
            shards: (0..shards)
                .map(|_| Mutex::new(Slab::with_capacity(per_shard)))
                .collect(),
            shift: shards.trailing_zeros(),
        }
    }

    #[inline]
    fn locate(&self, slot: usize) -> (&Mutex<Slab<Arc<T>>>, usize) {
        let mask = (1 << self.shift) - 1;
        (&self.shards[slot & mask], slot >> self.shift)
    }

    /// Inserts the value `make(slot)` builds, in the shard chosen by `id`, and returns it.
    /// Returns `None` if the table is full (2^32 slots).
    pub fn insert(&self, id: u64, make: impl FnOnce(usize) -> T) -> Option<Arc<T>> {
        let index = (id as usize) & ((1 << self.shift) - 1);
        let mut shard = self.shards[index].lock();
        let entry = shard.vacant_entry();
        let slot = (entry.key() << self.shift) | index;
        if slot >= SLOT_LIMIT {
            return None;
        }
        let value = Arc::new(make(slot));
        entry.insert(value.clone());
        Some(value)
    }

    /// The entry in `slot`, if its id has this tag.
    #[inline]
    pub fn get(&self, slot: usize, tag_bits: u64) -> Option<Arc<T>> {
        let (shard, key) = self.locate(slot);
        let shard = shard.lock();
        shard
            .get(key)
            .filter(|value| tag(value.id()) == tag_bits)
            .cloned()
    }

    /// The entry in `slot`, if it is the one with this id: for lookups that kept the whole
    /// id (epoll tokens carry only its tag, see [`get`](Self::get)).
    #[inline]
    pub fn get_id(&self, slot: usize, id: u64) -> Option<Arc<T>> {
        let (shard, key) = self.locate(slot);
        let shard = shard.lock();
        shard.get(key).filter(|value| value.id() == id).cloned()
    }

    /// Removes the entry in `slot` if it is the one with this id.
    pub fn remove(&self, slot: usize, id: u64) -> Option<Arc<T>> {
        let (shard, key) = self.locate(slot);
        let mut shard = shard.lock();
        if shard.get(key).is_some_and(|value| value.id() == id) {
            Some(shard.remove(key))
        } else {
            None
        }
    }

    /// Removes and returns every entry.
    pub fn drain(&self) -> Vec<Arc<T>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.lock().drain());
        }
        all
    }

    /// Calls `f` on every entry, one shard at a time, with that shard locked: `f` must be
    /// quick and must not touch the table.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<T>)) {
        for shard in self.shards.iter() {
            for (_, value) in shard.lock().iter() {
                f(value);
            }
        }
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.lock().is_empty())
    }

    /// The number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }
}

/// What a [`ShutdownHandle`](crate::ShutdownHandle) can ask of a running server's table,
/// whatever its connection type.
pub(crate) trait Inspect: Send + Sync {
    fn connections(&self) -> Vec<crate::ConnectionInfo>;
}

impl<S: crate::Stream, U: Send + 'static> Inspect for Table<crate::runtime::conn::Conn<S, U>> {
    fn connections(&self) -> Vec<crate::ConnectionInfo> {
        let mut conns = Vec::new();
        self.for_each(|conn| conns.push(conn.clone()));
        let now = crate::runtime::clock::advance();
        let mut infos: Vec<_> = conns.iter().filter_map(|c| c.info(now)).collect();
        infos.sort_by_key(|info| info.id);
        infos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Entry(u64);
    impl Keyed for Entry {
        fn id(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn token_round_trips() {
        let t = token(12345, (7 << 32) | 99);
        assert_eq!(split(t), (12345, 99));
        assert_eq!(listener_index(token(SLOT_LIMIT - 1, u64::MAX)), None);
        assert_eq!(listener_index(listener_token(3)), Some(3));
        assert_eq!(listener_index(NOTIFY), None);
        assert_eq!(listener_index(TIMER), None);
        assert_ne!(token(SLOT_LIMIT - 1, u64::MAX - 1), NOTIFY);
        assert_ne!(token(SLOT_LIMIT - 1, u64::MAX - 2), TIMER);
    }

    #[test]
    fn stale_tag_misses_reused_slot() {
        let table = Table::new(1, 1);
        let mut slot = usize::MAX;
        table.insert(1, |s| {
            slot = s;
            Entry(1)
        });
        assert_eq!(table.get(slot, tag(1)).unwrap().0, 1);
        assert!(table.remove(slot, 1).is_some());
        let b = table.insert(2, |s| {
            assert_eq!(s, slot, "slab reuses the freed slot");
            Entry(2)
        });
        assert!(b.is_some());
        assert!(table.get(slot, tag(1)).is_none(), "stale tag must miss");
        assert!(table.get_id(slot, 1).is_none(), "stale id must miss");
        assert!(table.remove(slot, 1).is_none(), "stale id must not remove");
        assert_eq!(table.get(slot, tag(2)).unwrap().0, 2);
        assert_eq!(table.get_id(slot, 2).unwrap().0, 2);
        assert!(
            table.get_id(slot, 2 + (1 << TAG_BITS)).is_none(),
            "same tag, other id: must miss"
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn shards_spread_and_slots_name_their_shard() {
        let table = Table::new(3, 0); // rounds up to 4 shards
        let mut slots = Vec::new();
        for id in 1..=40u64 {
            let mut seen = 0;
            table.insert(id, |slot| {
                seen = slot;
                Entry(id)
            });
            slots.push((seen, id));
        }
        for (slot, id) in &slots {
            assert_eq!(table.get(*slot, tag(*id)).unwrap().0, *id);
        }
        assert_eq!(table.len(), 40);
        let mut seen = 0;
        table.for_each(|_| seen += 1);
        assert_eq!(seen, 40);
        assert_eq!(table.drain().len(), 40);
        assert_eq!(table.len(), 0);
        assert!(table.is_empty());
    }
}
