//! Two signet instances on one PostgreSQL database, as a load balancer
//! would use them: each with its own listener, PKI and data directory, both
//! signing with the same keys (one SoftHSM token, as an HSM cluster would
//! serve them) and keeping state only in the database. A client that
//! alternates between them must not be able to tell:
//!
//! - a ceremony, a transaction or a device binding started on one instance
//!   finishes on the other, and a replay on either is refused;
//! - 1000 concurrent attempts on one challenge and on one transaction,
//!   spread over both instances, give exactly one success;
//! - one instance killed with SIGKILL under load: the other carries on,
//!   every acknowledged write is there, and the audit chain is one chain.

#![cfg(feature = "testkit")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signet::testkit::{Attestation, browser};

use common::load::{self, Api, Request, assertion, slug};
use common::postgres::TestDb;
use common::race::race;
use common::server::{ORIGIN, SignetServer};

/// Limits far above the attempts, so none is refused before its flow.
const LIMITS: &str =
    "[limits]\nrate_per_second = 1000000\nburst = 10000000\nmax_in_flight = 100000\n";

/// The two instances of one deployment, on a fresh database.
fn pair(extra: &str) -> (TestDb, SignetServer, SignetServer) {
    let db = TestDb::new();
    let a = SignetServer::start_on_postgres(&db, extra);
    let b = a.sibling(&db, extra);
    (db, a, b)
}

/// Every audit entry read through `auditor`, checked to be one chain:
/// sequence numbers 1, 2, 3, ... each naming its predecessor's hash.
fn one_chain(auditor: &Api) -> Vec<Value> {
    let entries = load::audit_entries(auditor);
    let mut prev = "0".repeat(64);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "{e}");
        assert_eq!(e["prevHash"].as_str(), Some(prev.as_str()), "{e}");
        prev = e["hash"].as_str().expect("hash").to_string();
    }
    entries
}

#[test]
fn what_one_instance_starts_the_other_finishes() {
    let (_db, a, b) = pair("");
    let (api_a, api_b) = (Api::new(&a, "rp"), Api::new(&b, "rp"));

    // Registration: options on A, verified on B; the replay is refused on
    // either.
    let options = api_a.expect(
        "/v1/registrations/options",
        &json!({"user": {"name": "alice"}}),
        200,
    );
    let (mut auth, credential) =
        browser::create(&options["publicKey"], ORIGIN, &Attestation::None).expect("create");
    let verify = json!({"ceremonyId": options["ceremonyId"], "credential": credential});
    let registered = api_b.expect("/v1/registrations/verify", &verify, 200);
    for api in [&api_a, &api_b] {
        let (status, answer) = api
            .post("/v1/registrations/verify", &verify)
            .expect("replay");
        assert_eq!(
            (status, slug(&answer)),
            (409, "ceremony-consumed"),
            "{answer}"
        );
    }
    let user_id = registered["userId"].as_str().expect("userId");

    // Login: options on B, verified on A.
    let options = api_b.expect(
        "/v1/authentications/options",
        &json!({"user": {"name": "alice"}}),
        200,
    );
    let login = json!({
        "ceremonyId": options["ceremonyId"],
        "credential": assertion(&mut auth, &options["publicKey"]),
    });
    let verified = api_a.expect("/v1/authentications/verify", &login, 200);
    assert_eq!(verified["userId"], user_id);
    let (status, answer) = api_b
        .post("/v1/authentications/verify", &login)
        .expect("replay");
    assert_eq!(
        (status, slug(&answer)),
        (409, "ceremony-consumed"),
        "{answer}"
    );

    // A payment created on A, approved on B; the receipt B signed is the
    // one A serves, and it verifies with the countersign key either serves.
    let tx = api_a.expect(
        "/v1/transactions",
        &load::payment("alice", "99.00", "HA-1"),
        201,
    );
    let tx_id = tx["transactionId"].as_str().expect("transactionId");
    let approved = api_b.expect(
        &format!("/v1/transactions/{tx_id}/approval"),
        &json!({"credential": assertion(&mut auth, &tx["publicKey"])}),
        200,
    );
    let (status, served) = api_a
        .get(&format!("/v1/transactions/{tx_id}/receipt"))
        .expect("receipt");
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["receipt"], approved["receipt"]);
    let keys_a = api_a.get("/v1/keys").expect("keys").1;
    let keys_b = api_b.get("/v1/keys").expect("keys").1;
    assert_eq!(keys_a, keys_b, "both instances sign with the same keys");

    // The counter is the database's: an assertion with the counter B just
    // stored is refused by A.
    auth.sign_count -= 1;
    let options = api_a.expect(
        "/v1/authentications/options",
        &json!({"user": {"name": "alice"}}),
        200,
    );
    let stale = json!({
        "ceremonyId": options["ceremonyId"],
        "credential": assertion(&mut auth, &options["publicKey"]),
    });
    let (status, answer) = api_a
        .post("/v1/authentications/verify", &stale)
        .expect("stale");
    assert_eq!(
        (status, slug(&answer)),
        (400, "credential-counter"),
        "{answer}"
    );

    // One audit chain, the same through either instance.
    let through_a = one_chain(&Api::new(&a, "auditor"));
    let through_b = one_chain(&Api::new(&b, "auditor"));
    assert_eq!(through_a, through_b);
    let events: Vec<&str> = through_a
        .iter()
        .filter_map(|e| e["event"]["event"].as_str())
        .collect();
    for want in [
        "credential.registered",
        "authentication.verified",
        "transaction.approved",
    ] {
        assert!(events.contains(&want), "{want} not in {events:?}");
    }
}

