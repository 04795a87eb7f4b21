//! demo-bank: a small web bank in front of signet, for trying signet in a
//! real browser. It plays core banking: it holds the `rp` client
//! certificate, calls signet over mutual TLS, and keeps what the browser
//! must not hold (ceremony ids, the pairing's desktop and phone secrets,
//! who is logged in) in its own per-browser session, a cookie with a
//! random id. The pages (static/, embedded) use the browser's own
//! `PublicKeyCredential.parseCreationOptionsFromJSON()` /
//! `parseRequestOptionsFromJSON()` and send `credential.toJSON()` as is.
//!
//! It is a demo: plain http on localhost (a secure context for WebAuthn),
//! sessions in memory, no CSRF tokens beyond SameSite=Strict cookies, and no
//! accounts other than signet's own users. See examples/demo-bank/README.md.
//!
//! ```sh
//! cargo run --example demo-bank -- --signet https://localhost:8443 \
//!     --ca var/dev/pki/ca.pem --cert var/dev/pki/rp.pem --key var/dev/pki/rp.key
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{ConnectInfo, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

mod mds;

const INDEX_HTML: &str = include_str!("static/index.html");
const PAIR_HTML: &str = include_str!("static/pair.html");
const COMMON_JS: &str = include_str!("static/common.js");
const APP_JS: &str = include_str!("static/app.js");
const PAIR_JS: &str = include_str!("static/pair.js");
const STYLE_CSS: &str = include_str!("static/style.css");

const COOKIE: &str = "demo_bank_session";
/// Sessions kept at most; the oldest goes first (a demo keeps memory bounded).
const SESSIONS_MAX: usize = 10_000;
/// The longest a desktop's status poll is held at signet, in seconds (below
/// signet's own limit, `server.request_timeout_ms` less a second).
const POLL_WAIT_MAX: u64 = 25;

#[derive(Parser, Debug)]
#[command(
    name = "demo-bank",
    about = "A demo web bank relaying to signet over mutual TLS (the role core banking plays)"
)]
struct Args {
    /// Address to serve http on. Browsers open it as http://localhost:PORT
    /// (RP ID "localhost"; signet's rp.origins must list that origin).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// signet's base URL.
    #[arg(long, default_value = "https://localhost:8443")]
    signet: String,
    /// The CA that issued signet's server certificate (PEM).
    #[arg(long, required_unless_present = "write_mds")]
    ca: Option<PathBuf>,
    /// The `rp` client certificate (PEM).
    #[arg(long, required_unless_present = "write_mds")]
    cert: Option<PathBuf>,
    /// The `rp` client certificate's key (PEM).
    #[arg(long, required_unless_present = "write_mds")]
    key: Option<PathBuf>,
    /// Write DIR/mds-root.pem and DIR/mds-blob.jwt and exit: a FIDO
    /// metadata BLOB, signed under a fresh test root, whose two entries
    /// describe Chromium's DevTools virtual authenticators (CTAP2 by AAGUID,
    /// U2F by attestation key id) with their self-signed batch certificate
    /// as the attestation root. Install it with the service stopped:
    /// `signet mds import DIR/mds-blob.jwt --root DIR/mds-root.pem --config
    /// signet.toml`. signet refuses a self-signed certificate in x5c unless
    /// the model's metadata pins it, so without this catalog a virtual
    /// authenticator cannot register with attestation "direct".
    #[arg(long, value_name = "DIR")]
    write_mds: Option<PathBuf>,
    /// The origin the phone opens the pairing page on (default
    /// http://localhost:PORT of --listen). signet's QR payload points at its
    /// own `[pairing] link`, which must be https; the demo rebuilds the link
    /// on this origin with the same fragment.
    #[arg(long)]
    public_origin: Option<String>,
}

