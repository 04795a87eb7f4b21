//! Fixtures shared by the integration tests: real SoftHSM tokens and real
//! swtpm instances, each private to the test that made it.
#![allow(dead_code)]

#[cfg(feature = "testkit")]
pub mod ceremony;
pub mod dev_up;
pub mod docs;
pub mod flows;
#[cfg(feature = "testkit")]
pub mod load;
pub mod pg_store;
pub mod pki;
pub mod postgres;
#[cfg(feature = "testkit")]
pub mod race;
pub mod server;
pub mod softhsm;
pub mod swtpm;

use std::sync::Arc;

use signet::keys::{KeyBackend, KeyRing};

/// A device a key-layer test can run against.
pub trait Device {
    fn backend(&self) -> Arc<dyn KeyBackend>;
    fn ring(&self) -> KeyRing {
        KeyRing::new(self.backend())
    }
}

impl Device for softhsm::SoftHsm {
    fn backend(&self) -> Arc<dyn KeyBackend> {
        Arc::new(
            signet::keys::pkcs11::Pkcs11Backend::open(&self.settings())
                .expect("open SoftHSM token"),
        )
    }
}

impl Device for swtpm::Swtpm {
    fn backend(&self) -> Arc<dyn KeyBackend> {
        Arc::new(signet::keys::tpm::TpmBackend::open(&self.settings()).expect("open swtpm"))
    }
}
