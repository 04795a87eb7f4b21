//! `signet conformance-proxy`: the FIDO Server Conformance Test API in front
//! of signet, for the certification lab.
//!
//! # What it is for
//!
//! The FIDO Alliance's conformance tool certifies a relying-party server by
//! calling four JSON endpoints over plain server-authenticated HTTPS
//! (`/attestation/options`, `/attestation/result`, `/assertion/options`,
//! `/assertion/result`; see CONFORMANCE.md in the shared notes). signet never
//! opens a port without client authentication: its API is mutual TLS only,
//! and every caller is a bank system holding a certificate mapped to a role.
//! This proxy is the bridge: a separate process, run in the test lab, that
//! serves the tool's API on HTTPS *without* client authentication and calls
//! signet's `/v1` API as an `rp` client with a certificate of its own.
//!
//! # Why it lives outside the appliance
//!
//! Putting the conformance API inside `signet serve` would mean a listener
//! that accepts anyone, in the one process that holds the HSM session. Kept
//! apart, the appliance's rule stays simple and absolute (no client
//! certificate, no connection), and the proxy holds nothing but a lab `rp`
//! certificate that the appliance's configuration can revoke or never map in
//! production. The proxy has no state worth protecting: only the map below.
//!
//! # Translation
//!
//! The tool's options calls become `POST /v1/registrations/options` and
//! `/v1/authentications/options`; the answer's `publicKey` members are
//! flattened into the tool's answer beside `status` and `errorMessage`.
//! signet names each ceremony by a `ceremonyId` that the tool knows nothing
//! about, so the proxy remembers `challenge -> ceremonyId` (a bounded map,
//! [`Ceremonies`]) and, on a result call, reads the challenge back out of
//! `response.clientDataJSON` to find the ceremony to verify.
//!
//! When that challenge cannot be read, or names no outstanding ceremony of
//! that kind, the proxy falls back to the most recent outstanding ceremony of
//! the kind and forwards anyway. The tool's negative cases mangle
//! clientDataJSON on purpose (missing, not base64url, not JSON, wrong
//! challenge); answering them with a generic "unknown ceremony" would pass
//! the test but say nothing. Forwarding lets signet's engine reject the
//! response with its own field-specific error (`response.clientDataJSON`,
//! `clientDataJSON.challenge`, ...), which is what the certification run
//! should show. The fallback assumes one tool at a time, as in a lab run.
//!
//! Failures keep signet's HTTP status (4xx/5xx) and turn its
//! `application/problem+json` into the tool's `errorMessage` (title, field,
//! detail); the proxy's own input errors are 400, an unreachable signet 502.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::webauthn::{b64url_decode, limits};

/// Largest request body the proxy reads.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Largest upstream answer the proxy reads.
const UPSTREAM_BODY_LIMIT: usize = 1024 * 1024;
/// How many outstanding ceremonies the proxy remembers.
pub const CEREMONY_CAP: usize = 10_000;
/// Lifetime of a ceremony whose options carry no usable `timeout`.
const DEFAULT_CEREMONY_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_CEREMONY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Kept this long past the options' timeout, so that a late result still
/// reaches signet and gets its "expired" answer rather than the proxy's.
const EXPIRY_GRACE: Duration = Duration::from_secs(30);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `signet conformance-proxy`: serve the FIDO Server Conformance Test API on
/// HTTPS and forward it to signet's mutual-TLS API as an `rp` client.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Address to serve HTTPS on (port 0 picks a free one; the bound address
    /// is printed as `listening on https://ADDR`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8444")]
    pub listen: SocketAddr,
    /// signet's API, https://host:port.
    #[arg(long, value_name = "URL", value_parser = parse_https_url)]
    pub upstream: String,
    /// Client certificate (PEM, leaf first) presented to signet; it must map
    /// to the rp role.
    #[arg(long, value_name = "PEM")]
    pub client_cert: PathBuf,
    /// Private key (PEM) of --client-cert.
    #[arg(long, value_name = "PEM")]
    pub client_key: PathBuf,
    /// CA certificate(s) (PEM) that signed signet's server certificate.
    #[arg(long, value_name = "PEM")]
    pub ca: PathBuf,
    /// Certificate (PEM, leaf first) the proxy serves its own HTTPS with.
    /// Without it, an ephemeral self-signed P-256 certificate for localhost and
    /// 127.0.0.1 is made at start and its SHA-256 fingerprint printed on stderr.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// An https URL without query or fragment, returned without a trailing `/`.
pub fn parse_https_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("must be an https:// URL (signet speaks only mutual TLS)".into());
    }
    if url.host_str().is_none() {
        return Err("has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Runs the proxy until SIGINT or SIGTERM.
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let client_tls = client_tls_from_files(&args.ca, &args.client_cert, &args.client_key)?;
        let proxy = Arc::new(Proxy::new(&args.upstream, client_tls)?);
        let server_tls = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => {
                server_tls(read_certs(cert, "--cert")?, read_key(key, "--key")?)?
            }
            (None, None) => {
                let (chain, key) = ephemeral_certificate()?;
                eprintln!(
                    "conformance-proxy: serving an ephemeral self-signed certificate for \
                     localhost and 127.0.0.1, SHA-256 fingerprint {}",
                    fingerprint(&chain[0])
                );
                server_tls(chain, key)?
            }
            _ => bail!("--cert and --key go together"),
        };
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        println!("listening on https://{addr}");
        tracing::info!(%addr, upstream = %args.upstream, "conformance proxy serving");
        serve(listener, server_tls, router(proxy), shutdown_signal()).await
    })
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

// ---------------------------------------------------------------------------
// TLS

/// Reads every CERTIFICATE block of a PEM file.
pub fn read_certs(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{flag} {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no CERTIFICATE block", path.display());
    }
    Ok(certs)
}

