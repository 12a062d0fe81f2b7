//! The PII engine: finds personal data in text and masks it, before an entry goes anywhere.
//!
//! One pass of one multi-pattern [`regex_automata::meta::Regex`] over the text finds
//! candidates (a keyword-led pattern by its keyword, the whole of it then run anchored where
//! the keyword is: see [`patterns`]); a validator per kind (Luhn and issuer rules for cards,
//! the SSA's rules for SSNs, mod-97 for IBANs, a real parse for IPv6, context words for bare
//! digit runs) accepts or rejects each. When a validator rejects a candidate, the patterns
//! after it are retried anchored at the same position, so a rejected card can still be a
//! phone number. Word boundaries are ASCII (`(?-u:\b)`), which keeps the regex on its lazy
//! DFA.
//!
//! Each accepted span is replaced according to its type's [`Strategy`]: the seed's REDACT forms,
//! a keyed HMAC token (`<email:5f3a9c1e2b4d>`) that is stable for one value and so still
//! searchable, or a partial mask (`j***@example.com`). Masked output is never detected again,
//! so masking is idempotent, and text outside the masked spans is copied unchanged.

pub mod app_corpus;
pub mod corpus;
pub mod custom;
pub mod keys;
mod patterns;
mod validate;

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use hmac::{Hmac, Mac};
use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input, PatternID};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use custom::CustomPattern;
use keys::KeyRing;
use patterns::{ascii_boundaries, builtin_patterns, Kind};

/// Text that may hold personal data. It cannot be printed: its `Debug` shows `<redacted>` and
/// it has no `Display`, so it never reaches Veil's own logs by accident.
pub struct Unmasked(pub String);

impl fmt::Debug for Unmasked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A built-in kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiType {
    /// An email address.
    Email,
    /// A phone number (North American or international).
    Phone,
    /// A US social security number.
    Ssn,
    /// A payment card number.
    CreditCard,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// An international bank account number.
    Iban,
    /// A credential: bearer token, password, API key, JWT, private key.
    Secret,
}

impl PiiType {
    /// Every built-in type, in a fixed order.
    pub const ALL: [PiiType; 7] = [
        PiiType::Email,
        PiiType::Phone,
        PiiType::Ssn,
        PiiType::CreditCard,
        PiiType::IpAddress,
        PiiType::Iban,
        PiiType::Secret,
    ];

    /// Returns the lowercase name used in API answers (`"credit_card"`).
    pub fn as_str(self) -> &'static str {
        match self {
            PiiType::Email => "email",
            PiiType::Phone => "phone",
            PiiType::Ssn => "ssn",
            PiiType::CreditCard => "credit_card",
            PiiType::IpAddress => "ip_address",
            PiiType::Iban => "iban",
            PiiType::Secret => "secret",
        }
    }

    /// Parses a name as [`PiiType::as_str`] writes it, case-insensitively.
    pub fn parse(name: &str) -> Option<PiiType> {
        PiiType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }

    fn redacted(self) -> &'static str {
        match self {
            PiiType::Email => "***@***.***",
            PiiType::Phone => "***-***-****",
            PiiType::Ssn => "***-**-****",
            PiiType::CreditCard => "****-****-****-****",
            PiiType::IpAddress => "***.***.***.***",
            PiiType::Iban => "****",
            PiiType::Secret => "[REDACTED]",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a detected value is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Strategy {
    /// A fixed form per type (`***@***.***`).
    Redact,
    /// A keyed HMAC token, stable per value (`<email:5f3a9c1e2b4d>`).
    Hash,
    /// Part of the value kept (`j***@example.com`, `****-****-****-1234`, `192.168.*.*`).
    PartialMask,
}

impl Strategy {
    /// Parses `redact`, `hash` or `partial_mask` (also `partial`), case-insensitively.
    pub fn parse(s: &str) -> Option<Strategy> {
        match s.to_ascii_lowercase().as_str() {
            "redact" => Some(Strategy::Redact),
            "hash" => Some(Strategy::Hash),
            "partial_mask" | "partial" => Some(Strategy::PartialMask),
            _ => None,
        }
    }

    /// Returns the name as the API writes it (`PARTIAL_MASK`).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Redact => "REDACT",
            Strategy::Hash => "HASH",
            Strategy::PartialMask => "PARTIAL_MASK",
        }
    }
}

