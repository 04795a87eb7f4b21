//! One-time things under contention, through the network: 1000 concurrent
//! attempts to consume one authentication challenge, one registration
//! token, one transaction, and one pairing (its one-time code, and the
//! login it hands the desktop) against one real `signet serve`, whose rate
//! and concurrency limits are raised so that every attempt reaches the
//! flow. Each must end with exactly one success, every other attempt
//! refused with the problem that says "already used" (no 5xx, no timeout,
//! no other refusal), and the store saying the same: the counter advanced
//! once, one approval with the winner's receipt, one binding, one
//! consumption, each audited once.
//!
//! The attempts are distinct where a real client's would be: 1000
//! assertions with rising counters, 1000 passkeys each in its own sealed
//! request. They leave from one tokio runtime over keep-alive connections
//! opened beforehand, released together by a barrier; each line printed
//! says how many were in flight at once.

#![cfg(feature = "testkit")]

mod common;

use std::time::Instant;

use serde_json::{Value, json};
use signet::testkit::device::SoftDevice;

use common::load::{
    self, Api, DESKTOP, PHONE, Pinned, Request, assertion, open_token, seal_registration,
};
use common::race::race;
use common::server::SignetServer;

/// Attempts per one-time thing.
const ATTEMPTS: usize = 1000;

/// Limits far above the attempts, so none is refused before its flow.
const LIMITS: &str =
    "[limits]\nrate_per_second = 1000000\nburst = 10000000\nmax_in_flight = 100000\n";

/// The audit entries whose event is `event` about `subject`.
fn audited(entries: &[Value], event: &str, subject: &str) -> usize {
    entries
        .iter()
        .filter(|e| e["event"]["event"] == event && e["event"]["subject"] == subject)
        .count()
}

/// The passkey's stored counter, as `GET /v1/users/{id}/credentials` lists it.
fn stored_count(api: &Api, user_id: &str, credential_id: &str) -> u64 {
    let (status, list) = api
        .get(&format!("/v1/users/{user_id}/credentials"))
        .expect("list");
    assert_eq!(status, 200, "{list}");
    list["credentials"]
        .as_array()
        .expect("credentials")
        .iter()
        .find(|c| c["credentialId"] == credential_id)
        .and_then(|c| c["signCount"].as_u64())
        .unwrap_or_else(|| panic!("{credential_id} not listed: {list}"))
}

