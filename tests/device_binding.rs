//! Device binding through the flows, with a real store, real keys (SoftHSM
//! and swtpm, the same suite on each) and the clock injected: enrollment,
//! delayed identity verification, the sealed token, the sealed request,
//! and each row of the seed's risk table as a refusal.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use signet::flows::{DeviceProblem, FlowError, Services, ceremony, enrollment};
use signet::keys::{EcPublicKey, Role};
use signet::store::{DeviceState, SledStore, Store};
use signet::testkit::device::{OpenedToken, SoftDevice, create_passkey, seal_signed};
use signet::testkit::{Ceremony, SoftAuthenticator};
use signet::webauthn::{b64url, b64url_decode};

use common::Device;

const ORIGIN: &str = "https://localhost";
const DAY: Duration = Duration::from_secs(86_400);

const DEVICES: &str = "[devices]\ntoken_ttl_s = 600\nenrollment_ttl_s = 864000\n";

struct Fixture {
    _device: Box<dyn std::any::Any + Send + Sync>,
    _dir: tempfile::TempDir,
    store: Arc<SledStore>,
    s: Services,
    t0: SystemTime,
}

impl Fixture {
    fn new(device: impl Device + Send + Sync + 'static) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
        let s = common::flows::services(
            device.ring(),
            store.clone(),
            DEVICES,
            signet::policy::tiers::BUILTIN,
        );
        Fixture {
            _device: Box::new(device),
            _dir: dir,
            store,
            s,
            t0: SystemTime::now(),
        }
    }

    fn pinned(&self, role: Role) -> EcPublicKey {
        self.s.keys.active(role).expect("active key").public
    }

    fn enroll(&self, dev: &SoftDevice, name: &str, at: SystemTime) -> String {
        let answer = enrollment::enroll(
            &self.s,
            &dev.enrollment(name, json!({"os": "android", "model": "test"})),
            "client:core",
            at,
        )
        .expect("enroll");
        assert_eq!(answer["state"], "pending", "{answer}");
        answer["deviceId"].as_str().expect("id").to_string()
    }

    fn verified(&self, id: &str, at: SystemTime) -> Value {
        let answer = enrollment::verification(
            &self.s,
            id,
            &json!({"outcome": "verified", "reference": "KYC-42"}),
            "client:core",
            at,
        )
        .expect("verification");
        assert_eq!(answer["state"], "token_issued", "{answer}");
        answer
    }

    fn open(&self, dev: &SoftDevice, id: &str, answer: &Value, at: SystemTime) -> OpenedToken {
        let sealed = bytes(&answer["token"]["sealed"]);
        let opened = dev
            .open_token(
                &sealed,
                &device_id(id),
                &self.pinned(Role::TokenSigning),
                "localhost",
                at,
            )
            .expect("the device opens its token");
        opened
            .check_options(&answer["token"]["publicKey"])
            .expect("options match the token");
        opened
    }

    /// The app's sealed request: a passkey for the token's options.
    fn request(
        &self,
        dev: &SoftDevice,
        opened: &OpenedToken,
        answer: &Value,
        at: SystemTime,
    ) -> (Vec<u8>, SoftAuthenticator) {
        let (auth, registration) =
            create_passkey(&answer["token"]["publicKey"], ORIGIN).expect("passkey");
        let sealed = dev
            .seal_request(
                opened,
                &registration,
                &self.pinned(Role::TokenEncryption),
                at,
            )
            .expect("seal");
        (sealed, auth)
    }

    fn redeem(&self, id: &str, sealed: &[u8], at: SystemTime) -> Result<Value, FlowError> {
        enrollment::redeem(
            &self.s,
            id,
            &json!({ "sealed": b64url(sealed) }),
            "client:core",
            at,
        )
    }

    fn state(&self, id: &str, at: SystemTime) -> Value {
        enrollment::get(&self.s, id, "client:core", at).expect("get")
    }