/// The strategy of each built-in type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategies([Strategy; 7]);

impl Default for Strategies {
    /// The defaults: emails, phone numbers and IP addresses become keyed hashes (so one user's
    /// or client's entries still correlate and can be searched for); card numbers keep their
    /// last four digits, as payment systems show them; SSNs, IBANs and secrets are redacted.
    fn default() -> Self {
        let mut s = [Strategy::Redact; 7];
        s[PiiType::Email.index()] = Strategy::Hash;
        s[PiiType::Phone.index()] = Strategy::Hash;
        s[PiiType::IpAddress.index()] = Strategy::Hash;
        s[PiiType::CreditCard.index()] = Strategy::PartialMask;
        Strategies(s)
    }
}

impl Strategies {
    /// Returns the strategy of a type.
    pub fn get(&self, t: PiiType) -> Strategy {
        self.0[t.index()]
    }

    /// Sets the strategy of a type. A secret is never partially shown: PARTIAL_MASK on
    /// `secret` is taken as REDACT.
    pub fn set(&mut self, t: PiiType, s: Strategy) {
        self.0[t.index()] = if t == PiiType::Secret && s == Strategy::PartialMask {
            Strategy::Redact
        } else {
            s
        };
    }

    /// Applies `type=strategy` assignments (`email=redact,ip_address=partial_mask`).
    pub fn apply(&mut self, assignments: &str) -> Result<(), String> {
        for part in assignments
            .split([',', ' '])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (t, s) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not type=strategy"))?;
            let t = PiiType::parse(t.trim())
                .ok_or_else(|| format!("unknown PII type {t:?} (known: {})", type_names()))?;
            let s = Strategy::parse(s.trim()).ok_or_else(|| {
                format!("unknown masking strategy {s:?} (known: redact, hash, partial_mask)")
            })?;
            self.set(t, s);
        }
        Ok(())
    }
}

fn type_names() -> String {
    PiiType::ALL.map(PiiType::as_str).join(", ")
}

/// The names of the personal-data types found in an entry.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    names: Vec<Cow<'static, str>>,
}

impl Findings {
    fn add(&mut self, name: Cow<'static, str>) {
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }

    /// Returns the lowercase names of the types found, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut t: Vec<String> = self.names.iter().map(|n| n.to_string()).collect();
        t.sort();
        t
    }

    /// Returns true when anything was found (and therefore masked).
    pub fn any(&self) -> bool {
        !self.names.is_empty()
    }
}

/// What a span was detected as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// A built-in type.
    Builtin(PiiType),
    /// The custom pattern at this index of the masker's custom list.
    Custom(usize),
}

/// One detected span and what replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Byte range in the scanned text.
    pub range: Range<usize>,
    /// The type's name (`"email"`, or a custom pattern's type).
    pub pii_type: String,
    /// The replacement text.
    pub replacement: String,
}

/// Most extra passes [`Masker::mask`] makes to reach a fixpoint.
const FIXPOINT_PASSES_MAX: usize = 3;

/// Limits on a masker's compiled automaton (custom patterns count against them).
const NFA_SIZE_MAX: usize = 16 << 20;
const DFA_CACHE_BYTES: usize = 16 << 20;

/// Why a masker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A custom pattern does not compile (or the whole set is too large).
    #[error("the PII patterns do not compile: {0}")]
    Regex(String),
}

/// Finds and masks personal data. Cheap to share (`Arc`); rebuilt when custom patterns change.
pub struct Masker {
    /// Every pattern, a keyword-led one by its head: the one pass over the text.
    regex: Regex,
    /// What each pattern of `regex` is, and for a head, its whole pattern in `keyword_led`.
    kinds: Vec<(Kind, Option<PatternID>)>,
    /// The keyword-led patterns whole, run anchored where `regex` found a head.
    keyword_led: Regex,
    custom: Vec<CustomPattern>,
    strategies: Strategies,
    hmac: Hmac<Sha256>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("patterns", &self.kinds.len())
            .field("custom", &self.custom.len())
            .field("strategies", &self.strategies)
            .finish_non_exhaustive()
    }
}

