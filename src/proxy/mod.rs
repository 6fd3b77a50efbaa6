//! The PROXY protocol (versions 1 and 2), as a load balancer such as HAProxy or nginx sends
//! it at the start of each connection it forwards, to tell the server who the client is.
//!
//! With [`Config::proxy_protocol`](crate::Config::proxy_protocol) on, the server reads one
//! header from every accepted connection before anything else, and
//! [`Socket::peer_addr`](crate::Socket::peer_addr) is the client the header names;
//! [`Socket::proxy_header`](crate::Socket::proxy_header) gives the whole header, TLVs
//! included. [`parse_header`] is the parser the server uses, public so that a custom
//! [`Transport`](crate::Transport) or a test can use it too.
//!
//! The rules follow HAProxy's `doc/proxy-protocol.txt`:
//! - the parser never guesses: bytes that cannot be the start of either version are an
//!   error ([`HeaderError::Missing`]), never taken as the connection's own data;
//! - a v1 line ends in CRLF within [`V1_MAX_LENGTH`] (107) bytes, or it is refused;
//! - a v2 header may be at most [`MAX_V2_LENGTH`] bytes, far more than any real proxy sends
//!   (the format allows 64 KiB, which would let every connection pin that much);
//! - v2 `LOCAL` (a proxy's own connection: HAProxy's health checks with `send-proxy-v2`) and
//!   v1 `UNKNOWN` are accepted, with no client address: the connection's real addresses
//!   stand. (HAProxy's checks with v1 `send-proxy` name its own addresses in a `TCP4` line.)
//! - an unknown version, command, address family or protocol, a datagram protocol, and TLVs
//!   that run past the header are refused.
//!
//! The byte-level decoding is the `ppp` crate's; this module frames the header (how many
//! bytes it takes, whether more must arrive), applies the rules above, and owns the result.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};

/// The longest v1 header, CRLF included, as the specification fixes it.
pub const V1_MAX_LENGTH: usize = 107;

/// The longest v2 header this parser accepts: the 16-byte fixed part, the addresses and
/// the TLVs. HAProxy's largest headers (with SSL TLVs and a unique ID) stay well under it.
pub const MAX_V2_LENGTH: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
const V2_FIXED: usize = 16;

/// Which command a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyCommand {
    /// The connection was relayed for a client, whose addresses the header names (v2
    /// `PROXY`; v1 `TCP4` and `TCP6`).
    Proxy,
    /// The proxy opened the connection on its own behalf (v2 `LOCAL`, as HAProxy's health
    /// checks over `send-proxy-v2` say; also v1 `UNKNOWN`): the connection's real addresses
    /// stand.
    Local,
}

/// TLV types the specification names, for [`ProxyHeader::tlv`].
pub mod tlv {
    /// The protocol the client negotiated with the proxy (ALPN), for example `h2`.
    pub const ALPN: u8 = 0x01;
    /// The host name the client asked for (TLS SNI, or a configured authority).
    pub const AUTHORITY: u8 = 0x02;
    /// A CRC32c checksum of the header.
    pub const CRC32C: u8 = 0x03;
    /// Padding, to be ignored.
    pub const NOOP: u8 = 0x04;
    /// An opaque ID the proxy gave the connection (HAProxy's `unique-id`), at most 128 bytes.
    pub const UNIQUE_ID: u8 = 0x05;
    /// The TLS details of the client's connection to the proxy (a structure of its own).
    pub const SSL: u8 = 0x20;
    /// The network namespace the proxy accepted the connection in.
    pub const NETNS: u8 = 0x30;
}

/// One type-length-value field of a v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// Its type (see [`tlv`] for the specified ones; 0xE0 to 0xEF are for private use).
    pub kind: u8,
    /// Its value.
    pub value: &'a [u8],
}

/// A parsed PROXY header, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    version: u8,
    command: ProxyCommand,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    /// The TLV section, checked to be well formed at parse time.
    tlvs: Box<[u8]>,
}

impl ProxyHeader {
    /// The protocol version: 1 (text) or 2 (binary).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The header's command.
    pub fn command(&self) -> ProxyCommand {
        self.command
    }

