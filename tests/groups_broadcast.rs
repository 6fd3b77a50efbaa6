//! Groups: a broadcast reaches every member, in order, from a shared encoding; members leave
//! when they close; a member that falls behind is held to its lag policy without holding
//! anyone else up.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;

use hydrogen::client::Client;
use hydrogen::{CloseReason, Group, Handler, LagPolicy, LengthPrefixed, OnLag, Socket};
use parking_lot::Mutex;

use common::{DEADLINE, TestServer, length_config, reason_kind, wait_until};

/// Every connection joins the group (with the policy a first frame `lag:drop` or
/// `lag:close` asks for, or the group's); a frame `say:...` is broadcast to the others.
struct Room {
    group: Group,
    opened: Mutex<Vec<Socket>>,
    removed: Mutex<Vec<(u64, &'static str)>>,
}

impl Room {
    fn new(group: Group) -> Arc<Room> {
        Arc::new(Room {
            group,
            opened: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
        })
    }
}

impl Handler for Room {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.group.join(socket);
        self.opened.lock().push(socket.clone());
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        if let Some(said) = frame.strip_prefix(b"say:") {
            self.group.broadcast_except(said, socket);
        }
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        self.removed.lock().push((socket.id(), reason_kind(reason)));
    }
}

/// A server whose every connection joins one room with `policy`.
fn start_room(policy: LagPolicy) -> (Arc<Room>, TestServer) {
    let room = Room::new(Group::with_policy(policy));
    let server = TestServer::start_with(length_config(2), LengthPrefixed::default(), room.clone());
    (room, server)
}

/// A `say:` frame carrying sequence number `seq` and then `payload`.
fn say(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = b"say:".to_vec();
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The sequence number at the start of a relayed `say` frame.
fn seq_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[..4].try_into().unwrap())
}