/// Reads the first private key block (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub fn read_key(path: &Path, flag: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("{flag} {}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_tls_from_files(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<rustls::ClientConfig> {
    client_tls(
        read_certs(ca, "--ca")?,
        read_certs(cert, "--client-cert")?,
        read_key(key, "--client-key")?,
    )
}

/// The TLS configuration for calling signet: `roots` as the only trust
/// anchors, presenting `chain`/`key`.
pub fn client_tls(
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for (i, root) in roots.into_iter().enumerate() {
        store
            .add(root)
            .with_context(|| format!("--ca: certificate {i} is not a usable trust anchor"))?;
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(store)
        .with_client_auth_cert(chain, key)
        .context("--client-cert/--client-key: not a usable certificate and key")
}

/// The proxy's own HTTPS configuration: no client authentication, HTTP/1.1.
pub fn server_tls(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--cert/--key: not a usable certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A fresh P-256 key and a self-signed certificate for `localhost` and
/// `127.0.0.1`, valid from an hour ago for 30 days. The key exists only in
/// this process.
pub fn ephemeral_certificate()
-> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the ephemeral P-256 key")?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .context("ephemeral certificate names")?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "signet conformance proxy (ephemeral)",
    );
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(30 * 86_400)).into();
    let cert = params
        .self_signed(&key)
        .context("signing the ephemeral certificate")?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok((vec![cert.der().clone()], key))
}

/// SHA-256 of a certificate's DER, as colon-separated uppercase hex (the
/// form browsers and `openssl x509 -fingerprint -sha256` show).
pub fn fingerprint(cert: &[u8]) -> String {
    crate::keys::sha256(cert)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------
// Serving

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then lets
/// open requests finish (up to 10 s).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing");
    }
    Ok(())
}

/// The four conformance endpoints; 404 for any other path, 405 for any
/// other method.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/attestation/options", post(attestation_options))
        .route("/attestation/result", post(attestation_result))
        .route("/assertion/options", post(assertion_options))
        .route("/assertion/result", post(assertion_result))
        .fallback(|| async { failed(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            failed(StatusCode::METHOD_NOT_ALLOWED, "only POST is supported")
        })
        .with_state(proxy)
}

// ---------------------------------------------------------------------------
// The tool's answers

/// One answer to the tool.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// `{"status":"ok","errorMessage":""}` with `members` beside them (any
/// `status` or `errorMessage` among them is dropped).
pub fn ok_body(members: Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("status".into(), Value::from("ok"));
    out.insert("errorMessage".into(), Value::from(""));
    for (k, v) in members {
        if k != "status" && k != "errorMessage" {
            out.insert(k, v);
        }
    }
    Value::Object(out)
}

/// `{"status":"failed","errorMessage":message}`; never an empty message.
pub fn failed_body(message: &str) -> Value {
    let message = if message.trim().is_empty() {
        "request failed"
    } else {
        message
    };
    json!({"status": "failed", "errorMessage": message})
}

fn ok(members: Map<String, Value>) -> Reply {
    Reply {
        status: StatusCode::OK,
        body: ok_body(members),
    }
}

fn failed(status: StatusCode, message: impl AsRef<str>) -> Reply {
    Reply {
        status,
        body: failed_body(message.as_ref()),
    }
}

/// The tool's `errorMessage` for an upstream failure: the problem's title,
/// field (unless the detail starts with it) and detail joined by ": ", or the status and the start of the body
/// when it is not a problem document.
pub fn problem_message(status: u16, body: &[u8]) -> String {
    let problem = serde_json::from_slice::<Value>(body).ok();
    let text = |name: &str| {
        problem
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let (title, field, detail) = (text("title"), text("field"), text("detail"));
    // signet's detail usually starts with the field already.
    let field = field.filter(|f| !detail.is_some_and(|d| d.starts_with(f)));
    let parts: Vec<&str> = [title, field, detail].into_iter().flatten().collect();
    if !parts.is_empty() {
        return parts.join(": ");
    }
    let raw = String::from_utf8_lossy(body);
    let raw: String = raw.trim().chars().take(200).collect();
    if raw.is_empty() {
        format!("signet answered HTTP {status}")
    } else {
        format!("signet answered HTTP {status}: {raw}")
    }
}

// ---------------------------------------------------------------------------
// Ceremonies

/// Which of the two ceremonies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Registration,
    Authentication,
}

impl Kind {
    /// The upstream resource: `/v1/<this>/options`, `/v1/<this>/verify`.
    fn resource(self) -> &'static str {
        match self {
            Kind::Registration => "registrations",
            Kind::Authentication => "authentications",
        }
    }

    /// The tool's word for it: `/<this>/options`, `/<this>/result`.
    fn tool_name(self) -> &'static str {
        match self {
            Kind::Registration => "attestation",
            Kind::Authentication => "assertion",
        }
    }
}

#[derive(Debug)]
struct Entry {
    ceremony_id: String,
    kind: Kind,
    expires: Instant,
    seq: u64,
}

/// A ceremony found for a result call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub ceremony_id: String,
    /// True when found by its challenge, false for the fallback.
    pub by_challenge: bool,
}

/// Outstanding ceremonies by challenge (the decoded bytes), bounded: at the
/// cap, expired entries go first, then the oldest.
#[derive(Debug)]
pub struct Ceremonies {
    cap: usize,
    next_seq: u64,
    by_challenge: HashMap<Vec<u8>, Entry>,
    /// Insertion order: seq -> challenge.
    order: BTreeMap<u64, Vec<u8>>,
}

