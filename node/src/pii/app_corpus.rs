//! A second labelled-line generator, written apart from the engine and from [`super::corpus`]'s
//! generator (issue 25): application log lines as services in six locales write them (en_US,
//! en_CA, en_GB, de_DE, fr_FR, en_IN), mixed with real LogHub lines, with personal data in the
//! spellings people and formatting libraries produce (phone numbers with extensions and in
//! national formats, numbers outside the assigned North American ranges, 12-digit Maestro and
//! unassigned-prefix card numbers after a card word, addresses glued to punctuation), and beside
//! each the false-positive traps that go with it: order numbers, durations, ports, versions,
//! timestamps, UUIDs, hex ids, LogHub's block ids and numbers.
//!
//! The forms are drawn as they are written, from a seed, and not from the engine's patterns:
//! when the engine misses one, the engine changes. Two rules keep the oracle honest about what
//! text can tell: a number whose shape alone is ambiguous (ten bare digits, three groups
//! separated by spaces) is only planted after a word that says it is a phone number (or, for an
//! Indian mobile, in a phrase that does: `OTP sent to 9876543210`), and a card number outside
//! the issuers' ranges only after a word that says it is a card.

use super::corpus::{looks_clean, Planted, Rng, Sample};
use super::PiiType;

/// The locales lines are drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locale {
    /// United States.
    EnUs,
    /// Canada (English).
    EnCa,
    /// United Kingdom.
    EnGb,
    /// Germany.
    DeDe,
    /// France.
    FrFr,
    /// India (English).
    EnIn,
}

impl Locale {
    /// Every locale, in a fixed order.
    pub const ALL: [Locale; 6] = [
        Locale::EnUs,
        Locale::EnCa,
        Locale::EnGb,
        Locale::DeDe,
        Locale::FrFr,
        Locale::EnIn,
    ];
}

/// Draws labelled lines: application lines in the six locales and real LogHub lines.
pub struct AppGenerator {
    rng: Rng,
    loghub: Vec<String>,
    clean_loghub: Vec<String>,
}

const NAMES: &[&str] = &[
    "John Miller",
    "Emily Tremblay",
    "Oliver Hughes",
    "Jürgen Weiß",
    "Anna Schäfer",
    "Élodie Lefèvre",
    "François Martin",
    "Priya Nair",
    "Rahul Verma",
    "Siobhan O'Brien",
    "Chloé Dubois",
    "Ananya Iyer",
];

const SERVICES: &[&str] = &[
    "checkout",
    "crm-sync",
    "notify",
    "billing",
    "kyc",
    "support-desk",
    "delivery",
];

