//! A generator of labelled test lines for the PII engine: real log lines (LogHub) with personal
//! data of several locales planted in them, and tokens that must survive masking (ids, times,
//! versions, amounts…). Used by the recall tests, the `veil pii mask` test and the benchmark;
//! everything is drawn from a seed, so a failing line can be replayed.
//!
//! It is a generator rather than a fixed list on purpose: a fixed list invites tuning the engine
//! to the list.

use std::path::{Path, PathBuf};

use super::PiiType;

/// The sixteen systems of the vendored LogHub sample (`node/testdata/loghub`, with LogHub's
/// license notice in its README).
pub const LOGHUB_SYSTEMS: [&str; 16] = [
    "Android",
    "Apache",
    "BGL",
    "HDFS",
    "HPC",
    "Hadoop",
    "HealthApp",
    "Linux",
    "Mac",
    "OpenSSH",
    "OpenStack",
    "Proxifier",
    "Spark",
    "Thunderbird",
    "Windows",
    "Zookeeper",
];

/// The LogHub sample vendored in this repository. Panics, naming the path, when it or any of
/// its systems' raw or structured files is missing: a test that needs the data must fail
/// loudly rather than pass on less of it.
pub fn loghub_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/loghub");
    for system in LOGHUB_SYSTEMS {
        for file in [
            format!("{system}_2k.log"),
            format!("{system}_2k.log_structured.csv"),
        ] {
            let path = dir.join(system).join(file);
            assert!(
                path.is_file(),
                "the vendored LogHub sample is missing {} (it ships in the repository under node/testdata/loghub)",
                path.display()
            );
        }
    }
    dir
}

/// A random IPv4 address of the kind that must be masked: not loopback, not 0/8, not a
/// broadcast or network address in its last byte. Both generators plant them.
pub fn ipv4(r: &mut Rng) -> String {
    let first = loop {
        let f = r.range(1, 254);
        if f != 127 {
            break f;
        }
    };
    format!(
        "{first}.{}.{}.{}",
        r.below(256),
        r.below(256),
        r.range(1, 254)
    )
}

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    fn pick_chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n).map(|_| char::from(*self.pick(alphabet))).collect()
    }
}

/// One planted piece of personal data: its type and the exact text that must not survive.
#[derive(Debug, Clone)]
pub struct Planted {
    /// The type.
    pub pii_type: PiiType,
    /// Text that must be gone from the masked line.
    pub value: String,
}

/// One generated line and what it holds.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The line.
    pub line: String,
    /// Personal data planted in it.
    pub planted: Vec<Planted>,
    /// Tokens that must come back unchanged.
    pub survivors: Vec<String>,
    /// True when the line holds no personal data at all (it must come back byte-identical).
    pub clean: bool,
}

/// Reads every line of every `*.log` file under a LogHub-style directory.
pub fn load_loghub(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut systems: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    systems.sort_by_key(|e| e.file_name());
    for system in systems {
        if !system.file_type()?.is_dir() {
            continue;
        }
        let mut files: Vec<_> = std::fs::read_dir(system.path())?.collect::<Result<_, _>>()?;
        files.sort_by_key(|e| e.file_name());
        for f in files {
            if f.path().extension().is_some_and(|e| e == "log") {
                let bytes = std::fs::read(f.path())?;
                lines.extend(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(str::to_string),
                );
            }
        }
    }
    Ok(lines)
}

/// True when a real log line visibly holds no personal data by a rule simpler than the engine's
/// (no dotted quad, no `@` before a dotted name, no IPv6-like run of hex groups, no
/// key=secret pair): the lines the
/// "clean lines come back byte-identical" measure is taken on.
pub fn looks_clean(line: &str) -> bool {
    let b = line.as_bytes();
    let dotted_quad = b.windows(7).enumerate().any(|(i, _)| {
        let mut j = i;
        let mut parts = 0;
        while parts < 4 {
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() && j - start < 3 {
                j += 1;
            }
            if j == start {
                return false;
            }
            parts += 1;
            if parts < 4 {
                if j < b.len() && b[j] == b'.' {
                    j += 1;
                } else {
                    return false;
                }
            }
        }
        true
    });
    let email_like = line.split('@').skip(1).any(|after| {
        let host: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
            .collect();
        host.contains('.')
    });
    let lower = line.to_ascii_lowercase();
    let secretish = [
        "password=",
        "password:",
        "token=",
        "secret=",
        "bearer ",
        "authorization",
    ]
    .iter()
    .any(|k| lower.contains(k));
    let ipv6_like = line
        .split(|c: char| !(c.is_ascii_hexdigit() || c == ':'))
        .any(|t| t.matches(':').count() >= 3 && t.split(':').all(|g| g.len() <= 4));
    !dotted_quad && !email_like && !line.contains("::") && !secretish && !ipv6_like
}