    /// The client's address, if the header names one: `None` for `LOCAL`, `UNKNOWN`, and
    /// address families that are not IP (`AF_UNSPEC`, `AF_UNIX`).
    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// The address the client connected to (the proxy's frontend), when the header names
    /// the client's.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.destination
    }

    /// The v2 TLVs, in the order the proxy sent them (none for v1).
    pub fn tlvs(&self) -> impl Iterator<Item = Tlv<'_>> + '_ {
        TlvIter { rest: &self.tlvs }
    }

    /// The value of the first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs().find(|t| t.kind == kind).map(|t| t.value)
    }

    /// The ALPN TLV: the protocol the client negotiated with the proxy.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tlv(tlv::ALPN)
    }

    /// The authority TLV (the SNI the client sent), when it is UTF-8 as it should be.
    pub fn authority(&self) -> Option<&str> {
        self.tlv(tlv::AUTHORITY)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The unique-ID TLV (HAProxy's `send-proxy-v2` with `proxy-v2-options unique-id`).
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.tlv(tlv::UNIQUE_ID)
    }
}

struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        // Well formed by construction (checked in `parse_v2`); stop quietly otherwise.
        if self.rest.len() < 3 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.rest[1], self.rest[2]]));
        let value = self.rest.get(3..3 + len)?;
        let kind = self.rest[0];
        self.rest = &self.rest[3 + len..];
        Some(Tlv { kind, value })
    }
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The connection's first bytes are not a PROXY header of either version.
    Missing,
    /// A v1 line with no CRLF within [`V1_MAX_LENGTH`] bytes.
    V1TooLong,
    /// A v1 line that does not parse: the reason.
    V1Malformed(String),
    /// A v2 header longer than [`MAX_V2_LENGTH`]: its length.
    V2TooLong(usize),
    /// A v2 header that does not parse, or that uses a command, family or protocol this
    /// server refuses: the reason.
    V2Malformed(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Missing => f.write_str("the connection did not start with a PROXY header"),
            HeaderError::V1TooLong => write!(
                f,
                "PROXY v1 header has no CRLF within {V1_MAX_LENGTH} bytes"
            ),
            HeaderError::V1Malformed(why) => write!(f, "malformed PROXY v1 header: {why}"),
            HeaderError::V2TooLong(len) => write!(
                f,
                "PROXY v2 header of {len} bytes is longer than the {MAX_V2_LENGTH} accepted"
            ),
            HeaderError::V2Malformed(why) => write!(f, "malformed PROXY v2 header: {why}"),
        }
    }
}

impl std::error::Error for HeaderError {}

