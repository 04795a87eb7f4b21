//! The trust policy on a real `signet serve`: officers read, replace and
//! simulate it over the API; the file is reloaded on change and on SIGHUP;
//! actions shape the options and the verify answers allow, step up or deny,
//! recording the decision and the policy version; `signet policy simulate`
//! agrees with the API. Every change lands in the audit log.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signet::testkit::SoftAuthenticator;
use signet::webauthn::CoseAlgorithm;

use common::ceremony::{authenticate, register};
use common::server::{SignetServer, signet_bin};

const PROBLEM: &str = "urn:signet:problem:";

/// The built-in policy under another version, plus `extra` TOML.
fn policy(version: &str, extra: &str) -> String {
    let builtin = signet::policy::tiers::BUILTIN;
    let start = builtin.find("version = ").expect("version line");
    let end = start + builtin[start..].find('\n').expect("end of line");
    format!(
        "{}version = \"{version}\"{}\n{extra}",
        &builtin[..start],
        &builtin[end..]
    )
}

fn sha256(text: &str) -> String {
    signet::audit::hex(&signet::keys::sha256(text.as_bytes()))
}

/// A server whose `[policy] file` holds `text`, checked every `reload_s`.
fn start(text: &str, reload_s: u64) -> (SignetServer, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, text).expect("write policy");
    let server = SignetServer::start_with(&format!(
        "[policy]\nfile = \"{}\"\nreload_interval_s = {reload_s}\n",
        file.display()
    ));
    (server, dir, file)
}

fn assert_problem(status: u16, body: &Value, want: u16, slug: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["type"], format!("{PROBLEM}{slug}"), "{body}");
}

fn audit_events(server: &SignetServer, kind: &str) -> Vec<Value> {
    let (status, page) = server.get("auditor", "/v1/audit?limit=1000");
    assert_eq!(status, 200, "{page}");
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["event"].clone())
        .filter(|e| e["event"] == kind)
        .collect()
}

fn wait_for_version(server: &SignetServer, version: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (_, p) = server.get("officer", "/v1/policy");
        if p["version"] == version {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "policy {version} not in force after {limit:?}: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn officers_read_and_replace_the_policy_and_every_change_is_audited() {
    let p0 = policy("p0", "");
    let (mut server, _dir, file) = start(&p0, 3600);

    let (status, got) = server.get("officer", "/v1/policy");
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["version"], "p0");
    assert_eq!(got["sha256"], sha256(&p0));
    assert_eq!(got["text"], p0);
    assert_eq!(got["replaceable"], true);
    assert_eq!(got["source"]["file"], file.display().to_string());
    assert_eq!(got["actions"], json!(["default"]));
    let (status, _) = server.get("auditor", "/v1/policy");
    assert_eq!(status, 200);
    for role in ["rp", "monitor"] {
        let (status, body) = server.get(role, "/v1/policy");
        assert_problem(status, &body, 403, "forbidden");
    }
    let p1 = policy("p1", "[actions.login]\nmin_tier = 3\n");
    for role in ["auditor", "rp"] {
        let (status, body) = server.put(
            role,
            "/v1/policy",
            &json!({ "policy": p1, "replaces": sha256(&p0) }),
        );
        assert_problem(status, &body, 403, "forbidden");
    }

    // Refusals name the member, and a bad file names its line.
    let (status, body) = server.put("officer", "/v1/policy", &json!({ "policy": p1 }));
    assert_problem(status, &body, 400, "invalid-request");
    assert_eq!(body["field"], "replaces");
    let (status, body) = server.put(
        "officer",
        "/v1/policy",
        &json!({ "policy": "version = \"x\"\n\n[actions.pay]\nmin_tier = 9\n", "replaces": sha256(&p0) }),
    );
    assert_problem(status, &body, 400, "invalid-request");
    assert_eq!(body["field"], "policy");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("line 4")),
        "{body}"
    );
    let (status, body) = server.put(
        "officer",
        "/v1/policy",
        &json!({ "policy": p1, "replaces": sha256("something else") }),
    );
    assert_problem(status, &body, 409, "conflict");
    assert_eq!(body["field"], "replaces");
    let (status, body) = server.put(
        "officer",
        "/v1/policy",
        &json!({ "policy": p1, "replaces": sha256(&p0), "force": true }),
    );
    assert_problem(status, &body, 400, "invalid-request");
    assert_eq!(body["field"], "force");
    // Nothing above changed the file or the policy in force.
    assert_eq!(std::fs::read_to_string(&file).expect("file"), p0);
    assert!(audit_events(&server, "policy.changed").is_empty());

    let (status, body) = server.put(
        "officer",
        "/v1/policy",
        &json!({ "policy": p1, "replaces": sha256(&p0) }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["version"], "p1");
    assert_eq!(body["previous"]["sha256"], sha256(&p0));
    assert_eq!(std::fs::read_to_string(&file).expect("file"), p1);
    let (_, got) = server.get("auditor", "/v1/policy");
    assert_eq!(got["version"], "p1");
    assert_eq!(got["actions"], json!(["default", "login"]));
    // The same text again changes nothing and is not audited.
    let (status, body) = server.put(
        "officer",
        "/v1/policy",
        &json!({ "policy": p1, "replaces": sha256(&p1) }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], false);

    let changes = audit_events(&server, "policy.changed");
    assert_eq!(changes.len(), 1, "{changes:?}");
    let detail = &changes[0]["detail"];
    assert_eq!(detail["via"], "api");
    assert_eq!(detail["from"]["sha256"], sha256(&p0));
    assert_eq!(detail["to"]["sha256"], sha256(&p1));
    assert_eq!(detail["to"]["version"], "p1");
    assert!(
        changes[0]["actor"]
            .as_str()
            .is_some_and(|a| a.contains("officer")),
        "{changes:?}"
    );

    // The replacement is the file: it survives a restart.
    server.restart();
    let (_, got) = server.get("officer", "/v1/policy");
    assert_eq!(got["version"], "p1");
}

