//! Transaction approval through the flows, with a real store, real keys
//! (SoftHSM and swtpm, the same suite on each) and the clock injected:
//! dynamic linking, step-up, replay, expiry, cancellation, Secure Payment
//! Confirmation, and receipts and log lines verified offline.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use signet::evidence::{LogRecord, verify_record};
use signet::flows::{FlowError, Services, TransactionProblem, approval};
use signet::keys::{Role, sha256};
use signet::store::{SledStore, Store, TransactionState};
use signet::testkit::{AssertionParts, Ceremony, SoftAuthenticator, client_data_json};
use signet::webauthn::{b64url, b64url_decode};

use common::Device;

const RP_ID: &str = "localhost";
const ORIGIN: &str = "https://localhost";
const SHOP: &str = "https://shop.example";
const STRONG: &str = "11111111-1111-4111-8111-111111111111";
const WEAK: &str = "33333333-3333-4333-8333-333333333333";

/// Tiers by AAGUID (no attestation needed), and a payment action whose
/// threshold asks for tier 1 from 1000 CHF.
const POLICY: &str = include_str!("data/transaction-policy.toml");

struct Fixture {
    _device: Box<dyn std::any::Any + Send + Sync>,
    dir: tempfile::TempDir,
    store: Arc<SledStore>,
    s: Services,
    t0: SystemTime,
}

impl Fixture {
    fn new(device: impl Device + Send + Sync + 'static) -> Fixture {
        Fixture::with(device, 100)
    }

    fn with(device: impl Device + Send + Sync + 'static, attempts_max: u32) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
        let log = dir.path().join("log/verification.jsonl");
        let s = common::flows::services(
            device.ring(),
            store.clone(),
            &format!(
                "[transactions]\nttl_s = 300\nattempts_max = {attempts_max}\nverification_log = {:?}\n",
                log.display().to_string()
            ),
            POLICY,
        );
        Fixture {
            _device: Box::new(device),
            dir,
            store,
            s,
            t0: SystemTime::now(),
        }
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("log/verification.jsonl")
    }

    /// A passkey of the model `model` registered for `name`.
    fn passkey(&self, name: &str, model: &str) -> SoftAuthenticator {
        common::flows::passkey(&self.s, name, model, self.t0)
    }

    fn create(&self, body: Value) -> Result<Value, FlowError> {
        approval::create(&self.s, &body, "client:core", self.t0)
    }

    fn approve(&self, tx: &Value, parts: &AssertionParts) -> Result<Value, FlowError> {
        self.approve_at(tx, parts, self.t0)
    }

    fn approve_at(
        &self,
        tx: &Value,
        parts: &AssertionParts,
        at: SystemTime,
    ) -> Result<Value, FlowError> {
        approval::approve(
            &self.s,
            id(tx),
            &json!({ "credential": parts.to_json() }),
            "client:core",
            at,
        )
    }
}

fn id(tx: &Value) -> &str {
    tx["transactionId"].as_str().expect("transactionId")
}

fn payment(amount: &str) -> Value {
    json!({
        "user": {"name": "alice"},
        "details": {
            "type": "payment", "amount": amount, "currency": "CHF",
            "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"},
            "reference": "INV-2026-0042"
        }
    })
}

/// What core banking recomputes: the challenge from the details it holds
/// (canonical form) and the nonce signet returned, independently of
/// signet's code.
fn recomputed_challenge(tx: &Value) -> Vec<u8> {
    let nonce = b64url_decode("nonce", tx["nonce"].as_str().expect("nonce"), 64).expect("nonce");
    let canonical = tx["canonicalDetails"].as_str().expect("canonical");
    let mut input = b"signet/transaction-challenge/v1".to_vec();
    input.extend_from_slice(&nonce);
    input.extend_from_slice(canonical.as_bytes());
    sha256(&input).to_vec()
}

