//! An MDS update that newly reports a model compromised: its credentials
//! are flagged and refused, new registrations of it are refused, and core
//! banking reads it all from `GET /v1/events`. Real server, real
//! conformance BLOB (whose AAGUID 3124626c-... reports
//! ATTESTATION_KEY_COMPROMISE), real store.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use signet::testkit::{Attestation, Ceremony, SoftAuthenticator};
use signet::webauthn::{CoseAlgorithm, b64url_decode};

use common::server::{ORIGIN, RP_ID, SignetServer, signet_bin};

const COMPROMISED: &str = "3124626c-73ba-4001-9924-4910d31b4b80";

fn aaguid(text: &str) -> [u8; 16] {
    signet::webauthn::parse_uuid(text).expect("uuid")
}

fn challenge_of(options: &Value) -> Vec<u8> {
    let text = options["publicKey"]["challenge"]
        .as_str()
        .expect("challenge");
    b64url_decode("challenge", text, 64).expect("challenge")
}

fn register(server: &SignetServer, name: &str, model: [u8; 16]) -> (u16, Value, SoftAuthenticator) {
    let (status, options) = server.post(
        "rp",
        "/v1/registrations/options",
        &json!({ "user": { "name": name } }),
    );
    assert_eq!(status, 200, "{options}");
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    auth.aaguid = model;
    let uid = options["publicKey"]["user"]["id"]
        .as_str()
        .expect("user id");
    auth.user_handle = b64url_decode("user.id", uid, 64).expect("user id");
    let parts = auth.register(
        &Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)),
        &Attestation::None,
    );
    let (status, answer) = server.post(
        "rp",
        "/v1/registrations/verify",
        &json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
    );
    (status, answer, auth)
}

fn authenticate(server: &SignetServer, name: &str, auth: &mut SoftAuthenticator) -> (u16, Value) {
    let (status, options) = server.post(
        "rp",
        "/v1/authentications/options",
        &json!({ "user": { "name": name } }),
    );
    assert_eq!(status, 200, "{options}");
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)));
    server.post(
        "rp",
        "/v1/authentications/verify",
        &json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
    )
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
    let mds = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/vectors/mds"
    ));
    let out = Command::new(signet_bin())
        .args(["mds", "import"])
        .arg(mds.join("test-blob.jwt"))
        .arg("--root")
        .arg(mds.join("conformance-mds3-root.pem"))
        .args(["--at", "2022-11-08T00:00:00Z", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .expect("mds import");
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
    let (status, body) = authenticate(&server, "bystander", &mut bystander_auth);
    assert_eq!(status, 200, "{body}");

    // A discoverable login with the flagged credential is refused too.
    let (status, options) = server.post("rp", "/v1/authentications/options", &json!({}));
    assert_eq!(status, 200);
    let parts = victim_auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)));
    let (status, body) = server.post(
        "rp",
        "/v1/authentications/verify",
        &json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
    );
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