#[test]
fn the_built_in_policy_cannot_be_replaced_over_the_api() {
    let server = SignetServer::start();
    let (status, got) = server.get("officer", "/v1/policy");
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["source"], "builtin");
    assert_eq!(got["replaceable"], false);
    let (status, body) = server.put(
        "officer",
        "/v1/policy",
        &json!({ "policy": policy("p1", ""), "replaces": got["sha256"] }),
    );
    assert_problem(status, &body, 409, "conflict");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("[policy] file")),
        "{body}"
    );
}

#[test]
fn the_policy_file_is_reloaded_when_it_changes() {
    let (server, _dir, file) = start(&policy("p0", ""), 1);
    let p1 = policy("p1", "[actions.login]\nmin_tier = 2\n");
    std::fs::write(&file, &p1).expect("write");
    let took = wait_for_version(&server, "p1", Duration::from_secs(10));
    eprintln!("file change in force after {took:?}");
    let changes = audit_events(&server, "policy.changed");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["detail"]["via"], "file");
    assert_eq!(changes[0]["detail"]["to"]["sha256"], sha256(&p1));

    // A broken file leaves the policy in force, and is audited once.
    std::fs::write(
        &file,
        "version = \"p2\"\n[tier1]\nmin_certification = \"L9\"\n",
    )
    .expect("write");
    std::thread::sleep(Duration::from_secs(4));
    let (_, got) = server.get("officer", "/v1/policy");
    assert_eq!(got["version"], "p1");
    let failures = audit_events(&server, "policy.reload_failed");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0]["detail"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("line 3") && e.contains("L9")),
        "{failures:?}"
    );
    assert_eq!(failures[0]["detail"]["inForce"], sha256(&p1));
    // Fixed: in force again.
    let p3 = policy("p3", "");
    std::fs::write(&file, &p3).expect("write");
    wait_for_version(&server, "p3", Duration::from_secs(10));
}

#[test]
fn sighup_reloads_the_policy_file_at_once() {
    let (server, _dir, file) = start(&policy("p0", ""), 3600);
    std::fs::write(&file, policy("p1", "")).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    let (_, got) = server.get("officer", "/v1/policy");
    assert_eq!(got["version"], "p0", "no reload before the signal");
    server.signal("HUP");
    let took = wait_for_version(&server, "p1", Duration::from_secs(5));
    eprintln!("SIGHUP reload in force after {took:?}");
    let changes = audit_events(&server, "policy.changed");
    assert_eq!(changes[0]["detail"]["via"], "sighup", "{changes:?}");
    // And the process is still serving: SIGHUP never stops signet.
    let (status, _) = server.get("monitor", "/healthz");
    assert_eq!(status, 200);
}