#[test]
fn a_thousand_attempts_across_both_instances_succeed_once() {
    let (_db, a, b) = pair(LIMITS);
    let api = Api::new(&a, "rp");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut auth, registered) = load::register(&api, &Api::new(&b, "rp"), "racer");
    let user_id = registered["userId"].as_str().expect("userId");
    let warm = format!("/v1/users/{user_id}/credentials");

    // One challenge, 1000 assertions, alternating between the instances.
    let options = api.expect(
        "/v1/authentications/options",
        &json!({"user": {"name": "racer"}}),
        200,
    );
    let requests: Vec<Request> = (0..1000)
        .map(|_| {
            Request::post(
                "/v1/authentications/verify",
                json!({"ceremonyId": options["ceremonyId"], "credential": assertion(&mut auth, &options["publicKey"])}),
            )
        })
        .collect();
    let r = race(&rt, &[&a, &b], &warm, requests);
    let line = r.judge(
        "challenge over two instances",
        "verified",
        "ceremony-consumed",
    );
    println!("{}", line.as_ref().unwrap_or_else(|e| e));
    assert!(line.is_ok(), "{line:?}");

    // One transaction, 1000 answers, alternating.
    let tx = api.expect(
        "/v1/transactions",
        &load::payment("racer", "250.00", "HA-RACE"),
        201,
    );
    let tx_id = tx["transactionId"].as_str().expect("transactionId");
    let requests: Vec<Request> = (0..1000)
        .map(|_| {
            Request::post(
                format!("/v1/transactions/{tx_id}/approval"),
                json!({"credential": assertion(&mut auth, &tx["publicKey"])}),
            )
        })
        .collect();
    let r = race(&rt, &[&a, &b], &warm, requests);
    let line = r.judge(
        "transaction over two instances",
        "approved",
        "transaction-approved",
    );
    println!("{}", line.as_ref().unwrap_or_else(|e| e));
    assert!(line.is_ok(), "{line:?}");

    let entries = one_chain(&Api::new(&b, "auditor"));
    let approvals = entries
        .iter()
        .filter(|e| e["event"]["event"] == "transaction.approved")
        .count();
    assert_eq!(approvals, 1);
}

/// What a load thread was told.
#[derive(Default)]
struct Ledger {
    /// (user name, user id, credential id) of acknowledged registrations.
    registered: Vec<(String, String, String)>,
    logins: usize,
    /// Registrations begun after A was killed: B alone.
    after_kill: usize,
    /// Requests that got no answer (the killed instance's).
    unanswered: usize,
}

