//! The server name (SNI) of a ClientHello, read from the first bytes a client sends.
//!
//! rustls's unbuffered server session does not say which name the client asked for (the
//! buffered one does, through `ServerConnection::server_name`), so the unbuffered stream reads
//! it from the ClientHello itself, the bytes rustls is about to process. The result is
//! reported only once rustls has accepted the handshake, and is the name rustls used: the
//! first `host_name` entry, if it is a DNS name (an IP address, which some clients send, is
//! ignored, as rustls ignores it), in lower case.

use rustls::pki_types::ServerName;

/// The largest handshake message read (rustls refuses larger ones).
const MAX_HELLO: usize = 0xffff;

/// What the first bytes of a connection say about the server name.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hello {
    /// The ClientHello is not complete yet: look again with more bytes.
    Incomplete,
    /// The ClientHello is complete (or the bytes are no ClientHello at all, which rustls
    /// rejects): its server name, if any.
    Done(Option<Box<str>>),
}

/// Reads the server name of the ClientHello that `wire` (the connection's first bytes, TLS
/// records) starts with, joining the payloads of its handshake records as needed.
pub(super) fn server_name(wire: &[u8]) -> Hello {
    let mut joined: Vec<u8> = Vec::new();
    let mut rest = wire;
    loop {
        let Some(header) = rest.get(..5) else {
            return Hello::Incomplete;
        };
        if header[0] != 22 {
            return Hello::Done(None); // not a handshake record: not TLS, or a bad client
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(payload) = rest.get(5..5 + len) else {
            return Hello::Incomplete;
        };
        rest = &rest[5 + len..];
        // The common case: the whole message in the first record, read in place.
        let msg: &[u8] = if joined.is_empty() && message_len(payload).is_some_and(|n| n <= len) {
            payload
        } else {
            joined.extend_from_slice(payload);
            &joined
        };
        let Some(need) = message_len(msg) else {
            continue; // not even the message header yet
        };
        if need > MAX_HELLO + 4 {
            return Hello::Done(None);
        }
        if msg.len() < need {
            continue;
        }
        return Hello::Done(parse(&msg[..need]));
    }
}

/// The length of the handshake message `msg` starts with, its 4-byte header included.
fn message_len(msg: &[u8]) -> Option<usize> {
    let h = msg.get(..4)?;
    Some(4 + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3])))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let taken = buf.get(..n)?;
    *buf = &buf[n..];
    Some(taken)
}

fn u8_vec<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = usize::from(*take(buf, 1)?.first()?);
    take(buf, n)
}

fn u16_vec<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take(buf, 2)?;
    take(buf, usize::from(u16::from_be_bytes([len[0], len[1]])))
}

/// The server name of a whole ClientHello message (header included).
fn parse(msg: &[u8]) -> Option<Box<str>> {
    let mut body = msg;
    if *take(&mut body, 4)?.first()? != 1 {
        return None; // not a ClientHello
    }
    take(&mut body, 2 + 32)?; // legacy version, random
    u8_vec(&mut body)?; // legacy session id
    u16_vec(&mut body)?; // cipher suites
    u8_vec(&mut body)?; // compression methods
    let mut exts = u16_vec(&mut body)?;
    while !exts.is_empty() {
        let typ = take(&mut exts, 2)?;
        let mut data = u16_vec(&mut exts)?;
        if typ != [0, 0] {
            continue;
        }
        let mut list = u16_vec(&mut data)?;
        if *take(&mut list, 1)?.first()? != 0 {
            return None; // not a host_name
        }
        let name = u16_vec(&mut list)?;
        return match ServerName::try_from(name) {
            Ok(ServerName::DnsName(dns)) => Some(dns.to_lowercase_owned().as_ref().into()),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello's handshake message with the given extensions block.
    fn hello(exts: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0]); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(exts);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn sni_ext(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![0];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name);
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&entry);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
        ext
    }

    fn records(msg: &[u8], size: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        for piece in msg.chunks(size) {
            wire.extend_from_slice(&[22, 3, 1]);
            wire.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            wire.extend_from_slice(piece);
        }
        wire
    }

    #[test]
    fn reads_the_name_whole_or_in_pieces() {
        let mut exts = vec![0, 10, 0, 2, 0, 29]; // another extension first
        exts.extend_from_slice(&sni_ext(b"Alt.Example"));
        let msg = hello(&exts);
        for size in [msg.len(), 100, 3, 1] {
            let wire = records(&msg, size);
            for cut in 0..wire.len() {
                assert_eq!(
                    server_name(&wire[..cut]),
                    Hello::Incomplete,
                    "size {size} cut {cut}"
                );
            }
            assert_eq!(server_name(&wire), Hello::Done(Some("alt.example".into())));
        }
    }

    #[test]
    fn no_name_an_ip_address_or_garbage_is_none() {
        assert_eq!(server_name(&records(&hello(&[]), 1000)), Hello::Done(None));
        let ip = records(&hello(&sni_ext(b"127.0.0.1")), 1000);
        assert_eq!(server_name(&ip), Hello::Done(None));
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Hello::Done(None));
        // An extension longer than the message.
        let cut = records(&hello(&[0, 0, 0, 50, 1, 2]), 1000);
        assert_eq!(server_name(&cut), Hello::Done(None));
    }
}
