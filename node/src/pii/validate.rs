//! Validators: they decide whether a regex candidate really is personal data, and which part of
//! it to replace. Ranges returned are relative to the candidate unless said otherwise.

use std::net::{IpAddr, Ipv6Addr};
use std::ops::Range;

use super::PiiType;

/// The body of a PEM private key block (between the header and the footer, or to the end).
pub(super) fn pem_body(s: &str) -> Option<Range<usize>> {
    let header_end = s.get(5..)?.find("-----")? + 10;
    let body_end = s.find("-----END").unwrap_or(s.len());
    let body = s.get(header_end..body_end)?;
    body.bytes()
        .any(|b| b.is_ascii_alphanumeric())
        .then_some(header_end..body_end)
}

/// Schemes of an `Authorization` header: kept, the credential after them is masked.
const AUTH_SCHEMES: &[&str] = &[
    "bearer",
    "basic",
    "digest",
    "token",
    "negotiate",
    "apikey",
    "sharedkey",
    "aws4-hmac-sha256",
];

/// The credential of an `Authorization` header: what follows the separator and the scheme.
/// None when all that follows is a scheme (the credential is already masked).
pub(super) fn auth_value(s: &str) -> Option<Range<usize>> {
    let mut i = s.find([':', '=']).map(|i| i + 1).unwrap_or(s.len());
    i += s[i..].len() - s[i..].trim_start_matches([' ', '\t', '"', '\'']).len();
    let rest = &s[i..];
    if let Some(space) = rest.find(char::is_whitespace) {
        let after = rest[space..].trim_start();
        if !after.is_empty() {
            i += rest.len() - after.len();
        }
    }
    let value = &s[i..];
    let only_scheme = AUTH_SCHEMES.iter().any(|k| value.eq_ignore_ascii_case(k));
    (!value.is_empty() && !only_scheme).then_some(i..s.len())
}

/// The token after `Bearer`, when it looks like a token rather than a word.
pub(super) fn bearer_token(s: &str) -> Option<Range<usize>> {
    let start = s.find(char::is_whitespace)?;
    let start = start + s[start..].len() - s[start..].trim_start().len();
    let token = &s[start..];
    let tokenish = token.bytes().any(|b| b.is_ascii_digit())
        || token.len() >= 20
        || token.bytes().any(|b| b"._-~+/=".contains(&b));
    tokenish.then_some(start..s.len())
}

/// The password of `scheme://user:password@`.
pub(super) fn url_password(s: &str) -> Range<usize> {
    let after_scheme = s.find("://").map(|i| i + 3).unwrap_or(0);
    let colon = s[after_scheme..]
        .find(':')
        .map(|i| after_scheme + i + 1)
        .unwrap_or(after_scheme);
    colon..s.len().saturating_sub(1).max(colon)
}

