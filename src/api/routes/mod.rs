//! One router per resource; each names the roles it accepts.

pub mod audit;
pub mod ceremonies;
pub mod credentials;
pub mod devices;
pub mod events;
pub mod keys;
pub mod openapi;
pub mod ops;
pub mod pairings;
pub mod policy;
pub mod transactions;