/// What the bank keeps for one browser.
#[derive(Default)]
struct Session {
    last_seen: Option<Instant>,
    /// Logged in as (userId, userName).
    user: Option<(String, String)>,
    registration: Option<String>,
    authentication: Option<String>,
    /// Transactions this browser created.
    transactions: Vec<String>,
    /// pairingId -> desktop secret (pairings this browser started).
    desktop: HashMap<String, String>,
    /// pairingId -> phone secret (pairings this browser claimed).
    phone: HashMap<String, String>,
}

struct Bank {
    signet: String,
    client: reqwest::Client,
    public_origin: String,
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct SessionId(String);

type Shared = Arc<Bank>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.write_mds {
        return mds::write(dir);
    }
    let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
        anyhow::bail!("--ca, --cert and --key are required");
    };
    let signet = args.signet.trim_end_matches('/').to_string();
    let tls = client_tls(ca, cert, key)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(POLL_WAIT_MAX + 10))
        .user_agent("signet-demo-bank")
        .build()
        .context("building the HTTPS client")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let local = listener.local_addr()?;
    let public_origin = args
        .public_origin
        .map(|o| o.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://localhost:{}", local.port()));
    let bank = Arc::new(Bank {
        signet,
        client,
        public_origin: public_origin.clone(),
        sessions: Mutex::new(HashMap::new()),
    });

    let api = Router::new()
        .route("/session", get(session_info))
        .route("/logout", post(logout))
        .route("/registrations/options", post(registration_options))
        .route("/registrations/verify", post(registration_verify))
        .route("/authentications/options", post(authentication_options))
        .route("/authentications/verify", post(authentication_verify))
        .route("/transactions", post(transaction_create))
        .route("/transactions/{id}/approval", post(transaction_approval))
        .route("/transactions/{id}/receipt", get(transaction_receipt))
        .route("/pairings", post(pairing_create))
        .route("/pairings/{id}", get(pairing_status))
        .route("/pairings/{id}/consume", post(pairing_consume))
        .route("/pairings/{id}/claim", post(pairing_claim))
        .route("/pairings/{id}/approve", post(pairing_approve))
        .route("/pairings/{id}/deny", post(pairing_deny));
    let app = Router::new()
        .route("/", get(|| async { page(INDEX_HTML) }))
        .route("/pair", get(|| async { page(PAIR_HTML) }))
        .route("/common.js", get(|| async { script(COMMON_JS) }))
        .route("/app.js", get(|| async { script(APP_JS) }))
        .route("/pair.js", get(|| async { script(PAIR_JS) }))
        .route(
            "/style.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    STYLE_CSS,
                )
            }),
        )
        .nest("/api", api)
        .layer(middleware::from_fn_with_state(bank.clone(), with_session))
        .with_state(bank);

    println!("demo-bank: listening on {public_origin} (bound {local})");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The TLS configuration for calling signet: `ca` as the only trust
