//! QR cross-device login through the flows, with a real store, real keys
//! (SoftHSM) and the clock injected: the whole sequence, every step in
//! every state, expiry in each state, the three secrets, racing phones and
//! desktops, brute-forced codes, and assertions made for something else.

#![cfg(feature = "testkit")]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use signet::flows::{FlowError, PairingProblem, Services, ceremony, pairing};
use signet::keys::sha256;
use signet::store::{PairingState, SledStore, Store};
use signet::testkit::{AssertionParts, Ceremony, SoftAuthenticator};
use signet::webauthn::{b64url, b64url_decode};

const RP_ID: &str = "localhost";
const ORIGIN: &str = "https://localhost";
const STRONG: &str = "11111111-1111-4111-8111-111111111111";
const WEAK: &str = "33333333-3333-4333-8333-333333333333";
const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
const ACTOR: &str = "client:core";
const TTL: Duration = Duration::from_secs(120);
const APPROVED_TTL: Duration = Duration::from_secs(30);

/// Tiers by AAGUID (STRONG tier 1, WEAK tier 3), plus an action only tier
/// 1 meets.
fn policy() -> String {
    format!(
        "{}\n[actions.login-strong]\nmin_tier = 1\n",
        include_str!("data/transaction-policy.toml")
    )
}

struct Fixture {
    _hsm: common::softhsm::SoftHsm,
    store: Arc<SledStore>,
    s: Services,
    t0: SystemTime,
}

/// What the desktop holds after creating a pairing.
#[derive(Clone)]
struct Desktop {
    id: String,
    code: String,
    secret: String,
}

/// What the phone holds after claiming.
#[derive(Clone)]
struct Phone {
    secret: String,
    challenge: Vec<u8>,
    answer: Value,
}

fn problem(e: &FlowError) -> Option<PairingProblem> {
    match e {
        FlowError::Pairing { problem, .. } => Some(*problem),
        _ => None,
    }
}

