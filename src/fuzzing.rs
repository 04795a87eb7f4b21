//! The body of every cargo-fuzz target (cargo feature `testkit`).
//!
//! Each target is one function here, taking the fuzzer's bytes and
//! returning nothing: the only property checked is that signet neither
//! panics nor allocates without bound on hostile input (libFuzzer's
//! `-rss_limit_mb` and `-malloc_limit_mb` judge the second). The same
//! function runs in two places, so a crash found once stays fixed:
//!
//! * `fuzz/fuzz_targets/<name>.rs` calls it under libFuzzer
//!   (`scripts/fuzz`);
//! * `tests/fuzz_regressions.rs` feeds it every file of
//!   `fuzz/regressions/<name>/` in the normal test suite, and fails when
//!   the target list here, the fuzz crate's and the regression directories
//!   disagree.
//!
//! Where the input reaches signet behind a signature or an AEAD tag, a
//! target has modes (the first input byte, modulo their number): the raw
//! bytes as received, and the inner payload that the target signs (or
//! seals) with fixed test keys first, so the fuzzer also reaches the
//! parsers that only run on authentic input.
//!
//! [`Target::seeds`] makes inputs from signet's own encoders (a sealed
//! registration request, a receipt, a signed BLOB payload, ...), which
//! `scripts/fuzz` adds to the corpora seeded from `../shared/vectors`: a
//! fuzz binary started with `SIGNET_FUZZ_SEED_DIR=<dir>` writes its seeds
//! there and exits (see [`init`]).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use aws_lc_rs::agreement;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use ciborium::Value as Cbor;
use coset::iana;
use coset::{CoseSign1Builder, HeaderBuilder, TaggedCborSerializable as _};
use serde_json::{Value, json};

use crate::device_token::{self, Claims, Request, SignedRequest, Token};
use crate::evidence::{self, LogRecord};
use crate::keys::{EcPublicKey, EcdsaSignature, Kid, SharedSecret, sha256};
use crate::mds::blob;
use crate::mds::crl::Crl;
use crate::mds::stored::Known;
use crate::receipt::{self, Receipt};
use crate::seal::{self, Envelope};
use crate::testkit::pki::{CertSpec, Issued};
use crate::testkit::{Attestation, Ceremony, SoftAuthenticator};
use crate::transaction::{self, Details};
use crate::webauthn::assertion::{self, StoredCredential};
use crate::webauthn::attestation::{self, AttestationPolicy, Statement};
use crate::webauthn::authenticator_data::AuthenticatorData;
use crate::webauthn::certpath::{self, Cert, PathOptions};
use crate::webauthn::client_data::{CeremonyType, ClientData};
use crate::webauthn::cose_key::CredentialPublicKey;
use crate::webauthn::registration::{self, AttestationObject};
use crate::webauthn::response::{AuthenticationResponse, RegistrationResponse};
use crate::webauthn::{CoseAlgorithm, RelyingParty, UserVerification};