const FIRST: &[&str] = &[
    "john", "maria", "juergen", "francois", "sofia", "arjun", "priya", "hiroshi", "yuki", "olga",
    "mohammed", "chen", "ana", "lars", "fatima", "giulia", "pierre", "ngozi", "kenji", "mateo",
    "aylin", "dmitri", "siobhan", "thandiwe", "wei",
];
const LAST: &[&str] = &[
    "smith",
    "garcia",
    "mueller",
    "dubois",
    "rossi",
    "sharma",
    "tanaka",
    "ivanova",
    "haddad",
    "wang",
    "silva",
    "nilsson",
    "okafor",
    "kowalski",
    "oconnor",
    "yilmaz",
    "nguyen",
    "schmidt",
    "fernandez",
    "kim",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.co.uk",
    "corp.example.de",
    "example.fr",
    "sub.example.in",
    "example.co.jp",
    "gmail.com",
    "outlook.com",
    "company.com.br",
    "uni-example.edu",
];
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const PASSWORD: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%^*_+-.";

/// Draws labelled lines.
pub struct Generator {
    rng: Rng,
    base: Vec<String>,
    clean_base: Vec<String>,
    pii_share: f64,
}

impl Generator {
    /// A generator over these real lines (at least one must look clean).
    pub fn new(seed: u64, base: Vec<String>) -> Generator {
        let clean_base = base.iter().filter(|l| looks_clean(l)).cloned().collect();
        Generator {
            rng: Rng::new(seed),
            base,
            clean_base,
            pii_share: 0.5,
        }
    }

    /// Sets the share of lines that carry planted personal data (default 0.5).
    pub fn with_pii_share(mut self, share: f64) -> Generator {
        self.pii_share = share;
        self
    }

    /// The next line: a share of them (half, unless set) carry planted personal data, the
    /// rest are clean.
    pub fn sample(&mut self) -> Sample {
        if self.rng.chance(self.pii_share) {
            let t = *self.rng.pick(&PiiType::ALL);
            self.sample_with(t)
        } else {
            let mut line = self.rng.pick(&self.clean_base).clone();
            let mut survivors = Vec::new();
            for _ in 0..self.rng.range(0, 2) {
                let s = self.survivor();
                line.push(' ');
                line.push_str(&s.0);
                survivors.push(s.1);
            }
            Sample {
                line,
                planted: Vec::new(),
                survivors,
                clean: true,
            }
        }
    }

    /// A line with one planted value of type `t` (and maybe a survivor).
    pub fn sample_with(&mut self, t: PiiType) -> Sample {
        let base = self.rng.pick(&self.base).clone();
        let (phrase, value) = self.pii(t);
        let mut survivors = Vec::new();
        let mut line = if self.rng.chance(0.5) {
            format!("{base} {phrase}")
        } else {
            // Into the middle of the line, at a space.
            match base.char_indices().filter(|(_, c)| *c == ' ').nth(2) {
                Some((i, _)) => format!("{} {phrase} {}", &base[..i], &base[i + 1..]),
                None => format!("{phrase} {base}"),
            }
        };
        if self.rng.chance(0.5) {
            let s = self.survivor();
            line.push(' ');
            line.push_str(&s.0);
            survivors.push(s.1);
        }
        Sample {
            line,
            planted: vec![Planted { pii_type: t, value }],
            survivors,
            clean: false,
        }
    }

    /// A phrase holding one value of type `t`, and the value.
    pub fn pii(&mut self, t: PiiType) -> (String, String) {
        match t {
            PiiType::Email => self.email(),
            PiiType::Phone => self.phone(),
            PiiType::Ssn => self.ssn(),
            PiiType::CreditCard => self.card(),
            PiiType::IpAddress => self.ip(),
            PiiType::Iban => self.iban(),
            PiiType::Secret => self.secret(),
        }
    }

