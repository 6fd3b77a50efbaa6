//! [`Group`]: a set of connections that a frame is broadcast to, encoded once and shared;
//! [`LagPolicy`], what a member that falls behind gets; [`SharedFrame`], the broadcast frame.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::codec::{Codec, FrameError};
use crate::{Socket, Stream};

/// What a member gets whose group traffic not yet written would pass its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLag {
    /// Skip its oldest group frames not yet taken (never its own replies, never a frame
    /// half written), for feeds where only the latest matters. The connection stays open; the
    /// frames it missed are gone for it.
    DropOldest,
    /// Close it with [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer): the
    /// frames it gets never have a hole.
    Disconnect,
}

/// How far behind a member may fall: the bytes of frames broadcast to it (in one group) that
/// it has not taken yet, and what happens past that. Never unbounded, and never blocking the
/// broadcaster.
///
/// A member takes group frames when a worker writes to it, as many as keep 64 KiB of output
/// queued in its stream; the rest wait in the group's ring, shared by every member, and that
/// wait is what the budget bounds. It is checked every 16 broadcasts or every 64 KiB of them
/// (or a quarter of the smallest budget, if less), so a member may pass it by that much before
/// the policy acts. A single frame larger than the budget is still delivered. The group keeps
/// a frame until every member has taken it or been held to its policy, so its memory is at
/// most about the largest budget among its members.
///
/// Group frames are bounded by this, not by [`Config::max_outbound`](crate::Config::max_outbound);
/// but a member's own sends ([`Socket::send`]) first take the group frames broadcast before
/// them, and count everything then queued against `max_outbound`, so keep `max_lag` below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagPolicy {
    /// Bytes of a group's frames a member may have waiting, not yet taken.
    pub max_lag: usize,
    /// What happens past `max_lag`.
    pub on_lag: OnLag,
}

impl Default for LagPolicy {
    /// 1 MiB of group traffic, then [`OnLag::Disconnect`].
    fn default() -> LagPolicy {
        LagPolicy {
            max_lag: 1024 * 1024,
            on_lag: OnLag::Disconnect,
        }
    }
}

/// A frame broadcast to a [`Group`]: the payload, and its encoding, made once and shared by
/// every member whose codec has the same [`Codec::encoding_key`].
///
/// A [`Stream`](crate::Stream) of your own receives it in
/// [`send_shared`](crate::Stream::send_shared); the default there sends a copy of the
/// payload.
pub struct SharedFrame {
    payload: Bytes,
    /// The first encoding made, with the key of the format it is in.
    wire: OnceLock<(&'static str, Bytes)>,
}

impl SharedFrame {
    /// A frame with this payload (copied once).
    pub fn new(payload: &[u8]) -> SharedFrame {
        SharedFrame {
            payload: Bytes::copy_from_slice(payload),
            wire: OnceLock::new(),
        }
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The frame encoded with `codec`: the shared encoding if one in the same format exists
    /// already (see [`Codec::encoding_key`]), else a new one, kept for the next member if
    /// the codec names its format.
    ///
    /// # Errors
    ///
    /// The codec's error, for a payload it cannot carry.
    pub fn encoded<C: Codec + ?Sized>(&self, codec: &mut C) -> Result<Bytes, FrameError> {
        self.wire(codec).map(Cow::into_owned)
    }

    /// [`encoded`](SharedFrame::encoded), borrowing the shared encoding when there is one.
    pub(crate) fn wire<C: Codec + ?Sized>(
        &self,
        codec: &mut C,
    ) -> Result<Cow<'_, Bytes>, FrameError> {
        let key = codec.encoding_key();
        if let (Some(key), Some((made, wire))) = (key, self.wire.get())
            && *made == key
        {
            if self.payload.len() > codec.max_payload() {
                return Err(FrameError::TooLarge {
                    len: self.payload.len() as u64,
                    max: codec.max_payload(),
                });
            }
            return Ok(Cow::Borrowed(wire));
        }
        let mut out = Vec::with_capacity(self.payload.len() + 8);
        codec.encode(&self.payload, &mut out)?;
        let wire = Bytes::from(out);
        if let Some(key) = key
            && self.wire.set((key, wire.clone())).is_ok()
            && let Some((_, wire)) = self.wire.get()
        {
            return Ok(Cow::Borrowed(wire));
        }
        Ok(Cow::Owned(wire))
    }
}

impl fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedFrame")
            .field("len", &self.payload.len())
            .finish()
    }
}

