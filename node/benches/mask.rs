//! Masking throughput on log lines, one core: real LogHub lines as they are (they hold real IP
//! addresses), LogHub lines with one in ten carrying a generated personal value, and a dense mix
//! with every other line carrying one. Run: `cargo bench -p veil-node --bench mask`; the
//! figures are in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use veil_node::pii::corpus::{load_loghub, Generator};
use veil_node::pii::keys::KeyRing;
use veil_node::pii::{Findings, Masker, Strategies, Unmasked};

fn bench(c: &mut Criterion) {
    let dir = veil_node::pii::corpus::loghub_dir();
    let loghub = load_loghub(&dir).expect("the LogHub sample in node/testdata/loghub");
    let mixed = |share: f64| -> Vec<String> {
        let mut g = Generator::new(42, loghub.clone()).with_pii_share(share);
        (0..loghub.len()).map(|_| g.sample().line).collect()
    };
    let sets = [
        ("loghub", loghub.clone()),
        ("mixed_10pct", mixed(0.1)),
        ("dense_50pct", mixed(0.5)),
    ];
    let keys = KeyRing::throwaway().expect("random keys");
    let masker = Masker::new(Strategies::default(), &keys, &[]).expect("built-in patterns");
    let mut group = c.benchmark_group("mask");
    group.sample_size(20);
    for (name, set) in &sets {
        let bytes: usize = set.iter().map(String::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut findings = Findings::default();
                for line in set {
                    std::hint::black_box(masker.mask(Unmasked(line.clone()), &mut findings));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