impl Ceremonies {
    pub fn new(cap: usize) -> Ceremonies {
        Ceremonies {
            cap: cap.max(1),
            next_seq: 0,
            by_challenge: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_challenge.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_challenge.is_empty()
    }

    /// Remembers a ceremony until `expires`. A challenge seen again replaces
    /// the earlier entry.
    pub fn insert(
        &mut self,
        challenge: Vec<u8>,
        ceremony_id: String,
        kind: Kind,
        expires: Instant,
        now: Instant,
    ) {
        if let Some(old) = self.by_challenge.remove(&challenge) {
            self.order.remove(&old.seq);
        }
        if self.by_challenge.len() >= self.cap {
            self.purge(now);
        }
        while self.by_challenge.len() >= self.cap {
            match self.order.pop_first() {
                Some((_, oldest)) => {
                    self.by_challenge.remove(&oldest);
                }
                None => break,
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, challenge.clone());
        self.by_challenge.insert(
            challenge,
            Entry {
                ceremony_id,
                kind,
                expires,
                seq,
            },
        );
    }

    /// Takes (removes) the outstanding `kind` ceremony issued with
    /// `challenge`; when there is none (or no challenge could be read), the
    /// most recent outstanding ceremony of `kind`. Ceremonies of the other
    /// kind are never returned nor removed.
    pub fn take(&mut self, kind: Kind, challenge: Option<&[u8]>, now: Instant) -> Option<Found> {
        self.purge(now);
        let exact = challenge.filter(|c| {
            self.by_challenge
                .get(*c)
                .is_some_and(|entry| entry.kind == kind)
        });
        let (key, by_challenge) = match exact {
            Some(c) => (c.to_vec(), true),
            None => {
                let key = self.order.values().rev().find(|key| {
                    self.by_challenge
                        .get(*key)
                        .is_some_and(|entry| entry.kind == kind)
                })?;
                (key.clone(), false)
            }
        };
        let entry = self.by_challenge.remove(&key)?;
        self.order.remove(&entry.seq);
        Some(Found {
            ceremony_id: entry.ceremony_id,
            by_challenge,
        })
    }

    /// Drops every expired entry.
    fn purge(&mut self, now: Instant) {
        let order = &mut self.order;
        self.by_challenge.retain(|_, entry| {
            let live = entry.expires > now;
            if !live {
                order.remove(&entry.seq);
            }
            live
        });
    }
}

/// The challenge in a credential's `response.clientDataJSON`, decoded;
/// `None` for anything that is not a readable base64url challenge in a
/// base64url JSON object (never panics, bounded by the engine's limits).
pub fn challenge_of(credential: &Value) -> Option<Vec<u8>> {
    let text = credential
        .get("response")?
        .get("clientDataJSON")?
        .as_str()?;
    let client_data = b64url_decode("clientDataJSON", text, limits::CLIENT_DATA_JSON).ok()?;
    let client_data: Value = serde_json::from_slice(&client_data).ok()?;
    let challenge = client_data.get("challenge")?.as_str()?;
    b64url_decode("challenge", challenge, 1024)
        .ok()
        .filter(|c| !c.is_empty())
}

/// How long a ceremony stays findable: the options' `timeout`
/// (milliseconds, clamped to an hour; 5 minutes when absent) plus a grace.
fn lifetime(public_key: &Map<String, Value>) -> Duration {
    let timeout = public_key
        .get("timeout")
        .and_then(Value::as_u64)
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_CEREMONY_TIMEOUT, Duration::from_millis)
        .min(MAX_CEREMONY_TIMEOUT);
    timeout + EXPIRY_GRACE
}

// ---------------------------------------------------------------------------
// Requests

/// A required string member of the tool's request.
fn required_string<'a>(input: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match input.get(name) {
        None | Some(Value::Null) => Err(format!("{name}: missing")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{name}: expected a string")),
    }
}

fn copy_optional(input: &Map<String, Value>, out: &mut Map<String, Value>, names: &[&str]) {
    for name in names {
        if let Some(v) = input.get(*name).filter(|v| !v.is_null()) {
            out.insert((*name).to_string(), v.clone());
        }
    }
}

fn request_object(input: &Value) -> Result<&Map<String, Value>, String> {
    input
        .as_object()
        .ok_or_else(|| "request: expected a JSON object".to_string())
}

/// The upstream `registrations/options` body for the tool's
/// `/attestation/options` request. `displayName` defaults to `username`.
pub fn registration_options_request(input: &Value) -> Result<Value, String> {
    let input = request_object(input)?;
    let name = required_string(input, "username")?;
    let display_name = match input.get("displayName") {
        None | Some(Value::Null) => name,
        Some(Value::String(s)) => s,
        Some(_) => return Err("displayName: expected a string".into()),
    };
    let mut out = Map::new();
    out.insert(
        "user".into(),
        json!({"name": name, "displayName": display_name}),
    );
    copy_optional(
        input,
        &mut out,
        &["authenticatorSelection", "attestation", "extensions"],
    );
    Ok(Value::Object(out))
}

/// The upstream `authentications/options` body for the tool's
/// `/assertion/options` request. An empty `username` asks for a
/// discoverable-credential login (no `user`, empty allowCredentials).
pub fn authentication_options_request(input: &Value) -> Result<Value, String> {
    let input = request_object(input)?;
    let name = required_string(input, "username")?;
    let mut out = Map::new();
    if !name.is_empty() {
        out.insert("user".into(), json!({"name": name}));
    }
    copy_optional(input, &mut out, &["userVerification", "extensions"]);
    Ok(Value::Object(out))
}

/// Reads a request body (at most [`BODY_LIMIT`]) as JSON.
async fn read_json(body: Body) -> Result<Value, Reply> {
    let bytes = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(failed(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {BODY_LIMIT} bytes"),
            ));
        }
        Err(e) => {
            return Err(failed(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        failed(
            StatusCode::BAD_REQUEST,
            format!("request body is not valid JSON: {e}"),
        )
    })
}

// ---------------------------------------------------------------------------
// The proxy

