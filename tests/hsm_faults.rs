//! HSM faults under load, against a real `signet serve` (issue 10,
//! "Reliability under faults").
//!
//! While client threads approve transactions (each approval is
//! countersigned with the HSM's `approval-countersign` key), issue device
//! registration tokens (signed with `token-signing`) and ask for
//! authentication options (no key needed), the key device goes away:
//!
//! * SoftHSM: the token's files are moved out of the token directory and
//!   back (a detached and re-attached partition);
//! * SoftHSM: the token is wiped (deleted and initialized again, empty) and
//!   an officer provisions new keys with `signet hsm init` while the server
//!   runs;
//! * swtpm: the simulator is SIGKILLed and started again.
//!
//! While the device is away, every request that needs it answers 503
//! `key-device-unavailable` (problem+json, Retry-After) well within the
//! request timeout, `/readyz` answers 503 and `/healthz` 200, and the
//! requests that need no key keep working. Nothing is half-written: a
//! refused approval leaves its transaction pending (no approval, no
//! receipt, the credential's counter where it was) and the very same
//! answer approves it later; a device whose token could not be issued
//! stays `verified` and gets its token on `POST .../token`; the audit
//! chain verifies with `signet audit verify`. Once the device is back, the
//! service resumes by itself (no restart) within 5 s; the recovery times
//! are printed as one `hsm-faults:` line per scenario.
//!
//! Smaller tests hold the defects these runs found: faults between requests
//! (no traffic to trip over them first: /readyz must notice by itself, and
//! a token wiped and re-provisioned within the key listing's lifetime must
//! not cost a 500), a token initialized in two steps (no user PIN yet), and
//! the PKCS#11 backend's workers and listings under reconnects and under
//! another process writing to the token.
//!
//! `SIGNET_SOAK=1` (scripts/soak) repeats each outage 10 times.

#![cfg(feature = "testkit")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use reqwest::blocking::Client;
use serde_json::{Value, json};
use signet::keys::EcPublicKey;
use signet::testkit::device::{SoftDevice, create_passkey};
use signet::testkit::{Ceremony, SoftAuthenticator};
use signet::webauthn::{CoseAlgorithm, b64url, b64url_decode};

use common::ceremony::register;
use common::load;
use common::server::{KeyDevice, ORIGIN, RP_ID, SignetServer, hsm_init, signet_bin, try_hsm_init};

const UNAVAILABLE: &str = "urn:signet:problem:key-device-unavailable";
/// tests/data/transaction-policy.toml: a `payment` action that a tier-3
/// passkey (the WEAK model) approves below 1000 CHF.
const POLICY: &str = include_str!("data/transaction-policy.toml");
/// The passkeys devices make (`create_passkey`) carry the testkit's AAGUID:
/// tier 3 too, so that a bound device registers.
const DEVICE_PASSKEYS: &str = "\n[[aaguid]]\naaguid = \"5e116e70-5e57-4a11-9a3b-516e707e5701\"\ntier = 3\nattestation_required = false\n";
const WEAK: &str = "33333333-3333-4333-8333-333333333333";

/// How long the device stays away in each cycle.
const AWAY: Duration = Duration::from_millis(1500);
/// The bound: service resumes within this of the device's return.
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);
/// A refusal must come well within the request timeout (30 s): no hang.
const FAST: Duration = Duration::from_secs(2);
/// How long the server may take to notice the device is gone; after that,
/// every request needing it is refused and /readyz says not ready.
const NOTICE: Duration = Duration::from_millis(500);
/// Approval threads in the load.
const APPROVERS: usize = 2;
/// A load thread's pause between requests (a client retrying a 503 at
/// once, rather than after Retry-After, to count refusals).
const PACE: Duration = Duration::from_millis(10);

/// Outage cycles per scenario: 1, or 10 under `SIGNET_SOAK=1`.
fn cycles() -> usize {
    if std::env::var("SIGNET_SOAK").is_ok_and(|v| v == "1") {
        10
    } else {
        1
    }
}

// ---- requests ------------------------------------------------------------

/// What each load request is, and whether it needs the key device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// `POST /v1/transactions/{id}/approval`: countersigned by the HSM.
    Approval,
    /// `POST /v1/devices/{id}/verification` or `.../token`: a registration
    /// token signed by the HSM.
    Token,
    /// `POST /v1/transactions`: no key.
    Create,
    /// `POST /v1/devices`: no key.
    Enroll,
    /// `POST /v1/authentications/options`: no key.
    Options,
    /// `GET /readyz`.
    Ready,
    /// `GET /healthz`.
    Health,
}

impl Kind {
    fn needs_device(self) -> bool {
        matches!(self, Kind::Approval | Kind::Token)
    }

    fn success(self) -> u16 {
        match self {
            Kind::Create | Kind::Enroll => 201,
            _ => 200,
        }
    }
}

/// One answer as a client saw it.
struct Reply {
    status: u16,
    body: Value,
    content_type: String,
    retry_after: Option<String>,
}

/// One load request, for the analysis.
#[derive(Clone, Debug)]
struct Event {
    kind: Kind,
    start: Instant,
    end: Instant,
    status: u16,
    problem: String,
    content_type: String,
    retry_after: Option<String>,
}

impl Event {
    fn took(&self) -> Duration {
        self.end - self.start
    }

    fn ok(&self) -> bool {
        self.status == self.kind.success()
    }

    /// The answer a request needing the absent device must get.
    fn refused_properly(&self) -> bool {
        self.status == 503
            && self.problem == UNAVAILABLE
            && self.content_type.starts_with("application/problem+json")
            && self
                .retry_after
                .as_deref()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| (1..=60).contains(&s))
    }
}

/// The API as the load threads reach it: owned clients, no borrow of the
/// server (the swtpm scenario needs it mutably while they run).
#[derive(Clone)]
struct Api {
    base: String,
    clients: HashMap<&'static str, Client>,
}

impl Api {
    fn of(server: &SignetServer) -> Api {
        Api {
            base: server.base_url(),
            clients: ["rp", "monitor", "auditor", "officer"]
                .into_iter()
                .map(|r| (r, server.client(r)))
                .collect(),
        }
    }