    fn email(&mut self) -> (String, String) {
        let r = &mut self.rng;
        let (f, l, d) = (*r.pick(FIRST), *r.pick(LAST), *r.pick(DOMAINS));
        let local = match r.below(6) {
            0 => format!("{f}.{l}"),
            1 => format!("{f}+{}", r.pick(&["billing", "test", "alerts"])),
            2 => format!("{f}_{l}{}", r.below(100)),
            3 => format!("{}{}", &f[..1], l),
            4 => format!("{}.{}", capitalize(f), capitalize(l)),
            _ => format!("{f}-{l}"),
        };
        let addr = format!("{local}@{d}");
        match r.below(9) {
            0 => (format!("{{\"email\":\"{addr}\"}}"), addr),
            1 => (format!("From: {} <{addr}>", capitalize(f)), addr),
            2 => (format!("mailto:{addr}"), addr),
            3 => {
                let enc = addr.replace('@', "%40");
                (format!("GET /reset?email={enc}&lang=en HTTP/1.1"), enc)
            }
            4 => (
                format!("redirect https://app.example.com/u/{addr}/profile"),
                addr,
            ),
            5 => (format!("user={addr} login failed"), addr),
            6 => (format!("Please contact {addr}."), addr),
            _ => (format!("sent receipt to {addr}"), addr),
        }
    }

    fn na_number(&mut self) -> (String, String, String) {
        let r = &mut self.rng;
        let area = format!("{}{}{}", r.range(2, 9), r.range(0, 8), r.below(10));
        let exchange = format!("{}{}", r.range(2, 9), r.digits(2));
        let line = r.digits(4);
        (area, exchange, line)
    }

    fn phone(&mut self) -> (String, String) {
        if self.rng.chance(0.2) {
            // National spellings: unlabelled where their shape is distinctive, else after a word.
            let r = &mut self.rng;
            let pairs = |r: &mut Rng| (0..4).map(|_| r.digits(2)).collect::<Vec<_>>().join(" ");
            let (phrase, number) = match r.below(8) {
                0 => {
                    let n = format!("0{} {}", r.range(1, 9), pairs(r));
                    (format!("rappeler le {n}"), n)
                }
                1 => {
                    let n = format!("020 {} {}", r.digits(4), r.digits(4));
                    (format!("ring {n} back"), n)
                }
                2 => {
                    let n = format!("0113 {} {}", r.digits(3), r.digits(4));
                    (n.clone(), n)
                }
                3 => {
                    let n = format!("07700 {}", r.digits(6));
                    (format!("mob {n}"), n)
                }
                4 => {
                    let n = format!("(0161) {} {}", r.digits(3), r.digits(4));
                    (format!("office {n}"), n)
                }
                5 => {
                    let n = format!("030 {}", r.digits(8));
                    (format!("Tel. {n}"), n)
                }
                6 => {
                    let n = format!("089/{}", r.digits(7));
                    (format!("Telefon: {n}"), n)
                }
                _ => {
                    let n = format!("{}-{}", r.range(200, 999), r.digits(4));
                    (format!("phone {n}"), n)
                }
            };
            return (phrase, number);
        }
        if self.rng.chance(0.5) {
            let (a, e, l) = self.na_number();
            let r = &mut self.rng;
            let number = match r.below(9) {
                0 => format!("({a}) {e}-{l}"),
                1 => format!("{a}-{e}-{l}"),
                2 => format!("{a}.{e}.{l}"),
                3 => format!("{a} {e} {l}"),
                4 => format!("+1 {a} {e} {l}"),
                5 => format!("+1-{a}-{e}-{l}"),
                6 => format!("1-{a}-{e}-{l}"),
                7 => format!("+1{a}{e}{l}"),
                _ => format!("({a}){e}-{l}"),
            };
            let number = if r.chance(0.15) {
                format!(
                    "{number} {} {}",
                    r.pick(&["x", "ext.", "ext"]),
                    r.range(10, 9999)
                )
            } else {
                number
            };
            if r.chance(0.15) {
                let bare = format!("{a}{e}{l}");
                return (
                    format!(
                        "{} {bare}",
                        r.pick(&["phone:", "call", "sms to", "mobile="])
                    ),
                    bare,
                );
            }
            let ctx = r.pick(&["callback number", "contact", "customer phone", "dialled"]);
            (format!("{ctx} {number}"), number)
        } else {
            let r = &mut self.rng;
            let number = match r.below(13) {
                0 => format!("+44 20 {} {}", r.digits(4), r.digits(4)),
                1 => format!("+44 7700 {}", r.digits(6)),
                2 => format!("+44 (0)20 {} {}", r.digits(4), r.digits(4)),
                3 => format!("+49 30 {}", r.digits(8)),
                4 => format!("+49 151 {}", r.digits(8)),
                5 => format!(
                    "+33 {} {} {} {} {}",
                    r.range(1, 9),
                    r.digits(2),
                    r.digits(2),
                    r.digits(2),
                    r.digits(2)
                ),
                6 => format!("+91 {}{} {}", r.range(6, 9), r.digits(4), r.digits(5)),
                7 => format!("+91-{}{}", r.range(6, 9), r.digits(9)),
                8 => format!("+81 3-{}-{}", r.digits(4), r.digits(4)),
                9 => format!("+55 11 9{}-{}", r.digits(4), r.digits(4)),
                10 => format!("+61 4{} {} {}", r.digits(2), r.digits(3), r.digits(3)),
                11 => format!(
                    "+34 6{} {} {} {}",
                    r.digits(2),
                    r.digits(2),
                    r.digits(2),
                    r.digits(2)
                ),
                _ => format!("+4420{}", r.digits(8)),
            };
            let ctx = r.pick(&["tel", "phone", "whatsapp from", "SMS sent to", "contact"]);
            (format!("{ctx} {number}"), number)
        }
    }

