//! Where an index's bytes go, per field and part, in bytes per document (BENCHMARKS.md,
//! issue 8): `cargo run --release -p veil-shard --example index_space -- <data>/index/shard-0000`
//! (a node's shard index, the node stopped).

use std::collections::BTreeMap;

fn main() -> tantivy::Result<()> {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: index_space <index directory>");
        std::process::exit(2);
    };
    let index = tantivy::Index::open_in_dir(&dir)?;
    let searcher = index.reader()?.searcher();
    let usage = searcher.space_usage()?;
    let docs = searcher.num_docs().max(1) as f64;
    // Per field: term dictionary, postings, positions, fast field, field norms.
    let mut per: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    let mut store = 0;
    for seg in usage.segments() {
        let parts = [
            seg.termdict(),
            seg.postings(),
            seg.positions(),
            seg.fast_fields(),
            seg.fieldnorms(),
        ];
        for (i, part) in parts.iter().enumerate() {
            for field in part.fields() {
                per.entry(field.field_name().to_string()).or_default()[i] +=
                    field.total().get_bytes();
            }
        }
        store += seg.store().total().get_bytes();
    }
    let per_doc = |b: u64| b as f64 / docs;
    println!(
        "{docs} documents, {:.2} bytes each (document store {:.2})",
        per_doc(usage.total().get_bytes()),
        per_doc(store)
    );
    println!(
        "{:24} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "field", "terms", "postings", "position", "fast", "norms"
    );
    for (name, b) in per {
        print!("{name:24}");
        for v in b {
            print!(" {:8.2}", per_doc(v));
        }
        println!();
    }
    Ok(())
}
