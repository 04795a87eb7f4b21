//! `signet device-sim`: the bank's app (and core banking's relay) played end
//! to end against a running signet, for test teams and as a worked example
//! of device binding.
//!
//! It reads what `scripts/dev-up` made in its directory (the `rp` client
//! certificate and the pinned `token-signing` and `token-encryption` public
//! keys), then walks one device through the whole flow:
//!
//! 1. a device key is generated (in memory; a phone keeps it in its TEE or
//!    Secure Enclave),
//! 2. the device is enrolled (`POST /v1/devices`),
//! 3. core banking reports the person verified (`POST
//!    /v1/devices/{id}/verification`), which issues the sealed token,
//! 4. the device opens the token and checks its signature against the
//!    pinned `token-signing` key,
//! 5. it checks the relayed creation options against the token,
//! 6. the soft authenticator creates the passkey,
//! 7. the signed request is sealed to the pinned `token-encryption` key and
//!    sent (`POST /v1/devices/{id}/registration`),
//! 8. and the new passkey logs in (authentication options, then verify).
//!
//! Each step prints one line as it completes; the first failure prints
//! `device-sim: <step>: failed: <reason>` on stderr and exits 1.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::files::one_line;
use crate::keys::{EcPublicKey, Kid};
use crate::testkit::device::SoftDevice;
use crate::webauthn::{b64url, b64url_decode};

/// The largest file read from the dev directory (certificates, keys).
const FILE_MAX: u64 = 64 * 1024;
/// The largest answer read from signet.
const BODY_MAX: u64 = 1024 * 1024;
/// Connect and whole-request timeout of every call.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The files read from `--dev-dir`, relative to it.
pub const CA_FILE: &str = "pki/ca.pem";
pub const CERT_FILE: &str = "pki/rp.pem";
pub const KEY_FILE: &str = "pki/rp.key";
pub const TOKEN_SIGNING_FILE: &str = "keys/token-signing.pem";
pub const TOKEN_ENCRYPTION_FILE: &str = "keys/token-encryption.pem";

/// `signet device-sim`'s arguments.
#[derive(clap::Args, Debug)]
pub struct DeviceSimArgs {
    /// signet's API, https://host:port (e.g. https://localhost:8443).
    #[arg(long, value_name = "URL", value_parser = crate::conformance_proxy::parse_https_url)]
    pub server: String,
    /// The directory scripts/dev-up made (its --dir; default var/dev): the
    /// rp client certificate in pki/ and the pinned public keys in keys/.
    #[arg(long, value_name = "DIR")]
    pub dev_dir: PathBuf,
    /// The user to enroll the device for (default:
    /// device-sim-<8 random hex digits>@example.com, a new user each run).
    #[arg(long, value_name = "NAME", value_parser = parse_user)]
    pub user: Option<String>,
    /// The origin the soft authenticator puts in clientDataJSON (default:
    /// https://<rp.id> of the creation options); it must be one of the
    /// server's rp.origins.
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,
    /// Print one JSON object at the end instead of a line per step.
    #[arg(long)]
    pub json: bool,
}

fn parse_user(s: &str) -> Result<String, String> {
    if s.trim().is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err("must be 1 to 256 bytes of text without control characters".into());
    }
    Ok(s.to_string())
}

/// The step that failed, and why.
#[derive(Debug)]
pub struct Failure {
    pub step: &'static str,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: failed: {}", self.step, self.reason)
    }
}

/// Tags an error with the step it happened in.
trait At<T> {
    fn at(self, step: &'static str) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> At<T> for Result<T, E> {
    fn at(self, step: &'static str) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            step,
            reason: one_line(&e.to_string()),
        })
    }
}

/// Step names, as printed.
mod step {
    pub const DEV_DIR: &str = "dev dir";
    pub const DEVICE_KEY: &str = "device key";
    pub const ENROLL: &str = "enroll";
    pub const VERIFY_IDENTITY: &str = "verify identity";
    pub const OPEN_TOKEN: &str = "open token";
    pub const CHECK_OPTIONS: &str = "check options";
    pub const CREATE_PASSKEY: &str = "create passkey";
    pub const REGISTER: &str = "register";
    pub const LOGIN: &str = "login";
}

