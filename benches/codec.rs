//! Codec micro-benchmarks: encode and decode for both built-in framings, at the payload sizes
//! the benchmark suite uses. Run with `cargo bench --bench codec`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hydrogen::Frames;
use hydrogen::codec::{Codec, LengthPrefixed, SimpleFrame};

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
/// Frames per decode batch: a read that brought many small frames at once.
const BATCH: usize = 64;

fn encode<C: Codec + Clone>(c: &mut Criterion, name: &str, codec: C) {
    let mut group = c.benchmark_group(format!("{name}/encode"));
    for size in SIZES {
        let payload = vec![0xa5u8; size];
        let mut out = Vec::with_capacity(size + 8);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut codec = codec.clone();
            b.iter(|| {
                out.clear();
                codec.encode(black_box(payload), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn decode<C: Codec + Clone>(c: &mut Criterion, name: &str, codec: C) {
    let mut group = c.benchmark_group(format!("{name}/decode"));
    for size in SIZES {
        let mut wire = Vec::new();
        let mut enc = codec.clone();
        for _ in 0..BATCH {
            enc.encode(&vec![0x5au8; size], &mut wire).unwrap();
        }
        let mut frames = Frames::new();
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &wire, |b, wire| {
            let mut codec = codec.clone();
            b.iter(|| {
                // What `Framed::recv` does per read: decode every frame, copy it into the batch.
                frames.clear();
                let mut pos = 0;
                while let Some(d) = codec.decode(black_box(&wire[pos..])).unwrap() {
                    frames.push(&wire[pos..][d.payload]);
                    pos += d.consumed;
                }
                black_box(frames.len())
            })
        });
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    encode(c, "simple", SimpleFrame);
    decode(c, "simple", SimpleFrame);
    encode(c, "u32", LengthPrefixed::default());
    decode(c, "u32", LengthPrefixed::default());
}

criterion_group!(benches, codecs);
criterion_main!(benches);
