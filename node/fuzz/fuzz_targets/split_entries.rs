//! Folding a text body into entries keeps every non-blank line, in order, and bounds entries.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_node::parse::{split_entries, text_lines};

fuzz_target!(|text: &str| {
    let entries = split_entries(text, 1_764_000_000_000_000, 16);
    let rejoined: Vec<&str> = entries.iter().flat_map(|e| e.split('\n')).collect();
    assert_eq!(rejoined, text_lines(text));
    assert!(entries.iter().all(|e| e.split('\n').count() <= 16));
});