fn challenge(tx: &Value) -> Vec<u8> {
    b64url_decode(
        "challenge",
        tx["publicKey"]["challenge"].as_str().expect("challenge"),
        64,
    )
    .expect("challenge")
}

fn problem(e: &FlowError) -> Option<TransactionProblem> {
    match e {
        FlowError::Transaction { problem, .. } => Some(*problem),
        _ => None,
    }
}

fn countersign_key(fx: &Fixture) -> signet::keys::EcPublicKey {
    fx.s.keys
        .active(Role::ApprovalCountersign)
        .expect("key")
        .public
}

fn end_to_end(fx: &Fixture) {
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(payment("250.00")).expect("create");
    assert_eq!(tx["state"], "pending");
    assert_eq!(
        tx["action"], "payment",
        "the action named like details.type"
    );
    assert_eq!(tx["display"], "payment: 250.00 CHF to ACME AG");
    assert_eq!(
        tx["canonicalDetails"],
        r#"{"amount":"250.00","currency":"CHF","payee":{"iban":"CH9300762011623852957","name":"ACME AG"},"reference":"INV-2026-0042","type":"payment"}"#
    );
    // The documented derivation, recomputed outside signet.
    assert_eq!(challenge(&tx), recomputed_challenge(&tx));
    assert_eq!(tx["challenge"], tx["publicKey"]["challenge"]);
    assert_eq!(tx["publicKey"]["userVerification"], "required");
    assert_eq!(
        tx["publicKey"]["allowCredentials"][0]["id"],
        b64url(&auth.credential_id)
    );

    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let approved = fx.approve(&tx, &parts).expect("approved");
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["tier"], 3);
    assert_eq!(approved["policyVersion"], "tx-test-1");

    // The receipt verifies offline with only the public key.
    let receipt_text = approved["receipt"].as_str().expect("receipt");
    let receipt = b64url_decode("receipt", receipt_text, 65536).expect("b64");
    let v = signet::receipt::verify(&receipt, &countersign_key(fx)).expect("receipt verifies");
    assert_eq!(v.transaction, tx["canonicalDetails"].as_str().expect("c"));
    assert_eq!(v.transaction_id, id(&tx));
    assert_eq!(v.credential_id, b64url(&auth.credential_id));
    assert_eq!(v.tier, 3);
    assert_eq!(v.aaguid, WEAK);
    let fetched = approval::receipt(&fx.s, id(&tx), "auditor", fx.t0).expect("receipt");
    assert_eq!(fetched["receipt"], receipt_text);
    let stored = approval::get(&fx.s, id(&tx), "auditor", fx.t0).expect("get");
    assert_eq!(stored["state"], "approved");
    assert_eq!(
        stored["approval"]["receiptSha256"],
        signet::hex::encode(&sha256(&receipt))
    );

    // Replayed, and answered again: refused, the receipt unchanged.
    let e = fx.approve(&tx, &parts).expect_err("replay");
    assert_eq!(problem(&e), Some(TransactionProblem::Approved), "{e}");
    let again = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let e = fx.approve(&tx, &again).expect_err("second approval");
    assert_eq!(problem(&e), Some(TransactionProblem::Approved), "{e}");
    assert_eq!(
        approval::receipt(&fx.s, id(&tx), "auditor", fx.t0).expect("receipt")["receipt"],
        receipt_text
    );

    // The verification log holds one line, which verifies on its own.
    let log = std::fs::read_to_string(fx.log_path()).expect("log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    let record = LogRecord::parse(lines[0]).expect("line");
    let verified = verify_record(&record, Some(RP_ID)).expect("line verifies");
    assert_eq!(verified.transaction, v.transaction);

    // The audit log tells the story.
    let events: Vec<String> = fx
        .store
        .audit_range(1, 10_000)
        .expect("audit")
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_slice(&e.body).expect("json body");
            v["event"].as_str().unwrap_or_default().to_string()
        })
        .filter(|e| e.starts_with("transaction."))
        .collect();
    assert_eq!(
        events,
        [
            "transaction.created",
            "transaction.approved",
            "transaction.refused",
            "transaction.refused"
        ]
    );
}