/// The steps done so far; printed as they complete unless `--json`.
struct Steps {
    json: bool,
    done: Vec<Value>,
}

impl Steps {
    fn ok(&mut self, step: &'static str, detail: String) {
        if !self.json {
            println!("device-sim: {step}: ok ({detail})");
        }
        self.done
            .push(json!({ "step": step, "ok": true, "detail": detail }));
    }
}

/// What a successful run ends with.
struct Bound {
    device_id: String,
    credential_id: String,
    user: String,
    user_id: Option<String>,
}

/// Runs the simulation; the exit code is 0 when the device ended bound and
/// its passkey logged in, 1 at the first failure (reported on stderr).
pub fn run(args: DeviceSimArgs) -> ExitCode {
    let mut steps = Steps {
        json: args.json,
        done: Vec::new(),
    };
    match simulate(&args, &mut steps) {
        Ok(bound) => {
            if args.json {
                let out = json!({
                    "deviceId": bound.device_id,
                    "state": "bound",
                    "credentialId": bound.credential_id,
                    "user": bound.user,
                    "userId": bound.user_id,
                    "server": args.server,
                    "steps": steps.done,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).unwrap_or_else(|_| out.to_string())
                );
            } else {
                println!(
                    "device-sim: device {} is bound (credential {}, user {})",
                    bound.device_id, bound.credential_id, bound.user
                );
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("device-sim: {failure}");
            ExitCode::from(1)
        }
    }
}

fn simulate(args: &DeviceSimArgs, steps: &mut Steps) -> Result<Bound, Failure> {
    let dev = DevDir::load(&args.dev_dir).at(step::DEV_DIR)?;
    let api = Api::new(&args.server, dev.tls).at(step::DEV_DIR)?;
    let signing_kid = Kid::of(&dev.token_signing);
    let encryption_kid = Kid::of(&dev.token_encryption);
    steps.ok(
        step::DEV_DIR,
        format!(
            "rp client certificate, pinned token-signing {signing_kid} and \
             token-encryption {encryption_kid}"
        ),
    );

    let device = SoftDevice::generate();
    steps.ok(
        step::DEVICE_KEY,
        format!("P-256, kid {}, in memory", Kid::of(&device.public)),
    );

    let user = match &args.user {
        Some(u) => u.clone(),
        None => format!(
            "device-sim-{}@example.com",
            crate::hex::encode(&crate::testkit::random_bytes(4))
        ),
    };
    let platform = json!({
        "os": "signet-device-sim",
        "app": concat!("signet ", env!("CARGO_PKG_VERSION")),
    });
    let enrolled = api
        .post("/v1/devices", &device.enrollment(&user, platform))
        .at(step::ENROLL)?;
    let device_id_text = text(&enrolled, "/deviceId").at(step::ENROLL)?;
    let device_id = device_id_of(&device_id_text).at(step::ENROLL)?;
    steps.ok(
        step::ENROLL,
        format!(
            "device {device_id_text}, user {user}, state {}",
            shown(&enrolled, "/state")
        ),
    );

    let device_path = format!("/v1/devices/{device_id_text}");
    let verified = api
        .post(
            &format!("{device_path}/verification"),
            &json!({ "outcome": "verified", "reference": "device-sim" }),
        )
        .at(step::VERIFY_IDENTITY)?;
    let state = shown(&verified, "/state");
    if state != "token_issued" {
        return Err(Failure {
            step: step::VERIFY_IDENTITY,
            reason: format!("state is {state}, not token_issued"),
        });
    }
    let token = &verified["token"];
    let sealed = text(token, "/sealed").at(step::VERIFY_IDENTITY)?;
    let sealed = b64url_decode("token.sealed", &sealed, crate::seal::SEALED_MAX)
        .at(step::VERIFY_IDENTITY)?;
    let options = &token["publicKey"];
    if !options.is_object() {
        return Err(Failure {
            step: step::VERIFY_IDENTITY,
            reason: "the answer has no token.publicKey (creation options)".into(),
        });
    }
    steps.ok(
        step::VERIFY_IDENTITY,
        format!(
            "state token_issued, token {}, expires {}",
            shown(token, "/tokenId"),
            shown(token, "/expires")
        ),
    );

    let rp_id = text(options, "/rp/id").at(step::OPEN_TOKEN)?;
    let opened = device
        .open_token(
            &sealed,
            &device_id,
            &dev.token_signing,
            &rp_id,
            SystemTime::now(),
        )
        .at(step::OPEN_TOKEN)?;
    steps.ok(
        step::OPEN_TOKEN,
        format!(
            "signature verified with the pinned token-signing key {signing_kid}, \
             rp {rp_id}, expires {}",
            crate::rfc3339::format(UNIX_EPOCH + Duration::from_secs(opened.claims.expires_s))
        ),
    );

    opened.check_options(options).at(step::CHECK_OPTIONS)?;
    steps.ok(
        step::CHECK_OPTIONS,
        "challenge derived from the token, user.id and rp.id are the token's".into(),
    );

    let origin = match &args.origin {
        Some(o) => o.clone(),
        None => format!("https://{rp_id}"),
    };
    let (mut authenticator, registration) =
        crate::testkit::device::create_passkey(options, &origin).at(step::CREATE_PASSKEY)?;
    let credential_id = b64url(&authenticator.credential_id);
    steps.ok(
        step::CREATE_PASSKEY,
        format!("ES256, attestation none, origin {origin}, credential {credential_id}"),
    );

    let sealed_request = device
        .seal_request(
            &opened,
            &registration,
            &dev.token_encryption,
            SystemTime::now(),
        )
        .at(step::REGISTER)?;
    let registered = api
        .post(
            &format!("{device_path}/registration"),
            &json!({ "sealed": b64url(&sealed_request) }),
        )
        .at(step::REGISTER)?;
    let state = shown(&registered, "/state");
    if state != "bound" {
        return Err(Failure {
            step: step::REGISTER,
            reason: format!("state is {state}, not bound"),
        });
    }
    if let Some(id) = registered["credentialId"].as_str()
        && id != credential_id
    {
        return Err(Failure {
            step: step::REGISTER,
            reason: format!(
                "signet bound credential {}, not the one created ({credential_id})",
                one_line(id)
            ),
        });
    }
    let user_id = registered["userId"].as_str().map(one_line);
    steps.ok(
        step::REGISTER,
        format!("request sealed to the pinned token-encryption key {encryption_kid}, state bound"),
    );

    let request = api
        .post(
            "/v1/authentications/options",
            &json!({ "user": { "name": user } }),
        )
        .at(step::LOGIN)?;
    let assertion =
        crate::testkit::browser::get(&mut authenticator, &rp_id, &request["publicKey"], &origin)
            .at(step::LOGIN)?;
    let logged_in = api
        .post(
            "/v1/authentications/verify",
            &json!({ "ceremonyId": request["ceremonyId"], "credential": assertion }),
        )
        .at(step::LOGIN)?;
    if let (Some(expected), Some(got)) = (&user_id, logged_in["userId"].as_str())
        && expected != got
    {
        return Err(Failure {
            step: step::LOGIN,
            reason: format!("logged in as user {}, not {expected}", one_line(got)),
        });
    }
    steps.ok(
        step::LOGIN,
        format!(
            "assertion verified, user {}, signCount {}",
            shown(&logged_in, "/userId"),
            shown(&logged_in, "/signCount")
        ),
    );

    Ok(Bound {
        device_id: device_id_text,
        credential_id,
        user,
        user_id,
    })
}

/// A string member of `value` at `pointer`, or an error naming it.
fn text(value: &Value, pointer: &str) -> Result<String, String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "signet's answer has no {} string",
                pointer.trim_start_matches('/').replace('/', ".")
            )
        })
}