/// One fuzz target: its name (the fuzz binary's and the regression
/// directory's), its body, and the inputs signet's encoders make for it.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target. `tests/fuzz_regressions.rs` checks that the fuzz crate
/// and `fuzz/regressions/` name the same ones.
pub const TARGETS: &[Target] = &[
    Target {
        name: "client_data",
        run: client_data,
        seeds: no_seeds,
    },
    Target {
        name: "authenticator_data",
        run: authenticator_data,
        seeds: no_seeds,
    },
    Target {
        name: "attestation_object",
        run: attestation_object,
        seeds: no_seeds,
    },
    Target {
        name: "cose_key",
        run: cose_key,
        seeds: no_seeds,
    },
    Target {
        name: "x509_chain",
        run: x509_chain,
        seeds: no_seeds,
    },
    Target {
        name: "registration_json",
        run: registration_json,
        seeds: no_seeds,
    },
    Target {
        name: "assertion_json",
        run: assertion_json,
        seeds: no_seeds,
    },
    Target {
        name: "transaction_details",
        run: transaction_details,
        seeds: transaction_details_seeds,
    },
    Target {
        name: "sealed_registration",
        run: sealed_registration,
        seeds: sealed_registration_seeds,
    },
    Target {
        name: "receipt",
        run: receipt,
        seeds: receipt_seeds,
    },
    Target {
        name: "evidence_record",
        run: evidence_record,
        seeds: evidence_record_seeds,
    },
    Target {
        name: "mds_blob",
        run: mds_blob,
        seeds: mds_blob_seeds,
    },
    Target {
        name: "mds_crl",
        run: mds_crl,
        seeds: no_seeds,
    },
    Target {
        name: "device_key_attestation",
        run: device_key_attestation,
        seeds: device_key_attestation_seeds,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The environment variable that makes a fuzz binary write its seeds.
pub const SEED_DIR_VAR: &str = "SIGNET_FUZZ_SEED_DIR";

/// Called once by each fuzz binary before fuzzing (`fuzz_target!(init:
/// ...)`): with [`SEED_DIR_VAR`] set, writes the target's seeds into that
/// directory (named by content hash, as libFuzzer names corpus files) and
/// exits; otherwise makes the fixed keys, so the first input is not slow.
pub fn init(name: &str) {
    let Some(t) = target(name) else {
        eprintln!("signet::fuzzing: no target {name:?}");
        std::process::exit(2);
    };
    if let Some(dir) = std::env::var_os(SEED_DIR_VAR) {
        let dir = std::path::PathBuf::from(dir);
        let seeds = (t.seeds)();
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            for seed in &seeds {
                let file = dir.join(crate::hex::encode(&sha256(seed)[..20]));
                std::fs::write(file, seed)?;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                eprintln!("fuzz: {name}: {} generated seeds", seeds.len());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("fuzz: {name}: cannot write seeds to {}: {e}", dir.display());
                std::process::exit(1);
            }
        }
    }
    keys();
}

fn no_seeds() -> Vec<Vec<u8>> {
    Vec::new()
}

/// The mode byte and the rest.
fn mode(data: &[u8], modes: u8) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (m % modes, rest))
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    [&[mode], bytes].concat()
}

// ---------------------------------------------------------------------------
// Fixed test keys and time

/// 2025-01-01T00:00:00Z, when the vectors' chains were valid.
fn vectors_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

const RP_ID: &str = "example.org";
const ORIGIN: &str = "https://example.org";
const DEVICE_ID: [u8; 16] = [0xd1; 16];

struct Keys {
    /// The enrolled device key: signs registration requests.
    device: FixedKey,
    /// signet's token-encryption key: requests are sealed to it.
    token_encryption: FixedKey,
    /// signet's token-signing key: signs registration tokens.
    token_signing: FixedKey,
    /// signet's approval-countersign key: signs receipts.
    countersign: FixedKey,
}

/// A fixed P-256 key, used through aws-lc: its C code is not instrumented,
/// so signing each input costs the fuzzer little.
struct FixedKey {
    public: EcPublicKey,
    signing: EcdsaKeyPair,
    agreement: agreement::PrivateKey,
}

impl FixedKey {
    fn new(seed: u8) -> FixedKey {
        let scalar = [seed; 32];
        let secret = p256::SecretKey::from_slice(&scalar).expect("fixed P-256 scalar");
        let public = EcPublicKey::from_p256(&secret.public_key());
        FixedKey {
            signing: EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &scalar,
                public.sec1(),
            )
            .expect("fixed P-256 key"),
            agreement: agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, &scalar)
                .expect("fixed P-256 key"),
            public,
        }
    }

    fn sign(&self, message: &[u8]) -> Option<EcdsaSignature> {
        let signature = self.signing.sign(&SystemRandom::new(), message).ok()?;
        EcdsaSignature::from_raw(signature.as_ref()).ok()
    }

    fn ecdh(&self, peer: &EcPublicKey) -> Option<SharedSecret> {
        let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer.sec1());
        agreement::agree(&self.agreement, peer, (), |x| {
            SharedSecret::from_slice(x).map_err(|_| ())
        })
        .ok()
    }
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        device: FixedKey::new(1),
        token_encryption: FixedKey::new(2),
        token_signing: FixedKey::new(3),
        countersign: FixedKey::new(4),
    })
}

