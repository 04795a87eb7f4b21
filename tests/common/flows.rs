//! The flows in process, without a server: `Services` over a real store
//! and key ring, with a minimal configuration, so a test injects the time.

use std::path::Path;
use std::sync::Arc;

use signet::config::{Config, Overrides};
use signet::flows::Services;
use signet::keys::KeyRing;
use signet::store::SledStore;

/// The configuration every in-process test starts from (the files it
/// names are never read by the flows).
pub const CONFIG: &str = r#"
[tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
[[clients]]
name = "core"
role = "rp"
san_uri = "urn:signet:role:rp"
[rp]
id = "localhost"
origins = ["https://localhost"]
[store]
data_dir = "data"
[keys]
profile = "profile.toml"
"#;

/// `Services` over `store` and `ring` (provisioned here), with [`CONFIG`]
/// plus `extra` TOML and the policy `policy_text`.
pub fn services(ring: KeyRing, store: Arc<SledStore>, extra: &str, policy_text: &str) -> Services {
    ring.init().expect("provision keys");
    let config = Config::parse(
        &format!("{CONFIG}{extra}"),
        Path::new("/etc/signet/signet.toml"),
        &Overrides::default(),
    )
    .expect("config");
    let policy = signet::policy::tiers::Policy::parse(policy_text).expect("policy");
    Services::new(&config, store, Arc::new(ring), policy)
}

/// A passkey of the authenticator model `aaguid` (text form) registered
/// for `name` through the flows at `at`, without attestation (the test
/// policies give tiers by AAGUID). Origin `https://localhost`.
#[cfg(feature = "testkit")]
pub fn passkey(
    s: &Services,
    name: &str,
    aaguid: &str,
    at: std::time::SystemTime,
) -> signet::testkit::SoftAuthenticator {
    use serde_json::json;
    use signet::flows::ceremony;
    use signet::testkit::{Attestation, Ceremony, SoftAuthenticator};
    use signet::webauthn::{CoseAlgorithm, b64url_decode};

    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    auth.aaguid = signet::webauthn::parse_uuid(aaguid).expect("aaguid");
    let options = ceremony::registration_options(s, &json!({ "user": { "name": name } }), at)
        .expect("options");
    auth.user_handle = b64url_decode(
        "id",
        options["publicKey"]["user"]["id"].as_str().expect("id"),
        64,
    )
    .expect("user id");
    let parts = auth.register(
        &Ceremony::new(
            "localhost",
            "https://localhost",
            &super::ceremony::challenge_of(&options),
        ),
        &Attestation::None,
    );
    ceremony::registration_verify(
        s,
        &json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
        "test",
        at,
    )
    .expect("registered");
    auth
}