/// anchor, presenting the `rp` certificate.
fn client_tls(ca: &FsPath, cert: &FsPath, key: &FsPath) -> anyhow::Result<rustls::ClientConfig> {
    let read = |p: &FsPath, what: &str| {
        std::fs::read(p).with_context(|| format!("{what}: cannot read {}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(ca, "--ca")?) {
        roots
            .add(c.context("--ca: not a PEM certificate")?)
            .context("--ca: not a usable trust anchor")?;
    }
    let chain = CertificateDer::pem_slice_iter(&read(cert, "--cert")?)
        .collect::<Result<Vec<_>, _>>()
        .context("--cert: not a PEM certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(key, "--key")?).context("--key: not a PEM key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("--cert/--key: not a usable certificate and key")
}

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn script(js: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        js,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Sessions

fn random_id() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

impl Bank {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the session `id` (always present: the middleware made it).
    fn with<T>(&self, id: &SessionId, f: impl FnOnce(&mut Session) -> T) -> T {
        let mut sessions = self.sessions();
        let s = sessions.entry(id.0.clone()).or_default();
        f(s)
    }
}

/// Finds the browser's session by its cookie, or starts one and sets the
/// cookie on the answer.
async fn with_session(State(bank): State<Shared>, mut request: Request, next: Next) -> Response {
    let known = cookie_value(request.headers()).filter(|id| bank.sessions().contains_key(id));
    let (id, fresh) = match known {
        Some(id) => (id, false),
        None => (random_id(), true),
    };
    {
        let mut sessions = bank.sessions();
        if fresh && sessions.len() >= SESSIONS_MAX {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.entry(id.clone()).or_default().last_seen = Some(Instant::now());
    }
    request.extensions_mut().insert(SessionId(id.clone()));
    let mut response = next.run(request).await;
    if fresh {
        let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

// ---------------------------------------------------------------------------
// Calling signet

/// signet's status and JSON answer (Null when it sent none).
type Answer = (StatusCode, Value);

impl Bank {
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Answer, Refusal> {
        let url = format!("{}{path}", self.signet);
        let mut request = self.client.request(method, &url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request.send().await.map_err(|e| {
            problem(
                StatusCode::BAD_GATEWAY,
                &format!("cannot reach signet at {url}: {e}"),
            )
        })?;
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let text = response.text().await.map_err(|e| {
            problem(
                StatusCode::BAD_GATEWAY,
                &format!("reading signet's answer: {e}"),
            )
        })?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

/// A refusal of the demo bank itself (not signet's).
struct Refusal(StatusCode, String);

fn problem(status: StatusCode, detail: &str) -> Refusal {
    Refusal(status, detail.to_string())
}

/// RFC 9457 shaped, like signet's problems.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Refusal(status, detail) = self;
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(json!({
                "type": "urn:demo-bank:problem",
                "title": status.canonical_reason().unwrap_or("error"),
                "status": status.as_u16(),
                "detail": detail,
            })),
        )
            .into_response()
    }
}

fn relay((status, body): Answer) -> Response {
    (status, Json(body)).into_response()
}

fn member<'a>(body: &'a Value, name: &str) -> Result<&'a Value, Refusal> {
    body.get(name).ok_or_else(|| {
        problem(
            StatusCode::BAD_REQUEST,
            &format!("the request needs `{name}`"),
        )
    })
}

fn text_member(body: &Value, name: &str) -> Result<String, Refusal> {
    member(body, name)?
        .as_str()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            problem(
                StatusCode::BAD_REQUEST,
                &format!("`{name}` must be a non-empty string"),
            )
        })
}

/// An id as signet makes them (unpadded base64url), so it can go into a
/// path as is.
fn checked_id(id: &str) -> Result<&str, Refusal> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(problem(StatusCode::BAD_REQUEST, "not an id"))
    }
}

fn str_of<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

// ---------------------------------------------------------------------------
// Session, registration, login

async fn session_info(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
) -> Response {
    let user = bank.with(&sid, |s| s.user.clone());
    Json(json!({
        "user": user.as_ref().map(|(_, name)| name),
        "userId": user.as_ref().map(|(id, _)| id),
    }))
    .into_response()
}

async fn logout(State(bank): State<Shared>, Extension(sid): Extension<SessionId>) -> Response {
    bank.with(&sid, |s| *s = Session::default());
    Json(json!({"user": null})).into_response()
}

/// Which ceremony of the session a step is about: the slot its id is kept
/// in between the options and the verification.
type Slot = fn(&mut Session) -> &mut Option<String>;

fn registration_slot(s: &mut Session) -> &mut Option<String> {
    &mut s.registration
}

fn authentication_slot(s: &mut Session) -> &mut Option<String> {
    &mut s.authentication
}

/// Asks signet for options (`request` to `path`), keeps the ceremony id in
/// the session's `slot`, and gives the page only `publicKey`.
async fn open_ceremony(
    bank: &Bank,
    sid: &SessionId,
    path: &str,
    request: &Value,
    slot: Slot,
) -> Result<Response, Refusal> {
    let (status, answer) = bank.call(Method::POST, path, &[], Some(request)).await?;
    if !status.is_success() {
        return Ok(relay((status, answer)));
    }
    let ceremony = str_of(&answer, "ceremonyId").map(str::to_string);
    bank.with(sid, |s| *slot(s) = ceremony);
    Ok(Json(json!({"publicKey": answer["publicKey"]})).into_response())
}

/// Takes the ceremony id out of the session's `slot` (a ceremony is
/// answered once) and posts it with the page's `credential` to `path`.
async fn finish_ceremony(
    bank: &Bank,
    sid: &SessionId,
    path: &str,
    body: &Value,
    slot: Slot,
    none: &str,
) -> Result<Answer, Refusal> {
    let credential = member(body, "credential")?.clone();
    let ceremony = bank
        .with(sid, |s| slot(s).take())
        .ok_or_else(|| problem(StatusCode::CONFLICT, none))?;
    let request = json!({"ceremonyId": ceremony, "credential": credential});
    bank.call(Method::POST, path, &[], Some(&request)).await
}

/// `{username}` -> signet's creation options. Attestation "direct", so the
/// answer says what the authenticator sent (`fmt`); the demo policy accepts
/// unknown models (tier 4).
async fn registration_options(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let name = text_member(&body, "username")?;
    let request = json!({
        "user": {"name": name, "displayName": name},
        "attestation": "direct",
    });
    open_ceremony(
        &bank,
        &sid,
        "/v1/registrations/options",
        &request,
        registration_slot,
    )
    .await
}

/// `{credential}` (the browser's toJSON()) -> signet's verdict, as is.
async fn registration_verify(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    finish_ceremony(
        &bank,
        &sid,
        "/v1/registrations/verify",
        &body,
        registration_slot,
        "no registration in progress",
    )
    .await
    .map(relay)
}

/// `{username?}` -> request options (for that user's credentials, or
/// discoverable without one).
async fn authentication_options(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let name = str_of(&body, "username").map(str::trim).unwrap_or("");
    let request = if name.is_empty() {
        json!({})
    } else {
        json!({"user": {"name": name}})
    };
    open_ceremony(
        &bank,
        &sid,
        "/v1/authentications/options",
        &request,
        authentication_slot,
    )
    .await
}

/// `{credential}` -> signet's verdict; on 200 the session is logged in.
async fn authentication_verify(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let (status, answer) = finish_ceremony(
        &bank,
        &sid,
        "/v1/authentications/verify",
        &body,
        authentication_slot,
        "no login in progress",
    )
    .await?;
    if status == StatusCode::OK {
        log_in(&bank, &sid, &answer);
    }
    Ok(relay((status, answer)))
}

fn log_in(bank: &Bank, sid: &SessionId, answer: &Value) {
    if let (Some(id), Some(name)) = (str_of(answer, "userId"), str_of(answer, "userName")) {
        let user = (id.to_string(), name.to_string());
        bank.with(sid, |s| s.user = Some(user));
    }
}

// ---------------------------------------------------------------------------
// Transactions

fn logged_in(bank: &Bank, sid: &SessionId) -> Result<(String, String), Refusal> {
    bank.with(sid, |s| s.user.clone())
        .ok_or_else(|| problem(StatusCode::UNAUTHORIZED, "log in first"))
}

fn own_transaction<'a>(bank: &Bank, sid: &SessionId, id: &'a str) -> Result<&'a str, Refusal> {
    let id = checked_id(id)?;
    if bank.with(sid, |s| s.transactions.iter().any(|t| t == id)) {
        Ok(id)
    } else {
        Err(problem(
            StatusCode::NOT_FOUND,
            "no such transaction in this session",
        ))
    }
}

