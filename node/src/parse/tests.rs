use super::exception::{detect, exception_id, fingerprint};
use super::*;

/// 2025-11-24T16:00:00Z.
const RECEIVE: i64 = 1_764_000_000_000_000;

fn loghub_dir() -> std::path::PathBuf {
    crate::pii::corpus::loghub_dir()
}

/// A minimal RFC 4180 reader: quoted fields, doubled quotes, no newlines inside fields.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            let mut out = Vec::new();
            let mut cur = String::new();
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        cur.push('"');
                        chars.next();
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => out.push(std::mem::take(&mut cur)),
                    _ => cur.push(c),
                }
            }
            out.push(cur);
            out
        })
        .collect()
}

/// The expected instant from the CSV's own columns, computed without the parser.
fn expected_us(system: &str, col: &dyn Fn(&str) -> String) -> Option<i64> {
    use ::time::macros::format_description as fd;
    use ::time::PrimitiveDateTime as P;
    let p = |s: &str, f: &[::time::format_description::BorrowedFormatItem<'_>]| {
        P::parse(s, f)
            .ok()
            .map(|t| (t.assume_utc().unix_timestamp_nanos() / 1000) as i64)
    };
    match system {
        "Android" => p(
            &format!("2025-{} {}", col("Date"), col("Time")),
            fd!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"),
        ),
        "Apache" => p(
            &col("Time"),
            fd!("[weekday repr:short] [month repr:short] [day] [hour]:[minute]:[second] [year]"),
        ),
        "BGL" => col("Timestamp").parse::<i64>().ok().map(|s| s * 1_000_000),
        "HDFS" => p(
            &format!("20{} {}", col("Date"), col("Time")),
            fd!("[year][month][day] [hour][minute][second]"),
        ),
        "Hadoop" | "Zookeeper" => p(
            &format!("{} {}", col("Date"), col("Time")),
            fd!("[year]-[month]-[day] [hour]:[minute]:[second],[subsecond]"),
        ),
        "OpenStack" => p(
            &format!("{} {}", col("Date"), col("Time")),
            fd!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"),
        ),
        "Spark" => p(
            &format!("20{} {}", col("Date"), col("Time")),
            fd!("[year]/[month]/[day] [hour]:[minute]:[second]"),
        ),
        "Windows" => p(
            &format!("{} {}", col("Date"), col("Time")),
            fd!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        ),
        _ => None,
    }
}

fn expected_level(system: &str, raw: &str) -> Option<Level> {
    if system == "Android" {
        return level_from_letter(raw);
    }
    level_from_name(raw)
}

#[test]
fn loghub_timestamps_and_levels_match_the_structured_files() {
    let mut report = String::new();
    let mut failed = false;
    for system in [
        "Android",
        "Apache",
        "BGL",
        "HDFS",
        "Hadoop",
        "OpenStack",
        "Spark",
        "Windows",
        "Zookeeper",
    ] {
        let dir = loghub_dir().join(system);
        let log = std::fs::read_to_string(dir.join(format!("{system}_2k.log")))
            .unwrap_or_else(|e| panic!("LogHub sample {system}: {e}"));
        let csv =
            std::fs::read_to_string(dir.join(format!("{system}_2k.log_structured.csv"))).unwrap();
        let rows = csv_rows(&csv);
        let header = rows[0].clone();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(
            lines.len(),
            rows.len() - 1,
            "{system}: one CSV row per line"
        );
        let (mut ts_ok, mut level_ok, mut examples) = (0, 0, Vec::new());
        for (line, row) in lines.iter().zip(&rows[1..]) {
            let col = |name: &str| {
                let i = header.iter().position(|h| h == name).expect("column");
                row[i].clone()
            };
            let parsed = parse_text(line, Format::Auto, RECEIVE);
            let want_ts = expected_us(system, &col);
            let want_level = expected_level(system, &col("Level"));
            let ts_right = want_ts.is_some() && parsed.timestamp_us == want_ts;
            let level_right = want_level.is_some() && parsed.level == want_level;
            ts_ok += usize::from(ts_right);
            level_ok += usize::from(level_right);
            if (!ts_right || !level_right) && examples.len() < 3 {
                examples.push(format!(
                    "    {line:.120}\n      got {:?} {:?}, want {want_ts:?} {want_level:?}",
                    parsed.timestamp_us, parsed.level
                ));
            }
        }
        let n = lines.len() as f64;
        let (ts_share, level_share) = (ts_ok as f64 / n, level_ok as f64 / n);
        report.push_str(&format!(
            "{system}: timestamp {ts_share:.4}, level {level_share:.4}\n{}\n",
            examples.join("\n")
        ));
        failed |= ts_share < 0.99 || level_share < 0.99;
    }
    assert!(!failed, "{report}");
    eprintln!("{report}");
}

