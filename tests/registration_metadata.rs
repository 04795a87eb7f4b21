//! Registration against the FIDO metadata catalog: the flow with a real
//! store and a real SoftHSM key ring, the catalog written through the
//! store's own API, attestations made by the testkit with real PKIs.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use serde_json::{Value, json};
use signet::flows::{FlowError, Services, ceremony};
use signet::store::{CatalogInfo, MetadataEntry, SledStore, Store};
use signet::testkit::pki::TestPki;
use signet::testkit::{Attestation, Ceremony, SoftAuthenticator};
use signet::webauthn::{CoseAlgorithm, b64url_decode};

use common::Device;

const RP_ID: &str = "localhost";
const ORIGIN: &str = "https://localhost";
const AAGUID: [u8; 16] = [0x4c; 16];

struct Fixture {
    _hsm: common::softhsm::SoftHsm,
    _dir: tempfile::TempDir,
    store: Arc<SledStore>,
    services: Services,
    catalog_no: u64,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_policy(signet::policy::tiers::BUILTIN)
    }

    fn with_policy(text: &str) -> Fixture {
        let hsm = common::softhsm::SoftHsm::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
        let services = common::flows::services(hsm.ring(), store.clone(), "", text);
        Fixture {
            _hsm: hsm,
            _dir: dir,
            store,
            services,
            catalog_no: 0,
        }
    }

    /// Installs a catalog of `entries` (stored JSON documents).
    fn catalog(&mut self, entries: Vec<MetadataEntry>) {
        self.catalog_no += 1;
        let info = CatalogInfo {
            no: self.catalog_no,
            next_update_ms: 0,
            entries: entries.len() as u64,
            installed_ms: 0,
            source: "test".into(),
            blob_sha256: [0; 32],
        };
        self.store
            .replace_metadata(&info, &entries)
            .expect("install catalog");
    }

    /// Options, then the authenticator's registration response, verified.
    fn register(
        &self,
        auth: &SoftAuthenticator,
        attestation: &Attestation<'_>,
        name: &str,
    ) -> Result<Value, FlowError> {
        let now = SystemTime::now();
        let options = ceremony::registration_options(
            &self.services,
            &json!({ "user": { "name": name }, "attestation": "direct" }),
            now,
        )
        .expect("options");
        let challenge = common::ceremony::challenge_of(&options);
        let parts = auth.register(&Ceremony::new(RP_ID, ORIGIN, &challenge), attestation);
        ceremony::registration_verify(
            &self.services,
            &json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
            "test",
            now,
        )
    }
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// A stored entry as `signet mds import` writes it.
fn entry(
    aaguid: Option<[u8; 16]>,
    key_ids: Vec<String>,
    roots: &[&[u8]],
    statuses: &[&str],
    types: &[&str],
    algs: &[&str],
) -> MetadataEntry {
    let doc = json!({
        "metadataStatement": {
            "description": "Test Key 5",
            "attestationTypes": types,
            "authenticationAlgorithms": algs,
            "attestationRootCertificates": roots.iter().map(|r| b64(r)).collect::<Vec<_>>(),
        },
        "statusReports": statuses.iter().enumerate().map(|(i, s)| json!({
            "status": s, "effectiveDate": format!("2024-0{}-01", i + 1)
        })).collect::<Vec<_>>(),
    });
    MetadataEntry {
        aaguid: aaguid.map(|a| a.to_vec()),
        aaid: None,
        key_ids,
        entry: serde_json::to_vec(&doc).expect("JSON"),
    }
}

fn packed_pki() -> (TestPki, SoftAuthenticator) {
    let pki = TestPki::packed(SystemTime::now(), AAGUID);
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    auth.aaguid = AAGUID;
    (pki, auth)
}

