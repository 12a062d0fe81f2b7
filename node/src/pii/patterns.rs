//! The built-in patterns: what each kind of personal data looks like to the automaton, in
//! priority order.
//!
//! A keyword-led pattern (`phone: …`, `password=…`, `card no. …`) has a head, its keyword
//! alone, which stands in for it in the one automaton every byte of text goes through; the
//! whole pattern runs, anchored, only where that finds its keyword. Each head is a prefix of
//! its pattern, so it matches wherever the pattern does: the leftmost-first answer is the same,
//! and the automaton does not carry every keyword's value shapes through every word.

/// The kind of each built-in pattern; the order is the priority at one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Output of an earlier masking: skipped, so masking twice changes nothing.
    Masked,
    Pem,
    Jwt,
    AuthHeader,
    Bearer,
    UrlPassword,
    CloudKey,
    SecretPair,
    SsnContext,
    PhoneContext,
    Email,
    Iban,
    CardContext,
    Card,
    Ssn,
    PhoneNa,
    PhoneNational,
    PhonePhrase,
    PhoneIntl,
    Ipv6,
    Ipv4,
    Custom(usize),
}

/// Names of secrets in `key=value` / `key: value` pairs (any prefix: `db_password`, `x-api-key`).
const SECRET_KEYS: &str = r"(?:password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|access[_-]?token|refresh[_-]?token|auth[_-]?token|id[_-]?token|session[_-]?token|token|credentials?|accountkey|sharedaccesskey|signature)";

/// Words that say a number is a phone number, in the six locales' spellings (`tél`,
/// `Rufnummer`, `Handy`, `portable`).
const PHONE_WORDS: &str = "phone|phones|telephone|tel|t[ée]l[ée]phone|t[ée]l|telefon|rufnummer|mobile|mobil|mob|handy|cell|cellphone|fax|sms|whatsapp|call|callback|portable|ph|msisdn|contact[ _-]?(?:number|no|num|nr)";

/// Words that dial or text the number a phrase ends with (`OTP sent to …`, `Anruf von …`,
/// `appel de …`), in English, German and French.
const DIAL_WORDS: &str = "otp|sms|call|calls|called|calling|callback|missed|ivr|dial|dialled|dialed|dialling|text|texted|whatsapp|ring|rang|anruf|anrufe|anrufen|angerufen|rückruf|appel|appels|appelez|appeler|rappel|rappelez|rappeler";

/// The words a dialling phrase ends with, right before the number.
const DIAL_PREPOSITIONS: &str = "to|from|on|an|von|au|de|le|vers";

/// Words that, right before a number, say it is a payment card.
const CARD_LABELS: &str = "card|cc|ccn|pan|carte(?:[ _-]?bancaire)?|karte|kreditkarte|kartennummer|cb|visa|mastercard|amex|maestro|rupay";

/// One built-in pattern.
pub(super) struct Pattern {
    /// What a match of it is.
    pub kind: Kind,
    /// The whole pattern.
    pub whole: String,
    /// The keyword a keyword-led pattern starts with, which the scanning automaton looks for
    /// in the pattern's place: always a prefix of `whole`.
    pub head: Option<String>,
}

/// A pattern the scanning automaton holds whole.
fn plain(kind: Kind, whole: String) -> Pattern {
    Pattern {
        kind,
        whole,
        head: None,
    }
}

/// A keyword-led pattern: `head`, then `rest`.
fn keyword_led(kind: Kind, head: String, rest: &str) -> Pattern {
    Pattern {
        kind,
        whole: format!("{head}{rest}"),
        head: Some(head),
    }
}