/// What a validator said about a candidate.
enum Verdict {
    /// Replace this range (which may be narrower than the candidate) as this label.
    Replace(Range<usize>, Label),
    /// Already-masked text: leave it, continue after it.
    Skip(usize),
    /// Not personal data: try the other patterns here.
    Reject,
}

impl Masker {
    /// Builds a masker with these strategies, hashing key and active custom patterns.
    pub fn new(
        strategies: Strategies,
        keys: &KeyRing,
        custom: &[CustomPattern],
    ) -> Result<Masker, BuildError> {
        Masker::with_patterns(strategies, keys, custom, builtin_patterns())
    }

    /// [`Masker::new`] with these built-in patterns.
    fn with_patterns(
        strategies: Strategies,
        keys: &KeyRing,
        custom: &[CustomPattern],
        builtins: Vec<patterns::Pattern>,
    ) -> Result<Masker, BuildError> {
        let mut kinds = Vec::new();
        let mut patterns = Vec::new();
        let mut keyword_led = Vec::new();
        // Custom patterns come first: an operator's rule wins over a built-in at one position.
        let custom: Vec<CustomPattern> = custom.iter().filter(|p| p.is_active).cloned().collect();
        for (i, p) in custom.iter().enumerate() {
            kinds.push((Kind::Custom(i), None));
            patterns.push(p.regex_pattern.clone());
        }
        for p in builtins {
            let whole = ascii_boundaries(&p.whole);
            let (scanned, whole) = match &p.head {
                Some(head) => {
                    keyword_led.push(whole);
                    let id = PatternID::new_unchecked(keyword_led.len() - 1);
                    (ascii_boundaries(head), Some(id))
                }
                None => (whole, None),
            };
            // `Masked` must stay first of all, so output tokens are skipped before a custom
            // pattern could see them.
            let at = if p.kind == Kind::Masked {
                0
            } else {
                kinds.len()
            };
            kinds.insert(at, (p.kind, whole));
            patterns.insert(at, scanned);
        }
        let build = |patterns: &[String]| {
            Regex::builder()
                .configure(
                    Regex::config()
                        .nfa_size_limit(Some(NFA_SIZE_MAX))
                        .hybrid_cache_capacity(DFA_CACHE_BYTES),
                )
                .build_many(patterns)
                .map_err(|e| BuildError::Regex(e.to_string()))
        };
        let regex = build(&patterns)?;
        let keyword_led = build(&keyword_led)?;
        let hmac = Hmac::<Sha256>::new_from_slice(keys.active().hmac_key())
            .expect("HMAC takes a key of any length");
        Ok(Masker {
            regex,
            kinds,
            keyword_led,
            custom,
            strategies,
            hmac,
        })
    }

    /// The strategies in force.
    pub fn strategies(&self) -> &Strategies {
        &self.strategies
    }

    /// Returns `text` with every detected piece of personal data replaced, and records the types
    /// found in `findings`.
    pub fn mask(&self, text: Unmasked, findings: &mut Findings) -> String {
        let (mut text, mut changed) = self.mask_once(text.0, findings);
        // A replacement can change the context of its neighbour (`…8::2%7::2` once the second
        // address is a token, the first one stands alone). Masking again until nothing changes
        // makes the result a fixpoint, so masking a masked text changes nothing. Text without
        // detections is already one and costs no second pass.
        for _ in 0..FIXPOINT_PASSES_MAX {
            if !changed {
                break;
            }
            (text, changed) = self.mask_once(text, findings);
        }
        text
    }

