//! The `--listen` server on 127.0.0.1:0 with a fake kernel counter source:
//! `/metrics` parsed by a Prometheus text parser, `/healthz`, `/readyz`; and
//! the webhook findings sink against local HTTP servers (fast, slow,
//! failing). No root, no network beyond loopback.
use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use imagewarden::{
    finding::ReasonKind,
    metrics::{KillMechanism, Metrics, ModeLabel, ReloadResult, SinkLabel, Source, Verdict},
    probes::{
        reader::ReaderStats, Enforcement, ErrorCause, ErrorCounts, Hook as ExecHook, KernelCounters,
    },
    server::{self, Health, ReadyGate, ServerState},
    sink::{Sinks, WebhookConfig, WebhookSink},
};
use prometheus_parse::{Scrape, Value};
use tokio::{net::TcpListener, sync::oneshot};

struct Reply {
    status: StatusCode,
    content_type: String,
    body: String,
}

async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the server");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", addr.to_string());
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let res = tx
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request");
    let status = res.status();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
    }
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(state: ServerState) -> Running {
    let srv = server::bind("127.0.0.1:0".parse().unwrap(), state)
        .await
        .expect("bind 127.0.0.1:0");
    let addr = srv.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(srv.run(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within its grace")
            .unwrap();
    }
}

/// Samples of a family by their label values (prometheus-parse names counter
/// samples with their `_total`).
fn samples<'a>(s: &'a Scrape, metric: &str) -> Vec<&'a prometheus_parse::Sample> {
    s.samples.iter().filter(|x| x.metric == metric).collect()
}

fn label_values(s: &Scrape, metric: &str, label: &str) -> BTreeSet<String> {
    samples(s, metric)
        .iter()
        .map(|x| {
            x.labels
                .get(label)
                .unwrap_or_else(|| panic!("{metric} has no label {label}"))
                .to_string()
        })
        .collect()
}

fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let hit = samples(s, metric)
        .into_iter()
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {metric}{labels:?}"));
    match hit.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric}: unexpected value {other:?}"),
    }
}

fn is_counter(s: &Scrape, metric: &str) -> bool {
    samples(s, metric)
        .iter()
        .all(|x| matches!(x.value, Value::Counter(_)))
        && !samples(s, metric).is_empty()
}