#[test]
fn every_loghub_system_keeps_its_text_and_folds_nothing_away() {
    for entry in std::fs::read_dir(loghub_dir()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let log = std::fs::read_to_string(dir.join(format!("{name}_2k.log"))).unwrap();
        let entries = split_entries(&log, RECEIVE, 1000);
        let original = text_lines(&log);
        let rejoined: Vec<&str> = entries.iter().flat_map(|e| e.split('\n')).collect();
        assert_eq!(
            rejoined, original,
            "{name}: the text must come back line for line"
        );
        // LogHub lines are one event each (no traces): nothing may be folded.
        assert!(
            entries.len() as f64 >= original.len() as f64 * 0.99,
            "{name}: {} entries from {} lines",
            entries.len(),
            original.len()
        );
    }
}

#[test]
fn formats_are_read() {
    let p = parse_text(
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 1234 ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\"] An application event",
        Format::Auto,
        RECEIVE,
    );
    assert_eq!(p.format, "syslog_rfc5424");
    assert_eq!(p.level, Some(Level::Info));
    assert_eq!(p.host.as_deref(), Some("mymachine.example.com"));
    assert_eq!(p.app.as_deref(), Some("evntslog"));
    assert_eq!(p.fields["sd_example_sdid@32473_iut"], "3");
    assert_eq!(p.timestamp_us, Some(1_065_910_455_003_000));

    let p = parse_text(
        "<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed",
        Format::Auto,
        RECEIVE,
    );
    assert_eq!((p.format, p.level), ("syslog_rfc3164", Some(Level::Fatal)));
    assert_eq!(p.app.as_deref(), Some("su"));
    assert_eq!(p.fields["pid"], 230);

    let p = parse_text(
        r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 503 2326 "http://www.example.com/start.html" "Mozilla/4.08""#,
        Format::Auto,
        RECEIVE,
    );
    assert_eq!(p.format, "clf");
    assert_eq!(p.level, Some(Level::Error));
    assert_eq!(p.fields["status"], 503);
    assert_eq!(p.fields["path"], "/apache_pb.gif");
    assert_eq!(p.fields["user_agent"], "Mozilla/4.08");
    assert_eq!(p.timestamp_us, Some(971_211_336_000_000));

    let p = parse_text(
        r#"time=2024-05-01T10:00:00Z level=warn msg="disk almost full" userId=42 duration_ms=12.5"#,
        Format::Auto,
        RECEIVE,
    );
    assert_eq!(p.format, "logfmt");
    assert_eq!(p.level, Some(Level::Warn));
    assert_eq!(p.fields["user_id"], 42);
    assert_eq!(p.fields["duration_ms"], 12.5);

    let p = parse_text(
        "2024-05-01 10:00:00 ERROR payment failed request_id=r-9 status=502",
        Format::Auto,
        RECEIVE,
    );
    assert_eq!((p.format, p.level), ("plain", Some(Level::Error)));
    assert_eq!(p.fields["request_id"], "r-9");
    assert_eq!(p.fields["status"], 502);

    let p = parse_text("just some words, nothing else", Format::Auto, RECEIVE);
    assert_eq!((p.timestamp_us, p.level), (None, None));
}

#[test]
fn levels_from_synonyms_numbers_and_case() {
    for (name, want) in [
        ("TRACE", Level::Debug),
        ("Warning", Level::Warn),
        ("err", Level::Error),
        ("CRITICAL", Level::Fatal),
        ("emerg", Level::Fatal),
        ("notice", Level::Info),
        ("severe", Level::Error),
        ("30", Level::Info),
        ("50", Level::Error),
        ("3", Level::Error),
        ("7", Level::Debug),
    ] {
        assert_eq!(level_from_name(name), Some(want), "{name}");
    }
    assert_eq!(level_from_name("loud"), None);
}

