//! The `--listen` endpoint: `/metrics`, `/healthz`, `/readyz` over plain
//! HTTP/1.1 (hyper 1, no TLS: it serves the node's Prometheus and the
//! kubelet's probes). Everything else is 404; methods other than GET and
//! HEAD are 405.
//!
//! Bounded on every axis: at most [`MAX_CONNECTIONS`] connections at once
//! (beyond that a new connection is closed at once and counted), headers
//! must arrive within [`HEADER_READ_TIMEOUT`] and fit [`MAX_BUF_BYTES`], and
//! no connection lives longer than [`CONNECTION_LIFETIME`]. Request bodies
//! are never read.
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

/// Connections served at once. A node's Prometheus, the kubelet's probes
/// and an operator's curl need a handful; 64 leaves room for bursts while
/// keeping a misbehaving client from costing more than 64 small tasks.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must have sent its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on a connection's life (keep-alive included).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// hyper's read buffer, which bounds the request head (8 KiB is hyper's minimum).
pub const MAX_BUF_BYTES: usize = 16 * 1024;
/// On shutdown, how long in-flight requests may take to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("local address: {0}")]
    LocalAddr(std::io::Error),
}

/// A readiness condition (all of them must hold for `/readyz` to say 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyGate {
    /// The eBPF programs are loaded and attached.
    ProbesAttached,
    /// A policy was loaded (and is in force).
    PolicyLoaded,
    /// The first inventory of the node's containers is synced and its
    /// verdicts written to the kernel.
    InventorySynced,
}