fn is_gauge(s: &Scrape, metric: &str) -> bool {
    samples(s, metric)
        .iter()
        .all(|x| matches!(x.value, Value::Gauge(_)))
        && !samples(s, metric).is_empty()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn metrics_scrape_parses_and_has_every_family() {
    let metrics = Metrics::new();
    let kernel = Arc::new(AtomicU64::new(1000));
    let k = kernel.clone();
    metrics.set_kernel_source(Arc::new(move || {
        Some(KernelCounters {
            execs: k.load(Ordering::Relaxed),
            ringbuf_drops: 2,
            kills: 3,
            lsm_denies: 4,
            holds: 5,
            errors: {
                let mut e = ErrorCounts::default();
                e.set(ErrorCause::CgroupName, 6);
                e.set(ErrorCause::Signal, 10);
                e
            },
            name_hits: 7,
            drift_execs: 8,
            drift_denies: 9,
        })
    }));
    let reader = Arc::new(ReaderStats::default());
    reader.channel_drops.store(11, Ordering::Relaxed);
    reader.decode_errors.store(12, Ordering::Relaxed);
    reader.received.store(13, Ordering::Relaxed);
    metrics.set_reader_stats(reader);
    metrics.exec_event(Verdict::Allow);
    metrics.exec_event(Verdict::Deny);
    metrics.exec_event(Verdict::Deny);
    metrics.finding(ReasonKind::UntrustedImage);
    metrics.finding(ReasonKind::RanUnenforced);
    metrics.kill(KillMechanism::CgroupKill);
    metrics.set_containers(Verdict::Deny, 2);
    metrics.set_containers(Verdict::Allow, 40);
    metrics.policy_reload(ReloadResult::Success);
    metrics.set_source_up(Source::RuntimeCri, true);
    metrics.set_mode(ModeLabel::Audit);
    metrics.set_enforcement(Enforcement::Signal, ExecHook::Tracepoint);
    metrics.sink_dropped(SinkLabel::Webhook, 9);

    let srv = start(ServerState {
        metrics: metrics.clone(),
        health: Health::new(Duration::from_secs(30)),
    })
    .await;
    let r = get(srv.addr, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    let scrape =
        Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text parses");

    // Families, their types and their bounded label sets.
    assert!(is_counter(&scrape, "imagewarden_exec_events_total"));
    assert_eq!(
        label_values(&scrape, "imagewarden_exec_events_total", "verdict"),
        set(&["allow", "deny", "unknown", "hold"])
    );
    assert_eq!(
        value(
            &scrape,
            "imagewarden_exec_events_total",
            &[("verdict", "deny")]
        ),
        2.0
    );

    assert!(is_counter(&scrape, "imagewarden_findings_total"));
    let reasons = label_values(&scrape, "imagewarden_findings_total", "reason");
    // One series per reason kind's label, pre-created: the kinds' own
    // strings, and `other` for the four that share it.
    assert_eq!(
        reasons,
        set(&imagewarden::finding::ReasonKind::metric_labels())
    );
    for r in [
        "untrusted-image",
        "invalid-reference",
        "image-drift",
        "not-in-api",
        "spec-status-mismatch",
        "unresolved",
        "denied-cgroup",
        "fileless-exec",
        "drift-exec",
        "other",
    ] {
        assert!(reasons.contains(r), "reason {r} missing from {reasons:?}");
    }
    assert_eq!(
        value(
            &scrape,
            "imagewarden_findings_total",
            &[("reason", "untrusted-image")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "imagewarden_findings_total",
            &[("reason", "other")]
        ),
        1.0
    );

    assert!(is_counter(&scrape, "imagewarden_kills_total"));
    assert_eq!(
        label_values(&scrape, "imagewarden_kills_total", "mechanism"),
        set(&["kernel_signal", "lsm", "cgroup_kill"])
    );
    assert_eq!(
        value(
            &scrape,
            "imagewarden_kills_total",
            &[("mechanism", "kernel_signal")]
        ),
        3.0
    );
    assert_eq!(
        value(&scrape, "imagewarden_kills_total", &[("mechanism", "lsm")]),
        4.0
    );
    assert_eq!(
        value(
            &scrape,
            "imagewarden_kills_total",
            &[("mechanism", "cgroup_kill")]
        ),
        1.0
    );

    for (m, v) in [
        ("imagewarden_kernel_execs_total", 1000.0),
        ("imagewarden_ringbuf_drops_total", 2.0),
        ("imagewarden_kernel_holds_total", 5.0),
        ("imagewarden_kernel_name_hits_total", 7.0),
        ("imagewarden_kernel_exec_drift_total", 8.0),
        ("imagewarden_kernel_exec_drift_denied_total", 9.0),
        ("imagewarden_events_channel_drops_total", 11.0),
        ("imagewarden_event_decode_errors_total", 12.0),
        ("imagewarden_events_received_total", 13.0),
    ] {
        assert!(is_counter(&scrape, m), "{m} is a counter");
        assert_eq!(value(&scrape, m, &[]), v, "{m}");
    }
    assert!(is_counter(&scrape, "imagewarden_kernel_errors_total"));
    assert_eq!(
        label_values(&scrape, "imagewarden_kernel_errors_total", "cause"),
        set(&["cgroup_name", "exe_file", "filename", "signal"])
    );
    for (cause, v) in [
        ("cgroup_name", 6.0),
        ("exe_file", 0.0),
        ("filename", 0.0),
        ("signal", 10.0),
    ] {
        assert_eq!(
            value(
                &scrape,
                "imagewarden_kernel_errors_total",
                &[("cause", cause)]
            ),
            v,
            "{cause}"
        );
    }
    assert!(is_gauge(&scrape, "imagewarden_kernel_counters_readable"));
    assert_eq!(
        value(&scrape, "imagewarden_kernel_counters_readable", &[]),
        1.0
    );

    assert!(is_gauge(&scrape, "imagewarden_containers"));
    assert_eq!(
        label_values(&scrape, "imagewarden_containers", "verdict"),
        set(&["allow", "deny", "unknown", "hold"])
    );
    assert_eq!(
        value(&scrape, "imagewarden_containers", &[("verdict", "allow")]),
        40.0
    );

    assert!(is_counter(&scrape, "imagewarden_policy_reloads_total"));
    assert_eq!(
        label_values(&scrape, "imagewarden_policy_reloads_total", "result"),
        set(&["success", "error"])
    );

    assert!(is_gauge(&scrape, "imagewarden_source_up"));
    assert_eq!(
        label_values(&scrape, "imagewarden_source_up", "source"),
        set(&[
            "runtime_cri",
            "runtime_containerd",
            "kube_api",
            "kube_namespaces",
            "kubelet"
        ])
    );
    assert_eq!(
        value(
            &scrape,
            "imagewarden_source_up",
            &[("source", "runtime_cri")]
        ),
        1.0
    );
    assert_eq!(
        value(&scrape, "imagewarden_source_up", &[("source", "kube_api")]),
        0.0
    );

    assert!(is_gauge(&scrape, "imagewarden_enforcement_info"));
    assert_eq!(
        value(
            &scrape,
            "imagewarden_enforcement_info",
            &[("mechanism", "signal"), ("exec_hook", "tracepoint")]
        ),
        1.0
    );
    assert!(is_gauge(&scrape, "imagewarden_mode"));
    assert_eq!(
        value(&scrape, "imagewarden_mode", &[("mode", "audit")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "imagewarden_mode", &[("mode", "enforce")]),
        0.0
    );
    assert!(is_gauge(&scrape, "imagewarden_build_info"));
    assert_eq!(
        value(
            &scrape,
            "imagewarden_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(is_counter(&scrape, "imagewarden_sink_dropped_total"));
    assert_eq!(
        value(
            &scrape,
            "imagewarden_sink_dropped_total",
            &[("sink", "webhook")]
        ),
        9.0
    );
    assert!(is_counter(&scrape, "imagewarden_sink_lines_total"));
    assert!(is_counter(&scrape, "imagewarden_sink_errors_total"));

    // Bounded cardinality: no label outside the fixed set, ever.
    let allowed_labels = set(&[
        "verdict",
        "reason",
        "mechanism",
        "result",
        "source",
        "mode",
        "exec_hook",
        "version",
        "git_commit",
        "sink",
        "cause",
    ]);
    for s in &scrape.samples {
        for k in s.labels.keys() {
            assert!(
                allowed_labels.contains(k),
                "unexpected label {k} on {}",
                s.metric
            );
        }
    }

    // Kernel counters are read at scrape time.
    kernel.store(5000, Ordering::Relaxed);
    let r = get(srv.addr, "/metrics", None).await;
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        value(&scrape, "imagewarden_kernel_execs_total", &[]),
        5000.0
    );

    // OpenMetrics on request.
    let r = get(
        srv.addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type.starts_with("application/openmetrics-text"),
        "{}",
        r.content_type
    );
    assert!(r.body.ends_with("# EOF\n"));
    assert!(
        r.body.contains("# TYPE imagewarden_build info"),
        "{}",
        r.body
    );

    assert_eq!(
        get(srv.addr, "/nope", None).await.status,
        StatusCode::NOT_FOUND
    );
    srv.stop().await;
}

#[tokio::test]
async fn kernel_samples_are_absent_when_unreadable() {
    let metrics = Metrics::new();
    metrics.set_kernel_source(Arc::new(|| None));
    let srv = start(ServerState {
        metrics,
        health: Health::new(Duration::from_secs(30)),
    })
    .await;
    let r = get(srv.addr, "/metrics", None).await;
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        value(&scrape, "imagewarden_kernel_counters_readable", &[]),
        0.0
    );
    assert!(samples(&scrape, "imagewarden_ringbuf_drops_total").is_empty());
    assert_eq!(
        label_values(&scrape, "imagewarden_kills_total", "mechanism"),
        set(&["cgroup_kill"])
    );
    srv.stop().await;
}

#[tokio::test]
async fn healthz_turns_unhealthy_when_ticks_stop() {
    let health = Health::new(Duration::from_millis(300));
    let srv = start(ServerState {
        metrics: Metrics::new(),
        health: health.clone(),
    })
    .await;
    // Taken before the tick: the time since `ticked` is never shorter
    // than the server's time since the tick.
    let ticked = Instant::now();
    health.tick();
    assert_eq!(get(srv.addr, "/healthz", None).await.status, StatusCode::OK);
    // Polled until it turns: never before the 300 ms without a tick.
    let r = loop {
        let r = get(srv.addr, "/healthz", None).await;
        if r.status != StatusCode::OK {
            break r;
        }
        assert!(
            ticked.elapsed() < Duration::from_secs(10),
            "/healthz still OK 10 s after the last tick"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        ticked.elapsed() >= Duration::from_millis(300),
        "unhealthy after {:?}, before the 300 ms limit",
        ticked.elapsed()
    );
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("event loop stalled"), "{}", r.body);
    health.tick();
    assert_eq!(get(srv.addr, "/healthz", None).await.status, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn readyz_is_503_until_every_gate_is_set() {
    let health = Health::new(Duration::from_secs(30));
    let srv = start(ServerState {
        metrics: Metrics::new(),
        health: health.clone(),
    })
    .await;
    let r = get(srv.addr, "/readyz", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    for gate in ["probes-attached", "policy-loaded", "inventory-synced"] {
        assert!(r.body.contains(gate), "{gate} not listed in {:?}", r.body);
    }
    health.set_ready(ReadyGate::ProbesAttached, true);
    health.set_ready(ReadyGate::PolicyLoaded, true);
    let r = get(srv.addr, "/readyz", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body.contains("inventory-synced") && !r.body.contains("policy-loaded"),
        "{}",
        r.body
    );
    health.set_ready(ReadyGate::InventorySynced, true);
    let r = get(srv.addr, "/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_counted() {
    let srv = server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerState {
            metrics: Metrics::new(),
            health: Health::new(Duration::from_secs(30)),
        },
    )
    .await
    .unwrap();
    let addr = srv.local_addr().unwrap();
    let rejected = srv.rejected_connections();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(srv.run(async {
        let _ = rx.await;
    }));
    // Idle connections that never send a request hold their slot until the
    // header timeout.
    let mut idle = Vec::new();
    for _ in 0..server::MAX_CONNECTIONS + 8 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while rejected.load(Ordering::Relaxed) < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rejected.load(Ordering::Relaxed), 8);
    drop(idle);
    // Slots come back once the idle connections are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = tokio::time::timeout(Duration::from_secs(1), get(addr, "/healthz", None)).await;
        if matches!(ok, Ok(ref r) if r.status == StatusCode::OK) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not recover its connection slots"
        );
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

// ---- webhook sink -------------------------------------------------------

#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    Fail500,
    Slow(Duration),
}

/// What the local webhook receiver saw. Checked by the test itself: an
/// assertion inside the server's task could not fail the test.
struct Hook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicU64>,
    /// The Content-Type header of every request, in order.
    content_types: Arc<Mutex<Vec<String>>>,
}

/// A local HTTP server recording the bodies it receives.
async fn hook_server(b: Behaviour) -> Hook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicU64::new(0));
    let content_types = Arc::new(Mutex::new(Vec::new()));
    let (b2, r2, c2) = (bodies.clone(), requests.clone(), content_types.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (bodies, requests, cts) = (b2.clone(), r2.clone(), c2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (bodies, requests, cts) = (bodies.clone(), requests.clone(), cts.clone());
                    async move {
                        requests.fetch_add(1, Ordering::Relaxed);
                        let ct = req
                            .headers()
                            .get("content-type")
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .unwrap_or_default();
                        cts.lock().unwrap().push(ct);
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let status = match b {
                            Behaviour::Ok => StatusCode::OK,
                            Behaviour::Fail500 => StatusCode::INTERNAL_SERVER_ERROR,
                            Behaviour::Slow(d) => {
                                tokio::time::sleep(d).await;
                                StatusCode::OK
                            }
                        };
                        if status.is_success() {
                            bodies
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                        }
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Hook {
        addr,
        bodies,
        requests,
        content_types,
    }
}

fn quick(url: String) -> WebhookConfig {
    WebhookConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        timeout: Duration::from_millis(500),
        ..WebhookConfig::new(url)
    }
}

fn finding(i: usize) -> serde_json::Value {
    serde_json::json!({"type": "exec", "verdict": "deny", "action": "alerted", "reason": "untrusted-image: x", "pid": i})
}

#[tokio::test]
async fn webhook_delivers_json_lines() {
    let Hook {
        addr,
        bodies,
        content_types,
        ..
    } = hook_server(Behaviour::Ok).await;
    let metrics = Metrics::new();
    let mut sinks = Sinks::with_writer(
        SinkLabel::Stdout,
        Box::new(std::io::sink()),
        metrics.clone(),
    );
    sinks.add_webhook(
        WebhookSink::start(quick(format!("http://{addr}/findings")), metrics.clone()).unwrap(),
    );
    for i in 0..100 {
        sinks.emit(&finding(i));
    }
    sinks.shutdown(Duration::from_secs(5)).await;
    let got: Vec<serde_json::Value> = bodies
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b.lines()
                .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got.len(), 100);
    let cts = content_types.lock().unwrap().clone();
    assert!(!cts.is_empty());
    assert!(
        cts.iter().all(|c| c == "application/x-ndjson"),
        "content types: {cts:?}"
    );
    let pids: Vec<u64> = got.iter().map(|v| v["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids, (0..100).collect::<Vec<u64>>(), "in order");
    assert_eq!(metrics.sink_dropped_count(SinkLabel::Webhook), 0);
    assert_eq!(metrics.sink_line_count(SinkLabel::Webhook), 100);
}

#[tokio::test]
async fn slow_webhook_never_blocks_the_emitter_and_drops_are_counted() {
    let Hook { addr, .. } = hook_server(Behaviour::Slow(Duration::from_secs(3600))).await;
    let metrics = Metrics::new();
    let mut sinks = Sinks::with_writer(
        SinkLabel::Stdout,
        Box::new(std::io::sink()),
        metrics.clone(),
    );
    let cfg = WebhookConfig {
        queue_lines: 16,
        max_batch_lines: 4,
        ..quick(format!("http://{addr}/"))
    };
    sinks.add_webhook(WebhookSink::start(cfg, metrics.clone()).unwrap());
    // The receiver takes an hour per request. An emitter that waited for it
    // would drop nothing; one that never blocks fills the bounded queue at
    // once and counts every line it could not queue. (Speed itself is a
    // benchmark's business, not a test's.)
    let n = 5_000;
    for i in 0..n {
        sinks.emit(&finding(i));
    }
    let dropped = metrics.sink_dropped_count(SinkLabel::Webhook);
    let queued = metrics.sink_line_count(SinkLabel::Webhook);
    assert_eq!(dropped + queued, n as u64);
    assert!(dropped >= n as u64 - 16 - 4, "dropped {dropped}");
    // Shutdown gives up after its grace, too, although the receiver is
    // still sleeping on the batch in flight (a liveness guard, not a timing).
    tokio::time::timeout(
        Duration::from_secs(60),
        sinks.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("shutdown returns after its grace while the webhook still hangs");
}

#[tokio::test]
async fn failing_webhook_retries_a_bounded_number_of_times_then_drops() {
    let Hook { addr, requests, .. } = hook_server(Behaviour::Fail500).await;
    let metrics = Metrics::new();
    let mut sinks = Sinks::with_writer(
        SinkLabel::Stdout,
        Box::new(std::io::sink()),
        metrics.clone(),
    );
    let cfg = WebhookConfig {
        max_retries: 2,
        max_batch_lines: 1000,
        ..quick(format!("http://{addr}/"))
    };
    sinks.add_webhook(WebhookSink::start(cfg, metrics.clone()).unwrap());
    for i in 0..10 {
        sinks.emit(&finding(i));
    }
    sinks.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.sink_dropped_count(SinkLabel::Webhook), 10);
    // One batch: 1 attempt + 2 retries. (The first line may go alone if the
    // worker picked it up before the rest were queued: then 2 batches.)
    let r = requests.load(Ordering::Relaxed);
    assert!(r == 3 || r == 6, "{r} requests");
    let text = metrics.encode(false).unwrap();
    assert!(
        text.contains("imagewarden_sink_errors_total{sink=\"webhook\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_webhook_drops_after_retries() {
    // A port nothing listens on: bind, learn it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics = Metrics::new();
    let mut sinks = Sinks::with_writer(
        SinkLabel::Stdout,
        Box::new(std::io::sink()),
        metrics.clone(),
    );
    sinks.add_webhook(
        WebhookSink::start(quick(format!("http://127.0.0.1:{port}/")), metrics.clone()).unwrap(),
    );
    sinks.emit(&finding(1));
    sinks.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.sink_dropped_count(SinkLabel::Webhook), 1);
}

#[test]
fn stdout_style_sink_writes_one_line_per_finding() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let metrics = Metrics::new();
    let sinks = Sinks::with_writer(SinkLabel::Stdout, Box::new(buf.clone()), metrics.clone());
    let mut f = HashMap::new();
    f.insert("type", "exec");
    sinks.emit(&f);
    sinks.emit(&finding(2));
    sinks.flush();
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(out.lines().count(), 2);
    assert_eq!(metrics.sink_line_count(SinkLabel::Stdout), 2);
}
