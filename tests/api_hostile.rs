//! Hostile input through the real service: every member of a valid
//! registration and authentication request replaced by values of every
//! JSON type and by extremes, and the binary members bit-flipped. Each
//! answer must be a 4xx problem+json that names a field: never a 5xx,
//! never a dropped connection.

mod common;

use serde_json::{Value, json};
use signet::testkit::{Attestation, Ceremony, SoftAuthenticator};
use signet::webauthn::{CoseAlgorithm, b64url, b64url_decode};

use common::ceremony::{assertion_body, challenge_of};
use common::server::{ORIGIN, RP_ID, SignetServer, read};

/// Paths (JSON pointers) of every leaf and container under `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                pointers(child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn replacements() -> Vec<Value> {
    let mut deep = json!(0);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    vec![
        Value::Null,
        json!(0),
        json!(-1),
        json!(1e308),
        json!(true),
        json!(""),
        json!("!!not base64url!!"),
        json!("A".repeat(200_000)),
        json!([]),
        json!({}),
        deep,
    ]
}

fn set(body: &mut Value, pointer: &str, value: Value) {
    if pointer.is_empty() {
        *body = value;
    } else if let Some(slot) = body.pointer_mut(pointer) {
        *slot = value;
    }
}

fn check(pointer: &str, value: &Value, status: u16, answer: &Value) {
    let shown: String = value.to_string().chars().take(40).collect();
    assert!(
        (400..500).contains(&status),
        "{pointer} = {shown}: status {status}: {answer}"
    );
    assert!(
        answer["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:signet:problem:")),
        "{pointer} = {shown}: not a problem: {answer}"
    );
    assert!(
        answer["field"].as_str().is_some_and(|f| !f.is_empty()),
        "{pointer} = {shown}: no field: {answer}"
    );
}

/// Members whose replacement may leave a response valid: what the verifier
/// does not read (toJSON()'s conveniences duplicating the attestation
/// object, client hints, extension outputs it does not act on), and optional
/// members set to null (absent).
fn ignorable(pointer: &str, value: &Value) -> bool {
    const UNREAD: [&str; 6] = [
        "/credential/clientExtensionResults",
        "/credential/authenticatorAttachment",
        "/credential/response/transports",
        "/credential/response/authenticatorData",
        "/credential/response/publicKey",
        "/credential/response/publicKeyAlgorithm",
    ];
    let optional = ["/credential/rawId", "/credential/response/userHandle"];
    // An empty userHandle is allowed when the options named the user
    // (CONFORMANCE.md: only a discoverable login requires it non-empty).
    let empty_handle = pointer == "/credential/response/userHandle" && value == "";
    UNREAD.iter().any(|u| pointer.starts_with(u))
        || (value.is_null() && optional.contains(&pointer))
        || empty_handle
}

fn flip(text: &str, at: usize) -> String {
    let mut bytes = b64url_decode("x", text, 1 << 20).expect("base64url");
    if bytes.is_empty() {
        return text.to_string();
    }
    let i = at % bytes.len();
    bytes[i] ^= 1 << (at % 8);
    b64url(&bytes)
}

#[test]
fn mutated_registrations_and_assertions_get_named_4xx_problems() {
    let server = SignetServer::start();
    let client = server.client("rp");
    let post = |path: &str, body: &Value| {
        let r = client
            .post(server.url(path))
            .json(body)
            .send()
            .expect("the connection survives");
        read(r)
    };
    let fresh_registration = |name: &str| -> (Value, SoftAuthenticator) {
        let (status, options) = post(
            "/v1/registrations/options",
            &json!({ "user": { "name": name } }),
        );
        assert_eq!(status, 200, "{options}");
        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        let uid = options["publicKey"]["user"]["id"]
            .as_str()
            .expect("user id");
        auth.user_handle = b64url_decode("user.id", uid, 64).expect("user id");
        let parts = auth.register(
            &Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)),
            &Attestation::PackedSelf,
        );
        (
            json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
            auth,
        )
    };

    // Registration: every member replaced by every kind of value.
    let (template, _) = fresh_registration("shape");
    let mut paths = Vec::new();
    pointers(&template, String::new(), &mut paths);
    let mut sent = 0;
    for pointer in &paths {
        for value in replacements() {
            let (mut body, _) = fresh_registration("hostile");
            set(&mut body, pointer, value.clone());
            let (status, answer) = post("/v1/registrations/verify", &body);
            if status == 200 {
                assert!(
                    ignorable(pointer, &value),
                    "{pointer} = {value} was accepted"
                );
                continue;
            }
            check(pointer, &value, status, &answer);
            sent += 1;
        }
    }
    assert!(sent > 100, "only {sent} mutations sent");

    // Registration: bit flips in the binary members.
    for member in ["clientDataJSON", "attestationObject"] {
        for at in 0..40 {
            let (mut body, _) = fresh_registration("flips");
            let pointer = format!("/credential/response/{member}");
            let text = body
                .pointer(&pointer)
                .and_then(Value::as_str)
                .expect("member")
                .to_string();
            set(&mut body, &pointer, json!(flip(&text, at * 7 + 3)));
            let (status, answer) = post("/v1/registrations/verify", &body);
            check(&pointer, &json!(at), status, &answer);
        }
    }

    // Authentication: one registered credential, mutated assertions.
    let (body, mut auth) = fresh_registration("victim");
    let (status, answer) = post("/v1/registrations/verify", &body);
    assert_eq!(status, 200, "{answer}");
    let assertion = |auth: &mut SoftAuthenticator| -> Value {
        let (status, options) = post(
            "/v1/authentications/options",
            &json!({ "user": { "name": "victim" } }),
        );
        assert_eq!(status, 200, "{options}");
        assertion_body(&options, auth)
    };
    let template = assertion(&mut auth);
    let mut paths = Vec::new();
    pointers(&template, String::new(), &mut paths);
    for pointer in &paths {
        for value in replacements() {
            let mut body = assertion(&mut auth);
            set(&mut body, pointer, value.clone());
            let (status, answer) = post("/v1/authentications/verify", &body);
            if status == 200 {
                assert!(
                    ignorable(pointer, &value),
                    "{pointer} = {value} was accepted"
                );
                continue;
            }
            check(pointer, &value, status, &answer);
        }
    }
    for member in ["clientDataJSON", "authenticatorData", "signature"] {
        for at in 0..30 {
            let mut body = assertion(&mut auth);
            let pointer = format!("/credential/response/{member}");
            let text = body
                .pointer(&pointer)
                .and_then(Value::as_str)
                .expect("member")
                .to_string();
            set(&mut body, &pointer, json!(flip(&text, at * 5 + 1)));
            let (status, answer) = post("/v1/authentications/verify", &body);
            check(&pointer, &json!(at), status, &answer);
        }
    }

    // After all that, the credential still works and the server is healthy.
    let body = assertion(&mut auth);
    let (status, answer) = post("/v1/authentications/verify", &body);
    assert_eq!(status, 200, "{answer}");
    let (status, _) = server.get("monitor", "/readyz");
    assert_eq!(status, 200);
}