    fn send(&self, role: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let client = &self.clients[role];
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => client.get(url),
            _ => client.post(url).json(body.unwrap_or(&json!({}))),
        };
        match request.send() {
            Ok(r) => {
                let header = |name: reqwest::header::HeaderName| {
                    r.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
                let retry_after = header(reqwest::header::RETRY_AFTER);
                let status = r.status().as_u16();
                let text = r.text().unwrap_or_default();
                Reply {
                    status,
                    body: serde_json::from_str(&text).unwrap_or(Value::Null),
                    content_type,
                    retry_after,
                }
            }
            // A transport failure (reset, timeout) is recorded as status 0:
            // always a violation.
            Err(e) => Reply {
                status: 0,
                body: json!({ "transport": e.to_string() }),
                content_type: String::new(),
                retry_after: None,
            },
        }
    }

    fn get(&self, role: &str, path: &str) -> Reply {
        self.send(role, "GET", path, None)
    }

    fn post(&self, role: &str, path: &str, body: &Value) -> Reply {
        self.send(role, "POST", path, Some(body))
    }
}

/// What the load threads share with the test.
#[derive(Default)]
struct Shared {
    events: Mutex<Vec<Event>>,
    /// Things that must never happen (a 500, a half-written record, ...).
    violations: Mutex<Vec<String>>,
    /// Transactions refused 503 at least once, and devices whose token was.
    refused_transactions: Mutex<Vec<String>>,
    refused_devices: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Shared {
    /// Runs one request, logs it as `kind`, and returns the reply.
    fn timed(&self, kind: Kind, f: impl FnOnce() -> Reply) -> Reply {
        let start = Instant::now();
        let reply = f();
        let end = Instant::now();
        let problem = reply.body["type"].as_str().unwrap_or_default().to_string();
        let event = Event {
            kind,
            start,
            end,
            status: reply.status,
            problem,
            content_type: reply.content_type.clone(),
            retry_after: reply.retry_after.clone(),
        };
        let fine = event.ok()
            || (kind.needs_device() && event.refused_properly())
            // Not ready is a fine answer from a readiness probe.
            || (kind == Kind::Ready && event.status == 503);
        if !fine {
            self.violation(format!(
                "{kind:?} answered {} in {:?}: {} (content-type {:?}, retry-after {:?})",
                reply.status,
                event.took(),
                reply.body,
                reply.content_type,
                reply.retry_after
            ));
        }
        lock(&self.events).push(event);
        reply
    }

    fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn problem(reply: &Reply) -> &str {
    reply.body["type"].as_str().unwrap_or_default()
}

fn aaguid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn bytes(v: &Value) -> Vec<u8> {
    b64url_decode("test", v.as_str().expect("base64url string"), 1 << 20).expect("base64url")
}

fn payment(user: &str, amount: &str) -> Value {
    json!({
        "user": {"name": user},
        "details": {
            "type": "payment", "amount": amount, "currency": "CHF",
            "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"},
            "reference": "INV-2026-0042"
        }
    })
}

/// The approval body: `auth` signs the transaction's challenge.
fn answer(auth: &mut SoftAuthenticator, tx: &Value) -> Value {
    let challenge = bytes(&tx["publicKey"]["challenge"]);
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge));
    json!({ "credential": parts.to_json() })
}

/// A tier-3 passkey registered for `name` over the API.
fn passkey(server: &SignetServer, name: &str) -> SoftAuthenticator {
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    auth.aaguid = aaguid(WEAK);
    let (status, answer, auth) = register(server, &json!({"user": {"name": name}}), auth);
    assert_eq!(status, 200, "{answer}");
    auth
}

// ---- the load --------------------------------------------------------------