/// A member of `value` at `pointer` for display: text as is (one line),
/// anything else as JSON, `-` when absent.
fn shown(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => one_line(s),
        Some(v) => one_line(&v.to_string()),
    }
}

fn device_id_of(text: &str) -> Result<[u8; 16], String> {
    b64url_decode("deviceId", text, 16)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| format!("deviceId {:?} is not 16 bytes of base64url", one_line(text)))
}

// ---------------------------------------------------------------------------
// The dev directory

/// What `--dev-dir` provides.
pub struct DevDir {
    /// The TLS client configuration: trusts only the dev CA, presents the
    /// `rp` certificate.
    pub tls: rustls::ClientConfig,
    /// The pinned `token-signing` public key.
    pub token_signing: EcPublicKey,
    /// The pinned `token-encryption` public key.
    pub token_encryption: EcPublicKey,
}

impl DevDir {
    /// Reads and checks the five files; every missing one is named.
    pub fn load(dir: &Path) -> Result<DevDir, String> {
        let path = |name: &str| dir.join(name);
        let missing: Vec<String> = [
            CA_FILE,
            CERT_FILE,
            KEY_FILE,
            TOKEN_SIGNING_FILE,
            TOKEN_ENCRYPTION_FILE,
        ]
        .iter()
        .map(|name| path(name))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
        if !missing.is_empty() {
            return Err(format!(
                "missing {}: run scripts/dev-up --dir {} first (it writes the dev PKI and \
                 exports the pinned keys)",
                missing.join(", "),
                dir.display()
            ));
        }
        let roots = certificates(&path(CA_FILE))?;
        let chain = certificates(&path(CERT_FILE))?;
        let key_path = path(KEY_FILE);
        let key = PrivateKeyDer::from_pem_slice(&read_bounded(&key_path)?).map_err(|e| {
            format!(
                "{}: holds no PEM private key (PKCS#8, SEC1 or PKCS#1): {e}",
                key_path.display()
            )
        })?;
        let tls = crate::conformance_proxy::client_tls(roots, chain, key).map_err(|e| {
            format!(
                "{}, {}, {}: {e:#}",
                path(CA_FILE).display(),
                path(CERT_FILE).display(),
                key_path.display()
            )
        })?;
        Ok(DevDir {
            tls,
            token_signing: public_key(&path(TOKEN_SIGNING_FILE))?,
            token_encryption: public_key(&path(TOKEN_ENCRYPTION_FILE))?,
        })
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    crate::files::read_bounded(path, FILE_MAX)
}

fn pem_text(path: &Path) -> Result<String, String> {
    String::from_utf8(read_bounded(path)?)
        .map_err(|_| format!("{}: not a PEM text file", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let blocks = crate::mds::pem_blocks(&pem_text(path)?, "CERTIFICATE")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(blocks.into_iter().map(CertificateDer::from).collect())
}

/// The one P-256 SPKI public key of a PEM file, as `signet hsm export
/// --format pem` prints it.
fn public_key(path: &Path) -> Result<EcPublicKey, String> {
    use p256::pkcs8::DecodePublicKey as _;
    let blocks = crate::mds::pem_blocks(&pem_text(path)?, "PUBLIC KEY")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let [der] = blocks.as_slice() else {
        return Err(format!(
            "{}: holds {} public keys, not one",
            path.display(),
            blocks.len()
        ));
    };
    p256::PublicKey::from_public_key_der(der)
        .map(|k| EcPublicKey::from_p256(&k))
        .map_err(|e| format!("{}: not a P-256 public key: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// HTTP

/// signet's API through the `rp` client certificate.
struct Api {
    base: String,
    client: reqwest::blocking::Client,
}

impl Api {
    fn new(base: &str, tls: rustls::ClientConfig) -> Result<Api, String> {
        let client = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("signet-device-sim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTPS client: {}", cause_chain(&e)))?;
        Ok(Api {
            base: base.to_string(),
            client,
        })
    }

    /// POSTs `body` to `path`: the answer's JSON on 2xx, the reason
    /// otherwise.
    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let response = self
            .client
            .post(&url)
            .json(body)
            .send()
            .map_err(|e| format!("POST {url}: {}", cause_chain(&e.without_url())))?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        response
            .take(BODY_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
        if bytes.len() as u64 > BODY_MAX {
            return Err(format!("POST {url}: the answer exceeds {BODY_MAX} bytes"));
        }
        if !(200..300).contains(&status) {
            return Err(format!("POST {path}: {}", problem_reason(status, &bytes)));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("POST {path}: HTTP {status}, but the answer is not JSON: {e}"))
    }
}

/// An error answer as one line: the status, then the problem's type, field
/// and detail (RFC 9457), or the start of the body when it is not one.
pub fn problem_reason(status: u16, body: &[u8]) -> String {
    let problem = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object);
    let Some(problem) = problem else {
        let raw: String = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(200)
            .collect();
        return if raw.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {}", one_line(&raw))
        };
    };
    let member = |name: &str| {
        problem
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(one_line)
    };
    let kind = member("type").or_else(|| member("title"));
    let detail = member("detail").or_else(|| member("title"));
    let field =
        member("field").filter(|f| !detail.as_deref().is_some_and(|d| d.starts_with(f.as_str())));
    let mut out = format!("HTTP {status}");
    if let Some(kind) = kind {
        out.push_str(&format!(" {kind}"));
    }
    let said: Vec<String> = [field, detail].into_iter().flatten().collect();
    if !said.is_empty() {
        out.push_str(&format!(": {}", said.join(": ")));
    }
    if status == 404
        && problem.get("type").and_then(Value::as_str) == Some("urn:signet:problem:no-such-route")
    {
        out.push_str(" (this signet has no device binding API; is it an older build?)");
    }
    out
}

/// An error and its sources, joined by ": " (reqwest's own message alone
/// says little: "error sending request").
fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    one_line(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_servers_are_accepted() {
        assert_eq!(
            crate::conformance_proxy::parse_https_url("https://localhost:8443/").as_deref(),
            Ok("https://localhost:8443")
        );
        assert!(crate::conformance_proxy::parse_https_url("http://localhost:8443").is_err());
        assert!(crate::conformance_proxy::parse_https_url("https://localhost:8443/?x=1").is_err());
        assert!(crate::conformance_proxy::parse_https_url("localhost:8443").is_err());
    }

    #[test]
    fn a_problem_reads_as_status_type_and_detail() {
        let body = br#"{"type":"urn:signet:problem:token-expired","title":"Expired","status":410,"detail":"token.exp: expired at 2026-01-01T00:00:00Z","field":"token.exp"}"#;
        assert_eq!(
            problem_reason(410, body),
            "HTTP 410 urn:signet:problem:token-expired: token.exp: expired at 2026-01-01T00:00:00Z"
        );
        let body =
            br#"{"type":"urn:signet:problem:no-such-route","title":"No such route","status":404}"#;
        let reason = problem_reason(404, body);
        assert!(
            reason.starts_with("HTTP 404 urn:signet:problem:no-such-route: No such route"),
            "{reason}"
        );
        assert!(reason.contains("no device binding API"), "{reason}");
        assert_eq!(problem_reason(502, b""), "HTTP 502");
        assert_eq!(
            problem_reason(500, b"oops\n\x1b[31m"),
            "HTTP 500: oops\\n\\u{1b}[31m"
        );
    }

    #[test]
    fn a_dev_dir_without_keys_names_the_missing_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("pki")).expect("mkdir");
        for name in [CA_FILE, CERT_FILE, KEY_FILE] {
            std::fs::write(dir.join(name), "x").expect("write");
        }
        let e = DevDir::load(dir).err().expect("missing keys");
        assert!(e.contains("keys/token-signing.pem"), "{e}");
        assert!(e.contains("keys/token-encryption.pem"), "{e}");
        assert!(!e.contains("rp.pem"), "{e}");
        assert!(e.contains("scripts/dev-up"), "{e}");
    }

    #[test]
    fn a_pinned_key_is_one_p256_spki() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let key = SoftDevice::generate().public;
        let one = dir.join("one.pem");
        std::fs::write(&one, key.pem()).expect("write");
        let two = dir.join("two.pem");
        std::fs::write(&two, format!("{}{}", key.pem(), key.pem())).expect("write");
        let loaded = public_key(&one);
        let doubled = public_key(&two).err();
        assert!(loaded.is_ok_and(|k| k == key));
        assert!(doubled.is_some_and(|e| e.contains("2 public keys")));
    }
}