fn state_problem(e: &FlowError) -> Option<PairingState> {
    match problem(e) {
        Some(PairingProblem::State(s)) => Some(s),
        _ => None,
    }
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(5)
    }

    fn with(attempts_max: u32) -> Fixture {
        let hsm = common::softhsm::SoftHsm::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(&dir.keep().join("data")).expect("store"));
        let s = common::flows::services(
            common::Device::ring(&hsm),
            store.clone(),
            &format!(
                "[pairing]\nttl_s = {}\napproved_ttl_s = {}\nattempts_max = {attempts_max}\n\
                 link = \"https://bank.example/pair\"\n",
                TTL.as_secs(),
                APPROVED_TTL.as_secs()
            ),
            &policy(),
        );
        Fixture {
            _hsm: hsm,
            store,
            s,
            t0: SystemTime::now(),
        }
    }

    fn at(&self, d: Duration) -> SystemTime {
        self.t0 + d
    }

    fn passkey(&self, name: &str, model: &str) -> SoftAuthenticator {
        common::flows::passkey(&self.s, name, model, self.t0)
    }

    fn create(&self, body: Value) -> Result<Value, FlowError> {
        pairing::create(&self.s, &body, ACTOR, self.t0)
    }

    /// A pairing for a desktop in Zurich, optionally naming the user.
    fn desktop(&self, user: Option<&str>) -> Desktop {
        let mut body = json!({"context": {
            "ip": "203.0.113.7", "userAgent": FIREFOX, "location": "Zurich"
        }});
        if let Some(u) = user {
            body["user"] = json!({ "name": u });
        }
        let answer = self.create(body).expect("create");
        let qr = answer["qrPayload"].as_str().expect("qrPayload");
        let fragment = qr
            .strip_prefix("https://bank.example/pair#")
            .expect("the configured link");
        let mut id = None;
        let mut code = None;
        for pair in fragment.split('&') {
            match pair.split_once('=') {
                Some(("pairing", v)) => id = Some(v.to_string()),
                Some(("code", v)) => code = Some(v.to_string()),
                _ => panic!("unexpected QR member {pair}"),
            }
        }
        let id = id.expect("pairing in the QR payload");
        assert_eq!(answer["pairingId"], id.as_str());
        Desktop {
            id,
            code: code.expect("code in the QR payload"),
            secret: answer["desktopSecret"]
                .as_str()
                .expect("desktopSecret")
                .into(),
        }
    }

    fn claim_at(
        &self,
        d: &Desktop,
        code: &str,
        user: Option<&str>,
        at: SystemTime,
    ) -> Result<Phone, FlowError> {
        let mut body = json!({ "code": code });
        if let Some(u) = user {
            body["user"] = json!({ "name": u });
        }
        let answer = pairing::claim(&self.s, &d.id, &body, ACTOR, at)?;
        Ok(Phone {
            secret: answer["phoneSecret"].as_str().expect("phoneSecret").into(),
            challenge: common::ceremony::challenge_of(&answer),
            answer,
        })
    }

    fn claim(&self, d: &Desktop) -> Phone {
        self.claim_at(d, &d.code, None, self.t0).expect("claim")
    }

    fn approve_at(
        &self,
        d: &Desktop,
        phone_secret: Option<&str>,
        parts: &AssertionParts,
        at: SystemTime,
    ) -> Result<Value, FlowError> {
        pairing::approve(
            &self.s,
            &d.id,
            phone_secret,
            &json!({ "credential": parts.to_json() }),
            ACTOR,
            at,
        )
    }

    fn approve(
        &self,
        d: &Desktop,
        p: &Phone,
        auth: &mut SoftAuthenticator,
    ) -> Result<Value, FlowError> {
        let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &p.challenge));
        self.approve_at(d, Some(&p.secret), &parts, self.t0)
    }

    fn deny(&self, d: &Desktop, phone_secret: Option<&str>) -> Result<Value, FlowError> {
        pairing::deny(&self.s, &d.id, phone_secret, &Value::Null, ACTOR, self.t0)
    }

    fn status_at(
        &self,
        d: &Desktop,
        secret: Option<&str>,
        at: SystemTime,
    ) -> Result<pairing::Status, FlowError> {
        let id = pairing::parse_id(&d.id)?;
        pairing::status(&self.s, &id, secret, ACTOR, at)
    }

    fn state(&self, d: &Desktop) -> PairingState {
        let id: [u8; 16] = b64url_decode("id", &d.id, 16)
            .expect("id")
            .try_into()
            .expect("16 bytes");
        self.store
            .pairing(&id)
            .expect("read")
            .expect("stored")
            .state
    }

    fn consume_at(
        &self,
        d: &Desktop,
        secret: Option<&str>,
        at: SystemTime,
    ) -> Result<Value, FlowError> {
        pairing::consume(&self.s, &d.id, secret, ACTOR, at)
    }

    fn consume(&self, d: &Desktop) -> Result<Value, FlowError> {
        self.consume_at(d, Some(&d.secret), self.t0)
    }

    /// The pairing audit events, in order, with their subjects.
    fn events(&self) -> Vec<(String, String)> {
        self.store
            .audit_range(1, 100_000)
            .expect("audit")
            .iter()
            .map(|e| serde_json::from_slice::<Value>(&e.body).expect("json body"))
            .filter(|v| v["event"].as_str().unwrap_or("").starts_with("pairing."))
            .map(|v| {
                (
                    v["event"].as_str().unwrap_or("").to_string(),
                    v["subject"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn events_of(&self, d: &Desktop) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|(_, s)| *s == d.id)
            .map(|(e, _)| e)
            .collect()
    }
}

/// A 32-byte secret nobody was given.
fn stranger() -> String {
    b64url(&[0x5a; 32])
}

#[test]
fn the_whole_sequence() {
    let fx = Fixture::new();
    let mut alice = fx.passkey("alice", WEAK);
    let d = fx.desktop(None);
    assert_eq!(d.code.len(), 22, "a 128-bit code");
    assert_eq!(d.secret.len(), 43, "a 256-bit desktop secret");
    let created = fx.status_at(&d, Some(&d.secret), fx.t0).expect("status");
    assert_eq!(created.answer["state"], "created");
    assert_eq!(created.revision, 1);
    assert!(!created.settled);
    assert_eq!(created.expires_in_ms, TTL.as_millis() as u64);

    let phone = fx.claim(&d);
    let a = &phone.answer;
    assert_eq!(a["state"], "claimed");
    assert_eq!(
        a["display"],
        "Log in on Firefox on Windows in Zurich (203.0.113.7)?"
    );
    assert_eq!(a["context"]["browser"], "Firefox on Windows");
    assert_eq!(a["context"]["userAgent"], FIREFOX);
    assert_eq!(a["context"]["ip"], "203.0.113.7");
    assert_eq!(a["publicKey"]["rpId"], RP_ID);
    assert_eq!(
        a["publicKey"]["allowCredentials"],
        json!([]),
        "nobody named: a discoverable login"
    );
    assert_eq!(phone.secret.len(), 43);
    // The challenge is the documented derivation over the pairing id and
    // the stored nonce.
    let id: [u8; 16] = b64url_decode("id", &d.id, 16)
        .expect("id")
        .try_into()
        .expect("16");
    let stored = fx.store.pairing(&id).expect("read").expect("stored");
    assert_eq!(
        phone.challenge,
        pairing::challenge(&id, &stored.nonce).to_vec()
    );
    // Only hashes of the secrets are kept.
    let raw = |t: &str| b64url_decode("secret", t, 64).expect("b64");
    assert_eq!(stored.code_sha256, sha256(&raw(&d.code)));
    assert_eq!(stored.desktop_secret_sha256, sha256(&raw(&d.secret)));
    assert_eq!(
        stored.phone_secret_sha256.as_deref(),
        Some(&sha256(&raw(&phone.secret))[..])
    );

    let approved = fx.approve(&d, &phone, &mut alice).expect("approve");
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["tier"], 3);
    assert_eq!(approved["credentialId"], b64url(&alice.credential_id));
    let st = fx.status_at(&d, Some(&d.secret), fx.t0).expect("status");
    assert_eq!(st.answer["state"], "approved");
    assert!(st.settled, "approved: nothing the phone does changes it");
    assert_eq!(st.revision, 3);

    let login = fx.consume(&d).expect("consume");
    assert_eq!(login["state"], "consumed");
    assert_eq!(login["userName"], "alice");
    assert_eq!(login["userId"], b64url(&alice.user_handle));
    assert_eq!(login["credentialId"], b64url(&alice.credential_id));
    assert_eq!(login["aaguid"], WEAK);
    assert_eq!(login["tier"], 3);
    assert_eq!(login["action"], "default");

    let e = fx.consume(&d).expect_err("consumed once");
    assert_eq!(state_problem(&e), Some(PairingState::Consumed), "{e}");
    assert_eq!(fx.state(&d), PairingState::Consumed);
    assert_eq!(
        fx.events_of(&d),
        [
            "pairing.created",
            "pairing.claimed",
            "pairing.approved",
            "pairing.consumed",
            "pairing.consume_refused",
        ]
    );
}

/// A fresh pairing brought into `state`, with its phone when claimed.
fn in_state(
    fx: &Fixture,
    state: PairingState,
    auth: &mut SoftAuthenticator,
) -> (Desktop, Option<Phone>) {
    let d = fx.desktop(None);
    let phone = match state {
        PairingState::Created => None,
        PairingState::Locked => {
            for _ in 0..5 {
                fx.claim_at(&d, &b64url(&[1; 16]), None, fx.t0)
                    .map(|_| ())
                    .expect_err("wrong code");
            }
            None
        }
        PairingState::Expired => {
            fx.status_at(&d, Some(&d.secret), fx.at(TTL))
                .expect("status");
            None
        }
        _ => {
            let p = fx.claim(&d);
            match state {
                PairingState::Approved => {
                    fx.approve(&d, &p, auth).expect("approve");
                }
                PairingState::Denied => {
                    fx.deny(&d, Some(&p.secret)).expect("deny");
                }
                PairingState::Consumed => {
                    fx.approve(&d, &p, auth).expect("approve");
                    fx.consume(&d).expect("consume");
                }
                _ => {}
            }
            Some(p)
        }
    };
    assert_eq!(fx.state(&d), state);
    (d, phone)
}

#[test]
fn every_step_in_every_state() {
    let fx = Fixture::new();
    let mut alice = fx.passkey("alice", WEAK);
    let steps = ["claim", "approve", "deny", "consume"];
    let legal = |state: PairingState, step: &str| {
        matches!(
            (state, step),
            (PairingState::Created, "claim")
                | (PairingState::Claimed, "approve")
                | (PairingState::Claimed, "deny")
                | (PairingState::Approved, "consume")
        )
    };
    for state in PairingState::ALL {
        for step in steps {
            let (d, phone) = in_state(&fx, state, &mut alice);
            // A phone that never claimed has no secret: a stranger's.
            let phone_secret = phone.as_ref().map_or_else(stranger, |p| p.secret.clone());
            let challenge = phone
                .as_ref()
                .map_or_else(|| vec![7; 32], |p| p.challenge.clone());
            let result = match step {
                "claim" => fx.claim_at(&d, &d.code, None, fx.t0).map(|p| p.answer),
                "approve" => {
                    let parts = alice.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge));
                    fx.approve_at(&d, Some(&phone_secret), &parts, fx.t0)
                }
                "deny" => fx.deny(&d, Some(&phone_secret)),
                _ => fx.consume(&d),
            };
            if legal(state, step) {
                result.unwrap_or_else(|e| panic!("{step} in {state}: {e}"));
                continue;
            }
            let e = result.map(|_| ()).expect_err(&format!("{step} in {state}"));
            assert_eq!(state_problem(&e), Some(state), "{step} in {state}: {e}");
            assert!(
                e.to_string().contains(&format!("cannot {step}")),
                "{step} in {state}: {e}"
            );
            assert_eq!(fx.state(&d), state, "{step} refused in {state}");
        }
    }
}