/// `{amount, currency?, payee}` -> a payment for the logged-in user.
async fn transaction_create(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let (_, name) = logged_in(&bank, &sid)?;
    let amount = text_member(&body, "amount")?;
    let payee = text_member(&body, "payee")?;
    let currency = str_of(&body, "currency")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .unwrap_or("CHF")
        .to_string();
    let request = json!({
        "user": {"name": name},
        "details": {
            "type": "payment",
            "amount": amount,
            "currency": currency,
            "payee": {"name": payee},
        },
    });
    let (status, answer) = bank
        .call(Method::POST, "/v1/transactions", &[], Some(&request))
        .await?;
    if status.is_success()
        && let Some(id) = str_of(&answer, "transactionId")
    {
        let id = id.to_string();
        bank.with(&sid, |s| s.transactions.push(id));
    }
    Ok(relay((status, answer)))
}

/// `{credential}` -> signet's answer: approved with the receipt, or a problem.
async fn transaction_approval(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let id = own_transaction(&bank, &sid, &id)?;
    let request = json!({"credential": member(&body, "credential")?});
    Ok(relay(
        bank.call(
            Method::POST,
            &format!("/v1/transactions/{id}/approval"),
            &[],
            Some(&request),
        )
        .await?,
    ))
}

/// The receipt as signet returns it (`{transactionId, receipt, kid,
/// format}`), as a download: the file `signet evidence verify --key
/// approval-countersign.pem FILE` takes.
async fn transaction_receipt(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let id = own_transaction(&bank, &sid, &id)?;
    let (status, answer) = bank
        .call(
            Method::GET,
            &format!("/v1/transactions/{id}/receipt"),
            &[],
            None,
        )
        .await?;
    if !status.is_success() {
        return Ok(relay((status, answer)));
    }
    let mut text = serde_json::to_string_pretty(&answer).unwrap_or_default();
    text.push('\n');
    let disposition = format!("attachment; filename=\"receipt-{id}.json\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        text,
    )
        .into_response())
}

