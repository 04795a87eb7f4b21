//! Trust decisions that are the bank's to make, kept apart from the
//! WebAuthn engine (which decides only what the specification decides).
//!
//! - [`metadata`]: what FIDO metadata says about a registering
//!   authenticator (status reports, attestation types, algorithms);
//! - [`tiers`]: the policy file, and the trust tier 1-4 a credential earns;
//! - [`actions`]: what each action (login, payee change, payment by amount)
//!   asks of the credential, and the allow / step-up / deny decision;
//! - [`amount`]: exact decimal amounts for payment thresholds.
//!
//! Nothing here does I/O except [`tiers::Policy::load`]; the flows own the
//! policy in force and its reloads.

pub mod actions;
pub mod amount;
pub mod metadata;
pub mod tiers;