#[test]
fn expiry_in_each_state() {
    let fx = Fixture::new();
    let mut alice = fx.passkey("alice", WEAK);
    let just_before = TTL - Duration::from_millis(1);

    // Created: waits the whole TTL, not a millisecond more.
    let d = fx.desktop(None);
    let st = fx
        .status_at(&d, Some(&d.secret), fx.at(just_before))
        .expect("s");
    assert_eq!(st.answer["state"], "created");
    let e = fx
        .claim_at(&d, &d.code, None, fx.at(TTL))
        .map(|_| ())
        .expect_err("expired");
    assert_eq!(state_problem(&e), Some(PairingState::Expired), "{e}");
    let st = fx.status_at(&d, Some(&d.secret), fx.at(TTL)).expect("s");
    assert_eq!(st.answer["state"], "expired");
    assert_eq!(st.answer["closedReason"], "expired while created");
    assert!(st.settled);
    assert_eq!(
        fx.events_of(&d),
        [
            "pairing.created",
            "pairing.expired",
            "pairing.claim_refused"
        ]
    );

    // Claimed: the phone answers too late.
    let d = fx.desktop(None);
    let p = fx.claim(&d);
    let parts = alice.assert(&Ceremony::new(RP_ID, ORIGIN, &p.challenge));
    let e = fx
        .approve_at(&d, Some(&p.secret), &parts, fx.at(TTL))
        .expect_err("expired");
    assert_eq!(state_problem(&e), Some(PairingState::Expired), "{e}");
    assert_eq!(fx.state(&d), PairingState::Expired);
    let e = pairing::deny(
        &fx.s,
        &d.id,
        Some(&p.secret),
        &Value::Null,
        ACTOR,
        fx.at(TTL),
    )
    .expect_err("expired");
    assert_eq!(state_problem(&e), Some(PairingState::Expired), "{e}");

    // Approved: the desktop has approved_ttl from the approval, even past
    // the pairing's own TTL, and not a millisecond more.
    let late = TTL - Duration::from_secs(10);
    for (wait, taken) in [
        (APPROVED_TTL - Duration::from_millis(1), true),
        (APPROVED_TTL, false),
    ] {
        let d = fx.desktop(None);
        let p = fx.claim(&d);
        let parts = alice.assert(&Ceremony::new(RP_ID, ORIGIN, &p.challenge));
        fx.approve_at(&d, Some(&p.secret), &parts, fx.at(late))
            .expect("approve");
        let r = fx.consume_at(&d, Some(&d.secret), fx.at(late + wait));
        if taken {
            assert_eq!(r.expect("in time")["state"], "consumed");
        } else {
            let e = r.expect_err("too late");
            assert_eq!(state_problem(&e), Some(PairingState::Expired), "{e}");
            assert_eq!(fx.state(&d), PairingState::Expired);
        }
    }

    // Final states do not expire.
    let (d, _) = in_state(&fx, PairingState::Denied, &mut alice);
    let st = fx
        .status_at(&d, Some(&d.secret), fx.at(TTL * 10))
        .expect("s");
    assert_eq!(st.answer["state"], "denied");
}

