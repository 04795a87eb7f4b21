//! `signet speed`: how fast the engine verifies, measured against the floor
//! that no amount of engine work can beat, a bare aws-lc-rs P-256 verify.
//!
//! The samples are made here, with a fresh key, rather than taken from the
//! testkit: the shipped binary does not carry the testkit, and a benchmark
//! of the real binary should not depend on a test-only feature. They are
//! shaped like what a browser sends (a passkey on a platform authenticator),
//! so the JSON and CBOR work measured is the work production does.
//!
//! The three workloads run interleaved in short slices on the calling
//! thread, so a neighbour's compile job that slows the machine for a while
//! slows all three alike and the ratios, which are what matter, stay honest.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use ciborium::Value as Cbor;
use coset::CborSerializable;
use coset::iana;
use serde_json::json;

use crate::webauthn::attestation::AttestationPolicy;
use crate::webauthn::cose_key::CredentialPublicKey;
use crate::webauthn::response::{AuthenticationResponse, RegistrationResponse};
use crate::webauthn::{self, RelyingParty, UserVerification, assertion, b64url, registration};

const RP_ID: &str = "bank.example";
const ORIGIN: &str = "https://bank.example";

/// Long enough for the clock and the loop to vanish against a ~30 µs
/// verification, short enough that load changes are shared by all three.
const SLICE: Duration = Duration::from_millis(20);
/// Iterations between clock reads.
const BATCH: u32 = 8;

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("speed: making the sample failed: {0}")]
    Sample(&'static str),
    /// Timing a rejection would measure the wrong path; the engine must
    /// accept every sample before anything is timed.
    #[error("speed: the {workload} sample is rejected: {error}")]
    Rejected {
        workload: &'static str,
        error: webauthn::Error,
    },
}

/// Verifications per second, and the time they were measured over.
#[derive(Clone, Debug)]
pub struct Report {
    pub assertion_per_s: f64,
    pub registration_per_s: f64,
    pub floor_per_s: f64,
    pub seconds: f64,
}

impl Report {
    pub fn assertion_ratio(&self) -> f64 {
        ratio(self.assertion_per_s, self.floor_per_s)
    }

    pub fn registration_ratio(&self) -> f64 {
        ratio(self.registration_per_s, self.floor_per_s)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "assertion_verify_per_s": round1(self.assertion_per_s),
            "registration_verify_per_s": round1(self.registration_per_s),
            "floor_p256_verify_per_s": round1(self.floor_per_s),
            "assertion_ratio": round3(self.assertion_ratio()),
            "registration_ratio": round3(self.registration_ratio()),
            "seconds": round3(self.seconds),
        })
    }

    pub fn table(&self) -> String {
        let row = |name: &str, per_s: f64| {
            format!(
                "{name:<46} {per_s:>10.0} {:>9.1} {:>8.3}\n",
                1e6 / per_s,
                ratio(per_s, self.floor_per_s)
            )
        };
        let mut out = format!(
            "{:<46} {:>10} {:>9} {:>8}\n",
            "ES256, one thread", "per s", "µs each", "÷ floor"
        );
        out += &row("floor: aws-lc-rs P-256 verify", self.floor_per_s);
        out += &row(
            "assertion: toJSON() parse + assertion::verify",
            self.assertion_per_s,
        );
        out += &row(
            "registration: packed self, toJSON() + verify",
            self.registration_per_s,
        );
        out += &format!(
            "measured over {:.1} s; goal: assertion at least 0.85 × floor ({})\n",
            self.seconds,
            if self.assertion_ratio() >= 0.85 {
                "met"
            } else {
                "not met"
            }
        );
        if cfg!(debug_assertions) {
            out += "debug build: engine numbers are not representative, use --release\n";
        }
        out
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A browser's assertion and registration for one fresh P-256 credential.
struct Samples {
    rp: RelyingParty,
    assertion_challenge: Vec<u8>,
    assertion_json: Vec<u8>,
    credential_id: Vec<u8>,
    user_handle: Vec<u8>,
    key: CredentialPublicKey,
    registration_challenge: Vec<u8>,
    registration_json: Vec<u8>,
    /// The assertion's signed bytes and signature, for the floor.
    point: Vec<u8>,
    message: Vec<u8>,
    signature: Vec<u8>,
}

fn random<const N: usize>() -> Result<[u8; N], SpeedError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| SpeedError::Sample("no randomness"))?;
    Ok(b)
}