#[test]
fn sighup_without_a_policy_file_does_not_stop_the_service() {
    let server = SignetServer::start();
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = server.get("monitor", "/healthz");
    assert_eq!(status, 200);
}

// ---- actions ----

const ACTIONS: &str = r#"
[actions.enroll]
attestation = "direct"
resident_key = "required"
user_verification = "required"
attachment = "cross-platform"

[actions.strict-enroll]
min_tier = 2

[actions.login]
min_tier = 4

[actions.payee-change]
min_tier = 2
user_verification = "required"

[actions.payment]
min_tier = 4
[[actions.payment.thresholds]]
currency = "EUR"
at_least = "1000.00"
min_tier = 3
"#;

#[test]
fn actions_shape_the_options_and_verification_allows_steps_up_or_denies() {
    let text = policy("acts-1", ACTIONS);
    let (server, _dir, _file) = start(&text, 3600);

    // Registration options follow the action; a request raises, never lowers.
    let (status, o) = server.post(
        "rp",
        "/v1/registrations/options",
        &json!({ "user": { "name": "shape" }, "action": "enroll", "attestation": "none",
                 "authenticatorSelection": { "residentKey": "discouraged", "userVerification": "discouraged" } }),
    );
    assert_eq!(status, 200, "{o}");
    let pk = &o["publicKey"];
    assert_eq!(pk["attestation"], "direct");
    assert_eq!(pk["authenticatorSelection"]["residentKey"], "required");
    assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
    assert_eq!(
        pk["authenticatorSelection"]["authenticatorAttachment"],
        "cross-platform"
    );
    let (status, body) = server.post(
        "rp",
        "/v1/registrations/options",
        &json!({ "user": { "name": "shape" }, "action": "enroll",
                 "authenticatorSelection": { "authenticatorAttachment": "platform" } }),
    );
    assert_problem(status, &body, 400, "invalid-request");
    assert_eq!(
        body["field"],
        "authenticatorSelection.authenticatorAttachment"
    );
    // An action that pins nothing lets the request choose, as before.
    let (status, o) = server.post(
        "rp",
        "/v1/registrations/options",
        &json!({ "user": { "name": "shape" }, "attestation": "indirect",
                 "authenticatorSelection": { "residentKey": "discouraged" } }),
    );
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["publicKey"]["attestation"], "indirect");
    assert_eq!(
        o["publicKey"]["authenticatorSelection"]["residentKey"],
        "discouraged"
    );
    for path in ["/v1/registrations/options", "/v1/authentications/options"] {
        let (status, body) = server.post(
            "rp",
            path,
            &json!({ "user": { "name": "shape" }, "action": "transfer-all" }),
        );
        assert_problem(status, &body, 400, "invalid-request");
        assert_eq!(body["field"], "action");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("payee-change")),
            "the refusal lists the actions: {body}"
        );
    }

    // An unattested, unknown model: tier 4, accepted marked by default,
    // refused by an action that needs tier 2.
    let (status, reg, mut auth) = register(
        &server,
        &json!({ "user": { "name": "alice" } }),
        SoftAuthenticator::new(CoseAlgorithm::Es256),
    );
    assert_eq!(status, 200, "{reg}");
    assert_eq!(reg["tier"], 4);
    assert_eq!(reg["decision"], "accept-marked");
    assert_eq!(reg["policyVersion"], "acts-1");
    let (status, body, _) = register(
        &server,
        &json!({ "user": { "name": "bob" }, "action": "strict-enroll" }),
        SoftAuthenticator::new(CoseAlgorithm::Es256),
    );
    assert_problem(status, &body, 400, "credential-policy");
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("tier 4") && detail.contains("strict-enroll"),
        "{body}"
    );

    // Login allows tier 4, and says so.
    let (status, o) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": "alice" }, "action": "login" }),
    );
    assert_eq!(status, 200, "{o}");
    let (status, ok) = authenticate(&server, &o, &mut auth);
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["decision"], "allow");
    assert_eq!(ok["tier"], 4);
    assert_eq!(ok["action"], "login");
    assert_eq!(ok["policyVersion"], "acts-1");
    assert_eq!(ok["requirement"]["minTier"], 4);

    // A payee change needs tier 2: with the user named, the options already
    // answer step-up, and the browser is never asked.
    let (status, body) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": "alice" }, "action": "payee-change" }),
    );
    assert_problem(status, &body, 403, "step-up-required");
    assert_eq!(body["tiers"], json!([1, 2]));
    assert_eq!(body["tier"], 4);
    assert_eq!(body["action"], "payee-change");
    assert_eq!(body["userVerification"], "required");
    assert_eq!(body["policyVersion"], "acts-1");
    assert_eq!(body["userId"], reg["userId"]);
    assert!(body.get("credentialId").is_none(), "{body}");

    // Discoverable: the assertion verifies, the counter moves, and the
    // answer is step-up naming who answered.
    let (status, o) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "action": "payee-change" }),
    );
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["publicKey"]["userVerification"], "required");
    let (status, body) = authenticate(&server, &o, &mut auth);
    assert_problem(status, &body, 403, "step-up-required");
    assert_eq!(body["credentialId"], reg["credentialId"]);
    assert_eq!(body["userId"], reg["userId"]);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("tier 4")),
        "{body}"
    );
    let step_ups = audit_events(&server, "authentication.step_up_required");
    assert_eq!(step_ups.len(), 1, "{step_ups:?}");
    assert_eq!(step_ups[0]["detail"]["stepUp"]["policyVersion"], "acts-1");
    // The ceremony is spent like any other.
    let (status, body) = authenticate(&server, &o, &mut auth);
    assert_problem(status, &body, 409, "ceremony-consumed");

    // Payments: the threshold decides.
    let pay = |value: &str, currency: &str| {
        server.post(
            "rp",
            "/v1/authentications/options",
            &json!({ "user": { "name": "alice" }, "action": "payment",
                     "amount": { "value": value, "currency": currency } }),
        )
    };
    let (status, o) = pay("999.99", "EUR");
    assert_eq!(status, 200, "{o}");
    let (status, ok) = authenticate(&server, &o, &mut auth);
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["requirement"]["minTier"], 4);
    let (status, body) = pay("1000.00", "EUR");
    assert_problem(status, &body, 403, "step-up-required");
    assert_eq!(body["tiers"], json!([1, 2, 3]));
    assert_eq!(body["threshold"], "at least 1000.00 EUR");
    // A currency the thresholds do not name is treated as the largest amount.
    let (status, body) = pay("1", "USD");
    assert_problem(status, &body, 403, "step-up-required");
    assert!(
        body["threshold"]
            .as_str()
            .is_some_and(|t| t.contains("USD")),
        "{body}"
    );
    for (amount, field) in [
        (json!({ "value": "1e3", "currency": "EUR" }), "amount.value"),
        (json!({ "value": "-5", "currency": "EUR" }), "amount.value"),
        (json!({ "value": 5, "currency": "EUR" }), "amount.value"),
        (
            json!({ "value": "5", "currency": "eur" }),
            "amount.currency",
        ),
        (json!({ "currency": "EUR" }), "amount.value"),
        (
            json!({ "value": "5", "currency": "EUR", "fx": 1 }),
            "amount.fx",
        ),
        (json!("5 EUR"), "amount"),
    ] {
        let (status, body) = server.post(
            "rp",
            "/v1/authentications/options",
            &json!({ "user": { "name": "alice" }, "action": "payment", "amount": amount }),
        );
        assert_problem(status, &body, 400, "invalid-request");
        assert_eq!(body["field"], field, "{amount}");
    }

    // The officer denies the model: its credentials are refused outright.
    let (_, got) = server.get("officer", "/v1/policy");
    let denied = policy(
        "acts-2",
        &format!(
            "{ACTIONS}\n[[aaguid]]\naaguid = \"{}\"\ndeny = true\n",
            reg["aaguid"].as_str().expect("aaguid")
        ),
    );
    let (status, body) = server.put(
        "officer",
        "/v1/policy",
        &json!({ "policy": denied, "replaces": got["sha256"] }),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": "alice" }, "action": "login" }),
    );
    assert_problem(status, &body, 404, "not-found");
    let (_, o) = server.post("rp", "/v1/authentications/options", &json!({}));
    let (status, body) = authenticate(&server, &o, &mut auth);
    assert_problem(status, &body, 403, "credential-denied");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("denied by policy")),
        "{body}"
    );
}