const HEX: &[u8] = b"0123456789abcdef";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl AppGenerator {
    /// A generator over these real lines (some must pass [`looks_clean`]).
    pub fn new(seed: u64, loghub: Vec<String>) -> AppGenerator {
        let clean_loghub = loghub.iter().filter(|l| looks_clean(l)).cloned().collect();
        AppGenerator {
            rng: Rng::new(seed),
            loghub,
            clean_loghub,
        }
    }

    /// The next line: about half carry one planted value (phones, cards and addresses more
    /// often than the other types, as in issue 25's corpus), the rest are clean, with traps.
    pub fn sample(&mut self) -> Sample {
        if self.rng.chance(0.5) {
            let t = *self.rng.pick(&[
                PiiType::Phone,
                PiiType::Phone,
                PiiType::Phone,
                PiiType::CreditCard,
                PiiType::CreditCard,
                PiiType::IpAddress,
                PiiType::IpAddress,
                PiiType::Email,
                PiiType::Ssn,
                PiiType::Iban,
                PiiType::Secret,
            ]);
            self.sample_with(t)
        } else {
            self.clean()
        }
    }

    /// A line with one planted value of type `t`, and maybe traps beside it.
    pub fn sample_with(&mut self, t: PiiType) -> Sample {
        let locale = *self.rng.pick(&Locale::ALL);
        let (message, value) = self.message(locale, t);
        let mut survivors = Vec::new();
        let message = if self.rng.chance(0.5) {
            let (trap, kept) = self.trap(locale, t);
            survivors.push(kept);
            format!("{message} {trap}")
        } else {
            message
        };
        let line = if self.rng.chance(0.25) {
            // Into a real line, at its end or after its third space.
            let base = self.rng.pick(&self.loghub).clone();
            match base.char_indices().filter(|(_, c)| *c == ' ').nth(2) {
                Some((i, _)) if self.rng.chance(0.5) => {
                    format!("{} {message} {}", &base[..i], &base[i + 1..])
                }
                _ => format!("{base} {message}"),
            }
        } else {
            self.framed(locale, &message)
        };
        Sample {
            line,
            planted: vec![Planted { pii_type: t, value }],
            survivors,
            clean: false,
        }
    }

    /// A line without personal data: a real LogHub line or an application line, with traps.
    fn clean(&mut self) -> Sample {
        let locale = *self.rng.pick(&Locale::ALL);
        let mut survivors = Vec::new();
        let line = if self.rng.chance(0.4) {
            let mut line = self.rng.pick(&self.clean_loghub).clone();
            if self.rng.chance(0.5) {
                let t = *self.rng.pick(&PiiType::ALL);
                let (trap, kept) = self.trap(locale, t);
                line.push(' ');
                line.push_str(&trap);
                survivors.push(kept);
            }
            line
        } else {
            let mut parts = Vec::new();
            for _ in 0..self.rng.range(1, 3) {
                let t = *self.rng.pick(&PiiType::ALL);
                let (trap, kept) = self.trap(locale, t);
                parts.push(trap);
                survivors.push(kept);
            }
            let message = parts.join(", ");
            self.framed(locale, &message)
        };
        Sample {
            line,
            planted: Vec::new(),
            survivors,
            clean: true,
        }
    }

    /// The message as an application's logger frames it: a timestamp in the locale's habit, a
    /// level, a logger name; sometimes as a JSON line.
    fn framed(&mut self, locale: Locale, message: &str) -> String {
        let r = &mut self.rng;
        let (mo, d, h, mi, s, ms) = (
            r.range(1, 12),
            r.range(1, 28),
            r.below(24),
            r.below(60),
            r.below(60),
            r.below(1000),
        );
        let level = *r.pick(&["INFO", "WARN", "ERROR", "DEBUG", "info", "warning"]);
        let service = *r.pick(SERVICES);
        match r.below(5) {
            0 => {
                let escaped = message.replace('\\', "\\\\").replace('"', "\\\"");
                format!(
                    "{{\"ts\":\"2026-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z\",\"level\":\"{}\",\"service\":\"{service}\",\"msg\":\"{escaped}\"}}",
                    level.to_ascii_lowercase()
                )
            }
            1 => format!("{level} [{service}] {message}"),
            _ => {
                let ts = match locale {
                    Locale::EnUs | Locale::EnCa => {
                        let pm = if h >= 12 { "PM" } else { "AM" };
                        let h12 = if h % 12 == 0 { 12 } else { h % 12 };
                        format!("{mo:02}/{d:02}/2026 {h12:02}:{mi:02}:{s:02} {pm}")
                    }
                    Locale::EnGb => format!("{d:02}/{mo:02}/2026 {h:02}:{mi:02}:{s:02}.{ms:03}"),
                    Locale::DeDe => format!("{d:02}.{mo:02}.2026 {h:02}:{mi:02}:{s:02},{ms:03}"),
                    Locale::FrFr => format!("2026-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02},{ms:03}"),
                    Locale::EnIn => {
                        format!("2026-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}+05:30")
                    }
                };
                format!("{ts} {level} {service} - {message}")
            }
        }
    }

    /// A message holding one value of type `t`, and the value.
    fn message(&mut self, locale: Locale, t: PiiType) -> (String, String) {
        match t {
            PiiType::Phone => self.phone_message(locale),
            PiiType::CreditCard => self.card_message(locale),
            PiiType::IpAddress => self.ip_message(),
            PiiType::Email => self.email_message(locale),
            PiiType::Ssn => self.ssn_message(),
            PiiType::Iban => self.iban_message(locale),
            PiiType::Secret => self.secret_message(),
        }
    }

    fn phone_message(&mut self, locale: Locale) -> (String, String) {
        let (number, ambiguous) = self.phone_number(locale);
        let name = *self.rng.pick(NAMES);
        let r = &mut self.rng;
        if ambiguous && r.chance(0.4) {
            // What services log when they text or call a customer: no label word, but the
            // phrase says the number is dialled.
            let phrase = match (locale, r.below(9)) {
                (Locale::DeDe, 6) => format!("Anruf von {number} verpasst"),
                (Locale::DeDe, 7) => format!("SMS an {number} gesendet"),
                (Locale::DeDe, 8) => format!("Rückruf an {number} eingeplant"),
                (Locale::FrFr, 6) => format!("appel de {number} manqué"),
                (Locale::FrFr, 7) => format!("SMS envoyé au {number}"),
                (Locale::FrFr, 8) => format!("rappel programmé au {number}"),
                (_, 0 | 6) => format!("OTP sent to {number}"),
                (_, 1 | 7) => format!("sending OTP to {number}"),
                (_, 2 | 8) => format!("SMS sent successfully to {number}"),
                (_, 3) => format!("missed call from {number}"),
                (_, 4) => format!("IVR call placed to {number} for {name}"),
                _ => format!("callback requested to {number}"),
            };
            return (phrase, number);
        }
        if ambiguous || r.chance(0.6) {
            let label = *r.pick(phone_labels(locale));
            let phrase = match r.below(7) {
                0 => format!("{{\"{label}\":\"{number}\"}}"),
                1 => format!("{label}={number}"),
                2 => format!("{label}: {number}"),
                3 => format!("customer {name} {label} {number} updated"),
                4 => format!("'{label}': '{number}'"),
                5 => format!("{label} {number}"),
                _ => format!("{label} ({number})"),
            };
            (phrase, number)
        } else {
            let phrase = match (locale, r.below(5)) {
                (Locale::DeDe, 0) => format!("Rückruf an {number} eingeplant"),
                (Locale::DeDe, 1) => format!("Kunde {name} erreichbar unter {number}"),
                (Locale::FrFr, 0) => format!("rappel programmé au {number}"),
                (Locale::FrFr, 1) => format!("client {name} joignable au {number}"),
                (_, 0) => format!("callback requested to {number}"),
                (_, 1) => format!("{name} <{number}> opted in"),
                (_, 2) => format!("reach {name} at {number} before 5pm"),
                (_, 3) => format!("delivery for {name}, {number}, leave at door"),
                _ => format!("OTP sent to {number}"),
            };
            (phrase, number)
        }
    }

    /// A phone number of the locale, and whether its shape alone leaves it ambiguous (so it
    /// is only written after a label).
    fn phone_number(&mut self, locale: Locale) -> (String, bool) {
        let r = &mut self.rng;
        match locale {
            Locale::EnUs | Locale::EnCa => na_phone(r),
            Locale::EnGb => gb_phone(r),
            Locale::DeDe => de_phone(r),
            Locale::FrFr => fr_phone(r),
            Locale::EnIn => in_phone(r),
        }
    }

    fn card_message(&mut self, locale: Locale) -> (String, String) {
        let r = &mut self.rng;
        // (prefix, length, in an issuer's range)
        let (prefix, len, assigned): (String, usize, bool) = match r.below(14) {
            0 => ("4".into(), *r.pick(&[13, 16, 19]), true),
            1 => (format!("5{}", r.range(1, 5)), 16, true),
            2 => (format!("{}", r.range(2221, 2720)), 16, true),
            3 => (r.pick(&["34", "37"]).to_string(), 15, true),
            4 => (r.pick(&["6011", "65", "644", "649"]).to_string(), 16, true),
            5 => (r.pick(&["300", "305", "36", "38"]).to_string(), 14, true),
            6 => (format!("{}", r.range(3528, 3589)), 16, true),
            7 => (r.pick(&["2131", "1800"]).to_string(), 15, true),
            8 | 9 => {
                let p = *r.pick(&[
                    "5018", "5020", "5038", "6304", "6759", "6761", "0604", "6390",
                ]);
                (p.to_string(), *r.pick(&[12, 12, 16, 19]), true)
            }
            10 => (r.pick(&["62", "81", "82", "508"]).to_string(), 16, true),
            _ => {
                // Outside every issuer's range, still Luhn-valid: a card only by its context.
                let p = format!("{}{}", r.range(1, 9), digits(r, 3));
                (p, *r.pick(&[12, 16, 16, 19]), false)
            }
        };
        let mut d = prefix;
        d.push_str(&digits(r, len - d.len() - 1));
        d.push(luhn_check_digit(&d));
        let shown = match r.below(4) {
            0 | 1 => d.clone(),
            sep => {
                let s = if sep == 2 { " " } else { "-" };
                if len == 15 || len == 14 {
                    // Amex 4-6-5, Diners 4-6-4.
                    format!("{}{s}{}{s}{}", &d[..4], &d[4..10], &d[10..])
                } else {
                    d.as_bytes()
                        .chunks(4)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect::<Vec<_>>()
                        .join(s)
                }
            }
        };
        if assigned && len >= 14 && r.chance(0.2) {
            let phrase = match locale {
                Locale::DeDe => format!("Zahlung {shown} autorisiert"),
                Locale::FrFr => format!("paiement {shown} accepté"),
                _ => format!("auth ok for {shown}"),
            };
            return (phrase, shown);
        }
        let word = *r.pick(match locale {
            Locale::DeDe => &["Karte", "Kartennummer", "Kreditkarte", "card_number"][..],
            Locale::FrFr => &["carte", "numéro de carte", "carte bancaire", "CB"][..],
            Locale::EnIn => &["card", "debit card", "RuPay card", "card no."][..],
            _ => &[
                "card",
                "Card number",
                "credit card",
                "cc",
                "cardNumber",
                "PAN",
            ][..],
        });
        let phrase = match r.below(5) {
            0 => format!("{{\"{word}\":\"{shown}\"}}"),
            1 => format!("{word}={shown}"),
            2 => format!("{word}: {shown} declined"),
            3 => format!("charged {word} {shown}"),
            _ => format!("{word} {shown}"),
        };
        (phrase, shown)
    }

    fn ip_message(&mut self) -> (String, String) {
        let r = &mut self.rng;
        if r.chance(0.75) {
            let v = super::corpus::ipv4(r);
            let port = r.range(1024, 65535);
            let phrase = match r.below(16) {
                0 => format!("Connection broken for id 2, my id = 1, error = /{v}:3888"),
                1 => format!("Cannot open channel to 3 at election address /{v}:{port}"),
                2 => format!("resolved db-primary/{v}"),
                3 => format!("[{v}]:{port} closed"),
                4 => format!("upstream={v}:{port},"),
                5 => format!("peer=({v})"),
                6 => format!("from=<{v}>"),
                7 => format!("proxy tcp://{v}:{port}/"),
                8 => format!("login deploy@{v}"),
                9 => format!("src={v};dst=10.0.0.1"),
                10 => format!("\"client\":\"{v}\""),
                11 => format!("X-Real-IP: {v}"),
                12 => format!("conn {v}:{port}->172.16.0.9:443 est"),
                13 => format!("redirect=http%3A%2F%2F{v}%3A{port}%2Fcallback"),
                14 => format!("wrote conn_{v}_{port}.log"),
                _ => format!("client address {v}."),
            };
            (phrase, v)
        } else {
            let g = |r: &mut Rng| format!("{:x}", r.range(1, 0xffff));
            let v = match r.below(3) {
                0 => format!("2001:db8:{}:{}::{}", g(r), g(r), g(r)),
                1 => format!("fe80::{}:{}:{}:{}", g(r), g(r), g(r), g(r)),
                _ => format!(
                    "2a02:{}:{}:{}:{}:{}:{}:{}",
                    g(r),
                    g(r),
                    g(r),
                    g(r),
                    g(r),
                    g(r),
                    g(r)
                ),
            };
            let phrase = match r.below(3) {
                0 => format!("[{v}]:{}", r.range(1024, 65535)),
                1 => format!("remote={v}"),
                _ => format!("client {v} accepted"),
            };
            (phrase, v)
        }
    }

    fn email_message(&mut self, locale: Locale) -> (String, String) {
        let r = &mut self.rng;
        let user = *r.pick(&[
            "j.miller",
            "anna.schaefer",
            "elodie.l",
            "priya_nair",
            "o.hughes",
        ]);
        let domain = *r.pick(&["example.com", "example.de", "example.fr", "example.co.in"]);
        let v = format!("{user}{}@{domain}", r.below(100));
        let phrase = match locale {
            Locale::DeDe => format!("Bestätigung an {v} gesendet"),
            Locale::FrFr => format!("courriel envoyé à {v}"),
            _ => format!("receipt emailed to <{v}>"),
        };
        (phrase, v)
    }

    fn ssn_message(&mut self) -> (String, String) {
        let r = &mut self.rng;
        let area = loop {
            let a = r.range(1, 899);
            if a != 666 {
                break a;
            }
        };
        let v = format!("{area:03}-{:02}-{:04}", r.range(1, 99), r.range(1, 9999));
        (format!("W-9 on file, SSN {v}"), v)
    }

    fn iban_message(&mut self, locale: Locale) -> (String, String) {
        let r = &mut self.rng;
        let (country, bban) = match locale {
            Locale::DeDe => ("DE", digits(r, 18)),
            Locale::FrFr => ("FR", digits(r, 23)),
            Locale::EnGb => ("GB", format!("NWBK{}", digits(r, 14))),
            _ => ("NL", format!("ABNA{}", digits(r, 10))),
        };
        let v = format!("{country}{:02}{bban}", iban_check_digits(country, &bban));
        (format!("payout IBAN {v}"), v)
    }

    fn secret_message(&mut self) -> (String, String) {
        let r = &mut self.rng;
        let v = pick_chars(r, ALNUM, 24);
        (format!("retrying with api_key={v}"), v)
    }

    /// A trap that goes with type `t` (text that must come back unchanged), and the token.
    fn trap(&mut self, locale: Locale, t: PiiType) -> (String, String) {
        let r = &mut self.rng;
        let tok = match t {
            PiiType::Phone => phone_trap(r, locale),
            PiiType::CreditCard => card_trap(r),
            PiiType::IpAddress => ip_trap(r),
            _ => other_trap(r),
        };
        (tok.clone(), tok)
    }
}