/// An assertion over details, a nonce, authenticator data or client data
/// that differ in any byte from what the transaction holds is refused.
fn tampering(fx: &Fixture) {
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(payment("250.00")).expect("create");
    let canonical = tx["canonicalDetails"]
        .as_str()
        .expect("c")
        .as_bytes()
        .to_vec();
    let nonce = b64url_decode("n", tx["nonce"].as_str().expect("n"), 64).expect("n");
    let nonce: [u8; 32] = nonce.try_into().expect("32");

    // Signed over other details or another nonce: the challenge differs.
    let mut refused = 0;
    for i in (0..canonical.len()).step_by(3) {
        let mut d = canonical.clone();
        d[i] ^= 0x01;
        let c = signet::transaction::challenge(&nonce, &d);
        let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &c));
        let e = fx.approve(&tx, &parts).expect_err("other details");
        assert_eq!(
            e.field().as_deref(),
            Some("credential.response.clientDataJSON.challenge"),
            "{e}"
        );
        refused += 1;
    }
    for i in 0..nonce.len() {
        let mut n = nonce;
        n[i] ^= 0x80;
        let c = signet::transaction::challenge(&n, &canonical);
        let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &c));
        assert!(fx.approve(&tx, &parts).is_err(), "nonce byte {i}");
        refused += 1;
    }
    assert!(refused < 100, "stays below attempts_max");
    let good = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let tx3 = fx.create(payment("250.00")).expect("create");
    let good3 = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx3)));
    for i in 0..good3.auth_data.len() {
        let mut p = good3.clone();
        p.auth_data[i] ^= 0x01;
        assert!(fx.approve(&tx3, &p).is_err(), "authenticatorData byte {i}");
    }
    let tx2 = fx.create(payment("250.00")).expect("create");
    let good2 = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx2)));
    let cd2 = good2.client_data_json.as_bytes().to_vec();
    for i in (0..cd2.len()).step_by(2) {
        let mut p = good2.clone();
        let mut bytes = cd2.clone();
        bytes[i] ^= 0x01;
        p.client_data_json = String::from_utf8_lossy(&bytes).into_owned();
        assert!(fx.approve(&tx2, &p).is_err(), "clientDataJSON byte {i}");
    }
    // Nothing of that approved; the genuine answers still do.
    assert_eq!(
        approval::get(&fx.s, id(&tx), "t", fx.t0).expect("get")["attempts"],
        refused
    );
    fx.approve(&tx, &good).expect("the genuine answer approves");
    // (In the order the authenticator signed them: its counter grows.)
    fx.approve(&tx3, &good3)
        .expect("the genuine answer approves");
    fx.approve(&tx2, &good2)
        .expect("the genuine answer approves");
}

/// A credential below the action's tier verifies but gets step-up; the
/// transaction stays pending and a strong credential then approves it.
fn step_up(fx: &Fixture) {
    let mut weak = fx.passkey("alice", WEAK);
    // Only a weak credential: creation itself says step-up.
    let e = fx
        .create(payment("5000.00"))
        .expect_err("no strong credential");
    let FlowError::StepUp(step) = &e else {
        panic!("{e}")
    };
    assert_eq!(step.tiers, [1]);
    assert_eq!(step.tier, Some(3));

    let mut strong = fx.passkey("alice", STRONG);
    let tx = fx.create(payment("5000.00")).expect("create");
    assert_eq!(tx["requirement"]["minTier"], 1);
    assert_eq!(tx["requirement"]["threshold"], "at least 1000.00 CHF");
    let parts = weak.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let e = fx.approve(&tx, &parts).expect_err("weak credential");
    let FlowError::StepUp(step) = &e else {
        panic!("{e}")
    };
    assert_eq!(step.tier, Some(3));
    assert_eq!(
        step.credential_id.as_deref(),
        Some(b64url(&weak.credential_id).as_str())
    );
    let stored = approval::get(&fx.s, id(&tx), "t", fx.t0).expect("get");
    assert_eq!(stored["state"], "pending");
    assert_eq!(stored["attempts"], 0, "a step-up is not a refusal");
    // The weak answer's counter moved: replaying it is refused.
    assert!(matches!(
        fx.approve(&tx, &parts),
        Err(FlowError::Counter { .. })
    ));
    let parts = strong.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let approved = fx.approve(&tx, &parts).expect("strong credential approves");
    assert_eq!(approved["tier"], 1);
    // A small payment: the weak credential is enough.
    let tx = fx.create(payment("20.00")).expect("create");
    let parts = weak.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    assert_eq!(fx.approve(&tx, &parts).expect("approved")["tier"], 3);
}

