//! `signet serve` end to end: real process, real mutual TLS, real SoftHSM,
//! real sled store, the testkit authenticator as the browser.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use signet::testkit::SoftAuthenticator;
use signet::webauthn::{CoseAlgorithm, b64url};

use common::ceremony;
use common::server::{SignetServer, signet_bin};

/// Registers a fresh soft authenticator for `name`, which must succeed;
/// returns it (with its user handle set to the one signet chose) and the
/// verify answer.
fn register(server: &SignetServer, name: &str) -> (SoftAuthenticator, Value) {
    let (status, answer, authenticator) = ceremony::register(
        server,
        &json!({ "user": { "name": name, "displayName": "Test User" } }),
        SoftAuthenticator::new(CoseAlgorithm::Es256),
    );
    assert_eq!(status, 200, "{answer}");
    (authenticator, answer)
}

/// Options and an assertion for `name`; returns the verify request body.
fn assertion_request(
    server: &SignetServer,
    authenticator: &mut SoftAuthenticator,
    name: &str,
) -> Value {
    let (status, options) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": name } }),
    );
    assert_eq!(status, 200, "{options}");
    ceremony::assertion_body(&options, authenticator)
}

fn assert_problem(status: u16, body: &Value, want_status: u16, slug: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["type"], format!("urn:signet:problem:{slug}"), "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
}

#[test]
fn register_and_authenticate_over_mutual_tls() {
    let server = SignetServer::start();
    let (mut authenticator, registered) = register(&server, "alice@example.com");
    assert_eq!(registered["fmt"], "none");
    assert_eq!(registered["userName"], "alice@example.com");
    assert_eq!(
        registered["credentialId"],
        b64url(&authenticator.credential_id)
    );
    let user_id = registered["userId"].as_str().expect("userId").to_string();

    // The same user again: the existing credential is excluded.
    let (status, options) = server.post(
        "rp",
        "/v1/registrations/options",
        &json!({ "user": { "name": "alice@example.com" } }),
    );
    assert_eq!(status, 200);
    assert_eq!(options["publicKey"]["user"]["id"], user_id);
    assert_eq!(
        options["publicKey"]["excludeCredentials"][0]["id"],
        b64url(&authenticator.credential_id)
    );

    let request = assertion_request(&server, &mut authenticator, "alice@example.com");
    let (status, answer) = server.post("rp", "/v1/authentications/verify", &request);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["userId"], user_id);
    assert_eq!(answer["signCount"], 1);
    assert_eq!(answer["userVerified"], true);

    // Discoverable login: no user in the options, the userHandle names them.
    let (status, options) = server.post("rp", "/v1/authentications/options", &json!({}));
    assert_eq!(status, 200, "{options}");
    assert_eq!(options["publicKey"]["allowCredentials"], json!([]));
    let (status, answer) = ceremony::authenticate(&server, &options, &mut authenticator);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["signCount"], 2);

    // Listing, then deletion, then the credential no longer authenticates.
    let (status, listing) = server.get("rp", &format!("/v1/users/{user_id}/credentials"));
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["credentials"].as_array().map(Vec::len), Some(1));
    assert_eq!(listing["credentials"][0]["signCount"], 2);
    let credential_id = b64url(&authenticator.credential_id);
    let r = server
        .client("rp")
        .delete(server.url(&format!("/v1/credentials/{credential_id}")))
        .send()
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
    let r = server
        .client("rp")
        .delete(server.url(&format!("/v1/credentials/{credential_id}")))
        .send()
        .expect("delete again");
    assert_eq!(r.status().as_u16(), 404);
    let (status, body) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": "alice@example.com" } }),
    );
    assert_problem(status, &body, 404, "not-found");
    assert_eq!(body["field"], "user.name");

    // /v1/keys: one active key per role, as JWK.
    let (status, keys) = server.get("rp", "/v1/keys");
    assert_eq!(status, 200, "{keys}");
    let roles: Vec<&str> = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["role"].as_str())
        .collect();
    for role in [
        "token-signing",
        "token-encryption",
        "approval-countersign",
        "audit-checkpoint",
    ] {
        assert!(roles.contains(&role), "{role} missing from {keys}");
    }
    assert_eq!(keys["keys"][0]["jwk"]["kty"], "EC");

    // The audit log holds what happened, readable by the auditor only.
    let (status, page) = server.get("auditor", "/v1/audit?from=1&limit=100");
    assert_eq!(status, 200, "{page}");
    let events: Vec<&str> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["event"]["event"].as_str())
        .collect();
    assert_eq!(
        events,
        [
            "credential.registered",
            "authentication.verified",
            "authentication.verified",
            "credential.deleted"
        ]
    );
    assert_eq!(page["entries"][0]["event"]["actor"], "client:test-rp");
    let (status, body) = server.get("rp", "/v1/audit");
    assert_problem(status, &body, 403, "forbidden");
}

