//! An MDS update that newly reports a model compromised: its credentials
//! are flagged and refused, new registrations of it are refused, and core
//! banking reads it all from `GET /v1/events`. Real server, real
//! conformance BLOB (whose AAGUID 3124626c-... reports
//! ATTESTATION_KEY_COMPROMISE), real store.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use signet::testkit::SoftAuthenticator;
use signet::webauthn::CoseAlgorithm;

use common::ceremony::{self, authenticate};
use common::server::{SignetServer, signet_bin};

const COMPROMISED: &str = "3124626c-73ba-4001-9924-4910d31b4b80";
/// The conformance MDS BLOB (`test-blob.jwt`) and its root.
const MDS_VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/mds");

fn aaguid(text: &str) -> [u8; 16] {
    signet::webauthn::parse_uuid(text).expect("uuid")
}

/// Registers a fresh authenticator of model `model` for `name`.
fn register(server: &SignetServer, name: &str, model: [u8; 16]) -> (u16, Value, SoftAuthenticator) {
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    auth.aaguid = model;
    ceremony::register(server, &json!({ "user": { "name": name } }), auth)
}

/// `signet mds import` of the conformance BLOB (which reports
/// [`COMPROMISED`]) into the stopped `server`'s data directory.
fn import_conformance_blob(server: &SignetServer) -> Output {
    let mds = Path::new(MDS_VECTORS);
    Command::new(signet_bin())
        .args(["mds", "import"])
        .arg(mds.join("test-blob.jwt"))
        .arg("--root")
        .arg(mds.join("conformance-mds3-root.pem"))
        .args(["--at", "2022-11-08T00:00:00Z", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .expect("mds import")
}

#[test]
fn a_newly_compromised_model_is_flagged_refused_and_reported() {
    let mut server = SignetServer::start();
    let (status, victim, mut victim_auth) = register(&server, "victim", aaguid(COMPROMISED));
    assert_eq!(status, 200, "{victim}");
    let (status, bystander, mut bystander_auth) = register(
        &server,
        "bystander",
        aaguid("11111111-2222-3333-4444-555555555555"),
    );
    assert_eq!(status, 200, "{bystander}");

    // The officer installs the catalog that reports the compromise.
    let (stopped, log) = server.stop();
    assert!(stopped.success(), "{log}");
    let out = import_conformance_blob(&server);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("flagged       1 credential"), "{stderr}");
    assert!(stderr.contains(COMPROMISED), "{stderr}");
    server.spawn();

    // Core banking reads what happened.
    let (status, page) = server.get("rp", "/v1/events");
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().expect("events");
    let changed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "mds.status_changed")
        .collect();
    assert_eq!(
        changed.len(),
        8,
        "the conformance BLOB refuses 8 models: {page}"
    );
    assert!(
        changed.iter().any(|e| e["subject"] == COMPROMISED
            && e["detail"]["status"] == "ATTESTATION_KEY_COMPROMISE")
    );
    let flagged: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "credential.flagged")
        .collect();
    assert_eq!(flagged.len(), 1, "{page}");
    assert_eq!(flagged[0]["subject"], victim["credentialId"]);
    assert_eq!(flagged[0]["detail"]["userId"], victim["userId"]);
    assert!(
        flagged[0]["detail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ATTESTATION_KEY_COMPROMISE")),
        "{page}"
    );
    // The cursor moves on: nothing new after `next`.
    let next = page["next"].as_u64().expect("next");
    let (_, later) = server.get("rp", &format!("/v1/events?after={next}"));
    assert_eq!(later["events"], json!([]), "{later}");
    let (_, one) = server.get("rp", "/v1/events?limit=1");
    assert_eq!(one["events"].as_array().map(Vec::len), Some(1));
    let (status, body) = server.get("rp", "/v1/events?after=x");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "after");

    // The flagged credential is no longer offered: the victim has no
    // usable credential left, so options are refused naming the user.
    let (status, body) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": "victim" } }),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["field"], "user.name");
    // The other user's credential still works.
    let (status, options) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": "bystander" } }),
    );
    assert_eq!(status, 200, "{options}");
    let (status, body) = authenticate(&server, &options, &mut bystander_auth);
    assert_eq!(status, 200, "{body}");

    // A discoverable login with the flagged credential is refused too.
    let (status, options) = server.post("rp", "/v1/authentications/options", &json!({}));
    assert_eq!(status, 200);
    let (status, body) = authenticate(&server, &options, &mut victim_auth);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:signet:problem:credential-flagged");

    // New registrations of the model are refused.
    let (status, body, _) = register(&server, "newcomer", aaguid(COMPROMISED));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ATTESTATION_KEY_COMPROMISE")),
        "{body}"
    );

    // The listing shows the flag.
    let uid = victim["userId"].as_str().expect("user id");
    let (_, listing) = server.get("rp", &format!("/v1/users/{uid}/credentials"));
    assert!(
        listing["credentials"][0]["flagged"]
            .as_str()
            .is_some_and(|f| f.contains("ATTESTATION_KEY_COMPROMISE")),
        "{listing}"
    );
}

