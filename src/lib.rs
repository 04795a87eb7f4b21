pub mod keys;
pub mod speed;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webauthn;
