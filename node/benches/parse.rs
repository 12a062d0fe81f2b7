//! Parsing throughput, one core: folding LogHub text into entries and parsing each (format
//! detection, timestamp, level, fields), and exception detection with fingerprinting on traces.
//! Run: `cargo bench -p veil-node --bench parse`; figures in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use veil_node::parse::exception::{detect, fingerprint};
use veil_node::parse::{parse_text, split_entries, Format};

const RECEIVE: i64 = 1_764_000_000_000_000;

fn bench(c: &mut Criterion) {
    let dir = veil_node::pii::corpus::loghub_dir();
    let mut body = String::new();
    for system in std::fs::read_dir(&dir).expect("the LogHub sample") {
        let path = system.expect("entry").path();
        if path.is_dir() {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            body.push_str(
                &std::fs::read_to_string(path.join(format!("{name}_2k.log"))).expect("log"),
            );
            body.push('\n');
        }
    }
    let mut group = c.benchmark_group("parse");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("loghub_split_and_parse", |b| {
        b.iter(|| {
            for entry in split_entries(&body, RECEIVE, 1000) {
                std::hint::black_box(parse_text(&entry, Format::Auto, RECEIVE));
            }
        })
    });
    let traces = [
        "Exception in thread \"main\" java.lang.IllegalStateException: order 12345 not found\n\tat com.shop.orders.OrderService.load(OrderService.java:88)\n\tat com.shop.orders.OrderController.get(OrderController.java:41)\nCaused by: java.sql.SQLException: reset\n\t... 12 more",
        "Traceback (most recent call last):\n  File \"/app/worker.py\", line 52, in run\n    self.handle(job)\n  File \"/app/worker.py\", line 77, in handle\nZeroDivisionError: division by zero",
        "panic: runtime error: index out of range [5] with length 3\n\ngoroutine 1 [running]:\nmain.pick(...)\n\t/src/app/main.go:12 +0x1d\nmain.main()\n\t/src/app/main.go:20 +0x45",
        "2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.mapreduce.v2.app.MRAppMaster: Created MRAppMaster for application appattempt_1445144423722_0020_000001",
    ];
    let bytes: usize = traces.iter().map(|t| t.len()).sum();
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("exceptions_detect_and_fingerprint", |b| {
        b.iter(|| {
            for t in &traces {
                if let Some(info) = detect(t) {
                    std::hint::black_box(fingerprint(&info));
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