/// A set of connections to broadcast to: chat rooms, game lobbies, market-data feeds, topics.
///
/// [`broadcast`](Group::broadcast) encodes the frame once and appends it to the group's
/// ring, shared by every member; it never writes to a socket and never waits on a member.
/// Each member takes the frames it has not had yet from the ring when a worker writes to it,
/// as many as its socket takes, in one vectored write with its own replies: a member that
/// falls behind keeps its place in the ring, not copies of the frames, and catches up in
/// large writes. Each member has a [`LagPolicy`] that bounds how far behind it may fall.
///
/// # Order
///
/// Frames reach every member in the order they were broadcast, across all its groups: a
/// frame broadcast after another (from the same thread, or ordered by a lock of yours) is
/// never delivered before it, and a member's own [`Socket::send`] after a broadcast is
/// written after the broadcast frame. A connection that closes leaves every group it was in.
/// A `Group` is cheap to clone (clones are the same group) and may be used from any thread,
/// inside callbacks or outside.
///
/// ```no_run
/// use hydrogen::{Group, Handler, Socket};
///
/// /// Everyone hears everyone else.
/// struct Room(Group);
///
/// impl Handler for Room {
///     type Session = ();
///
///     fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
///         self.0.join(socket);
///     }
///
///     fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
///         self.0.broadcast_except(frame, socket);
///     }
/// }
/// ```
#[derive(Clone, Default)]
pub struct Group {
    shared: Arc<Members>,
}

/// Every broadcast, in any group, takes the next number, under its ring's lock: a member of
/// several groups merges their frames in this order.
static ORDER: AtomicU64 = AtomicU64::new(0);

/// Members' lag is checked (and the ring trimmed to the slowest member) after this many
/// broadcasts, or [`CHECK_BYTES`] of them, whichever comes first.
const CHECK_EVERY: u32 = 16;
const CHECK_BYTES: usize = 64 * 1024;

/// A group's members and its ring, shared with the members' connections.
pub(crate) struct Members {
    list: RwLock<Vec<Member>>,
    ring: RwLock<Ring>,
    default_policy: LagPolicy,
    /// Bytes broadcast between two checks: [`CHECK_BYTES`], or less for members with a
    /// small budget.
    check_bytes: AtomicUsize,
}

impl Default for Members {
    fn default() -> Members {
        Members::new(LagPolicy::default())
    }
}

struct Member {
    socket: Socket,
    policy: LagPolicy,
    sub: Arc<Subscription>,
}

/// A member's place in its group's ring, shared by the group and the member's connection.
#[derive(Debug, Default)]
pub(crate) struct Subscription {
    /// The ring sequence number of the next frame the member takes.
    next: AtomicU64,
    /// The member was closed for lagging: it takes no more frames (it must see no hole).
    cut: AtomicBool,
}

/// A group on a connection's list ([`State::groups`](crate::runtime::conn::State)).
#[derive(Debug)]
pub(crate) struct Membership {
    pub group: Weak<Members>,
    pub sub: Arc<Subscription>,
}

/// One broadcast frame in a ring.
struct Entry {
    frame: Arc<SharedFrame>,
    /// Its place in [`ORDER`].
    order: u64,
    /// The ring's byte count before it: lag is measured in these.
    start: u64,
    /// The connection it is not for (`broadcast_except`), or 0.
    except: u64,
}

/// The frames some member has not taken yet, oldest first.
#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    /// The sequence number of `entries[0]`.
    first: u64,
    /// Payload bytes ever pushed.
    end: u64,
    /// Broadcasts, and their bytes, since members were last checked.
    unchecked: u32,
    unchecked_bytes: usize,
}

