//! The masking stage of the ingest pipeline: every piece of text an entry carries passes through
//! [`Masker::mask`] before the entry is built, so no unmasked text reaches Raft, RocksDB or
//! tantivy.
//!
//! This is the foundation's engine: one pass of one compiled regex over the text, with
//! validators (Luhn for cards, the SSA's rules for SSNs) and field-name rules. Every detection is
//! replaced by the seed's REDACT form of its type. The full engine (more formats, HASH and
//! PARTIAL_MASK strategies, custom patterns) extends this module.

use std::fmt;

use regex::{Captures, Regex};

/// Text that may hold personal data. It cannot be printed: its `Debug` shows `<redacted>` and
/// it has no `Display`, so it never reaches Veil's own logs by accident.
pub struct Unmasked(pub String);

impl fmt::Debug for Unmasked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiType {
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// A US social security number.
    Ssn,
    /// A payment card number.
    CreditCard,
    /// An IPv4 address.
    IpAddress,
    /// An international bank account number.
    Iban,
    /// A credential: bearer token, password, API key.
    Secret,
}

impl PiiType {
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
}

/// The set of personal-data types found in an entry.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    types: Vec<PiiType>,
}

impl Findings {
    fn add(&mut self, t: PiiType) {
        if !self.types.contains(&t) {
            self.types.push(t);
        }
    }

    /// Returns the lowercase names of the types found, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut t = self.types.clone();
        t.sort();
        t.into_iter().map(PiiType::as_str).collect()
    }

    /// Returns true when anything was found (and therefore masked).
    pub fn any(&self) -> bool {
        !self.types.is_empty()
    }
}

/// Finds and masks personal data.
pub struct Masker {
    pattern: Regex,
    sensitive_key: Regex,
}

