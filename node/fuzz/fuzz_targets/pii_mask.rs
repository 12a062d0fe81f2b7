//! The PII engine on arbitrary text: no panic, idempotent, text outside the spans kept.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_node::pii::keys::KeyRing;
use veil_node::pii::{Findings, Masker, Strategies, Unmasked};

fn masker() -> &'static Masker {
    static M: OnceLock<Masker> = OnceLock::new();
    M.get_or_init(|| {
        let keys = KeyRing::throwaway().expect("random keys");
        Masker::new(Strategies::default(), &keys, &[]).expect("built-in patterns")
    })
}

fuzz_target!(|text: &str| {
    let m = masker();
    let mut f = Findings::default();
    let once = m.mask(Unmasked(text.to_string()), &mut f);
    let twice = m.mask(Unmasked(once.clone()), &mut Findings::default());
    assert_eq!(once, twice, "masking is idempotent");
    // One pass replaces exactly the spans scan reports, and nothing else.
    let (one_pass, _) = m.mask_once(text.to_string(), &mut Findings::default());
    let mut rebuilt = String::new();
    let mut last = 0;
    for d in m.scan(text) {
        rebuilt.push_str(&text[last..d.range.start]);
        rebuilt.push_str(&d.replacement);
        last = d.range.end;
    }
    rebuilt.push_str(&text[last..]);
    assert_eq!(rebuilt, one_pass);
});
