//! The kubelet as a source: `GET https://NODE:10250/pods`, the pods as the
//! kubelet actually runs them. Static pods appear here with their own UID
//! (the config hash) even when the API server rejected their mirror pod.
//!
//! The request goes through a dedicated [`kube::Client`] (rustls, the
//! service-account token re-read from its file by kube-rs, the cluster CA)
//! pointed at the kubelet; the token is never logged. Polled every
//! `interval` with a per-request `timeout`; [`SourceHealth`] says whether the
//! last poll worked.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::config::AuthInfo;
use kube::{Client, Config};
use serde::Deserialize;
use tokio::sync::watch;

use super::kube::SourceHealth;

/// The in-cluster service account's token.
pub const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The in-cluster service account's CA bundle (signs the API server's
/// certificate; kubelets whose serving certificates the cluster CA signs
/// (`serverTLSBootstrap`) verify with it too).
pub const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Default kubelet port.
pub const KUBELET_PORT: u16 = 10250;
/// Most pods accepted from one `/pods` answer (a kubelet runs at most a few
/// hundred); larger answers are refused as an error, not truncated.
pub const MAX_PODS: usize = 10_000;

/// Where and how to reach the kubelet.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Base URL, e.g. `https://10.0.0.5:10250` (the node's IP from the
    /// downward API `status.hostIP`). `/pods` is appended.
    pub url: String,
    /// Bearer token file (re-read when it changes; projected tokens rotate).
    /// `None`: no Authorization header.
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signs the kubelet's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// Name expected in the kubelet's certificate when it differs from the
    /// URL's host (kubelet certificates often name the node, not its IP).
    pub tls_server_name: Option<String>,
    /// INSECURE: accept any certificate. Only for kubelets with self-signed
    /// serving certificates (the default without `serverTLSBootstrap`);
    /// anyone on the path can then read and forge the pod list.
    pub insecure_skip_tls_verify: bool,
    /// Bound on one request (connect + answer).
    pub timeout: Duration,
    /// Poll interval.
    pub interval: Duration,
}

impl KubeletConfig {
    /// In-cluster defaults for a kubelet at `host` (IP or name).
    pub fn in_cluster(host: &str) -> Self {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]") // IPv6 literal
        } else {
            host.to_string()
        };
        KubeletConfig {
            url: format!("https://{host}:{KUBELET_PORT}"),
            token_file: Some(PathBuf::from(SA_TOKEN)),
            ca_file: Some(PathBuf::from(SA_CA)),
            tls_server_name: None,
            insecure_skip_tls_verify: false,
            timeout: Duration::from_secs(10),
            interval: Duration::from_secs(15),
        }
    }
}

/// Errors of the kubelet source.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The URL does not parse.
    #[error("kubelet URL {0:?} is not a valid URL")]
    BadUrl(String),
    /// The CA file cannot be read or holds no certificate.
    #[error("kubelet CA {path}: {message}")]
    Ca {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The client could not be built.
    #[error("building the kubelet client: {0}")]
    Client(#[source] kube::Error),
    /// The request failed (connect, TLS, HTTP status, JSON).
    #[error("GET {url}/pods: {source}")]
    Request {
        /// Base URL.
        url: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// No answer within the timeout.
    #[error("GET {url}/pods: no answer within {timeout:?}")]
    Timeout {
        /// Base URL.
        url: String,
        /// The bound.
        timeout: Duration,
    },
    /// More pods than [`MAX_PODS`].
    #[error("kubelet answered {0} pods, more than the {MAX_PODS} accepted")]
    TooMany(usize),
}

/// Reads certificates (DER) from a PEM bundle.
fn read_pem_certs(path: &std::path::Path) -> Result<Vec<Vec<u8>>, KubeletError> {
    let err = |message: String| KubeletError::Ca {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    let mut in_cert = false;
    let mut b64 = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            in_cert = true;
            b64.clear();
        } else if line == "-----END CERTIFICATE-----" {
            in_cert = false;
            out.push(base64_decode(&b64).ok_or_else(|| err("bad base64 in certificate".into()))?);
        } else if in_cert {
            b64.push_str(line);
        }
    }
    if out.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(out)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

/// A client for one kubelet.
#[derive(Clone)]
pub struct KubeletClient {
    client: Client,
    url: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

impl KubeletClient {
    /// Builds the client (reads the CA file now; the token file on use).
    pub fn new(cfg: &KubeletConfig) -> Result<Self, KubeletError> {
        let uri: http::Uri = cfg
            .url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| KubeletError::BadUrl(cfg.url.clone()))?;
        let mut config = Config::new(uri);
        if let Some(ca) = &cfg.ca_file {
            if !cfg.insecure_skip_tls_verify {
                config.root_cert = Some(read_pem_certs(ca)?);
            }
        }
        config.accept_invalid_certs = cfg.insecure_skip_tls_verify;
        config.tls_server_name = cfg.tls_server_name.clone();
        config.connect_timeout = Some(cfg.timeout);
        config.read_timeout = Some(cfg.timeout);
        config.write_timeout = Some(cfg.timeout);
        config.auth_info = AuthInfo {
            token_file: cfg.token_file.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(KubeletError::Client)?;
        Ok(KubeletClient {
            client,
            url: cfg.url.trim_end_matches('/').to_string(),
            timeout: cfg.timeout,
        })
    }

    /// One `GET /pods`.
    pub async fn pods(&self) -> Result<Vec<Pod>, KubeletError> {
        let req = http::Request::get("/pods")
            .body(Vec::new())
            .map_err(|_| KubeletError::BadUrl(self.url.clone()))?;
        let list: PodList = match tokio::time::timeout(self.timeout, self.client.request(req)).await
        {
            Err(_) => {
                return Err(KubeletError::Timeout {
                    url: self.url.clone(),
                    timeout: self.timeout,
                })
            }
            Ok(r) => r.map_err(|source| KubeletError::Request {
                url: self.url.clone(),
                source,
            })?,
        };
        if list.items.len() > MAX_PODS {
            return Err(KubeletError::TooMany(list.items.len()));
        }
        Ok(list.items)
    }
}

/// The kubelet's pods, polled.
#[derive(Clone)]
pub struct KubeletSource {
    /// The last successful answer, managed fields trimmed (single slot:
    /// readers see the newest; the previous answer stays while the kubelet
    /// is unreachable).
    pub pods: watch::Receiver<Arc<Vec<Pod>>>,
    /// `up` flag of the kubelet source.
    pub health: Arc<SourceHealth>,
}

/// Polls `client` every `interval`. Spawn the future.
pub fn kubelet_source(
    client: KubeletClient,
    interval: Duration,
) -> (KubeletSource, BoxFuture<'static, ()>) {
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let health = SourceHealth::new("kubelet");
    let h = health.clone();
    let fut = async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match client.pods().await {
                Ok(mut pods) => {
                    for p in &mut pods {
                        p.metadata.managed_fields = None;
                    }
                    h.set_up();
                    if tx.send(Arc::new(pods)).is_err() {
                        return;
                    }
                }
                Err(e) => h.set_down(&e),
            }
        }
    }
    .boxed();
    (KubeletSource { pods: rx, health }, fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a*==").is_none());
    }

    #[test]
    fn in_cluster_urls() {
        assert_eq!(
            KubeletConfig::in_cluster("10.0.0.5").url,
            "https://10.0.0.5:10250"
        );
        assert_eq!(
            KubeletConfig::in_cluster("fd00::5").url,
            "https://[fd00::5]:10250"
        );
        assert!(!KubeletConfig::in_cluster("n").insecure_skip_tls_verify);
    }
}
