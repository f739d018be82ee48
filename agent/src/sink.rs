//! Where findings go: JSON lines on stdout (the default), appended to a file
//! (created 0600), and optionally POSTed to a webhook.
//!
//! [`Sinks::emit`] serialises a finding once and hands the line to every
//! sink. Stdout and the file are buffered writes on the caller's thread
//! (call [`Sinks::flush`] after a batch); the webhook never blocks the
//! caller: lines go into a bounded queue with `try_send`, a background task
//! POSTs them in batches with bounded retries, and whatever cannot be queued
//! or delivered is dropped and counted (`imagewarden_sink_dropped_total`).
//!
//! The webhook speaks plain HTTP/1.1 (`http://` only, no TLS): point it at a
//! collector on the node or in the cluster network, or at a TLS-terminating
//! relay.
use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::TcpStream, sync::mpsc, task::JoinHandle};
use tracing::{debug, warn};

use crate::metrics::{Metrics, SinkLabel};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("findings file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("webhook URL {url:?}: {reason}")]
    WebhookUrl { url: String, reason: String },
    #[error("the webhook sink needs a tokio runtime: {0}")]
    NoRuntime(String),
}

/// Lines the webhook queue holds. A finding line is ~0.5 KiB, so 1,024 is
/// ~0.5 MiB at most: enough to ride out a webhook that is down for the few
/// seconds of its retries at a realistic finding rate (findings are denials,
/// not every exec), small enough that a dead webhook costs little memory.
/// Beyond it lines are dropped and counted.
pub const WEBHOOK_QUEUE_LINES: usize = 1024;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http://host[:port]/path`.
    pub url: String,
    /// Bounded queue (see [`WEBHOOK_QUEUE_LINES`]).
    pub queue_lines: usize,
    /// Lines sent per POST at most.
    pub max_batch_lines: usize,
    /// Retries after the first attempt of a batch; then the batch is dropped.
    pub max_retries: u32,
    /// First backoff, doubled after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Connect and request, per attempt.
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn new(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            queue_lines: WEBHOOK_QUEUE_LINES,
            max_batch_lines: 256,
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Which sinks to open.
#[derive(Debug, Clone, Default)]
pub struct SinkConfig {
    /// JSON lines on stdout (the contract's default).
    pub stdout: bool,
    /// Append JSON lines to this file (created 0600).
    pub file: Option<PathBuf>,
    pub webhook: Option<WebhookConfig>,
}

impl SinkConfig {
    /// Stdout only.
    pub fn stdout() -> Self {
        SinkConfig {
            stdout: true,
            ..Default::default()
        }
    }
}

struct LineSink {
    label: SinkLabel,
    out: Mutex<BufWriter<Box<dyn Write + Send>>>,
}

impl LineSink {
    fn new(label: SinkLabel, w: Box<dyn Write + Send>) -> Self {
        // 64 KiB: a batch of a few hundred findings costs one write.
        LineSink {
            label,
            out: Mutex::new(BufWriter::with_capacity(64 * 1024, w)),
        }
    }

    fn write(&self, line: &[u8], metrics: &Metrics) {
        let Ok(mut out) = self.out.lock() else { return };
        match out.write_all(line) {
            Ok(()) => metrics.sink_line(self.label),
            Err(e) => {
                metrics.sink_error(self.label);
                metrics.sink_dropped(self.label, 1);
                warn!(sink = self.label.as_str(), "writing a finding: {e}");
            }
        }
    }

    fn flush(&self, metrics: &Metrics) {
        let Ok(mut out) = self.out.lock() else { return };
        if let Err(e) = out.flush() {
            metrics.sink_error(self.label);
            warn!(sink = self.label.as_str(), "flushing findings: {e}");
        }
    }
}

/// Opens `path` for appending, creating it with mode 0600.
pub fn open_findings_file(path: &Path) -> Result<std::fs::File, SinkError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SinkError::File {
            path: path.to_path_buf(),
            source,
        })
}

/// The webhook's producer side.
pub struct WebhookSink {
    tx: mpsc::Sender<Bytes>,
    worker: JoinHandle<()>,
}

