//! Every format's parser on arbitrary text: no panic, and timestamps stay in range.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_node::parse::{parse_text, time, Format};

fuzz_target!(|text: &str| {
    for f in [Format::Auto, Format::Logfmt, Format::Syslog, Format::Clf, Format::Plain] {
        let p = parse_text(text, f, 1_764_000_000_000_000);
        if let Some(ts) = p.timestamp_us {
            assert!(ts > -62_135_596_800_000_000, "timestamp before year 1");
        }
    }
    if let Some(found) = time::at_start(text, 1_764_000_000_000_000) {
        assert!(found.len <= text.len() && text.is_char_boundary(found.len));
    }
});
