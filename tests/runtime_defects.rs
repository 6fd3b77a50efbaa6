//! Regression tests for runtime defects found with traffic the other tests did not make:
//! urgent data, connections that never stop sending, and callbacks that block. Each test is
//! named after the bug it pins down.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use hydrogen::LengthPrefixed;

use common::{Recorder, TestServer, config};

const KIB: usize = 1 << 10;

/// A u32 length-prefixed frame.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Reads one u32 length-prefixed frame.
fn read_frame(tcp: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0; 4];
    tcp.read_exact(&mut len)?;
    let mut payload = vec![0; u32::from_be_bytes(len) as usize];
    tcp.read_exact(&mut payload)?;
    Ok(payload)
}

/// A frame, one urgent byte, another frame: the read stopped at the urgent mark, the short
/// read was taken for "drained", and the second frame waited in the kernel until the peer
/// sent something else. Both echoes must come back with nothing more sent. (The urgent byte
/// itself is out of band: it is not part of the stream.)
#[test]
fn urgent_byte_stranded_the_next_frame() {
    let handler = Arc::new(Recorder::echo(LengthPrefixed::new(64 * KIB)));
    let server = TestServer::start(config(2), handler.clone());
    for round in 0..20 {
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let (first, second) = (format!("first {round}"), format!("second {round}"));
        tcp.write_all(&framed(first.as_bytes())).unwrap();
        socket2::SockRef::from(&tcp).send_out_of_band(b"!").unwrap();
        tcp.write_all(&framed(second.as_bytes())).unwrap();
        let a = read_frame(&mut tcp).unwrap_or_else(|e| panic!("round {round}, first: {e}"));
        assert_eq!(a, first.as_bytes(), "round {round}");
        let b = read_frame(&mut tcp)
            .unwrap_or_else(|e| panic!("round {round}: the frame after the urgent byte: {e}"));
        assert_eq!(b, second.as_bytes(), "round {round}");
    }
}