/// An ES256 COSE_Sign1 over `payload` (any bytes), by `key`.
fn sign1(payload: &[u8], kid: Option<Kid>, key: &FixedKey) -> Vec<u8> {
    let mut header = HeaderBuilder::new().algorithm(iana::Algorithm::ES256);
    if let Some(kid) = kid {
        header = header.key_id(kid.as_bytes().to_vec());
    }
    let mut message = CoseSign1Builder::new()
        .protected(header.build())
        .payload(payload.to_vec())
        .build();
    let Some(signature) = key.sign(&message.tbs_data(b"")) else {
        return Vec::new();
    };
    message.signature = signature.raw().to_vec();
    message.to_tagged_vec().unwrap_or_default()
}

fn cbor(value: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encoding to memory");
    out
}

// ---------------------------------------------------------------------------
// The WebAuthn engine

/// clientDataJSON parsing and checking.
pub fn client_data(data: &[u8]) {
    if let Ok(cd) = ClientData::parse(data) {
        let rp = RelyingParty::new(RP_ID, vec![ORIGIN.into()]);
        let _ = cd.check(&[CeremonyType::Get, CeremonyType::Create], &[0u8; 16], &rp);
    }
}

/// Authenticator data: flags, lengths, attested credential data, extensions.
pub fn authenticator_data(data: &[u8]) {
    let _ = AuthenticatorData::parse(data, "authenticatorData");
}

/// The attestation object and every statement format behind it, with a
/// fixed time and the default (strict) policy.
pub fn attestation_object(data: &[u8]) {
    let Ok(object) = AttestationObject::parse(data) else {
        return;
    };
    let policy = AttestationPolicy::default();
    let stmt = Statement {
        fmt: &object.fmt,
        att_stmt: &object.att_stmt,
        auth_data: &object.auth_data,
        client_data_hash: &[7u8; 32],
        policy: &policy,
        now: vectors_now(),
    };
    let _ = attestation::verify(&stmt);
}

/// COSE_Key parsing, then a verification attempt with whatever key came out.
pub fn cose_key(data: &[u8]) {
    if let Ok(key) = CredentialPublicKey::from_cose(data, "credentialPublicKey") {
        let _ = key.verify(b"message", &data[..data.len().min(72)], "signature");
    }
}

/// An X.509 chain as a CBOR x5c array (as in attStmt), validated without
/// anchors and against its own last certificate as anchor.
pub fn x509_chain(data: &[u8]) {
    let Ok(value) = ciborium::de::from_reader_with_recursion_limit::<Cbor, _>(data, 8) else {
        return;
    };
    let Ok(chain) = certpath::parse_x5c(&value, "x5c") else {
        return;
    };
    for allow in [false, true] {
        let opts = PathOptions {
            allow_root_in_chain: allow,
        };
        let _ = certpath::validate(&chain, &[], vectors_now(), &opts);
        let _ = certpath::validate(&chain, &chain[chain.len() - 1..], vectors_now(), &opts);
    }
    for cert in &chain {
        let _ = cert.public_key();
        let _ = cert.basic_constraints();
        let _ = cert.key_usage();
    }
}

/// A whole registration response as a browser's toJSON() sends it.
pub fn registration_json(data: &[u8]) {
    let Ok(response) = RegistrationResponse::from_json(data) else {
        return;
    };
    let rp = RelyingParty::new(RP_ID, vec![ORIGIN.into()]);
    let policy = AttestationPolicy::default();
    let exp = registration::Expectation {
        rp: &rp,
        challenge: &[0u8; 32],
        user_verification: UserVerification::Preferred,
        require_user_presence: true,
        policy: &policy,
        trust_anchors: &[],
        now: vectors_now(),
    };
    let _ = registration::verify(&response, &exp);
}

/// A fixed valid P-256 public point (the generator).
const P256_GENERATOR: [u8; 65] = {
    let mut p = [0u8; 65];
    p[0] = 4;
    let x = [
        0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
        0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98,
        0xc2, 0x96,
    ];
    let y = [
        0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e,
        0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf,
        0x51, 0xf5,
    ];
    let mut i = 0;
    while i < 32 {
        p[1 + i] = x[i];
        p[33 + i] = y[i];
        i += 1;
    }
    p
};

