//! Masking throughput by the thread's CPU clock, for a machine shared with other work, where
//! criterion's wall-clock figures (benches/mask.rs) mostly measure the neighbours: the same
//! three inputs as that bench, masked `PASSES` times each in turn (7 unless
//! `VEIL_MASK_PASSES` says otherwise); prints per input the middle pass's MiB/s and the best
//! and worst. Run: `cargo bench -p veil-node --bench mask_cpu`; run two builds alternately to
//! compare them (BENCHMARKS.md, session 13).

use rustix::time::{clock_gettime, ClockId};
use veil_node::pii::corpus::{load_loghub, Generator};
use veil_node::pii::keys::KeyRing;
use veil_node::pii::{Findings, Masker, Strategies, Unmasked};

fn cpu_ns() -> u128 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn main() {
    let passes: usize = std::env::var("VEIL_MASK_PASSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
        .max(1);
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
    let mut times = vec![Vec::new(); sets.len()];
    for _ in 0..passes {
        for (i, (_, set)) in sets.iter().enumerate() {
            let start = cpu_ns();
            let mut findings = Findings::default();
            for line in set {
                std::hint::black_box(masker.mask(Unmasked(line.clone()), &mut findings));
            }
            times[i].push(cpu_ns() - start);
        }
    }
    for ((name, set), t) in sets.iter().zip(&mut times) {
        let bytes: usize = set.iter().map(String::len).sum();
        t.sort_unstable();
        let mib_s = |ns: u128| bytes as f64 / f64::from(1 << 20) / (ns.max(1) as f64 / 1e9);
        println!(
            "mask_cpu/{name:12} {:7.1} MiB/s (best {:.1}, worst {:.1}, {passes} passes)",
            mib_s(t[t.len() / 2]),
            mib_s(t[0]),
            mib_s(t[t.len() - 1])
        );
    }
}