#[test]
fn secrets_are_checked_and_never_interchangeable() {
    let fx = Fixture::new();
    let mut alice = fx.passkey("alice", WEAK);
    let d = fx.desktop(None);
    let p = fx.claim(&d);
    let header = |e: &FlowError| e.field().unwrap_or_default();

    // The desktop's routes.
    for secret in [None, Some("short"), Some("not base64url!")] {
        let e = fx
            .status_at(&d, secret, fx.t0)
            .map(|_| ())
            .expect_err("bad");
        assert!(matches!(e, FlowError::Invalid { .. }), "{e}");
        assert_eq!(header(&e), pairing::DESKTOP_SECRET_HEADER);
        let e = fx.consume_at(&d, secret, fx.t0).expect_err("bad");
        assert_eq!(header(&e), pairing::DESKTOP_SECRET_HEADER);
    }
    // A stranger's, the phone's, and one built from the code: each a
    // well-formed 32-byte value that is not the desktop secret.
    let from_code = d.code.clone() + &"A".repeat(21);
    for wrong in [stranger(), p.secret.clone(), from_code] {
        let e = fx
            .status_at(&d, Some(&wrong), fx.t0)
            .map(|_| ())
            .expect_err("wrong");
        assert_eq!(problem(&e), Some(PairingProblem::Secret), "{e}");
        assert_eq!(header(&e), pairing::DESKTOP_SECRET_HEADER);
    }
    let e = fx
        .consume_at(&d, Some(&p.secret), fx.t0)
        .expect_err("phone's");
    assert_eq!(problem(&e), Some(PairingProblem::Secret), "{e}");

    // The phone's routes.
    let parts = alice.assert(&Ceremony::new(RP_ID, ORIGIN, &p.challenge));
    let e = fx.approve_at(&d, None, &parts, fx.t0).expect_err("missing");
    assert!(matches!(e, FlowError::Invalid { .. }), "{e}");
    assert_eq!(header(&e), pairing::PHONE_SECRET_HEADER);
    for wrong in [stranger(), d.secret.clone()] {
        let e = fx
            .approve_at(&d, Some(&wrong), &parts, fx.t0)
            .expect_err("wrong");
        assert_eq!(problem(&e), Some(PairingProblem::Secret), "{e}");
        assert_eq!(header(&e), pairing::PHONE_SECRET_HEADER);
        let e = fx.deny(&d, Some(&wrong)).expect_err("wrong");
        assert_eq!(problem(&e), Some(PairingProblem::Secret), "{e}");
    }
    let e = fx.deny(&d, None).expect_err("missing");
    assert_eq!(header(&e), pairing::PHONE_SECRET_HEADER);

    // Nothing moved, nothing was counted, each refusal is audited.
    assert_eq!(fx.state(&d), PairingState::Claimed);
    let refusals = fx
        .events_of(&d)
        .iter()
        .filter(|e| *e == "pairing.secret_refused")
        .count();
    assert_eq!(refusals, 3 + 1 + 2 + 2, "wrong (not malformed) secrets");
    // The right secrets still work: the same assertion approves.
    fx.approve_at(&d, Some(&p.secret), &parts, fx.t0)
        .expect("approve");
    // Once claimed, only the phone learns how the pairing stands: a
    // stranger is refused for the secret, not told "approved".
    let e = fx.deny(&d, Some(&stranger())).expect_err("stranger");
    assert_eq!(problem(&e), Some(PairingProblem::Secret), "{e}");
    let e = fx.deny(&d, Some(&p.secret)).expect_err("the phone");
    assert_eq!(state_problem(&e), Some(PairingState::Approved), "{e}");
    fx.consume(&d).expect("consume");
}