/// A whole authentication response against a fixed ES256 credential.
pub fn assertion_json(data: &[u8]) {
    static KEY: OnceLock<CredentialPublicKey> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let cose = crate::webauthn::cose_key::cose_p256(&P256_GENERATOR);
        CredentialPublicKey::from_cose(&cose, "k").expect("fixed key")
    });
    let Ok(response) = AuthenticationResponse::from_json(data) else {
        return;
    };
    let rp = RelyingParty::new(RP_ID, vec![ORIGIN.into()]);
    let stored = StoredCredential {
        id: &response.id,
        public_key: key,
        sign_count: 5,
        backup_eligible: false,
        user_handle: b"user",
    };
    let exp = assertion::Expectation {
        rp: &rp,
        challenge: &[0u8; 32],
        user_verification: UserVerification::Preferred,
        require_user_presence: true,
        discoverable: false,
        allow_payment: true,
    };
    let _ = assertion::verify(&response, &stored, &exp);
}

// ---------------------------------------------------------------------------
// Transactions

/// Transaction details as `POST /v1/transactions` carries them (JSON):
/// checked, canonicalized (RFC 8785), bound into a challenge, shown as
/// text, and read back from the canonical form as approval does.
pub fn transaction_details(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(details) = Details::parse(&value) else {
        return;
    };
    let _ = details.challenge(&[9; transaction::NONCE_LEN]);
    let _ = crate::flows::approval::display_text(&details);
    if let Ok(again) = serde_json::from_slice::<Value>(&details.canonical) {
        let _ = Details::parse(&again);
    }
}