#[test]
fn broadcasts_reach_every_other_member_in_order() {
    const MEMBERS: usize = 5;
    const FRAMES: u32 = 300;
    let room = Room::new(Group::new());
    let server = TestServer::start_with(length_config(2), LengthPrefixed::default(), room.clone());
    let mut clients: Vec<_> = (0..MEMBERS).map(|_| server.connect_length()).collect();
    wait_until("every member joined", || room.group.len() == MEMBERS);

    // Two senders at once; each receiver sees each sender's frames in order, all of them.
    let mut senders: Vec<_> = clients.drain(..2).collect();
    let threads: Vec<_> = senders
        .iter_mut()
        .enumerate()
        .map(|(s, client)| {
            let mut frames = Vec::new();
            for seq in 0..FRAMES {
                let mut f = b"say:".to_vec();
                f.push(s as u8);
                f.extend_from_slice(&seq.to_be_bytes());
                frames.push(f);
            }
            let tcp = client.get_ref().try_clone().unwrap();
            thread::spawn(move || {
                let mut c = Client::from_stream(tcp, LengthPrefixed::default());
                for f in frames {
                    c.feed(&f).unwrap();
                }
                c.flush().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for client in clients.iter_mut() {
        let mut next = [0u32; 2];
        for _ in 0..2 * FRAMES {
            let frame = client.recv().unwrap().expect("a broadcast");
            let sender = usize::from(frame[0]);
            let seq = u32::from_be_bytes(frame[1..5].try_into().unwrap());
            assert_eq!(
                seq, next[sender],
                "sender {sender}'s frames in order, none lost"
            );
            next[sender] += 1;
        }
    }
    // Each sender got the other's frames, not its own.
    for (s, sender) in senders.iter_mut().enumerate() {
        for seq in 0..FRAMES {
            let frame = sender.recv().unwrap().expect("the other sender's frame");
            assert_eq!(usize::from(frame[0]), 1 - s);
            assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()), seq);
        }
    }

    // Closing leaves the group.
    drop(senders);
    wait_until("the senders left", || room.group.len() == MEMBERS - 2);
    drop(clients);
    wait_until("everyone left", || room.group.is_empty());
    server.stop().unwrap();
}

/// A member that stops reading is dropped from the broadcast's point of view only: under
/// `Disconnect` it is closed as a slow consumer, and the others get every frame.
#[test]
fn a_member_past_its_lag_budget_is_disconnected_and_holds_nobody_up() {
    const FRAMES: u32 = 4_000;
    // More than a read batch of the sender's (256 KiB): a member that reads is never behind
    // by that much.
    let (room, server) = start_room(LagPolicy {
        max_lag: 2 * 1024 * 1024,
        on_lag: OnLag::Disconnect,
    });
    // Never reads: once the kernel's buffers are full, its backlog grows past the budget.
    let stalled = TcpStream::connect(server.addr).unwrap();
    let mut reader = server.connect_length();
    let mut sender = server.connect_length();
    wait_until("three members", || room.group.len() == 3);
    let stalled_id = room.opened.lock()[0].id();

    // In steps of 100 frames (400 KiB) that the reader takes before the next: it is never
    // behind by more, while the stalled member falls behind by everything.
    let payload = vec![7u8; 4096];
    for step in 0..FRAMES / 100 {
        for seq in step * 100..(step + 1) * 100 {
            sender.feed(&say(seq, &payload)).unwrap();
        }
        sender.flush().unwrap();
        for seq in step * 100..(step + 1) * 100 {
            let frame = reader.recv().unwrap().expect("every frame");
            assert_eq!(seq_of(&frame), seq);
        }
    }
    wait_until("the stalled member's removal", || {
        room.removed.lock().iter().any(|(id, _)| *id == stalled_id)
    });
    let reason = room
        .removed
        .lock()
        .iter()
        .find(|(id, _)| *id == stalled_id)
        .unwrap()
        .1;
    assert_eq!(reason, "slow_consumer");
    assert_eq!(room.group.len(), 2, "it left the group");
    drop((reader, stalled));
    server.stop().unwrap();
}

/// Under `DropOldest` a member that falls behind keeps its connection and the newest frames;
/// what it gets is in order, with a hole where the dropped ones were.
#[test]
fn a_lagging_member_under_drop_oldest_keeps_the_newest_frames() {
    const FRAMES: u32 = 8_000;
    let (room, server) = start_room(LagPolicy {
        max_lag: 1024 * 1024,
        on_lag: OnLag::DropOldest,
    });
    // Reads nothing until the end is sent: 32 MiB of broadcasts against a few MiB of kernel
    // buffers and a 1 MiB budget.
    let lagging = TcpStream::connect(server.addr).unwrap();
    let mut sender = server.connect_length();
    wait_until("two members", || room.group.len() == 2);

    let payload = vec![9u8; 4096];
    for seq in 0..FRAMES {
        sender.feed(&say(seq, &payload)).unwrap();
    }
    // The last frame says where the end is.
    sender.feed(b"say:end").unwrap();
    sender.flush().unwrap();

    let mut client = Client::from_stream(lagging, LengthPrefixed::default());
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut seen = Vec::new();
    loop {
        let frame = client.recv().unwrap().expect("frames until the end");
        if frame == b"end" {
            break;
        }
        seen.push(seq_of(&frame));
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, never repeated"
    );
    assert!(
        (seen.len() as u32) < FRAMES,
        "some frames were dropped ({} of {FRAMES} arrived)",
        seen.len()
    );
    assert_eq!(seen.last(), Some(&(FRAMES - 1)), "the newest frame arrived");
    assert!(room.removed.lock().is_empty(), "nobody was disconnected");
    // Still a member, still served.
    sender.send(b"say:again").unwrap();
    assert_eq!(client.recv().unwrap().as_deref(), Some(&b"again"[..]));
    drop(client);
    server.stop().unwrap();
}

/// A broadcast queues and returns: it never writes to a member's socket itself, so one whose
/// socket is full does not hold the broadcaster.
#[test]
fn broadcasting_from_any_thread_never_waits_on_a_full_socket() {
    let group = Group::with_policy(LagPolicy {
        max_lag: usize::MAX,
        on_lag: OnLag::Disconnect,
    });
    let room = Room::new(group.clone());
    let server = TestServer::start_with(length_config(2), LengthPrefixed::default(), room.clone());
    let full = TcpStream::connect(server.addr).unwrap();
    socket2::SockRef::from(&full)
        .set_recv_buffer_size(4096)
        .unwrap();
    wait_until("a member", || group.len() == 1);
    // 64 MiB for a member that reads nothing: queued, never written past its window.
    let frame = vec![1u8; 64 * 1024];
    for _ in 0..1024 {
        assert_eq!(group.broadcast(&frame), 1);
    }
    // Then it reads, and gets the first frame whole.
    let mut client = Client::from_stream(full, LengthPrefixed::default());
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(client.recv().unwrap().map(|f| f.len()), Some(64 * 1024));
    let mut rest = client.get_ref().try_clone().unwrap();
    drop(client);
    let mut buf = [0u8; 4096];
    let _ = rest.read(&mut buf);
    drop(rest);
    server.stop().unwrap();
}

/// Every connection joins both groups.
struct TwoRooms {
    a: Group,
    b: Group,
    opened: Mutex<Vec<Socket>>,
}

impl Handler for TwoRooms {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.a.join(socket);
        self.b.join(socket);
        self.opened.lock().push(socket.clone());
    }

    fn on_frame(&self, _: &mut (), _: &Socket, _: &[u8]) {}
}

fn two_rooms() -> (Arc<TwoRooms>, TestServer) {
    let unbounded = LagPolicy {
        max_lag: usize::MAX,
        on_lag: OnLag::Disconnect,
    };
    let rooms = Arc::new(TwoRooms {
        a: Group::with_policy(unbounded),
        b: Group::with_policy(unbounded),
        opened: Mutex::new(Vec::new()),
    });
    let server = TestServer::start_with(length_config(2), LengthPrefixed::default(), rooms.clone());
    (rooms, server)
}

/// A member of two groups gets their frames in the order they were broadcast, although each
/// group keeps its own ring: frames large enough that one write takes only part of what is
/// queued, so the member catches up over many writes.
#[test]
fn a_member_of_two_groups_gets_their_frames_in_broadcast_order() {
    const FRAMES: u32 = 600;
    let (rooms, server) = two_rooms();
    let mut clients: Vec<_> = (0..3).map(|_| server.connect_length()).collect();
    wait_until("every member joined", || {
        rooms.a.len() == 3 && rooms.b.len() == 3
    });
    for seq in 0..FRAMES {
        let mut frame = seq.to_be_bytes().to_vec();
        frame.resize(3000, seq as u8);
        let group = if seq % 3 == 0 { &rooms.a } else { &rooms.b };
        assert_eq!(group.broadcast(&frame), 3);
    }
    for client in clients.iter_mut() {
        for seq in 0..FRAMES {
            let frame = client.recv().unwrap().expect("a broadcast");
            assert_eq!(frame.len(), 3000);
            assert_eq!(
                seq_of(&frame),
                seq,
                "frames of both groups in broadcast order"
            );
        }
    }
    drop(clients);
    server.stop().unwrap();
}

/// A frame sent to a member after a broadcast (from the same thread) is written after the
/// broadcast frame, though the member takes group frames only when a worker writes to it.
#[test]
fn a_send_after_a_broadcast_is_written_after_it() {
    const ROUNDS: u32 = 500;
    let (rooms, server) = two_rooms();
    let mut client = server.connect_length();
    wait_until("a member", || rooms.opened.lock().len() == 1);
    let socket = rooms.opened.lock()[0].clone();
    for seq in 0..ROUNDS {
        assert_eq!(rooms.a.broadcast(&[b'g', seq as u8]), 1);
        socket.send(&[b'd', seq as u8]).unwrap();
    }
    for seq in 0..ROUNDS {
        assert_eq!(client.recv().unwrap().unwrap(), [b'g', seq as u8]);
        assert_eq!(client.recv().unwrap().unwrap(), [b'd', seq as u8]);
    }
    drop(client);
    server.stop().unwrap();
}

/// `ShutdownHandle::connections` shows how far a member lags behind its group: frames broadcast
/// and not yet taken into its write queue count as `group_backlog`, beside `queued_bytes`, and
/// drop back to nothing once it reads.
#[test]
fn connections_show_a_lagging_members_group_backlog() {
    const FRAMES: u32 = 1_000;
    let (room, server) = start_room(LagPolicy {
        max_lag: 64 * 1024 * 1024,
        on_lag: OnLag::Disconnect,
    });
    // Does not read until the end: the kernel's buffers and its 64 KiB window of output fill
    // up, the rest waits in the group's ring.
    let stalled = TcpStream::connect(server.addr).unwrap();
    let mut sender = server.connect_length();
    wait_until("two members", || room.group.len() == 2);
    let stalled_id = room.opened.lock()[0].id();
    let payload = vec![7u8; 16 * 1024];
    for seq in 0..FRAMES {
        sender.feed(&say(seq, &payload)).unwrap();
    }
    sender.flush().unwrap();
    let sent = u64::from(FRAMES) * (payload.len() as u64 + 4);
    let behind = |info: &hydrogen::ConnectionInfo| info.group_backlog;
    let stalled_info = || {
        server
            .shutdown
            .connections()
            .into_iter()
            .find(|c| c.id == stalled_id)
            .expect("the stalled member is open")
    };
    // Everything broadcast is in the ring, the queue or the kernel's buffers (a few MiB at
    // most on loopback): much of the 16 MB must still wait in the ring.
    wait_until("the broadcasts to reach the ring", || {
        let info = stalled_info();
        info.frames_out > 0 && behind(&info) > sent / 4
    });
    let info = stalled_info();
    assert!(behind(&info) <= sent, "{info:?}");
    assert!(
        info.queued_bytes > 0,
        "its window of output is queued: {info:?}"
    );

    // It reads everything, in order: nothing is behind any more.
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut client = Client::from_stream(stalled, LengthPrefixed::default());
    for seq in 0..FRAMES {
        let frame = client.recv().unwrap().expect("every frame");
        assert_eq!(seq_of(&frame), seq);
    }
    wait_until("the backlog to clear", || {
        let info = stalled_info();
        behind(&info) == 0 && info.queued_bytes == 0
    });
    drop((client, sender));
    server.stop().unwrap();
}