const JAVA: &str = "Exception in thread \"main\" java.lang.IllegalStateException: order 12345 not found\n\tat com.shop.orders.OrderService.load(OrderService.java:88)\n\tat com.shop.orders.OrderController.get(OrderController.java:41)\n\tat org.springframework.web.servlet.FrameworkServlet.service(FrameworkServlet.java:897)\nCaused by: java.sql.SQLException: connection reset\n\tat com.zaxxer.hikari.pool.HikariPool.getConnection(HikariPool.java:181)\n\t... 12 more";
const PYTHON: &str = "Traceback (most recent call last):\n  File \"/app/worker.py\", line 52, in run\n    self.handle(job)\n  File \"/app/worker.py\", line 77, in handle\n    total = job['amount'] / job['count']\n  File \"/usr/lib/python3.11/decimal.py\", line 10, in div\nZeroDivisionError: division by zero";
const GO: &str = "panic: runtime error: index out of range [5] with length 3\n\ngoroutine 1 [running]:\nmain.pick(...)\n\t/src/app/main.go:12 +0x1d\nmain.main()\n\t/src/app/main.go:20 +0x45\nexit status 2";
const NODE: &str = "TypeError: Cannot read properties of undefined (reading 'id')\n    at getUser (/srv/app/users.js:14:22)\n    at Layer.handle (/srv/app/node_modules/express/lib/router/layer.js:95:5)\n    at processTicksAndRejections (node:internal/process/task_queues:95:5)";
const DOTNET: &str = "System.NullReferenceException: Object reference not set to an instance of an object.\n   at Shop.Billing.InvoiceService.Total(Invoice invoice) in C:\\src\\Billing\\InvoiceService.cs:line 42\n   at Shop.Billing.Api.Post() in C:\\src\\Billing\\Api.cs:line 17\n   at System.Threading.ExecutionContext.Run()";
const RUST: &str = "thread 'main' panicked at src/ledger.rs:31:9:\nbalance underflow for account 7781\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace";

#[test]
fn exceptions_of_every_language_are_read() {
    let cases = [
        (
            JAVA,
            "java",
            "java.lang.IllegalStateException",
            Some("java.sql.SQLException"),
            "com.shop.orders.OrderService.load",
        ),
        (PYTHON, "python", "ZeroDivisionError", None, "handle"),
        (GO, "go", "runtime.Error", None, "main.pick"),
        (NODE, "javascript", "TypeError", None, "getUser"),
        (
            DOTNET,
            "dotnet",
            "System.NullReferenceException",
            None,
            "Shop.Billing.InvoiceService.Total",
        ),
        (RUST, "rust", "panic", None, "main"),
    ];
    for (text, language, ty, root, top_in_app) in cases {
        let e = detect(text).unwrap_or_else(|| panic!("nothing found in {language}"));
        assert_eq!(e.language, language);
        assert_eq!(e.exception_type, ty, "{language}");
        assert_eq!(e.root_cause.as_deref(), root, "{language}");
        let first_in_app = e
            .frames
            .iter()
            .find(|f| f.in_app)
            .map(|f| f.function.as_str());
        assert_eq!(first_in_app, Some(top_in_app), "{language}: {:?}", e.frames);
        assert!(e.message.is_some(), "{language}");
    }
    assert_eq!(
        detect(RUST).unwrap().message.as_deref(),
        Some("balance underflow for account 7781")
    );
    assert_eq!(detect("GET /health 200 ok"), None);
}

/// Each LogHub system's `<System>_2k.log`.
fn loghub_logs() -> Vec<String> {
    let mut logs = Vec::new();
    for system in std::fs::read_dir(loghub_dir()).unwrap() {
        let dir = system.unwrap().path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}_2k.log"))) {
            logs.push(text);
        }
    }
    logs
}