/// A flagged credential under an action that says `flagged = "step-up"`:
/// the assertion verifies, and the answer is step-up naming the flag.
#[test]
fn an_action_may_step_flagged_credentials_up_instead_of_denying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_file = dir.path().join("policy.toml");
    let base = signet::policy::tiers::BUILTIN;
    std::fs::write(&policy_file, base).expect("write policy");
    let mut server = SignetServer::start_with(&format!(
        "[policy]\nfile = \"{}\"\nreload_interval_s = 3600\n",
        policy_file.display()
    ));
    let (status, victim, mut auth) = register(&server, "victim", aaguid(COMPROMISED));
    assert_eq!(status, 200, "{victim}");
    server.stop();
    let out = import_conformance_blob(&server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.spawn();

    let stepped = format!("{base}\n[actions.review]\nflagged = \"step-up\"\n");
    let (_, current) = server.get("officer", "/v1/policy");
    let (status, body) = server.put(
        "officer",
        "/v1/policy",
        &json!({ "policy": stepped, "replaces": current["sha256"] }),
    );
    assert_eq!(status, 200, "{body}");

    // The default action still denies; `review` steps up.
    let (status, options) = server.post("rp", "/v1/authentications/options", &json!({}));
    assert_eq!(status, 200);
    let (status, body) = authenticate(&server, &options, &mut auth);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:signet:problem:credential-flagged");

    let (status, body) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": "victim" }, "action": "review" }),
    );
    assert_eq!(status, 403, "named user: step-up at options time: {body}");
    assert_eq!(body["type"], "urn:signet:problem:step-up-required");
    let (status, options) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "action": "review" }),
    );
    assert_eq!(status, 200);
    let (status, body) = authenticate(&server, &options, &mut auth);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:signet:problem:step-up-required");
    assert_eq!(body["credentialId"], victim["credentialId"]);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("flagged") && r.contains("ATTESTATION_KEY_COMPROMISE")),
        "{body}"
    );
}

/// Flagging reads the installed catalog, not only the diff: a credential
/// the flagging after an install never reached (a crash, a full disk) is
/// flagged by the next run, once, and a run with nothing to do flags none.
#[test]
fn flagging_completes_a_run_that_was_cut_short() {
    use signet::flows::metadata;
    use signet::store::{CredentialRecord, SledStore, Store, User};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
    let mds = Path::new(MDS_VECTORS);
    let jwt = std::fs::read(mds.join("test-blob.jwt")).expect("blob");
    let roots =
        metadata::load_roots(Some(&mds.join("conformance-mds3-root.pem")), "root").expect("root");
    let at = signet::rfc3339::parse("2022-11-08T00:00:00Z").expect("time");
    let report = metadata::install(
        store.as_ref(),
        &dir.path().join("data"),
        &metadata::BlobInput {
            jwt: &jwt,
            roots: &roots,
            crls: &[],
            at,
            source: "test-blob.jwt",
        },
        at,
    )
    .expect("install");
    assert!(!report.newly_refused.is_empty());

    // Credentials the interrupted run did not reach.
    store
        .put_user(&User {
            id: b"user".to_vec(),
            name: "victim".into(),
            display_name: "Victim".into(),
            created_ms: 0,
        })
        .expect("user");
    let credential = |id: &[u8], model: [u8; 16]| CredentialRecord {
        id: id.to_vec(),
        user_id: b"user".to_vec(),
        public_key_cose: vec![0xa0],
        sign_count: 0,
        backup_eligible: false,
        backup_state: false,
        aaguid: model,
        fmt: "packed".into(),
        attestation_type: "basic".into(),
        transports: Vec::new(),
        created_ms: 0,
        last_used_ms: None,
        flagged: None,
        tier: Some(3),
        tier_reasons: Vec::new(),
        policy_version: Some("p".into()),
        marked: false,
        attested: false,
        metadata_key_id: None,
        device_id: None,
        disabled: None,
    };
    store
        .insert_credential(&credential(b"victim-credential-1", aaguid(COMPROMISED)))
        .expect("insert");
    store
        .insert_credential(&credential(
            b"bystander-credential",
            aaguid("11111111-2222-3333-4444-555555555555"),
        ))
        .expect("insert");

    let audit = signet::audit::AuditLog::new(
        store.clone(),
        signet::audit::CheckpointPolicy {
            every_records: 0,
            every_ms: 0,
        },
    );
    let n = metadata::flag_refused(store.as_ref(), &audit, None, "test", at).expect("flag");
    assert_eq!(n, 1);
    let victim = store
        .credential(b"victim-credential-1")
        .expect("read")
        .expect("present");
    assert!(
        victim
            .flagged
            .as_deref()
            .is_some_and(|f| f.contains("ATTESTATION_KEY_COMPROMISE")),
        "{victim:?}"
    );
    assert_eq!(
        store
            .credential(b"bystander-credential")
            .expect("read")
            .expect("present")
            .flagged,
        None
    );
    // Idempotent: nothing left to flag, nothing audited twice.
    let n = metadata::flag_refused(store.as_ref(), &audit, None, "test", at).expect("flag");
    assert_eq!(n, 0);
    let flagged_events = store
        .audit_range(1, 100)
        .expect("audit")
        .iter()
        .filter(|e| String::from_utf8_lossy(&e.body).contains("credential.flagged"))
        .count();
    assert_eq!(flagged_events, 1);
}