    fn audit_types(&self) -> Vec<String> {
        self.store
            .audit_range(1, 10_000)
            .expect("audit")
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_slice(&e.body).expect("json body");
                v["event"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    b64url_decode("test", v.as_str().expect("base64url string"), 1 << 20).expect("base64url")
}

fn device_id(id: &str) -> [u8; 16] {
    bytes(&json!(id)).try_into().expect("16 bytes")
}

fn problem(r: Result<Value, FlowError>) -> (Option<DeviceProblem>, String) {
    match r {
        Ok(v) => panic!("accepted: {v}"),
        Err(FlowError::Device { problem, field, .. }) => (Some(problem), field),
        Err(e) => (None, e.field().unwrap_or_default()),
    }
}

// ---- the suite, run on each key device ----

/// Enrollment, verification days later, the token opened on the device,
/// the passkey registered through the sealed request, then a login with
/// it; the timeline and the audit log show every transition.
fn end_to_end_days_later(fx: &Fixture) {
    let dev = SoftDevice::generate();
    let id = fx.enroll(&dev, "alice@example.com", fx.t0);
    // No token exists before the identity is verified.
    let (p, _) = problem(enrollment::reissue(&fx.s, &id, "client:core", fx.t0));
    assert_eq!(p, Some(DeviceProblem::State));
    assert_eq!(fx.state(&id, fx.t0)["token"], Value::Null);

    // Three days later the bank's manual check finishes.
    let later = fx.t0 + 3 * DAY;
    let answer = fx.verified(&id, later);
    let opened = fx.open(&dev, &id, &answer, later);
    assert_eq!(opened.claims.user_handle, bytes(&answer["user"]["id"]));
    let (sealed, mut auth) = fx.request(&dev, &opened, &answer, later + Duration::from_secs(30));
    let bound = fx
        .redeem(&id, &sealed, later + Duration::from_secs(31))
        .expect("redeem");
    assert_eq!(bound["state"], "bound", "{bound}");
    assert_eq!(bound["deviceId"], id.as_str());

    let shown = fx.state(&id, later + Duration::from_secs(32));
    assert_eq!(shown["state"], "bound");
    assert_eq!(shown["credentials"][0], bound["credentialId"]);
    let events: Vec<&str> = shown["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["event"].as_str().expect("event"))
        .collect();
    assert_eq!(
        events,
        ["enrolled", "verified", "token_issued", "bound"],
        "{shown}"
    );
    let audited = fx.audit_types();
    for e in [
        "device.enrolled",
        "device.verified",
        "device.token_issued",
        "credential.registered",
        "device.bound",
    ] {
        assert!(audited.iter().any(|a| a == e), "{e} not in {audited:?}");
    }
    let credential = fx
        .store
        .credential(&bytes(&bound["credentialId"]))
        .expect("read")
        .expect("stored");
    assert_eq!(credential.device_id.as_deref(), Some(&device_id(&id)[..]));

    // The passkey logs in.
    let at = later + Duration::from_secs(60);
    let options = ceremony::authentication_options(
        &fx.s,
        &json!({"user": {"name": "alice@example.com"}}),
        at,
    )
    .expect("login options");
    let challenge = common::ceremony::challenge_of(&options);
    let parts = auth.assert(&Ceremony::new("localhost", ORIGIN, &challenge));
    ceremony::authentication_verify(
        &fx.s,
        &json!({"ceremonyId": options["ceremonyId"], "credential": parts.to_json()}),
        "client:core",
        at,
    )
    .expect("login with the bound passkey");

    // A second redemption of the same token (the same request replayed,
    // or a fresh one) is refused.
    let (p, _) = problem(fx.redeem(&id, &sealed, at));
    assert_eq!(p, Some(DeviceProblem::TokenConsumed));

    // Revocation disables the credential.
    let revoked = enrollment::revoke(
        &fx.s,
        &id,
        &json!({"reason": "phone reported stolen"}),
        "client:officer",
        at,
    )
    .expect("revoke");
    assert_eq!(revoked["state"], "revoked");
    let options = ceremony::authentication_options(
        &fx.s,
        &json!({"user": {"name": "alice@example.com"}}),
        at,
    );
    assert!(options.is_err(), "a revoked device's passkey is offered");
    // Nor does a discoverable login with it succeed.
    let discoverable = ceremony::authentication_options(&fx.s, &json!({}), at).expect("options");
    let parts = auth.assert(&Ceremony::new(
        "localhost",
        ORIGIN,
        &common::ceremony::challenge_of(&discoverable),
    ));
    let e = ceremony::authentication_verify(
        &fx.s,
        &json!({"ceremonyId": discoverable["ceremonyId"], "credential": parts.to_json()}),
        "client:core",
        at,
    )
    .expect_err("a disabled credential logs in");
    assert!(matches!(e, FlowError::Denied { .. }), "{e}");
    assert!(fx.audit_types().iter().any(|a| a == "device.revoked"));
}

/// Theft: another device's key neither opens the token nor, holding the
/// plaintext token, gets a request accepted.
fn theft(fx: &Fixture) {
    let dev = SoftDevice::generate();
    let thief = SoftDevice::generate();
    let id = fx.enroll(&dev, "bob@example.com", fx.t0);
    let answer = fx.verified(&id, fx.t0);
    let sealed_token = bytes(&answer["token"]["sealed"]);
    let e = thief
        .open_token(
            &sealed_token,
            &device_id(&id),
            &fx.pinned(Role::TokenSigning),
            "localhost",
            fx.t0,
        )
        .expect_err("the thief opens the token");
    assert!(e.to_string().contains("does not decrypt"), "{e}");
    // Even with the token in hand (say, from a compromised push service
    // log after the device opened it), the thief's signature is refused,
    // and the refusal does not spend the token.
    let opened = fx.open(&dev, &id, &answer, fx.t0);
    let (sealed, _) = fx.request(&thief, &opened, &answer, fx.t0);
    let (p, field) = problem(fx.redeem(&id, &sealed, fx.t0));
    assert_eq!(p, Some(DeviceProblem::DeviceSignature));
    assert_eq!(field, "request.signature");
    let (sealed, _) = fx.request(&dev, &opened, &answer, fx.t0);
    fx.redeem(&id, &sealed, fx.t0)
        .expect("the device still redeems its token");
    assert!(
        fx.audit_types()
            .iter()
            .any(|a| a == "device.registration_refused")
    );
}

/// Server spoofing: a token signed by another key is refused by the
/// device before the user sees anything.
fn spoofing(fx: &Fixture) {
    let dev = SoftDevice::generate();
    let id = fx.enroll(&dev, "carol@example.com", fx.t0);
    let answer = fx.verified(&id, fx.t0);
    let impostor = SoftDevice::generate(); // any key the device did not pin
    let e = dev
        .open_token(
            &bytes(&answer["token"]["sealed"]),
            &device_id(&id),
            &impostor.public,
            "localhost",
            fx.t0,
        )
        .expect_err("a token checked against another key");
    assert!(
        e.to_string().contains("token.signature"),
        "the device names the spoofed signature: {e}"
    );
    // A token minted by an impostor signer and sealed to the device is
    // refused the same way, and by signet too.
    let claims = signet::device_token::Claims {
        token_id: [9; 16],
        device_id: device_id(&id),
        user_handle: bytes(&answer["user"]["id"]),
        rp_id: "localhost".into(),
        issued_s: 1,
        expires_s: u64::MAX / 2,
        nonce: [1; 16],
    };
    let (tbs, unsigned) = claims
        .to_be_signed(&signet::keys::Kid::of(&impostor.public))
        .expect("tbs");
    let forged =
        signet::device_token::Claims::finish(unsigned, &impostor.sign(&tbs).expect("sign"))
            .expect("token");
    let sealed_forgery = signet::seal::seal(
        &forged,
        &dev.public,
        None,
        &signet::device_token::token_aad(&device_id(&id)),
    )
    .expect("seal");
    assert!(
        dev.open_token(
            &sealed_forgery,
            &device_id(&id),
            &fx.pinned(Role::TokenSigning),
            "localhost",
            fx.t0
        )
        .is_err()
    );
    let forged_opened = OpenedToken {
        bytes: forged,
        claims,
    };
    let (sealed, _) = fx.request(&dev, &forged_opened, &answer, fx.t0);
    let (p, field) = problem(fx.redeem(&id, &sealed, fx.t0));
    assert_eq!(p, Some(DeviceProblem::TokenInvalid), "{field}");
}

/// Impersonation: a request for one device signed by another enrolled
/// device's key is refused, even with a valid token of its own.
fn impersonation(fx: &Fixture) {
    let a = SoftDevice::generate();
    let b = SoftDevice::generate();
    let id_a = fx.enroll(&a, "dave@example.com", fx.t0);
    let id_b = fx.enroll(&b, "erin@example.com", fx.t0);
    let answer_a = fx.verified(&id_a, fx.t0);
    let answer_b = fx.verified(&id_b, fx.t0);
    let opened_b = fx.open(&b, &id_b, &answer_b, fx.t0);
    // B sends its own token to A's endpoint.
    let (sealed, _) = fx.request(&b, &opened_b, &answer_b, fx.t0);
    let (p, field) = problem(fx.redeem(&id_a, &sealed, fx.t0));
    assert_eq!(p, None, "sealed for another device id: {field}");
    assert_eq!(field, "sealed");
    // B re-seals for A with A's device id bound in: A's key did not sign.
    let (_, registration) = create_passkey(&answer_a["token"]["publicKey"], ORIGIN).expect("pk");
    let signed = b
        .sign_request(&opened_b, &registration, fx.t0)
        .expect("sign");
    let sealed = seal_signed(
        &signed,
        &device_id(&id_a),
        &fx.pinned(Role::TokenEncryption),
    )
    .expect("seal");
    let (p, _) = problem(fx.redeem(&id_a, &sealed, fx.t0));
    assert_eq!(p, Some(DeviceProblem::DeviceSignature));
    // And A's token cannot bind B: it names device A.
    let opened_a = fx.open(&a, &id_a, &answer_a, fx.t0);
    let signed = b
        .sign_request(&opened_a, &registration, fx.t0)
        .expect("sign");
    let sealed = seal_signed(
        &signed,
        &device_id(&id_b),
        &fx.pinned(Role::TokenEncryption),
    )
    .expect("seal");
    let (p, field) = problem(fx.redeem(&id_b, &sealed, fx.t0));
    assert_eq!((p, field.as_str()), (None, "request.did"));
    let request = signet::device_token::Request {
        device_id: device_id(&id_b),
        token: opened_a.bytes.clone(),
        registration: registration.to_string(),
        time_s: 1,
    };
    let (tbs, unsigned) = request.to_be_signed().expect("tbs");
    let signed = signet::device_token::Request::finish(unsigned, &b.sign(&tbs).expect("sign"))
        .expect("finish");
    let sealed = seal_signed(
        &signed,
        &device_id(&id_b),
        &fx.pinned(Role::TokenEncryption),
    )
    .expect("seal");
    let (p, _) = problem(fx.redeem(&id_b, &sealed, fx.t0));
    assert_eq!(p, Some(DeviceProblem::TokenInvalid));
}

/// Replay: an expired token, a superseded one and a redeemed one.
fn replay_and_expiry(fx: &Fixture) {
    let dev = SoftDevice::generate();
    let id = fx.enroll(&dev, "frank@example.com", fx.t0);
    let first = fx.verified(&id, fx.t0);
    let opened = fx.open(&dev, &id, &first, fx.t0);
    let (sealed, _) = fx.request(&dev, &opened, &first, fx.t0);
    // Past the 10-minute TTL.
    let late = fx.t0 + Duration::from_secs(601);
    let (p, _) = problem(fx.redeem(&id, &sealed, late));
    assert_eq!(p, Some(DeviceProblem::TokenExpired));
    assert!(
        dev.open_token(
            &bytes(&first["token"]["sealed"]),
            &device_id(&id),
            &fx.pinned(Role::TokenSigning),
            "localhost",
            late
        )
        .is_err(),
        "the device also refuses an expired token"
    );
    // A re-issue voids the first token even before it expires.
    let second = enrollment::reissue(&fx.s, &id, "client:core", late).expect("reissue");
    assert_ne!(second["token"]["tokenId"], first["token"]["tokenId"]);
    let (p, _) = problem(fx.redeem(&id, &sealed, late));
    assert_eq!(p, Some(DeviceProblem::TokenSuperseded));
    let opened2 = fx.open(&dev, &id, &second, late);
    let (sealed2, _) = fx.request(&dev, &opened2, &second, late);
    fx.redeem(&id, &sealed2, late).expect("the new token binds");
    let (p, _) = problem(fx.redeem(&id, &sealed2, late));
    assert_eq!(p, Some(DeviceProblem::TokenConsumed));
    // No new token for a bound device.
    let (p, _) = problem(enrollment::reissue(&fx.s, &id, "client:core", late));
    assert_eq!(p, Some(DeviceProblem::State));
}

/// States: rejected is final, an identity outcome is taken once, and an
/// enrollment not bound within its window expires (audited).
fn states(fx: &Fixture) {
    let dev = SoftDevice::generate();
    let id = fx.enroll(&dev, "grace@example.com", fx.t0);
    let rejected = enrollment::verification(
        &fx.s,
        &id,
        &json!({"outcome": "rejected", "reference": "KYC-7 failed"}),
        "client:core",
        fx.t0,
    )
    .expect("reject");
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["token"], Value::Null);
    let (p, _) = problem(enrollment::verification(
        &fx.s,
        &id,
        &json!({"outcome": "verified"}),
        "client:core",
        fx.t0,
    ));
    assert_eq!(p, Some(DeviceProblem::State));
    let (p, _) = problem(enrollment::reissue(&fx.s, &id, "client:core", fx.t0));
    assert_eq!(p, Some(DeviceProblem::State));

    // Ten days is the window in this config; on day 11 the pending
    // device is expired and refuses its late verification.
    let id = fx.enroll(&dev, "heidi@example.com", fx.t0);
    let day11 = fx.t0 + 11 * DAY;
    let (p, _) = problem(enrollment::verification(
        &fx.s,
        &id,
        &json!({"outcome": "verified"}),
        "client:core",
        day11,
    ));
    assert_eq!(p, Some(DeviceProblem::State));
    assert_eq!(fx.state(&id, day11)["state"], "expired");
    assert!(fx.audit_types().iter().any(|a| a == "device.expired"));
    // Revocation works from any state, once.
    enrollment::revoke(&fx.s, &id, &json!({}), "client:core", day11).expect("revoke");
    let (p, _) = problem(enrollment::revoke(
        &fx.s,
        &id,
        &json!({}),
        "client:core",
        day11,
    ));
    assert_eq!(p, Some(DeviceProblem::State));
}

/// Of many concurrent redemptions of one token exactly one binds.
fn concurrent_redemption(fx: &Fixture) {
    let dev = SoftDevice::generate();
    let id = fx.enroll(&dev, "ivan@example.com", fx.t0);
    let answer = fx.verified(&id, fx.t0);
    let opened = fx.open(&dev, &id, &answer, fx.t0);
    // Distinct requests (distinct passkeys), all with the one token.
    let requests: Vec<Vec<u8>> = (0..8)
        .map(|_| fx.request(&dev, &opened, &answer, fx.t0).0)
        .collect();
    let results: Vec<Result<Value, FlowError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|sealed| scope.spawn(|| fx.redeem(&id, sealed, fx.t0)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one redemption binds");
    for r in results.into_iter().filter(Result::is_err) {
        let (p, _) = problem(r);
        assert_eq!(p, Some(DeviceProblem::TokenConsumed));
    }
    assert_eq!(
        fx.state(&id, fx.t0)["credentials"]
            .as_array()
            .expect("list")
            .len(),
        1
    );
}

/// Malformed, truncated and oversized messages get errors naming the
/// member, and do not spend the token.
fn hostile_messages(fx: &Fixture) {
    let dev = SoftDevice::generate();
    let id = fx.enroll(&dev, "judy@example.com", fx.t0);
    let answer = fx.verified(&id, fx.t0);
    let opened = fx.open(&dev, &id, &answer, fx.t0);
    let (sealed, _) = fx.request(&dev, &opened, &answer, fx.t0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", sealed[..sealed.len() / 2].to_vec()),
        ("one byte short", sealed[..sealed.len() - 1].to_vec()),
        ("not CBOR", b"hello".to_vec()),
        ("a CBOR integer", vec![0x01]),
        ("tag 96 around nothing", vec![0xd8, 0x60, 0xf6]),
        (
            "a huge declared length",
            vec![
                0xd8, 0x60, 0x84, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ),
    ];
    for (what, bad) in cases {
        let r = fx.redeem(&id, &bad, fx.t0);
        let e = r.expect_err(what);
        let field = e.field().unwrap_or_default();
        assert!(field.starts_with("sealed"), "{what}: {field}: {e}");
    }
    // Any single altered byte is refused, naming a member of `sealed`.
    for i in (0..sealed.len()).step_by(7) {
        let mut flipped = sealed.clone();
        flipped[i] ^= 1;
        let e = fx.redeem(&id, &flipped, fx.t0).expect_err("altered");
        let field = e.field().unwrap_or_default();
        assert!(field.starts_with("sealed"), "byte {i}: {field}: {e}");
    }
    // Oversized: refused before decoding.
    let big = vec![0u8; signet::seal::SEALED_MAX + 1];
    let e = fx.redeem(&id, &big, fx.t0).expect_err("oversized");
    assert_eq!(e.field().as_deref(), Some("sealed"), "{e}");
    // Not base64url, and unknown members.
    for body in [
        json!({"sealed": "***"}),
        json!({"sealed": b64url(&sealed), "extra": 1}),
        json!({}),
        json!([]),
    ] {
        assert!(
            enrollment::redeem(&fx.s, &id, &body, "client:core", fx.t0).is_err(),
            "{body}"
        );
    }
    // A request whose registration is not JSON names request.reg.
    let signed = {
        let r = signet::device_token::Request {
            device_id: device_id(&id),
            token: opened.bytes.clone(),
            registration: "not json".into(),
            time_s: 1,
        };
        let (tbs, unsigned) = r.to_be_signed().expect("tbs");
        signet::device_token::Request::finish(unsigned, &dev.sign(&tbs).expect("sign"))
            .expect("finish")
    };
    let sealed_bad =
        seal_signed(&signed, &device_id(&id), &fx.pinned(Role::TokenEncryption)).expect("seal");
    let e = fx.redeem(&id, &sealed_bad, fx.t0).expect_err("not json");
    assert_eq!(e.field().as_deref(), Some("request.reg"), "{e}");
    // After all that, the token is still good.
    fx.redeem(&id, &sealed, fx.t0)
        .expect("the token survived every refusal");
}

/// Enrollment input is checked member by member.
fn enrollment_input(fx: &Fixture) {
    let dev = SoftDevice::generate();
    let good = dev.enrollment("kim@example.com", json!({"os": "ios"}));
    let mut cases = Vec::new();
    let mut b = good.clone();
    b["publicKey"] = json!(b64url(b"not a key"));
    cases.push(("publicKey", b));
    let mut b = good.clone();
    b.as_object_mut().expect("object").remove("publicKey");
    cases.push(("publicKey", b));
    let mut b = good.clone();
    b["platform"] = json!({"os": 5});
    cases.push(("platform.os", b));
    let mut b = good.clone();
    b["platform"] = Value::Object((0..17).map(|i| (format!("k{i}"), json!("v"))).collect());
    cases.push(("platform", b));
    let mut b = good.clone();
    b["keyAttestation"] = json!([b64url(b"not a certificate")]);
    cases.push(("keyAttestation", b));
    let mut b = good.clone();
    b["action"] = json!("no-such-action");
    cases.push(("action", b));
    let mut b = good.clone();
    b["user"] = json!({"name": ""});
    cases.push(("user.name", b));
    let mut b = good.clone();
    b["surprise"] = json!(true);
    cases.push(("surprise", b));
    for (field, body) in cases {
        let e = enrollment::enroll(&fx.s, &body, "client:core", fx.t0).expect_err(field);
        let named = e.field().unwrap_or_default();
        assert!(named.starts_with(field), "{field}: named {named}: {e}");
    }
    // An SPKI key is as good as a COSE_Key.
    let mut b = good;
    b["publicKey"] = json!(b64url(&dev.public.spki_der()));
    enrollment::enroll(&fx.s, &b, "client:core", fx.t0).expect("SPKI key");
    // Unknown and malformed device ids.
    for id in ["AAAAAAAAAAAAAAAAAAAAAA", "short", "***"] {
        assert!(
            enrollment::get(&fx.s, id, "client:core", fx.t0).is_err(),
            "{id}"
        );
    }
    let state = fx.store.device(&[0; 16]).expect("read");
    assert!(state.is_none());
    let _ = DeviceState::Pending;
}

macro_rules! suite {
    ($name:ident, $device:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn end_to_end_days_later() {
                super::end_to_end_days_later(&Fixture::new($device));
            }
            #[test]
            fn theft() {
                super::theft(&Fixture::new($device));
            }
            #[test]
            fn spoofing() {
                super::spoofing(&Fixture::new($device));
            }
            #[test]
            fn impersonation() {
                super::impersonation(&Fixture::new($device));
            }
            #[test]
            fn replay_and_expiry() {
                super::replay_and_expiry(&Fixture::new($device));
            }
            #[test]
            fn states() {
                super::states(&Fixture::new($device));
            }
            #[test]
            fn concurrent_redemption() {
                super::concurrent_redemption(&Fixture::new($device));
            }
            #[test]
            fn hostile_messages() {
                super::hostile_messages(&Fixture::new($device));
            }
            #[test]
            fn enrollment_input() {
                super::enrollment_input(&Fixture::new($device));
            }
        }
    };
}

suite!(softhsm, common::softhsm::SoftHsm::new());
suite!(swtpm, common::swtpm::Swtpm::start());
