//! `signet mds fetch` and the service's scheduled MDS refresh, against a
//! local HTTPS server (a std thread with rustls, the test PKI's localhost
//! certificate) serving BLOBs signed here by a throwaway MDS PKI. Every
//! server, and the CONNECT proxy, listens on 127.0.0.1 and is stopped by the
//! test that started it.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use signet::config::MdsSettings;
use signet::flows::metadata::{self, MetadataError, RefreshOutcome};
use signet::mds::MdsError;
use signet::mds::fetch::{FetchError, FetchOptions};
use signet::store::{SledStore, Store};
use signet::webauthn::certpath::Cert;

use common::pki::{self as tls_pki, TestPki as TlsPki};

// ---------------------------------------------------------------------------
// A throwaway MDS PKI: root -> intermediate -> signer (ES256)

struct MdsPki {
    root: CertifiedIssuer<'static, KeyPair>,
    int_der: Vec<u8>,
    signer_der: Vec<u8>,
    signer: EcdsaKeyPair,
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Signet Fetch Test");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2090, 1, 1);
    p.serial_number = Some(SerialNumber::from(serial));
    p
}

impl MdsPki {
    fn new() -> MdsPki {
        let root = CertifiedIssuer::self_signed(
            ca_params("Fetch Test MDS Root", 1),
            KeyPair::generate().expect("root key"),
        )
        .expect("root");
        let int = CertifiedIssuer::signed_by(
            ca_params("Fetch Test MDS Intermediate", 2),
            KeyPair::generate().expect("intermediate key"),
            &root,
        )
        .expect("intermediate");
        let key = KeyPair::generate().expect("signer key");
        let signer =
            EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der())
                .expect("signer");
        let mut p = CertificateParams::default();
        p.distinguished_name = name("mds.fetch.test");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2090, 1, 1);
        p.serial_number = Some(SerialNumber::from(3u64));
        let signer_der = p.signed_by(&key, &int).expect("signer").der().to_vec();
        MdsPki {
            int_der: int.der().to_vec(),
            root,
            signer_der,
            signer,
        }
    }

    fn roots(&self) -> Vec<Cert> {
        vec![Cert::parse(self.root.der(), "roots[0]").expect("root")]
    }

    fn write_root(&self, path: &Path) {
        std::fs::write(path, self.root.pem()).expect("write MDS root");
    }

    /// BLOB `no` with `entries`, nextUpdate 30 days from now.
    fn blob(&self, no: u64, entries: Value) -> Vec<u8> {
        let header = json!({
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [STANDARD.encode(&self.signer_der), STANDARD.encode(&self.int_der)],
        });
        let payload = json!({
            "legalHeader": "Test terms.",
            "no": no,
            "nextUpdate": next_update(),
            "entries": entries,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = self
            .signer
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())).into_bytes()
    }
}