// ---------------------------------------------------------------------------
// QR cross-device login

/// The fragment of signet's QR payload (`pairing=...&code=...`).
fn fragment_of(payload: &str) -> Option<&str> {
    payload.split_once('#').map(|(_, f)| f)
}

fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(220, 220)
                .quiet_zone(true)
                .build();
            // Inline in HTML: without the XML declaration.
            match svg.find("<svg") {
                Some(i) => svg[i..].to_string(),
                None => svg,
            }
        }
        Err(e) => format!("<p>no QR code: {e}</p>"),
    }
}

/// `{username?}` -> a pairing for this desktop: the QR code, and the link
/// it holds. The desktop secret stays here.
async fn pairing_create(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("unknown browser");
    let mut request = json!({
        "context": {"ip": peer.ip().to_string(), "userAgent": user_agent, "location": "the demo bank"},
    });
    if let Some(name) = str_of(&body, "username")
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        request["user"] = json!({"name": name});
    }
    let (status, answer) = bank
        .call(Method::POST, "/v1/pairings", &[], Some(&request))
        .await?;
    if !status.is_success() {
        return Ok(relay((status, answer)));
    }
    let (Some(id), Some(secret), Some(payload)) = (
        str_of(&answer, "pairingId"),
        str_of(&answer, "desktopSecret"),
        str_of(&answer, "qrPayload"),
    ) else {
        return Err(problem(
            StatusCode::BAD_GATEWAY,
            "signet's pairing lacks pairingId, desktopSecret or qrPayload",
        ));
    };
    let fragment = fragment_of(payload).ok_or_else(|| {
        problem(
            StatusCode::BAD_GATEWAY,
            "signet's qrPayload has no fragment",
        )
    })?;
    // signet's `[pairing] link` must be https; this demo serves http on
    // localhost, so the phone link is rebuilt on the demo's own origin with
    // signet's fragment (pairing id and code) unchanged.
    let link = format!("{}/pair#{fragment}", bank.public_origin);
    let (id, secret) = (id.to_string(), secret.to_string());
    bank.with(&sid, |s| s.desktop.insert(id.clone(), secret));
    Ok((
        status,
        Json(json!({
            "pairingId": id,
            "state": answer["state"],
            "revision": answer["revision"],
            "expiresAt": answer["expiresAt"],
            "qrPayload": payload,
            "phoneLink": link,
            "qrSvg": qr_svg(&link),
        })),
    )
        .into_response())
}