/// Words that label a phone number, by locale.
fn phone_labels(locale: Locale) -> &'static [&'static str] {
    match locale {
        Locale::EnUs | Locale::EnCa => &[
            "phone",
            "Phone",
            "tel",
            "mobile",
            "cell",
            "phone_number",
            "phoneNumber",
            "customer_phone",
            "contact number",
            "Ph",
            "fax",
        ],
        Locale::EnGb => &[
            "phone",
            "tel",
            "mobile",
            "Mob",
            "telephone",
            "contact_phone",
        ],
        Locale::DeDe => &[
            "Telefon",
            "Tel.",
            "Telefonnummer",
            "Mobil",
            "Handy",
            "Rufnummer",
            "telefon",
        ],
        Locale::FrFr => &["tél.", "Tél", "téléphone", "portable", "mobile", "tel"],
        Locale::EnIn => &[
            "mobile",
            "Mobile No.",
            "mob",
            "phone",
            "contact_no",
            "whatsapp",
        ],
    }
}

/// A North American number, and whether its shape alone leaves it ambiguous.
fn na_phone(r: &mut Rng) -> (String, bool) {
    // Area codes and exchanges as generators and typos make them, not only as
    // assigned: `(132) 291-0534` is still written in phone shape.
    let area = if r.chance(0.7) {
        format!("{}{}", r.range(2, 9), digits(r, 2))
    } else {
        digits(r, 3)
    };
    let (ex, line) = (digits(r, 3), digits(r, 4));
    let (number, ambiguous) = match r.below(14) {
        0 => (format!("{area}-{ex}-{line}"), false),
        1 => (format!("({area}){ex}-{line}"), false),
        2 => (format!("({area}) {ex}-{line}"), false),
        3 => (format!("{area}.{ex}.{line}"), false),
        4 => (format!("1-{area}-{ex}-{line}"), false),
        5 => (format!("1 ({area}) {ex}-{line}"), false),
        6 => (format!("+1-{area}-{ex}-{line}"), false),
        7 => (format!("+1 ({area}) {ex}-{line}"), false),
        8 => (format!("+1 {area} {ex} {line}"), false),
        9 => (format!("001-{area}-{ex}-{line}"), false),
        10 => (format!("+1.{area}.{ex}.{line}"), false),
        11 => (format!("{area} {ex} {line}"), true),
        12 => (format!("{area}{ex}{line}"), true),
        _ => (format!("+1{area}{ex}{line}"), false),
    };
    if !ambiguous && r.chance(0.3) {
        let ext_len = r.range(2, 5) as usize;
        let ext = digits(r, ext_len);
        let spelled = match r.below(6) {
            0 | 1 => format!("{number}x{ext}"),
            2 => format!("{number} x{ext}"),
            3 => format!("{number} ext. {ext}"),
            4 => format!("{number} ext {ext}"),
            _ => format!("{number} ext.{ext}"),
        };
        (spelled, false)
    } else {
        (number, ambiguous)
    }
}

