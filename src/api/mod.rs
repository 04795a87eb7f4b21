//! The HTTP API: mutual TLS only, JSON in and out, one router per resource.
//!
//! # Model
//!
//! A connection exists only after rustls has verified the client's
//! certificate chain to the configured CA and checked the CRLs
//! (`tls`). The connection layer (`server`) reads the certificate's
//! identities once and attaches a [`crate::identity::Caller`] to every
//! request on that connection; each route names the roles it accepts and
//! refuses every other caller with 403. Handlers are thin: they decode the
//! body, call a plain function in [`crate::flows`] on a blocking thread
//! (the store fsyncs and the HSM blocks), and encode the answer. Every
//! failure leaves as RFC 9457 `application/problem+json` (`problem`).