fn transaction_details_seeds() -> Vec<Vec<u8>> {
    [
        json!({"type": "payment", "amount": "1500.00", "currency": "CHF",
               "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"},
               "reference": "invoice 4711"}),
        json!({"type": "add-payee", "payee": "Jane Doe", "display": "Add Jane Doe"}),
        json!({"type": "payment", "amount": "0.000000000000000001", "currency": "EUR",
               "note": "\u{1F600} \u{00e9}\u{0301}", "n": [1e300, -0.0, 1, 2.5, null, true]}),
        json!({"type": "x", "a": {"b": {"c": {"d": {"e": {"f": [[[[[]]]]]}}}}}}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

// ---------------------------------------------------------------------------
// Device binding: the sealed registration request and the token inside

/// What `POST /v1/devices/{id}/registration` does with the device's
/// sealed request, with fixed keys for signet's token-encryption and
/// token-signing keys and the enrolled device. Modes:
///
/// 0. the sealed COSE_Encrypt: parsed, key agreement, opened;
/// 1. the signed request (COSE_Sign1) as the envelope would hold it;
/// 2. the request's payload (CBOR), signed by the device key here;
/// 3. the registration token (COSE_Sign1) as the request would hold it;
/// 4. the token's claims (CBOR), signed by the token-signing key here.
pub fn sealed_registration(data: &[u8]) {
    let Some((mode, rest)) = mode(data, 5) else {
        return;
    };
    let k = keys();
    match mode {
        0 => {
            let Ok(envelope) = Envelope::parse(rest) else {
                return;
            };
            let _ = envelope.kid.as_deref().map(Kid::from_bytes);
            let Some(secret) = k.token_encryption.ecdh(&envelope.ephemeral) else {
                return;
            };
            if let Ok(plain) = envelope.open(&secret, &device_token::request_aad(&DEVICE_ID)) {
                registration_request(&plain);
            }
        }
        1 => registration_request(rest),
        2 => registration_request(&sign1(rest, None, &k.device)),
        3 => registration_token(rest),
        _ => {
            let kid = Kid::of(&k.token_signing.public);
            registration_token(&sign1(rest, Some(kid), &k.token_signing));
        }
    }
}

fn registration_request(signed: &[u8]) {
    let k = keys();
    let Ok(request) = SignedRequest::parse(signed).and_then(|r| r.verify(&k.device.public)) else {
        return;
    };
    registration_token(&request.token);
    let _ = device_token::challenge(&request.token);
    if let Ok(value) = serde_json::from_str::<Value>(&request.registration) {
        let _ = RegistrationResponse::from_value(&value);
    }
}

fn registration_token(bytes: &[u8]) {
    if let Ok(token) = Token::parse(bytes) {
        let _ = token.verify(&keys().token_signing.public);
    }
}

fn sealed_registration_seeds() -> Vec<Vec<u8>> {
    let k = keys();
    let claims = Claims {
        token_id: [7; 16],
        device_id: DEVICE_ID,
        user_handle: vec![0x55; 16],
        rp_id: RP_ID.into(),
        issued_s: 1_767_225_600,
        expires_s: 1_767_229_200,
        nonce: [8; 16],
    };
    let Ok((tbs, unsigned)) = claims.to_be_signed(&Kid::of(&k.token_signing.public)) else {
        return Vec::new();
    };
    let claims_payload = unsigned.payload.clone().unwrap_or_default();
    let token = k
        .token_signing
        .sign(&tbs)
        .and_then(|s| Claims::finish(unsigned, &s).ok())
        .unwrap_or_default();
    let authenticator = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let registration = authenticator
        .register(
            &Ceremony::new(RP_ID, ORIGIN, &device_token::challenge(&token)),
            &Attestation::None,
        )
        .to_json()
        .to_string();
    let request = Request {
        device_id: DEVICE_ID,
        token: token.clone(),
        registration,
        time_s: 1_767_225_700,
    };
    let Ok((tbs, unsigned)) = request.to_be_signed() else {
        return Vec::new();
    };
    let request_payload = unsigned.payload.clone().unwrap_or_default();
    let signed = k
        .device
        .sign(&tbs)
        .and_then(|s| Request::finish(unsigned, &s).ok())
        .unwrap_or_default();
    let kid = Kid::of(&k.token_encryption.public);
    let sealed = seal::seal(
        &signed,
        &k.token_encryption.public,
        Some(kid.as_bytes()),
        &device_token::request_aad(&DEVICE_ID),
    )
    .unwrap_or_default();
    vec![
        with_mode(0, &sealed),
        with_mode(1, &signed),
        with_mode(2, &request_payload),
        with_mode(3, &token),
        with_mode(4, &claims_payload),
    ]
}

// ---------------------------------------------------------------------------
// Evidence: receipts and verification-log records

/// `signet verify-evidence` on a receipt, with a fixed approval-countersign
/// key. Modes: 0. the receipt (COSE_Sign1) as given; 1. its payload
/// (CBOR), countersigned here.
pub fn receipt(data: &[u8]) {
    let Some((mode, rest)) = mode(data, 2) else {
        return;
    };
    let k = keys();
    let bytes = match mode {
        0 => {
            let _ = receipt::kid_of(rest);
            rest.to_vec()
        }
        _ => sign1(rest, Some(Kid::of(&k.countersign.public)), &k.countersign),
    };
    let _ = receipt::verify(&bytes, &k.countersign.public);
}

fn receipt_seeds() -> Vec<Vec<u8>> {
    let k = keys();
    let Ok(details) = Details::parse(&json!({
        "type": "payment", "amount": "1500.00", "currency": "CHF",
        "payee": {"name": "ACME AG"}
    })) else {
        return Vec::new();
    };
    let nonce = [5u8; transaction::NONCE_LEN];
    let challenge = details.challenge(&nonce);
    let mut authenticator = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let parts = authenticator.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge));
    let r = Receipt {
        transaction_id: [1; 16],
        details: details.canonical,
        nonce,
        challenge,
        rp_id: RP_ID.into(),
        credential_id: authenticator.credential_id.clone(),
        public_key: authenticator.key().cose_key(),
        authenticator_data: parts.auth_data.clone(),
        client_data_json: parts.client_data_json.as_bytes().to_vec(),
        signature: parts.signature.clone(),
        aaguid: [0; 16],
        tier: 3,
        policy_version: "fuzz-1".into(),
        verified_ms: 1_800_000_000_000,
    };
    let Ok((tbs, unsigned)) = r.to_be_signed(&Kid::of(&k.countersign.public)) else {
        return Vec::new();
    };
    let payload = unsigned.payload.clone().unwrap_or_default();
    let signed = k
        .countersign
        .sign(&tbs)
        .and_then(|s| Receipt::finish(unsigned, &s).ok())
        .unwrap_or_default();
    vec![with_mode(0, &signed), with_mode(1, &payload)]
}