#[derive(Debug)]
struct Target {
    authority: String,
    host: String,
    port: u16,
    uri: Uri,
}

fn parse_url(url: &str) -> Result<Target, SinkError> {
    let bad = |reason: &str| SinkError::WebhookUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported (plain http only; use a TLS-terminating relay)",
            ))
        }
        _ => return Err(bad("must start with http://")),
    }
    let auth = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    if auth.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = auth.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let path_uri: Uri = path
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    Ok(Target {
        authority: auth.as_str().to_string(),
        host,
        port,
        uri: path_uri,
    })
}

enum Attempt {
    Delivered,
    /// Worth retrying (connection error, timeout, 408, 429, 5xx).
    Retry(String),
    /// Will not get better (other 4xx).
    Permanent(String),
}

async fn post(target: &Target, body: Bytes, timeout: Duration) -> Attempt {
    let fut = async {
        let stream = match TcpStream::connect((target.host.as_str(), target.port)).await {
            Ok(s) => s,
            Err(e) => return Attempt::Retry(format!("connect: {e}")),
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => return Attempt::Retry(format!("handshake: {e}")),
            };
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::POST)
            .uri(target.uri.clone())
            .header(header::HOST, target.authority.as_str())
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(
                header::USER_AGENT,
                concat!("imagewarden/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Permanent(format!("request: {e}")),
        };
        let res = sender.send_request(req).await;
        conn.abort();
        match res {
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            Ok(r) => {
                let s = r.status();
                if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 {
                    Attempt::Retry(format!("status {s}"))
                } else {
                    Attempt::Permanent(format!("status {s}"))
                }
            }
            Err(e) => Attempt::Retry(format!("request: {e}")),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(a) => a,
        Err(_) => Attempt::Retry(format!("timed out after {timeout:?}")),
    }
}

async fn webhook_worker(
    cfg: WebhookConfig,
    target: Target,
    mut rx: mpsc::Receiver<Bytes>,
    metrics: Metrics,
) {
    let max_batch = cfg.max_batch_lines.max(1);
    let mut batch: Vec<Bytes> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        let body: Bytes = batch.concat().into();
        let mut backoff = cfg.initial_backoff;
        let mut attempt = 0u32;
        loop {
            match post(&target, body.clone(), cfg.timeout).await {
                Attempt::Delivered => break,
                Attempt::Permanent(e) => {
                    metrics.sink_error(SinkLabel::Webhook);
                    metrics.sink_dropped(SinkLabel::Webhook, batch.len() as u64);
                    warn!(
                        lines = batch.len(),
                        "webhook refused findings ({e}); dropped"
                    );
                    break;
                }
                Attempt::Retry(e) => {
                    metrics.sink_error(SinkLabel::Webhook);
                    if attempt >= cfg.max_retries {
                        metrics.sink_dropped(SinkLabel::Webhook, batch.len() as u64);
                        warn!(
                            lines = batch.len(),
                            attempts = attempt + 1,
                            "webhook delivery failed ({e}); dropped"
                        );
                        break;
                    }
                    debug!(
                        attempt,
                        "webhook delivery failed ({e}); retrying in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(cfg.max_backoff);
                    attempt += 1;
                }
            }
        }
    }
}

impl WebhookSink {
    /// Checks the URL and starts the delivery task (needs a tokio runtime).
    pub fn start(cfg: WebhookConfig, metrics: Metrics) -> Result<Self, SinkError> {
        let target = parse_url(&cfg.url)?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| SinkError::NoRuntime(e.to_string()))?;
        // Bounded: see WEBHOOK_QUEUE_LINES.
        let (tx, rx) = mpsc::channel(cfg.queue_lines.max(1));
        let worker = rt.spawn(webhook_worker(cfg, target, rx, metrics));
        Ok(WebhookSink { tx, worker })
    }

    /// Queues a line without waiting; a full queue drops it (counted).
    fn send(&self, line: Bytes, metrics: &Metrics) {
        match self.tx.try_send(line) {
            Ok(()) => metrics.sink_line(SinkLabel::Webhook),
            Err(_) => metrics.sink_dropped(SinkLabel::Webhook, 1),
        }
    }
}