    /// One pass: every detection replaced (exactly the spans [`Masker::scan`] reports).
    ///
    /// The flag is true when another pass could find more: something was replaced next to a
    /// character a validator looks at (`.`, `-`, `/`, `+`, `%`, a letter or digit…). A span
    /// between spaces, quotes, brackets or commas cannot change a neighbour's verdict, nor can
    /// an email or IPv4 address beside any punctuation but `_`, `%`, `+` or `@` (see
    /// [`keeps_edge_class`]): `/10.1.2.3:50010` and `<ana@example.fr>` cost a second pass over
    /// the whole line, for one LogHub line in ten.
    pub fn mask_once(&self, text: String, findings: &mut Findings) -> (String, bool) {
        let mut out: Option<String> = None;
        let mut last = 0;
        let mut context_changed = false;
        let inert = |b: Option<u8>| {
            b.is_none_or(|b| b.is_ascii_whitespace() || b",;\"'()[]{}=|".contains(&b))
        };
        self.scan_with(&text, |range, label| {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[last..range.start]);
            let value = &text[range.clone()];
            let replacement = self.render(label, value);
            let before = text.as_bytes()[..range.start].last().copied();
            let after = text.as_bytes().get(range.end).copied();
            let kept_edges = keeps_edge_class(label, value);
            let inert_beside = |b: Option<u8>| {
                inert(b)
                    || (kept_edges
                        && b.is_some_and(|b| !b.is_ascii_alphanumeric() && !b"_%+@".contains(&b)))
            };
            context_changed |=
                replacement != value && !(inert_beside(before) && inert_beside(after));
            o.push_str(&replacement);
            last = range.end;
            findings.add(self.label_name(label));
        });
        match out {
            None => (text, false),
            Some(mut o) => {
                o.push_str(&text[last..]);
                (o, context_changed)
            }
        }
    }

    /// Returns every detection in `text`, in order, without masking (for tools and tests).
    pub fn scan(&self, text: &str) -> Vec<Detection> {
        let mut found = Vec::new();
        self.scan_with(text, |range, label| {
            found.push(Detection {
                replacement: self.render(label, &text[range.clone()]),
                pii_type: self.label_name(label).into_owned(),
                range,
            })
        });
        found
    }

    /// Masks query text: like [`Masker::mask`], but a replacement that is not already inside
    /// double quotes is quoted, so the query parser reads a hash token as one phrase rather
    /// than as `field:value`.
    pub fn mask_query_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 8);
        let mut last = 0;
        self.scan_with(text, |range, label| {
            let quoted = text[..range.start].ends_with('"') && text[range.end..].starts_with('"');
            out.push_str(&text[last..range.start]);
            let replacement = self.render(label, &text[range.clone()]);
            if quoted {
                out.push_str(&replacement);
            } else {
                out.push('"');
                out.push_str(&replacement.replace('"', " "));
                out.push('"');
            }
            last = range.end;
        });
        out.push_str(&text[last..]);
        out
    }

    fn scan_with(&self, text: &str, mut on_hit: impl FnMut(Range<usize>, Label)) {
        let len = text.len();
        let mut pos = 0;
        while pos < len {
            let Some(m) = self.regex.search(&Input::new(text).span(pos..len)) else {
                break;
            };
            let mut verdict = self.verdict(m.pattern().as_usize(), text, m.range());
            if matches!(verdict, Verdict::Reject) {
                // Another pattern may still match here (a rejected card can be a phone).
                for pid in m.pattern().as_usize() + 1..self.kinds.len() {
                    let input = Input::new(text)
                        .span(m.start()..len)
                        .anchored(Anchored::Pattern(PatternID::new_unchecked(pid)));
                    if let Some(m2) = self.regex.search(&input) {
                        verdict = self.verdict(pid, text, m2.range());
                        if !matches!(verdict, Verdict::Reject) {
                            break;
                        }
                    }
                }
            }
            pos = match verdict {
                Verdict::Replace(range, label) if !range.is_empty() => {
                    let end = range.end;
                    on_hit(range, label);
                    end
                }
                Verdict::Skip(end) if end > m.start() => end,
                _ => next_char(text, m.start()),
            };
        }
    }

    /// What pattern `pid` of the scanning automaton found at `r`: for a keyword-led pattern's
    /// head, what its whole pattern finds from the same start, if it matches there.
    fn verdict(&self, pid: usize, text: &str, r: Range<usize>) -> Verdict {
        let (kind, whole) = self.kinds[pid];
        let Some(whole) = whole else {
            return self.judge(kind, text, r);
        };
        let input = Input::new(text)
            .span(r.start..text.len())
            .anchored(Anchored::Pattern(whole));
        match self.keyword_led.search(&input) {
            Some(m) => self.judge(kind, text, m.range()),
            None => Verdict::Reject,
        }
    }

    fn judge(&self, kind: Kind, text: &str, r: Range<usize>) -> Verdict {
        use validate as v;
        let s = &text[r.clone()];
        let builtin = |t: PiiType, range: Range<usize>| Verdict::Replace(range, Label::Builtin(t));
        match kind {
            Kind::Masked => Verdict::Skip(r.end),
            Kind::Custom(i) => Verdict::Replace(r, Label::Custom(i)),
            Kind::Pem => match v::pem_body(s) {
                Some(b) => builtin(PiiType::Secret, r.start + b.start..r.start + b.end),
                None => Verdict::Reject,
            },
            Kind::Jwt | Kind::CloudKey => builtin(PiiType::Secret, r),
            Kind::AuthHeader => match v::auth_value(s) {
                Some(a) => builtin(PiiType::Secret, r.start + a.start..r.start + a.end),
                None => Verdict::Reject,
            },
            Kind::Bearer => match v::bearer_token(s) {
                Some(t) => builtin(PiiType::Secret, r.start + t.start..r.start + t.end),
                None => Verdict::Reject,
            },
            Kind::UrlPassword => {
                let p = v::url_password(s);
                builtin(PiiType::Secret, r.start + p.start..r.start + p.end)
            }
            Kind::SecretPair => match v::pair_value(s) {
                Some(p) => builtin(PiiType::Secret, r.start + p.start..r.start + p.end),
                None => Verdict::Reject,
            },
            Kind::SsnContext => {
                let d = v::trailing_digits(s);
                if v::ssn_valid(&s[d.clone()]) {
                    builtin(PiiType::Ssn, r.start + d.start..r.start + d.end)
                } else {
                    Verdict::Reject
                }
            }
            Kind::PhoneContext => match v::labelled_phone(text, r.clone()) {
                Some(p) => builtin(PiiType::Phone, p),
                None => Verdict::Reject,
            },
            Kind::Email => builtin(PiiType::Email, r),
            Kind::Iban => match v::iban_len(s) {
                Some(n) => builtin(PiiType::Iban, r.start..r.start + n),
                None => Verdict::Reject,
            },
            Kind::CardContext => match v::labelled_card(text, r.clone()) {
                Some(c) => builtin(PiiType::CreditCard, c),
                None => Verdict::Reject,
            },
            Kind::Card => {
                let before = &text[..r.start];
                let end = v::card_lens(s).into_iter().find(|&(n, issued)| {
                    !v::in_numeric_run(text, r.start..r.start + n)
                        && v::card_context_ok(before, &s[..n], issued)
                });
                match end {
                    Some((n, _)) => builtin(PiiType::CreditCard, r.start..r.start + n),
                    None => Verdict::Reject,
                }
            }
            Kind::Ssn => {
                if !v::in_numeric_run(text, r.clone()) && v::ssn_valid(s) {
                    builtin(PiiType::Ssn, r)
                } else {
                    Verdict::Reject
                }
            }
            Kind::PhoneNational => {
                // `[0701/114930:WARNING:…]` (Chromium's month, day and time) and
                // `18:51:05,083 081109` (milliseconds, then a date) are not dialled.
                let after_number = text[..r.start]
                    .bytes()
                    .next_back()
                    .is_some_and(|b| b".,:".contains(&b));
                if v::in_numeric_run(text, r.clone())
                    || text[r.end..].starts_with(':')
                    || after_number
                    || v::port_or_pid_before(&text[..r.start])
                {
                    Verdict::Reject
                } else {
                    builtin(PiiType::Phone, r)
                }
            }
            Kind::PhonePhrase => {
                // The phrase holds no digit: the number starts at the first one.
                let start = r.start + s.find(|c: char| c.is_ascii_digit()).unwrap_or(0);
                if !v::in_numeric_run(text, start..r.end) {
                    builtin(PiiType::Phone, start..r.end)
                } else {
                    Verdict::Reject
                }
            }
            Kind::PhoneNa => {
                if v::in_numeric_run(text, r.clone()) {
                    Verdict::Reject
                } else {
                    builtin(PiiType::Phone, r)
                }
            }
            // `109380+2015-10-18` is an offset and a date, not a number dialled: the `+` of a
            // phone number does not follow a letter or digit (nor the end of a masked form,
            // which stands for one; `<+4420…>` is a number in angle brackets).
            Kind::PhoneIntl
                if text[..r.start].bytes().next_back().is_some_and(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'>' | b']' | b'*')
                }) =>
            {
                Verdict::Reject
            }
            // After `00`, the digits are counted from the country code on, as after `+`. The
            // prefix starts a token: `16:15:06.006  1702 14638` is a time and two ids.
            Kind::PhoneIntl if s.starts_with("00") => {
                let before = text[..r.start].bytes().next_back();
                if before.is_some_and(|b| b".,:/-".contains(&b)) {
                    return Verdict::Reject;
                }
                match v::intl_phone_ends(text, r.start + 2..r.end).first() {
                    Some(&end) => builtin(PiiType::Phone, r.start..end),
                    None => Verdict::Reject,
                }
            }
            Kind::PhoneIntl => match v::intl_phone_ends(text, r.clone()).first() {
                Some(&end) => builtin(PiiType::Phone, r.start..end),
                None => Verdict::Reject,
            },
            Kind::Ipv6 => match v::ipv6(text, r.clone()) {
                Some(a) => builtin(PiiType::IpAddress, a),
                None => Verdict::Reject,
            },
            Kind::Ipv4 => {
                let lead = match s.as_bytes().first() {
                    Some(b'_') => 1,
                    Some(b'%') => 3,
                    _ => 0,
                };
                let r = r.start + lead..r.end - usize::from(s.ends_with('_'));
                if !v::ipv4_octets(&text[r.clone()]) || v::ipv4_kept(text, r.clone()) {
                    Verdict::Reject
                } else {
                    builtin(PiiType::IpAddress, r)
                }
            }
        }
    }

    fn label_name(&self, label: Label) -> Cow<'static, str> {
        match label {
            Label::Builtin(t) => Cow::Borrowed(t.as_str()),
            Label::Custom(i) => Cow::Owned(self.custom[i].pattern_type.clone()),
        }
    }

    fn render(&self, label: Label, value: &str) -> String {
        let (name, strategy, builtin) = match label {
            Label::Builtin(t) => (Cow::Borrowed(t.as_str()), self.strategies.get(t), Some(t)),
            Label::Custom(i) => {
                let p = &self.custom[i];
                (
                    Cow::Owned(p.pattern_type.clone()),
                    p.masking_strategy,
                    PiiType::parse(&p.pattern_type),
                )
            }
        };
        match strategy {
            Strategy::Redact => match builtin {
                Some(PiiType::IpAddress) if value.contains(':') => {
                    "****:****:****:****:****:****:****:****".into()
                }
                Some(t) => t.redacted().into(),
                None => format!("[REDACTED:{name}]"),
            },
            Strategy::Hash => {
                let canonical = validate::canonical(builtin, value);
                let mut mac = self.hmac.clone();
                mac.update(name.as_bytes());
                mac.update(&[0]);
                mac.update(canonical.as_bytes());
                let digest = mac.finalize().into_bytes();
                format!("<{name}:{}>", hex::encode(&digest[..6]))
            }
            Strategy::PartialMask => validate::partial(builtin, value),
        }
    }

    /// Returns true when a field with this key must be masked whole, whatever its value.
    pub fn is_sensitive_key(&self, key: &str) -> bool {
        key_type(key).is_some()
    }

    /// Masks every string in a JSON value; values under sensitive keys are replaced whole.
    pub fn mask_json(
        &self,
        mut value: serde_json::Value,
        findings: &mut Findings,
    ) -> serde_json::Value {
        self.mask_json_in_place(&mut value, findings);
        value
    }

    /// [`Masker::mask_json`] without rebuilding the objects and arrays around the strings.
    fn mask_json_in_place(&self, value: &mut serde_json::Value, findings: &mut Findings) {
        use serde_json::Value;
        match value {
            Value::String(s) => {
                let text = std::mem::take(s);
                *s = self.mask(Unmasked(text), findings);
            }
            Value::Array(items) => {
                for item in items {
                    self.mask_json_in_place(item, findings);
                }
            }
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match key_type(k) {
                        Some(t) if !v.is_null() && !v.is_object() => {
                            let text = match std::mem::take(v) {
                                Value::String(s) => s,
                                other => other.to_string(),
                            };
                            findings.add(Cow::Borrowed(t.as_str()));
                            *v = Value::String(self.render(Label::Builtin(t), &text));
                        }
                        _ => self.mask_json_in_place(v, findings),
                    }
                }
            }
            _ => {}
        }
    }
}