    fn ssn(&mut self) -> (String, String) {
        let r = &mut self.rng;
        let area = loop {
            let a = r.range(1, 899);
            if a != 666 {
                break a;
            }
        };
        let (g, s) = (r.range(1, 99), r.range(1, 9999));
        match r.below(5) {
            0 => {
                let v = format!("{area:03} {g:02} {s:04}");
                (format!("ssn {v} verified"), v)
            }
            1 => {
                let v = format!("{area:03}{g:02}{s:04}");
                (format!("SSN: {v}"), v)
            }
            _ => {
                let v = format!("{area:03}-{g:02}-{s:04}");
                let ctx = r.pick(&["applicant ssn", "taxpayer", "kyc check for", "id"]);
                (format!("{ctx} {v}"), v)
            }
        }
    }

    fn card(&mut self) -> (String, String) {
        let r = &mut self.rng;
        let (prefix, len): (String, usize) = match r.below(11) {
            0 => ("4".into(), 16),
            1 => ("4".into(), 13),
            2 => (format!("5{}", r.range(1, 5)), 16),
            3 => (format!("{}", r.range(2221, 2720)), 16),
            4 => (r.pick(&["34", "37"]).to_string(), 15),
            5 => ("6011".into(), 16),
            6 => (format!("{}", r.range(3528, 3589)), 16),
            7 => ("36".into(), 14),
            8 => ("6759".into(), r.range(12, 19) as usize),
            9 => ("62".into(), 19),
            _ => ("4".into(), 19),
        };
        let mut d = prefix.clone();
        d.push_str(&r.digits(len - prefix.len() - 1));
        d.push(luhn_digit(&d));
        let shown = match (r.below(3), len) {
            (0, _) => d.clone(),
            (sep, 15) => {
                let s = if sep == 1 { " " } else { "-" };
                format!("{}{s}{}{s}{}", &d[..4], &d[4..10], &d[10..])
            }
            (sep, _) => {
                let s = if sep == 1 { " " } else { "-" };
                in_fours(&d, s)
            }
        };
        if len >= 13 && r.chance(0.2) {
            // No card word at all.
            return (format!("processed {shown} ok"), shown);
        }
        let ctx = r.pick(&[
            "card",
            "payment with card",
            "charge declined for",
            "cc",
            "pan",
        ]);
        (format!("{ctx} {shown}"), shown)
    }