fn closing(fx: &Fixture) {
    let mut auth = fx.passkey("alice", WEAK);
    // Cancelled: refused, and cancelling again answers the same.
    let tx = fx.create(payment("10.00")).expect("create");
    let e = approval::receipt(&fx.s, id(&tx), "auditor", fx.t0).expect_err("no receipt yet");
    assert_eq!(problem(&e), Some(TransactionProblem::NoReceipt));
    let c = approval::cancel(
        &fx.s,
        id(&tx),
        &json!({"reason": "user hung up"}),
        "client:core",
        fx.t0,
    )
    .expect("cancel");
    assert_eq!(c["state"], "cancelled");
    assert_eq!(c["closedReason"], "user hung up");
    let again = approval::cancel(&fx.s, id(&tx), &json!({}), "client:core", fx.t0).expect("again");
    assert_eq!(again["state"], "cancelled");
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let e = fx.approve(&tx, &parts).expect_err("cancelled");
    assert_eq!(problem(&e), Some(TransactionProblem::Closed), "{e}");

    // Expired: refused with its own problem, and written as expired.
    let tx = fx.create(payment("10.00")).expect("create");
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let late = fx.t0 + Duration::from_secs(300);
    let e = fx.approve_at(&tx, &parts, late).expect_err("expired");
    assert_eq!(problem(&e), Some(TransactionProblem::Expired), "{e}");
    let raw: [u8; 16] = b64url_decode("id", id(&tx), 16)
        .expect("id")
        .try_into()
        .expect("16");
    assert_eq!(
        fx.store.transaction(&raw).expect("read").expect("tx").state,
        TransactionState::Expired
    );
    let e = approval::cancel(&fx.s, id(&tx), &json!({}), "client:core", late).expect_err("closed");
    assert_eq!(problem(&e), Some(TransactionProblem::Expired));
    // Just before expiry it approves.
    let tx = fx.create(payment("10.00")).expect("create");
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    fx.approve_at(&tx, &parts, fx.t0 + Duration::from_millis(299_999))
        .expect("in time");

    // Unknown and malformed ids.
    let e = approval::get(&fx.s, &b64url(&[9; 16]), "t", fx.t0).expect_err("unknown");
    assert!(matches!(e, FlowError::NotFound { .. }), "{e}");
    for bad in ["", "AAAA", "not base64!", &b64url(&[1; 17])] {
        let e = approval::get(&fx.s, bad, "t", fx.t0).expect_err(bad);
        assert_eq!(e.field().as_deref(), Some("transactionId"), "{bad}: {e}");
    }
}

