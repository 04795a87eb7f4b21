//! Who is calling: the verified client certificate, and the role the
//! configuration gives it.
//!
//! The TLS layer (`api::tls`) has already verified the certificate chain
//! to the configured client CA and checked the CRLs before a request exists;
//! this module only reads identities out of the leaf and maps them to roles.
//! A certificate that chains correctly but matches no rule still connects and
//! gets 403 on every route: authentication and authorization fail apart, so
//! the logs say which one it was.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The four kinds of client, each allowed its own routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    /// Core banking: the ceremonies.
    Rp,
    /// Security officers: key and policy administration.
    Officer,
    /// Read-only access to the audit log.
    Auditor,
    /// Health, readiness and metrics.
    Monitor,
}

impl ApiRole {
    pub const ALL: [ApiRole; 4] = [
        ApiRole::Rp,
        ApiRole::Officer,
        ApiRole::Auditor,
        ApiRole::Monitor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Rp => "rp",
            ApiRole::Officer => "officer",
            ApiRole::Auditor => "auditor",
            ApiRole::Monitor => "monitor",
        }
    }

    pub fn parse(s: &str) -> Option<ApiRole> {
        ApiRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for ApiRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the leaf client certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (DER).
    pub spki_sha256: [u8; 32],
    /// The subject as an RFC 4514 string, e.g. `CN=signet dev rp,O=signet`.
    pub subject: String,
    /// subjectAltName URIs.
    pub san_uris: Vec<String>,
    /// subjectAltName DNS names.
    pub san_dns: Vec<String>,
    /// Serial number, lowercase hex, for logs and audit.
    pub serial_hex: String,
}

/// One `[[clients]]` rule of the configuration: a name for logs and audit,
/// the role granted, and what the certificate must show. Every matcher that
/// is set must match; a rule with none set is refused by the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRule {
    pub name: String,
    pub role: ApiRole,
    pub spki_sha256: Option<[u8; 32]>,
    pub subject: Option<String>,
    pub san_uri: Option<String>,
    pub san_dns: Option<String>,
}

impl ClientRule {
    pub fn matches(&self, id: &PeerIdentity) -> bool {
        let spki = self
            .spki_sha256
            .is_none_or(|pin| crate::webauthn::constant_time_eq(&pin, &id.spki_sha256));
        let subject = self.subject.as_ref().is_none_or(|s| *s == id.subject);
        let uri = self
            .san_uri
            .as_ref()
            .is_none_or(|u| id.san_uris.iter().any(|x| x == u));
        let dns = self
            .san_dns
            .as_ref()
            .is_none_or(|d| id.san_dns.iter().any(|x| x.eq_ignore_ascii_case(d)));
        spki && subject && uri && dns
    }
}

/// The caller of one request, as handlers see it (a request extension put
/// there by the connection layer).
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: PeerIdentity,
    /// The first matching rule's name and role; `None` for a certificate
    /// that chains to the CA but matches no rule.
    pub grant: Option<(String, ApiRole)>,
}

impl Caller {
    /// Resolves the first matching rule (configuration order).
    pub fn resolve(identity: PeerIdentity, rules: &[ClientRule]) -> Caller {
        let grant = rules
            .iter()
            .find(|r| r.matches(&identity))
            .map(|r| (r.name.clone(), r.role));
        Caller { identity, grant }
    }

    pub fn role(&self) -> Option<ApiRole> {
        self.grant.as_ref().map(|(_, r)| *r)
    }

    /// The name recorded in logs and the audit log: the rule's name, or the
    /// certificate's subject when no rule matched.
    pub fn actor(&self) -> String {
        match &self.grant {
            Some((name, _)) => format!("client:{name}"),
            None => format!("unmapped:{}", self.identity.subject),
        }
    }

    /// The key for per-client limits: the SPKI pin, stable across
    /// certificate renewals that keep the key.
    pub fn limit_key(&self) -> [u8; 32] {
        self.identity.spki_sha256
    }
}