/// A verification-log file as `signet verify-evidence` reads it: one
/// record when the whole text is a JSON object, else one per non-empty
/// line; each parsed, verified (with and without an expected RP ID) and
/// written back.
pub fn evidence_record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let one = |t: &str| {
        let Ok(record) = LogRecord::parse(t) else {
            return;
        };
        let _ = evidence::verify_record(&record, None);
        let _ = evidence::verify_record(&record, Some(RP_ID));
        let _ = record.to_line();
    };
    if serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object()) {
        one(text);
    } else {
        text.lines().filter(|l| !l.trim().is_empty()).for_each(one);
    }
}

fn evidence_record_seeds() -> Vec<Vec<u8>> {
    let signet = crate::testkit::evidence::signet_log_record(7, "1500.00", RP_ID);
    let mut airlock = crate::testkit::evidence::signet_log_record(8, "20.00", RP_ID);
    airlock.signet = None;
    let lines: Vec<String> = [&signet, &airlock]
        .iter()
        .filter_map(|r| r.to_line().ok())
        .collect();
    let mut seeds: Vec<Vec<u8>> = lines.iter().map(|l| l.clone().into_bytes()).collect();
    seeds.push(format!("{}\n\n{}\n", lines.join("\n"), lines.join("\n")).into_bytes());
    if let Some(first) = lines.first()
        && let Ok(v) = serde_json::from_str::<Value>(first)
        && let Ok(pretty) = serde_json::to_string_pretty(&v)
    {
        seeds.push(pretty.into_bytes());
    }
    seeds
}

// ---------------------------------------------------------------------------
// FIDO metadata: the BLOB and CRLs

struct MdsPki {
    root: Issued,
    signer: Issued,
    roots: Vec<Cert>,
    /// The JWS header naming `signer`.
    header: String,
}

fn mds_pki() -> &'static MdsPki {
    static PKI: OnceLock<MdsPki> = OnceLock::new();
    PKI.get_or_init(|| {
        use base64::Engine as _;
        let now = crate::testkit::test_now();
        let root = Issued::new(CertSpec::root(now), CoseAlgorithm::Es256, None);
        let mut spec = CertSpec::packed_leaf(now, [0x33; 16]);
        spec.subject = "CN=mds.fuzz.example,O=Signet Fuzz,C=CH".into();
        spec.aaguid = None;
        let signer = Issued::new(spec, CoseAlgorithm::Es256, Some(&root));
        let header = json!({
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&signer.der)],
        });
        MdsPki {
            roots: vec![root.cert()],
            header: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string()),
            root,
            signer,
        }
    })
}

/// A compact JWS of `payload` (any bytes), signed by the test MDS signer.
fn mds_jws(payload: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pki = mds_pki();
    let input = format!("{}.{}", pki.header, URL_SAFE_NO_PAD.encode(payload));
    let der = pki.signer.key.sign(input.as_bytes());
    let raw = p256::ecdsa::Signature::from_der(&der)
        .map(|s| s.to_bytes().to_vec())
        .unwrap_or_default();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw)).into_bytes()
}

/// `signet mds import` / `fetch` on a BLOB, against a test root, at
/// 2026-01-01. Modes: 0. the compact JWS as downloaded; 1. the payload
/// (JSON), signed here by a signer under the test root. A BLOB that
/// verifies has every entry turned into its stored form and read back, as
/// install and the trust policy do.
pub fn mds_blob(data: &[u8]) {
    let Some((mode, rest)) = mode(data, 2) else {
        return;
    };
    let pki = mds_pki();
    let jwt = match mode {
        0 => rest.to_vec(),
        _ => mds_jws(rest),
    };
    let now = crate::testkit::test_now();
    let Ok(b) = blob::verify(&jwt, &pki.roots, &[], now) else {
        return;
    };
    let _ = blob::check_newer(Some(b.no), &b);
    let _ = b.check_fresh(now + Duration::from_secs(400 * 86_400));
    for entry in b.catalog.entries() {
        let _ = entry.latest_status();
        let _ = entry.aaguid_text();
        if let Some(aaguid) = &entry.aaguid {
            let _ = b.catalog.by_aaguid(aaguid);
        }
        if let Ok(stored) = crate::flows::metadata::stored_entry(entry)
            && let Ok(known) = Known::decode(&stored.entry)
        {
            let _ = known.certification_level();
        }
    }
}

