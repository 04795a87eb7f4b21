pub mod audit;
pub mod keys;
pub mod speed;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webauthn;