/// The type a field's key says its value holds, if it says so. Keys are compared without case,
/// `-`, `_` or `.`; a key ending in a sensitive name (`user_email`, `db_password`) counts.
fn key_type(key: &str) -> Option<PiiType> {
    const KEY_LEN_MAX: usize = 64;
    if key.len() > KEY_LEN_MAX {
        return None;
    }
    // Byte by byte, on the stack (this runs for every key of every entry): the separators and
    // the names are ASCII, and a UTF-8 byte of any other character is ≥ 0x80, so it matches
    // none of them, as the character would not.
    let mut buf = [0u8; KEY_LEN_MAX];
    let mut len = 0;
    for b in key.bytes() {
        if !matches!(b, b'-' | b'_' | b'.' | b' ') {
            buf[len] = b.to_ascii_lowercase();
            len += 1;
        }
    }
    let k = &buf[..len];
    const EXACT: &[(&str, PiiType)] = &[
        ("mail", PiiType::Email),
        ("mobile", PiiType::Phone),
        ("tel", PiiType::Phone),
        ("telephone", PiiType::Phone),
        ("msisdn", PiiType::Phone),
        ("socialsecuritynumber", PiiType::Ssn),
        ("pan", PiiType::CreditCard),
        ("cvv", PiiType::CreditCard),
        ("cvc", PiiType::CreditCard),
        ("creditcard", PiiType::CreditCard),
        ("auth", PiiType::Secret),
        ("cookie", PiiType::Secret),
        ("setcookie", PiiType::Secret),
        ("credentials", PiiType::Secret),
        ("pwd", PiiType::Secret),
        ("ip", PiiType::IpAddress),
        ("clientip", PiiType::IpAddress),
        ("remoteaddr", PiiType::IpAddress),
        ("ipaddress", PiiType::IpAddress),
    ];
    const SUFFIX: &[(&str, PiiType)] = &[
        ("email", PiiType::Email),
        ("emailaddress", PiiType::Email),
        ("phone", PiiType::Phone),
        ("phonenumber", PiiType::Phone),
        ("mobilenumber", PiiType::Phone),
        ("ssn", PiiType::Ssn),
        ("cardnumber", PiiType::CreditCard),
        ("ccnumber", PiiType::CreditCard),
        ("iban", PiiType::Iban),
        ("password", PiiType::Secret),
        ("passwd", PiiType::Secret),
        ("passphrase", PiiType::Secret),
        ("secret", PiiType::Secret),
        ("token", PiiType::Secret),
        ("apikey", PiiType::Secret),
        ("privatekey", PiiType::Secret),
        ("secretkey", PiiType::Secret),
        ("authorization", PiiType::Secret),
    ];
    EXACT
        .iter()
        .find(|(n, _)| k == n.as_bytes())
        .or_else(|| SUFFIX.iter().find(|(n, _)| k.ends_with(n.as_bytes())))
        .map(|(_, t)| *t)
}

/// True for an email address or IPv4 address that starts and ends with a letter or digit: its
/// replacement (a `<type:…>` token, a redacted form, a partial mask) starts and ends with a
/// masked form's edge or a letter or digit, which every validator reads alike, so only a
/// neighbour that a pattern joins to the value (a letter, digit, `_`, `%`, `+`, `@`) can
/// change another verdict.
fn keeps_edge_class(label: Label, value: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    let kind = matches!(label, Label::Builtin(PiiType::Email))
        || (label == Label::Builtin(PiiType::IpAddress) && !value.contains(':'));
    kind && alnum(value.as_bytes().first()) && alnum(value.as_bytes().last())
}

fn next_char(text: &str, i: usize) -> usize {
    let mut j = i + 1;
    while j < text.len() && !text.is_char_boundary(j) {
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests;
