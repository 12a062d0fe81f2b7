//! `veil pii mask`: the server's PII engine over standard input, one JSON line out per line in.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};
use veil_node::pii::custom::PatternStore;
use veil_node::pii::keys::KeyRing;
use veil_node::pii::{Findings, Masker, Strategies, Unmasked};

/// `veil pii …` commands.
#[derive(clap::Subcommand)]
pub enum PiiCommand {
    /// Masks JSON lines (`{"message": …}`) or, with --text, plain lines read from stdin, and
    /// writes `{"message": <masked>, "pii": [<types>]}` per line, in order; a line that cannot
    /// be read gets `{"error": …}` in its place.
    Mask(MaskArgs),
}

/// Flags of `veil pii mask`.
#[derive(clap::Args)]
pub struct MaskArgs {
    /// Read plain text lines instead of JSON objects.
    #[arg(long)]
    text: bool,
    /// Key file to hash with (the server's, for the same tokens); without it and without
    /// VEIL_PII_HMAC_KEY/VEIL_PII_AES_KEY, a throwaway key.
    #[arg(long, env = "VEIL_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Masking strategies, as for `veil serve --pii-strategies`.
    #[arg(long, env = "VEIL_PII_STRATEGIES")]
    pii_strategies: Option<String>,
    /// Also apply the custom patterns stored in this data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Runs a `veil pii` command.
pub fn run(command: PiiCommand) -> anyhow::Result<()> {
    match command {
        PiiCommand::Mask(args) => mask(args),
    }
}

fn mask(args: MaskArgs) -> anyhow::Result<()> {
    let keys = match KeyRing::from_env()? {
        Some(k) => k,
        None => match &args.key_file {
            // An existing key file only: this command never creates one.
            Some(path) => {
                std::fs::metadata(path).with_context(|| format!("key file {}", path.display()))?;
                KeyRing::load_or_create(path)?
            }
            None => KeyRing::throwaway()?,
        },
    };
    let mut strategies = Strategies::default();
    if let Some(s) = &args.pii_strategies {
        strategies
            .apply(s)
            .map_err(|e| anyhow::anyhow!("--pii-strategies: {e}"))?;
    }
    // The cluster's patterns as this node last applied them, and an older directory's own.
    let custom = match &args.data_dir {
        Some(dir) => {
            let mut all = crate::cluster::MetaStore::open(&dir.join("cluster"))?
                .state()
                .pii_patterns;
            for p in PatternStore::open(PatternStore::path_in(dir))?.patterns() {
                if !all.iter().any(|q| q.pattern_id == p.pattern_id) {
                    all.push(p.clone());
                }
            }
            all
        }
        None => Vec::new(),
    };
    let masker = Masker::new(strategies, &keys, &custom)?;
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut reader = std::io::BufReader::new(stdin);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .context("reading stdin")?
            == 0
        {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let answer = match line_message(&buf, args.text) {
            Ok(message) => {
                let mut findings = Findings::default();
                let masked = masker.mask(message, &mut findings);
                json!({"message": masked, "pii": findings.names()})
            }
            Err(e) => json!({"error": e}),
        };
        serde_json::to_writer(&mut out, &answer)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn line_message(line: &[u8], text: bool) -> Result<Unmasked, String> {
    let line = std::str::from_utf8(line).map_err(|_| "line is not UTF-8".to_string())?;
    if text {
        return Ok(Unmasked(line.to_string()));
    }
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(mut m)) => match m.remove("message") {
            Some(Value::String(s)) => Ok(Unmasked(s)),
            Some(_) => Err("message is not a string".into()),
            None => Err("the object has no message".into()),
        },
        Ok(_) => Err("line is not a JSON object".into()),
        Err(e) => Err(format!("line is not valid JSON: {e}")),
    }
}