/// The value of a `secret_key = value` pair, without quotes; None for values that are not
/// secrets (`null`, `true`, an empty or starred value).
pub(super) fn pair_value(s: &str) -> Option<Range<usize>> {
    let sep = s.find(['=', ':'])? + 1;
    let mut start = sep + s[sep..].len() - s[sep..].trim_start().len();
    let mut end = s.len();
    if s[start..].starts_with(['"', '\'']) {
        start += 1;
        end -= 1;
    }
    let value = s.get(start..end)?;
    let lower = value.to_ascii_lowercase();
    // After a bare `token` key, a dotted identifier (`com.apple.xpc.activity/4505`,
    // `android.os.BinderProxy@2bd79ce`) names a thing; it is not a credential.
    let key = s[..sep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let bare_token_key = key.len() >= 5 && {
        let k = &key[key.len() - 5..];
        k.eq_ignore_ascii_case("token") && !key[..key.len() - 5].ends_with(['_', '-', '.'])
    };
    if bare_token_key && dotted_identifier(value) {
        return None;
    }
    let not_secret = value.is_empty()
        || value.bytes().all(|b| b == b'*')
        || matches!(
            lower.as_str(),
            "null" | "none" | "nil" | "true" | "false" | "undefined" | "empty" | "redacted"
        );
    (!not_secret).then_some(start..end)
}

/// The number after a phone word (`tel. 030 1234567`, `phone: (0161) 496 0123`): from its
/// first digit, `+` or `(` to the longest end that closes a whole digit group with 7 to 15 digits
/// in all. The range is absolute.
pub(super) fn labelled_phone(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = &text[r.clone()];
    let start = s.find(|c: char| c.is_ascii_digit() || c == '+' || c == '(')?;
    if s[start..].starts_with('+') {
        // An international number: its own pattern finds it where the `+` is.
        return None;
    }
    let bytes = s.as_bytes();
    let mut digits = 0;
    let mut ends = Vec::new();
    for i in start..bytes.len() {
        if !bytes[i].is_ascii_digit() {
            continue;
        }
        let group_start = i == 0 || !bytes[i - 1].is_ascii_digit();
        if group_start && digits >= 7 && i > 0 && bytes[i - 1] == b' ' {
            // Once the number has 7 digits, a long group or a date or time after a space is
            // the next token (`555-1234 081109 123013`, `555-1234 2015-10-18`), not more of it.
            let len = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            let dateish = matches!(bytes.get(i + len), Some(b'-' | b':' | b'/' | b'.'))
                && bytes.get(i + len + 1).is_some_and(u8::is_ascii_digit);
            if len >= 5 || dateish {
                break;
            }
        }
        digits += 1;
        if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            continue;
        }
        // A group ends the number only where a token ends (`72.594s` or `88.1%` is another
        // token, not the number's last group) or an extension starts (`2189x44901`).
        let clear_end = text
            .as_bytes()
            .get(r.start + i + 1)
            .is_none_or(|n| n.is_ascii_whitespace() || b",;)]}\"'\\".contains(n))
            || extension_len(&text[r.start + i + 1..]) > 0;
        if clear_end && (7..=15).contains(&digits) {
            ends.push(r.start + i + 1);
        }
    }
    let end = ends
        .into_iter()
        .rev()
        .find(|&end| !in_numeric_run(text, r.start + start..end))?;
    Some(r.start + start..end + extension_len(&text[end..]))
}

