//! Trust decisions that are the bank's to make, kept apart from the
//! WebAuthn engine (which decides only what the specification decides).
//!
//! Today: what FIDO metadata says about a registering authenticator
//! ([`metadata`]). Trust tiers and per-action policy (issue 5) join here.

pub mod metadata;
pub mod tiers;