/// Built-in patterns, in priority order. `\b` is ASCII (rewritten by [`ascii_boundaries`]).
pub(super) fn builtin_patterns() -> Vec<Pattern> {
    vec![
        plain(
            Kind::Masked,
            r"<[a-z][a-z0-9_]*:[0-9a-f]{12}>|\[REDACTED(?::[a-z0-9_]+)?\]".into(),
        ),
        plain(
            Kind::Pem,
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s\\:,-]|\\n)*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=]\z|[A-Za-z0-9+/=](?:\s|\\n)*\z)".into(),
        ),
        plain(
            Kind::Jwt,
            r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*".into(),
        ),
        keyword_led(
            Kind::AuthHeader,
            r"(?i:\b(?:proxy-)?authorization)".into(),
            r#"["']?\s*[:=]\s*["']?(?:(?i:bearer|basic|digest|token|negotiate|apikey|sharedkey|aws4-hmac-sha256)\s+)?[^\s"',;\[<][^\s"',;]*"#,
        ),
        keyword_led(
            Kind::Bearer,
            r"(?i:\bbearer)\s".into(),
            r"\s*[A-Za-z0-9\-._~+/]{8,}=*",
        ),
        plain(
            Kind::UrlPassword,
            r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:[^\s@/]+@".into(),
        ),
        plain(
            Kind::CloudKey,
            [
                r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b",
                r"\bAIza[0-9A-Za-z_-]{35}",
                r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
                r"\bgithub_pat_[A-Za-z0-9_]{22,}\b",
                r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
                r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b",
                r"\bya29\.[0-9A-Za-z_-]{20,}",
                r"\bglpat-[0-9A-Za-z_-]{20,}",
                r"\bnpm_[A-Za-z0-9]{36}\b",
                r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
            ]
            .join("|"),
        ),
        keyword_led(
            Kind::SecretPair,
            format!(r#"(?i:\b(?:[a-z0-9]+[_.-])*{SECRET_KEYS})["']?\s*[=:]"#),
            r#"\s*(?:"[^"\n]+"|'[^'\n]+'|[^\s,;&"'\[<{(][^\s,;&"']*)"#,
        ),
        keyword_led(
            Kind::SsnContext,
            r"(?i:\b(?:ssn|social security(?: number| no\.?)?|ss#))".into(),
            r"[ \t:=#'()-]{0,6}[0-9]{9}\b",
        ),
        keyword_led(
            Kind::PhoneContext,
            // A phone word, alone or as the end of a key (`customer_phone`, `phoneNumber`,
            // `Mobile No.`), in the locales' spellings, then the number. A key's start is not
            // matched: `(?:\b|_)` keeps the automaton out of every word that does not hold a
            // phone word (`\b(?:[a-z]+_)?` followed each one, ~2 % of the mixed bench).
            format!(r"(?i:(?:\b|_)(?:{PHONE_WORDS})(?:[ _-]?(?:number|num|no|nr|nummer))?\b)"),
            r#"(?i:(?:[ \t:=#'()-]{1,4}(?:to|is|number|no|nr|at|on|from|of)\b)?)[ \t.:=#'"\\-]{0,6}\+?\(?[0-9][0-9 ()./-]{5,22}[0-9]"#,
        ),
        plain(
            Kind::Email,
            r"\b[A-Za-z0-9._%+-]+(?:@|%40)(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b".into(),
        ),
        plain(
            Kind::Iban,
            r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4})+(?: ?[A-Z0-9]{1,4})?\b".into(),
        ),
        keyword_led(
            // A number right after a card word (`card no. 3591…`, `{"cardNumber":"…"}`,
            // `numéro de carte …`): any Luhn-valid 12 to 19 digits, whatever the prefix.
            Kind::CardContext,
            format!(r"(?i:\b(?:{CARD_LABELS})(?:[ _-]?(?:number|num|no|nr|nummer))?\b)"),
            r#"[ \t.:=#'"\\-]{0,6}[0-9][0-9 -]{10,22}[0-9]"#,
        ),
        plain(
            Kind::Card,
            // The issuers' first digits (and Maestro's `0604`, JCB's `1800`, RuPay's `81`/`82`):
            // any first digit would make every long number a candidate (2,600 more on LogHub).
            [
                r"\b(?:[2-6][0-9]|0604|1800|8[12])[0-9]{10,17}\b",
                r"\b(?:[2-6][0-9]{3}|0604|1800|8[12][0-9]{2})(?: [0-9]{4}){2,3}(?: [0-9]{1,4})?\b",
                r"\b(?:[2-6][0-9]{3}|0604|1800|8[12][0-9]{2})(?:-[0-9]{4}){2,3}(?:-[0-9]{1,4})?\b",
                r"\b(?:[2-6][0-9]{3}|1800)[ -][0-9]{6}[ -][0-9]{4,5}\b",
            ]
            .join("|"),
        ),
        plain(
            Kind::Ssn,
            r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b|\b[0-9]{3} [0-9]{2} [0-9]{4}\b|\b[0-9]{3}\.[0-9]{2}\.[0-9]{4}\b".into(),
        ),
        plain(
            Kind::PhoneNa,
            // Any area code and exchange in the shapes only phone numbers have (`(132)
            // 291-0534`, `378.259.4449`); an assigned-looking one when only spaces separate
            // the groups. An extension may be glued on (`2189x44901`).
            r"(?:\+1[ .-]?|\b1[ .-]|\b001[ .-])?(?:\([0-9]{3}\)[ .-]?|\b[0-9]{3}[.-]|\b[2-9][0-9]{2} )[0-9]{3}[ .-][0-9]{4}(?:[ ,]*(?i:x|ext\.?|extension|\#)[ ]?[0-9]{1,6}\b|\b)".into(),
        ),
        plain(
            Kind::PhoneNational,
            [
                // France: 01 23 45 67 89 (also with dots or dashes).
                r"\b0[1-9](?: [0-9]{2}){4}\b",
                r"\b0[1-9](?:\.[0-9]{2}){4}\b",
                r"\b0[1-9](?:-[0-9]{2}){4}\b",
                // United Kingdom: 0113 496 0123, 020 7946 0958, 07700 900123, (0161) 496 0123.
                r"\b0[1-9][0-9]{2} [0-9]{3} [0-9]{4}\b",
                r"\b0[1-9][0-9] [0-9]{4} [0-9]{4}\b",
                r"\(0[1-9][0-9]{1,4}\) ?[0-9]{3,8}(?: [0-9]{3,4})?\b",
                // Trunk 0, an area code of 2 to 5 digits, the subscriber after a space, slash
                // or dash, maybe an extension (Germany's 030 12345678, 0221/1234567,
                // 089 1234567-12; Britain's 01632 960001 and 03615 39990; India's 022-23456789).
                r"\b0[1-9][0-9]{1,3}[ /-][0-9]{5,8}(?:-[0-9]{1,4})?\b",
                // India: a mobile in two groups of five (98765 43210, 98765-43210).
                r"\b[6-9][0-9]{4}[ -][0-9]{5}\b",
            ]
            .join("|"),
        ),
        keyword_led(
            // A number without a label in shapes that are ids, times and pids as often: only
            // after a phrase that dials or texts it, a dialling word, at most two more words
            // and a preposition (`OTP sent to …`, `SMS sent successfully to …`, `missed call
            // from …`, `Anruf von …`, `SMS envoyé au …`). India's mobiles bare (9876543210,
            // 09876543210) or in the national format with its trunk 0 (098765 43210, also
            // HDFS's time and pid); North American numbers in groups of 3, 3 and 4 with any
            // area code; 8 to 12 digits without a gap (Britain's 01632960001, France's
            // 0612345678, Germany's 0301234567, North America's 4155550132); one dialled with
            // `00` (0049301234567). The words are letters only, and a masked form (`***`,
            // `<phone:…>`) ends the phrase as the digits it replaced did. The judge keeps the
            // number alone.
            Kind::PhonePhrase,
            format!(r"(?i:\b(?:{DIAL_WORDS})\b)"),
            &format!(r"(?:[^A-Za-z0-9\n*<>\[\]]+[A-Za-z]+){{0,2}}[^A-Za-z0-9\n*<>\[\]]+(?i:{DIAL_PREPOSITIONS}) +(?:[0-9]{{8,12}}|0[6-9][0-9]{{4}} [0-9]{{5}}|[0-9]{{3}} [0-9]{{3}} [0-9]{{4}}|00[1-9][0-9]{{8,13}})\b"),
        ),
        plain(
            Kind::PhoneIntl,
            // `+` or the international prefix `00` and a separator (`0049 30 …`).
            r"(?:\+[1-9][0-9]{0,3}|\b00[1-9][0-9]{0,2}[ .-])(?:[ .-]?\(0\))?(?:[ .-]?\(?[0-9]+\)?)+(?:[ ,]*(?i:x|ext\.?|extension)[ ]?[0-9]{1,6}\b)?".into(),
        ),
        plain(
            Kind::Ipv6,
            format!(
                r"(?:\b{h}(?::{h}){{7}}\b|(?:\b{h}(?::{h})*)?::(?:{h}(?::{h})*)?(?:\.[0-9]{{1,3}}){{0,3}}|\b{h}(?::{h}){{5}}:[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}\b)(?:%[0-9A-Za-z._-]+)?",
                h = "[0-9A-Fa-f]{1,4}"
            ),
        ),
        // An address glued to `_` or an encoded `/` (`%2F10.1.2.3`, `conn_10.1.2.3_80`) is
        // still one: the glue is matched (a `\b` cannot be there) and trimmed by the judge.
        // Each octet is up to three digits here, and 0 to 255 by the judge: the ranges
        // spelled out (`25[0-5]|2[0-4][0-9]|…`) cost the automaton 1-2 % of the mixed
        // bench, and every group is a whole digit run either way, so the matches are the same.
        plain(
            Kind::Ipv4,
            r"(?:\b|_|%2[Ff])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:\b|_)".into(),
        ),
    ]
}

/// Rewrites `\b` as the ASCII word boundary `(?-u:\b)`, which the lazy DFA handles on any
/// input (a Unicode `\b` makes it give up on non-ASCII text).
pub(super) fn ascii_boundaries(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 32);
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('b') => out.push_str(r"(?-u:\b)"),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}