    fn ip(&mut self) -> (String, String) {
        let r = &mut self.rng;
        if r.chance(0.5) {
            let v = ipv4(r);
            match r.below(6) {
                0 => (format!("client {v}:{} connected", r.range(1024, 65535)), v),
                1 => (format!("[{v}]"), v),
                2 => (format!("remote_addr={v}"), v),
                3 => (format!("GET http://{v}/health 200"), v),
                4 => (format!("X-Forwarded-For: {v}, 10.0.0.1"), v),
                _ => (format!("from {v} port {}", r.range(1024, 65535)), v),
            }
        } else {
            let g = |r: &mut Rng| format!("{:x}", r.range(1, 0xffff));
            let v = match r.below(6) {
                0 => format!(
                    "2001:db8:{}:{}:{}:{}:{}:{}",
                    g(r),
                    g(r),
                    g(r),
                    g(r),
                    g(r),
                    g(r)
                ),
                1 => format!("2a00:{}:{}::{}", g(r), g(r), g(r)),
                2 => format!("fe80::{}:{}:{}", g(r), g(r), g(r)),
                3 => format!(
                    "::ffff:{}.{}.{}.{}",
                    r.range(1, 126),
                    r.below(256),
                    r.below(256),
                    r.range(1, 254)
                ),
                4 => format!("2001:DB8:{}::{}", g(r).to_uppercase(), g(r).to_uppercase()),
                _ => format!("2600:{}::{}:{}", g(r), g(r), g(r)),
            };
            match r.below(4) {
                0 => (format!("[{v}]:{}", r.range(1024, 65535)), v),
                1 if v.starts_with("fe80") => (format!("peer {v}%eth0 up"), v),
                2 => (format!("client_ip={v}"), v),
                _ => (format!("connection from {v}"), v),
            }
        }
    }