fn refusals_close_the_transaction(fx: &Fixture) {
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(payment("10.00")).expect("create");
    let good = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    for _ in 0..3 {
        let mut p = good.clone();
        let last = p.signature.len() - 1;
        p.signature[last] ^= 1;
        assert!(fx.approve(&tx, &p).is_err());
    }
    let e = fx.approve(&tx, &good).expect_err("failed");
    assert_eq!(problem(&e), Some(TransactionProblem::Closed), "{e}");
    let stored = approval::get(&fx.s, id(&tx), "t", fx.t0).expect("get");
    assert_eq!(stored["state"], "failed");
    assert_eq!(stored["attempts"], 3);
    // A body that is not an assertion is not an attempt.
    let tx = fx.create(payment("10.00")).expect("create");
    for body in [
        json!({}),
        json!({"credential": 5}),
        json!({"credential": {}, "x": 1}),
    ] {
        assert!(approval::approve(&fx.s, id(&tx), &body, "c", fx.t0).is_err());
    }
    assert_eq!(
        approval::get(&fx.s, id(&tx), "t", fx.t0).expect("get")["attempts"],
        0
    );
}

fn spc_body() -> Value {
    let mut b = payment("49.90");
    b["spc"] = json!({
        "topOrigin": SHOP,
        "payeeName": "Shop AG",
        "payeeOrigin": SHOP,
        "instrument": {"displayName": "Visa •••• 4242", "icon": "https://bank.example/card.png"}
    });
    b
}

/// A `payment.get` answer as a browser's SPC dialog produces it.
fn spc_assertion(auth: &mut SoftAuthenticator, tx: &Value, payment: Value) -> AssertionParts {
    let mut parts = auth.assert(&Ceremony::new(RP_ID, SHOP, &challenge(tx)));
    let mut cd: Value = serde_json::from_str(&parts.client_data_json).expect("cd");
    cd["type"] = json!("payment.get");
    cd["payment"] = payment;
    parts.client_data_json = cd.to_string();
    auth.sign_assertion(&mut parts);
    parts
}

fn spc_payment() -> Value {
    json!({
        "rpId": RP_ID,
        "topOrigin": SHOP,
        "payeeName": "Shop AG",
        "payeeOrigin": SHOP,
        "total": {"value": "49.90", "currency": "CHF"},
        "instrument": {"displayName": "Visa •••• 4242", "icon": "https://bank.example/card.png"}
    })
}