#[test]
fn one_instance_killed_under_load_the_other_carries_on() {
    let (_db, mut a, b) = pair("");
    let stop = Arc::new(AtomicBool::new(false));
    let a_down = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (api_a, api_b) = (Api::new(&a, "rp"), Api::new(&b, "rp"));
            let (stop, a_down) = (stop.clone(), a_down.clone());
            std::thread::spawn(move || {
                let mut ledger = Ledger::default();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let name = format!("load-{w}-{n}");
                    // Start on A while it lives, finish on B: the ceremony
                    // survives A's death when it was stored.
                    let alone = a_down.load(Ordering::SeqCst);
                    let start = if alone { &api_b } else { &api_a };
                    let Ok((200, options)) = start.post(
                        "/v1/registrations/options",
                        &json!({"user": {"name": name}}),
                    ) else {
                        // Only A may fail, and only once it is killed.
                        assert!(!alone && a_down.load(Ordering::SeqCst), "a request failed");
                        ledger.unanswered += 1;
                        continue;
                    };
                    let (mut auth, credential) =
                        browser::create(&options["publicKey"], ORIGIN, &Attestation::None)
                            .expect("create");
                    let (status, answer) = api_b
                        .post(
                            "/v1/registrations/verify",
                            &json!({"ceremonyId": options["ceremonyId"], "credential": credential}),
                        )
                        .expect("B answers");
                    assert_eq!(status, 200, "{answer}");
                    ledger.registered.push((
                        name.clone(),
                        answer["userId"].as_str().expect("userId").to_string(),
                        answer["credentialId"].as_str().expect("credentialId").to_string(),
                    ));
                    let (status, options) = api_b
                        .post("/v1/authentications/options", &json!({"user": {"name": name}}))
                        .expect("B answers");
                    assert_eq!(status, 200, "{options}");
                    let (status, answer) = api_b
                        .post(
                            "/v1/authentications/verify",
                            &json!({"ceremonyId": options["ceremonyId"], "credential": assertion(&mut auth, &options["publicKey"])}),
                        )
                        .expect("B answers");
                    assert_eq!(status, 200, "{answer}");
                    ledger.logins += 1;
                    ledger.after_kill += usize::from(alone);
                }
                ledger
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(2));
    a.signal("KILL");
    a_down.store(true, Ordering::SeqCst);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let ledgers: Vec<Ledger> = workers
        .into_iter()
        .map(|w| w.join().expect("a load thread failed"))
        .collect();
    let alone = killed.elapsed();

    // B carried on: registrations and logins after the kill, no failure.
    let registered: Vec<_> = ledgers.iter().flat_map(|l| l.registered.clone()).collect();
    let logins: usize = ledgers.iter().map(|l| l.logins).sum();
    let unanswered: usize = ledgers.iter().map(|l| l.unanswered).sum();
    let after_kill: usize = ledgers.iter().map(|l| l.after_kill).sum();
    assert!(after_kill >= 2, "B registered {after_kill} alone");
    assert!(registered.len() > after_kill, "none before the kill");

    // A restarts on the same database; every acknowledged registration is
    // there, read through either instance, and the chain is one chain.
    let _ = a.stop();
    a.spawn();
    for api in [Api::new(&a, "rp"), Api::new(&b, "rp")] {
        for (name, user_id, credential_id) in &registered {
            let (status, list) = api
                .get(&format!("/v1/users/{user_id}/credentials"))
                .expect("list");
            assert_eq!(status, 200, "{name}: {list}");
            assert_eq!(
                list["credentials"][0]["credentialId"], *credential_id,
                "{name}"
            );
        }
    }
    let entries = one_chain(&Api::new(&a, "auditor"));
    assert_eq!(entries, one_chain(&Api::new(&b, "auditor")));
    println!(
        "postgres-ha: A killed after 2 s; {} registrations ({after_kill} on B alone in {:.1} s) and \
         {logins} logins acknowledged, {unanswered} requests to A unanswered at the kill, \
         audit chain of {} entries",
        registered.len(),
        alone.as_secs_f64(),
        entries.len()
    );
}