fn desktop_secret(bank: &Bank, sid: &SessionId, id: &str) -> Result<String, Refusal> {
    bank.with(sid, |s| s.desktop.get(id).cloned())
        .ok_or_else(|| problem(StatusCode::NOT_FOUND, "no such pairing in this session"))
}

fn phone_secret(bank: &Bank, sid: &SessionId, id: &str) -> Result<String, Refusal> {
    bank.with(sid, |s| s.phone.get(id).cloned()).ok_or_else(|| {
        problem(
            StatusCode::NOT_FOUND,
            "this browser has not claimed that pairing",
        )
    })
}

/// The pairing's state for the desktop; `?since=REV&wait=S` long-polls.
async fn pairing_status(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let id = checked_id(&id)?;
    let secret = desktop_secret(&bank, &sid, id)?;
    let number = |name: &str| query.get(name).and_then(|v| v.parse::<u64>().ok());
    let path = match number("since") {
        Some(since) => {
            let wait = number("wait").unwrap_or(POLL_WAIT_MAX).min(POLL_WAIT_MAX);
            format!("/v1/pairings/{id}?since={since}&wait={wait}")
        }
        None => format!("/v1/pairings/{id}"),
    };
    Ok(relay(
        bank.call(
            Method::GET,
            &path,
            &[("Signet-Desktop-Secret", &secret)],
            None,
        )
        .await?,
    ))
}

/// Takes the approved login once; on 200 this browser is logged in.
async fn pairing_consume(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let id = checked_id(&id)?;
    let secret = desktop_secret(&bank, &sid, id)?;
    let (status, answer) = bank
        .call(
            Method::POST,
            &format!("/v1/pairings/{id}/consume"),
            &[("Signet-Desktop-Secret", &secret)],
            None,
        )
        .await?;
    // The desktop secret stays in the session: the desktop may still ask
    // for the pairing's state (now `consumed`).
    if status == StatusCode::OK {
        log_in(&bank, &sid, &answer);
    }
    Ok(relay((status, answer)))
}

/// The phone: `{code}` from the link's fragment -> the question to show and
/// the request options. The phone secret stays here.
async fn pairing_claim(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let id = checked_id(&id)?;
    let code = text_member(&body, "code")?;
    let (status, mut answer) = bank
        .call(
            Method::POST,
            &format!("/v1/pairings/{id}/claim"),
            &[],
            Some(&json!({"code": code})),
        )
        .await?;
    if status.is_success()
        && let Some(obj) = answer.as_object_mut()
        && let Some(Value::String(secret)) = obj.remove("phoneSecret")
    {
        bank.with(&sid, |s| s.phone.insert(id.to_string(), secret));
    }
    Ok(relay((status, answer)))
}

/// The phone's passkey answer (`{credential}`).
async fn pairing_approve(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let id = checked_id(&id)?;
    let secret = phone_secret(&bank, &sid, id)?;
    let request = json!({"credential": member(&body, "credential")?});
    let answer = bank
        .call(
            Method::POST,
            &format!("/v1/pairings/{id}/approve"),
            &[("Signet-Phone-Secret", &secret)],
            Some(&request),
        )
        .await?;
    if answer.0.is_success() {
        bank.with(&sid, |s| s.phone.remove(id));
    }
    Ok(relay(answer))
}

/// The phone refuses (`{reason?}`).
async fn pairing_deny(
    State(bank): State<Shared>,
    Extension(sid): Extension<SessionId>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let id = checked_id(&id)?;
    let secret = phone_secret(&bank, &sid, id)?;
    let request = match str_of(&body, "reason") {
        Some(reason) => json!({"reason": reason}),
        None => json!({}),
    };
    let answer = bank
        .call(
            Method::POST,
            &format!("/v1/pairings/{id}/deny"),
            &[("Signet-Phone-Secret", &secret)],
            Some(&request),
        )
        .await?;
    if answer.0.is_success() {
        bank.with(&sid, |s| s.phone.remove(id));
    }
    Ok(relay(answer))
}
