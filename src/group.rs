//! [`Group`]: a set of connections that a frame is broadcast to, encoded once and shared;
//! [`LagPolicy`], what a member that falls behind gets; [`SharedFrame`], the broadcast frame.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::Socket;
use crate::codec::{Codec, FrameError};
use crate::socket::SendError;

/// What a member gets whose unsent group traffic would pass its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLag {
    /// Drop its oldest group frames not yet started (never its own replies, never a frame
    /// half written), for feeds where only the latest matters. The connection stays open; the
    /// frames it missed are gone for it.
    DropOldest,
    /// Close it with [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer): the frames it gets never have a hole.
    Disconnect,
}

/// How far behind a member may fall: the bytes of group traffic it may hold queued and
/// unsent, and what happens past that. Never unbounded, and never blocking the broadcaster.
///
/// Group frames are bounded by this, not by [`Config::max_outbound`](crate::Config::max_outbound);
/// but a member's own sends ([`Socket::send`]) count everything it has queued, group frames
/// included, against `max_outbound`, so keep `max_lag` below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagPolicy {
    /// Bytes of group frames (from every group it is in) a member may have queued unsent.
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
            return Ok(wire.clone());
        }
        let mut out = Vec::with_capacity(self.payload.len() + 8);
        codec.encode(&self.payload, &mut out)?;
        let wire = Bytes::from(out);
        if let Some(key) = key {
            let _ = self.wire.set((key, wire.clone()));
        }
        Ok(wire)
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
/// [`broadcast`](Group::broadcast) encodes the frame once, into one shared buffer; each
/// member's write queue holds a reference to it, not a copy, and the writes are coalesced: a
/// member with several frames queued (group frames and its own replies) gets them in one
/// vectored write. Broadcasting never writes to a socket itself and never waits: it queues the
/// frame for each member and leaves the writing to the workers, so a slow member cannot
/// slow the broadcaster down. Each member has a [`LagPolicy`] that bounds what it may fall
/// behind by.
///
/// Frames broadcast from one thread reach every member in that order (with the member's other
/// frames in the order they were sent). A connection that closes leaves every group it was in.
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

/// A group's members, shared with the connections' memberships.
#[derive(Default)]
pub(crate) struct Members {
    list: RwLock<Vec<Member>>,
    default_policy: LagPolicy,
}

struct Member {
    socket: Socket,
    policy: LagPolicy,
}

impl Members {
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
}

impl Group {
    /// An empty group whose members get the default [`LagPolicy`].
    pub fn new() -> Group {
        Group::default()
    }

    /// An empty group whose members get `policy` unless they join with their own.
    pub fn with_policy(policy: LagPolicy) -> Group {
        Group {
            shared: Arc::new(Members {
                list: RwLock::new(Vec::new()),
                default_policy: policy,
            }),
        }
    }

    /// Adds the connection with the group's lag policy. Returns `false` if it is a member
    /// already or closed.
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
        // Recorded on the connection first, so that its close removes it from here; a
        // connection closed already refuses.
        if !socket.link().join_group(Arc::downgrade(&self.shared)) {
            return false;
        }
        list.push(Member {
            socket: socket.clone(),
            policy,
        });
        true
    }

    /// Removes the connection. Returns `false` if it was not a member.
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

    /// Queues `frame` for every member. Returns how many members it was queued for: members
    /// that are closing, that refused it (too large for their framing), or whose lag policy
    /// dropped it are not counted. A member past its lag budget under
    /// [`OnLag::Disconnect`] is closed.
    pub fn broadcast(&self, frame: &[u8]) -> usize {
        self.broadcast_to(frame, None)
    }

    /// [`broadcast`](Group::broadcast) to every member but `except` (the sender, say).
    pub fn broadcast_except(&self, frame: &[u8], except: &Socket) -> usize {
        self.broadcast_to(frame, Some(except.id()))
    }

    fn broadcast_to(&self, frame: &[u8], except: Option<u64>) -> usize {
        let frame = SharedFrame::new(frame);
        let list = self.shared.list.read();
        let mut queued = 0;
        for member in list.iter() {
            if Some(member.socket.id()) == except {
                continue;
            }
            match member.socket.link().send_shared(&frame, &member.policy) {
                Ok(true) => queued += 1,
                Ok(false) => {} // dropped by its lag policy
                Err(SendError::Closed) => {}
                Err(err) => {
                    tracing::debug!(conn = member.socket.id(), error = %err, "broadcast refused");
                }
            }
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
pub(crate) fn leave_all(id: u64, groups: Vec<Weak<Members>>) {
    for group in groups {
        if let Some(group) = group.upgrade() {
            group.remove(id);
        }
    }
}