/// Every configured sink.
pub struct Sinks {
    lines: Vec<LineSink>,
    webhook: Option<WebhookSink>,
    metrics: Metrics,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field(
                "lines",
                &self
                    .lines
                    .iter()
                    .map(|l| l.label.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

impl Sinks {
    /// Opens every configured sink. The webhook needs a tokio runtime.
    pub fn open(cfg: &SinkConfig, metrics: Metrics) -> Result<Self, SinkError> {
        let mut s = Sinks {
            lines: Vec::new(),
            webhook: None,
            metrics: metrics.clone(),
        };
        if cfg.stdout {
            s.lines.push(LineSink::new(
                SinkLabel::Stdout,
                Box::new(std::io::stdout()),
            ));
        }
        if let Some(p) = &cfg.file {
            s.lines.push(LineSink::new(
                SinkLabel::File,
                Box::new(open_findings_file(p)?),
            ));
        }
        if let Some(w) = &cfg.webhook {
            s.webhook = Some(WebhookSink::start(w.clone(), metrics)?);
        }
        Ok(s)
    }

    /// A sink writing to any writer (counted as `label`), for tests and
    /// embedding.
    pub fn with_writer(label: SinkLabel, w: Box<dyn Write + Send>, metrics: Metrics) -> Self {
        Sinks {
            lines: vec![LineSink::new(label, w)],
            webhook: None,
            metrics,
        }
    }

    /// Adds a started webhook.
    pub fn add_webhook(&mut self, w: WebhookSink) {
        self.webhook = Some(w);
    }

    /// One finding, as one JSON line, to every sink. Never waits for the
    /// webhook; stdout and file writes are buffered (see [`Sinks::flush`]).
    pub fn emit<T: Serialize + ?Sized>(&self, finding: &T) {
        let mut line = match serde_json::to_vec(finding) {
            Ok(l) => l,
            Err(e) => {
                warn!("cannot serialise finding: {e}");
                return;
            }
        };
        line.push(b'\n');
        for s in &self.lines {
            s.write(&line, &self.metrics);
        }
        if let Some(w) = &self.webhook {
            w.send(Bytes::from(line), &self.metrics);
        }
    }

    /// Flushes stdout and the file (after each batch of findings).
    pub fn flush(&self) {
        for s in &self.lines {
            s.flush(&self.metrics);
        }
    }

    /// Flushes, closes the webhook queue and waits up to `grace` for the
    /// queued lines to be delivered.
    pub async fn shutdown(mut self, grace: Duration) {
        self.flush();
        if let Some(WebhookSink { tx, mut worker }) = self.webhook.take() {
            drop(tx);
            if tokio::time::timeout(grace, &mut worker).await.is_err() {
                warn!("webhook: findings still queued after {grace:?}; dropping them");
                worker.abort();
            }
        }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked() {
        let t = parse_url("http://collector.monitoring:8080/findings?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.uri.to_string().as_str()),
            ("collector.monitoring", 8080, "/findings?x=1")
        );
        let t = parse_url("http://[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert!(parse_url("https://x/")
            .unwrap_err()
            .to_string()
            .contains("https is not supported"));
        assert!(parse_url("x:80").is_err());
        assert!(parse_url("http://u:p@x/").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn the_file_is_created_0600_and_appended() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("imagewarden-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("findings.jsonl");
        let _ = std::fs::remove_file(&p);
        let m = Metrics::new();
        for _ in 0..2 {
            let s = Sinks::open(
                &SinkConfig {
                    stdout: false,
                    file: Some(p.clone()),
                    webhook: None,
                },
                m.clone(),
            )
            .unwrap();
            s.emit(&serde_json::json!({"type": "exec", "verdict": "deny"}));
            s.flush();
        }
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["verdict"] == "deny"));
        assert_eq!(m.sink_line_count(SinkLabel::File), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
