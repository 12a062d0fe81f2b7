//! The HTTP side of `veil admin`: requests to a node and what their failures mean.

use std::time::Duration;

use serde_json::Value;

/// Why an admin command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No node answers at the address.
    #[error("{0}")]
    Unreachable(String),
    /// The node refused the request (its own words).
    #[error("{0}")]
    Refused(String),
    /// The node failed, cannot do it now, or answered something Veil does not.
    #[error("{0}")]
    Failed(String),
    /// The cluster refused a membership change that would cost a shard a replica (too few
    /// members left, the last member, a removal of a node that is up).
    #[error("{0}")]
    MembershipRefused(String),
}

/// The error codes of a refused membership change (exit code 6).
const MEMBERSHIP_REFUSALS: [&str; 3] = ["too_few_members", "last_member", "node_up"];

impl AdminError {
    /// The exit code (see the module's documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Refused(_) => 1,
            AdminError::Unreachable(_) => 3,
            AdminError::Failed(_) => 4,
            AdminError::MembershipRefused(_) => 6,
        }
    }
}

/// A node's HTTP API.
pub struct Client {
    http: reqwest::Client,
    addr: String,
}

/// What `cluster status` reads of a node's `/metrics`.
pub struct NodeFigures {
    /// RocksDB SST bytes and index bytes.
    pub data_bytes: u64,
    /// Entries ingest accepted so far.
    pub entries: u64,
}

impl Client {
    /// A client of the node at `addr` (HOST:PORT), each request bounded by `timeout_ms`.
    pub fn new(addr: &str, timeout_ms: u64) -> Result<Client, AdminError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .build()
            .map_err(|e| AdminError::Failed(format!("cannot make an HTTP client: {e}")))?;
        Ok(Client {
            http,
            addr: addr.to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), AdminError> {
        let response = request.send().await.map_err(|e| {
            AdminError::Unreachable(format!(
                "no Veil node answers at {} ({}); start one, or point --addr (VEIL_ADDR) at a member's HTTP address",
                self.addr,
                root_cause(&e)
            ))
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| {
            AdminError::Failed(format!("the answer from {} broke off: {e}", self.addr))
        })?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| {
                AdminError::Failed(format!(
                    "{} answered something that is not Veil's JSON (HTTP {status}); is --addr a Veil node's HTTP address?",
                    self.addr
                ))
            })?
        };
        Ok((status, value))
    }

    async fn expect_ok(&self, request: reqwest::RequestBuilder) -> Result<Value, AdminError> {
        let (status, value) = self.send(request).await?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value["error"]["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| value.to_string());
        // One line, whatever the node's message holds (a regex error draws a caret below).
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        let code = value["error"]["code"].as_str().unwrap_or("error");
        let text = format!("{} refused: {code}: {message} (HTTP {status})", self.addr);
        Err(if MEMBERSHIP_REFUSALS.contains(&code) {
            AdminError::MembershipRefused(text)
        } else if (400..500).contains(&status) {
            AdminError::Refused(text)
        } else {
            AdminError::Failed(format!("{text}; retry, or ask another node with --addr"))
        })
    }

    /// `GET path`, expecting a 2xx.
    pub async fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.expect_ok(self.http.get(self.url(path))).await
    }

    /// `GET path`, whatever its status (health answers 503 when unavailable).
    pub async fn get_any_status(&self, path: &str) -> Result<Value, AdminError> {
        Ok(self.send(self.http.get(self.url(path))).await?.1)
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, AdminError> {
        self.expect_ok(self.http.post(self.url(path)).json(body))
            .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, AdminError> {
        self.expect_ok(self.http.patch(self.url(path)).json(body))
            .await
    }

    /// A client of another node, with the same settings.
    pub fn at(&self, addr: &str) -> Client {
        Client {
            http: self.http.clone(),
            addr: addr.to_string(),
        }
    }

    /// The address this client asks.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, AdminError> {
        self.expect_ok(self.http.delete(self.url(path))).await
    }

    /// Data size and ingested entries from the `/metrics` of the node at `addr`.
    pub async fn metrics_of(&self, addr: &str) -> Result<NodeFigures, AdminError> {
        let text = self
            .http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .map_err(|e| AdminError::Unreachable(format!("{addr}: {}", root_cause(&e))))?
            .text()
            .await
            .map_err(|e| AdminError::Failed(format!("{addr}: {e}")))?;
        let sum = |name: &str| -> u64 {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.split(['{', ' ']).next() == Some(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        let accepted = text
            .lines()
            .find_map(|l| l.strip_prefix("veil_ingest_entries_total{outcome=\"accepted\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(NodeFigures {
            data_bytes: sum("veil_rocksdb_sst_bytes") + sum("veil_shard_index_bytes"),
            entries: accepted,
        })
    }
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