#[test]
fn credentials_and_counters_survive_a_restart() {
    let mut server = SignetServer::start();
    let (mut authenticator, _) = register(&server, "bob");
    let request = assertion_request(&server, &mut authenticator, "bob");
    let (status, answer) = server.post("rp", "/v1/authentications/verify", &request);
    assert_eq!(status, 200, "{answer}");

    // An assertion prepared before the restart, answered after it.
    let pending = assertion_request(&server, &mut authenticator, "bob");
    server.restart();
    let (status, answer) = server.post("rp", "/v1/authentications/verify", &pending);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["signCount"], 2);

    // A replay of an answered ceremony is refused; a cloned authenticator
    // (counter behind) is refused.
    let (status, body) = server.post("rp", "/v1/authentications/verify", &pending);
    assert_problem(status, &body, 409, "ceremony-consumed");
    authenticator.sign_count = 0;
    let cloned = assertion_request(&server, &mut authenticator, "bob");
    let (status, body) = server.post("rp", "/v1/authentications/verify", &cloned);
    assert_problem(status, &body, 400, "credential-counter");
    assert_eq!(
        body["field"],
        "credential.response.authenticatorData.signCount"
    );

    // Graceful stop, then the audit chain verifies offline.
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    // One access-log line per request, naming route, status and client.
    let access = log
        .lines()
        .find(|l| {
            l.contains("signet::access")
                && l.contains("/v1/authentications/verify")
                && l.contains("status=409")
        })
        .unwrap_or_else(|| panic!("no access line for the replay in:\n{log}"));
    assert!(access.contains("client:test-rp"), "{access}");
    // Request bodies are never logged.
    for member in ["signature", "clientDataJSON", "authenticatorData"] {
        let value = pending["credential"]["response"][member]
            .as_str()
            .expect("member");
        assert!(!log.contains(value), "{member} appears in the log");
    }
    let out = Command::new(signet_bin())
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(server.data_dir())
        .arg("--profile")
        .arg(server.hsm.profile_path())
        .output()
        .expect("audit verify");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert!(out.status.success(), "{report}");
    assert_eq!(report["intact"], true, "{report}");
}