/// Approves payments in a loop. A transaction refused 503 is checked
/// (still pending, no approval, no refusal counted, no receipt) and
/// approved again with a fresh answer, as a client honouring Retry-After.
fn approver(api: Api, shared: Arc<Shared>, mut auth: SoftAuthenticator, user: String) {
    let mut retry: Option<Value> = None;
    while !shared.stopped() {
        let tx = match retry.take() {
            Some(tx) => {
                let id = tx["transactionId"].as_str().unwrap_or_default();
                let shown = api.get("rp", &format!("/v1/transactions/{id}"));
                if shown.status != 200
                    || shown.body["state"] != "pending"
                    || !shown.body["approval"].is_null()
                    || shown.body["attempts"] != 0
                {
                    shared.violation(format!(
                        "transaction {id} after a 503 is not untouched: {} {}",
                        shown.status, shown.body
                    ));
                }
                let receipt = api.get("rp", &format!("/v1/transactions/{id}/receipt"));
                if receipt.status != 409 {
                    shared.violation(format!(
                        "transaction {id} after a 503 has a receipt: {} {}",
                        receipt.status, receipt.body
                    ));
                }
                tx
            }
            None => {
                let created = shared.timed(Kind::Create, || {
                    api.post("rp", "/v1/transactions", &payment(&user, "25.00"))
                });
                if created.status != 201 {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                created.body
            }
        };
        let id = tx["transactionId"].as_str().unwrap_or_default().to_string();
        let body = answer(&mut auth, &tx);
        let reply = shared.timed(Kind::Approval, || {
            api.post("rp", &format!("/v1/transactions/{id}/approval"), &body)
        });
        if reply.status == 503 {
            let mut refused = lock(&shared.refused_transactions);
            if !refused.contains(&id) {
                refused.push(id);
            }
            retry = Some(tx);
        }
        std::thread::sleep(PACE);
    }
}

/// Enrolls devices and reports their identity check as verified, which
/// issues a registration token. A device whose token was refused 503 is
/// checked (still `verified`, no token) and asks again with `POST .../token`.
fn binder(api: Api, shared: Arc<Shared>) {
    let mut retry: Option<String> = None;
    let mut n = 0u64;
    while !shared.stopped() {
        let reply = match retry.take() {
            Some(id) => {
                let shown = api.get("rp", &format!("/v1/devices/{id}"));
                if shown.status != 200 || shown.body["state"] != "verified" {
                    shared.violation(format!(
                        "device {id} after a 503 is not verified-without-token: {} {}",
                        shown.status, shown.body
                    ));
                }
                let reply = shared.timed(Kind::Token, || {
                    api.post("rp", &format!("/v1/devices/{id}/token"), &json!({}))
                });
                (id, reply)
            }
            None => {
                n += 1;
                let dev = SoftDevice::generate();
                let enrolled = shared.timed(Kind::Enroll, || {
                    api.post(
                        "rp",
                        "/v1/devices",
                        &dev.enrollment(&format!("device-{n}"), json!({"os": "android"})),
                    )
                });
                if enrolled.status != 201 {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let id = enrolled.body["deviceId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let reply = shared.timed(Kind::Token, || {
                    api.post(
                        "rp",
                        &format!("/v1/devices/{id}/verification"),
                        &json!({"outcome": "verified", "reference": "KYC"}),
                    )
                });
                (id, reply)
            }
        };
        let (id, reply) = reply;
        match reply.status {
            200 if reply.body["state"] != "token_issued" => {
                shared.violation(format!("device {id}: token answer {}", reply.body));
            }
            503 => {
                let mut refused = lock(&shared.refused_devices);
                if !refused.contains(&id) {
                    refused.push(id.clone());
                }
                retry = Some(id);
            }
            _ => {}
        }
        std::thread::sleep(PACE);
    }
}

/// Authentication options: nothing here needs the key device.
fn options(api: Api, shared: Arc<Shared>, user: String) {
    while !shared.stopped() {
        shared.timed(Kind::Options, || {
            api.post(
                "rp",
                "/v1/authentications/options",
                &json!({"user": {"name": user}}),
            )
        });
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A load balancer's probes.
fn monitor(api: Api, shared: Arc<Shared>) {
    while !shared.stopped() {
        shared.timed(Kind::Ready, || api.get("monitor", "/readyz"));
        shared.timed(Kind::Health, || api.get("monitor", "/healthz"));
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(server: &SignetServer) -> Load {
        let shared = Arc::new(Shared::default());
        let api = Api::of(server);
        let mut threads = Vec::new();
        for i in 0..APPROVERS {
            let user = format!("payer-{i}");
            let auth = passkey(server, &user);
            let (api, shared) = (api.clone(), shared.clone());
            threads.push(std::thread::spawn(move || {
                approver(api, shared, auth, user)
            }));
        }
        let (a, s) = (api.clone(), shared.clone());
        threads.push(std::thread::spawn(move || binder(a, s)));
        let (a, s) = (api.clone(), shared.clone());
        threads.push(std::thread::spawn(move || options(a, s, "payer-0".into())));
        let (a, s) = (api.clone(), shared.clone());
        threads.push(std::thread::spawn(move || monitor(a, s)));
        Load { shared, threads }
    }

    /// Waits until every kind of request has succeeded at or after `since`;
    /// returns, per kind needing the device and for /readyz, how long after
    /// `since` the first success ended. Panics after `limit`.
    fn first_successes(&self, since: Instant, limit: Duration) -> BTreeMap<Kind, Duration> {
        let wanted = [Kind::Approval, Kind::Token, Kind::Ready];
        loop {
            let events = self.shared.events();
            let firsts: BTreeMap<Kind, Duration> = wanted
                .iter()
                .filter_map(|k| {
                    events
                        .iter()
                        .filter(|e| e.kind == *k && e.ok() && e.end >= since)
                        .map(|e| e.end - since)
                        .min()
                        .map(|d| (*k, d))
                })
                .collect();
            if firsts.len() == wanted.len() {
                return firsts;
            }
            assert!(
                since.elapsed() < limit,
                "no recovery within {limit:?}: first successes {firsts:?}; violations: {:?}",
                lock(&self.shared.violations)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(self) -> Arc<Shared> {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("load thread");
        }
        self.shared
    }
}

// ---- probes: one refused approval and one refused token, by hand ----------

/// A transaction refused while the device was away, with the answer that
/// was refused, and a device whose token was.
struct Probes {
    auth: SoftAuthenticator,
    user_id: String,
    tx: Value,
    refused_answer: Value,
    sign_count: Value,
    device: SoftDevice,
    device_id: String,
}

/// The credential's stored signature counter.
fn sign_count(api: &Api, user_id: &str) -> Value {
    let creds = api.get("rp", &format!("/v1/users/{user_id}/credentials"));
    assert_eq!(creds.status, 200, "{}", creds.body);
    creds.body["credentials"][0]["signCount"].clone()
}

impl Probes {
    fn new(server: &SignetServer, api: &Api, cycle: usize) -> Probes {
        let user = format!("probe-{cycle}");
        let auth = passkey(server, &user);
        let tx = api.post("rp", "/v1/transactions", &payment(&user, "42.00"));
        assert_eq!(tx.status, 201, "{}", tx.body);
        let device = SoftDevice::generate();
        let enrolled = api.post(
            "rp",
            "/v1/devices",
            &device.enrollment(&format!("probe-device-{cycle}"), json!({"os": "ios"})),
        );
        assert_eq!(enrolled.status, 201, "{}", enrolled.body);
        Probes {
            auth,
            user_id: tx.body["userId"].as_str().expect("userId").to_string(),
            tx: tx.body,
            refused_answer: Value::Null,
            sign_count: Value::Null,
            device,
            device_id: enrolled.body["deviceId"]
                .as_str()
                .expect("deviceId")
                .to_string(),
        }
    }

    fn tx_path(&self, rest: &str) -> String {
        format!(
            "/v1/transactions/{}{rest}",
            self.tx["transactionId"].as_str().expect("id")
        )
    }

    /// While the device is away: the approval and the token are refused
    /// 503, and nothing of either is stored.
    fn refused(&mut self, api: &Api) {
        self.sign_count = sign_count(api, &self.user_id);
        self.refused_answer = answer(&mut self.auth, &self.tx);
        let t = Instant::now();
        let r = api.post("rp", &self.tx_path("/approval"), &self.refused_answer);
        assert!(t.elapsed() < FAST, "refused after {:?}", t.elapsed());
        assert_eq!((r.status, problem(&r)), (503, UNAVAILABLE), "{}", r.body);
        assert_eq!(r.retry_after.as_deref(), Some("1"), "Retry-After");
        let shown = api.get("rp", &self.tx_path(""));
        assert_eq!(shown.body["state"], "pending", "{}", shown.body);
        assert!(shown.body["approval"].is_null(), "{}", shown.body);
        assert_eq!(shown.body["attempts"], 0, "a 503 counted as a refusal");
        let receipt = api.get("rp", &self.tx_path("/receipt"));
        assert_eq!(receipt.status, 409, "{}", receipt.body);
        assert_eq!(
            sign_count(api, &self.user_id),
            self.sign_count,
            "the counter advanced for an approval that was refused"
        );

        let d = format!("/v1/devices/{}", self.device_id);
        let t = Instant::now();
        let r = api.post(
            "rp",
            &format!("{d}/verification"),
            &json!({"outcome": "verified"}),
        );
        assert!(t.elapsed() < FAST, "refused after {:?}", t.elapsed());
        assert_eq!((r.status, problem(&r)), (503, UNAVAILABLE), "{}", r.body);
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("/token"),
            "the refusal says how to retry: {}",
            r.body
        );
        let shown = api.get("rp", &d);
        assert_eq!(shown.body["state"], "verified", "{}", shown.body);
    }

    /// After recovery: the very answer that was refused approves the
    /// transaction (its challenge was not consumed, the counter did not
    /// advance); the device gets its token and binds with it. Returns the
    /// receipt and its kid.
    fn completed(&mut self, api: &Api) -> (Vec<u8>, String) {
        let r = api.post("rp", &self.tx_path("/approval"), &self.refused_answer);
        assert_eq!(r.status, 200, "the refused answer, again: {}", r.body);
        assert_eq!(r.body["state"], "approved");
        let receipt = api.get("auditor", &self.tx_path("/receipt"));
        assert_eq!(receipt.status, 200, "{}", receipt.body);
        assert_eq!(receipt.body["kid"], r.body["receiptKid"]);

        let d = format!("/v1/devices/{}", self.device_id);
        let token = api.post("rp", &format!("{d}/token"), &json!({}));
        assert_eq!(token.status, 200, "{}", token.body);
        assert_eq!(token.body["state"], "token_issued");
        let did: [u8; 16] = bytes(&json!(self.device_id)).try_into().expect("16 bytes");
        let opened = self
            .device
            .open_token(
                &bytes(&token.body["token"]["sealed"]),
                &did,
                &pinned(api, "token-signing"),
                RP_ID,
                SystemTime::now(),
            )
            .expect("the token opens with the pinned token-signing key");
        let (_, registration) =
            create_passkey(&token.body["token"]["publicKey"], ORIGIN).expect("passkey");
        let sealed = self
            .device
            .seal_request(
                &opened,
                &registration,
                &pinned(api, "token-encryption"),
                SystemTime::now(),
            )
            .expect("seal");
        // Opening the request needs ECDH with token-encryption on the device.
        let bound = api.post(
            "rp",
            &format!("{d}/registration"),
            &json!({"sealed": b64url(&sealed)}),
        );
        assert_eq!(bound.status, 200, "{}", bound.body);
        assert_eq!(bound.body["state"], "bound");
        (
            bytes(&receipt.body["receipt"]),
            receipt.body["kid"].as_str().expect("kid").to_string(),
        )
    }
}

/// The active public key of `role` as `GET /v1/keys` lists it.
fn pinned(api: &Api, role: &str) -> EcPublicKey {
    let keys = api.get("rp", "/v1/keys");
    assert_eq!(keys.status, 200, "{}", keys.body);
    let jwk = keys.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["role"] == role && k["status"] == "active")
        .map(|k| k["jwk"].clone())
        .unwrap_or_else(|| panic!("no active {role} key: {}", keys.body));
    EcPublicKey::from_xy(&bytes(&jwk["x"]), &bytes(&jwk["y"])).expect("P-256")
}

fn public_key(pem: &str) -> EcPublicKey {
    use p256::pkcs8::DecodePublicKey;
    EcPublicKey::from_p256(&p256::PublicKey::from_public_key_pem(pem).expect("SPKI PEM"))
}

/// Every audit record's (event, subject), read over the API page by page.
fn audit_events(api: &Api) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut from = 1u64;
    loop {
        let page = api.get("auditor", &format!("/v1/audit?from={from}&limit=1000"));
        assert_eq!(page.status, 200, "{}", page.body);
        for e in page.body["entries"].as_array().expect("entries") {
            out.push((
                e["event"]["event"].as_str().unwrap_or_default().to_string(),
                e["event"]["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
        match page.body["next"].as_u64() {
            Some(n) => from = n,
            None => return out,
        }
    }
}

// ---- one scenario ----------------------------------------------------------

/// What one outage cycle measured.
struct Cycle {
    away: Duration,
    refused: usize,
    max_refusal: Duration,
    recovered: BTreeMap<Kind, Duration>,
}

/// How a scenario takes the device away and brings it back.
trait Outage {
    /// The words of the summary line, e.g. "softhsm token away".
    fn name(&self) -> &'static str;
    /// Called just before the device goes away (to keep what the outage
    /// will erase).
    fn before(&mut self, _server: &SignetServer) {}
    fn take_away(&mut self, server: &mut SignetServer);
    fn bring_back(&mut self, server: &mut SignetServer);
    /// Extra `--checkpoint-key` files for `signet audit verify`.
    fn checkpoint_keys(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// After recovery: `kid` signed the receipt approved after the outage.
    fn after(&mut self, _api: &Api, _receipt: &[u8], _kid: &str) {}
    /// Anything the summary line should add.
    fn note(&self) -> String {
        String::new()
    }
}

fn run(device: KeyDevice, mut outage: impl Outage) {
    let policy = tempfile::tempdir().expect("tempdir");
    let policy_file = policy.path().join("policy.toml");
    std::fs::write(&policy_file, format!("{POLICY}{DEVICE_PASSKEYS}")).expect("write policy");
    // The load's clients retry refused requests quickly (to count
    // refusals); the default per-client rate limit would answer 429 first.
    let mut server = SignetServer::start_on(
        device,
        &format!(
            "[policy]\nfile = \"{}\"\n\n[limits]\nrate_per_second = 10000\nburst = 20000\n",
            policy_file.display()
        ),
    );
    let api = Api::of(&server);
    let load = Load::start(&server);
    let mut cycles = Vec::new();
    for cycle in 0..self::cycles() {
        // The load runs and succeeds before each outage.
        load.first_successes(Instant::now(), Duration::from_secs(20));
        let mut probes = Probes::new(&server, &api, cycle);
        outage.before(&server);

        let t_away = Instant::now();
        outage.take_away(&mut server);
        // Let the server notice, then refuse by hand.
        std::thread::sleep(NOTICE);
        probes.refused(&api);
        let left = AWAY.saturating_sub(t_away.elapsed());
        std::thread::sleep(left);
        let t_return = Instant::now();
        outage.bring_back(&mut server);
        let t_back = Instant::now();
        let recovered = load.first_successes(t_back, RECOVERY_LIMIT * 2);

        let events = load.shared.events();
        let during: Vec<&Event> = events
            .iter()
            .filter(|e| e.kind.needs_device() && e.start >= t_away && e.end <= t_return)
            .collect();
        let refused = during.iter().filter(|e| e.refused_properly()).count();
        let served_while_away = during
            .iter()
            .filter(|e| e.ok() && e.start >= t_away + NOTICE)
            .count();
        let max_refusal = during
            .iter()
            .filter(|e| !e.ok())
            .map(|e| e.took())
            .max()
            .unwrap_or_default();
        // Every request, whatever its answer, came back fast; none needing
        // the device was served once the server had noticed it gone.
        for e in events
            .iter()
            .filter(|e| e.start >= t_away && e.start <= t_back)
        {
            assert!(
                e.took() < FAST,
                "{:?} took {:?} while the device was away",
                e.kind,
                e.took()
            );
        }
        assert!(
            refused > 0,
            "no request was refused while the device was away"
        );
        assert_eq!(
            served_while_away, 0,
            "requests needing the device succeeded while it was away"
        );
        let readiness: Vec<&Event> = events
            .iter()
            .filter(|e| e.kind == Kind::Ready && e.start >= t_away + NOTICE && e.end <= t_return)
            .collect();
        assert!(
            !readiness.is_empty(),
            "no readiness probe during the outage"
        );
        for e in &readiness {
            assert_eq!(e.status, 503, "/readyz while the device was away");
        }
        for (kind, took) in &recovered {
            assert!(
                *took < RECOVERY_LIMIT,
                "{kind:?} recovered only {took:?} after the device returned"
            );
        }
        // Resumed means resumed: no refusal of a request that started after
        // the first success of its kind.
        for (kind, took) in &recovered {
            let flapped = events
                .iter()
                .filter(|e| e.kind == *kind && e.start > t_back + *took && !e.ok())
                .count();
            assert_eq!(flapped, 0, "{kind:?} refused again after recovering");
        }

        let (receipt, kid) = probes.completed(&api);
        outage.after(&api, &receipt, &kid);
        cycles.push(Cycle {
            away: t_return - t_away,
            refused,
            max_refusal,
            recovered,
        });
    }
    // Let the retries of the last cycle finish.
    std::thread::sleep(Duration::from_millis(300));
    let shared = load.stop();
    let violations = lock(&shared.violations);
    assert!(
        violations.is_empty(),
        "{} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    drop(violations);
    let events = shared.events();
    for kind in [Kind::Options, Kind::Create, Kind::Enroll, Kind::Health] {
        let bad: Vec<_> = events
            .iter()
            .filter(|e| e.kind == kind && !e.ok())
            .collect();
        assert!(
            bad.is_empty(),
            "{kind:?} failed without needing the device: {bad:?}"
        );
    }

    // The audit trail: each refused transaction approved exactly once,
    // never refused as an answer; each refused device issued one token.
    let trail = audit_events(&api);
    let count = |event: &str, subject: &str| {
        trail
            .iter()
            .filter(|(e, s)| e == event && s == subject)
            .count()
    };
    let transactions = lock(&shared.refused_transactions).clone();
    let devices = lock(&shared.refused_devices).clone();
    for id in &transactions {
        let shown = api.get("rp", &format!("/v1/transactions/{id}"));
        // The last one may still be pending if the load stopped before its retry.
        if shown.body["state"] == "pending" {
            assert_eq!(count("transaction.approved", id), 0);
            continue;
        }
        assert_eq!(shown.body["state"], "approved", "{}", shown.body);
        assert_eq!(count("transaction.approved", id), 1, "transaction {id}");
        assert_eq!(count("transaction.refused", id), 0, "transaction {id}");
    }
    for id in &devices {
        let shown = api.get("rp", &format!("/v1/devices/{id}"));
        if shown.body["state"] == "verified" {
            assert_eq!(count("device.token_issued", id), 0);
            continue;
        }
        assert_eq!(shown.body["state"], "token_issued", "{}", shown.body);
        assert_eq!(count("device.verified", id), 1, "device {id}");
        assert_eq!(count("device.token_issued", id), 1, "device {id}");
    }

    // The chain and its checkpoints, with the server stopped.
    let (status, log) = server.stop();
    assert!(status.success(), "signet exited with {status}: {log}");
    // An outage the service rides out is worth warnings, not errors.
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "errors in the server log: {errors:#?}");
    let mut verify = Command::new(signet_bin());
    verify
        .args(["audit", "verify", "--data-dir"])
        .arg(server.data_dir())
        .arg("--profile")
        .arg(server.hsm.profile_path());
    for key in outage.checkpoint_keys() {
        verify.arg("--checkpoint-key").arg(key);
    }
    let out = verify.output().expect("run signet audit verify");
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    println!(
        "{}{}",
        summary(outage.name(), &cycles, transactions.len(), devices.len()),
        outage.note()
    );
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// One line: the outage, what was refused, and how soon each kind resumed
/// (the worst cycle's, with the median over cycles under soak).
fn summary(name: &str, cycles: &[Cycle], transactions: usize, devices: usize) -> String {
    let n = cycles.len();
    let away: Duration = cycles.iter().map(|c| c.away).sum::<Duration>() / n as u32;
    let refused: usize = cycles.iter().map(|c| c.refused).sum();
    let max_refusal = cycles
        .iter()
        .map(|c| c.max_refusal)
        .max()
        .unwrap_or_default();
    let back = |kind: Kind| {
        let mut all: Vec<Duration> = cycles.iter().map(|c| c.recovered[&kind]).collect();
        all.sort();
        let worst = all[n - 1];
        if n == 1 {
            ms(worst)
        } else {
            format!("{} (median {})", ms(worst), ms(all[n / 2]))
        }
    };
    let times = if n == 1 {
        String::new()
    } else {
        format!(" x{n}")
    };
    format!(
        "hsm-faults: {name} {:.1} s{times}: {refused} requests refused 503 (max {}); \
         back: readyz after {}, approval after {}, token after {}; \
         refused and finished later: {transactions} transactions, {devices} devices",
        away.as_secs_f64(),
        ms(max_refusal),
        back(Kind::Ready),
        back(Kind::Approval),
        back(Kind::Token),
    )
}

// ---- the scenarios ---------------------------------------------------------

/// The token's files leave the token directory and come back, as a
/// partition detached and re-attached.
struct TokenAway {
    store: Option<PathBuf>,
    aside: Option<PathBuf>,
}

impl Outage for TokenAway {
    fn name(&self) -> &'static str {
        "softhsm token away"
    }

    fn take_away(&mut self, server: &mut SignetServer) {
        let store = server.hsm.token_store_dir();
        // Outside the token directory: SoftHSM scans every directory in it.
        let aside = server.dir().join("token-away");
        std::fs::rename(&store, &aside).expect("move the token away");
        self.store = Some(store);
        self.aside = Some(aside);
    }

    fn bring_back(&mut self, _: &mut SignetServer) {
        let (Some(store), Some(aside)) = (self.store.take(), self.aside.take()) else {
            panic!("token not away");
        };
        std::fs::rename(aside, store).expect("move the token back");
    }
}

#[test]
fn softhsm_token_away_and_back() {
    run(
        KeyDevice::softhsm(),
        TokenAway {
            store: None,
            aside: None,
        },
    );
}

/// The token is wiped (deleted, initialized again with the same label and
/// PIN, empty) under the running server; an officer then provisions new
/// keys with `signet hsm init`. The old keys are gone for good, so what
/// they signed is checked with their exported public keys.
struct Wiped {
    keys: tempfile::TempDir,
    /// Every audit-checkpoint key the token ever had, exported before each wipe.
    checkpoint_keys: Vec<PathBuf>,
    /// A receipt approved before the wipe, and the countersign key then.
    old: Option<(String, String, EcPublicKey)>,
    wipes: usize,
    /// Why `hsm init` had to be run again.
    init_retries: Vec<String>,
}

impl Outage for Wiped {
    fn name(&self) -> &'static str {
        "softhsm token wiped, re-provisioned"
    }

    fn before(&mut self, server: &SignetServer) {
        let profile = server.hsm.profile_path();
        let pem = load::export_pem(&profile, "audit-checkpoint");
        let file = self
            .keys
            .path()
            .join(format!("audit-checkpoint-{}.pem", self.wipes));
        std::fs::write(&file, pem).expect("write PEM");
        self.checkpoint_keys.push(file);
        // A receipt countersigned by the key about to be erased.
        let api = Api::of(server);
        let mut auth = passkey(server, &format!("before-wipe-{}", self.wipes));
        let tx = api.post(
            "rp",
            "/v1/transactions",
            &payment(&format!("before-wipe-{}", self.wipes), "7.00"),
        );
        assert_eq!(tx.status, 201, "{}", tx.body);
        let id = tx.body["transactionId"].as_str().expect("id").to_string();
        let r = api.post(
            "rp",
            &format!("/v1/transactions/{id}/approval"),
            &answer(&mut auth, &tx.body),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let key = public_key(&load::export_pem(&profile, "approval-countersign"));
        let kid = r.body["receiptKid"].as_str().expect("kid").to_string();
        self.old = Some((id, kid, key));
    }

    fn take_away(&mut self, server: &mut SignetServer) {
        server.hsm.reinitialize();
        self.wipes += 1;
    }

    /// The officer provisions the token again. SoftHSM's file store is not
    /// safe for one process writing while another reads (the running
    /// service), so `hsm init` may fail, removing what it made; the officer
    /// runs it again: it creates only the keys still missing.
    fn bring_back(&mut self, server: &mut SignetServer) {
        let profile = server.hsm.profile_path();
        for attempt in 1.. {
            match try_hsm_init(&profile) {
                Ok(()) => return,
                Err(e) if attempt < 5 => self.init_retries.push(e),
                Err(e) => panic!("hsm init failed {attempt} times, last: {e}"),
            }
        }
    }

    fn checkpoint_keys(&self) -> Vec<PathBuf> {
        self.checkpoint_keys.clone()
    }

    fn note(&self) -> String {
        match self.init_retries.first() {
            None => String::new(),
            Some(first) => format!(
                "; hsm init run again {} time(s) (the SoftHSM store raced the service's reads: {})",
                self.init_retries.len(),
                first.trim()
            ),
        }
    }

    fn after(&mut self, api: &Api, receipt: &[u8], kid: &str) {
        let Some((id, old_kid, old_key)) = self.old.take() else {
            panic!("no receipt from before the wipe");
        };
        // The new keys sign: the receipt names a new kid, listed by the API.
        assert_ne!(kid, old_kid, "a receipt signed with an erased key");
        let verified = signet::receipt::verify(receipt, &pinned(api, "approval-countersign"));
        assert!(verified.is_ok(), "new receipt: {verified:?}");
        // The receipt from before the wipe is still served as it was and
        // verifies with the exported key of the erased token.
        let old = api.get("auditor", &format!("/v1/transactions/{id}/receipt"));
        assert_eq!(old.status, 200, "{}", old.body);
        assert_eq!(old.body["kid"], old_kid.as_str());
        let verified = signet::receipt::verify(&bytes(&old.body["receipt"]), &old_key);
        assert!(verified.is_ok(), "old receipt: {verified:?}");
    }
}

#[test]
fn softhsm_token_wiped_and_reprovisioned_while_serving() {
    run(
        KeyDevice::softhsm(),
        Wiped {
            keys: tempfile::tempdir().expect("tempdir"),
            checkpoint_keys: Vec::new(),
            old: None,
            wipes: 0,
            init_retries: Vec::new(),
        },
    );
}

/// swtpm is SIGKILLed (a crash) and started again on the same state.
struct SwtpmKilled;

impl Outage for SwtpmKilled {
    fn name(&self) -> &'static str {
        "swtpm killed"
    }

    fn take_away(&mut self, server: &mut SignetServer) {
        server.hsm.swtpm_mut().kill();
    }

    fn bring_back(&mut self, server: &mut SignetServer) {
        server.hsm.swtpm_mut().restart();
    }
}

#[test]
fn swtpm_killed_and_restarted() {
    run(KeyDevice::swtpm(), SwtpmKilled);
}

// ---- the key layer's part, without a server ------------------------------

/// Signatures from four threads through one two-worker PKCS#11 backend while
/// the token goes away and comes back, three times. Once a signature after
/// the return succeeds, every signature begun later succeeds too: the
/// workers reopen their sessions without closing each other's (after
/// `C_Initialize` an old session handle names another worker's new
/// session), and no `C_Finalize` runs while a worker is inside the library.
#[test]
fn pkcs11_workers_resume_together_after_the_token_returns() {
    use common::Device;
    use signet::keys::Role;
    let hsm = common::softhsm::SoftHsm::new();
    let ring = Arc::new(hsm.ring());
    ring.init().expect("provision");
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (ring, stop, results) = (ring.clone(), stop.clone(), results.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let start = Instant::now();
                        let r = ring.sign(Role::TokenSigning, b"under fire");
                        let outcome = r.map(|_| ()).map_err(|e| e.to_string());
                        lock(&results).push((start, Instant::now(), outcome));
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let store = hsm.token_store_dir();
        let aside = hsm.dir.path().join("token-away");
        std::fs::rename(&store, &aside).expect("move the token away");
        std::thread::sleep(Duration::from_millis(300));
        std::fs::rename(&aside, &store).expect("move the token back");
        let back = Instant::now();
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().expect("signing thread");
        }
        let results = lock(&results);
        let first = results
            .iter()
            .filter(|(_, end, r)| *end >= back && r.is_ok())
            .map(|(_, end, _)| *end)
            .min()
            .unwrap_or_else(|| panic!("round {round}: no signature after the token returned"));
        let later: Vec<_> = results
            .iter()
            .filter(|(start, _, r)| *start > first && r.is_err())
            .collect();
        let total = results
            .iter()
            .filter(|(start, _, _)| *start > first)
            .count();
        assert!(
            later.is_empty(),
            "round {round}: {} of {total} signatures failed after the first success {:?} after the return: {:?}",
            later.len(),
            first - back,
            later.first()
        );
    }
}

// ---- between requests: no load to notice the fault first ------------------

/// A server on SoftHSM with the test policy and one tier-3 passkey.
fn quiet_server() -> (SignetServer, Api, SoftAuthenticator, tempfile::TempDir) {
    let policy = tempfile::tempdir().expect("tempdir");
    let policy_file = policy.path().join("policy.toml");
    std::fs::write(&policy_file, format!("{POLICY}{DEVICE_PASSKEYS}")).expect("write policy");
    let server = SignetServer::start_on(
        KeyDevice::softhsm(),
        &format!("[policy]\nfile = \"{}\"\n", policy_file.display()),
    );
    let api = Api::of(&server);
    let auth = passkey(&server, "quiet");
    (server, api, auth, policy)
}

/// Creates and approves a payment; the approval's reply.
fn approve_once(api: &Api, auth: &mut SoftAuthenticator) -> Reply {
    let tx = api.post("rp", "/v1/transactions", &payment("quiet", "12.00"));
    assert_eq!(tx.status, 201, "{}", tx.body);
    let id = tx.body["transactionId"].as_str().expect("id");
    api.post(
        "rp",
        &format!("/v1/transactions/{id}/approval"),
        &answer(auth, &tx.body),
    )
}

/// Polls /readyz until it answers `status`; how long that took.
fn readyz_becomes(api: &Api, status: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = api.get("monitor", "/readyz");
        if r.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "/readyz still {} after {limit:?}: {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With no traffic to trip over it, /readyz itself notices the token is
/// gone (a ping of the open session alone still answers), and ready again
/// once it is back; the next approval is served.
#[test]
fn readyz_notices_a_token_away_without_traffic() {
    let (server, api, mut auth, _policy) = quiet_server();
    assert_eq!(approve_once(&api, &mut auth).status, 200);
    let store = server.hsm.token_store_dir();
    let aside = server.dir().join("token-away");
    std::fs::rename(&store, &aside).expect("move the token away");
    let noticed = readyz_becomes(&api, 503, Duration::from_secs(2));
    std::fs::rename(&aside, &store).expect("move the token back");
    let back = readyz_becomes(&api, 200, RECOVERY_LIMIT);
    let r = approve_once(&api, &mut auth);
    assert_eq!(r.status, 200, "{}", r.body);
    eprintln!(
        "readyz: not ready {noticed:?} after the token left, ready {back:?} after it returned"
    );
}

/// The token is wiped and re-provisioned by an officer between two
/// requests, well within the key listing's 5 s lifetime. The first request
/// may meet the changed token (503, the backend reconnects); the next one
/// is served with the new keys: never a 500, never a wait for the cached
/// listing to expire, no restart.
#[test]
fn token_wiped_and_reprovisioned_between_two_requests() {
    let (server, api, mut auth, _policy) = quiet_server();
    let before = approve_once(&api, &mut auth);
    assert_eq!(before.status, 200, "{}", before.body);
    let old_kid = before.body["receiptKid"].clone();
    server.hsm.reinitialize();
    hsm_init(&server.hsm.profile_path());
    let mut refusals = 0;
    let approved = loop {
        let r = approve_once(&api, &mut auth);
        match r.status {
            200 => break r,
            503 if problem(&r) == UNAVAILABLE && refusals == 0 => refusals += 1,
            _ => panic!("after {refusals} refusals: {} {}", r.status, r.body),
        }
    };
    assert_ne!(
        approved.body["receiptKid"], old_kid,
        "signed with an erased key"
    );
    let verified = signet::receipt::verify(
        &bytes(&approved.body["receipt"]),
        &pinned(&api, "approval-countersign"),
    );
    assert!(verified.is_ok(), "{verified:?}");
    readyz_becomes(&api, 200, Duration::from_secs(1));
}

/// The token comes back re-initialized with another user PIN. A token
/// locks its PIN after a few wrong tries, so the service may try the PIN
/// it has once, and then must answer without touching the token: every
/// request a 503 that says why, /readyz not ready, one refusal in the log,
/// however many workers and requests. After a restart with the wrong PIN,
/// serve exits 3, which the systemd unit does not restart.
#[test]
fn token_back_with_another_pin_is_tried_once() {
    let (mut server, api, mut auth, _policy) = quiet_server();
    assert_eq!(approve_once(&api, &mut auth).status, 200);
    server.hsm.reinitialize_with_pin("another-pin-2024");
    let mut why = Vec::new();
    for _ in 0..20 {
        let r = approve_once(&api, &mut auth);
        assert_eq!((r.status, problem(&r)), (503, UNAVAILABLE), "{}", r.body);
        why.push(r.body["detail"].as_str().unwrap_or_default().to_string());
    }
    // The first requests may still meet the token away (it is erased and
    // made again); once reconnected, each says the PIN was refused.
    let last = why.last().cloned().unwrap_or_default();
    assert!(
        last.contains("refused signet's PIN") && last.contains("restart"),
        "{why:?}"
    );
    let ready = api.get("monitor", "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body["keys"]
            .as_str()
            .unwrap_or_default()
            .contains("wrong PIN"),
        "{}",
        ready.body
    );

    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let tries = log.matches("the token refused the PIN").count();
    assert_eq!(tries, 1, "the PIN was tried {tries} times:\n{log}");

    let out = common::server::allow_root_if_root(&mut Command::new(signet_bin()))
        .args(["serve", "--config"])
        .arg(&server.config)
        .env_remove("SIGNET_LISTEN")
        .env_remove("SIGNET_DATA_DIR")
        .output()
        .expect("run signet serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("wrong PIN"), "{stderr}");
}

/// The service lists the token while an officer's CLI writes to it (here:
/// rotations, as `signet hsm init` on a wiped token creates keys). An object
/// SoftHSM found a moment ago may answer "invalid handle", or read back
/// torn, while the other process rewrites it: the listing is read again,
/// and never fails for it.
///
/// SoftHSM's file store is not safe for one process writing while another
/// reads (the reader may write its stale copy back), so a rotation may
/// itself fail ("does not read back as a signet key"); it then removes what
/// it made, and the officer runs it again. The key count at the end shows
/// that no failed attempt left a key behind.
#[test]
fn listing_while_another_process_writes_to_the_token() {
    use common::Device;
    use signet::keys::Role;
    let hsm = common::softhsm::SoftHsm::new();
    let ring = Arc::new(hsm.ring());
    ring.init().expect("provision");
    let stop = Arc::new(AtomicBool::new(false));
    let lister = {
        let (ring, stop) = (ring.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut listings = 0;
            while !stop.load(Ordering::SeqCst) {
                match ring.list() {
                    Ok(_) => listings += 1,
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (listings, failures)
        })
    };
    let rotations = 6;
    let mut failed_attempts = Vec::new();
    for role in [Role::TokenSigning, Role::AuditCheckpoint]
        .iter()
        .cycle()
        .take(rotations)
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let out = Command::new(signet_bin())
                .args(["hsm", "rotate", "--profile"])
                .arg(hsm.profile_path())
                .args(["--role", role.as_str()])
                .output()
                .expect("run signet hsm rotate");
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(attempts < 10, "hsm rotate kept failing: {err}");
            failed_attempts.push(err);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (listings, failures) = lister.join().expect("lister");
    assert!(
        failures.is_empty(),
        "{} of {} listings failed, first: {:?}",
        failures.len(),
        listings + failures.len(),
        failures.first()
    );
    assert_eq!(
        ring.list().expect("list").len(),
        4 + rotations,
        "failed rotations left keys behind: {failed_attempts:#?}"
    );
    eprintln!(
        "{listings} listings during {rotations} rotations; {} rotation attempts failed and were repeated",
        failed_attempts.len()
    );
}

/// An officer re-initializes the token in two steps with a vendor tool
/// (`C_InitToken`, then `C_InitPIN`) and then provisions the keys, all under
/// the running service. Between the steps the token is back under its
/// label but cannot be logged in to: requests needing it answer 503, never
/// 500, and the service resumes once the keys exist.
#[test]
fn token_initialized_in_two_steps_under_the_running_service() {
    let (server, api, mut auth, _policy) = quiet_server();
    assert_eq!(approve_once(&api, &mut auth).status, 200);
    server.hsm.erase();
    server.hsm.init_token_without_user_pin();
    // Past RECONNECT_INTERVAL each time, so the service finds the new token
    // and tries to log in to it.
    for _ in 0..4 {
        let r = approve_once(&api, &mut auth);
        assert_eq!((r.status, problem(&r)), (503, UNAVAILABLE), "{}", r.body);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(api.get("monitor", "/readyz").status, 503);
    server.hsm.init_user_pin();
    let r = approve_once(&api, &mut auth);
    assert_eq!((r.status, problem(&r)), (503, UNAVAILABLE), "{}", r.body);
    hsm_init(&server.hsm.profile_path());
    let start = Instant::now();
    loop {
        let r = approve_once(&api, &mut auth);
        if r.status == 200 {
            break;
        }
        assert_eq!((r.status, problem(&r)), (503, UNAVAILABLE), "{}", r.body);
        assert!(start.elapsed() < RECOVERY_LIMIT, "not resumed: {}", r.body);
        std::thread::sleep(Duration::from_millis(50));
    }
    readyz_becomes(&api, 200, Duration::from_secs(1));
}
