//! Masking throughput on log lines: real LogHub lines alone, and the same lines mixed with
//! generated personal data (half the lines carry one value). Run: `cargo bench -p veil-node
//! --bench mask`; figures go to BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use veil_node::pii::corpus::{load_loghub, Generator};
use veil_node::pii::keys::KeyRing;
use veil_node::pii::{Findings, Masker, Strategies, Unmasked};

fn lines() -> (Vec<String>, Vec<String>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/loghub");
    let base = load_loghub(&dir).expect("the LogHub sample in shared/data/loghub");
    let mut g = Generator::new(42, base.clone());
    let mixed = (0..base.len()).map(|_| g.sample().line).collect();
    (base, mixed)
}

fn bench(c: &mut Criterion) {
    let keys = KeyRing::throwaway().expect("random keys");
    let masker = Masker::new(Strategies::default(), &keys, &[]).expect("built-in patterns");
    let (loghub, mixed) = lines();
    let mut group = c.benchmark_group("mask");
    group.sample_size(20);
    for (name, set) in [("loghub", &loghub), ("mixed", &mixed)] {
        let bytes: usize = set.iter().map(String::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(name, |b| {
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