// ---- simulation ----

#[test]
fn simulation_over_the_api_and_the_cli_agree() {
    let current = policy("sim-0", "");
    let (mut server, dir, _file) = start(&current, 3600);
    for name in ["ann", "ben", "cat"] {
        let (status, body, _) = register(
            &server,
            &json!({ "user": { "name": name } }),
            SoftAuthenticator::new(CoseAlgorithm::Es256),
        );
        assert_eq!(status, 200, "{body}");
    }
    let candidate = policy("sim-1", "[actions.login]\nmin_tier = 3\n")
        .replace("tier4 = \"accept-marked\"", "tier4 = \"reject\"");
    assert_ne!(
        candidate,
        policy("sim-1", "[actions.login]\nmin_tier = 3\n")
    );

    let (status, body) = server.post(
        "auditor",
        "/v1/policy/simulation",
        &json!({ "policy": candidate }),
    );
    assert_problem(status, &body, 403, "forbidden");
    let (status, body) = server.post(
        "officer",
        "/v1/policy/simulation",
        &json!({ "policy": "version = \"x\"\nnonsense = 1\n" }),
    );
    assert_problem(status, &body, 400, "invalid-request");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("line 2")),
        "{body}"
    );

    let (status, report) = server.post(
        "officer",
        "/v1/policy/simulation",
        &json!({ "policy": candidate }),
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["current"]["version"], "sim-0");
    assert_eq!(report["candidate"]["version"], "sim-1");
    assert_eq!(report["credentials"], 3);
    assert_eq!(report["changed"], 3);
    assert_eq!(report["tierChanges"], json!({}));
    assert_eq!(report["decisionChanges"]["default: allow -> deny"], 3);
    assert_eq!(report["decisionChanges"]["login: undefined -> deny"], 3);
    assert_eq!(report["actions"]["added"], json!(["login"]));
    let listed = report["listed"].as_array().expect("listed");
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["registration"]["from"], "accept-marked");
    assert_eq!(listed[0]["registration"]["to"], "reject");
    // Simulating changes nothing.
    let (_, got) = server.get("officer", "/v1/policy");
    assert_eq!(got["version"], "sim-0");

    // The same answer from the CLI, with the service stopped.
    let (stopped, log) = server.stop();
    assert!(stopped.success(), "{log}");
    let cand_file = dir.path().join("candidate.toml");
    std::fs::write(&cand_file, &candidate).expect("write");
    let config = server.dir().join("signet.toml");
    let out = Command::new(signet_bin())
        .args(["policy", "simulate"])
        .arg(&cand_file)
        .arg("--config")
        .arg(&config)
        .arg("--json")
        .output()
        .expect("policy simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for key in [
        "current",
        "candidate",
        "credentials",
        "changed",
        "tierChanges",
        "decisionChanges",
        "actions",
        "listed",
    ] {
        assert_eq!(cli[key], report[key], "{key}");
    }
    let out = Command::new(signet_bin())
        .args(["policy", "simulate"])
        .arg(&cand_file)
        .arg("--data-dir")
        .arg(server.data_dir())
        .args(["--limit", "1"])
        .output()
        .expect("policy simulate");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without --config or --current, the comparison is with the built-in policy.
    assert!(
        text.contains("against the policy in force builtin-"),
        "{text}"
    );
    assert!(text.contains("changed      3"), "{text}");
    assert!(text.contains("raise --limit"), "{text}");
    let out = Command::new(signet_bin())
        .args(["policy", "simulate"])
        .arg(&cand_file)
        .arg("--data-dir")
        .arg(Path::new("/nonexistent/signet"))
        .output()
        .expect("policy simulate");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no signet store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