#[test]
fn two_phones_claiming_at_once() {
    let fx = Arc::new(Fixture::new());
    let mut alice = fx.passkey("alice", WEAK);
    let d = fx.desktop(None);
    let results: Vec<Result<Phone, FlowError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (fx, d) = (fx.clone(), d.clone());
                scope.spawn(move || fx.claim_at(&d, &d.code, None, fx.t0))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let winners: Vec<&Phone> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one phone claims");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(state_problem(e), Some(PairingState::Claimed), "{e}");
    }
    // Only the winner's secret answers.
    let winner = winners[0].clone();
    fx.approve(&d, &winner, &mut alice)
        .expect("the winner approves");
    let claims = fx
        .events_of(&d)
        .iter()
        .filter(|e| *e == "pairing.claimed")
        .count();
    assert_eq!(claims, 1);
}

#[test]
fn brute_forcing_the_code_locks_the_pairing() {
    let fx = Fixture::with(3);
    let d = fx.desktop(None);
    for i in 1..=3u8 {
        let e = fx
            .claim_at(&d, &b64url(&[i; 16]), None, fx.t0)
            .map(|_| ())
            .expect_err("wrong code");
        assert_eq!(problem(&e), Some(PairingProblem::Code), "{e}");
        assert_eq!(e.field().as_deref(), Some("code"));
        assert_eq!(e.to_string().contains("locked"), i == 3, "{e}");
    }
    let e = fx
        .claim_at(&d, &d.code, None, fx.t0)
        .map(|_| ())
        .expect_err("locked");
    assert_eq!(state_problem(&e), Some(PairingState::Locked), "{e}");
    let st = fx.status_at(&d, Some(&d.secret), fx.t0).expect("s");
    assert_eq!(st.answer["state"], "locked");
    assert_eq!(st.answer["closedReason"], "too many wrong codes");
    let events = fx.events_of(&d);
    assert_eq!(
        events
            .iter()
            .filter(|e| *e == "pairing.code_refused")
            .count(),
        3
    );
    assert!(events.contains(&"pairing.locked".to_string()));

    // Malformed codes are the client's bug, not a guess: not counted.
    let d = fx.desktop(None);
    for bad in ["", "short", &"A".repeat(23)] {
        let e = fx
            .claim_at(&d, bad, None, fx.t0)
            .map(|_| ())
            .expect_err("malformed");
        assert!(matches!(e, FlowError::Invalid { .. }), "{e}");
        assert_eq!(e.field().as_deref(), Some("code"));
    }
    // Once claimed, a wrong code is refused for the state, not counted.
    fx.claim(&d);
    for _ in 0..5 {
        let e = fx
            .claim_at(&d, &b64url(&[9; 16]), None, fx.t0)
            .map(|_| ())
            .expect_err("claimed");
        assert_eq!(state_problem(&e), Some(PairingState::Claimed), "{e}");
    }
    assert_eq!(fx.state(&d), PairingState::Claimed);
}