#[test]
fn a_hundred_concurrent_verifies_of_one_ceremony_succeed_once() {
    let server = SignetServer::start();
    let (mut authenticator, _) = register(&server, "carol");
    let request = assertion_request(&server, &mut authenticator, "carol");
    let client = server.client("rp");
    let url = server.url("/v1/authentications/verify");
    let statuses: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let (client, url, request) = (client.clone(), url.clone(), request.clone());
                scope.spawn(move || {
                    common::server::read(client.post(url).json(&request).send().expect("send"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{statuses:?}");
    for (status, body) in statuses.iter().filter(|(s, _)| *s != 200) {
        assert_problem(*status, body, 409, "ceremony-consumed");
    }
}

#[test]
fn refusals_name_the_field_and_never_500() {
    let server = SignetServer::start();
    let client = server.client("rp");
    let post = |path: &str, body: &str, content_type: &str| {
        let r = client
            .post(server.url(path))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .expect("send");
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        common::server::read(r)
    };
    let (s, b) = post(
        "/v1/registrations/options",
        "{\"user\":",
        "application/json",
    );
    assert_problem(s, &b, 400, "malformed-json");
    let (s, b) = post("/v1/registrations/options", "{}", "text/plain");
    assert_problem(s, &b, 415, "unsupported-media-type");
    let big = format!("{{\"user\":{{\"name\":\"{}\"}}}}", "x".repeat(300 * 1024));
    let (s, b) = post("/v1/registrations/options", &big, "application/json");
    assert_problem(s, &b, 413, "body-too-large");
    let (s, b) = post(
        "/v1/registrations/options",
        r#"{"user":{"name":"a"},"atestation":"none"}"#,
        "application/json",
    );
    assert_problem(s, &b, 400, "invalid-request");
    assert_eq!(b["field"], "atestation");
    let (s, b) = post(
        "/v1/registrations/options",
        r#"{"user":{"name":""}}"#,
        "application/json",
    );
    assert_problem(s, &b, 400, "invalid-request");
    assert_eq!(b["field"], "user.name");
    let (s, b) = post(
        "/v1/registrations/options",
        r#"{"user":{"name":"a"},"action":"wire-transfer"}"#,
        "application/json",
    );
    assert_problem(s, &b, 400, "invalid-request");
    assert_eq!(b["field"], "action");
    let (s, b) = post("/v1/registrations/options", "[1,2]", "application/json");
    assert_problem(s, &b, 400, "invalid-request");
    let (s, b) = post(
        "/v1/authentications/verify",
        r#"{"ceremonyId":"AAAAAAAAAAAAAAAAAAAAAA","credential":{}}"#,
        "application/json",
    );
    assert_problem(s, &b, 400, "credential-missing-member");
    assert_eq!(b["field"], "credential.id");
    let credential = json!({"id": "AAAA", "rawId": "AAAA", "type": "public-key",
        "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA"},
        "clientExtensionResults": {}});
    let (s, b) = post(
        "/v1/authentications/verify",
        &json!({"ceremonyId": "AAAAAAAAAAAAAAAAAAAAAA", "credential": credential}).to_string(),
        "application/json",
    );
    assert_problem(s, &b, 404, "ceremony-not-found");
    let (s, b) = post(
        "/v1/authentications/verify",
        &json!({"ceremonyId": "short", "credential": credential}).to_string(),
        "application/json",
    );
    assert_problem(s, &b, 400, "invalid-request");
    assert_eq!(b["field"], "ceremonyId");

    // A registration ceremony sent to authentication is spent, not reusable.
    let (_, options) = server.post(
        "rp",
        "/v1/registrations/options",
        &json!({"user": {"name": "dave"}}),
    );
    let (s, b) = post(
        "/v1/authentications/verify",
        &json!({"ceremonyId": options["ceremonyId"], "credential": credential}).to_string(),
        "application/json",
    );
    assert_problem(s, &b, 400, "ceremony-kind");

    // A bad signature is refused and audited as refused.
    let (mut authenticator, _) = register(&server, "erin");
    let mut request = assertion_request(&server, &mut authenticator, "erin");
    request["credential"]["response"]["signature"] = json!(b64url(&[0x30, 0x06, 2, 1, 1, 2, 1, 1]));
    let (s, b) = server.post("rp", "/v1/authentications/verify", &request);
    assert_problem(s, &b, 400, "credential-bad-signature");
    assert_eq!(b["field"], "credential.response.signature");

    let r = client.get(server.url("/v1/nothing")).send().expect("send");
    let (s, b) = common::server::read(r);
    assert_problem(s, &b, 404, "no-such-route");
    let r = client
        .get(server.url("/v1/registrations/options"))
        .send()
        .expect("send");
    let (s, b) = common::server::read(r);
    assert_problem(s, &b, 405, "method-not-allowed");

    let (s, page) = server.get("auditor", "/v1/audit");
    assert_eq!(s, 200);
    let refused = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"]["event"] == "authentication.refused")
        .count();
    // The ceremony of the wrong kind and the bad signature; a ceremony that
    // does not exist changed nothing and is not audited.
    assert_eq!(refused, 2, "{page}");
}

#[test]
fn every_route_refuses_the_wrong_role() {
    let server = SignetServer::start();
    let routes: [(&str, &str, &[&str]); 10] = [
        ("GET", "/v1/events", &["rp"]),
        ("POST", "/v1/registrations/options", &["rp"]),
        ("POST", "/v1/registrations/verify", &["rp"]),
        ("POST", "/v1/authentications/options", &["rp"]),
        ("POST", "/v1/authentications/verify", &["rp"]),
        ("GET", "/v1/users/AAAA/credentials", &["rp"]),
        ("GET", "/v1/keys", &["rp", "officer", "auditor"]),
        ("GET", "/v1/audit", &["auditor"]),
        ("GET", "/readyz", &["monitor"]),
        ("GET", "/metrics", &["monitor"]),
    ];
    for name in ["rp", "officer", "auditor", "monitor", "stranger"] {
        let client = server.client(name);
        for (method, path, allowed) in routes {
            let request = match method {
                "POST" => client.post(server.url(path)).json(&json!({})),
                _ => client.get(server.url(path)),
            };
            let (status, body) = common::server::read(request.send().expect("send"));
            if allowed.contains(&name) {
                assert_ne!(status, 403, "{name} {method} {path}: {body}");
            } else {
                assert_problem(status, &body, 403, "forbidden");
            }
        }
    }
}

#[test]
fn connections_without_an_acceptable_certificate_are_refused() {
    let server = SignetServer::start();
    for (what, client) in [
        ("no certificate", server.client_without_cert()),
        ("another CA", server.client("foreign")),
        ("revoked", server.client("revoked")),
        ("expired", server.client("expired")),
    ] {
        let result = client.get(server.url("/healthz")).send();
        assert!(
            result.is_err(),
            "{what}: got {:?}",
            result.map(|r| r.status())
        );
    }
    // Plaintext HTTP on the TLS port gets no HTTP answer.
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/"),
        "plaintext answered: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // The server is still healthy afterwards.
    let (status, _) = server.get("monitor", "/healthz");
    assert_eq!(status, 200);
}

#[test]
fn metrics_and_readiness() {
    let server = SignetServer::start();
    register(&server, "frank");
    let (status, ready) = server.get("monitor", "/readyz");
    assert_eq!(status, 200);
    assert_eq!(
        ready,
        json!({"status": "ready", "store": "ok", "keys": "ok"})
    );
    // Made-up methods are counted, but under one label: a label value lives
    // as long as the process, so a client inventing methods must not grow it.
    for n in 0..5 {
        let method = reqwest::Method::from_bytes(format!("BREW{n}").as_bytes()).expect("method");
        let r = server
            .client("rp")
            .request(method, server.url("/v1/keys"))
            .send()
            .expect("send");
        assert_eq!(r.status(), 405);
    }
    let text = server
        .client("monitor")
        .get(server.url("/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        text.contains(r#"signet_http_requests_total{method="POST",route="/v1/registrations/verify",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("signet_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"signet_http_requests_total{method="other",route="/v1/keys",status="405"} 5"#
        ),
        "{text}"
    );
    assert!(!text.contains("BREW"), "{text}");
    assert!(
        text.contains(r#"signet_key_operation_duration_seconds_count{op="ping"}"#),
        "{text}"
    );
}

#[test]
fn per_client_rate_limit_answers_429() {
    let server = SignetServer::start_with("[limits]\nrate_per_second = 1\nburst = 5\n");
    // The harness's readiness probe used the monitor's bucket; rp's is full.
    let client = server.client("rp");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = client.get(server.url("/v1/keys")).send().expect("send");
        let retry = r.headers().get("retry-after").is_some();
        let (status, body) = common::server::read(r);
        if status == 429 {
            assert!(retry, "429 without Retry-After");
            assert_problem(status, &body, 429, "rate-limited");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    // Another client is not affected.
    let (status, _) = server.get("auditor", "/v1/keys");
    assert_eq!(status, 200);
}

#[test]
fn config_check_validates_and_names_the_key() {
    let server = SignetServer::start();
    let out = Command::new(signet_bin())
        .args(["serve", "--check", "--config"])
        .arg(&server.config)
        .env("SIGNET_RP_ID", "bank.example")
        .env(
            "SIGNET_RP_ORIGINS",
            "https://bank.example, https://m.bank.example",
        )
        .env("SIGNET_LISTEN", "127.0.0.1:9")
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("bank.example (https://bank.example, https://m.bank.example)"),
        "{stdout}"
    );
    assert!(stdout.contains("https://127.0.0.1:9"), "{stdout}");
    assert!(
        stdout.contains("token ttl 900 s, enrollment window 2592000 s, 4 key attestation roots"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&server.config).expect("config");
    for (edit, key) in [
        (
            text.replace("key = \"pki/server.key\"", "key = \"pki/rp.key\""),
            "tls.key",
        ),
        (
            text.replace("cert = \"pki/server.pem\"", "cert = \"pki/missing.pem\""),
            "tls.cert",
        ),
        (
            text.replace("role = \"auditor\"", "role = \"root\""),
            "clients[2].role",
        ),
        (
            text.replace(
                "origins = [\"https://localhost\"]",
                "origins = [\"https://evil.example\"]",
            ),
            "rp.origins[0]",
        ),
        (format!("{text}\n[server2]\n"), "unknown field"),
        (
            format!("{text}\n[policy]\nfile = \"missing-policy.toml\"\n"),
            "policy.file",
        ),
        (
            format!("{text}\n[mds]\nurl = \"https://mds.example\"\nroot = \"pki/ca.key\"\n"),
            "mds.root",
        ),
        (
            format!("{text}\n[devices]\nkey_attestation_roots = [\"pki/ca.key\"]\n"),
            "devices.key_attestation_roots[0]",
        ),
        (
            format!("{text}\n[devices]\ntoken_ttl_s = 5\n"),
            "devices.token_ttl_s",
        ),
    ] {
        let path = server.dir.path().join("bad.toml");
        std::fs::write(&path, edit).expect("write");
        let out = Command::new(signet_bin())
            .args(["serve", "--check", "--config"])
            .arg(&path)
            .output()
            .expect("check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {stderr}");
        assert!(stderr.contains(key), "expected {key} in: {stderr}");
    }
}