impl Ring {
    fn head(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn entry(&self, seq: u64) -> &Entry {
        &self.entries[(seq - self.first) as usize]
    }

    /// Where frame `seq` starts in the ring's bytes (the end for the head).
    fn start_of(&self, seq: u64) -> u64 {
        if seq >= self.head() {
            self.end
        } else {
            self.entry(seq.max(self.first)).start
        }
    }

    /// The first frame starting at `offset` or later.
    fn first_from(&self, offset: u64) -> u64 {
        self.first + self.entries.partition_point(|e| e.start < offset) as u64
    }

    /// Forgets the frames before `seq`.
    fn trim(&mut self, seq: u64) {
        while self.first < seq && self.entries.pop_front().is_some() {
            self.first += 1;
        }
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            self.entries = VecDeque::new();
        }
    }
}

impl Members {
    fn new(policy: LagPolicy) -> Members {
        Members {
            list: RwLock::new(Vec::new()),
            ring: RwLock::new(Ring::default()),
            default_policy: policy,
            check_bytes: AtomicUsize::new(CHECK_BYTES),
        }
    }

    /// Forgets connection `id` (it closed, or left).
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut list = self.list.write();
        match list.iter().position(|m| m.socket.id() == id) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Checks every member's lag against its policy: moves those under
    /// [`OnLag::DropOldest`] past their oldest frames, returns those to close, and trims the
    /// ring to the slowest member left.
    fn check(&self, list: &[Member]) -> Vec<Socket> {
        let mut slow = Vec::new();
        let oldest = {
            let ring = self.ring.read();
            let head = ring.head();
            let mut oldest = head;
            for member in list {
                let mut next = member.sub.next.load(Ordering::Acquire).max(ring.first);
                let lag = ring.end - ring.start_of(next);
                // Past the budget, and more than one frame behind (one frame larger than the
                // budget alone is let through).
                if lag > member.policy.max_lag as u64 && next + 1 < head {
                    match member.policy.on_lag {
                        OnLag::Disconnect => {
                            member.sub.cut.store(true, Ordering::Release);
                            slow.push(member.socket.clone());
                            continue;
                        }
                        OnLag::DropOldest => {
                            let keep = ring
                                .first_from(ring.end - member.policy.max_lag as u64)
                                .min(head - 1);
                            let was = member.sub.next.fetch_max(keep, Ordering::AcqRel);
                            tracing::trace!(
                                conn = member.socket.id(),
                                dropped = keep.saturating_sub(was),
                                "lagging group member: oldest frames dropped"
                            );
                            next = next.max(keep);
                        }
                    }
                }
                oldest = oldest.min(next);
            }
            oldest
        };
        let mut ring = self.ring.write();
        ring.trim(oldest);
        ring.unchecked = 0;
        ring.unchecked_bytes = 0;
        slow
    }
}

impl Group {
    /// An empty group whose members get the default [`LagPolicy`].
    pub fn new() -> Group {
        Group::default()
    }

    /// An empty group whose members get `policy` unless they join with their own.
    pub fn with_policy(policy: LagPolicy) -> Group {
        Group {
            shared: Arc::new(Members::new(policy)),
        }
    }

    /// Adds the connection with the group's lag policy. Returns `false` if it is a member
    /// already or closed. It gets the frames broadcast from now on.
    pub fn join(&self, socket: &Socket) -> bool {
        self.join_with(socket, self.shared.default_policy)
    }

    /// Adds the connection with a lag policy of its own. Returns `false` if it is a member
    /// already (its policy is left as it was) or closed.
    pub fn join_with(&self, socket: &Socket, policy: LagPolicy) -> bool {
        let mut list = self.shared.list.write();
        if list.iter().any(|m| m.socket.id() == socket.id()) {
            return false;
        }
        let sub = Arc::new(Subscription::default());
        sub.next
            .store(self.shared.ring.read().head(), Ordering::Release);
        // Recorded on the connection first, so that its close removes it from here; a
        // connection closed already refuses.
        let membership = Membership {
            group: Arc::downgrade(&self.shared),
            sub: sub.clone(),
        };
        if !socket.link().join_group(membership) {
            return false;
        }
        self.shared
            .check_bytes
            .fetch_min((policy.max_lag / 4).max(1), Ordering::Relaxed);
        list.push(Member {
            socket: socket.clone(),
            policy,
            sub,
        });
        true
    }