/// A British number (national or +44), and whether it is ambiguous alone.
fn gb_phone(r: &mut Rng) -> (String, bool) {
    let a = r.range(1, 9);
    match r.below(12) {
        0 => (format!("0{a}{} {}", digits(r, 3), digits(r, 5)), false),
        1 => (format!("0{a}{} {}", digits(r, 3), digits(r, 6)), false),
        2 => (
            format!("0{a}{} {} {}", digits(r, 2), digits(r, 3), digits(r, 4)),
            false,
        ),
        3 => (
            format!("0{a}{} {} {}", digits(r, 1), digits(r, 4), digits(r, 4)),
            false,
        ),
        4 => (format!("07{} {}", digits(r, 3), digits(r, 6)), false),
        5 => (
            format!("(0{a}{}) {} {}", digits(r, 2), digits(r, 3), digits(r, 4)),
            false,
        ),
        6 => (
            format!("+44 {a}{} {} {}", digits(r, 1), digits(r, 4), digits(r, 4)),
            false,
        ),
        7 => (format!("+44(0){a}{} {}", digits(r, 3), digits(r, 6)), false),
        8 => (
            format!(
                "+44 (0){a}{} {} {}",
                digits(r, 1),
                digits(r, 4),
                digits(r, 4)
            ),
            false,
        ),
        9 => (format!("+44 7{} {}", digits(r, 3), digits(r, 6)), false),
        10 => (format!("+44(0){a}{}", digits(r, 9)), false),
        _ => (format!("0{a}{}", digits(r, 9)), true),
    }
}