    fn iban(&mut self) -> (String, String) {
        let r = &mut self.rng;
        let (country, bban) = match r.below(8) {
            0 => ("DE", r.digits(18)),
            1 => ("FR", format!("{}{}", r.digits(10), r.digits(13))),
            2 => (
                "GB",
                format!(
                    "{}{}",
                    r.pick_chars(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                    r.digits(14)
                ),
            ),
            3 => ("ES", r.digits(20)),
            4 => (
                "IT",
                format!(
                    "{}{}",
                    r.pick_chars(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 1),
                    r.digits(22)
                ),
            ),
            5 => (
                "NL",
                format!(
                    "{}{}",
                    r.pick_chars(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                    r.digits(10)
                ),
            ),
            6 => ("PL", r.digits(24)),
            _ => ("CH", r.digits(17)),
        };
        let check = iban_check(country, &bban);
        let compact = format!("{country}{check:02}{bban}");
        let shown = if r.chance(0.5) {
            in_fours(&compact, " ")
        } else {
            compact
        };
        let ctx = r.pick(&[
            "refund to IBAN",
            "iban:",
            "payout account",
            "SEPA transfer to",
        ]);
        (format!("{ctx} {shown}"), shown)
    }

    fn secret(&mut self) -> (String, String) {
        let r = &mut self.rng;
        let pw = loop {
            let n = r.range(10, 20) as usize;
            let p = r.pick_chars(PASSWORD, n);
            if p.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                break p;
            }
        };
        let n = r.range(32, 48) as usize;
        let token = r.pick_chars(B64, n);
        match r.below(14) {
            0 => (format!("Authorization: Bearer {token}"), token),
            1 => (format!("sending bearer {token}"), token),
            2 => {
                let jwt = format!(
                    "eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}",
                    r.pick_chars(B64, 40),
                    r.pick_chars(B64, 43)
                );
                (format!("session {jwt} expired"), jwt)
            }
            3 => {
                let p = r.pick_chars(ALNUM, 14);
                (
                    format!("connecting to postgres://app:{p}@db.internal:5432/prod"),
                    p,
                )
            }
            4 => (format!("password={pw}"), pw),
            5 => (format!("config api_key: {token}"), token),
            6 => (format!("\"client_secret\":\"{pw}\""), pw),
            7 => (format!("db_password = {pw} loaded"), pw),
            8 => {
                let lines: Vec<String> = (0..3).map(|_| r.pick_chars(ALNUM, 64)).collect();
                let v = lines[1].clone();
                (
                    format!(
                        "-----BEGIN RSA PRIVATE KEY-----\nMIIE{}\n{}\n-----END RSA PRIVATE KEY-----",
                        lines[0], lines[1]
                    ),
                    v,
                )
            }
            9 => {
                let k = format!("AKIA{}", r.pick_chars(UPPER_DIGITS, 16));
                (format!("aws key {k} used"), k)
            }
            10 => {
                let k = format!("ghp_{}", r.pick_chars(ALNUM, 36));
                (format!("git push with {k}"), k)
            }
            11 => {
                let k = format!("xoxb-{}-{}", r.digits(12), r.pick_chars(ALNUM, 24));
                (format!("slack token {k}"), k)
            }
            12 => {
                let k = format!("sk_live_{}", r.pick_chars(ALNUM, 24));
                (format!("stripe {k}"), k)
            }
            _ => {
                let k = format!("AIza{}", r.pick_chars(B64, 35));
                (format!("maps key={k}"), k)
            }
        }
    }

    /// A phrase holding a token that must survive masking, and the token.
    pub fn survivor(&mut self) -> (String, String) {
        let r = &mut self.rng;
        let tok = match r.below(29) {
            0 => format!(
                "{}-{}-4{}-{}{}-{}",
                r.pick_chars(HEX, 8),
                r.pick_chars(HEX, 4),
                r.pick_chars(HEX, 3),
                r.pick(&["8", "9", "a", "b"]),
                r.pick_chars(HEX, 3),
                r.pick_chars(HEX, 12)
            ),
            1 => {
                let n = *r.pick(&[16, 24, 32, 40, 64]);
                r.pick_chars(HEX, n)
            }
            2 => format!("0x{}", r.pick_chars(HEX, 11)),
            3 => format!(
                "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{}Z",
                r.range(1, 12),
                r.range(1, 28),
                r.below(24),
                r.below(60),
                r.below(60),
                r.digits(3)
            ),
            4 => format!(
                "2015-10-18 {:02}:{:02}:{:02},{}",
                r.below(24),
                r.below(60),
                r.below(60),
                r.digits(3)
            ),
            5 => {
                let n = *r.pick(&[8, 11, 14, 17]);
                format!("17{}", r.digits(n))
            }
            6 => format!("{}ms", r.range(1, 99999)),
            7 => format!("{}.{}s", r.below(100), r.digits(3)),
            8 => format!("port {}", r.range(1, 65535)),
            9 => format!("v{}.{}.{}", r.below(20), r.below(50), r.below(100)),
            10 => format!(
                "{}.{}.{}-rc.{}",
                r.below(20),
                r.below(50),
                r.below(100),
                r.below(9)
            ),
            11 => format!("ORD-2026-{}", r.digits(6)),
            12 => format!("order_id={}", r.range(1_000_000_000, 9_999_999_999)),
            13 => format!("req-{}", r.pick_chars(HEX, 12)),
            14 => format!("{} bytes", r.range(1, 4_294_967_296)),
            15 => format!(
                "${},{:03}.{:02}",
                r.range(1, 999),
                r.below(1000),
                r.below(100)
            ),
            16 => format!("EUR {}.{:02}", r.range(1, 99999), r.below(100)),
            17 => format!("SKU-{}-{}", r.digits(5), r.pick(&["XL", "M", "RED", "BLK"])),
            18 => format!(
                "{}-{}-{}",
                r.pick(&["payment", "checkout", "api-gateway", "worker"]),
                r.pick_chars(HEX, 10),
                r.pick_chars(b"bcdfghjklmnpqrstvwxz2456789", 5)
            ),
            19 => format!("Foo.java:{}", r.range(1, 4000)),
            20 => format!("line {}", r.range(1, 4000)),
            21 => format!(
                "{}={}",
                r.pick(&["trace_id", "txn", "order", "request_id", "seq"]),
                r.range(2_000_000_000_000_000, 6_999_999_999_999_999)
            ),
            22 => format!(
                "version {}.{}.{}.{}",
                r.range(1, 20),
                r.below(10),
                r.below(10),
                r.below(10)
            ),
            23 => format!(
                "17/06/09 {:02}:{:02}:{:02}",
                r.below(24),
                r.below(60),
                r.below(60)
            ),
            24 => format!(
                "081109 {:02}{:02}{:02}",
                r.below(24),
                r.below(60),
                r.below(60)
            ),
            25 => format!(
                "Jun 14 {:02}:{:02}:{:02}",
                r.below(24),
                r.below(60),
                r.below(60)
            ),
            26 => format!("HTTP/1.1 {}", r.pick(&["200", "404", "503"])),
            27 => format!("{}.{}%", r.below(100), r.below(10)),
            _ => format!("size={}", r.range(1, 1 << 40)),
        };
        (tok.clone(), tok)
    }
}

/// `s` (ASCII) in groups of four joined by `sep`, as cards and IBANs are printed.
fn in_fours(s: &str, sep: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(sep)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// The Luhn check digit that completes `partial`. (Written apart from the engine's validator on
/// purpose: the generator is the oracle the engine is scored against.)
fn luhn_digit(partial: &str) -> char {
    let sum: u32 = partial
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    char::from(b'0' + ((10 - sum % 10) % 10) as u8)
}

/// The two check digits of an IBAN (ISO 13616).
fn iban_check(country: &str, bban: &str) -> u32 {
    let mut r: u32 = 0;
    for c in bban.bytes().chain(country.bytes()).chain(*b"00") {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            _ => u32::from(c - b'A') + 10,
        };
        r = (r * if v >= 10 { 100 } else { 10 } + v) % 97;
    }
    98 - r
}

/// The quality measures of the PII engine over generated samples: recall per type, the share
/// of must-survive tokens kept, the share of clean lines returned byte-identical.
#[derive(Debug, Default)]
pub struct Score {
    planted: [(u32, u32); 7],
    survivors: (u32, u32),
    clean: (u32, u32),
    /// What was missed, for the report.
    pub misses: Vec<String>,
}

impl Score {
    /// Scores one sample against its masked form.
    pub fn add(&mut self, s: &Sample, masked: &str) {
        for p in &s.planted {
            let e = &mut self.planted[p.pii_type.index()];
            e.1 += 1;
            if masked.contains(&p.value) {
                self.misses.push(format!(
                    "{} missed in {:?} -> {masked:?}",
                    p.pii_type.as_str(),
                    s.line
                ));
            } else {
                e.0 += 1;
            }
        }
        for t in &s.survivors {
            self.survivors.1 += 1;
            if masked.contains(t.as_str()) {
                self.survivors.0 += 1;
            } else {
                self.misses
                    .push(format!("survivor {t:?} lost in {:?} -> {masked:?}", s.line));
            }
        }
        if s.clean {
            self.clean.1 += 1;
            if masked == s.line {
                self.clean.0 += 1;
            } else {
                self.misses
                    .push(format!("clean line changed: {:?} -> {masked:?}", s.line));
            }
        }
    }