/// The marker test in front of `detect` never hides an exception: on every LogHub line, every
/// sample trace (and each of its lines alone), `detect` answers what the readers alone answer.
#[test]
fn the_marker_test_changes_no_answer() {
    let mut texts: Vec<String> = [JAVA, PYTHON, GO, NODE, DOTNET, RUST]
        .iter()
        .flat_map(|t| std::iter::once(t.to_string()).chain(t.lines().map(str::to_string)))
        .collect();
    for text in loghub_logs() {
        texts.extend(text.lines().map(str::to_string));
        // Whole runs of lines too, so that multi-line readers see neighbours.
        let lines: Vec<&str> = text.lines().collect();
        texts.extend(lines.chunks(7).map(|c| c.join("\n")));
    }
    assert!(
        texts.len() > 16 * 2000,
        "the LogHub corpus was read: {}",
        texts.len()
    );
    let mut found = 0;
    for t in &texts {
        let full = super::exception::detect_unfiltered(t);
        found += usize::from(full.is_some());
        assert_eq!(detect(t), full, "{t}");
    }
    assert!(found >= 6, "the readers found the sample traces: {found}");
}

/// Ingest reads an entry's explicit stack trace alone when its message holds no marker (and
/// through the trace cache): what `detect` finds in message and trace together. Checked with
/// LogHub lines without a marker (30 of each system) in front of every sample trace, each of
/// its lines, and LogHub runs; and the cache answers as `detect` does, first
/// time and again.
#[test]
fn a_message_without_a_marker_adds_nothing_to_its_trace() {
    use super::exception::{has_marker, TraceCache};
    let mut traces: Vec<String> = [JAVA, PYTHON, GO, NODE, DOTNET, RUST]
        .iter()
        .flat_map(|t| std::iter::once(t.to_string()).chain(t.lines().map(str::to_string)))
        .collect();
    let mut messages = vec![String::new(), "payment 7 failed".to_string()];
    for text in loghub_logs() {
        let lines: Vec<&str> = text.lines().collect();
        traces.extend(lines.chunks(50).take(2).map(|c| c.join("\n")));
        messages.extend(
            lines
                .iter()
                .filter(|l| !has_marker(l))
                .step_by(37)
                .take(30)
                .map(|l| l.to_string()),
        );
    }
    assert!(
        messages.len() > 16 * 25,
        "LogHub was read: {}",
        messages.len()
    );
    let cache = TraceCache::new(16);
    let mut found = 0;
    for trace in &traces {
        let alone = detect(trace);
        found += usize::from(alone.is_some());
        for message in &messages {
            assert_eq!(
                detect(&format!("{message}\n{trace}")),
                alone,
                "{message:?} before {trace:?}"
            );
        }
        assert_eq!(cache.detect(trace), alone, "first read");
        assert_eq!(cache.detect(trace), alone, "from the cache");
    }
    assert!(found >= 6, "the sample traces were read: {found}");
    // A trace longer than the cache keeps is read as well, every time.
    let long = format!(
        "{JAVA}\n{}",
        "\tat com.acme.Deep.call(Deep.java:1)\n".repeat(600)
    );
    assert!(long.len() > super::exception::TRACE_CACHE_TEXT_MAX);
    assert!(detect(&long).is_some());
    assert_eq!(cache.detect(&long), detect(&long));
    assert_eq!(cache.detect(&long), detect(&long));
    // With a marker in the message, the message can be the header: the two differ.
    let header = "java.lang.IllegalStateException: boom";
    let frames = "\tat com.acme.A.b(A.java:1)";
    assert!(detect(frames).is_none());
    assert!(detect(&format!("{header}\n{frames}")).is_some());
}

#[test]
fn one_fault_one_fingerprint_across_hosts_and_releases() {
    let fp = |t: &str| fingerprint(&detect(t).unwrap());
    for text in [JAVA, PYTHON, GO, NODE, DOTNET, RUST] {
        // Another release (line numbers moved), another host (paths, ids, addresses differ).
        let moved = text
            .replace(":88)", ":91)")
            .replace("line 77", "line 80")
            .replace("main.go:12 +0x1d", "main.go:14 +0x2f")
            .replace("users.js:14:22", "users.js:15:3")
            .replace("cs:line 42", "cs:line 44")
            .replace("ledger.rs:31:9", "ledger.rs:33:9")
            .replace("12345", "67890")
            .replace("7781", "1002")
            .replace("C:\\src", "D:\\build\\src");
        assert_ne!(moved, text);
        assert_eq!(fp(text), fp(&moved), "{text}");
    }
    // Different faults: another function throwing the same type, or another type.
    let elsewhere = JAVA.replace("OrderService.load", "PaymentService.charge");
    assert_ne!(fp(JAVA), fp(&elsewhere));
    let other_type = PYTHON.replace("ZeroDivisionError", "KeyError");
    assert_ne!(fp(PYTHON), fp(&other_type));
    let other_go = GO.replace("main.pick", "main.choose");
    assert_ne!(fp(GO), fp(&other_go));
    // The seed's exception_id: type and service only.
    assert_eq!(
        exception_id("TypeError", "web"),
        exception_id("TypeError", "web")
    );
    assert_ne!(
        exception_id("TypeError", "web"),
        exception_id("TypeError", "api")
    );
    assert_eq!(exception_id("TypeError", "web").len(), 16);
}

