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