const PATTERN: &str = r#"(?x)
    (?P<secret_pair>(?i:\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|token)\s*[=:]\s*)[^\s,;&"']+)
  | (?P<bearer>(?i:\bbearer\s+)[A-Za-z0-9\-._~+/]+=*)
  | (?P<url_pass>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:)(?P<url_pass_secret>[^\s@/]+)@
  | (?P<email>\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b)
  | (?P<iban>\b[A-Z]{2}[0-9]{2}(?:\ ?[A-Z0-9]{4}){2,7}(?:\ ?[A-Z0-9]{1,4})?\b)
  | (?P<card>\b[0-9]{4}(?:[\ -]?[0-9]{4}){2}(?:[\ -]?[0-9]{1,7})\b)
  | (?P<ssn>\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b)
  | (?P<phone>(?:\+?1[\ .-]?)?(?:\([0-9]{3}\)\ ?|\b[0-9]{3}[\ .-])[0-9]{3}[\ .-][0-9]{4}\b)
  | (?P<ipv4>\b(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}\b)
"#;

impl Default for Masker {
    fn default() -> Self {
        Self::new()
    }
}

impl Masker {
    /// Compiles the masker's patterns.
    pub fn new() -> Self {
        Self {
            pattern: Regex::new(PATTERN).expect("the built-in PII pattern is valid"),
            sensitive_key: Regex::new(
                r"(?i)^(?:e[-_]?mail|email_address|phone|phone_number|mobile|ssn|social_security(?:_number)?|password|passwd|pwd|secret|client_secret|token|access_token|refresh_token|api[-_]?key|authorization|auth|card_number|credit_card|cc_number|iban|cvv)$",
            )
            .expect("the built-in key pattern is valid"),
        }
    }

    /// Returns `text` with every detected piece of personal data replaced, and records the types
    /// found in `findings`.
    pub fn mask(&self, text: Unmasked, findings: &mut Findings) -> String {
        let text = text.0;
        if !text.bytes().any(|b| {
            b.is_ascii_digit() || b == b'@' || b == b'=' || b == b':' || b.is_ascii_uppercase()
        }) {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for caps in self.pattern.captures_iter(&text) {
            // A match a validator rejects (None) leaves the text as it is.
            if let Some((range, replacement, kind)) = self.replacement(&caps) {
                out.push_str(&text[last..range.start]);
                out.push_str(&replacement);
                last = range.end;
                findings.add(kind);
            }
        }
        out.push_str(&text[last..]);
        out
    }

    /// Returns true when a field with this key must be masked whole, whatever its value.
    pub fn is_sensitive_key(&self, key: &str) -> bool {
        self.sensitive_key.is_match(key)
    }

    /// Masks every string in a JSON value; values under sensitive keys are replaced whole.
    pub fn mask_json(
        &self,
        value: serde_json::Value,
        findings: &mut Findings,
    ) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.mask(Unmasked(s), findings)),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| self.mask_json(v, findings))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        if self.is_sensitive_key(&k) && !v.is_null() && !v.is_object() {
                            let kind = key_type(&k);
                            findings.add(kind);
                            (k, Value::String(kind.redacted().to_string()))
                        } else {
                            let v = self.mask_json(v, findings);
                            (k, v)
                        }
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    fn replacement(
        &self,
        caps: &Captures<'_>,
    ) -> Option<(std::ops::Range<usize>, String, PiiType)> {
        if let Some(m) = caps.name("secret_pair") {
            let full = m.as_str();
            let split = full.find(['=', ':']).map(|i| i + 1).unwrap_or(full.len());
            let prefix_len = split + full[split..].len() - full[split..].trim_start().len();
            return Some((
                m.start() + prefix_len..m.end(),
                PiiType::Secret.redacted().into(),
                PiiType::Secret,
            ));
        }
        if let Some(m) = caps.name("bearer") {
            let word_end = m.as_str().find(char::is_whitespace).unwrap_or(0);
            let rest = &m.as_str()[word_end..];
            let token_start = word_end + rest.len() - rest.trim_start().len();
            return Some((
                m.start() + token_start..m.end(),
                PiiType::Secret.redacted().into(),
                PiiType::Secret,
            ));
        }
        if let Some(m) = caps.name("url_pass_secret") {
            return Some((
                m.range(),
                PiiType::Secret.redacted().into(),
                PiiType::Secret,
            ));
        }
        if let Some(m) = caps.name("email") {
            return Some((m.range(), PiiType::Email.redacted().into(), PiiType::Email));
        }
        if let Some(m) = caps.name("iban") {
            return iban_valid(m.as_str())
                .then(|| (m.range(), PiiType::Iban.redacted().into(), PiiType::Iban));
        }
        if let Some(m) = caps.name("card") {
            return card_valid(m.as_str()).then(|| {
                (
                    m.range(),
                    PiiType::CreditCard.redacted().into(),
                    PiiType::CreditCard,
                )
            });
        }
        if let Some(m) = caps.name("ssn") {
            return ssn_valid(m.as_str())
                .then(|| (m.range(), PiiType::Ssn.redacted().into(), PiiType::Ssn));
        }
        if let Some(m) = caps.name("phone") {
            return Some((m.range(), PiiType::Phone.redacted().into(), PiiType::Phone));
        }
        if let Some(m) = caps.name("ipv4") {
            let ip = m.as_str();
            let keep = ip.starts_with("127.") || ip == "0.0.0.0";
            return (!keep).then(|| {
                (
                    m.range(),
                    PiiType::IpAddress.redacted().into(),
                    PiiType::IpAddress,
                )
            });
        }
        None
    }
}

fn key_type(key: &str) -> PiiType {
    let k = key.to_ascii_lowercase();
    if k.contains("mail") {
        PiiType::Email
    } else if k.contains("phone") || k == "mobile" {
        PiiType::Phone
    } else if k.contains("ssn") || k.contains("social") {
        PiiType::Ssn
    } else if k.contains("card") || k.contains("cc_") || k == "cvv" {
        PiiType::CreditCard
    } else if k == "iban" {
        PiiType::Iban
    } else {
        PiiType::Secret
    }
}