#[test]
fn multi_line_traces_fold_into_one_entry() {
    let body = format!(
        "2024-05-01 10:00:00 INFO start\n2024-05-01 10:00:01 ERROR job failed\n{JAVA}\n{PYTHON}\nnext plain line\n{GO}\n\n2024-05-01 10:00:02 INFO after\n{NODE}\n{RUST}\nplain again"
    );
    let entries = split_entries(&body, RECEIVE, 1000);
    let firsts: Vec<&str> = entries.iter().map(|e| e.lines().next().unwrap()).collect();
    assert_eq!(
        firsts,
        [
            "2024-05-01 10:00:00 INFO start",
            "2024-05-01 10:00:01 ERROR job failed",
            "Exception in thread \"main\" java.lang.IllegalStateException: order 12345 not found",
            "Traceback (most recent call last):",
            "next plain line",
            "panic: runtime error: index out of range [5] with length 3",
            // A Node error under a timestamped line is that line's (issue 25); the Rust panic
            // after it is a trace of its own.
            "2024-05-01 10:00:02 INFO after",
            "thread 'main' panicked at src/ledger.rs:31:9:",
            "plain again",
        ]
    );
    assert_eq!(entries[2], JAVA);
    assert_eq!(entries[3], PYTHON);
    assert_eq!(
        entries[6],
        format!("2024-05-01 10:00:02 INFO after\n{NODE}")
    );
    assert_eq!(entries[7], RUST);
    // An exception printed under its log line (logback, log4j) belongs to that line.
    let logback = "2024-05-01 10:00:01 ERROR c.s.Checkout - checkout failed\njava.lang.IllegalStateException: cart is empty\n\tat com.shop.Checkout.run(Checkout.java:42)\n2024-05-01 10:00:02 INFO next";
    let entries = split_entries(logback, RECEIVE, 1000);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[0].ends_with("Checkout.java:42)"));
    // A bound on lines per entry.
    let many = format!("head\n{}", "  frame\n".repeat(50));
    assert_eq!(split_entries(&many, RECEIVE, 10).len(), 6);
}