fn next_update() -> String {
    let d = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn uuid_text(a: &[u8; 16]) -> String {
    let h: String = a.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// One FIDO2 entry whose attestation root is `root_der`.
fn entry(aaguid: &[u8; 16], root_der: &[u8], description: &str) -> Value {
    let id = uuid_text(aaguid);
    json!({
        "aaguid": id,
        "metadataStatement": {
            "aaguid": id,
            "description": description,
            "authenticatorVersion": 1,
            "protocolFamily": "fido2",
            "schema": 3,
            "attestationTypes": ["basic_full"],
            "authenticationAlgorithms": ["secp256r1_ecdsa_sha256_raw"],
            "attestationRootCertificates": [STANDARD.encode(root_der)],
            "keyProtection": ["hardware", "secure_element"],
            "matcherProtection": ["on_chip"],
            "attachmentHint": ["external", "wired"]
        },
        "statusReports": [{"status": "FIDO_CERTIFIED_L1", "effectiveDate": "2024-02-01"}],
        "timeOfLastStatusChange": "2024-02-01"
    })
}

fn entries(pki: &MdsPki) -> Value {
    json!([entry(&[0x11; 16], pki.root.der(), "Fetch Test Key")])
}

// ---------------------------------------------------------------------------
// The HTTPS server

const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// What the server answers, one scripted answer per request before the
/// normal behaviour (the BLOB, or 304 to a matching If-None-Match).
enum Scripted {
    Status(u16, Option<&'static str>),
    /// 200 with this body and no Content-Length (ends at close).
    Unsized(Vec<u8>),
    /// 200 declaring this Content-Length, sending nothing.
    Declared(u64),
}

#[derive(Clone, Debug)]
struct Seen {
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

#[derive(Default)]
struct State {
    blob: Vec<u8>,
    etag: Option<String>,
    script: VecDeque<Scripted>,
    requests: Vec<Seen>,
}

struct MdsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
    tls: TlsPki,
}

impl MdsServer {
    fn start() -> MdsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls_pki::generate(&dir.path().join("pki"));
        let chain = CertificateDer::pem_file_iter(&tls.server_cert)
            .expect("server.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("server chain");
        let key = PrivateKeyDer::from_pem_file(&tls.server_key).expect("server key");
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server TLS"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(tcp) = tcp {
                    let _ = serve_one(tcp, config.clone(), &s);
                }
            }
        });
        MdsServer {
            addr,
            state,
            stop,
            thread: Some(thread),
            _dir: dir,
            tls,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mds/blob.jwt", self.addr.port())
    }

    fn serve(&self, blob: Vec<u8>, etag: Option<&str>) {
        let mut s = self.state.lock().expect("state");
        s.blob = blob;
        s.etag = etag.map(str::to_string);
    }

    fn script(&self, answers: Vec<Scripted>) {
        self.state.lock().expect("state").script.extend(answers);
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.lock().expect("state").requests.clone()
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.tls.cert_der("ca"))
    }
}