/// The length of a phone extension at the start of `rest` (` x204`, `, ext. 12`), or 0.
fn extension_len(rest: &str) -> usize {
    let t = rest.trim_start_matches([' ', ',']);
    let lower = t.get(..t.len().min(10)).unwrap_or("").to_ascii_lowercase();
    let word = ["extension", "ext.", "ext", "x", "#"]
        .into_iter()
        .find(|w| lower.starts_with(w));
    let Some(word) = word else { return 0 };
    let after = &t[word.len()..];
    let digits_at = after.len() - after.trim_start_matches(' ').len();
    let digits = after[digits_at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let end = digits_at + digits;
    let whole = after
        .as_bytes()
        .get(end)
        .is_none_or(|b| !b.is_ascii_alphanumeric());
    if (1..=6).contains(&digits) && whole {
        rest.len() - after.len() + end
    } else {
        0
    }
}

/// `a.b.c…`: lowercase-led words joined by dots, as in a Java class or reverse-DNS name.
fn dotted_identifier(v: &str) -> bool {
    let head: &str = v.split(['/', '@', ':']).next().unwrap_or("");
    let parts: Vec<&str> = head.split('.').collect();
    parts.len() >= 3
        && parts[0].starts_with(|c: char| c.is_ascii_lowercase())
        && parts.iter().all(|p| {
            p.starts_with(|c: char| c.is_ascii_alphabetic())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The run of ASCII digits that ends the candidate.
pub(super) fn trailing_digits(s: &str) -> Range<usize> {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    s.len() - digits..s.len()
}

/// Rejects the SSA's impossible numbers: area 000, 666 or 9xx, group 00, serial 0000.
pub(super) fn ssn_valid(s: &str) -> bool {
    let d: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    if d.len() != 9 {
        return false;
    }
    let (area, group, serial) = (&d[0..3], &d[3..5], &d[5..9]);
    area != b"000" && area != b"666" && area[0] != b'9' && group != b"00" && serial != b"0000"
}

/// True when the candidate is part of a longer dotted, dashed or slashed token (`1.2.3.4.5`,
/// `555-123-4567-89`, a UUID's digit groups), where it is a version, an OID or an id.
pub(super) fn in_numeric_run(text: &str, r: Range<usize>) -> bool {
    let before = &text.as_bytes()[..r.start];
    let after = &text.as_bytes()[r.end..];
    // `.` and `-` join a token to letters or digits (`1.2.3.4.5`, a UUID's groups); `/` only to
    // digits (`10.0.0.0/24`, a date), since `host/10.0.0.1` and `http://10.0.0.1/path` are
    // addresses.
    let joins = |sep: u8, neighbour: u8| match sep {
        b'.' | b'-' => neighbour.is_ascii_alphanumeric() || masked_edge(neighbour),
        b'/' => neighbour.is_ascii_digit() || masked_edge(neighbour),
        _ => false,
    };
    let joined_before =
        before.len() >= 2 && joins(before[before.len() - 1], before[before.len() - 2]);
    let joined_after = after.len() >= 2 && joins(after[0], after[1]);
    // A partial mask keeps a value's last digits glued to its stars (`IT52****0840`): digits
    // right against a star were inside that value, not a number of their own.
    let glued = before.last() == Some(&MASK_STAR) || after.first() == Some(&MASK_STAR);
    joined_before || joined_after || glued
}

/// The character Veil's redacted and partially masked forms are made of (`***-**-****`).
const MASK_STAR: u8 = b'*';

/// True for a character of a word as the context rules read words: a letter, a digit, or a
/// masked form's star, since a masked form stands for the value it replaced
/// (`card ****-****-****-**** size=…` has a number between the card word and `size`).
fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == char::from(MASK_STAR)
}

/// True for the bytes Veil's own masked forms end or start with (`<email:…>`, `[REDACTED]`,
/// `***`): a neighbour that was a digit or letter before masking is one of these after, so
/// validators treat them alike and masking a masked text changes nothing.
pub(super) fn masked_edge(b: u8) -> bool {
    matches!(b, b'>' | b'<' | b']' | b'[' | b'*')
}

/// Words that, just before a long digit run, say it is an id, a time or a counter.
const ID_WORDS: &[&str] = &[
    "id",
    "ids",
    "ts",
    "time",
    "timestamp",
    "epoch",
    "seq",
    "sequence",
    "offset",
    "counter",
    "count",
    "bytes",
    "size",
    "order",
    "request",
    "req",
    "trace",
    "span",
    "txn",
    "transaction",
    "nonce",
    "ns",
    "ms",
    "us",
    "uid",
    "pid",
    "tid",
    "block",
    "blk",
    "build",
    "version",
    "ref",
    "no",
    "num",
    "key",
    "msgid",
    "session",
    "job",
    "task",
    "event",
    "serial",
    "sku",
    "tracking",
];

/// Words that, shortly before a digit run, say it is a payment card.
const CARD_WORDS: &[&str] = &[
    "card",
    "cc",
    "ccn",
    "pan",
    "visa",
    "mastercard",
    "amex",
    "maestro",
    "discover",
    "jcb",
    "diners",
    "unionpay",
    "payment",
    "credit",
    "debit",
    "charge",
    "charged",
    "cardnumber",
    "cardno",
    "creditcard",
    "rupay",
    "karte",
    "kartennummer",
    "kreditkarte",
    "zahlung",
    "carte",
    "cb",
    "paiement",
];

/// Whether the context of a card-shaped candidate allows it to be a card. A number glued to a
/// word (`blk_-6127741703501838658`, `id-4111…`) or named as an id or counter just before
/// (`order_id=`, `bytes`) is not one. A bare 12-digit run (only Maestro issues those, and
/// 12-digit numbers are everywhere), and a number outside the issuers' ranges (`issued` false),
/// must have a card word shortly before it: in card context, a Luhn-valid run of 12 to 19
/// digits is a card (issue 25).
pub(super) fn card_context_ok(before: &str, candidate: &str, issued: bool) -> bool {
    let b = before.as_bytes();
    let glued = match b {
        [.., x, b'-' | b'_'] => {
            x.is_ascii_alphanumeric() || *x == b'_' || *x == b'-' || masked_edge(*x)
        }
        _ => false,
    };
    if glued {
        return false;
    }
    let [last, previous] = last_words(before);
    let card_word_before = CARD_WORDS.contains(&previous.as_str());
    // `card no 6759…` names a card's number; `order no 6759…` an order's.
    if ID_WORDS.contains(&last.as_str()) && !card_word_before {
        return false;
    }
    let bare = candidate.bytes().all(|c| c.is_ascii_digit());
    if !issued || (bare && candidate.len() < 13) {
        return card_word_labels(before);
    }
    true
}

/// True when a card word stands shortly before the candidate with no digit after it: the word
/// labels this number (`card no. 0604…`), not one further on (`card 4111… 1769421758029`,
/// `payment-4ba0afc81c-b7qjg 1714…`).
fn card_word_labels(before: &str) -> bool {
    let mut from = before.len().saturating_sub(40);
    while !before.is_char_boundary(from) {
        from += 1;
    }
    let near = before[from..].to_ascii_lowercase();
    let mut labelled = false;
    for w in near.split(|c: char| !word_char(c)) {
        if CARD_WORDS.contains(&w) {
            labelled = true;
        } else if w.bytes().any(|b| b.is_ascii_digit() || b == MASK_STAR) {
            labelled = false;
        }
    }
    labelled
}

/// True when the word just before a candidate names it as a port or a process or thread id
/// (`port 65005 25746` is a port and a process id). Only these: after most id words
/// (`Event 0113 747 4760`) a number in a national phone format is still a phone number.
pub(super) fn port_or_pid_before(before: &str) -> bool {
    let [last, _] = last_words(before);
    matches!(last.as_str(), "port" | "pid" | "tid" | "ppid")
}

/// The card number after a card word (`card no. 3591792033238578`): the longest printed,
/// Luhn-valid prefix of 12 to 19 digits of the digits that follow, whatever its issuer, ending
/// where the number ends. The range is absolute.
pub(super) fn labelled_card(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = &text[r.clone()];
    let start = r.start + s.find(|c: char| c.is_ascii_digit())?;
    card_lens(&text[start..r.end])
        .into_iter()
        .map(|(n, _)| start..start + n)
        .find(|c| {
            let next_digit = text.as_bytes().get(c.end).is_some_and(u8::is_ascii_digit);
            !next_digit && !in_numeric_run(text, c.clone())
        })
}

/// The last word just before a bare digit run and the word before it, lower case (empty when
/// absent): `order_id=` gives `id`, `order`.
fn last_words(before: &str) -> [String; 2] {
    let mut tail_start = before.len().saturating_sub(32);
    while !before.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let tail = before[tail_start..].trim_end_matches([' ', ':', '=', '#', '"', '\'', '(', '[']);
    let mut words = tail.rsplit(|c: char| !word_char(c));
    let last = words.next().unwrap_or("").to_ascii_lowercase();
    let previous = words
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_ascii_lowercase();
    [last, previous]
}

/// The byte lengths of the prefixes of a card candidate that may be card numbers, longest
/// first: 12 to 19 digits, plain or in groups the way cards are printed (fours, or 4-6-5 /
/// 4-6-4) with one kind of separator, and a valid Luhn check digit; each with whether its
/// prefix is an issuer's with a length it issues.
pub(super) fn card_lens(s: &str) -> Vec<(usize, bool)> {
    // The candidate may run into the next number with another separator: cut it there.
    let sep = s.bytes().find(|b| !b.is_ascii_digit());
    let s = match sep {
        Some(sep) => {
            let cut = s
                .bytes()
                .position(|b| !b.is_ascii_digit() && b != sep)
                .unwrap_or(s.len());
            s[..cut].trim_end_matches(char::from(sep))
        }
        None => s,
    };
    let groups: Vec<&str> = match sep {
        Some(sep) => s.split(char::from(sep)).collect(),
        None => vec![s],
    };
    let mut found = Vec::new();
    for k in (1..=groups.len()).rev() {
        let lens: Vec<usize> = groups[..k].iter().map(|g| g.len()).collect();
        let printed = lens.len() == 1
            || matches!(lens.as_slice(), [4, 6, 5] | [4, 6, 4])
            || (lens[..lens.len() - 1].iter().all(|&l| l == 4)
                && (1..=4).contains(&lens[lens.len() - 1]));
        if !printed {
            continue;
        }
        let end: usize = lens.iter().sum::<usize>() + (k - 1);
        let digits: Vec<u8> = s[..end]
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        if (12..=19).contains(&digits.len()) && luhn(&digits) {
            found.push((end, issued_range(&digits)));
        }
    }
    found
}

/// True when the number's prefix is an issuer's and its length one that issuer uses.
fn issued_range(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| d[..k].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let (p2, p3, p4) = (p(2), p(3), p(4));
    if d[0] == 4 {
        matches!(n, 13 | 16 | 19)
    } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        n == 16
    } else if p2 == 34 || p2 == 37 {
        n == 15
    } else if p4 == 6011
        || (644..=649).contains(&p3)
        || p2 == 65
        || (3528..=3589).contains(&p4)
        || (2200..=2204).contains(&p4)
    {
        (16..=19).contains(&n)
    } else if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39 {
        (14..=19).contains(&n)
    } else if p4 == 2131 || p4 == 1800 {
        // JCB's older 15-digit ranges.
        n == 15
    } else if p2 == 81 || p2 == 82 {
        // RuPay.
        n == 16
    } else {
        // Maestro (also its `0604` range) and other debit ranges: any length from 12 to 19.
        p2 == 50 || (56..=69).contains(&p2) || p4 == 604
    }
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VG", 24),
    ("XK", 20),
];

/// The byte length of the IBAN at the start of the candidate: the country's registered length
/// (any length from 15 to 34 for a country not in the table), ending where a group ends, with a
/// valid mod-97 check.
pub(super) fn iban_len(s: &str) -> Option<usize> {
    let expected = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| s.starts_with(c))
        .map(|(_, n)| *n);
    let mut ends = Vec::new();
    let mut alnum = 0;
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphanumeric() {
            alnum += 1;
            let at_group_end = s.as_bytes().get(i + 1).is_none_or(|n| *n == b' ');
            let fits = match expected {
                Some(n) => alnum == n,
                None => (15..=34).contains(&alnum),
            };
            if fits && (at_group_end || expected.is_some()) {
                ends.push(i + 1);
            }
        }
    }
    ends.into_iter().rev().find(|&end| {
        let at_boundary = s.as_bytes().get(end).is_none_or(|n| *n == b' ');
        at_boundary && iban_valid(&s[..end])
    })
}