fn sign(
    kp: &EcdsaKeyPair,
    auth_data: &[u8],
    client_data_json: &[u8],
) -> Result<Vec<u8>, SpeedError> {
    let mut signed = auth_data.to_vec();
    signed.extend_from_slice(&crate::keys::sha256(client_data_json));
    let rng = aws_lc_rs::rand::SystemRandom::new();
    kp.sign(&rng, &signed)
        .map(|s| s.as_ref().to_vec())
        .map_err(|_| SpeedError::Sample("signing failed"))
}

fn client_data(ceremony: &str, challenge: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"type":"{ceremony}","challenge":"{}","origin":"{ORIGIN}","crossOrigin":false}}"#,
        b64url(challenge)
    )
    .into_bytes()
}

impl Samples {
    fn new() -> Result<Samples, SpeedError> {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| SpeedError::Sample("P-256 key generation failed"))?;
        let point = kp.public_key().as_ref().to_vec();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err(SpeedError::Sample(
                "P-256 public key is not an uncompressed point",
            ));
        };
        let cose = coset::CoseKeyBuilder::new_ec2_pub_key(
            iana::EllipticCurve::P_256,
            x.to_vec(),
            y.to_vec(),
        )
        .algorithm(iana::Algorithm::ES256)
        .build()
        .to_vec()
        .map_err(|_| SpeedError::Sample("COSE encoding failed"))?;
        let key =
            CredentialPublicKey::from_cose(&cose, "credentialPublicKey").map_err(|error| {
                SpeedError::Rejected {
                    workload: "credential key",
                    error,
                }
            })?;
        let rp = RelyingParty::new(RP_ID, vec![ORIGIN.to_string()]);
        let rp_id_hash = rp.rp_id_hash();
        let credential_id = random::<32>()?.to_vec();
        let user_handle = random::<32>()?.to_vec();

        // A passkey: UP, UV, BE and BS set.
        let mut assertion_auth_data = rp_id_hash.to_vec();
        assertion_auth_data.push(0x1d);
        assertion_auth_data.extend_from_slice(&42u32.to_be_bytes());
        let assertion_challenge = random::<32>()?.to_vec();
        let assertion_cdj = client_data("webauthn.get", &assertion_challenge);
        let signature = sign(&kp, &assertion_auth_data, &assertion_cdj)?;
        let mut message = assertion_auth_data.clone();
        message.extend_from_slice(&crate::keys::sha256(&assertion_cdj));
        let assertion_json = serde_json::to_vec(&json!({
            "id": b64url(&credential_id),
            "rawId": b64url(&credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64url(&assertion_cdj),
                "authenticatorData": b64url(&assertion_auth_data),
                "signature": b64url(&signature),
                "userHandle": b64url(&user_handle),
            },
            "clientExtensionResults": {},
        }))
        .map_err(|_| SpeedError::Sample("JSON encoding failed"))?;

        // Registration: UP, UV, BE, BS and AT, then the attested credential.
        let mut reg_auth_data = rp_id_hash.to_vec();
        reg_auth_data.push(0x5d);
        reg_auth_data.extend_from_slice(&0u32.to_be_bytes());
        reg_auth_data.extend_from_slice(&random::<16>()?);
        reg_auth_data.extend_from_slice(&32u16.to_be_bytes());
        reg_auth_data.extend_from_slice(&credential_id);
        reg_auth_data.extend_from_slice(&cose);
        let registration_challenge = random::<32>()?.to_vec();
        let reg_cdj = client_data("webauthn.create", &registration_challenge);
        let reg_sig = sign(&kp, &reg_auth_data, &reg_cdj)?;
        let att_obj = Cbor::Map(vec![
            (Cbor::Text("fmt".into()), Cbor::Text("packed".into())),
            (
                Cbor::Text("attStmt".into()),
                Cbor::Map(vec![
                    (Cbor::Text("alg".into()), Cbor::Integer((-7).into())),
                    (Cbor::Text("sig".into()), Cbor::Bytes(reg_sig)),
                ]),
            ),
            (
                Cbor::Text("authData".into()),
                Cbor::Bytes(reg_auth_data.clone()),
            ),
        ]);
        let mut att_obj_bytes = Vec::new();
        ciborium::ser::into_writer(&att_obj, &mut att_obj_bytes)
            .map_err(|_| SpeedError::Sample("CBOR encoding failed"))?;
        // SubjectPublicKeyInfo of a P-256 key: this fixed header, then the point.
        const P256_SPKI_HEADER: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let mut spki = P256_SPKI_HEADER.to_vec();
        spki.extend_from_slice(&point);
        let registration_json = serde_json::to_vec(&json!({
            "id": b64url(&credential_id),
            "rawId": b64url(&credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64url(&reg_cdj),
                "attestationObject": b64url(&att_obj_bytes),
                "authenticatorData": b64url(&reg_auth_data),
                "transports": ["hybrid", "internal"],
                "publicKeyAlgorithm": -7,
                "publicKey": b64url(&spki),
            },
            "clientExtensionResults": {"credProps": {"rk": true}},
        }))
        .map_err(|_| SpeedError::Sample("JSON encoding failed"))?;

        Ok(Samples {
            rp,
            assertion_challenge,
            assertion_json,
            credential_id,
            user_handle,
            key,
            registration_challenge,
            registration_json,
            point,
            message,
            signature,
        })
    }

    fn assertion(&self) -> Result<(), webauthn::Error> {
        let response = AuthenticationResponse::from_json(black_box(&self.assertion_json))?;
        let stored = assertion::StoredCredential {
            id: &self.credential_id,
            public_key: &self.key,
            sign_count: 41,
            backup_eligible: true,
            user_handle: &self.user_handle,
        };
        let exp = assertion::Expectation {
            rp: &self.rp,
            challenge: &self.assertion_challenge,
            user_verification: UserVerification::Required,
            require_user_presence: true,
            discoverable: true,
            allow_payment: false,
        };
        black_box(assertion::verify(&response, &stored, &exp)?);
        Ok(())
    }

    fn registration(
        &self,
        policy: &AttestationPolicy,
        now: SystemTime,
    ) -> Result<(), webauthn::Error> {
        let response = RegistrationResponse::from_json(black_box(&self.registration_json))?;
        let exp = registration::Expectation {
            rp: &self.rp,
            challenge: &self.registration_challenge,
            user_verification: UserVerification::Required,
            require_user_presence: true,
            policy,
            trust_anchors: &[],
            now,
        };
        black_box(registration::verify(&response, &exp)?);
        Ok(())
    }

    fn floor(&self, key: &UnparsedPublicKey<&[u8]>) -> Result<(), webauthn::Error> {
        key.verify(black_box(&self.message), black_box(&self.signature))
            .map_err(|_| webauthn::Error::bad_signature("floor"))
    }
}