#[test]
fn a_thousand_concurrent_attempts_consume_each_one_time_thing_once() {
    // The connection limit is in [server], which the fixture writes
    // itself: start, add it, start again.
    let mut server = SignetServer::start_with(LIMITS);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let text = std::fs::read_to_string(&server.config).expect("config");
    std::fs::write(
        &server.config,
        text.replacen("[server]\n", "[server]\nmax_connections = 100000\n", 1),
    )
    .expect("config");
    server.spawn();

    let api = Api::new(&server, "rp");
    let auditor = Api::new(&server, "auditor");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    let mut judge = |line: Result<String, String>, failures: &mut Vec<String>| match line {
        Ok(l) => lines.push(l),
        Err(e) => failures.push(e),
    };

    // One passkey, registered over the API.
    let (mut auth, registered) = load::register(&api, &api, "racer");
    let user_id = registered["userId"].as_str().expect("userId").to_string();
    let cred_id = registered["credentialId"]
        .as_str()
        .expect("credentialId")
        .to_string();
    let warm = format!("/v1/users/{user_id}/credentials");

    // 1. One challenge: an authentication ceremony answered by 1000
    // assertions, each with a higher counter than the last.
    let options = api.expect(
        "/v1/authentications/options",
        &json!({"user": {"name": "racer"}}),
        200,
    );
    let ceremony = options["ceremonyId"].as_str().expect("ceremonyId");
    let first = u64::from(auth.sign_count);
    let requests: Vec<Request> = (0..ATTEMPTS)
        .map(|_| {
            Request::post(
                "/v1/authentications/verify",
                json!({"ceremonyId": ceremony, "credential": assertion(&mut auth, &options["publicKey"])}),
            )
        })
        .collect();
    let r = race(&rt, &[&server], &warm, requests);
    let verdict = r.judge(
        "challenge (authentication ceremony)",
        "verified",
        "ceremony-consumed",
    );
    if let Some((i, won)) = r.winner() {
        // Rising counters in order: attempt i carried first + i + 1.
        let want = first + i as u64 + 1;
        assert_eq!(won["signCount"], want, "{won}");
        assert_eq!(
            stored_count(&api, &user_id, &cred_id),
            want,
            "the counter is the winner's"
        );
    }
    judge(verdict, &mut failures);

    // 2. One registration token: 1000 sealed requests, each with its own
    // passkey, all for the token of one verified device.
    let pinned = Pinned::fetch(&api);
    let dev = SoftDevice::generate();
    let enrolled = api.expect(
        "/v1/devices",
        &dev.enrollment("racer-device", json!({"os": "android"})),
        201,
    );
    let device_id = enrolled["deviceId"].as_str().expect("deviceId").to_string();
    let device = format!("/v1/devices/{device_id}");
    let token = api.expect(
        &format!("{device}/verification"),
        &json!({"outcome": "verified"}),
        200,
    );
    let opened = open_token(&dev, &device_id, &token, &pinned);
    let prepared = Instant::now();
    // The device's half is pure-Rust P-256, slow in a debug build: two
    // threads share the work.
    let requests: Vec<Request> = std::thread::scope(|scope| {
        let halves: Vec<_> = [ATTEMPTS / 2, ATTEMPTS - ATTEMPTS / 2]
            .into_iter()
            .map(|count| {
                let (dev, opened, token, pinned, device) =
                    (&dev, &opened, &token, &pinned, &device);
                scope.spawn(move || {
                    (0..count)
                        .map(|_| {
                            let (body, _) = seal_registration(dev, opened, token, pinned);
                            Request::post(format!("{device}/registration"), body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves
            .into_iter()
            .flat_map(|h| h.join().expect("sealing thread"))
            .collect()
    });
    eprintln!(
        "concurrency: {ATTEMPTS} sealed requests prepared in {:.2} s",
        prepared.elapsed().as_secs_f64()
    );
    let r = race(&rt, &[&server], &warm, requests);
    judge(
        r.judge("registration token", "bound", "token-consumed"),
        &mut failures,
    );
    let (_, shown) = api.get(&device).expect("GET device");
    assert_eq!(shown["state"], "bound", "{shown}");
    let creds = shown["credentials"].as_array().expect("credentials");
    assert_eq!(creds.len(), 1, "bound once: {shown}");
    let device_user = r.winner().map(|(_, won)| {
        assert_eq!(creds[0], won["credentialId"], "{shown}");
        won["userId"].as_str().expect("userId").to_string()
    });
    if let Some(uid) = &device_user {
        let (_, list) = api
            .get(&format!("/v1/users/{uid}/credentials"))
            .expect("list");
        assert_eq!(
            list["credentials"].as_array().map(Vec::len),
            Some(1),
            "one credential stored for the device's user: {list}"
        );
    }

    // 3. One transaction: 1000 assertions over its challenge.
    let first = u64::from(auth.sign_count);
    let tx = api.expect(
        "/v1/transactions",
        &load::payment("racer", "250.00", "RACE-1"),
        201,
    );
    let tx_id = tx["transactionId"].as_str().expect("transactionId");
    let requests: Vec<Request> = (0..ATTEMPTS)
        .map(|_| {
            Request::post(
                format!("/v1/transactions/{tx_id}/approval"),
                json!({"credential": assertion(&mut auth, &tx["publicKey"])}),
            )
        })
        .collect();
    let r = race(&rt, &[&server], &warm, requests);
    let verdict = r.judge("transaction approval", "approved", "transaction-approved");
    let (_, shown) = api
        .get(&format!("/v1/transactions/{tx_id}"))
        .expect("GET transaction");
    assert_eq!(shown["state"], "approved", "{shown}");
    if let Some((i, won)) = r.winner() {
        let want = first + i as u64 + 1;
        assert_eq!(won["signCount"], want, "{won}");
        assert_eq!(stored_count(&api, &user_id, &cred_id), want);
        let (status, receipt) = api
            .get(&format!("/v1/transactions/{tx_id}/receipt"))
            .expect("GET receipt");
        assert_eq!(status, 200, "{receipt}");
        assert_eq!(receipt["receipt"], won["receipt"], "the winner's receipt");
    }
    judge(verdict, &mut failures);

    // 3b. Another transaction, its one answer sent 1000 times at once (a
    // replay storm rather than 1000 answers).
    let tx = api.expect(
        "/v1/transactions",
        &load::payment("racer", "75.00", "RACE-2"),
        201,
    );
    let tx2_id = tx["transactionId"]
        .as_str()
        .expect("transactionId")
        .to_string();
    let body = json!({"credential": assertion(&mut auth, &tx["publicKey"])});
    let count = u64::from(auth.sign_count);
    let requests: Vec<Request> = (0..ATTEMPTS)
        .map(|_| Request::post(format!("/v1/transactions/{tx2_id}/approval"), body.clone()))
        .collect();
    let r = race(&rt, &[&server], &warm, requests);
    let verdict = r.judge(
        "transaction approval, one answer replayed",
        "approved",
        "transaction-approved",
    );
    let (_, shown) = api
        .get(&format!("/v1/transactions/{tx2_id}"))
        .expect("GET transaction");
    assert_eq!(shown["state"], "approved", "{shown}");
    assert_eq!(stored_count(&api, &user_id, &cred_id), count);
    judge(verdict, &mut failures);

    // 3c. A third, its 1000 answers sent highest counter first, so the
    // answer that wins tends to carry a higher counter than those still
    // being checked when it commits.
    let tx = api.expect(
        "/v1/transactions",
        &load::payment("racer", "12.00", "RACE-3"),
        201,
    );
    let tx3_id = tx["transactionId"]
        .as_str()
        .expect("transactionId")
        .to_string();
    let mut requests: Vec<Request> = (0..ATTEMPTS)
        .map(|_| {
            Request::post(
                format!("/v1/transactions/{tx3_id}/approval"),
                json!({"credential": assertion(&mut auth, &tx["publicKey"])}),
            )
        })
        .collect();
    requests.reverse();
    let r = race(&rt, &[&server], &warm, requests);
    judge(
        r.judge(
            "transaction approval, highest counter first",
            "approved",
            "transaction-approved",
        ),
        &mut failures,
    );
    let (_, shown) = api
        .get(&format!("/v1/transactions/{tx3_id}"))
        .expect("GET transaction");
    assert_eq!(shown["state"], "approved", "{shown}");

    // 4. One pairing: 1000 phones claim it with the code from its QR
    // payload, then (approved by the winner) 1000 desktops take the login.
    let created = api.expect("/v1/pairings", &load::pairing("racer"), 201);
    let pairing_id = created["pairingId"].as_str().expect("pairingId");
    let desktop = created["desktopSecret"].as_str().expect("desktopSecret");
    let code = load::qr_code(&created);
    let pairing = format!("/v1/pairings/{pairing_id}");
    let requests: Vec<Request> = (0..ATTEMPTS)
        .map(|_| Request::post(format!("{pairing}/claim"), json!({"code": code})))
        .collect();
    let r = race(&rt, &[&server], &warm, requests);
    judge(
        r.judge(
            "pairing claim (one-time code)",
            "claimed",
            "pairing-claimed",
        ),
        &mut failures,
    );
    let (claimed, desktop) = match r.winner() {
        Some((_, won)) => (won.clone(), desktop.to_string()),
        None => {
            // Go on with a pairing of its own, so the consume race runs.
            let created = api.expect("/v1/pairings", &load::pairing("racer"), 201);
            let id = created["pairingId"].as_str().expect("pairingId");
            let claimed = api.expect(
                &format!("/v1/pairings/{id}/claim"),
                &json!({"code": load::qr_code(&created)}),
                200,
            );
            let desktop = created["desktopSecret"].as_str().expect("desktopSecret");
            (claimed, desktop.to_string())
        }
    };
    let pairing_id = claimed["pairingId"].as_str().expect("pairingId");
    let pairing = format!("/v1/pairings/{pairing_id}");
    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    // The phone's one answer, sent 1000 times at once.
    let approve = Request::post(
        format!("{pairing}/approve"),
        json!({"credential": assertion(&mut auth, &claimed["publicKey"])}),
    )
    .header(PHONE, phone);
    let count = u64::from(auth.sign_count);
    let r = race(&rt, &[&server], &warm, vec![approve; ATTEMPTS]);
    judge(
        r.judge(
            "pairing approval, one answer replayed",
            "approved",
            "pairing-approved",
        ),
        &mut failures,
    );
    assert_eq!(stored_count(&api, &user_id, &cred_id), count);
    let requests: Vec<Request> = (0..ATTEMPTS)
        .map(|_| Request::empty(format!("{pairing}/consume")).header(DESKTOP, &desktop))
        .collect();
    let r = race(&rt, &[&server], &warm, requests);
    judge(
        r.judge("pairing consume (login)", "consumed", "pairing-consumed"),
        &mut failures,
    );
    let (_, shown) = api
        .get_with(&pairing, &[(DESKTOP, &desktop)])
        .expect("GET pairing");
    assert_eq!(shown["state"], "consumed", "{shown}");

    // The audit log: each success once.
    let entries = load::audit_entries(&auditor);
    let mut once = vec![
        ("authentication.verified", cred_id.clone(), 1),
        ("transaction.approved", tx_id.to_string(), 1),
        ("transaction.approved", tx2_id.clone(), 1),
        ("transaction.approved", tx3_id.clone(), 1),
        ("pairing.approved", pairing_id.to_string(), 1),
        ("device.bound", device_id.clone(), 1),
        ("pairing.claimed", pairing_id.to_string(), 1),
        ("pairing.consumed", pairing_id.to_string(), 1),
    ];
    // The registration token's passkey was registered once, too.
    if let Some(uid) = &device_user {
        let (_, list) = api
            .get(&format!("/v1/users/{uid}/credentials"))
            .expect("list");
        let id = list["credentials"][0]["credentialId"]
            .as_str()
            .expect("id")
            .to_string();
        once.push(("credential.registered", id, 1));
    }
    for (event, subject, want) in &once {
        let got = audited(&entries, event, subject);
        if got != *want {
            failures.push(format!("audit: {got} x {event} for {subject}, want {want}"));
        }
    }
    let refusals = entries
        .iter()
        .filter(|e| {
            e["event"]["event"]
                .as_str()
                .is_some_and(|ev| ev.ends_with("refused"))
        })
        .count();
    eprintln!(
        "concurrency: audit log: {} entries, {refusals} refusals",
        entries.len()
    );

    for l in &lines {
        println!("{l}");
    }
    let (status, log) = server.stop();
    assert!(status.success(), "signet exited with {status}: {log}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