    /// Removes the connection. Returns `false` if it was not a member. Frames broadcast
    /// before it left and not yet written to it are still written.
    pub fn leave(&self, socket: &Socket) -> bool {
        if self.shared.remove(socket.id()) {
            socket.link().leave_group(&self.shared);
            true
        } else {
            false
        }
    }

    /// How many members the group has.
    pub fn len(&self) -> usize {
        self.shared.list.read().len()
    }

    /// Whether the group has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the connection is a member.
    pub fn contains(&self, socket: &Socket) -> bool {
        self.shared
            .list
            .read()
            .iter()
            .any(|m| m.socket.id() == socket.id())
    }

    /// The members, as handles (a snapshot).
    pub fn members(&self) -> Vec<Socket> {
        self.shared
            .list
            .read()
            .iter()
            .map(|m| m.socket.clone())
            .collect()
    }

    /// Queues `frame` for every member. Returns how many members it was queued for.
    ///
    /// A member whose framing cannot carry the frame (too large, say) skips it (logged at
    /// debug level). Every few broadcasts the members' lag is checked: a member past its
    /// budget under [`OnLag::Disconnect`] is closed with
    /// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer), one under
    /// [`OnLag::DropOldest`] skips its oldest frames.
    pub fn broadcast(&self, frame: &[u8]) -> usize {
        self.broadcast_to(frame, None)
    }

    /// [`broadcast`](Group::broadcast) to every member but `except` (the sender, say).
    pub fn broadcast_except(&self, frame: &[u8], except: &Socket) -> usize {
        self.broadcast_to(frame, Some(except.id()))
    }

    fn broadcast_to(&self, frame: &[u8], except: Option<u64>) -> usize {
        let shared = &*self.shared;
        let len = frame.len();
        let frame = Arc::new(SharedFrame::new(frame));
        let check = {
            let mut ring = shared.ring.write();
            let order = ORDER.fetch_add(1, Ordering::Relaxed);
            let start = ring.end;
            ring.end += len as u64;
            ring.entries.push_back(Entry {
                frame,
                order,
                start,
                except: except.unwrap_or(0),
            });
            ring.unchecked += 1;
            ring.unchecked_bytes += len;
            ring.unchecked >= CHECK_EVERY
                || ring.unchecked_bytes >= shared.check_bytes.load(Ordering::Relaxed)
        };
        let list = shared.list.read();
        let mut queued = 0;
        for member in list.iter() {
            if Some(member.socket.id()) != except {
                member.socket.link().group_ready();
                queued += 1;
            }
        }
        let slow = if check {
            shared.check(&list)
        } else {
            Vec::new()
        };
        drop(list);
        for socket in slow {
            tracing::debug!(conn = socket.id(), "lagging group member: closing");
            socket.link().close_slow();
        }
        queued
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("members", &self.len())
            .field("policy", &self.shared.default_policy)
            .finish()
    }
}

/// Removes a closed connection from the groups it was in.
pub(crate) fn leave_all(id: u64, groups: Vec<Membership>) {
    for membership in groups {
        if let Some(group) = membership.group.upgrade() {
            group.remove(id);
        }
    }
}

/// Payload bytes broadcast to the groups in `groups` and not taken into the connection's
/// stream yet (frames sent past it with `broadcast_except` included): what the member lags
/// behind, on top of its own write queue.
pub(crate) fn backlog(groups: &[Membership]) -> u64 {
    groups
        .iter()
        .filter(|m| !m.sub.cut.load(Ordering::Acquire))
        .filter_map(|m| {
            let group = m.group.upgrade()?;
            let ring = group.ring.read();
            let next = m.sub.next.load(Ordering::Acquire);
            Some(ring.end - ring.start_of(next))
        })
        .sum()
}