/// Issue 25: the trace another runtime prints under a log line (Python's
/// `logging.exception()`, a Go panic, Node's `console.error(err)`, .NET's `Unhandled
/// exception.`) is one entry with that line, as logback's Java exceptions are: the line's
/// timestamp and level, the trace's exception.
#[test]
fn a_trace_under_its_log_line_is_one_entry_with_it() {
    let python = "Traceback (most recent call last):\n  File \"/srv/pay/worker.py\", line 88, in handle\n    amount = order[\"amount\"]\nKeyError: 'amount'";
    let dotnet = "Unhandled exception. System.InvalidOperationException: Sequence contains no elements\n   at System.Linq.ThrowHelper.ThrowNoElementsException()\n   at Shop.Orders.Picker.First(List`1 items) in /src/Orders/Picker.cs:line 12";
    let cases = [
        (
            "2026-12-06T18:26:31.500Z ERROR payment worker crashed",
            python,
            "KeyError",
            Level::Error,
        ),
        (
            "2026-12-06 18:26:31,500 WARN picker giving up",
            GO,
            "runtime.Error",
            Level::Warn,
        ),
        (
            "2026-12-06T18:26:31Z ERROR request failed",
            NODE,
            "TypeError",
            Level::Error,
        ),
        (
            "2026-12-06T18:26:31.500+01:00 FATAL host stopping",
            dotnet,
            "System.InvalidOperationException",
            Level::Fatal,
        ),
        (
            "2026-12-06T18:26:31.500Z ERROR ledger task died",
            RUST,
            "panic",
            Level::Error,
        ),
    ];
    for (line, trace, ty, level) in cases {
        let body = format!("{line}\n{trace}\n2026-12-06T18:26:40Z INFO next line\nnot a trace");
        let entries = split_entries(&body, RECEIVE, 1000);
        assert_eq!(entries.len(), 3, "{ty}: {entries:#?}");
        let expected = format!("{line}\n{}", text_lines(trace).join("\n"));
        assert_eq!(entries[0], expected, "{ty}");
        assert_eq!(entries[1], "2026-12-06T18:26:40Z INFO next line");
        let parsed = parse_text(&entries[0], Format::Auto, RECEIVE);
        assert_eq!(parsed.level, Some(level), "{ty}");
        assert_eq!(
            parsed.timestamp_us,
            parse_text(line, Format::Auto, RECEIVE).timestamp_us,
            "{ty}"
        );
        assert!(parsed.timestamp_us.is_some(), "{ty}");
        let e = detect(&entries[0]).unwrap_or_else(|| panic!("{ty}: no exception"));
        assert_eq!(e.exception_type, ty);
        assert!(!e.frames.is_empty(), "{ty}");
    }
    // The issue's example, exactly: one entry with its message, level, timestamp, exception.
    let example = "2026-12-06T18:26:31.500Z ERROR payment worker crashed\nTraceback (most recent call last):\n  File \"/srv/pay/worker.py\", line 88, in handle\n    amount = order[\"amount\"]\nKeyError: 'amount'\n";
    let entries = split_entries(example, RECEIVE, 1000);
    assert_eq!(entries, [example.trim_end()]);
    let e = detect(&entries[0]).unwrap();
    assert_eq!(
        (e.exception_type.as_str(), e.message.as_deref()),
        ("KeyError", Some("'amount'"))
    );
    // Only the first trace under a line is its own; a trace under an untimed line, and a
    // second trace after the first, start entries of their own.
    let body = format!("2026-12-06T18:26:31Z ERROR a\n{python}\n{NODE}\nplain words\n{GO}");
    let firsts: Vec<String> = split_entries(&body, RECEIVE, 1000)
        .iter()
        .map(|e| e.lines().next().unwrap().to_string())
        .collect();
    assert_eq!(
        firsts,
        [
            "2026-12-06T18:26:31Z ERROR a",
            "TypeError: Cannot read properties of undefined (reading 'id')",
            "plain words",
            "panic: runtime error: index out of range [5] with length 3",
        ]
    );
}

#[test]
fn keys_are_normalised() {
    for (k, want) in [
        ("userId", "user_id"),
        ("traceId", "trace_id"),
        ("http.status_code", "status"),
        ("X-Request-Id", "request_id"),
        ("elapsed_ms", "duration_ms"),
        ("cart.items", "cart_items"),
    ] {
        assert_eq!(normalise_key(k), want, "{k}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, ProptestConfig};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn no_input_panics(text in any::<String>()) {
            for f in [Format::Auto, Format::Logfmt, Format::Syslog, Format::Clf, Format::Plain] {
                let _ = parse_text(&text, f, RECEIVE);
            }
            prop_assert_eq!(detect(&text), super::super::exception::detect_unfiltered(&text));
            let _ = time::at_start(&text, RECEIVE);
        }

        #[test]
        fn folding_keeps_every_line_in_order(lines in proptest::collection::vec("[ -~\t\r]{0,40}", 0..30)) {
            let body = lines.join("\n");
            let entries = split_entries(&body, RECEIVE, 7);
            let original = text_lines(&body);
            let rejoined: Vec<&str> = entries.iter().flat_map(|e| e.split('\n')).collect();
            prop_assert_eq!(rejoined, original);
            for e in &entries {
                prop_assert!(e.split('\n').count() <= 7);
            }
        }

        #[test]
        fn structured_lines_never_panic(
            prefix in "(<[0-9]{1,3}>)?(1 )?",
            ts in "[0-9]{2,4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}[ T][0-9]{1,2}:[0-9]{2}:[0-9]{2}([.,][0-9]{1,9})?",
            rest in "[ -~]{0,60}",
        ) {
            let line = format!("{prefix}{ts} {rest}");
            let _ = parse_text(&line, Format::Auto, RECEIVE);
        }
    }
}