fn secure_payment_confirmation(fx: &Fixture) {
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(spc_body()).expect("create");
    let method = &tx["paymentRequest"]["methodData"][0];
    assert_eq!(method["supportedMethods"], "secure-payment-confirmation");
    assert_eq!(method["data"]["rpId"], RP_ID);
    assert_eq!(method["data"]["challenge"], tx["challenge"]);
    assert_eq!(
        method["data"]["credentialIds"][0],
        b64url(&auth.credential_id)
    );
    assert_eq!(
        tx["paymentRequest"]["details"]["total"]["amount"],
        json!({"currency": "CHF", "value": "49.90"})
    );

    // Every difference between what the user confirmed and the transaction.
    for (member, value) in [
        ("rpId", json!("bank.example")),
        ("topOrigin", json!("https://evil.example")),
        ("payeeName", json!("Evil AG")),
        ("payeeOrigin", json!("https://evil.example")),
        ("total", json!({"value": "49.91", "currency": "CHF"})),
        ("total", json!({"value": "49.90", "currency": "EUR"})),
        ("total", json!({"value": "49.9", "currency": "CHF"})),
        (
            "instrument",
            json!({"displayName": "Visa •••• 0000", "icon": "https://bank.example/card.png"}),
        ),
        (
            "instrument",
            json!({"displayName": "Visa •••• 4242", "icon": "https://evil.example/card.png"}),
        ),
    ] {
        let mut p = spc_payment();
        p[member] = value;
        let parts = spc_assertion(&mut auth, &tx, p);
        let e = fx.approve(&tx, &parts).expect_err(member);
        assert_eq!(
            problem(&e),
            Some(TransactionProblem::Payment),
            "{member}: {e}"
        );
        assert!(
            e.field().expect("field").starts_with(&format!(
                "credential.response.clientDataJSON.payment.{member}"
            )),
            "{e}"
        );
    }
    let mut p = spc_payment();
    p.as_object_mut().expect("o").remove("payeeName");
    let e = fx
        .approve(&tx, &spc_assertion(&mut auth, &tx, p))
        .expect_err("payee name left out");
    assert_eq!(problem(&e), Some(TransactionProblem::Payment));
    let mut parts = auth.assert(&Ceremony::new(RP_ID, SHOP, &challenge(&tx)));
    parts.client_data_json = client_data_json("payment.get", &challenge(&tx), SHOP);
    auth.sign_assertion(&mut parts);
    let e = fx.approve(&tx, &parts).expect_err("no payment member");
    assert_eq!(problem(&e), Some(TransactionProblem::Payment));
    // webauthn.get from the shop's origin: not an SPC answer, not the RP's page.
    let parts = auth.assert(&Ceremony::new(RP_ID, SHOP, &challenge(&tx)));
    let e = fx.approve(&tx, &parts).expect_err("shop origin");
    assert_eq!(
        e.field().as_deref(),
        Some("credential.response.clientDataJSON.origin")
    );

    // The confirmed payment approves, and its receipt verifies offline.
    let parts = spc_assertion(&mut auth, &tx, spc_payment());
    let approved = fx.approve(&tx, &parts).expect("approved");
    assert_eq!(approved["ceremony"], "payment.get");
    let receipt = b64url_decode("r", approved["receipt"].as_str().expect("r"), 65536).expect("r");
    signet::receipt::verify(&receipt, &countersign_key(fx)).expect("receipt verifies");

    // payment.get for a transaction created without SPC: refused.
    let plain = fx.create(payment("49.90")).expect("create");
    assert!(plain.get("paymentRequest").is_none());
    let parts = spc_assertion(&mut auth, &plain, spc_payment());
    let e = fx
        .approve(&plain, &parts)
        .expect_err("not an SPC transaction");
    assert_eq!(
        e.field().as_deref(),
        Some("credential.response.clientDataJSON.type"),
        "{e}"
    );
    // An SPC transaction may still be approved by plain WebAuthn.
    let tx = fx.create(spc_body()).expect("create");
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    assert_eq!(
        fx.approve(&tx, &parts).expect("fallback")["ceremony"],
        "webauthn.get"
    );
}

fn concurrent_approvals(fx: &Fixture) {
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(payment("10.00")).expect("create");
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let results: Vec<Result<Value, FlowError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| fx.approve(&tx, &parts)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let approved = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(approved, 1, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            problem(e) == Some(TransactionProblem::Approved)
                || matches!(e, FlowError::Counter { .. }),
            "{e}"
        );
    }
    let log = std::fs::read_to_string(fx.log_path()).expect("log");
    assert!(log.lines().count() >= 1);
    for line in log.lines() {
        verify_record(&LogRecord::parse(line).expect("line"), Some(RP_ID)).expect("verifies");
    }
}

/// A verification log that cannot be written refuses the approval as
/// unavailable and leaves the transaction pending: nothing is approved
/// without its line, and the user may answer again.
fn unwritable_log(fx: &Fixture) {
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(payment("10.00")).expect("create");
    std::fs::create_dir_all(fx.log_path()).expect("a directory where the log goes");
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let e = fx.approve(&tx, &parts).expect_err("log unwritable");
    assert!(matches!(e, FlowError::VerificationLog(_)), "{e}");
    let stored = approval::get(&fx.s, id(&tx), "t", fx.t0).expect("get");
    assert_eq!(stored["state"], "pending");
    assert_eq!(stored["attempts"], 0);
    std::fs::remove_dir(fx.log_path()).expect("rmdir");
    // The same answer approves once the log is back (its counter was not
    // stored).
    fx.approve(&tx, &parts).expect("approved");
    assert_eq!(
        std::fs::read_to_string(fx.log_path())
            .expect("log")
            .lines()
            .count(),
        1
    );
}