/// What [`pull`] moved.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pulled {
    pub frames: u64,
    pub bytes: u64,
    /// Frames are left for the connection: the stream reached the window first.
    pub more: bool,
}

/// Moves the frames broadcast to connection `id`'s groups, and not yet taken, into its
/// stream, in broadcast order, until the stream holds `window` bytes of output.
pub(crate) fn pull<S: Stream>(
    stream: &mut S,
    id: u64,
    groups: &[Membership],
    window: usize,
) -> Pulled {
    match groups {
        [] => Pulled::default(),
        [one] => pull_one(stream, id, one, window),
        many => pull_merged(stream, id, many, window),
    }
}

fn give<S: Stream>(stream: &mut S, id: u64, frame: &SharedFrame, pulled: &mut Pulled) {
    match stream.send_shared(frame) {
        Ok(()) => {
            pulled.frames += 1;
            pulled.bytes += frame.payload().len() as u64;
        }
        Err(err) => tracing::debug!(conn = id, error = %err, "broadcast frame refused"),
    }
}

fn pull_one<S: Stream>(stream: &mut S, id: u64, m: &Membership, window: usize) -> Pulled {
    let mut pulled = Pulled::default();
    if m.sub.cut.load(Ordering::Acquire) {
        return pulled;
    }
    let Some(group) = m.group.upgrade() else {
        return pulled;
    };
    let ring = group.ring.read();
    let head = ring.head();
    let mut next = m.sub.next.load(Ordering::Acquire).max(ring.first);
    while next < head && stream.pending_output() < window {
        let entry = ring.entry(next);
        next += 1;
        if entry.except != id {
            give(stream, id, &entry.frame, &mut pulled);
        }
    }
    m.sub.next.fetch_max(next, Ordering::AcqRel);
    pulled.more = next < head;
    pulled
}

/// [`pull`] for a member of several groups: their frames merged in [`ORDER`], taking only
/// frames numbered before a horizon read first, all of which are in their rings by then (a
/// number is taken under its ring's lock), so a frame is never delivered before one
/// broadcast ahead of it in another group. One ring is read at a time.
fn pull_merged<S: Stream>(stream: &mut S, id: u64, groups: &[Membership], window: usize) -> Pulled {
    let horizon = ORDER.load(Ordering::Acquire);
    let room = window.saturating_sub(stream.pending_output());
    // (order, group index, sequence number, frame, except)
    let mut picked: Vec<(u64, usize, u64, Arc<SharedFrame>, u64)> = Vec::new();
    // Frames from `limit` on wait: a group stopped at the window before them.
    let mut limit = u64::MAX;
    let mut more = false;
    for (i, m) in groups.iter().enumerate() {
        if m.sub.cut.load(Ordering::Acquire) {
            continue;
        }
        let Some(group) = m.group.upgrade() else {
            continue;
        };
        let ring = group.ring.read();
        let head = ring.head();
        let mut next = m.sub.next.load(Ordering::Acquire).max(ring.first);
        let mut taken = 0;
        while next < head {
            let entry = ring.entry(next);
            if entry.order >= horizon {
                more = true;
                break;
            }
            if taken >= room {
                limit = limit.min(entry.order);
                more = true;
                break;
            }
            taken += entry.frame.payload().len();
            picked.push((entry.order, i, next, entry.frame.clone(), entry.except));
            next += 1;
        }
    }
    picked.sort_unstable_by_key(|p| p.0);
    let mut pulled = Pulled::default();
    let mut advanced: Vec<Option<u64>> = vec![None; groups.len()];
    for (order, i, seq, frame, except) in picked {
        if order >= limit {
            break;
        }
        advanced[i] = Some(seq + 1);
        if except != id {
            give(stream, id, &frame, &mut pulled);
        }
    }
    for (m, next) in groups.iter().zip(advanced) {
        if let Some(next) = next {
            m.sub.next.fetch_max(next, Ordering::AcqRel);
        }
    }
    pulled.more = more;
    pulled
}