/// Work done and time spent on one workload.
#[derive(Default)]
struct Tally {
    count: u64,
    spent: Duration,
}

impl Tally {
    fn per_second(&self) -> f64 {
        let s = self.spent.as_secs_f64();
        if s > 0.0 { self.count as f64 / s } else { 0.0 }
    }
}

/// Runs `f` in batches until `slice` has passed, adding to `tally`.
fn run_slice(tally: &mut Tally, slice: Duration, f: &mut dyn FnMut()) {
    let start = Instant::now();
    loop {
        for _ in 0..BATCH {
            f();
        }
        tally.count += u64::from(BATCH);
        let spent = start.elapsed();
        if spent >= slice {
            tally.spent += spent;
            return;
        }
    }
}

/// Measures for about `seconds` on the calling thread.
pub fn run(seconds: f64) -> Result<Report, SpeedError> {
    let samples = Samples::new()?;
    let policy = AttestationPolicy::default();
    let now = SystemTime::now();
    let floor_key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, samples.point.as_slice());
    // Every sample must be accepted before it is timed.
    let check = |workload: &'static str, r: Result<(), webauthn::Error>| {
        r.map_err(|error| SpeedError::Rejected { workload, error })
    };
    check("floor", samples.floor(&floor_key))?;
    check("assertion", samples.assertion())?;
    check("packed registration", samples.registration(&policy, now))?;

    let mut floor = || {
        let _ = black_box(samples.floor(&floor_key));
    };
    let mut assert = || {
        let _ = black_box(samples.assertion());
    };
    let mut register = || {
        let _ = black_box(samples.registration(&policy, now));
    };
    let mut work: [(&mut dyn FnMut(), Tally); 3] = [
        (&mut floor, Tally::default()),
        (&mut assert, Tally::default()),
        (&mut register, Tally::default()),
    ];

    // Warm caches and the CPU's clock before anything counts.
    for (f, _) in work.iter_mut() {
        run_slice(&mut Tally::default(), SLICE, *f);
    }
    let budget = Duration::from_secs_f64(seconds.max(0.0));
    let start = Instant::now();
    let mut round = 0usize;
    while start.elapsed() < budget || round == 0 {
        // Rotate who goes first, so no workload always follows another.
        for i in 0..work.len() {
            let (f, tally) = &mut work[(round + i) % 3];
            run_slice(tally, SLICE, *f);
        }
        round += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let [(_, floor), (_, assertion), (_, registration)] = work;
    Ok(Report {
        assertion_per_s: assertion.per_second(),
        registration_per_s: registration.per_second(),
        floor_per_s: floor.per_second(),
        seconds: elapsed,
    })
}
