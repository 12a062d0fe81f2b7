//! Exceptions in log text: Java (with `Caused by:` chains), Python tracebacks, Go panics,
//! Node.js errors, .NET exceptions and Rust panics. Finds the type, the message and the frames,
//! and computes two ids:
//!
//! - `exception_id = hash(exception_type, service)`, the seed's grouping (16 hex digits of
//!   xxh3-64 over `service ‖ 0 ‖ type`);
//! - `fingerprint`, finer: the type (and a chain's root cause) plus the top three in-app frames,
//!   with line numbers, numbers, ids and addresses stripped, so the same fault groups together
//!   across hosts and releases and two faults of one type in different code do not. Without
//!   frames, the message with numbers, ids and quoted values stripped stands in for them.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

/// A stack frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The function (with its class or module).
    pub function: String,
    /// The file, if the trace names it.
    pub file: Option<String>,
    /// The line, if the trace names it.
    pub line: Option<u32>,
    /// False for frames of the runtime, standard library or third-party packages.
    pub in_app: bool,
}

/// An exception found in text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionInfo {
    /// `java`, `python`, `go`, `javascript`, `dotnet` or `rust`.
    pub language: &'static str,
    /// The type (`java.lang.IllegalStateException`, `ValueError`, `panic`).
    pub exception_type: String,
    /// The message, if any.
    pub message: Option<String>,
    /// For chains (`Caused by:`), the innermost cause's type.
    pub root_cause: Option<String>,
    /// The frames, innermost (where it was thrown) first.
    pub frames: Vec<Frame>,
}

struct Patterns {
    java_header: Regex,
    java_frame: Regex,
    dotnet_frame: Regex,
    py_frame: Regex,
    py_exc: Regex,
    js_header: Regex,
    js_frame: Regex,
    go_panic: Regex,
    go_func: Regex,
    go_file: Regex,
    rust_panic: Regex,
    rust_frame: Regex,
    strip: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("built-in exception pattern");
        Patterns {
            java_header: re(r#"^(?:Exception in thread "[^"]*" |Unhandled exception\. |Caused by: )?([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+)(?::\s?(.*))?$"#),
            java_frame: re(r"^\s+at ([\w$.<>/]+)\(([^):]*)(?::(\d+))?\)\s*$"),
            dotnet_frame: re(r"^\s+at ([\w.<>`$\[\], |]+?)\((.*?)\)(?: in (.+):line (\d+))?\s*$"),
            py_frame: re(r#"^\s+File "([^"]+)", line (\d+)(?:, in (.+))?$"#),
            py_exc: re(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$"),
            js_header: re(r"^(?:Uncaught )?([A-Z][A-Za-z]*(?:Error|Exception))(?::\s?(.*))?$"),
            js_frame: re(r"^\s+at (?:(.+?) \()?(.+?):(\d+):(\d+)\)?\s*$"),
            go_panic: re(r"^panic: (.*?)(?: \[recovered\])?$"),
            go_func: re(r"^([\w./*()-]+?)\((?:.*)\)$"),
            go_file: re(r"^\t(.+?):(\d+)(?: \+0x[0-9a-f]+)?$"),
            rust_panic: re(r"^thread '([^']*)' panicked at (?:'(.*)', )?(.+?):(\d+):(\d+):?$"),
            rust_frame: re(r"^\s+\d+: (.+)$"),
            strip: re(r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}|\d+|'[^']*'|\x22[^\x22]*\x22"),
        }
    })
}

/// Which multi-line trace a line opens, for folding text into entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trace {
    /// After `Traceback (most recent call last):`, until the exception line.
    Python,
    /// After `panic:` or `goroutine N [`.
    Go,
    /// Right after `thread '…' panicked at …`: the next line is the message.
    RustMessage,
    /// The rest of a Rust panic: notes and an indented backtrace.
    Rust,
}

impl Trace {
    /// The trace a line opens, if any.
    pub fn starting(line: &str) -> Option<Trace> {
        if line.starts_with("Traceback (most recent call last):") {
            Some(Trace::Python)
        } else if line.starts_with("panic: ") || line.starts_with("goroutine ") {
            Some(Trace::Go)
        } else if line.starts_with("thread '") && line.contains("' panicked at ") {
            Some(Trace::RustMessage)
        } else {
            None
        }
    }

    /// True when `line` belongs to this trace.
    pub fn continues(self, line: &str) -> bool {
        match self {
            // Frames are indented; the exception line that ends it is not, and belongs to it.
            Trace::Python => true,
            Trace::Go => {
                line.starts_with('\t')
                    || line.starts_with("goroutine ")
                    || line.starts_with("created by ")
                    || line.starts_with("[signal ")
                    || line.starts_with("exit status")
                    || patterns().go_func.is_match(line)
            }
            Trace::RustMessage => true,
            Trace::Rust => {
                line.starts_with(' ')
                    || line.starts_with("note:")
                    || line.starts_with("stack backtrace:")
            }
        }
    }

