//! Exception detection and fingerprinting on arbitrary text: no panic, stable output.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_node::parse::exception::{detect, fingerprint};

fuzz_target!(|text: &str| {
    if let Some(info) = detect(text) {
        let a = fingerprint(&info);
        assert_eq!(a, fingerprint(&detect(text).expect("deterministic")));
        assert_eq!(a.len(), 16);
    }
});