/// ISO 13616 mod-97 check.
fn iban_valid(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for &c in tail.iter().chain(head) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        let scale = if v >= 10 { 100 } else { 10 };
        remainder = (remainder * scale + v) % 97;
    }
    remainder == 1
}

/// The absolute ends an international number (`+44 20 7946 0958`) may have, longest first:
/// after a digit group that is a whole token (not the start of `0x57…` or `55.702s`), holding 8
/// to 13 digits (10 to 15 when written without separators), so a number that runs into the
/// next one (`… 0958 200 OK`) stops where E.164 numbers end. An extension after the whole
/// number is kept with it.
pub(super) fn intl_phone_ends(text: &str, r: Range<usize>) -> Vec<usize> {
    let s = &text[r.clone()];
    let ext_at = s
        .char_indices()
        .find(|(_, c)| c.is_ascii_alphabetic() || *c == ',')
        .map(|(i, _)| i);
    let number = &s[..ext_at.unwrap_or(s.len())];
    let mut digits = 0;
    let mut groups = 0;
    let mut ends = Vec::new();
    let bytes = number.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if !b.is_ascii_digit() {
            continue;
        }
        // The trunk prefix written after the country code (`+49 (0)30 …`) is not dialled
        // from abroad and not one of the E.164 digits.
        let trunk = *b == b'0' && i > 0 && bytes[i - 1] == b'(' && bytes.get(i + 1) == Some(&b')');
        if trunk {
            continue;
        }
        digits += 1;
        if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            continue;
        }
        groups += 1;
        let end = if bytes.get(i + 1) == Some(&b')') {
            i + 2
        } else {
            i + 1
        };
        let ok = if groups == 1 {
            (10..=15).contains(&digits)
        } else {
            (8..=13).contains(&digits)
        };
        let whole_token = ext_at.is_some_and(|e| s[i + 1..e].trim().is_empty())
            || text
                .as_bytes()
                .get(r.start + i + 1)
                .is_none_or(|n| !n.is_ascii_alphanumeric() && *n != b'_');
        if ok && whole_token && !in_numeric_run(text, r.start..r.start + end) {
            ends.push(r.start + end);
        }
    }
    if let (Some(_), Some(&last)) = (ext_at, ends.last()) {
        // A valid number that ran to its end keeps its extension.
        if r.start + number.trim_end().len() <= last {
            ends.push(r.end);
        }
    }
    ends.reverse();
    ends
}