/// A German number (trunk 0, area code, subscriber; or +49/0049), and whether it is ambiguous.
fn de_phone(r: &mut Rng) -> (String, bool) {
    // At most 11 digits after the trunk 0, as German numbers have.
    let (lead, area_len) = (r.range(1, 9), r.range(1, 3));
    let sub_len = r.range(5, (10 - area_len).min(8));
    let area = format!("{lead}{}", digits(r, area_len as usize));
    let sub = digits(r, sub_len as usize);
    match r.below(13) {
        0 | 1 => (format!("0{area} {sub}"), false),
        2 => (format!("0{area}/{sub}"), false),
        3 => (format!("0{area}-{sub}"), false),
        4 => (format!("(0{area}) {sub}"), false),
        5 => (format!("+49 {area} {sub}"), false),
        6 => (format!("+49 (0){area} {sub}"), false),
        7 => (format!("+49-{area}-{sub}"), false),
        8 => (format!("0049 {area} {sub}"), false),
        9 => (
            format!("01{}{} {}", r.range(5, 7), digits(r, 1), digits(r, 8)),
            false,
        ),
        10 => (format!("0{area} {}-{}", sub, digits(r, 2)), false),
        11 => (format!("0049{area}{sub}"), true),
        _ => (format!("0{area}{sub}"), true),
    }
}