/// Luhn check plus a plausible length and issuer prefix (Visa, Mastercard, Amex, Discover,
/// Maestro, JCB, Diners).
fn card_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let prefix2 = digits[0] * 10 + digits[1];
    let prefix4 = prefix2 * 100 + digits[2] * 10 + digits[3];
    let issuer = digits[0] == 4
        || (51..=55).contains(&prefix2)
        || (2221..=2720).contains(&prefix4)
        || prefix2 == 34
        || prefix2 == 37
        || prefix4 == 6011
        || prefix2 == 65
        || prefix2 == 35
        || prefix2 == 36
        || prefix2 == 50
        || (56..=69).contains(&prefix2);
    if !issuer {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Rejects the SSA's impossible numbers: area 000, 666 or 9xx, group 00, serial 0000.
fn ssn_valid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [area, group, serial] = parts.as_slice() else {
        return false;
    };
    *area != "000"
        && *area != "666"
        && !area.starts_with('9')
        && *group != "00"
        && *serial != "0000"
}

/// ISO 13616 mod-97 check.
fn iban_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        let chunk = if v >= 10 { 100 } else { 10 };
        remainder = (remainder * chunk + v) % 97;
    }
    remainder == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str, types: &[&str]) {
        let mut findings = Findings::default();
        let masked = Masker::new().mask(Unmasked(input.to_string()), &mut findings);
        assert_eq!(masked, expected, "masking {input:?}");
        assert_eq!(findings.names(), types, "types found in {input:?}");
    }

    #[test]
    fn masks_each_type_with_its_redact_form() {
        check(
            "payment for john.doe@example.com failed",
            "payment for ***@***.*** failed",
            &["email"],
        );
        check(
            "ssn 123-45-6789 on file",
            "ssn ***-**-**** on file",
            &["ssn"],
        );
        check(
            "call (555) 123-4567 now",
            "call ***-***-**** now",
            &["phone"],
        );
        check(
            "card 4111 1111 1111 1111 declined",
            "card ****-****-****-**** declined",
            &["credit_card"],
        );
        check(
            "from 203.0.113.9 ok",
            "from ***.***.***.*** ok",
            &["ip_address"],
        );
        check(
            "iban DE89 3704 0044 0532 0130 00 x",
            "iban **** x",
            &["iban"],
        );
        check(
            "password=hunter2 next",
            "password=[REDACTED] next",
            &["secret"],
        );
        check(
            "Authorization: Bearer abc.def.ghi",
            "Authorization: Bearer [REDACTED]",
            &["secret"],
        );
        check(
            "postgres://app:s3cret@db:5432/x",
            "postgres://app:[REDACTED]@db:5432/x",
            &["secret"],
        );
    }

    #[test]
    fn leaves_ids_and_numbers_untouched() {
        for text in [
            "request 550e8400-e29b-41d4-a716-446655440000 took 35ms",
            "ts 1700000000123 count 4111111111111112",
            "ssn-like 000-12-3456 and 666-12-3456 are impossible",
            "listening on 127.0.0.1:8080 version 1.2.3",
            "081109 203615 148 INFO dfs.DataNode$PacketResponder: block blk_-1608999687919862906",
        ] {
            check(text, text, &[]);
        }
    }

    #[test]
    fn sensitive_keys_are_masked_whole() {
        let mut findings = Findings::default();
        let value = serde_json::json!({"email": "not-an-address", "nested": {"password": 1234}, "user_id": "user_1"});
        let masked = Masker::new().mask_json(value, &mut findings);
        assert_eq!(
            masked,
            serde_json::json!({"email": "***@***.***", "nested": {"password": "[REDACTED]"}, "user_id": "user_1"})
        );
        assert_eq!(findings.names(), ["email", "secret"]);
    }

    #[test]
    fn unmasked_text_does_not_print() {
        assert_eq!(
            format!("{:?}", Unmasked("john@example.com".into())),
            "<redacted>"
        );
    }
}