/// The address part (without a zone) of an IPv6 candidate that parses and is not loopback or
/// unspecified. The range is absolute.
pub(super) fn ipv6(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let before = text[..r.start].bytes().next_back();
    let after = text[r.end..].bytes().next();
    let joined = |b: Option<u8>| {
        // Brackets are how an address with a port is written; Veil's tokens end in `>`.
        b.is_some_and(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'<' | b'>' | b'*')
        })
    };
    // A `%` right after the address that did not start a zone glues it to what follows.
    if joined(before) || before == Some(b'.') || joined(after) || after == Some(b'%') {
        return None;
    }
    let s = &text[r.clone()];
    let addr_len = s.find('%').unwrap_or(s.len());
    let addr: Ipv6Addr = s[..addr_len].parse().ok()?;
    let kept = addr.is_loopback()
        || addr.is_unspecified()
        || addr
            .to_ipv4_mapped()
            .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified());
    (!kept).then_some(r.start..r.start + addr_len)
}

/// True when each dot-separated group is a decimal octet as an address writes it: 0 to 255,
/// without a leading zero.
pub(super) fn ipv4_octets(s: &str) -> bool {
    s.split('.')
        .all(|o| o.len() == 1 || (!o.starts_with('0') && o.parse::<u16>().is_ok_and(|n| n <= 255)))
}