/// A French number (pairs of digits after the trunk 0, or +33/0033), and whether it is ambiguous.
fn fr_phone(r: &mut Rng) -> (String, bool) {
    let first = r.range(1, 9);
    let pairs: Vec<String> = (0..4).map(|_| digits(r, 2)).collect();
    match r.below(9) {
        0 | 1 => (format!("0{first} {}", pairs.join(" ")), false),
        2 => (format!("0{first}.{}", pairs.join(".")), false),
        3 => (format!("0{first}-{}", pairs.join("-")), false),
        4 => (format!("+33 {first} {}", pairs.join(" ")), false),
        5 => (format!("+33 (0){first} {}", pairs.join(" ")), false),
        6 => (format!("+33{first}{}", pairs.concat()), false),
        7 => (format!("0033 {first} {}", pairs.join(" ")), false),
        _ => (format!("0{first}{}", pairs.concat()), true),
    }
}

/// An Indian number (10-digit mobile, +91, trunk 0 landline), and whether it is ambiguous.
fn in_phone(r: &mut Rng) -> (String, bool) {
    let mobile = format!("{}{}", r.range(6, 9), digits(r, 9));
    match r.below(13) {
        // The national format of a mobile with its trunk 0, as formatting libraries write it:
        // ambiguous, since a time and a process id (`060015 21733`, LogHub's HDFS lines) have
        // the same shape.
        11 => (format!("0{} {}", &mobile[..5], &mobile[5..]), true),
        12 => (format!("{}-{}", &mobile[..5], &mobile[5..]), false),
        0 => (format!("+91 {mobile}"), false),
        1 => (format!("+91-{mobile}"), false),
        2 => (format!("+91{mobile}"), false),
        3 => (format!("+91 {} {}", &mobile[..5], &mobile[5..]), false),
        4 => (format!("{} {}", &mobile[..5], &mobile[5..]), false),
        5 => (format!("0{mobile}"), true),
        6 => (mobile, true),
        7 => (format!("0{}-{}", r.range(11, 99), digits(r, 8)), false),
        8 => (format!("0{} {}", r.range(11, 99), digits(r, 8)), false),
        9 => (
            format!("0{}{} {}", r.range(1, 9), digits(r, 3), digits(r, 6)),
            false,
        ),
        _ => (format!("+91 {} {}", r.range(11, 99), digits(r, 8)), false),
    }
}

