//! Device binding over the API of a real `signet serve`: the routes, their
//! roles and problem types, key attestation at enrollment, concurrent
//! redemption through the network, and the audit trail.

mod common;

use std::time::SystemTime;

use serde_json::{Value, json};
use signet::keys::EcPublicKey;
use signet::testkit::android::{SecurityLevelForTests, key_attestation_chain};
use signet::testkit::device::{SoftDevice, create_passkey};
use signet::webauthn::{b64url, b64url_decode};

use common::server::{ORIGIN, SignetServer};

fn bytes(v: &Value) -> Vec<u8> {
    b64url_decode("test", v.as_str().expect("string"), 1 << 20).expect("base64url")
}

/// The role's public key as `GET /v1/keys` lists it (what an app pins).
fn pinned(server: &SignetServer, role: &str) -> EcPublicKey {
    let (status, keys) = server.get("rp", "/v1/keys");
    assert_eq!(status, 200, "{keys}");
    common::load::active_key(&keys, role)
}

struct App {
    dev: SoftDevice,
    id: String,
}

impl App {
    fn enroll(server: &SignetServer, name: &str) -> App {
        let dev = SoftDevice::generate();
        let (status, answer) = server.post(
            "rp",
            "/v1/devices",
            &dev.enrollment(name, json!({"os": "android", "osVersion": "15"})),
        );
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["state"], "pending");
        let id = answer["deviceId"].as_str().expect("id").to_string();
        App { dev, id }
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/devices/{}{rest}", self.id)
    }

    /// Verified: the token answer.
    fn verified(&self, server: &SignetServer) -> Value {
        let (status, answer) = server.post(
            "rp",
            &self.path("/verification"),
            &json!({"outcome": "verified", "reference": "KYC-1"}),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["state"], "token_issued");
        answer
    }

    /// What the app sends back: a fresh passkey, signed and sealed.
    fn sealed_request(&self, server: &SignetServer, answer: &Value) -> Value {
        let did: [u8; 16] = bytes(&json!(self.id)).try_into().expect("16 bytes");
        let opened = self
            .dev
            .open_token(
                &bytes(&answer["token"]["sealed"]),
                &did,
                &pinned(server, "token-signing"),
                "localhost",
                SystemTime::now(),
            )
            .expect("open");
        opened
            .check_options(&answer["token"]["publicKey"])
            .expect("options");
        let (_, registration) = create_passkey(&answer["token"]["publicKey"], ORIGIN).expect("pk");
        let sealed = self
            .dev
            .seal_request(
                &opened,
                &registration,
                &pinned(server, "token-encryption"),
                SystemTime::now(),
            )
            .expect("seal");
        json!({ "sealed": b64url(&sealed) })
    }
}

fn problem_type(answer: &Value) -> &str {
    answer["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:signet:problem:"))
        .unwrap_or_default()
}