    /// The state after `line`: a Python traceback ends with its exception line.
    pub fn after(self, line: &str) -> Option<Trace> {
        match self {
            Trace::Python => {
                let ends = !line.starts_with([' ', '\t'])
                    && !line.starts_with("Traceback")
                    && !line.starts_with("During handling")
                    && !line.starts_with("The above exception");
                (!ends).then_some(self)
            }
            Trace::RustMessage | Trace::Rust => Some(Trace::Rust),
            Trace::Go => Some(self),
        }
    }
}

/// True for a line that names an exception the way Java, Kotlin or .NET print one
/// (`java.lang.IllegalStateException: …`, `Caused by: …`), not indented.
pub fn is_header(line: &str) -> bool {
    if line.starts_with([' ', '\t']) || line.starts_with("Exception in thread") {
        return false;
    }
    patterns().java_header.captures(line).is_some_and(|c| {
        let t = &c[1];
        let last = t.rsplit('.').next().unwrap_or(t);
        last.ends_with("Exception") || last.ends_with("Error") || last.ends_with("Throwable")
    })
}

/// True for a line that opens a trace printed under the log line it belongs to: a Python
/// traceback, a Go or Rust panic ([`Trace::starting`]), or a JavaScript error
/// (`TypeError: …`) or JVM/.NET exception header (also `Unhandled exception. System.…`) with an
/// indented `at` frame on the `next` line.
pub fn opens_trace(line: &str, next: Option<&str>) -> bool {
    if Trace::starting(line).is_some() {
        return true;
    }
    let framed =
        next.is_some_and(|n| n.starts_with([' ', '\t']) && n.trim_start().starts_with("at "));
    framed && (is_header(line) || patterns().js_header.is_match(line))
}

/// Finds an exception in `text` (a message, a stack trace, or both joined by a newline).
pub fn detect(text: &str) -> Option<ExceptionInfo> {
    if !has_marker(text) {
        return None;
    }
    detect_unfiltered(text)
}

/// Every exception [`detect`] finds contains one of these: each reader's header needs one
/// (Python's `Traceback (most recent call last):`, Go's `panic: `, Rust's `panicked at`, a
/// JavaScript or JVM/.NET type ending in `Error`, `Exception` or `Throwable`). Testing for them
/// first spares the line splitting and the regexes for the messages that hold none (99.4 % of
/// LogHub's lines; `detect` was ~3 % of ingest CPU on `veil bench`'s template mix).
const MARKERS: [&str; 5] = [
    "Traceback (most recent call last):",
    "panic",
    "Error",
    "Exception",
    "Throwable",
];

/// True when `text` holds one of the markers every exception [`detect`] finds contains: a text
/// without one is neither a header nor (since frames are read only after a header) part of an
/// exception, so `detect(format!("{message}\n{trace}"))` equals `detect(trace)` when the
/// message has none (tested).
pub fn has_marker(text: &str) -> bool {
    MARKERS.iter().any(|m| text.contains(m))
}

/// The longest trace text [`TraceCache`] keeps the reading of.
pub const TRACE_CACHE_TEXT_MAX: usize = 16 << 10;

/// What [`detect`] found in recent stack traces, by a 128-bit hash of the text: services send
/// the same trace (same type, same frames, same lines) again and again, and reading one is
/// several regex passes over its lines (~3 % of ingest CPU on `veil bench`'s mix, where one
/// entry in five carries a trace). At most `entries` traces of at most
/// [`TRACE_CACHE_TEXT_MAX`] bytes each (longer ones are read every time), so what it holds
/// stays under about `entries` × 16 KiB (16 MB by default); when full it starts over.
pub struct TraceCache {
    entries: usize,
    found: std::sync::Mutex<HashMap<u128, Option<ExceptionInfo>>>,
}