/// A trap beside phone numbers: order numbers, durations, dates, counters, Chromium's
/// `[MMDD/HHMMSS:LEVEL:…]`, SMS gateway figures.
fn phone_trap(r: &mut Rng, locale: Locale) -> String {
    if r.chance(0.15) {
        // A trunk-0 national number's shape that is an id: no phone phrase before it, or the
        // number before the phrase.
        let (lead, len) = (r.range(1, 9), r.range(8, 10) as usize);
        let id = format!("0{lead}{}", digits(r, len));
        return match r.below(3) {
            0 => format!("ticket {id} escalated"),
            1 => format!("parcel {id} sent to depot"),
            _ => format!("archive moved to {id}"),
        };
    }
    if locale == Locale::EnIn && r.chance(0.3) {
        // Ten digits from 6 to 9 that are ids, not mobiles: no phone phrase before them.
        let id = format!("{}{}", r.range(6, 9), digits(r, 9));
        return match r.below(4) {
            0 => format!("txn {id} settled"),
            1 => format!("request {id} sent to upstream"),
            2 => format!("uploaded {id} bytes to bucket"),
            _ => format!("awb no. {id} dispatched"),
        };
    }
    match r.below(9) {
        // A time and a process id, as HDFS writes them after the date.
        8 => format!(
            "{:02}{:02}{:02} {}",
            r.below(24),
            r.below(60),
            r.below(60),
            r.range(10_000, 99_999)
        ),
        0 => format!("order #{}", r.range(100_000_000, 999_999_999)),
        1 => format!("sms gateway answered in {} ms", r.range(1, 9999)),
        2 => match locale {
            Locale::DeDe => format!("Bestellnummer {}-{}", r.range(1000, 9999), digits(r, 6)),
            Locale::FrFr => format!("commande n° {}", r.range(100_000, 9_999_999)),
            _ => format!("invoice INV-2026-{}", digits(r, 6)),
        },
        3 => format!(
            "[{:02}{:02}/{:02}{:02}{:02}:WARNING:dns_config.cc({})]",
            r.range(1, 12),
            r.range(1, 28),
            r.below(24),
            r.below(60),
            r.below(60),
            r.range(10, 999)
        ),
        4 => format!(
            "elapsed {:02}:{:02}:{:02}.{}",
            r.below(24),
            r.below(60),
            r.below(60),
            digits(r, 3)
        ),
        5 => format!("retries {}/{}", r.range(1, 5), r.range(5, 9)),
        6 => format!(
            "ISBN 978-{}-{}-{}-{}",
            r.range(0, 9),
            digits(r, 2),
            digits(r, 6),
            r.below(10)
        ),
        _ => format!("pid {}", r.range(100, 4_194_304)),
    }
}

