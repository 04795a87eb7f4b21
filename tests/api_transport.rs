//! The mutual-TLS transport of `signet serve`, in process: `api::tls`
//! builds the rustls configuration from a generated PKI, `api::server`
//! serves a tiny router that echoes the caller, and real TLS clients
//! connect to 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Extension, Json, Router};
use common::pki::{self, TestPki};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use signet::api::server::{ServeOptions, serve};
use signet::api::tls::{peer_identity, server_config};
use signet::config::TlsSettings;
use signet::identity::{ApiRole, Caller, ClientRule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Long enough for any legitimate wait on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(5);

fn settings(pki: &TestPki, tls12: bool) -> TlsSettings {
    TlsSettings {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: pki.ca_cert.clone(),
        crls: vec![pki.ca_crl.clone()],
        tls12,
    }
}

fn rule(name: &str, role: ApiRole) -> ClientRule {
    ClientRule {
        name: name.to_string(),
        role,
        spki_sha256: None,
        subject: None,
        san_uri: None,
        san_dns: None,
    }
}

/// A pin rule for officer's key and a subject rule for auditor come first,
/// so their certificates get those rules' names only if the pin and the
/// subject match; then one SAN URI rule per role.
fn rules(pki: &TestPki) -> Arc<[ClientRule]> {
    let mut pinned = rule("pinned-officer", ApiRole::Officer);
    pinned.spki_sha256 = Some(pki.spki_sha256["officer"]);
    let mut by_subject = rule("subject-auditor", ApiRole::Auditor);
    by_subject.subject = Some(pki::subject("auditor"));
    let mut rules = vec![pinned, by_subject];
    for (name, role) in [
        ("core-banking", ApiRole::Rp),
        ("officers", ApiRole::Officer),
        ("auditors", ApiRole::Auditor),
        ("monitoring", ApiRole::Monitor),
    ] {
        let mut r = rule(name, role);
        r.san_uri = Some(pki::role_uri(role.as_str()));
        rules.push(r);
    }
    rules.into()
}

fn options() -> ServeOptions {
    ServeOptions {
        max_connections: 16,
        handshake_timeout: Duration::from_secs(3),
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn whoami(Extension(caller): Extension<Arc<Caller>>) -> Json<Value> {
    Json(json!({
        "role": caller.role().map(ApiRole::as_str),
        "name": caller.grant.as_ref().map(|(n, _)| n.clone()),
        "subject": caller.identity.subject,
        "serial": caller.identity.serial_hex,
        "san_uris": caller.identity.san_uris,
        "spki": hex(&caller.identity.spki_sha256),
    }))
}

/// `/` echoes the caller; `/slow` says it started, then answers 300 ms
/// later; `/hang` says it started and answers a minute later.
fn app(started: mpsc::UnboundedSender<()>) -> Router {
    let hang_started = started.clone();
    Router::new()
        .route("/", get(whoami))
        .route(
            "/slow",
            get(move |caller: Extension<Arc<Caller>>| async move {
                let _ = started.send(());
                tokio::time::sleep(Duration::from_millis(300)).await;
                whoami(caller).await
            }),
        )
        .route(
            "/hang",
            get(move |caller: Extension<Arc<Caller>>| async move {
                let _ = hang_started.send(());
                tokio::time::sleep(Duration::from_secs(60)).await;
                whoami(caller).await
            }),
        )
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    slow_started: mpsc::UnboundedReceiver<()>,
}

impl Running {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE * 2, self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
            .expect("serve result");
    }
}

async fn start(pki: &TestPki, tls: Arc<rustls::ServerConfig>, opts: ServeOptions) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let (started_tx, slow_started) = mpsc::unbounded_channel();
    let task = tokio::spawn(serve(
        listener,
        tls,
        rules(pki),
        app(started_tx),
        opts,
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        addr,
        stop: Some(stop),
        task,
        slow_started,
    }
}

async fn start_default(pki: &TestPki) -> Running {
    let tls = server_config(&settings(pki, true)).expect("server config");
    start(pki, tls, options()).await
}

async fn connect(
    config: rustls::ClientConfig,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Sends `GET path` on a keep-alive connection and reads one response:
/// status, head, JSON body.
async fn get_on(stream: &mut TlsStream<TcpStream>, path: &str) -> (u16, String, Value) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    (status, head, body)
}

async fn request(config: rustls::ClientConfig, addr: SocketAddr, path: &str) -> (u16, Value) {
    let mut stream = tokio::time::timeout(PATIENCE, connect(config, addr))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (status, _, body) = tokio::time::timeout(PATIENCE, get_on(&mut stream, path))
        .await
        .expect("response in time");
    (status, body)
}

/// Connects and expects the server to refuse the handshake: either the
/// client's handshake fails, or (TLS 1.3, where the client finishes first)
/// the first read returns the server's alert or the end of the stream.
/// Nothing is written, so no HTTP response can ever come back. Returns
/// the error as text.
async fn expect_rejected(config: rustls::ClientConfig, addr: SocketAddr) -> String {
    let mut stream = match tokio::time::timeout(PATIENCE, connect(config, addr))
        .await
        .expect("handshake finishes in time")
    {
        Err(e) => return e.to_string(),
        Ok(s) => s,
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
        Err(_) => panic!("the server accepted the connection"),
        Ok(Ok(0)) => "closed".to_string(),
        Ok(Ok(n)) => panic!("unexpected data: {:?}", &buf[..n]),
        Ok(Err(e)) => e.to_string(),
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_certificates_get_their_role_by_san_pin_and_subject() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let server = start_default(&pki).await;

    for (client, role, name) in [
        ("rp", "rp", "core-banking"),
        ("officer", "officer", "pinned-officer"),
        ("auditor", "auditor", "subject-auditor"),
        ("monitor", "monitor", "monitoring"),
    ] {
        let (status, body) = request(pki::client_config(&pki, client), server.addr, "/").await;
        assert_eq!(status, 200, "{client}");
        assert_eq!(body["role"], role, "{client}: {body}");
        assert_eq!(body["name"], name, "{client}: {body}");
        assert_eq!(body["subject"], pki::subject(client), "{client}");
        assert_eq!(body["san_uris"], json!([pki::role_uri(role)]), "{client}");
        assert_eq!(body["spki"], hex(&pki.spki_sha256[client]), "{client}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_matching_no_rule_connects_without_grant() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let server = start_default(&pki).await;
    let (status, body) = request(pki::client_config(&pki, "stranger"), server.addr, "/").await;
    assert_eq!(status, 200);
    assert_eq!(body["role"], Value::Null, "{body}");
    assert_eq!(body["name"], Value::Null, "{body}");
    assert_eq!(body["subject"], pki::subject("stranger"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refused_without_a_valid_unrevoked_certificate() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let server = start_default(&pki).await;

    let e = expect_rejected(pki::client_config_no_cert(&pki), server.addr).await;
    assert!(e.contains("CertificateRequired"), "no certificate: {e}");
    let e = expect_rejected(pki::client_config(&pki, "foreign"), server.addr).await;
    assert!(e.contains("UnknownCA"), "foreign CA: {e}");
    let e = expect_rejected(pki::client_config(&pki, "revoked"), server.addr).await;
    assert!(e.contains("CertificateRevoked"), "revoked: {e}");
    let e = expect_rejected(pki::client_config(&pki, "expired"), server.addr).await;
    assert!(e.contains("CertificateExpired"), "expired: {e}");

    // The same over TLS 1.2, where the refusal happens inside the handshake.
    let tls12 = [&rustls::version::TLS12];
    let e = expect_rejected(
        pki::client_config_versions(&pki, Some("revoked"), &tls12),
        server.addr,
    )
    .await;
    assert!(e.contains("CertificateRevoked"), "revoked, TLS 1.2: {e}");
    let e = expect_rejected(pki::client_config_versions(&pki, None, &tls12), server.addr).await;
    assert!(
        e.contains("CertificateRequired"),
        "no certificate, TLS 1.2: {e}"
    );

    // The server is still serving.
    let (status, _) = request(pki::client_config(&pki, "rp"), server.addr, "/").await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_gets_no_http_answer() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let server = start_default(&pki).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    // A reset is as good as a close; either way no HTTP came back.
    let _ = read;
    assert!(
        !answer.windows(5).any(|w| w == b"HTTP/"),
        "plaintext request got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    if let Some(first) = answer.first() {
        assert_eq!(*first, 0x15, "only a TLS alert record may come back");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_when_enabled_and_then_ecdhe_aead() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let tls12_only = || pki::client_config_versions(&pki, Some("rp"), &[&rustls::version::TLS12]);

    let off = server_config(&settings(&pki, false)).expect("config");
    let server = start(&pki, off, options()).await;
    let e = expect_rejected(tls12_only(), server.addr).await;
    assert!(
        e.contains("ProtocolVersion"),
        "TLS 1.2 client, tls12 = false: {e}"
    );
    // TLS 1.3 still works.
    let (status, _) = request(pki::client_config(&pki, "rp"), server.addr, "/").await;
    assert_eq!(status, 200);
    server.shutdown().await;

    let on = server_config(&settings(&pki, true)).expect("config");
    let server = start(&pki, on, options()).await;
    let mut stream = connect(tls12_only(), server.addr)
        .await
        .expect("TLS 1.2 handshake");
    let conn = stream.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!(
        "{:?}",
        conn.negotiated_cipher_suite().expect("suite").suite()
    );
    assert!(suite.starts_with("TLS_ECDHE_"), "{suite}");
    assert!(
        suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305"),
        "{suite}"
    );
    let (status, _, body) = get_on(&mut stream, "/").await;
    assert_eq!(status, 200);
    assert_eq!(body["role"], "rp");
    drop(stream);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_a_silent_connection() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let tls = server_config(&settings(&pki, true)).expect("config");
    let opts = ServeOptions {
        handshake_timeout: Duration::from_millis(300),
        ..options()
    };
    let server = start(&pki, tls, opts).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let began = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected end of stream, got {read:?}"
    );
    assert!(began.elapsed() >= Duration::from_millis(250));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let tls = server_config(&settings(&pki, true)).expect("config");
    // The header timeout is far away: only the idle watchdog can close it.
    let opts = ServeOptions {
        idle_timeout: Duration::from_millis(500),
        header_timeout: Duration::from_secs(60),
        ..options()
    };
    let server = start(&pki, tls, opts).await;
    let mut stream = connect(pki::client_config(&pki, "rp"), server.addr)
        .await
        .expect("handshake");
    let (status, _, _) = get_on(&mut stream, "/").await;
    assert_eq!(status, 200);
    let began = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("the server closes an idle connection");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected end of stream, got {read:?}"
    );
    assert!(began.elapsed() >= Duration::from_millis(400));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_queues_the_next_connection() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let tls = server_config(&settings(&pki, true)).expect("config");
    let opts = ServeOptions {
        max_connections: 2,
        ..options()
    };
    let server = start(&pki, tls, opts).await;
    let mut first = connect(pki::client_config(&pki, "rp"), server.addr)
        .await
        .expect("first");
    let mut second = connect(pki::client_config(&pki, "monitor"), server.addr)
        .await
        .expect("second");
    assert_eq!(get_on(&mut first, "/").await.0, 200);
    assert_eq!(get_on(&mut second, "/").await.0, 200);

    let config = pki::client_config(&pki, "auditor");
    let addr = server.addr;
    let mut third = tokio::spawn(async move {
        let mut s = connect(config, addr).await.expect("third");
        get_on(&mut s, "/").await.0
    });
    let waited = tokio::time::timeout(Duration::from_millis(800), &mut third).await;
    assert!(
        waited.is_err(),
        "the third connection was served while two were open"
    );

    drop(first);
    let status = tokio::time::timeout(PATIENCE, third)
        .await
        .expect("the third connection is served once one closes")
        .expect("task");
    assert_eq!(status, 200);
    assert_eq!(get_on(&mut second, "/").await.0, 200);
    drop(second);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let mut server = start_default(&pki).await;
    let addr = server.addr;
    let config = pki::client_config(&pki, "rp");
    let mut stream = connect(config, addr).await.expect("handshake");
    let in_flight = tokio::spawn(async move { get_on(&mut stream, "/slow").await });

    tokio::time::timeout(PATIENCE, server.slow_started.recv())
        .await
        .expect("the slow handler starts")
        .expect("channel");
    let _ = server.stop.take().expect("stop").send(());
    let (status, head, body) = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the in-flight request completes")
        .expect("task");
    assert_eq!(status, 200);
    assert_eq!(body["role"], "rp");
    assert!(head.contains("connection: close"), "{head}");

    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("serve returns")
        .expect("task")
        .expect("serve");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_wait() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let tls = server_config(&settings(&pki, true)).expect("config");
    let opts = ServeOptions {
        shutdown_grace: Duration::from_millis(200),
        ..options()
    };
    let mut server = start(&pki, tls, opts).await;
    let mut stream = connect(pki::client_config(&pki, "rp"), server.addr)
        .await
        .expect("handshake");
    let in_flight = tokio::spawn(async move {
        let _ = stream
            .write_all(b"GET /hang HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
        sink
    });
    tokio::time::timeout(PATIENCE, server.slow_started.recv())
        .await
        .expect("the hanging handler starts")
        .expect("channel");
    // A minute-long request does not hold the shutdown past the grace...
    server.shutdown().await;
    // ...and its connection is closed without an answer.
    let answer = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the connection is closed")
        .expect("task");
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
}

// ---- server_config ----

fn config_error(tls: &TlsSettings) -> signet::config::ConfigError {
    match server_config(tls) {
        Ok(_) => panic!("server_config accepted {tls:?}"),
        Err(e) => e,
    }
}

#[test]
fn config_errors_name_the_key() {
    let dir = tmp();
    let pki = pki::generate(dir.path());

    let mut s = settings(&pki, true);
    s.cert = dir.path().join("missing.pem");
    let e = config_error(&s);
    assert_eq!(e.key, "tls.cert", "{e}");
    assert!(e.reason.contains("cannot open"), "{e}");

    let mut s = settings(&pki, true);
    s.cert = pki.server_key.clone();
    let e = config_error(&s);
    assert_eq!(e.key, "tls.cert", "{e}");
    assert!(e.reason.contains("no PEM certificate"), "{e}");

    let mut s = settings(&pki, true);
    s.key = pki.key("rp");
    let e = config_error(&s);
    assert_eq!(e.key, "tls.key", "{e}");
    assert!(e.reason.contains("does not match"), "{e}");

    let mut s = settings(&pki, true);
    s.cert = pki.cert("expired");
    s.key = pki.key("expired");
    let e = config_error(&s);
    assert_eq!(e.key, "tls.cert", "{e}");
    assert!(e.reason.contains("expired"), "{e}");

    let mut s = settings(&pki, true);
    s.client_ca = pki.key("rp");
    let e = config_error(&s);
    assert_eq!(e.key, "tls.client_ca", "{e}");

    let garbage = dir.path().join("garbage.crl");
    std::fs::write(&garbage, b"this is not a CRL").expect("write");
    let mut s = settings(&pki, true);
    s.crls = vec![garbage.clone()];
    let e = config_error(&s);
    assert_eq!(e.key, "tls.crls[0]", "{e}");
    s.crls = vec![pki.ca_crl.clone(), garbage];
    let e = config_error(&s);
    assert_eq!(e.key, "tls.crls[1]", "{e}");

    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'a'; 1024 * 1024 + 1]).expect("write");
    let mut s = settings(&pki, true);
    s.client_ca = big;
    let e = config_error(&s);
    assert_eq!(e.key, "tls.client_ca", "{e}");
    assert!(e.reason.contains("larger than"), "{e}");
}

#[test]
fn stale_crl_is_refused_at_load() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let stale: PathBuf = dir.path().join("stale.crl");
    pki.write_crl(
        &stale,
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2021, 1, 1),
    );
    let mut s = settings(&pki, true);
    s.crls = vec![stale];
    let e = config_error(&s);
    assert_eq!(e.key, "tls.crls[0]", "{e}");
    assert!(e.reason.contains("stale"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_going_stale_while_running_fails_handshakes() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let soon: PathBuf = dir.path().join("soon.crl");
    let now = time::OffsetDateTime::now_utc();
    pki.write_crl(
        &soon,
        now - time::Duration::days(1),
        now + time::Duration::seconds(4),
    );
    let mut s = settings(&pki, true);
    s.crls = vec![soon];
    let tls = server_config(&s).expect("a fresh CRL loads");
    let server = start(&pki, tls, options()).await;
    let began = Instant::now();
    let (status, _) = request(pki::client_config(&pki, "rp"), server.addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "too slow to see the CRL fresh"
    );

    tokio::time::sleep(Duration::from_millis(5500).saturating_sub(began.elapsed())).await;
    // rustls reports an expired CRL as an unknown issuer.
    let e = expect_rejected(pki::client_config(&pki, "rp"), server.addr).await;
    assert!(e.contains("UnknownCA"), "{e}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn der_crl_is_accepted_and_checked() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let pem = std::fs::read(&pki.ca_crl).expect("read CRL");
    let der =
        rustls::pki_types::CertificateRevocationListDer::from_pem_slice(&pem).expect("PEM CRL");
    let der_path = dir.path().join("ca.crl.der");
    std::fs::write(&der_path, der.as_ref()).expect("write");
    let mut s = settings(&pki, true);
    s.crls = vec![der_path];
    let tls = server_config(&s).expect("DER CRL loads");
    let server = start(&pki, tls, options()).await;
    let e = expect_rejected(pki::client_config(&pki, "revoked"), server.addr).await;
    assert!(e.contains("CertificateRevoked"), "{e}");
    let (status, _) = request(pki::client_config(&pki, "rp"), server.addr, "/").await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[test]
fn peer_identity_reads_the_leaf() {
    let dir = tmp();
    let pki = pki::generate(dir.path());
    let id = peer_identity(&pki.cert_der("rp")).expect("identity");
    assert_eq!(id.spki_sha256, pki.spki_sha256["rp"]);
    assert_eq!(id.subject, "CN=signet test rp,O=signet test");
    assert_eq!(id.san_uris, vec!["urn:signet:role:rp".to_string()]);
    assert!(id.san_dns.is_empty());
    assert_eq!(id.serial_hex, "10");

    let server = peer_identity(&pki.cert_der("server")).expect("identity");
    assert_eq!(server.san_dns, vec!["localhost".to_string()]);
    assert!(server.san_uris.is_empty());
    assert_eq!(server.serial_hex, "02");

    assert!(peer_identity(b"not a certificate").is_err());
}