fn mds_blob_seeds() -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let pki = mds_pki();
    let root = base64::engine::general_purpose::STANDARD.encode(&pki.root.der);
    let payload = json!({
        "legalHeader": "fuzz",
        "no": 7,
        "nextUpdate": "2030-01-01",
        "entries": [
            {
                "aaguid": "5e116e70-5e57-4a11-9a3b-516e707e5701",
                "metadataStatement": {
                    "aaguid": "5e116e70-5e57-4a11-9a3b-516e707e5701",
                    "description": "Signet Fuzz Key",
                    "authenticatorVersion": 2,
                    "protocolFamily": "fido2",
                    "attestationTypes": ["basic_full"],
                    "authenticationAlgorithms": ["secp256r1_ecdsa_sha256_raw"],
                    "keyProtection": ["hardware", "secure_element"],
                    "matcherProtection": ["on_chip"],
                    "attachmentHint": ["external", "wired"],
                    "attestationRootCertificates": [root, "MIIBAA=="]
                },
                "statusReports": [
                    {"status": "FIDO_CERTIFIED_L1", "effectiveDate": "2024-05-01",
                     "certificationLevel": "L1", "authenticatorVersion": 2},
                    {"status": "REVOKED", "effectiveDate": "2025-05-01", "url": "https://x.example"}
                ],
                "timeOfLastStatusChange": "2025-05-01"
            },
            {
                "aaid": "4e4e#4005",
                "statusReports": [{"status": "NOT_FIDO_CERTIFIED"}]
            },
            {
                "attestationCertificateKeyIdentifiers": ["923881fe2f214ee465484371aeb72e97f5a58e0a"],
                "statusReports": [{"status": "FIDO_CERTIFIED"}]
            }
        ]
    })
    .to_string()
    .into_bytes();
    vec![with_mode(0, &mds_jws(&payload)), with_mode(1, &payload)]
}

/// A CRL (DER or PEM) as `--crl` or `[mds]` gives it, used as
/// revocation checking uses it; and the same bytes as a root file
/// (`--root`).
pub fn mds_crl(data: &[u8]) {
    let _ = crate::mds::parse_roots(data, "root");
    let Ok(crl) = Crl::parse(data) else {
        return;
    };
    let pki = mds_pki();
    let _ = crl.issuer_text();
    let _ = crl.next_update();
    let _ = crl.revoked_count();
    let _ = crl.is_revoked(&[0x01]);
    let _ = crl.is_current_at(crate::testkit::test_now());
    let _ = crl.covers(&pki.signer.cert());
    if let Ok(key) = pki.roots[0].public_key() {
        let _ = crl.verify_signed_by(&key);
    }
}

// ---------------------------------------------------------------------------
// Android key attestation of an enrolled device key

fn google_roots() -> &'static [Vec<u8>] {
    static ROOTS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    ROOTS.get_or_init(crate::device_attestation::google_roots)
}

/// `POST /v1/devices` with `keyAttestation`: the input is the chain as a
/// CBOR array of certificates (leaf first), verified for the key the leaf
/// names, against Google's roots and against the chain's own last
/// certificate as the root, at 2026-01-01.
pub fn device_key_attestation(data: &[u8]) {
    let Ok(Cbor::Array(items)) = ciborium::de::from_reader_with_recursion_limit::<Cbor, _>(data, 4)
    else {
        return;
    };
    let chain: Vec<Vec<u8>> = items
        .into_iter()
        .filter_map(|v| v.into_bytes().ok())
        .collect();
    let Some(leaf) = chain.first() else {
        return;
    };
    let device_key = Cert::parse(leaf, "leaf")
        .ok()
        .and_then(|c| {
            c.tbs()
                .subject_public_key_info()
                .subject_public_key
                .as_bytes()
                .and_then(|p| EcPublicKey::from_sec1(p).ok())
        })
        .unwrap_or_else(|| keys().device.public.clone());
    let now = crate::testkit::test_now();
    let google = google_roots();
    let _ = crate::device_attestation::verify(&chain, &device_key, google, now);
    if let Some(last) = chain.last() {
        let _ =
            crate::device_attestation::verify(&chain, &device_key, std::slice::from_ref(last), now);
    }
}