/// A trap beside cards: last four digits, expiry, ids and epochs that are long digit runs,
/// block ids.
fn card_trap(r: &mut Rng) -> String {
    match r.below(8) {
        0 => format!("card ending {}", digits(r, 4)),
        1 => {
            format!("expires {:02}/{}", r.range(1, 12), r.range(26, 33))
        }
        2 => {
            format!("ts={}", r.range(1_700_000_000_000, 1_799_999_999_999))
        }
        3 => format!(
            "blk_-{}",
            r.range(1_000_000_000_000_000_000, 9_223_372_036_854_775_807)
        ),
        4 => format!(
            "blk_{}",
            r.range(100_000_000_000_000, 9_999_999_999_999_999)
        ),
        5 => format!(
            "order_id={}",
            r.range(100_000_000_000, 9_999_999_999_999_999)
        ),
        6 => {
            format!("tid {}", r.range(139_000_000_000_000, 140_999_999_999_999))
        }
        _ => {
            format!("amount {}.{:02} EUR", r.range(1, 9999), r.below(100))
        }
    }
}

/// A trap beside addresses: versions, OIDs, ports, unspecified addresses and netmasks.
fn ip_trap(r: &mut Rng) -> String {
    match r.below(8) {
        0 => format!(
            "version {}.{}.{}.{}",
            r.range(1, 20),
            r.below(10),
            r.below(10),
            r.below(100)
        ),
        1 => format!(
            "v{}.{}.{}.{}",
            r.range(1, 20),
            r.below(10),
            r.below(10),
            r.below(100)
        ),
        2 => {
            format!("oid 1.3.6.1.4.1.{}.{}", r.range(1, 60000), r.below(10))
        }
        3 => format!("listening on 0.0.0.0:{}", r.range(1024, 65535)),
        4 => "mask 255.255.255.0".to_string(),
        5 => format!(
            "Chrome/{}.0.{}.{}",
            r.range(100, 130),
            r.range(4000, 6999),
            r.range(10, 200)
        ),
        6 => format!("port {}", r.range(1, 65535)),
        _ => {
            format!("build 10.0.{}.{}", r.range(10000, 22999), r.range(1, 4000))
        }
    }
}

/// A trap beside anything: timestamps, UUIDs, hex ids, sizes, durations.
fn other_trap(r: &mut Rng) -> String {
    match r.below(8) {
        0 => format!(
            "{}-{}-4{}-a{}-{}",
            pick_chars(r, HEX, 8),
            pick_chars(r, HEX, 4),
            pick_chars(r, HEX, 3),
            pick_chars(r, HEX, 3),
            pick_chars(r, HEX, 12)
        ),
        1 => format!("trace_id={}", pick_chars(r, HEX, 32)),
        2 => format!("0x{}", pick_chars(r, HEX, 12)),
        3 => format!("epoch {}", r.range(1_600_000_000, 1_799_999_999)),
        4 => format!("took {}.{}s", r.below(60), digits(r, 3)),
        5 => format!("size={}", r.range(1, 1 << 40)),
        6 => format!("commit {}", pick_chars(r, HEX, 40)),
        _ => format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{}Z",
            r.range(1, 12),
            r.range(1, 28),
            r.below(24),
            r.below(60),
            r.below(60),
            digits(r, 3)
        ),
    }
}

fn digits(r: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + r.below(10) as u8))
        .collect()
}

fn pick_chars(r: &mut Rng, alphabet: &[u8], n: usize) -> String {
    (0..n).map(|_| char::from(*r.pick(alphabet))).collect()
}

/// The digit that makes `partial` followed by it pass the Luhn check (written again here, apart
/// from the engine's validator and from the other generator's).
fn luhn_check_digit(partial: &str) -> char {
    let mut sum = 0;
    for (i, b) in partial.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    char::from(b'0' + ((10 - sum % 10) % 10) as u8)
}

/// The two check digits of an IBAN (ISO 13616: the BBAN, the country, `00`, mod 97).
fn iban_check_digits(country: &str, bban: &str) -> u32 {
    let mut rem: u64 = 0;
    for c in bban.bytes().chain(country.bytes()).chain(*b"00") {
        let v = if c.is_ascii_digit() {
            u64::from(c - b'0')
        } else {
            u64::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    98 - rem as u32
}