impl TraceCache {
    /// A cache of at most `entries` traces (0: [`Self::detect`] always reads the text).
    pub fn new(entries: usize) -> TraceCache {
        TraceCache {
            entries,
            found: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// [`detect`], answered from the cache when `text` was read recently.
    pub fn detect(&self, text: &str) -> Option<ExceptionInfo> {
        if !has_marker(text) {
            return None;
        }
        if self.entries == 0 || text.len() > TRACE_CACHE_TEXT_MAX {
            return detect_unfiltered(text);
        }
        let key = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
        // A panic while holding the lock leaves a map that is still a valid cache.
        let lock = || self.found.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = lock().get(&key) {
            return found.clone();
        }
        let found = detect_unfiltered(text);
        let mut cache = lock();
        if cache.len() >= self.entries {
            cache.clear();
        }
        cache.insert(key, found.clone());
        found
    }
}

/// [`detect`] without the marker test: the oracle its tests compare against.
pub(crate) fn detect_unfiltered(text: &str) -> Option<ExceptionInfo> {
    let lines: Vec<&str> = text.lines().collect();
    python(&lines)
        .or_else(|| go(&lines))
        .or_else(|| rust(&lines))
        .or_else(|| javascript(&lines))
        .or_else(|| jvm_or_dotnet(&lines))
}

fn python(lines: &[&str]) -> Option<ExceptionInfo> {
    let p = patterns();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last):"))?;
    let mut frames = Vec::new();
    let mut exc = None;
    for l in &lines[start + 1..] {
        if let Some(c) = p.py_frame.captures(l) {
            let file = c[1].to_string();
            let in_app = !(file.contains("/lib/python")
                || file.contains("site-packages")
                || file.contains("dist-packages")
                || file.starts_with('<'));
            frames.push(Frame {
                function: c.get(3).map_or("<module>", |m| m.as_str()).to_string(),
                line: c[2].parse().ok(),
                file: Some(file),
                in_app,
            });
        } else if !l.starts_with([' ', '\t']) {
            if let Some(c) = p.py_exc.captures(l) {
                exc = Some((c[1].to_string(), c.get(2).map(|m| m.as_str().to_string())));
                break;
            }
        }
    }
    let (exception_type, message) = exc?;
    // Python prints the innermost frame last.
    frames.reverse();
    Some(ExceptionInfo {
        language: "python",
        exception_type,
        message,
        root_cause: None,
        frames,
    })
}

fn go(lines: &[&str]) -> Option<ExceptionInfo> {
    let p = patterns();
    let (start, c) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| p.go_panic.captures(l).map(|c| (i, c)))?;
    let message = c[1].to_string();
    let exception_type = if message.starts_with("runtime error:") {
        "runtime.Error".to_string()
    } else {
        "panic".to_string()
    };
    let mut frames = Vec::new();
    let rest = &lines[start + 1..];
    let mut i = 0;
    while i < rest.len() {
        if let Some(f) = p.go_func.captures(rest[i]) {
            let function = f[1].to_string();
            let (file, line) = match rest.get(i + 1).and_then(|n| p.go_file.captures(n)) {
                Some(fc) => {
                    i += 1;
                    (Some(fc[1].to_string()), fc[2].parse().ok())
                }
                None => (None, None),
            };
            let in_app = !(function.starts_with("runtime.")
                || function.starts_with("panic(")
                || file
                    .as_deref()
                    .is_some_and(|f| f.contains("/go/src/") || f.contains("/pkg/mod/")));
            frames.push(Frame {
                function,
                file,
                line,
                in_app,
            });
        }
        i += 1;
    }
    Some(ExceptionInfo {
        language: "go",
        exception_type,
        message: Some(message),
        root_cause: None,
        frames,
    })
}

fn rust(lines: &[&str]) -> Option<ExceptionInfo> {
    let p = patterns();
    let (start, c) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| p.rust_panic.captures(l).map(|c| (i, c)))?;
    let message = match c.get(2) {
        Some(m) => Some(m.as_str().to_string()),
        None => lines
            .get(start + 1)
            .filter(|l| !l.starts_with("note:") && !l.starts_with("stack backtrace:"))
            .map(|l| l.to_string()),
    };
    let mut frames = vec![Frame {
        function: c[1].to_string(),
        file: Some(c[3].to_string()),
        line: c[4].parse().ok(),
        in_app: true,
    }];
    for l in &lines[start + 1..] {
        if let Some(f) = p.rust_frame.captures(l) {
            let function = f[1].trim().to_string();
            let in_app = !(function.starts_with("std::")
                || function.starts_with("core::")
                || function.starts_with("alloc::")
                || function.starts_with("rust_")
                || function.starts_with("__"));
            frames.push(Frame {
                function,
                file: None,
                line: None,
                in_app,
            });
        }
    }
    Some(ExceptionInfo {
        language: "rust",
        exception_type: "panic".into(),
        message,
        root_cause: None,
        frames,
    })
}