/// The upstream client and the outstanding ceremonies.
#[derive(Debug)]
pub struct Proxy {
    upstream: String,
    client: reqwest::Client,
    ceremonies: Mutex<Ceremonies>,
}

impl Proxy {
    /// A proxy to `upstream` (https://host:port) calling it with `tls`.
    pub fn new(upstream: &str, tls: rustls::ClientConfig) -> anyhow::Result<Proxy> {
        let upstream = parse_https_url(upstream).map_err(|e| anyhow::anyhow!("--upstream: {e}"))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(UPSTREAM_TIMEOUT)
            .connect_timeout(UPSTREAM_CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .tcp_keepalive(Duration::from_secs(60))
            .user_agent(concat!(
                "signet-conformance-proxy/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .context("building the upstream HTTPS client")?;
        Ok(Proxy {
            upstream,
            client,
            ceremonies: Mutex::new(Ceremonies::new(CEREMONY_CAP)),
        })
    }

    fn ceremonies(&self) -> MutexGuard<'_, Ceremonies> {
        // The map stays consistent across a panic elsewhere: every method
        // leaves it whole before it could unwind.
        self.ceremonies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// POSTs `body` to `/v1/<path>`; the answer's JSON on 2xx, the tool's
    /// failure otherwise.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, Reply> {
        let url = format!("{}/v1/{path}", self.upstream);
        let mut response = self
            .client
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(|e| upstream_error(&url, &e))?;
        let status = response.status();
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > UPSTREAM_BODY_LIMIT {
                        return Err(failed(
                            StatusCode::BAD_GATEWAY,
                            format!("signet's answer to {url} exceeds {UPSTREAM_BODY_LIMIT} bytes"),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(upstream_error(&url, &e)),
            }
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                failed(
                    StatusCode::BAD_GATEWAY,
                    format!("signet's answer to {url} is not JSON: {e}"),
                )
            });
        }
        let message = problem_message(status.as_u16(), &bytes);
        tracing::info!(%url, status = status.as_u16(), %message, "signet refused");
        let status = if status.is_client_error() || status.is_server_error() {
            status
        } else {
            StatusCode::BAD_GATEWAY
        };
        Err(failed(status, message))
    }

    /// An options call: forward, remember the ceremony, answer the
    /// `publicKey` members.
    async fn options(&self, kind: Kind, request: Value) -> Result<Reply, Reply> {
        let answer = self
            .call(&format!("{}/options", kind.resource()), &request)
            .await?;
        let malformed = |what: &str| {
            failed(
                StatusCode::BAD_GATEWAY,
                format!("signet's {} options answer {what}", kind.resource()),
            )
        };
        let Value::Object(mut answer) = answer else {
            return Err(malformed("is not an object"));
        };
        let ceremony_id = match answer.remove("ceremonyId") {
            Some(Value::String(id)) if !id.is_empty() => id,
            _ => return Err(malformed("has no ceremonyId")),
        };
        let Some(Value::Object(public_key)) = answer.remove("publicKey") else {
            return Err(malformed("has no publicKey object"));
        };
        let challenge = public_key
            .get("challenge")
            .and_then(Value::as_str)
            .and_then(|c| b64url_decode("challenge", c, 1024).ok())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| malformed("has no base64url publicKey.challenge"))?;
        let now = Instant::now();
        self.ceremonies().insert(
            challenge,
            ceremony_id,
            kind,
            now + lifetime(&public_key),
            now,
        );
        Ok(ok(public_key))
    }

    /// A result call: find the ceremony, forward, answer ok or failed.
    async fn result(&self, kind: Kind, credential: Value) -> Result<Reply, Reply> {
        let challenge = challenge_of(&credential);
        let found = self
            .ceremonies()
            .take(kind, challenge.as_deref(), Instant::now())
            .ok_or_else(|| {
                failed(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "no outstanding {0} ceremony: call /{0}/options first \
                         (or the ceremony expired)",
                        kind.tool_name()
                    ),
                )
            })?;
        if !found.by_challenge {
            tracing::debug!(
                kind = kind.tool_name(),
                "challenge unreadable or unknown; verifying against the latest ceremony"
            );
        }
        let request = json!({"ceremonyId": found.ceremony_id, "credential": credential});
        self.call(&format!("{}/verify", kind.resource()), &request)
            .await?;
        Ok(ok(Map::new()))
    }
}