impl Drop for MdsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a request head (up to the blank line), at most 16 KiB.
fn read_head(stream: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn serve_one(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = read_head(&mut tls)?;
    let seen = Seen {
        if_none_match: header(&head, "if-none-match").map(str::to_string),
        if_modified_since: header(&head, "if-modified-since").map(str::to_string),
    };
    let (scripted, blob, etag) = {
        let mut s = state
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        s.requests.push(seen.clone());
        (s.script.pop_front(), s.blob.clone(), s.etag.clone())
    };
    let mut out = Vec::new();
    match scripted {
        Some(Scripted::Status(code, retry_after)) => {
            write!(out, "HTTP/1.1 {code} Scripted\r\nContent-Length: 0\r\n")?;
            if let Some(r) = retry_after {
                write!(out, "Retry-After: {r}\r\n")?;
            }
        }
        Some(Scripted::Unsized(body)) => {
            write!(out, "HTTP/1.1 200 OK\r\n")?;
            out.extend_from_slice(b"Connection: close\r\n\r\n");
            out.extend_from_slice(&body);
            tls.write_all(&out)?;
            tls.conn.send_close_notify();
            return tls.flush();
        }
        Some(Scripted::Declared(n)) => {
            write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n")?;
        }
        None if etag.is_some() && seen.if_none_match == etag => {
            write!(out, "HTTP/1.1 304 Not Modified\r\n")?;
            if let Some(e) = &etag {
                write!(out, "ETag: {e}\r\n")?;
            }
        }
        None => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\nLast-Modified: {LAST_MODIFIED}\r\n",
                blob.len()
            )?;
            if let Some(e) = &etag {
                write!(out, "ETag: {e}\r\n")?;
            }
            out.extend_from_slice(b"Connection: close\r\n\r\n");
            out.extend_from_slice(&blob);
            tls.write_all(&out)?;
            tls.conn.send_close_notify();
            return tls.flush();
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    tls.write_all(&out)?;
    tls.conn.send_close_notify();
    tls.flush()
}

// ---------------------------------------------------------------------------
// A CONNECT proxy

struct ConnectProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, st) = (targets.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(client) = client {
                    let t = t.clone();
                    std::thread::spawn(move || {
                        let _ = tunnel(client, &t);
                    });
                }
            }
        });
        ConnectProxy {
            addr,
            targets,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one CONNECT to a 127.0.0.1 target and relays both ways.
fn tunnel(mut client: TcpStream, targets: &Mutex<Vec<String>>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = read_head(&mut client)?;
    let target = head
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    targets
        .lock()
        .map_err(|_| std::io::Error::other("poisoned"))?
        .push(target.clone());
    if !target.starts_with("127.0.0.1:") {
        client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(&target)?;
    upstream.set_read_timeout(Some(Duration::from_secs(10)))?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}

// ---------------------------------------------------------------------------
// Helpers

struct Local {
    _dir: tempfile::TempDir,
    data: PathBuf,
    store: SledStore,
}

fn local() -> Local {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let store = SledStore::open(&data).expect("store");
    Local {
        _dir: dir,
        data,
        store,
    }
}

fn settings(url: &str) -> MdsSettings {
    MdsSettings {
        url: url.to_string(),
        refresh_interval: Duration::from_secs(86_400),
        proxy: None,
        root: None,
        crls: Vec::new(),
    }
}

fn options(server: &MdsServer) -> FetchOptions {
    FetchOptions {
        extra_roots: vec![server.ca_der()],
        timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        retry_after_max: Duration::from_millis(200),
        ..FetchOptions::default()
    }
}

fn refresh(
    l: &Local,
    settings: &MdsSettings,
    pki: &MdsPki,
    options: &FetchOptions,
) -> Result<RefreshOutcome, MetadataError> {
    metadata::refresh(
        &l.store,
        &l.data,
        settings,
        &pki.roots(),
        &[],
        options,
        SystemTime::now(),
    )
}

fn installed_no(outcome: Result<RefreshOutcome, MetadataError>) -> u64 {
    match outcome {
        Ok(RefreshOutcome::Installed(r)) => r.no,
        other => panic!("expected an install, got {other:?}"),
    }
}

fn catalog_no(l: &Local) -> Option<u64> {
    l.store
        .metadata_status()
        .expect("status")
        .catalog
        .map(|c| c.no)
}

fn last_error(l: &Local) -> Option<String> {
    l.store.metadata_status().expect("status").last_error
}

// ---------------------------------------------------------------------------
// refresh(), in process

#[test]
fn fetch_installs_then_asks_conditionally_and_installs_what_is_newer() {
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let l = local();
    let s = settings(&server.url());
    let o = options(&server);

    let first_blob = pki.blob(1, entries(&pki));
    server.serve(first_blob.clone(), Some("\"blob-1\""));
    assert_eq!(installed_no(refresh(&l, &s, &pki, &o)), 1);
    assert_eq!(catalog_no(&l), Some(1));
    assert_eq!(
        std::fs::read(l.data.join(metadata::LAST_GOOD)).expect("last good BLOB"),
        first_blob
    );
    let first = &server.requests()[0];
    assert_eq!(first.if_none_match, None, "nothing held: unconditional");
    assert_eq!(first.if_modified_since, None);
    let kept: Value = serde_json::from_slice(
        &std::fs::read(l.data.join(metadata::VALIDATORS)).expect("validators kept"),
    )
    .expect("JSON");
    assert_eq!(kept["etag"], "\"blob-1\"");
    assert_eq!(kept["url"], server.url());

    // Same BLOB: the server answers 304 to the If-None-Match sent.
    match refresh(&l, &s, &pki, &o) {
        Ok(RefreshOutcome::NotModified { no }) => assert_eq!(no, Some(1)),
        other => panic!("expected not modified, got {other:?}"),
    }
    let second = server.requests()[1].clone();
    assert_eq!(second.if_none_match.as_deref(), Some("\"blob-1\""));
    assert_eq!(second.if_modified_since.as_deref(), Some(LAST_MODIFIED));
    assert_eq!(catalog_no(&l), Some(1));

    // A newer BLOB under a new ETag is installed.
    server.serve(pki.blob(2, entries(&pki)), Some("\"blob-2\""));
    match refresh(&l, &s, &pki, &o) {
        Ok(RefreshOutcome::Installed(r)) => {
            assert_eq!((r.no, r.previous_no), (2, Some(1)));
        }
        other => panic!("expected an install, got {other:?}"),
    }
    assert_eq!(catalog_no(&l), Some(2));

    // A server without ETags serving the installed BLOB again (a new
    // signature, same no): not modified, no error recorded.
    server.serve(pki.blob(2, entries(&pki)), None);
    match refresh(&l, &s, &pki, &o) {
        Ok(RefreshOutcome::NotModified { no }) => assert_eq!(no, Some(2)),
        other => panic!("expected not modified, got {other:?}"),
    }
    assert_eq!(last_error(&l), None);
    assert_eq!(server.requests().len(), 4);
    // Only Last-Modified came with it: that is what is sent next.
    let kept: Value = serde_json::from_slice(
        &std::fs::read(l.data.join(metadata::VALIDATORS)).expect("validators kept"),
    )
    .expect("JSON");
    assert_eq!(kept["etag"], Value::Null);
    assert_eq!(kept["lastModified"], LAST_MODIFIED);
}

#[test]
fn server_errors_and_429_are_retried_with_backoff() {
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let l = local();
    let s = settings(&server.url());
    let o = options(&server);
    server.serve(pki.blob(1, entries(&pki)), Some("\"a\""));

    server.script(vec![
        Scripted::Status(500, None),
        Scripted::Status(500, None),
    ]);
    assert_eq!(installed_no(refresh(&l, &s, &pki, &o)), 1);
    assert_eq!(server.requests().len(), 3, "two 500s, then the BLOB");

    // 429 and 503 with Retry-After (capped by the options), then 200.
    server.serve(pki.blob(2, entries(&pki)), Some("\"b\""));
    server.script(vec![
        Scripted::Status(429, Some("1")),
        Scripted::Status(503, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
    ]);
    let started = Instant::now();
    assert_eq!(installed_no(refresh(&l, &s, &pki, &o)), 2);
    assert_eq!(server.requests().len(), 6);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "Retry-After is capped"
    );

    // Attempts run out: the last status is reported with the count.
    server.script((0..5).map(|_| Scripted::Status(502, None)).collect());
    let err =
        refresh(&l, &s, &pki, &FetchOptions { attempts: 3, ..o }).expect_err("502 every time");
    let text = err.to_string();
    assert!(
        text.contains(&server.url()) && text.contains("HTTP 502") && text.contains("3 attempts"),
        "{text}"
    );
    assert_eq!(server.requests().len(), 9);
    assert_eq!(catalog_no(&l), Some(2));
    assert_eq!(last_error(&l), Some(text));
}

#[test]
fn not_found_fails_at_once_and_is_recorded_while_the_catalog_stays() {
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let l = local();
    let s = settings(&server.url());
    let o = options(&server);
    server.serve(pki.blob(1, entries(&pki)), None);
    assert_eq!(installed_no(refresh(&l, &s, &pki, &o)), 1);

    server.script(vec![Scripted::Status(404, None)]);
    let err = refresh(&l, &s, &pki, &o).expect_err("404");
    assert!(
        matches!(
            &err,
            MetadataError::Fetch(FetchError::Status { status, attempts: 1, .. })
                if status.as_u16() == 404
        ),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 2, "a 404 is not retried");
    let recorded = last_error(&l).expect("recorded");
    assert!(
        recorded.contains(&server.url()) && recorded.contains("HTTP 404"),
        "{recorded}"
    );
    assert_eq!(catalog_no(&l), Some(1));
    assert!(l.data.join(metadata::LAST_GOOD).is_file());

    // The next good refresh clears the error.
    server.serve(pki.blob(2, entries(&pki)), None);
    assert_eq!(installed_no(refresh(&l, &s, &pki, &o)), 2);
    assert_eq!(last_error(&l), None);
}

#[test]
fn a_body_over_the_limit_is_refused() {
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let l = local();
    let s = settings(&server.url());
    let o = options(&server);

    // Declared larger than the default 16 MiB: refused before reading.
    server.script(vec![Scripted::Declared(16 * 1024 * 1024 + 1)]);
    let err = refresh(&l, &s, &pki, &o).expect_err("too large");
    assert!(
        matches!(err, MetadataError::Fetch(FetchError::TooLarge { limit, .. }) if limit == 16 * 1024 * 1024),
        "{err:?}"
    );
    // Undeclared, growing past a small limit while it streams.
    server.script(vec![Scripted::Unsized(vec![b'x'; 256 * 1024])]);
    let small = FetchOptions {
        max_bytes: 64 * 1024,
        ..o.clone()
    };
    let err = refresh(&l, &s, &pki, &small).expect_err("too large");
    assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");
    assert_eq!(server.requests().len(), 2, "not retried");
    assert_eq!(catalog_no(&l), None);
    assert!(last_error(&l).is_some_and(|e| e.contains("larger than")));
}

#[test]
fn a_badly_signed_blob_is_refused_and_the_catalog_stays() {
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let l = local();
    let s = settings(&server.url());
    let o = options(&server);
    let good = pki.blob(1, entries(&pki));
    server.serve(good.clone(), Some("\"1\""));
    assert_eq!(installed_no(refresh(&l, &s, &pki, &o)), 1);

    let mut bad = pki.blob(2, entries(&pki));
    let last = bad.len() - 3;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    server.serve(bad, Some("\"2\""));
    let err = refresh(&l, &s, &pki, &o).expect_err("bad signature");
    assert!(
        matches!(err, MetadataError::Blob(MdsError::Signature)),
        "{err:?}"
    );
    assert_eq!(catalog_no(&l), Some(1));
    assert_eq!(
        std::fs::read(l.data.join(metadata::LAST_GOOD)).expect("last good"),
        good
    );
    let recorded = last_error(&l).expect("recorded");
    assert!(
        recorded.contains(&server.url()) && recorded.contains("signature"),
        "{recorded}"
    );

    // A BLOB from another root is refused too.
    let other = MdsPki::new();
    server.serve(other.blob(3, entries(&other)), None);
    let err = refresh(&l, &s, &pki, &o).expect_err("wrong root");
    assert!(
        matches!(err, MetadataError::Blob(MdsError::Chain(_))),
        "{err:?}"
    );
    assert_eq!(catalog_no(&l), Some(1));
}

#[test]
fn an_untrusted_server_certificate_is_refused_without_retries() {
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let l = local();
    let s = settings(&server.url());
    server.serve(pki.blob(1, entries(&pki)), None);
    let o = FetchOptions {
        extra_roots: Vec::new(),
        ..options(&server)
    };
    let err = refresh(&l, &s, &pki, &o).expect_err("unknown issuer");
    let text = err.to_string();
    assert!(
        text.contains(&server.url()) && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(!text.contains("attempts"), "a TLS refusal is final: {text}");
    assert!(server.requests().is_empty());
}

#[test]
fn the_proxy_is_used_and_named_when_it_fails() {
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let proxy = ConnectProxy::start();
    let l = local();
    let mut s = settings(&server.url());
    s.proxy = Some(format!("http://user:secret@{}", proxy.addr));
    server.serve(pki.blob(1, entries(&pki)), None);
    assert_eq!(installed_no(refresh(&l, &s, &pki, &options(&server))), 1);
    assert_eq!(
        proxy.targets.lock().expect("targets").as_slice(),
        [format!("127.0.0.1:{}", server.addr.port())]
    );

    // A proxy nobody listens on: the error names it, without credentials.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    s.proxy = Some(format!("http://user:secret@127.0.0.1:{port}"));
    let o = FetchOptions {
        attempts: 2,
        ..options(&server)
    };
    let err = refresh(&l, &s, &pki, &o).expect_err("no proxy there");
    let text = err.to_string();
    assert!(
        text.contains(&format!("via proxy http://127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
    assert!(
        text.contains("2 attempts"),
        "connection errors are retried: {text}"
    );
}

// ---------------------------------------------------------------------------
// signet mds fetch, through the binary

fn signet(args: &[&str]) -> Output {
    Command::new(common::server::signet_bin())
        .args(args)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .output()
        .expect("run signet")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn the_cli_fetches_with_the_config_and_a_private_ca() {
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki.write_root(&tmp.path().join("mds-root.pem"));
    let config = tmp.path().join("signet.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"
[[clients]]
name = "core"
role = "rp"
san_uri = "urn:signet:role:rp"
[rp]
id = "localhost"
origins = ["https://localhost"]
[store]
data_dir = "state"
[keys]
profile = "softhsm/profile.toml"
[mds]
url = "{}"
root = "mds-root.pem"
"#,
            server.url()
        ),
    )
    .expect("write config");
    let c = config.to_str().expect("path");
    let ca = server.tls.ca_cert.to_str().expect("path");
    server.serve(pki.blob(1, entries(&pki)), Some("\"cli-1\""));

    // Without --ca the server's certificate is not trusted.
    let out = signet(&["mds", "fetch", "--config", c]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&server.url()) && stderr.contains("certificate"),
        "{stderr}"
    );

    let doc = stdout_json(&signet(&[
        "mds", "fetch", "--config", c, "--ca", ca, "--json",
    ]));
    assert_eq!(doc["outcome"], "installed");
    assert_eq!(doc["no"], 1);
    assert_eq!(doc["entries"], 1);

    let out = signet(&["mds", "fetch", "--config", c, "--ca", ca]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not modified"), "{text}");
    assert_eq!(
        server
            .requests()
            .last()
            .and_then(|r| r.if_none_match.clone()),
        Some("\"cli-1\"".to_string())
    );

    // --url and --root override the config; a newer BLOB is installed.
    server.serve(pki.blob(2, entries(&pki)), Some("\"cli-2\""));
    let root = tmp.path().join("mds-root.pem");
    let doc = stdout_json(&signet(&[
        "mds",
        "fetch",
        "--url",
        &server.url(),
        "--root",
        root.to_str().expect("path"),
        "--config",
        c,
        "--ca",
        ca,
        "--json",
    ]));
    assert_eq!(
        (doc["outcome"].as_str(), doc["no"].as_u64()),
        (Some("installed"), Some(2))
    );

    let status = stdout_json(&signet(&["mds", "status", "--config", c, "--json"]));
    assert_eq!(status["no"], 2);
    assert_eq!(status["source"], server.url());
    assert_eq!(status["lastError"], Value::Null);

    // Both installs are in the audit log.
    let store = SledStore::open(&tmp.path().join("state")).expect("store");
    let events: Vec<String> = store
        .audit_range(1, 100)
        .expect("audit")
        .iter()
        .map(|e| signet::audit::decode_body(&e.body).expect("event").event)
        .collect();
    assert_eq!(events, ["mds.installed", "mds.installed"]);
}

#[test]
fn cli_fetch_arguments_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("data");
    let d = d.to_str().expect("path");
    let refused = |out: Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    };
    refused(
        signet(&["mds", "fetch", "--data-dir", d]),
        "--url is required",
    );
    refused(
        signet(&[
            "mds",
            "fetch",
            "--url",
            "http://mds.example/",
            "--data-dir",
            d,
        ]),
        "must be https",
    );
    let missing = tmp.path().join("missing.pem");
    refused(
        signet(&[
            "mds",
            "fetch",
            "--url",
            "https://127.0.0.1:1/",
            "--crl",
            missing.to_str().expect("path"),
            "--data-dir",
            d,
        ]),
        "--crl",
    );
    refused(
        signet(&[
            "mds",
            "fetch",
            "--url",
            "https://127.0.0.1:1/",
            "--ca",
            missing.to_str().expect("path"),
            "--data-dir",
            d,
        ]),
        "--ca",
    );
}

// ---------------------------------------------------------------------------
// signet serve refreshes by itself

#[test]
fn serve_with_an_mds_table_picks_the_blob_up_by_itself() {
    use signet::testkit::pki::TestPki as AttestationPki;
    use signet::testkit::{Ceremony, SoftAuthenticator};
    use signet::webauthn::{CoseAlgorithm, b64url_decode};

    const AAGUID: [u8; 16] = [0x5e; 16];
    let pki = MdsPki::new();
    let server = MdsServer::start();
    let attestation_pki = AttestationPki::packed(SystemTime::now(), AAGUID);
    server.serve(
        pki.blob(
            7,
            json!([entry(&AAGUID, &attestation_pki.root.der, "Fetched Key")]),
        ),
        Some("\"serve-7\""),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("mds-root.pem");
    pki.write_root(&root);
    // The service trusts the system's CAs; this test's CA stands in for
    // them (rustls-native-certs reads SSL_CERT_FILE). The child inherits it.
    // SAFETY: nextest runs each test in its own process, and no other
    // thread of this one reads the environment.
    unsafe { std::env::set_var("SSL_CERT_FILE", &server.tls.ca_cert) };
    let mut signet_server = common::server::SignetServer::start_with(&format!(
        "[mds]\nurl = \"{}\"\nroot = \"{}\"\nrefresh_interval_s = 3600\n",
        server.url(),
        root.display()
    ));
    unsafe { std::env::remove_var("SSL_CERT_FILE") };

    let register = |n: usize| -> Value {
        let (status, options) = signet_server.post(
            "rp",
            "/v1/registrations/options",
            &json!({ "user": { "name": format!("user{n}@example.com") }, "attestation": "direct" }),
        );
        assert_eq!(status, 200, "{options}");
        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        auth.aaguid = AAGUID;
        let user_id = options["publicKey"]["user"]["id"]
            .as_str()
            .expect("user id");
        auth.user_handle = b64url_decode("user.id", user_id, 64).expect("user id");
        let challenge = common::ceremony::challenge_of(&options);
        let parts = auth.register(
            &Ceremony::new(common::server::RP_ID, common::server::ORIGIN, &challenge),
            &attestation_pki.packed_attestation(),
        );
        let (status, answer) = signet_server.post(
            "rp",
            "/v1/registrations/verify",
            &json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
        );
        assert_eq!(status, 200, "{answer}");
        answer
    };

    // The start did not wait for the download (it runs seconds later);
    // registrations meanwhile are answered without the catalog.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    let answer = loop {
        n += 1;
        let answer = register(n);
        if answer["attestationTrusted"] == true {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the catalog never arrived; requests seen: {:?}",
            server.requests()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(answer["authenticator"], "Fetched Key");
    assert_eq!(server.requests().len(), 1, "one download, at the start");

    let (status, log) = signet_server.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("MDS BLOB installed"), "{log}");
    let config = signet_server.config.to_str().expect("path").to_string();
    let status = stdout_json(&signet(&["mds", "status", "--config", &config, "--json"]));
    assert_eq!(status["no"], 7);
    assert_eq!(status["source"], server.url());
    assert!(signet_server.data_dir().join(metadata::LAST_GOOD).is_file());
}

#[test]
fn serve_refuses_to_start_on_a_bad_mds_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("not-a-root.pem");
    std::fs::write(&bad, "not a certificate").expect("write");
    let hsm = common::softhsm::SoftHsm::new();
    let config = tmp.path().join("signet.toml");
    std::fs::write(
        &config,
        common::server::config_text(
            &hsm.profile_path(),
            &format!(
                "[mds]\nurl = \"https://127.0.0.1:1/\"\nroot = \"{}\"\n",
                bad.display()
            ),
        ),
    )
    .expect("write config");
    let out = common::server::allow_root_if_root(&mut Command::new(common::server::signet_bin()))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("SIGNET_LISTEN")
        .output()
        .expect("run signet serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mds.root"), "{stderr}");
}