#[test]
fn consume_twice_at_once_gives_one_login() {
    let fx = Arc::new(Fixture::new());
    let mut alice = fx.passkey("alice", WEAK);
    let d = fx.desktop(None);
    let p = fx.claim(&d);
    fx.approve(&d, &p, &mut alice).expect("approve");
    let results: Vec<Result<Value, FlowError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (fx, d) = (fx.clone(), d.clone());
                scope.spawn(move || fx.consume(&d))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(state_problem(e), Some(PairingState::Consumed), "{e}");
    }
}

#[test]
fn assertions_made_for_something_else_are_refused() {
    let fx = Fixture::with(3);
    let mut alice = fx.passkey("alice", WEAK);
    let d = fx.desktop(None);
    let p = fx.claim(&d);

    // For another pairing.
    let other = fx.desktop(None);
    let other_phone = fx.claim(&other);
    let parts = alice.assert(&Ceremony::new(RP_ID, ORIGIN, &other_phone.challenge));
    let e = fx
        .approve_at(&d, Some(&p.secret), &parts, fx.t0)
        .expect_err("another pairing's assertion");
    assert!(matches!(e, FlowError::Ceremony(_)), "{e}");
    assert_eq!(
        e.field().as_deref(),
        Some("credential.response.clientDataJSON.challenge")
    );
    // ... which still approves its own pairing: nothing was spent.
    fx.approve_at(&other, Some(&other_phone.secret), &parts, fx.t0)
        .expect("its own pairing");

    // For a plain login ceremony.
    let login = ceremony::authentication_options(&fx.s, &json!({}), fx.t0).expect("options");
    let parts = alice.assert(&Ceremony::new(
        RP_ID,
        ORIGIN,
        &common::ceremony::challenge_of(&login),
    ));
    let e = fx
        .approve_at(&d, Some(&p.secret), &parts, fx.t0)
        .expect_err("a login's assertion");
    assert_eq!(
        e.field().as_deref(),
        Some("credential.response.clientDataJSON.challenge"),
        "{e}"
    );

    // From a foreign origin, over the right challenge.
    let parts = alice.assert(&Ceremony::new(RP_ID, "https://evil.example", &p.challenge));
    let e = fx
        .approve_at(&d, Some(&p.secret), &parts, fx.t0)
        .expect_err("foreign origin");
    assert_eq!(
        e.field().as_deref(),
        Some("credential.response.clientDataJSON.origin"),
        "{e}"
    );
    // Three refused answers: locked, and the right one comes too late.
    assert_eq!(fx.state(&d), PairingState::Locked);
    let e = fx.approve(&d, &p, &mut alice).expect_err("locked");
    assert_eq!(state_problem(&e), Some(PairingState::Locked), "{e}");
    let st = fx.status_at(&d, Some(&d.secret), fx.t0).expect("s");
    assert_eq!(st.answer["closedReason"], "too many refused answers");

    // A body that is not an assertion is not an answer: not counted.
    let d = fx.desktop(None);
    let p = fx.claim(&d);
    for _ in 0..4 {
        let e = pairing::approve(
            &fx.s,
            &d.id,
            Some(&p.secret),
            &json!({"credential": {"id": "x"}}),
            ACTOR,
            fx.t0,
        )
        .expect_err("not an assertion");
        assert!(
            e.field().unwrap_or_default().starts_with("credential"),
            "{e}"
        );
    }
    assert_eq!(fx.state(&d), PairingState::Claimed);
}