    /// Panics with a report unless recall is at least 0.995 overall and 0.99 per type, and at
    /// least 0.99 of survivors and of clean lines come back unchanged.
    pub fn check(&self) {
        self.check_with(0.99);
    }

    /// [`Score::check`] with another least share of survivors kept.
    pub fn check_with(&self, survivors_min: f64) {
        let ratio = |(ok, n): (u32, u32)| {
            if n == 0 {
                1.0
            } else {
                f64::from(ok) / f64::from(n)
            }
        };
        let (ok, n) = self
            .planted
            .iter()
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        let mut report = format!(
            "recall overall {:.4} ({ok}/{n}); survivors {:.4}; clean lines {:.4}\n",
            ratio((ok, n)),
            ratio(self.survivors),
            ratio(self.clean)
        );
        let mut pass = ratio((ok, n)) >= 0.995
            && ratio(self.survivors) >= survivors_min
            && ratio(self.clean) >= 0.99;
        for t in PiiType::ALL {
            let r = self.planted[t.index()];
            report.push_str(&format!(
                "  {}: {:.4} ({}/{})\n",
                t.as_str(),
                ratio(r),
                r.0,
                r.1
            ));
            pass &= r.1 > 0 && ratio(r) >= 0.99;
        }
        for m in self.misses.iter().take(40) {
            report.push_str(&format!("  {m}\n"));
        }
        assert!(pass, "{report}");
        eprintln!("{report}");
    }
}