fn refused_by_policy(result: Result<Value, FlowError>, needle: &str) {
    match result {
        Err(FlowError::Ceremony(e)) => {
            assert_eq!(e.kind(), "policy", "{e}");
            assert_eq!(e.field(), "credential.response.attestationObject", "{e}");
            assert!(e.to_string().contains(needle), "expected {needle:?} in {e}");
        }
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

#[test]
fn without_metadata_a_full_attestation_is_accepted_but_not_trusted() {
    let f = Fixture::new();
    let (pki, auth) = packed_pki();
    let answer = f
        .register(&auth, &pki.packed_attestation(), "u")
        .expect("registered");
    assert_eq!(answer["attestationType"], "basic");
    assert_eq!(answer["attestationTrusted"], false);
    assert_eq!(answer["authenticator"], Value::Null);
}

#[test]
fn the_metadata_root_anchors_the_attestation() {
    let mut f = Fixture::new();
    let (pki, auth) = packed_pki();
    f.catalog(vec![entry(
        Some(AAGUID),
        vec![],
        &[&pki.root.der],
        &["FIDO_CERTIFIED_L1", "UPDATE_AVAILABLE"],
        &["basic_full"],
        &["secp256r1_ecdsa_sha256_raw"],
    )]);
    let answer = f
        .register(&auth, &pki.packed_attestation(), "u")
        .expect("registered");
    assert_eq!(answer["attestationTrusted"], true);
    assert_eq!(answer["authenticator"], "Test Key 5");

    // Another PKI's root in the metadata: the chain does not reach it.
    let (other, auth) = packed_pki();
    match f.register(&auth, &other.packed_attestation(), "v") {
        Err(FlowError::Ceremony(e)) => assert_eq!(e.kind(), "certificate_path", "{e}"),
        r => panic!("expected a certificate path refusal, got {r:?}"),
    }
}

#[test]
fn compromise_and_revocation_anywhere_in_the_history_refuse() {
    for status in [
        "USER_VERIFICATION_BYPASS",
        "ATTESTATION_KEY_COMPROMISE",
        "USER_KEY_REMOTE_COMPROMISE",
        "USER_KEY_PHYSICAL_COMPROMISE",
        "REVOKED",
    ] {
        let mut f = Fixture::new();
        let (pki, auth) = packed_pki();
        // Reported, then followed by an update: still refused.
        f.catalog(vec![entry(
            Some(AAGUID),
            vec![],
            &[&pki.root.der],
            &["FIDO_CERTIFIED_L1", status, "UPDATE_AVAILABLE"],
            &["basic_full"],
            &[],
        )]);
        refused_by_policy(f.register(&auth, &pki.packed_attestation(), "u"), status);
        // A self-asserted AAGUID of that model (attestation none) too.
        refused_by_policy(f.register(&auth, &Attestation::None, "w"), status);
    }
}

#[test]
fn attestation_type_and_algorithm_must_be_the_statements() {
    let mut f = Fixture::new();
    let (pki, auth) = packed_pki();
    f.catalog(vec![entry(
        Some(AAGUID),
        vec![],
        &[&pki.root.der],
        &["FIDO_CERTIFIED_L2"],
        &["basic_surrogate"],
        &[],
    )]);
    refused_by_policy(
        f.register(&auth, &pki.packed_attestation(), "u"),
        "basic_full",
    );

    f.catalog(vec![entry(
        Some(AAGUID),
        vec![],
        &[&pki.root.der],
        &["FIDO_CERTIFIED_L2"],
        &["basic_full"],
        &["rsassa_pkcsv15_sha256_raw"],
    )]);
    refused_by_policy(f.register(&auth, &pki.packed_attestation(), "v"), "ES256");

    // Self attestation is basic_surrogate.
    f.catalog(vec![entry(
        Some(AAGUID),
        vec![],
        &[],
        &["FIDO_CERTIFIED_L1"],
        &["basic_surrogate"],
        &["secp256r1_ecdsa_sha256_raw"],
    )]);
    let answer = f
        .register(&auth, &Attestation::PackedSelf, "w")
        .expect("self attestation of a basic_surrogate model");
    assert_eq!(answer["attestationType"], "self");
    assert_eq!(answer["attestationTrusted"], false);
}

#[test]
fn u2f_models_are_found_by_attestation_key_identifier() {
    let mut f = Fixture::new();
    let pki = TestPki::fido_u2f(SystemTime::now());
    let auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let cert = pki.leaf.cert();
    let key_bits = cert
        .tbs()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &key_bits);
    let key_id: String = sha1.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    f.catalog(vec![entry(
        None,
        vec![key_id],
        &[&pki.root.der],
        &["FIDO_CERTIFIED"],
        &["basic_full"],
        &["secp256r1_ecdsa_sha256_raw"],
    )]);
    let answer = f
        .register(&auth, &pki.fido_u2f_attestation(), "u")
        .expect("registered");
    assert_eq!(answer["fmt"], "fido-u2f");
    assert_eq!(answer["attestationTrusted"], true);
    assert_eq!(answer["authenticator"], "Test Key 5");
}

/// A stored entry with key protection, as a certified hardware key has.
fn hardware_entry(root: &[u8], level: &str) -> MetadataEntry {
    let doc = json!({
        "metadataStatement": {
            "description": "Hardware Key",
            "attestationTypes": ["basic_full"],
            "keyProtection": ["hardware", "secure_element"],
            "attestationRootCertificates": [b64(root)],
        },
        "statusReports": [{ "status": level, "effectiveDate": "2024-01-01" }],
    });
    MetadataEntry {
        aaguid: Some(AAGUID.to_vec()),
        aaid: None,
        key_ids: vec![],
        entry: serde_json::to_vec(&doc).expect("JSON"),
    }
}

#[test]
fn tiers_are_recorded_and_the_registration_policy_applies() {
    let mut f = Fixture::with_policy("version = \"bank-7\"\n[registration]\ntier4 = \"reject\"\n");
    // Unknown model: tier 4, refused by this policy, naming version and reason.
    let auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    refused_by_policy(
        f.register(&auth, &Attestation::None, "unknown"),
        "policy bank-7 rejects tier 4",
    );

    // A certified L2 hardware key, attested, device-bound: tier 1.
    let (pki, auth) = packed_pki();
    f.catalog(vec![hardware_entry(&pki.root.der, "FIDO_CERTIFIED_L2")]);
    let answer = f
        .register(&auth, &pki.packed_attestation(), "t1")
        .expect("tier 1");
    assert_eq!(answer["tier"], 1, "{answer}");
    assert_eq!(answer["marked"], false);
    assert_eq!(answer["policyVersion"], "bank-7");
    let credential_id = answer["credentialId"].as_str().expect("id");
    let id = b64url_decode("id", credential_id, 1024).expect("id");
    let stored = f.store.credential(&id).expect("read").expect("stored");
    assert_eq!(stored.tier, Some(1));
    assert_eq!(stored.policy_version.as_deref(), Some("bank-7"));
    assert!(!stored.tier_reasons.is_empty());

    // The same model claimed with attestation none: self-asserted, tier 3.
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    auth.aaguid = AAGUID;
    let answer = f.register(&auth, &Attestation::None, "t3").expect("tier 3");
    assert_eq!(answer["tier"], 3, "{answer}");
    assert_eq!(answer["attestationTrusted"], false);
}

#[test]
fn the_builtin_policy_accepts_unknown_models_marked() {
    let f = Fixture::new();
    let auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let answer = f
        .register(&auth, &Attestation::None, "u")
        .expect("registered");
    assert_eq!(answer["tier"], 4);
    assert_eq!(answer["marked"], true);
}