fn creation_input(fx: &Fixture) {
    let _auth = fx.passkey("alice", WEAK);
    for (body, field) in [
        (json!({"details": {"type": "payment"}}), "user"),
        (json!({"user": {"name": "alice"}}), "details"),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment"}, "x": 1}),
            "x",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "amount": 10, "currency": "CHF"}}),
            "details.amount",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "amount": "1e3", "currency": "CHF"}}),
            "details.amount",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "amount": "10", "currency": "chf"}}),
            "details.currency",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "display": "x"}, "display": "y"}),
            "display",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment"}, "display": "a\u{0007}b"}),
            "display",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment"}, "action": "nope"}),
            "action",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "display": "x".repeat(1025)}}),
            "details.display",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "display": "a\u{0007}b"}}),
            "details.display",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "display": 5}}),
            "details.display",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment"}, "display": ""}),
            "display",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "add-payee"}, "spc": spc_body()["spc"]}),
            "details.amount",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "amount": "1", "currency": "CHF"},
                   "spc": {"topOrigin": "https://shop.example/path", "payeeName": "x",
                           "instrument": {"displayName": "d", "icon": "https://i.example/i.png"}}}),
            "spc.topOrigin",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "amount": "1", "currency": "CHF"},
                   "spc": {"topOrigin": "https://shop.example",
                           "instrument": {"displayName": "d", "icon": "https://i.example/i.png"}}}),
            "spc",
        ),
        (
            json!({"user": {"name": "alice"}, "details": {"type": "payment", "amount": "1", "currency": "CHF"},
                   "spc": {"topOrigin": "https://shop.example", "payeeName": "x",
                           "instrument": {"displayName": "d", "icon": "javascript:alert(1)"}}}),
            "spc.instrument.icon",
        ),
    ] {
        let e = fx.create(body.clone()).expect_err(&body.to_string());
        assert_eq!(e.field().as_deref(), Some(field), "{body}: {e}");
    }
    let e = fx
        .create(json!({"user": {"name": "bob"}, "details": {"type": "payment"}}))
        .expect_err("unknown user");
    assert!(matches!(e, FlowError::NotFound { .. }), "{e}");
    // A display text is signed: it joins the details.
    let tx = fx
        .create(
            json!({"user": {"name": "alice"}, "details": {"type": "login-approval"},
                       "display": "Approve the login from Zürich?"}),
        )
        .expect("create");
    assert_eq!(tx["display"], "Approve the login from Zürich?");
    assert_eq!(tx["details"]["display"], "Approve the login from Zürich?");
    assert_eq!(tx["action"], "default");
    assert_eq!(challenge(&tx), recomputed_challenge(&tx));
}

macro_rules! suite {
    ($name:ident, $device:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn end_to_end() {
                super::end_to_end(&Fixture::new($device));
            }
            #[test]
            fn tampering() {
                super::tampering(&Fixture::new($device));
            }
            #[test]
            fn step_up() {
                super::step_up(&Fixture::new($device));
            }
            #[test]
            fn closing() {
                super::closing(&Fixture::new($device));
            }
            #[test]
            fn refusals_close_the_transaction() {
                super::refusals_close_the_transaction(&Fixture::with($device, 3));
            }
            #[test]
            fn secure_payment_confirmation() {
                super::secure_payment_confirmation(&Fixture::new($device));
            }
            #[test]
            fn concurrent_approvals() {
                super::concurrent_approvals(&Fixture::new($device));
            }
            #[test]
            fn unwritable_log() {
                super::unwritable_log(&Fixture::new($device));
            }
            #[test]
            fn creation_input() {
                super::creation_input(&Fixture::new($device));
            }
        }
    };
}

suite!(softhsm, common::softhsm::SoftHsm::new());
suite!(swtpm, common::swtpm::Swtpm::start());
