//! Load against a real `signet serve`, for the crash-consistency and
//! concurrency tests: replayable requests, an HTTP client bound to one
//! incarnation of the server (its port changes at every start), the
//! problem slug of an answer, SIGKILL, the officer's `signet audit verify`
//! and `signet evidence verify`, and the client side of each consuming flow
//! (a passkey's assertion, a device's sealed registration request, a
//! transaction's and a pairing's bodies).

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use signet::keys::EcPublicKey;
use signet::testkit::device::{OpenedToken, SoftDevice, create_passkey};
use signet::testkit::{Ceremony, SoftAuthenticator};
use signet::webauthn::{b64url, b64url_decode};

use super::pki;
use super::server::{ORIGIN, RP_ID, SignetServer, signet_bin};

pub const PROBLEM: &str = "urn:signet:problem:";
pub const DESKTOP: &str = "Signet-Desktop-Secret";
pub const PHONE: &str = "Signet-Phone-Secret";

/// How long a client keeps an idle connection: well under the server's
/// 10 s keep-alive limit.
const IDLE: Duration = Duration::from_secs(5);

/// The problem slug of an answer (`ceremony-consumed`), or "".
pub fn slug(answer: &Value) -> &str {
    answer["type"]
        .as_str()
        .and_then(|t| t.strip_prefix(PROBLEM))
        .unwrap_or_default()
}

/// A POST that can be sent again, byte for byte.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

impl Request {
    pub fn post(path: impl Into<String>, body: Value) -> Request {
        Request {
            path: path.into(),
            headers: Vec::new(),
            body: Some(body),
        }
    }

