//! A local HTTPS stand-in for the kubelet's `/pods` (127.0.0.1:0): a CA and
//! a serving certificate for `localhost`/`127.0.0.1` generated at test time
//! with rcgen, a rustls server, a PodList JSON answer, and a bearer token
//! check. [`FakeKubelet::down`] closes connections and refuses new ones.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Handle to the running fake kubelet.
#[derive(Clone)]
pub struct FakeKubelet {
    pub addr: SocketAddr,
    /// PEM of the CA that signed the serving certificate.
    pub ca_pem: String,
    /// The token the kubelet expects (`Authorization: Bearer ...`).
    pub token: String,
    pods: Arc<Mutex<Vec<Value>>>,
    /// One entry per request: whether its bearer token was the expected one.
    auth_ok: Arc<Mutex<Vec<bool>>>,
    up: watch::Sender<bool>,
}

impl FakeKubelet {
    pub async fn start(token: &str) -> FakeKubelet {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake-kubelet-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (up, _) = watch::channel(true);
        let k = FakeKubelet {
            addr: listener.local_addr().unwrap(),
            ca_pem: ca.pem(),
            token: token.to_string(),
            pods: Arc::new(Mutex::new(Vec::new())),
            auth_ok: Arc::new(Mutex::new(Vec::new())),
            up,
        };
        let k2 = k.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                if !*k2.up.borrow() {
                    drop(sock);
                    continue;
                }
                let acceptor = acceptor.clone();
                let k3 = k2.clone();
                let mut up_rx = k2.up.subscribe();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let k4 = k3.clone();
                        async move { Ok::<_, Infallible>(k4.handle(req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = up_rx.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
        k
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Writes the CA and the token to files in `dir`; returns their paths.
    pub fn write_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let ca = dir.join("ca.crt");
        let tok = dir.join("token");
        std::fs::write(&ca, &self.ca_pem).unwrap();
        std::fs::write(&tok, &self.token).unwrap();
        (ca, tok)
    }

    pub fn set_pods(&self, pods: Vec<Value>) {
        *self.pods.lock().unwrap() = pods;
    }
    pub fn auth_results(&self) -> Vec<bool> {
        self.auth_ok.lock().unwrap().clone()
    }
    pub fn down(&self) {
        self.up.send_replace(false);
    }
    pub fn up(&self) {
        self.up.send_replace(true);
    }

    fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", self.token));
        self.auth_ok.lock().unwrap().push(ok);
        if !ok {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .body(Full::new(Bytes::from_static(b"Unauthorized")))
                .unwrap();
        }
        if req.uri().path() != "/pods" {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::from_static(b"404 page not found")))
                .unwrap();
        }
        let body = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {},
                          "items": *self.pods.lock().unwrap()});
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }
}