fn javascript(lines: &[&str]) -> Option<ExceptionInfo> {
    let p = patterns();
    let (start, c) = lines.iter().enumerate().find_map(|(i, l)| {
        let c = p.js_header.captures(l.trim_start())?;
        lines
            .get(i + 1)
            .is_some_and(|n| p.js_frame.is_match(n))
            .then_some((i, c))
    })?;
    let mut frames = Vec::new();
    for l in &lines[start + 1..] {
        let Some(f) = p.js_frame.captures(l) else {
            break;
        };
        let file = f[2].to_string();
        let in_app = !(file.starts_with("node:")
            || file.contains("node_modules")
            || file.starts_with("internal/"));
        frames.push(Frame {
            function: f.get(1).map_or("<anonymous>", |m| m.as_str()).to_string(),
            line: f[3].parse().ok(),
            file: Some(file),
            in_app,
        });
    }
    Some(ExceptionInfo {
        language: "javascript",
        exception_type: c[1].to_string(),
        message: c.get(2).map(|m| m.as_str().to_string()),
        root_cause: None,
        frames,
    })
}

fn jvm_or_dotnet(lines: &[&str]) -> Option<ExceptionInfo> {
    let p = patterns();
    let is_type = |t: &str| {
        let last = t.rsplit('.').next().unwrap_or(t);
        last.ends_with("Exception") || last.ends_with("Error") || last.ends_with("Throwable")
    };
    let mut header: Option<(String, Option<String>)> = None;
    let mut root_cause = None;
    let mut frames = Vec::new();
    let mut dotnet = false;
    let mut in_cause = false;
    for l in lines {
        let trimmed = l.trim_start();
        if let Some(c) = p.java_header.captures(trimmed) {
            if is_type(&c[1]) && !l.starts_with([' ', '\t']) {
                let t = c[1].to_string();
                if header.is_none() {
                    dotnet |= t.starts_with("System.") || t.starts_with("Microsoft.");
                    header = Some((t, c.get(2).map(|m| m.as_str().to_string())));
                } else if trimmed.starts_with("Caused by: ") || trimmed.starts_with("---> ") {
                    root_cause = Some(t);
                    in_cause = true;
                }
                continue;
            }
        }
        if header.is_none() || in_cause {
            continue;
        }
        if let Some(c) = p.java_frame.captures(l) {
            let function = c[1].to_string();
            frames.push(Frame {
                in_app: !jvm_library(&function),
                file: Some(c[2].to_string()),
                line: c.get(3).and_then(|m| m.as_str().parse().ok()),
                function,
            });
        } else if let Some(c) = p.dotnet_frame.captures(l) {
            dotnet = true;
            let function = c[1].trim().to_string();
            frames.push(Frame {
                in_app: !(function.starts_with("System.") || function.starts_with("Microsoft.")),
                file: c.get(3).map(|m| m.as_str().to_string()),
                line: c.get(4).and_then(|m| m.as_str().parse().ok()),
                function,
            });
        }
    }
    let (exception_type, message) = header?;
    Some(ExceptionInfo {
        language: if dotnet { "dotnet" } else { "java" },
        exception_type,
        message,
        root_cause,
        frames,
    })
}

fn jvm_library(function: &str) -> bool {
    [
        "java.",
        "javax.",
        "jdk.",
        "sun.",
        "com.sun.",
        "kotlin.",
        "scala.",
        "org.springframework.",
        "org.apache.",
        "io.netty.",
        "reactor.",
        "org.junit.",
        "org.hibernate.",
    ]
    .iter()
    .any(|p| function.starts_with(p))
}

/// The seed's exception id: 16 hex digits of xxh3-64 over `service ‖ 0 ‖ type` (the shard
/// counts exceptions under the same id).
pub fn exception_id(exception_type: &str, service: &str) -> String {
    veil_shard::exceptions::exception_id_string(exception_type, service)
}

/// Strips what varies between occurrences of one fault: numbers, hex addresses, UUIDs and
/// quoted values.
fn normalise(s: &str) -> String {
    patterns().strip.replace_all(s, "").into_owned()
}

/// The fingerprint of an exception (16 hex digits), see the module documentation.
pub fn fingerprint(info: &ExceptionInfo) -> String {
    let mut key = String::new();
    key.push_str(&info.exception_type);
    key.push('\n');
    if let Some(root) = &info.root_cause {
        key.push_str(root);
        key.push('\n');
    }
    let in_app: Vec<&Frame> = info.frames.iter().filter(|f| f.in_app).collect();
    let chosen: Vec<&Frame> = if in_app.is_empty() {
        info.frames.iter().take(3).collect()
    } else {
        in_app.into_iter().take(3).collect()
    };
    if chosen.is_empty() {
        key.push_str(&normalise(info.message.as_deref().unwrap_or("")));
    }
    for f in chosen {
        key.push_str(&normalise(&f.function));
        key.push('\n');
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}