/// True for IPv4 addresses that are kept: loopback, 0.0.0.0/8, netmasks (255.…), and dotted
/// numbers that are versions (`v1.2.3.4`, `version 1.2.3.4`) or part of a longer run.
pub(super) fn ipv4_kept(text: &str, r: Range<usize>) -> bool {
    let s = &text[r.clone()];
    if s.starts_with("127.") || s.starts_with("0.") || s.starts_with("255.") {
        return true;
    }
    if in_numeric_run(text, r.clone()) {
        return true;
    }
    let before = &text[..r.start];
    if before.ends_with(['v', 'V']) {
        return true;
    }
    let word = before
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(word.as_str(), "version" | "ver" | "v" | "release" | "build")
}

/// The form of a value that a hash is taken of, so spellings of one value hash alike.
pub(super) fn canonical(t: Option<PiiType>, value: &str) -> String {
    match t {
        Some(PiiType::Email) => value.replace("%40", "@").to_ascii_lowercase(),
        Some(PiiType::Phone) => {
            let number = value
                .split(|c: char| c.is_ascii_alphabetic() || c == ',')
                .next()
                .unwrap_or(value);
            let d: String = number.chars().filter(char::is_ascii_digit).collect();
            // +1 555 123 4567 and (555) 123-4567 are one North American number.
            if d.len() == 11 && d.starts_with('1') {
                d[1..].to_string()
            } else {
                d
            }
        }
        Some(PiiType::CreditCard) | Some(PiiType::Ssn) => {
            value.chars().filter(char::is_ascii_digit).collect()
        }
        Some(PiiType::Iban) => value
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_uppercase(),
        Some(PiiType::IpAddress) => match value.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

/// The PARTIAL_MASK form of a value.
pub(super) fn partial(t: Option<PiiType>, value: &str) -> String {
    let last_digits = |n: usize| -> String {
        let d: Vec<char> = value.chars().filter(char::is_ascii_digit).collect();
        d[d.len().saturating_sub(n)..].iter().collect()
    };
    match t {
        Some(PiiType::Email) => {
            let (local, domain) = value
                .split_once('@')
                .or_else(|| value.split_once("%40"))
                .unwrap_or((value, ""));
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        Some(PiiType::Phone) => format!("***-***-{}", last_digits(4)),
        Some(PiiType::Ssn) => format!("***-**-{}", last_digits(4)),
        Some(PiiType::CreditCard) => format!("****-****-****-{}", last_digits(4)),
        Some(PiiType::Iban) => {
            let compact: String = value.chars().filter(char::is_ascii_alphanumeric).collect();
            let tail = &compact[compact.len().saturating_sub(4)..];
            format!("{}****{tail}", &compact[..4.min(compact.len())])
        }
        Some(PiiType::IpAddress) => match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                let o = v4.octets();
                format!("{}.{}.*.*", o[0], o[1])
            }
            Ok(IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{:x}:{:x}:*:*:*:*:*:*", s[0], s[1])
            }
            Err(_) => "***.***.***.***".into(),
        },
        Some(PiiType::Secret) => PiiType::Secret.redacted().into(),
        None => {
            let n = value.chars().count();
            let keep = if n >= 8 { 4 } else { 0 };
            value
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i + keep >= n || c.is_whitespace() {
                        c
                    } else {
                        '*'
                    }
                })
                .collect()
        }
    }
}