#[test]
fn the_flow_through_the_api_with_roles_problems_and_audit() {
    let server = SignetServer::start();
    let app = App::enroll(&server, "api-alice@example.com");

    // Roles: an auditor reads but cannot enroll or verify; a monitor
    // does nothing here; an officer may revoke.
    let (status, shown) = server.get("auditor", &app.path(""));
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["state"], "pending");
    assert_eq!(shown["platform"]["os"], "android");
    for role in ["auditor", "monitor", "officer"] {
        let (status, _) = server.post(
            role,
            &app.path("/verification"),
            &json!({"outcome": "verified"}),
        );
        assert_eq!(status, 403, "{role} reported an identity outcome");
    }
    let (status, _) = server.get("monitor", &app.path(""));
    assert_eq!(status, 403);

    // No token before the outcome.
    let (status, answer) = server.post("rp", &app.path("/token"), &json!({}));
    assert_eq!(
        (status, problem_type(&answer)),
        (409, "device-state"),
        "{answer}"
    );

    let answer = app.verified(&server);
    // A second outcome is refused.
    let (status, again) = server.post(
        "rp",
        &app.path("/verification"),
        &json!({"outcome": "rejected"}),
    );
    assert_eq!((status, problem_type(&again)), (409, "device-state"));

    // Another device's signature, then the real one, then a replay.
    let intruder = App {
        dev: SoftDevice::generate(),
        id: app.id.clone(),
    };
    let forged = {
        // The intruder got hold of the opened token (it cannot open it
        // itself; see tests/device_binding.rs) and signs with its own key.
        let did: [u8; 16] = bytes(&json!(app.id)).try_into().expect("16");
        let opened = app
            .dev
            .open_token(
                &bytes(&answer["token"]["sealed"]),
                &did,
                &pinned(&server, "token-signing"),
                "localhost",
                SystemTime::now(),
            )
            .expect("open");
        let (_, registration) = create_passkey(&answer["token"]["publicKey"], ORIGIN).expect("pk");
        let sealed = intruder
            .dev
            .seal_request(
                &opened,
                &registration,
                &pinned(&server, "token-encryption"),
                SystemTime::now(),
            )
            .expect("seal");
        json!({ "sealed": b64url(&sealed) })
    };
    let (status, refused) = server.post("rp", &app.path("/registration"), &forged);
    assert_eq!(
        (status, problem_type(&refused)),
        (403, "device-signature"),
        "{refused}"
    );
    assert_eq!(refused["field"], "request.signature");

    let request = app.sealed_request(&server, &answer);
    let (status, bound) = server.post("rp", &app.path("/registration"), &request);
    assert_eq!(status, 200, "{bound}");
    assert_eq!(bound["state"], "bound");
    let (status, replay) = server.post("rp", &app.path("/registration"), &request);
    assert_eq!((status, problem_type(&replay)), (409, "token-consumed"));

    // The credential lists its device; revocation by an officer disables it.
    let (status, creds) = server.get(
        "rp",
        &format!(
            "/v1/users/{}/credentials",
            bound["userId"].as_str().expect("user")
        ),
    );
    assert_eq!(status, 200, "{creds}");
    assert_eq!(creds["credentials"][0]["deviceId"], app.id.as_str());
    let (status, revoked) = server.post(
        "officer",
        &app.path("/revoke"),
        &json!({"reason": "lost phone"}),
    );
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    let (_, creds) = server.get(
        "rp",
        &format!(
            "/v1/users/{}/credentials",
            bound["userId"].as_str().expect("user")
        ),
    );
    assert!(
        creds["credentials"][0]["disabled"]
            .as_str()
            .is_some_and(|d| d.contains("lost phone")),
        "{creds}"
    );

    // Unknown and malformed ids.
    let (status, missing) = server.get("rp", "/v1/devices/AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!((status, problem_type(&missing)), (404, "not-found"));
    let (status, bad) = server.get("rp", "/v1/devices/short");
    assert_eq!((status, problem_type(&bad)), (400, "invalid-request"));
    assert_eq!(bad["field"], "deviceId");

    // The audit log holds every transition, in order.
    let (status, audit) = server.get("auditor", "/v1/audit?limit=500");
    assert_eq!(status, 200);
    let events: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"]["subject"] == app.id.as_str())
        .map(|e| e["event"]["event"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        events,
        [
            "device.enrolled",
            "device.verified",
            "device.token_issued",
            "device.registration_refused",
            "device.bound",
            "device.registration_refused",
            "device.revoked",
        ],
        "{audit}"
    );
}

#[test]
fn concurrent_redemptions_over_the_network_bind_once() {
    let server = SignetServer::start();
    let app = App::enroll(&server, "racer@example.com");
    let answer = app.verified(&server);
    let requests: Vec<Value> = (0..12)
        .map(|_| app.sealed_request(&server, &answer))
        .collect();
    let results: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| {
                let (server, path) = (&server, app.path("/registration"));
                scope.spawn(move || server.post("rp", &path, r))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{results:?}");
    for (status, answer) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!((*status, problem_type(answer)), (409, "token-consumed"));
    }
    let (_, shown) = server.get("rp", &app.path(""));
    assert_eq!(shown["credentials"].as_array().expect("list").len(), 1);
}

#[test]
fn key_attestation_is_verified_recorded_and_can_be_required() {
    let roots = tempfile::tempdir().expect("tempdir");
    let dev = SoftDevice::generate();
    let (chain, root) = key_attestation_chain(
        &dev.public,
        b"enrollment-challenge",
        SecurityLevelForTests::StrongBox,
    );
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &root).expect("pem");
    let root_file = roots.path().join("attestation-root.pem");
    std::fs::write(&root_file, pem).expect("write root");
    let server = SignetServer::start_with(&format!(
        "[devices]\nkey_attestation_roots = [\"{}\"]\nrequire_key_attestation = true\n",
        root_file.display()
    ));

    // Without a chain: refused, since the config requires one.
    let (status, answer) = server.post(
        "rp",
        "/v1/devices",
        &dev.enrollment("attested@example.com", json!({})),
    );
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("keyAttestation"))
    );

    let mut body = dev.enrollment("attested@example.com", json!({"os": "android"}));
    body["keyAttestation"] = json!(chain.iter().map(|c| b64url(c)).collect::<Vec<_>>());
    let (status, answer) = server.post("rp", "/v1/devices", &body);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["keyAttestation"]["security_level"], "strongbox");
    let (_, shown) = server.get(
        "auditor",
        &format!("/v1/devices/{}", answer["deviceId"].as_str().expect("id")),
    );
    assert_eq!(shown["keyAttestation"]["security_level"], "strongbox");

    // Another device's chain, and a chain to a root not configured.
    let other = SoftDevice::generate();
    let mut body = other.enrollment("attested2@example.com", json!({}));
    body["keyAttestation"] = json!(chain.iter().map(|c| b64url(c)).collect::<Vec<_>>());
    let (status, answer) = server.post("rp", "/v1/devices", &body);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["field"], "keyAttestation[0].subjectPublicKeyInfo",
        "{answer}"
    );
    let (foreign, _) = key_attestation_chain(
        &other.public,
        b"x",
        SecurityLevelForTests::TrustedEnvironment,
    );
    body["keyAttestation"] = json!(foreign.iter().map(|c| b64url(c)).collect::<Vec<_>>());
    let (status, answer) = server.post("rp", "/v1/devices", &body);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("keyAttestation")),
        "{answer}"
    );
}
