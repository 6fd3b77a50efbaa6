//! PROXY protocol header parsing: what `hydrogen::proxy::parse_header` costs per header, the
//! work the server adds to every accepted connection with `Config::proxy_protocol` on. Four
//! headers: a v1 `TCP4` line, a v1 `TCP6` line, a v2 IPv4 header without TLVs (28 bytes), and a
//! v2 IPv4 header with the TLVs HAProxy's `send-proxy-v2` adds (ALPN, authority, a 40-byte unique
//! ID). Each is parsed whole from a buffer that also holds the connection's first frame, as the
//! server's first read would. Run with `cargo bench --bench proxy_header` (the BENCHMARKS.md
//! figures: `-- --warm-up-time 1 --measurement-time 2`).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hydrogen::proxy::parse_header;
use ppp::v2::{Builder, Command, IPv4, Protocol, Type, Version};

/// A 64-byte u32 frame after the header: the first read brings both.
fn with_frame(mut header: Vec<u8>) -> (Vec<u8>, usize) {
    let len = header.len();
    header.extend_from_slice(&64u32.to_be_bytes());
    header.extend_from_slice(&[0x5a; 64]);
    (header, len)
}

/// The headers: (name, buffer with header and frame, header length).
fn headers() -> Vec<(&'static str, Vec<u8>, usize)> {
    let v1_tcp4 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n".to_vec();
    let v1_tcp6 = b"PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8::1 51234 443\r\n".to_vec();
    let addresses = IPv4::new([203, 0, 113, 7], [192, 0, 2, 1], 51234, 443);
    let v2 = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
        .build()
        .expect("a v2 header");
    // HAProxy's `send-proxy-v2` with `proxy-v2-options authority,unique-id` and ALPN: the
    // unique ID in its default `%{+X}o %ci:%cp_%fi:%fp_%Ts_%rt:%pid` shape, 40 bytes.
    let unique_id = b"CB007107:C822_C0000201:01BB_66A1B2C3_A2F";
    let v2_tlvs =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
            .write_tlv(Type::ALPN, b"h2")
            .and_then(|b| b.write_tlv(Type::Authority, b"www.example.com"))
            .and_then(|b| b.write_tlv(Type::UniqueId, unique_id))
            .and_then(Builder::build)
            .expect("a v2 header with TLVs");
    [
        ("v1-tcp4", v1_tcp4),
        ("v1-tcp6", v1_tcp6),
        ("v2-ipv4", v2),
        ("v2-ipv4-tlvs", v2_tlvs),
    ]
    .into_iter()
    .map(|(name, header)| {
        let (buf, len) = with_frame(header);
        (name, buf, len)
    })
    .collect()
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("proxy/parse_header");
    for (name, buf, len) in headers() {
        // Checked once: the whole header, and nothing of the frame after it.
        let (header, used) = parse_header(&buf).unwrap().expect("a whole header");
        assert_eq!(used, len, "{name}");
        assert!(header.source().is_some(), "{name}");
        if name == "v2-ipv4-tlvs" {
            assert_eq!(header.authority(), Some("www.example.com"));
            assert_eq!(header.unique_id().map(<[u8]>::len), Some(40));
        }
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &buf, |b, buf| {
            b.iter(|| {
                let parsed = parse_header(black_box(buf)).unwrap();
                black_box(parsed)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