#[test]
fn the_desktop_s_user_is_the_only_one_who_can_approve() {
    let fx = Fixture::new();
    let mut alice = fx.passkey("alice", WEAK);
    let mut mallory = fx.passkey("mallory", WEAK);

    // Mallory saw the QR code and claims with her own account: refused,
    // and counted like a wrong code.
    let d = fx.desktop(Some("alice"));
    let e = fx
        .claim_at(&d, &d.code, Some("mallory"), fx.t0)
        .map(|_| ())
        .expect_err("another user");
    assert_eq!(problem(&e), Some(PairingProblem::User), "{e}");
    assert_eq!(e.field().as_deref(), Some("user.name"));
    assert_eq!(fx.state(&d), PairingState::Created);

    // Without naming anyone, the claim is for alice: her credentials only.
    let p = fx.claim_at(&d, &d.code, None, fx.t0).expect("claim");
    assert_eq!(
        p.answer["publicKey"]["allowCredentials"][0]["id"],
        b64url(&alice.credential_id)
    );
    let e = fx.approve(&d, &p, &mut mallory).expect_err("mallory");
    assert_eq!(e.field().as_deref(), Some("credential.id"), "{e}");
    assert_eq!(fx.state(&d), PairingState::Claimed);
    fx.approve(&d, &p, &mut alice).expect("alice");
    assert_eq!(fx.consume(&d).expect("consume")["userName"], "alice");

    // Named by the phone only: that user's credentials.
    let d = fx.desktop(None);
    let p = fx
        .claim_at(&d, &d.code, Some("alice"), fx.t0)
        .expect("claim");
    let e = fx.approve(&d, &p, &mut mallory).expect_err("mallory");
    assert_eq!(e.field().as_deref(), Some("credential.id"), "{e}");

    // An unknown user is not found, and nothing is claimed.
    let d = fx.desktop(None);
    let e = fx
        .claim_at(&d, &d.code, Some("carol"), fx.t0)
        .map(|_| ())
        .expect_err("unknown");
    assert!(matches!(e, FlowError::NotFound { .. }), "{e}");
    assert_eq!(fx.state(&d), PairingState::Created);
    let e = fx
        .create(json!({"context": {"ip": "::1", "userAgent": "x"}, "user": {"name": "carol"}}))
        .expect_err("unknown");
    assert!(matches!(e, FlowError::NotFound { .. }), "{e}");
}

#[test]
fn step_up_keeps_the_pairing_claimed() {
    let fx = Fixture::new();
    let mut weak = fx.passkey("alice", WEAK);
    let body = json!({"context": {"ip": "2001:db8::7", "userAgent": FIREFOX},
                      "action": "login-strong"});
    // Named, without a credential that meets the action: step-up at once.
    let mut named = body.clone();
    named["user"] = json!({"name": "alice"});
    let answer = fx.create(named).expect("create");
    let code = answer["qrPayload"]
        .as_str()
        .and_then(|q| q.split("code=").nth(1))
        .expect("code")
        .to_string();
    let d = Desktop {
        id: answer["pairingId"].as_str().expect("id").into(),
        code,
        secret: answer["desktopSecret"].as_str().expect("s").into(),
    };
    let e = fx
        .claim_at(&d, &d.code, None, fx.t0)
        .map(|_| ())
        .expect_err("step-up");
    assert!(matches!(e, FlowError::StepUp(_)), "{e}");
    assert_eq!(fx.state(&d), PairingState::Created);

    // Discoverable: the weak credential verifies but does not meet it.
    let answer = fx.create(body).expect("create");
    let d = Desktop {
        id: answer["pairingId"].as_str().expect("id").into(),
        code: answer["qrPayload"]
            .as_str()
            .and_then(|q| q.split("code=").nth(1))
            .expect("code")
            .into(),
        secret: answer["desktopSecret"].as_str().expect("s").into(),
    };
    let p = fx.claim(&d);
    assert_eq!(
        p.answer["display"],
        "Log in on Firefox on Windows (2001:db8::7)?"
    );
    for _ in 0..6 {
        let e = fx.approve(&d, &p, &mut weak).expect_err("step-up");
        assert!(matches!(e, FlowError::StepUp(_)), "{e}");
    }
    assert_eq!(
        fx.state(&d),
        PairingState::Claimed,
        "step-up is not a refusal"
    );
    let mut strong = fx.passkey("alice", STRONG);
    let approved = fx.approve(&d, &p, &mut strong).expect("strong");
    assert_eq!(approved["tier"], 1);
    assert!(
        fx.events_of(&d)
            .contains(&"pairing.step_up_required".to_string())
    );
}

#[test]
fn a_credential_removed_after_approval_logs_nobody_in() {
    let fx = Fixture::new();
    let mut alice = fx.passkey("alice", WEAK);
    let d = fx.desktop(None);
    let p = fx.claim(&d);
    fx.approve(&d, &p, &mut alice).expect("approve");
    assert!(
        fx.store
            .delete_credential(&alice.credential_id)
            .expect("delete")
    );
    let e = fx.consume(&d).expect_err("credential gone");
    assert!(matches!(e, FlowError::Denied { .. }), "{e}");
    assert_eq!(fx.state(&d), PairingState::Approved);
    assert_eq!(
        fx.events_of(&d).last().map(String::as_str),
        Some("pairing.consume_refused")
    );
}

