//! Reading a connection's PROXY protocol header ([`Config::proxy_protocol`](crate::Config::proxy_protocol))
//! before its stream reads anything.
//!
//! The header is peeked at (`MSG_PEEK`), never read blindly: until a whole header is there,
//! nothing leaves the socket, and once one is, exactly its bytes are taken, so the
//! connection's own bytes behind it (a TLS ClientHello, the first frames) stay for the
//! stream. A header that arrives in pieces is peeked at again with each new piece: the
//! socket raises a new edge for each, and the header is small (at most
//! [`MAX_V2_LENGTH`] bytes), so the repeated look is cheap; the header timeout bounds how
//! long a connection may dribble one in.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};

use crate::handler::CloseReason;
use crate::proxy::{MAX_V2_LENGTH, ProxyHeader, parse_header};

/// Reads the PROXY header at the start of the socket `fd` if it has all arrived:
/// `Ok(Some(header))` with its bytes taken off the socket, `Ok(None)` if more must arrive
/// first, or the reason to refuse the connection. `hangup`: epoll reported the peer's close,
/// so what has arrived is all there will be.
pub(crate) fn read(fd: BorrowedFd<'_>, hangup: bool) -> Result<Option<ProxyHeader>, CloseReason> {
    let fd = fd.as_raw_fd();
    let mut buf = [0u8; MAX_V2_LENGTH];
    let seen = loop {
        match recv(fd, &mut buf, MsgFlags::MSG_PEEK) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                return if hangup { Err(incomplete()) } else { Ok(None) };
            }
            Err(errno) => return Err(CloseReason::from_io(io::Error::from(errno))),
        }
    };
    if seen == 0 {
        return Err(incomplete());
    }
    let (header, len) = match parse_header(&buf[..seen]) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if hangup => return Err(incomplete()),
        Ok(None) => return Ok(None),
        Err(err) => return Err(CloseReason::ProxyRefused(err.into())),
    };
    // Take exactly the header: it is all in the socket's queue (just seen), so this takes
    // it at once.
    let mut taken = 0;
    while taken < len {
        match recv(fd, &mut buf[taken..len], MsgFlags::empty()) {
            Ok(0) => return Err(incomplete()),
            Ok(n) => taken += n,
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(CloseReason::from_io(io::Error::from(errno))),
        }
    }
    Ok(Some(header))
}

fn incomplete() -> CloseReason {
    CloseReason::ProxyRefused(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection closed before its PROXY header was complete",
    ))
}