fn device_key_attestation_seeds() -> Vec<Vec<u8>> {
    use crate::testkit::android::{SecurityLevelForTests as Level, key_attestation_chain};
    let k = keys();
    [Level::TrustedEnvironment, Level::StrongBox, Level::Software]
        .into_iter()
        .map(|level| {
            let (mut chain, root) =
                key_attestation_chain(&k.device.public, b"fuzz challenge", level);
            if level == Level::TrustedEnvironment {
                chain.push(root);
            }
            cbor(&Cbor::Array(chain.into_iter().map(Cbor::Bytes).collect()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The modes that sign or seal inside the target only reach the inner
    /// parsers if the fixed keys line up: the generated seeds must verify
    /// all the way.
    #[test]
    fn generated_seeds_are_authentic() {
        let k = keys();
        let seeds = sealed_registration_seeds();
        let envelope = Envelope::parse(&seeds[0][1..]).expect("envelope");
        let secret = k.token_encryption.ecdh(&envelope.ephemeral).expect("ECDH");
        let plain = envelope
            .open(&secret, &device_token::request_aad(&DEVICE_ID))
            .expect("opens");
        let request = SignedRequest::parse(&plain)
            .and_then(|r| r.verify(&k.device.public))
            .expect("request verifies");
        let signed_again = sign1(&seeds[2][1..], None, &k.device);
        SignedRequest::parse(&signed_again)
            .and_then(|r| r.verify(&k.device.public))
            .expect("re-signed request verifies");
        Token::parse(&request.token)
            .and_then(|t| t.verify(&k.token_signing.public))
            .expect("token verifies");
        let claims = sign1(
            &seeds[4][1..],
            Some(Kid::of(&k.token_signing.public)),
            &k.token_signing,
        );
        Token::parse(&claims)
            .and_then(|t| t.verify(&k.token_signing.public))
            .expect("re-signed token verifies");
        RegistrationResponse::from_json(request.registration.as_bytes()).expect("registration");

        let seeds = receipt_seeds();
        receipt::verify(&seeds[0][1..], &k.countersign.public).expect("receipt");
        let again = sign1(
            &seeds[1][1..],
            Some(Kid::of(&k.countersign.public)),
            &k.countersign,
        );
        receipt::verify(&again, &k.countersign.public).expect("re-signed receipt");

        for seed in evidence_record_seeds().iter().take(1) {
            let record =
                LogRecord::parse(std::str::from_utf8(seed).expect("utf-8")).expect("record");
            evidence::verify_record(&record, Some(RP_ID)).expect("record verifies");
        }

        let pki = mds_pki();
        for seed in mds_blob_seeds() {
            let jwt = if seed[0] == 0 {
                seed[1..].to_vec()
            } else {
                mds_jws(&seed[1..])
            };
            let b = blob::verify(&jwt, &pki.roots, &[], crate::testkit::test_now()).expect("BLOB");
            assert_eq!(b.catalog.entries().len(), 3);
        }

        let seed = &device_key_attestation_seeds()[0];
        let Ok(Cbor::Array(items)) = ciborium::from_reader::<Cbor, _>(seed.as_slice()) else {
            panic!("CBOR array");
        };
        let chain: Vec<Vec<u8>> = items
            .into_iter()
            .filter_map(|v| v.into_bytes().ok())
            .collect();
        let root = chain.last().expect("root").clone();
        crate::device_attestation::verify(
            &chain,
            &k.device.public,
            &[root],
            crate::testkit::test_now(),
        )
        .expect("key attestation");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TARGETS.len());
    }
}