#[test]
fn input_errors_name_their_field() {
    let fx = Fixture::new();
    let ctx = |c: Value| json!({ "context": c });
    for (body, field) in [
        (json!({}), "context"),
        (json!({"context": "x"}), "context"),
        (ctx(json!({"userAgent": FIREFOX})), "context.ip"),
        (
            ctx(json!({"ip": "not-an-ip", "userAgent": FIREFOX})),
            "context.ip",
        ),
        (ctx(json!({"ip": "10.0.0.1"})), "context.userAgent"),
        (
            ctx(json!({"ip": "10.0.0.1", "userAgent": "a\u{7}b"})),
            "context.userAgent",
        ),
        (
            ctx(json!({"ip": "10.0.0.1", "userAgent": "x".repeat(513)})),
            "context.userAgent",
        ),
        (
            ctx(json!({"ip": "10.0.0.1", "userAgent": "x", "location": ""})),
            "context.location",
        ),
        (
            ctx(json!({"ip": "10.0.0.1", "userAgent": "x", "location": "x".repeat(129)})),
            "context.location",
        ),
        (
            ctx(json!({"ip": "10.0.0.1", "userAgent": "x", "cookie": "y"})),
            "context.cookie",
        ),
        (
            json!({"context": {"ip": "10.0.0.1", "userAgent": "x"}, "action": "nope"}),
            "action",
        ),
        (
            json!({"context": {"ip": "10.0.0.1", "userAgent": "x"}, "desktopSecret": "x"}),
            "desktopSecret",
        ),
    ] {
        let e = fx.create(body.clone()).expect_err(&body.to_string());
        assert_eq!(e.field().as_deref(), Some(field), "{body}: {e}");
    }
    // Limits are inclusive.
    fx.create(ctx(json!({"ip": "10.0.0.1", "userAgent": "x".repeat(512),
                         "location": "x".repeat(128)})))
        .expect("at the limits");

    let d = fx.desktop(None);
    for (id, body, field) in [
        ("not base64!", json!({"code": d.code}), "pairingId"),
        ("AAAA", json!({"code": d.code}), "pairingId"),
        (d.id.as_str(), json!({}), "code"),
        (d.id.as_str(), json!({"code": 5}), "code"),
        (d.id.as_str(), json!({"code": d.code, "x": 1}), "x"),
        (
            d.id.as_str(),
            json!({"code": d.code, "user": "alice"}),
            "user",
        ),
    ] {
        let e = pairing::claim(&fx.s, id, &body, ACTOR, fx.t0).expect_err(&body.to_string());
        assert_eq!(e.field().as_deref(), Some(field), "{id} {body}: {e}");
    }
    let e = pairing::claim(
        &fx.s,
        &b64url(&[0; 16]),
        &json!({"code": d.code}),
        ACTOR,
        fx.t0,
    )
    .expect_err("unknown");
    assert!(matches!(e, FlowError::NotFound { .. }), "{e}");
    assert_eq!(fx.state(&d), PairingState::Created, "nothing counted");

    let p = fx.claim(&d);
    let e = pairing::deny(
        &fx.s,
        &d.id,
        Some(&p.secret),
        &json!({"reason": "a\u{0}b"}),
        ACTOR,
        fx.t0,
    )
    .expect_err("control character");
    assert_eq!(e.field().as_deref(), Some("reason"));
    let denied = pairing::deny(
        &fx.s,
        &d.id,
        Some(&p.secret),
        &json!({"reason": "not me"}),
        ACTOR,
        fx.t0,
    )
    .expect("deny");
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["closedReason"], "not me");
}

#[test]
fn concurrent_answers_approve_once() {
    let fx = Arc::new(Fixture::new());
    let mut alice = fx.passkey("alice", WEAK);
    let d = fx.desktop(None);
    let p = fx.claim(&d);
    // Eight genuine answers (counters 1 to 8), sent at once.
    let answers: Vec<AssertionParts> = (0..8)
        .map(|_| alice.assert(&Ceremony::new(RP_ID, ORIGIN, &p.challenge)))
        .collect();
    let results: Vec<Result<Value, FlowError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = answers
            .iter()
            .map(|parts| {
                let (fx, d, p) = (fx.clone(), d.clone(), p.clone());
                scope.spawn(move || fx.approve_at(&d, Some(&p.secret), parts, fx.t0))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let won: Vec<&Value> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "exactly one answer approves");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(state_problem(e), Some(PairingState::Approved), "{e}");
    }
    // The stored counter is the winner's.
    let cred = fx
        .store
        .credential(&alice.credential_id)
        .expect("read")
        .expect("stored");
    assert_eq!(json!(cred.sign_count), won[0]["signCount"]);
    let login = fx.consume(&d).expect("consume");
    assert_eq!(login["signCount"], won[0]["signCount"]);
}