fn upstream_error(url: &str, e: &reqwest::Error) -> Reply {
    let mut message = format!("calling signet at {url}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    tracing::warn!(%message, "upstream call failed");
    let status = if e.is_timeout() {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    failed(status, message)
}

fn either(r: Result<Reply, Reply>) -> Reply {
    r.unwrap_or_else(|e| e)
}

async fn attestation_options(State(proxy): State<Arc<Proxy>>, body: Body) -> Reply {
    either(
        async {
            let input = read_json(body).await?;
            let request = registration_options_request(&input)
                .map_err(|e| failed(StatusCode::BAD_REQUEST, e))?;
            proxy.options(Kind::Registration, request).await
        }
        .await,
    )
}

async fn assertion_options(State(proxy): State<Arc<Proxy>>, body: Body) -> Reply {
    either(
        async {
            let input = read_json(body).await?;
            let request = authentication_options_request(&input)
                .map_err(|e| failed(StatusCode::BAD_REQUEST, e))?;
            proxy.options(Kind::Authentication, request).await
        }
        .await,
    )
}

async fn attestation_result(State(proxy): State<Arc<Proxy>>, body: Body) -> Reply {
    either(
        async {
            let credential = read_json(body).await?;
            proxy.result(Kind::Registration, credential).await
        }
        .await,
    )
}

async fn assertion_result(State(proxy): State<Arc<Proxy>>, body: Body) -> Reply {
    either(
        async {
            let credential = read_json(body).await?;
            proxy.result(Kind::Authentication, credential).await
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webauthn::b64url;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn ceremonies_are_found_by_challenge_and_taken_once() {
        let t = Instant::now();
        let mut m = Ceremonies::new(10);
        m.insert(
            b"c1".to_vec(),
            "r1".into(),
            Kind::Registration,
            at(t, 60),
            t,
        );
        m.insert(
            b"c2".to_vec(),
            "a1".into(),
            Kind::Authentication,
            at(t, 60),
            t,
        );
        assert_eq!(m.len(), 2);
        let found = m.take(Kind::Registration, Some(b"c1"), t).unwrap();
        assert_eq!(
            found,
            Found {
                ceremony_id: "r1".into(),
                by_challenge: true
            }
        );
        assert_eq!(m.len(), 1);
        // Taken: no registration left at all, and the authentication one is
        // never handed to a registration result.
        assert_eq!(m.take(Kind::Registration, Some(b"c1"), t), None);
        assert_eq!(m.take(Kind::Registration, Some(b"c2"), t), None);
        assert_eq!(m.len(), 1);
        let found = m.take(Kind::Authentication, Some(b"c2"), t).unwrap();
        assert_eq!(found.ceremony_id, "a1");
        assert!(m.is_empty());
    }

    #[test]
    fn ceremonies_expire() {
        let t = Instant::now();
        let mut m = Ceremonies::new(10);
        m.insert(
            b"c1".to_vec(),
            "r1".into(),
            Kind::Registration,
            at(t, 10),
            t,
        );
        m.insert(
            b"c2".to_vec(),
            "r2".into(),
            Kind::Registration,
            at(t, 100),
            t,
        );
        // c1 expired: neither found by challenge nor by fallback; c2 stands in.
        let found = m.take(Kind::Registration, Some(b"c1"), at(t, 10)).unwrap();
        assert_eq!(
            found,
            Found {
                ceremony_id: "r2".into(),
                by_challenge: false
            }
        );
        assert!(m.is_empty());
        m.insert(b"c3".to_vec(), "r3".into(), Kind::Registration, at(t, 5), t);
        assert_eq!(m.take(Kind::Registration, None, at(t, 6)), None);
        assert!(m.is_empty());
    }

    #[test]
    fn the_oldest_ceremony_is_evicted_at_the_cap_after_expired_ones() {
        let t = Instant::now();
        let mut m = Ceremonies::new(3);
        m.insert(b"a".to_vec(), "A".into(), Kind::Registration, at(t, 100), t);
        m.insert(b"b".to_vec(), "B".into(), Kind::Registration, at(t, 5), t);
        m.insert(b"c".to_vec(), "C".into(), Kind::Registration, at(t, 100), t);
        // At the cap with b expired: b goes, a stays.
        m.insert(
            b"d".to_vec(),
            "D".into(),
            Kind::Registration,
            at(t, 100),
            at(t, 6),
        );
        assert_eq!(m.len(), 3);
        assert!(
            m.take(Kind::Registration, Some(b"a"), at(t, 6))
                .unwrap()
                .by_challenge
        );
        m.insert(
            b"a".to_vec(),
            "A".into(),
            Kind::Registration,
            at(t, 100),
            at(t, 6),
        );
        // Nothing expired: the oldest (c) goes.
        m.insert(
            b"e".to_vec(),
            "E".into(),
            Kind::Registration,
            at(t, 100),
            at(t, 6),
        );
        assert_eq!(m.len(), 3);
        let found = m.take(Kind::Registration, Some(b"c"), at(t, 6)).unwrap();
        assert_eq!(
            found.ceremony_id, "E",
            "c was evicted; fallback is the newest"
        );
        assert!(!found.by_challenge);
        for id in ["D", "A"] {
            let c = id.to_lowercase();
            let found = m.take(Kind::Registration, Some(c.as_bytes()), at(t, 6));
            assert_eq!(found.unwrap().ceremony_id, id);
        }
        assert!(m.is_empty());
        // Many more than the cap: bounded.
        for i in 0..100u32 {
            m.insert(
                i.to_be_bytes().to_vec(),
                i.to_string(),
                Kind::Authentication,
                at(t, 100),
                t,
            );
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.order.len(), 3);
    }

    #[test]
    fn a_repeated_challenge_replaces_its_entry() {
        let t = Instant::now();
        let mut m = Ceremonies::new(5);
        m.insert(
            b"c".to_vec(),
            "old".into(),
            Kind::Registration,
            at(t, 100),
            t,
        );
        m.insert(
            b"c".to_vec(),
            "new".into(),
            Kind::Registration,
            at(t, 100),
            t,
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m.order.len(), 1);
        assert_eq!(
            m.take(Kind::Registration, Some(b"c"), t)
                .unwrap()
                .ceremony_id,
            "new"
        );
    }

    #[test]
    fn the_fallback_is_the_most_recent_ceremony_of_the_kind() {
        let t = Instant::now();
        let mut m = Ceremonies::new(10);
        m.insert(
            b"r1".to_vec(),
            "R1".into(),
            Kind::Registration,
            at(t, 100),
            t,
        );
        m.insert(
            b"r2".to_vec(),
            "R2".into(),
            Kind::Registration,
            at(t, 100),
            t,
        );
        m.insert(
            b"a1".to_vec(),
            "A1".into(),
            Kind::Authentication,
            at(t, 100),
            t,
        );
        let found = m.take(Kind::Registration, None, t).unwrap();
        assert_eq!(found.ceremony_id, "R2");
        assert!(!found.by_challenge);
        let found = m.take(Kind::Registration, Some(b"unknown"), t).unwrap();
        assert_eq!(found.ceremony_id, "R1");
        assert_eq!(m.take(Kind::Registration, None, t), None);
        assert_eq!(
            m.take(Kind::Authentication, None, t).unwrap().ceremony_id,
            "A1"
        );
    }

    fn credential_with_client_data(client_data_json: Value) -> Value {
        json!({"id": "x", "type": "public-key", "response": {"clientDataJSON": client_data_json}})
    }

    #[test]
    fn the_challenge_is_read_from_client_data() {
        let cd = r#"{"type":"webauthn.create","challenge":"AQIDBA","origin":"https://localhost"}"#;
        let cred = credential_with_client_data(Value::from(b64url(cd.as_bytes())));
        assert_eq!(challenge_of(&cred), Some(vec![1, 2, 3, 4]));
        // Padded base64url is read too.
        let cd = r#"{"challenge":"AQIDBA=="}"#;
        let cred = credential_with_client_data(Value::from(b64url(cd.as_bytes())));
        assert_eq!(challenge_of(&cred), Some(vec![1, 2, 3, 4]));
    }

    #[test]
    fn hostile_client_data_yields_no_challenge() {
        let enc = |s: &str| Value::from(b64url(s.as_bytes()));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let huge = format!(r#"{{"challenge":"{}"}}"#, "A".repeat(100_000));
        let cases: Vec<Value> = vec![
            Value::Null,
            json!([]),
            json!("string"),
            json!({}),
            json!({"response": "x"}),
            json!({"response": {}}),
            json!({"response": {"clientDataJSON": 5}}),
            json!({"response": {"clientDataJSON": null}}),
            credential_with_client_data(Value::from("")),
            credential_with_client_data(Value::from("***not base64***")),
            credential_with_client_data(Value::from("A")),
            credential_with_client_data(enc("not json")),
            credential_with_client_data(enc("[1,2]")),
            credential_with_client_data(enc(r#"{"challenge":5}"#)),
            credential_with_client_data(enc(r#"{"challenge":""}"#)),
            credential_with_client_data(enc(r#"{"challenge":"%%%"}"#)),
            credential_with_client_data(enc(r#"{"challenge":null}"#)),
            credential_with_client_data(enc(r#"{"type":"webauthn.create"}"#)),
            credential_with_client_data(enc(&deep)),
            credential_with_client_data(enc(&huge)),
            credential_with_client_data(Value::from("A".repeat(2 * 1024 * 1024))),
            credential_with_client_data(Value::from(b64url(&[0xff, 0xfe, 0x00, 0x7b]))),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(challenge_of(c), None, "case {i}");
        }
    }

    #[test]
    fn answers_are_shaped_for_the_tool() {
        let mut members = Map::new();
        members.insert("challenge".into(), json!("abc"));
        members.insert("status".into(), json!("smuggled"));
        members.insert("errorMessage".into(), json!("smuggled"));
        assert_eq!(
            ok_body(members),
            json!({"status": "ok", "errorMessage": "", "challenge": "abc"})
        );
        assert_eq!(
            ok_body(Map::new()),
            json!({"status": "ok", "errorMessage": ""})
        );
        assert_eq!(
            failed_body("bad"),
            json!({"status": "failed", "errorMessage": "bad"})
        );
        assert_eq!(failed_body(" ")["errorMessage"], "request failed");
    }

    #[test]
    fn problems_become_error_messages() {
        let p = br#"{"type":"about:blank","title":"Invalid credential","status":400,
            "field":"clientDataJSON.challenge","detail":"not the issued challenge"}"#;
        assert_eq!(
            problem_message(400, p),
            "Invalid credential: clientDataJSON.challenge: not the issued challenge"
        );
        let p = br#"{"title":"The request is invalid","field":"user.name",
            "detail":"user.name: must not be empty"}"#;
        assert_eq!(
            problem_message(400, p),
            "The request is invalid: user.name: must not be empty"
        );
        assert_eq!(
            problem_message(404, br#"{"title":"Unknown user","status":404}"#),
            "Unknown user"
        );
        assert_eq!(problem_message(502, b""), "signet answered HTTP 502");
        assert_eq!(
            problem_message(500, b"<html>oops</html>"),
            "signet answered HTTP 500: <html>oops</html>"
        );
        assert_eq!(
            problem_message(400, br#"{"title":""}"#),
            "signet answered HTTP 400: {\"title\":\"\"}"
        );
        let long = "x".repeat(10_000);
        assert!(problem_message(500, long.as_bytes()).len() < 300);
    }

    #[test]
    fn option_requests_are_translated() {
        let r = registration_options_request(&json!({
            "username": "alice", "displayName": "Alice",
            "authenticatorSelection": {"userVerification": "required"},
            "attestation": "direct", "extensions": null, "other": 1
        }))
        .unwrap();
        assert_eq!(
            r,
            json!({
                "user": {"name": "alice", "displayName": "Alice"},
                "authenticatorSelection": {"userVerification": "required"},
                "attestation": "direct"
            })
        );
        let r = registration_options_request(&json!({"username": "bob"})).unwrap();
        assert_eq!(r, json!({"user": {"name": "bob", "displayName": "bob"}}));
        for bad in [
            json!([]),
            json!({}),
            json!({"username": 5}),
            json!({"username": "a", "displayName": []}),
        ] {
            assert!(registration_options_request(&bad).is_err(), "{bad}");
        }
        let r = authentication_options_request(&json!({
            "username": "alice", "userVerification": "preferred", "extensions": {"x": 1}
        }))
        .unwrap();
        assert_eq!(
            r,
            json!({"user": {"name": "alice"}, "userVerification": "preferred", "extensions": {"x": 1}})
        );
        let r = authentication_options_request(&json!({"username": ""})).unwrap();
        assert_eq!(r, json!({}));
        let e = authentication_options_request(&json!({"displayName": "x"})).unwrap_err();
        assert_eq!(e, "username: missing");
    }

    #[test]
    fn lifetimes_follow_the_options_timeout() {
        let pk = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            lifetime(&pk(json!({"timeout": 60000}))),
            Duration::from_secs(60) + EXPIRY_GRACE
        );
        assert_eq!(
            lifetime(&pk(json!({}))),
            DEFAULT_CEREMONY_TIMEOUT + EXPIRY_GRACE
        );
        assert_eq!(
            lifetime(&pk(json!({"timeout": -1}))),
            DEFAULT_CEREMONY_TIMEOUT + EXPIRY_GRACE
        );
        assert_eq!(
            lifetime(&pk(json!({"timeout": u64::MAX}))),
            MAX_CEREMONY_TIMEOUT + EXPIRY_GRACE
        );
    }

    #[test]
    fn upstream_urls_are_checked() {
        assert_eq!(
            parse_https_url("https://127.0.0.1:8443/").unwrap(),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            parse_https_url("https://signet.lab:8443").unwrap(),
            "https://signet.lab:8443"
        );
        for bad in [
            "http://127.0.0.1:8443",
            "127.0.0.1:8443",
            "https://h/?q=1",
            "https://h/#f",
        ] {
            assert!(parse_https_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ephemeral_certificate_serves_tls() {
        let (chain, key) = ephemeral_certificate().unwrap();
        assert_eq!(chain.len(), 1);
        let fp = fingerprint(&chain[0]);
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.chars().all(|c| c == ':' || c.is_ascii_hexdigit()));
        server_tls(chain, key).unwrap();
    }

    // ---- In-process end to end: proxy -> fake mutual-TLS upstream ----------

    struct Pki {
        ca: CertificateDer<'static>,
        server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    }

    fn pki() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fake signet CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf = |names: Vec<String>, eku: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, "leaf");
            params.extended_key_usages = vec![eku];
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
        };
        Pki {
            server: leaf(
                vec!["localhost".into(), "127.0.0.1".into()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            client: leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth),
            ca: ca.der().clone(),
        }
    }

    fn problem(status: StatusCode, title: &str, field: &str, detail: &str) -> Response {
        let body = json!({"type": "about:blank", "title": title, "status": status.as_u16(),
            "field": field, "detail": detail});
        let mut r = (status, axum::Json(body)).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/problem+json"),
        );
        r
    }

    fn random(n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        aws_lc_rs::rand::fill(&mut v).unwrap();
        v
    }

    /// ceremonyId -> (kind, challenge)
    type Issued = Arc<Mutex<HashMap<String, (Kind, Vec<u8>)>>>;

    fn fake_upstream(issued: Issued) -> Router {
        let options = |kind: Kind| {
            let issued = issued.clone();
            move |axum::Json(body): axum::Json<Value>| async move {
                if body["user"]["name"] == "nobody" {
                    return problem(
                        StatusCode::NOT_FOUND,
                        "Unknown user",
                        "user.name",
                        "no such user",
                    );
                }
                let challenge = random(32);
                let id = b64url(&random(16));
                issued
                    .lock()
                    .unwrap()
                    .insert(id.clone(), (kind, challenge.clone()));
                axum::Json(json!({"ceremonyId": id, "publicKey": {
                    "challenge": b64url(&challenge), "timeout": 60000, "echo": body}}))
                .into_response()
            }
        };
        let verify = |kind: Kind| {
            let issued = issued.clone();
            move |axum::Json(body): axum::Json<Value>| async move {
                let id = body["ceremonyId"].as_str().unwrap_or_default().to_string();
                let Some((k, challenge)) = issued.lock().unwrap().remove(&id) else {
                    return problem(StatusCode::NOT_FOUND, "Unknown ceremony", "ceremonyId", "");
                };
                assert_eq!(k, kind);
                match challenge_of(&body["credential"]) {
                    Some(c) if c == challenge => axum::Json(json!({"ok": true})).into_response(),
                    Some(_) => problem(
                        StatusCode::BAD_REQUEST,
                        "Invalid credential",
                        "clientDataJSON.challenge",
                        "not the issued challenge",
                    ),
                    None => problem(
                        StatusCode::BAD_REQUEST,
                        "Invalid credential",
                        "response.clientDataJSON",
                        "unreadable",
                    ),
                }
            }
        };
        Router::new()
            .route(
                "/v1/registrations/options",
                post(options(Kind::Registration)),
            )
            .route(
                "/v1/authentications/options",
                post(options(Kind::Authentication)),
            )
            .route("/v1/registrations/verify", post(verify(Kind::Registration)))
            .route(
                "/v1/authentications/verify",
                post(verify(Kind::Authentication)),
            )
    }

    struct Running {
        url: String,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Running {
        async fn start(tls: Arc<rustls::ServerConfig>, app: Router) -> Running {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}", listener.local_addr().unwrap());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, tls, app, async move {
                let _ = stopped.await;
            }));
            Running {
                url,
                stop: Some(stop),
                task,
            }
        }

        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            (&mut self.task).await.unwrap().unwrap();
        }
    }

    async fn post_json(client: &reqwest::Client, url: &str, body: &str) -> (u16, Value) {
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (status, body)
    }

    fn assert_failed(status: u16, body: &Value, expect_status: u16, needle: &str) {
        assert_eq!(status, expect_status, "{body}");
        assert_eq!(body["status"], "failed", "{body}");
        let message = body["errorMessage"].as_str().unwrap();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }

    fn client_data(ty: &str, challenge: &str) -> String {
        b64url(
            format!(r#"{{"type":"{ty}","challenge":"{challenge}","origin":"https://localhost"}}"#)
                .as_bytes(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proxy_forwards_over_mutual_tls() {
        let pki = pki();
        let issued: Issued = Arc::default();

        // The fake signet demands a client certificate from its CA.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let upstream_tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(pki.server.0.clone(), pki.server.1.clone_key())
            .unwrap();
        let upstream = Running::start(Arc::new(upstream_tls), fake_upstream(issued.clone())).await;

        let client_tls = client_tls(vec![pki.ca.clone()], pki.client.0, pki.client.1).unwrap();
        let proxy = Arc::new(Proxy::new(&upstream.url, client_tls).unwrap());
        let (chain, key) = ephemeral_certificate().unwrap();
        let proxy_cert = chain[0].clone();
        let front = Running::start(server_tls(chain, key).unwrap(), router(proxy.clone())).await;

        // The tool: trusts the ephemeral certificate, no client certificate.
        let mut tool_roots = rustls::RootCertStore::empty();
        tool_roots.add(proxy_cert).unwrap();
        let tool_tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(tool_roots)
            .with_no_client_auth();
        let tool = reqwest::Client::builder()
            .use_preconfigured_tls(tool_tls)
            .build()
            .unwrap();
        let url = |path: &str| format!("{}{path}", front.url);

        // Registration, positive.
        let (status, options) = post_json(
            &tool,
            &url("/attestation/options"),
            r#"{"username":"alice","displayName":"Alice","attestation":"none"}"#,
        )
        .await;
        assert_eq!(status, 200, "{options}");
        assert_eq!(options["status"], "ok");
        assert_eq!(options["errorMessage"], "");
        assert_eq!(options["timeout"], 60000);
        assert_eq!(
            options["echo"],
            json!({"user": {"name": "alice", "displayName": "Alice"}, "attestation": "none"})
        );
        assert!(options.get("ceremonyId").is_none());
        let challenge = options["challenge"].as_str().unwrap().to_string();
        // Another options call in between: found by challenge, not recency.
        let (_, other) =
            post_json(&tool, &url("/attestation/options"), r#"{"username":"bob"}"#).await;
        assert_ne!(other["challenge"], options["challenge"]);
        let cred = json!({"id": "AA", "type": "public-key",
            "response": {"clientDataJSON": client_data("webauthn.create", &challenge)}});
        let (status, body) = post_json(&tool, &url("/attestation/result"), &cred.to_string()).await;
        assert_eq!(
            (status, body.clone()),
            (200, json!({"status": "ok", "errorMessage": ""}))
        );

        // Wrong challenge: falls back to bob's ceremony; signet names the field.
        let cred = json!({"id": "AA", "type": "public-key",
            "response": {"clientDataJSON": client_data("webauthn.create", "AAAAAAAAAAAAAAAAAAAAAA")}});
        let (status, body) = post_json(&tool, &url("/attestation/result"), &cred.to_string()).await;
        assert_failed(status, &body, 400, "clientDataJSON.challenge");

        // Mangled clientDataJSON with no ceremony left: the proxy says so.
        let cred = json!({"id": "AA", "response": {"clientDataJSON": "%%%"}});
        let (status, body) = post_json(&tool, &url("/attestation/result"), &cred.to_string()).await;
        assert_failed(status, &body, 400, "/attestation/options first");

        // Mangled clientDataJSON with one outstanding: forwarded.
        post_json(
            &tool,
            &url("/attestation/options"),
            r#"{"username":"carol"}"#,
        )
        .await;
        let (status, body) = post_json(&tool, &url("/attestation/result"), &cred.to_string()).await;
        assert_failed(status, &body, 400, "response.clientDataJSON");

        // Assertion, positive and unknown user.
        let (status, options) =
            post_json(&tool, &url("/assertion/options"), r#"{"username":"alice"}"#).await;
        assert_eq!(status, 200, "{options}");
        let challenge = options["challenge"].as_str().unwrap().to_string();
        let cred = json!({"id": "AA", "type": "public-key",
            "response": {"clientDataJSON": client_data("webauthn.get", &challenge)}});
        let (status, body) = post_json(&tool, &url("/assertion/result"), &cred.to_string()).await;
        assert_eq!(
            (status, body["status"].clone()),
            (200, json!("ok")),
            "{body}"
        );
        let (status, body) = post_json(
            &tool,
            &url("/assertion/options"),
            r#"{"username":"nobody"}"#,
        )
        .await;
        assert_failed(status, &body, 404, "Unknown user: user.name: no such user");

        // The proxy's own input errors.
        let (status, body) = post_json(&tool, &url("/attestation/options"), "{not json").await;
        assert_failed(status, &body, 400, "not valid JSON");
        let (status, body) = post_json(&tool, &url("/attestation/result"), "").await;
        assert_failed(status, &body, 400, "not valid JSON");
        let (status, body) = post_json(&tool, &url("/assertion/options"), "{}").await;
        assert_failed(status, &body, 400, "username: missing");
        let big = format!(r#"{{"username":"{}"}}"#, "a".repeat(BODY_LIMIT));
        let (status, body) = post_json(&tool, &url("/attestation/options"), &big).await;
        assert_failed(status, &body, 413, "exceeds");
        let (status, body) = post_json(&tool, &url("/nowhere"), "{}").await;
        assert_failed(status, &body, 404, "no such endpoint");
        let r = tool.get(url("/attestation/options")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405);

        front.stop().await;
        upstream.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_upstream_is_a_bad_gateway() {
        let pki = pki();
        // A port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tls = client_tls(vec![pki.ca], pki.client.0, pki.client.1).unwrap();
        let proxy = Proxy::new(&format!("https://127.0.0.1:{port}"), tls).unwrap();
        let reply = proxy
            .options(Kind::Registration, json!({"user": {"name": "a"}}))
            .await
            .unwrap_err();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.body["status"], "failed");
        assert!(
            reply.body["errorMessage"]
                .as_str()
                .unwrap()
                .contains("calling signet")
        );
    }
}