impl ReadyGate {
    pub const ALL: [ReadyGate; 3] = [
        ReadyGate::ProbesAttached,
        ReadyGate::PolicyLoaded,
        ReadyGate::InventorySynced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProbesAttached => "probes-attached",
            Self::PolicyLoaded => "policy-loaded",
            Self::InventorySynced => "inventory-synced",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
struct HealthInner {
    start: Instant,
    /// Milliseconds since `start` of the last tick.
    last_tick_ms: AtomicU64,
    max_tick_age: Duration,
    required: [bool; 3],
    ready: [AtomicBool; 3],
}

/// Liveness and readiness, shared by the run loop (writer) and the server
/// (reader). Cheap to clone; every call is an atomic operation.
#[derive(Debug, Clone)]
pub struct Health(Arc<HealthInner>);

impl Health {
    /// Requires every [`ReadyGate`]. The event loop must call [`Health::tick`]
    /// at least every `max_tick_age` (the clock starts now).
    pub fn new(max_tick_age: Duration) -> Self {
        Self::with_gates(max_tick_age, &ReadyGate::ALL)
    }

    /// Requires only `gates` for readiness.
    pub fn with_gates(max_tick_age: Duration, gates: &[ReadyGate]) -> Self {
        let mut required = [false; 3];
        for g in gates {
            required[g.index()] = true;
        }
        Health(Arc::new(HealthInner {
            start: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            max_tick_age,
            required,
            ready: Default::default(),
        }))
    }

    /// The event loop turned.
    pub fn tick(&self) {
        let ms = u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_tick_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_ready(&self, gate: ReadyGate, ready: bool) {
        self.0.ready[gate.index()].store(ready, Ordering::Relaxed);
    }

    /// Time since the last tick (since creation before the first one).
    pub fn since_last_tick(&self) -> Duration {
        let now = self.0.start.elapsed();
        now.saturating_sub(Duration::from_millis(
            self.0.last_tick_ms.load(Ordering::Relaxed),
        ))
    }

    /// `Err` with the reason when the event loop has not turned recently.
    pub fn liveness(&self) -> Result<(), String> {
        let age = self.since_last_tick();
        if age > self.0.max_tick_age {
            return Err(format!(
                "event loop stalled: last turn {:.1}s ago (limit {}s)",
                age.as_secs_f64(),
                self.0.max_tick_age.as_secs()
            ));
        }
        Ok(())
    }

    /// `Err` with every unmet condition.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut missing: Vec<String> = ReadyGate::ALL
            .iter()
            .filter(|g| {
                self.0.required[g.index()] && !self.0.ready[g.index()].load(Ordering::Relaxed)
            })
            .map(|g| g.as_str().to_string())
            .collect();
        if let Err(e) = self.liveness() {
            missing.push(e);
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// What the server reads.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub metrics: Metrics,
    pub health: Health,
}

/// A bound listener, not yet serving (bind first to learn the port of `:0`).
pub struct Server {
    listener: TcpListener,
    state: ServerState,
    rejected: Arc<AtomicU64>,
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr, state: ServerState) -> Result<Server, ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(Server {
        listener,
        state,
        rejected: Arc::new(AtomicU64::new(0)),
    })
}

/// Binds `addr` and serves until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    state: ServerState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    bind(addr, state).await?.run(shutdown).await;
    Ok(())
}

impl Server {
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener.local_addr().map_err(ServerError::LocalAddr)
    }

    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    pub fn rejected_connections(&self) -> Arc<AtomicU64> {
        self.rejected.clone()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests
    /// finish for up to [`SHUTDOWN_GRACE`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            state,
            rejected,
        } = self;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                rejected.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "too many connections: closing");
                drop(stream);
                continue;
            };
            let state = state.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(MAX_BUF_BYTES)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
                tokio::pin!(lifetime);
                let mut stopping = false;
                loop {
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                debug!(%peer, "connection: {e}");
                            }
                            break;
                        }
                        _ = stop.changed(), if !stopping => {
                            stopping = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        _ = &mut lifetime => break,
                    }
                }
            });
        }
        drop(listener);
        let _ = stop_tx.send(true);
        // Every permit back means every connection task has ended.
        let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
        if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
            .await
            .is_err()
        {
            warn!("HTTP server: connections still open after {SHUTDOWN_GRACE:?}; leaving them");
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn handle(state: &ServerState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut resp = match req.uri().path() {
        "/metrics" => {
            let om = wants_openmetrics(&req);
            let metrics = state.metrics.clone();
            // The kernel counters are read with syscalls (and maybe a lock
            // the run loop holds for a moment): off the async workers.
            match tokio::task::spawn_blocking(move || metrics.encode(om)).await {
                Ok(Ok(body)) => {
                    let mut r = text(StatusCode::OK, body);
                    let ct = if om {
                        OPENMETRICS_CONTENT_TYPE
                    } else {
                        PROMETHEUS_CONTENT_TYPE
                    };
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
                    r
                }
                Ok(Err(e)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        "/healthz" => match state.health.liveness() {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        },
        "/readyz" => match state.health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(missing) => {
                let mut body = String::from("not ready:\n");
                for m in missing {
                    body.push_str("- ");
                    body.push_str(&m);
                    body.push('\n');
                }
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    };
    if head {
        *resp.body_mut() = Full::new(Bytes::new());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_what_is_missing() {
        let h = Health::new(Duration::from_secs(60));
        let missing = h.readiness().unwrap_err();
        assert_eq!(
            missing,
            vec!["probes-attached", "policy-loaded", "inventory-synced"]
        );
        h.set_ready(ReadyGate::ProbesAttached, true);
        h.set_ready(ReadyGate::PolicyLoaded, true);
        assert_eq!(h.readiness().unwrap_err(), vec!["inventory-synced"]);
        h.set_ready(ReadyGate::InventorySynced, true);
        assert!(h.readiness().is_ok());
        h.set_ready(ReadyGate::PolicyLoaded, false);
        assert!(h.readiness().is_err());
    }

    #[test]
    fn only_required_gates_count() {
        let h = Health::with_gates(Duration::from_secs(60), &[ReadyGate::ProbesAttached]);
        h.set_ready(ReadyGate::ProbesAttached, true);
        assert!(h.readiness().is_ok());
    }

    #[test]
    fn liveness_needs_recent_ticks() {
        let h = Health::new(Duration::from_millis(50));
        assert!(h.liveness().is_ok(), "the clock starts at creation");
        std::thread::sleep(Duration::from_millis(80));
        assert!(h.liveness().unwrap_err().contains("stalled"));
        h.tick();
        assert!(h.liveness().is_ok());
    }
}