    /// A POST without a body.
    pub fn empty(path: impl Into<String>) -> Request {
        Request {
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Request {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// A keep-alive client for one incarnation of the server, as one role.
#[derive(Clone)]
pub struct Api {
    client: reqwest::blocking::Client,
    base: String,
}

impl Api {
    /// Pooled connections are dropped after 5 s idle, before the
    /// server's keep-alive limit (`server.header_timeout_ms`, 10 s) can
    /// close one under a request.
    pub fn new(server: &SignetServer, role: &str) -> Api {
        let client = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(pki::client_config(&server.pki, role))
            .resolve("localhost", server.addr)
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(IDLE)
            .build()
            .expect("HTTP client");
        Api {
            client,
            base: server.base_url(),
        }
    }

    /// Sends `r`; an error is an answer that never came (a transport
    /// failure), never an HTTP status.
    pub fn send(&self, r: &Request) -> Result<(u16, Value), reqwest::Error> {
        let mut b = self.client.post(format!("{}{}", self.base, r.path));
        for (name, value) in &r.headers {
            b = b.header(*name, value);
        }
        if let Some(body) = &r.body {
            b = b.json(body);
        }
        answer(b.send()?)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        answer(
            self.client
                .post(format!("{}{path}", self.base))
                .json(body)
                .send()?,
        )
    }

    pub fn get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        self.get_with(path, &[])
    }

    /// POSTs `body` and returns the answer, which must have status `want`.
    pub fn expect(&self, path: &str, body: &Value, want: u16) -> Value {
        let (status, answer) = self.post(path, body).expect("request");
        assert_eq!(status, want, "{path}: {answer}");
        answer
    }

    pub fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut b = self.client.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        answer(b.send()?)
    }
}

/// Status and JSON body; a body cut off by a dying server is an error.
fn answer(r: reqwest::blocking::Response) -> Result<(u16, Value), reqwest::Error> {
    let status = r.status().as_u16();
    let text = r.text()?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// An async client (for many requests at once from a few threads) as
/// `role`, with room for `connections` pooled keep-alive connections.
pub fn async_client(server: &SignetServer, role: &str, connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(pki::client_config(&server.pki, role))
        .resolve("localhost", server.addr)
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(IDLE)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("async HTTP client")
}

/// SIGKILL: no drain, no checkpoint, no flush. Reaps the process; returns
/// its exit status (signal 9) and what it wrote on stderr.
pub fn kill(server: &mut SignetServer) -> (ExitStatus, String) {
    server.signal("KILL");
    // The process is a zombie until reaped, so its pid cannot be reused:
    // stop()'s SIGTERM reaches nothing, and its wait reaps it at once.
    server.stop()
}

/// `signet audit verify --json` as the officer runs it, with the service
/// stopped: the report, or why it failed.
pub fn audit_verify(data_dir: &Path, profile: &Path) -> Result<Value, String> {
    let out = Command::new(signet_bin())
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(data_dir)
        .arg("--profile")
        .arg(profile)
        .output()
        .map_err(|e| format!("run signet audit verify: {e}"))?;
    let text = format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("signet audit verify failed: {text}"));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("audit verify JSON: {e}: {text}"))
}

/// A role's active public key as PEM, exported with the officer CLI
/// (`signet hsm export --role ROLE --format pem`) from the server's device.
pub fn export_pem(profile: &Path, role: &str) -> String {
    let out = Command::new(signet_bin())
        .args(["hsm", "export", "--profile"])
        .arg(profile)
        .args(["--role", role, "--format", "pem"])
        .output()
        .expect("run signet hsm export");
    assert!(
        out.status.success(),
        "hsm export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("PEM")
}

/// `signet evidence verify --key KEY --rp-id localhost FILE` on a receipt
/// answer saved to `file`: Ok, or the tool's output.
pub fn evidence_verify(file: &Path, key: &Path) -> Result<(), String> {
    let out = Command::new(signet_bin())
        .args(["evidence", "verify", "--rp-id", RP_ID, "--key"])
        .arg(key)
        .arg(file)
        .output()
        .map_err(|e| format!("run signet evidence verify: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "exit {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    b64url_decode("test", v.as_str().expect("string"), 1 << 20).expect("base64url")
}

/// The keys an app pins, from `GET /v1/keys`.
pub struct Pinned {
    pub signing: EcPublicKey,
    pub encryption: EcPublicKey,
}

impl Pinned {
    pub fn fetch(api: &Api) -> Pinned {
        let (status, keys) = api.get("/v1/keys").expect("GET /v1/keys");
        assert_eq!(status, 200, "{keys}");
        Pinned {
            signing: active_key(&keys, "token-signing"),
            encryption: active_key(&keys, "token-encryption"),
        }
    }
}

/// The active key of `role` in a `GET /v1/keys` answer, as an app pins it.
pub fn active_key(keys: &Value, role: &str) -> EcPublicKey {
    let jwk = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["role"] == role && k["status"] == "active")
        .map(|k| k["jwk"].clone())
        .expect("active key");
    EcPublicKey::from_xy(&bytes(&jwk["x"]), &bytes(&jwk["y"])).expect("P-256")
}

/// The challenge of request or creation options (`publicKey`), decoded.
pub fn challenge(public_key: &Value) -> Vec<u8> {
    b64url_decode(
        "challenge",
        public_key["challenge"].as_str().expect("challenge"),
        64,
    )
    .expect("challenge")
}

/// `credential.toJSON()` of an assertion by `auth` over the challenge of
/// request options `public_key`, from the RP's origin. Advances `auth`'s
/// counter.
pub fn assertion(auth: &mut SoftAuthenticator, public_key: &Value) -> Value {
    auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(public_key)))
        .to_json()
}

/// What the app sends back for the token answer of
/// `POST /v1/devices/{id}/verification` (or `/token`): a fresh passkey,
/// signed by the device key and sealed to the pinned encryption key. Also
/// the passkey's authenticator, for later logins.
pub fn sealed_registration(
    dev: &SoftDevice,
    device_id: &str,
    token_answer: &Value,
    pinned: &Pinned,
) -> (Value, SoftAuthenticator) {
    let opened = open_token(dev, device_id, token_answer, pinned);
    seal_registration(dev, &opened, token_answer, pinned)
}

/// The device opens the sealed token of a token answer and checks it and
/// the creation options against the pinned signing key.
pub fn open_token(
    dev: &SoftDevice,
    device_id: &str,
    token_answer: &Value,
    pinned: &Pinned,
) -> OpenedToken {
    let did: [u8; 16] = bytes(&json!(device_id)).try_into().expect("16 bytes");
    let opened = dev
        .open_token(
            &bytes(&token_answer["token"]["sealed"]),
            &did,
            &pinned.signing,
            RP_ID,
            SystemTime::now(),
        )
        .expect("open the token");
    opened
        .check_options(&token_answer["token"]["publicKey"])
        .expect("options match the token");
    opened
}

/// A fresh passkey for an opened token, in a signed and sealed request.
pub fn seal_registration(
    dev: &SoftDevice,
    opened: &OpenedToken,
    token_answer: &Value,
    pinned: &Pinned,
) -> (Value, SoftAuthenticator) {
    let (auth, registration) =
        create_passkey(&token_answer["token"]["publicKey"], ORIGIN).expect("passkey");
    let sealed = dev
        .seal_request(opened, &registration, &pinned.encryption, SystemTime::now())
        .expect("seal");
    (json!({ "sealed": b64url(&sealed) }), auth)
}

/// A payment of `amount` CHF for `user`, with a unique `reference`.
pub fn payment(user: &str, amount: &str, reference: &str) -> Value {
    json!({
        "user": {"name": user},
        "details": {
            "type": "payment", "amount": amount, "currency": "CHF",
            "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"},
            "reference": reference
        }
    })
}

/// The body of `POST /v1/pairings` for a desktop logging `user` in.
pub fn pairing(user: &str) -> Value {
    json!({
        "context": {
            "ip": "203.0.113.7",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "location": "Zurich"
        },
        "user": {"name": user}
    })
}

/// The one-time code in a created pairing's QR payload.
pub fn qr_code(created: &Value) -> String {
    let payload = created["qrPayload"].as_str().expect("qrPayload");
    let (_, fragment) = payload.split_once('#').expect("fragment");
    fragment
        .split('&')
        .find_map(|kv| kv.strip_prefix("code="))
        .expect("code in the QR payload")
        .to_string()
}

/// Every audit entry, read page by page as the `auditor` role.
pub fn audit_entries(auditor: &Api) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = 1u64;
    loop {
        let (status, page) = auditor
            .get(&format!("/v1/audit?from={from}&limit=1000"))
            .expect("GET /v1/audit");
        assert_eq!(status, 200, "{page}");
        out.extend(page["entries"].as_array().expect("entries").iter().cloned());
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => return out,
        }
    }
}

/// A passkey (attestation none) for `name`: registration options asked of
/// `start`, the credential verified by `finish` (the same server, or
/// another instance of the deployment). The authenticator, and the verify
/// answer.
pub fn register(start: &Api, finish: &Api, name: &str) -> (SoftAuthenticator, Value) {
    let options = start.expect(
        "/v1/registrations/options",
        &json!({"user": {"name": name}}),
        200,
    );
    let (auth, credential) = signet::testkit::browser::create(
        &options["publicKey"],
        ORIGIN,
        &signet::testkit::Attestation::None,
    )
    .expect("create");
    let registered = finish.expect(
        "/v1/registrations/verify",
        &json!({"ceremonyId": options["ceremonyId"], "credential": credential}),
        200,
    );
    (auth, registered)
}

/// A small deterministic generator (xorshift64*), seeded and printed by
/// the test so a run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// A seed from the environment variable `var`, else from the clock.
    pub fn seed_from_env(var: &str) -> u64 {
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