impl From<HeaderError> for io::Error {
    fn from(err: HeaderError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// Parses the PROXY header at the start of `buf`, the bytes a connection has sent so far.
///
/// - `Ok(Some((header, len)))`: a whole header, `len` bytes long; what follows it is the
///   connection's own data.
/// - `Ok(None)`: `buf` is the start of a header (or empty), and more bytes must arrive.
/// - `Err`: the connection must be refused.
pub fn parse_header(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == V2_SIGNATURE[0] {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return Err(HeaderError::Missing);
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(HeaderError::Missing);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX_LENGTH)];
    // The line's only LF is the one after its CR: one before it cannot be a v1 header.
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX_LENGTH {
            Err(HeaderError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    if window[cr] == b'\n' {
        return Err(HeaderError::V1Malformed("LF without CR".into()));
    }
    match window.get(cr + 1) {
        Some(b'\n') => {}
        Some(_) => return Err(HeaderError::V1Malformed("CR not followed by LF".into())),
        None if cr + 1 >= V1_MAX_LENGTH => return Err(HeaderError::V1TooLong),
        None => return Ok(None),
    }
    let len = cr + 2;
    let line = std::str::from_utf8(&buf[..len])
        .map_err(|_| HeaderError::V1Malformed("not ASCII".into()))?;
    let parsed =
        v1::Header::try_from(line).map_err(|err| HeaderError::V1Malformed(err.to_string()))?;
    let (command, source, destination) = match parsed.addresses {
        v1::Addresses::Unknown => (ProxyCommand::Local, None, None),
        v1::Addresses::Tcp4(a) => {
            let (source, destination) = ipv4_ends(&a);
            (ProxyCommand::Proxy, source, destination)
        }
        v1::Addresses::Tcp6(a) => {
            let (source, destination) = ipv6_ends(&a);
            (ProxyCommand::Proxy, source, destination)
        }
    };
    let header = ProxyHeader {
        version: 1,
        command,
        source,
        destination,
        tlvs: Box::default(),
    };
    Ok(Some((header, len)))
}

/// The source and destination of an IPv4 header (ppp's type, the same for v1 and v2).
fn ipv4_ends(a: &v2::IPv4) -> (Option<SocketAddr>, Option<SocketAddr>) {
    (
        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        Some(SocketAddr::new(
            IpAddr::V4(a.destination_address),
            a.destination_port,
        )),
    )
}

/// The source and destination of an IPv6 header.
fn ipv6_ends(a: &v2::IPv6) -> (Option<SocketAddr>, Option<SocketAddr>) {
    (
        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        Some(SocketAddr::new(
            IpAddr::V6(a.destination_address),
            a.destination_port,
        )),
    )
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_V2_LENGTH {
        return Err(HeaderError::V2TooLong(len));
    }
    // The version and command are in the fixed part: refuse a bad one without waiting for
    // the rest.
    if buf[12] >> 4 != 2 {
        return Err(HeaderError::V2Malformed(format!(
            "version {} (only 2 exists)",
            buf[12] >> 4
        )));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let parsed = v2::Header::try_from(&buf[..len])
        .map_err(|err| HeaderError::V2Malformed(err.to_string()))?;
    for tlv in parsed.tlvs() {
        tlv.map_err(|err| HeaderError::V2Malformed(err.to_string()))?;
    }
    let command = match parsed.command {
        v2::Command::Local => ProxyCommand::Local,
        v2::Command::Proxy => ProxyCommand::Proxy,
    };
    let (source, destination) = if command == ProxyCommand::Local {
        // LOCAL: the addresses (if any) are to be ignored.
        (None, None)
    } else {
        match parsed.protocol {
            v2::Protocol::Datagram => {
                return Err(HeaderError::V2Malformed(
                    "a datagram protocol on a stream connection".into(),
                ));
            }
            // UNSPEC: "unknown or unsupported"; the spec lets the receiver use the real
            // addresses.
            v2::Protocol::Unspecified => (None, None),
            v2::Protocol::Stream => match parsed.addresses {
                v2::Addresses::IPv4(a) => ipv4_ends(&a),
                v2::Addresses::IPv6(a) => ipv6_ends(&a),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => (None, None),
            },
        }
    };
    let header = ProxyHeader {
        version: 2,
        command,
        source,
        destination,
        tlvs: parsed.tlv_bytes().into(),
    };
    Ok(Some((header, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family_protocol: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family_protocol);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v4_body() -> Vec<u8> {
        let mut body = vec![192, 0, 2, 7, 127, 0, 0, 1];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&7000u16.to_be_bytes());
        body
    }

    #[test]
    fn v1_tcp4_and_the_bytes_behind_it() {
        let input = b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 7000\r\nhello";
        let (header, len) = parse_header(input).unwrap().unwrap();
        assert_eq!(&input[len..], b"hello");
        assert_eq!(header.version(), 1);
        assert_eq!(header.command(), ProxyCommand::Proxy);
        assert_eq!(header.source(), Some("192.0.2.7:4242".parse().unwrap()));
        assert_eq!(
            header.destination(),
            Some("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(header.tlvs().count(), 0);
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let (header, _) = parse_header(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(header.source(), Some("[2001:db8::1]:1".parse().unwrap()));
        let (header, len) = parse_header(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\nX")
            .unwrap()
            .unwrap();
        assert_eq!(len, 31);
        assert_eq!(header.command(), ProxyCommand::Local);
        assert_eq!(header.source(), None);
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 7000\r\n".to_vec();
        let v2 = v2(1, 0x11, &v4_body());
        for full in [v1, v2] {
            for cut in 0..full.len() {
                assert_eq!(parse_header(&full[..cut]), Ok(None), "cut at {cut}");
            }
            assert_eq!(parse_header(&full).unwrap().unwrap().1, full.len());
        }
    }

    #[test]
    fn never_guesses() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"PROXX",
            b"\r\n\r\n\0\r\nQUIZ",
        ] {
            assert_eq!(parse_header(input), Err(HeaderError::Missing), "{input:?}");
        }
    }

    #[test]
    fn v1_must_end_within_107_bytes() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(V1_MAX_LENGTH, b'1');
        assert_eq!(parse_header(&long), Err(HeaderError::V1TooLong));
        assert_eq!(parse_header(&long[..V1_MAX_LENGTH - 1]), Ok(None));
        // A CR as the 107th byte cannot be followed by its LF within the limit.
        long[V1_MAX_LENGTH - 1] = b'\r';
        assert_eq!(parse_header(&long), Err(HeaderError::V1TooLong));
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        for line in [
            &b"PROXY TCP4 192.0.2.7 127.0.0.1 4242\r\n"[..],
            b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n",
            b"PROXY TCP5 192.0.2.7 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 2\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\rX",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n",
            b"PROXY \xff\xfe 1 2\r\n",
        ] {
            assert!(
                matches!(parse_header(line), Err(HeaderError::V1Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(line),
                parse_header(line)
            );
        }
    }

    #[test]
    fn v2_proxy_with_tlvs() {
        let mut body = v4_body();
        body.extend_from_slice(&[tlv::AUTHORITY, 0, 11]);
        body.extend_from_slice(b"example.com");
        body.extend_from_slice(&[tlv::UNIQUE_ID, 0, 3, 1, 2, 3]);
        let mut input = v2(1, 0x11, &body);
        let header_len = input.len();
        input.extend_from_slice(b"rest");
        let (header, len) = parse_header(&input).unwrap().unwrap();
        assert_eq!(len, header_len);
        assert_eq!(header.version(), 2);
        assert_eq!(header.source(), Some("192.0.2.7:4242".parse().unwrap()));
        assert_eq!(header.authority(), Some("example.com"));
        assert_eq!(header.unique_id(), Some(&[1u8, 2, 3][..]));
        assert_eq!(header.alpn(), None);
        assert_eq!(header.tlvs().count(), 2);
    }

    #[test]
    fn v2_local_uses_no_addresses() {
        let (header, len) = parse_header(&v2(0, 0x00, &[])).unwrap().unwrap();
        assert_eq!(len, 16);
        assert_eq!(header.command(), ProxyCommand::Local);
        assert_eq!(header.source(), None);
        // LOCAL with addresses present: still ignored.
        let (header, _) = parse_header(&v2(0, 0x11, &v4_body())).unwrap().unwrap();
        assert_eq!(header.source(), None);
    }

    #[test]
    fn v2_refusals() {
        // Unknown command, family, protocol, version; datagram; TLV overrun; short addresses.
        let mut overrun = v4_body();
        overrun.extend_from_slice(&[tlv::NOOP, 0, 9, 1]);
        let cases: Vec<Vec<u8>> = vec![
            v2(2, 0x11, &v4_body()),
            v2(1, 0x41, &v4_body()),
            v2(1, 0x13, &v4_body()),
            v2(1, 0x12, &v4_body()),
            v2(1, 0x11, &overrun),
            v2(1, 0x11, &[1, 2, 3]),
            {
                let mut bad = v2(1, 0x11, &v4_body());
                bad[12] = 0x11;
                bad
            },
        ];
        for case in cases {
            assert!(
                matches!(parse_header(&case), Err(HeaderError::V2Malformed(_))),
                "{case:?}: {:?}",
                parse_header(&case)
            );
        }
    }

    #[test]
    fn v2_length_is_capped_before_the_body_arrives() {
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            parse_header(&fixed),
            Err(HeaderError::V2TooLong(16 + 0xffff))
        );
        let body = vec![0u8; MAX_V2_LENGTH - 16 - 12];
        let mut at_cap = v4_body();
        at_cap.extend_from_slice(&[tlv::NOOP]);
        at_cap.extend_from_slice(&((body.len() - 3) as u16).to_be_bytes());
        at_cap.extend_from_slice(&body[3..]);
        let input = v2(1, 0x11, &at_cap);
        assert_eq!(input.len(), MAX_V2_LENGTH);
        assert_eq!(parse_header(&input).unwrap().unwrap().1, MAX_V2_LENGTH);
    }

    #[test]
    fn v2_ipv6_and_unix() {
        let mut body = Vec::new();
        body.extend_from_slice(
            &"2001:db8::9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        body.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&[0, 1, 0, 2]);
        let (header, _) = parse_header(&v2(1, 0x21, &body)).unwrap().unwrap();
        assert_eq!(header.source(), Some("[2001:db8::9]:1".parse().unwrap()));
        let (header, _) = parse_header(&v2(1, 0x31, &[0u8; 216])).unwrap().unwrap();
        assert_eq!(header.command(), ProxyCommand::Proxy);
        assert_eq!(header.source(), None);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err: io::Error = HeaderError::V2TooLong(70000).into();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("70000"), "{err}");
    }
}
