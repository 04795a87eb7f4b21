//! The server's TLS configuration (mutual TLS) and the identity read out of
//! a verified client certificate.
//!
//! # Model
//!
//! - **One provider, chosen here.** Everything (handshake, certificate and
//!   CRL signatures) uses `rustls::crypto::aws_lc_rs::default_provider()`,
//!   never the process default, so no other crate can change what the
//!   appliance accepts.
//! - **TLS 1.3 always; TLS 1.2 only if `tls.tls12`**, and then only the
//!   ECDHE + AEAD (GCM, ChaCha20-Poly1305) suites, filtered by name here so
//!   that stays true whatever a provider update adds.
//! - **A client certificate is required.** rustls verifies the chain to
//!   `tls.client_ca` before any HTTP byte is read; no certificate, an
//!   unknown issuer, an expired or a revoked certificate ends the handshake
//!   with an alert.
//! - **Revocation (`tls.crls`) is checked for the whole chain** (every
//!   certificate except the trust anchor), an unknown status is a failure,
//!   and so is a CRL past its nextUpdate. With one CA and one CRL that CA
//!   signed, the chain below the anchor is the leaf alone, so one CRL is
//!   enough; a deployment with intermediates must list a CRL from each
//!   issuer, or every client fails closed. A CRL already stale (or without a
//!   nextUpdate) is refused at load; one that goes stale while the server
//!   runs fails every handshake until a fresh one is installed and the
//!   server restarted. With no CRL configured, nothing is checked for
//!   revocation (a warning is logged).
//! - **No session resumption.** A resumed session would skip the chain and
//!   CRL checks; full handshakes are cheap next to keep-alive connections.
//! - **Errors name the key** (`tls.cert`, `tls.key`, `tls.client_ca`,
//!   `tls.crls[N]`), like every configuration error. Files are read up to
//!   [`PKI_FILE_MAX`] bytes.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use der::{Decode, Encode};
use rustls::crypto::{CryptoProvider, KeyExchangeAlgorithm};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, RootCertStore, ServerConfig, SupportedCipherSuite};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::config::{ConfigError, TlsSettings};
use crate::identity::PeerIdentity;

/// Largest certificate, key or CRL file read.
pub const PKI_FILE_MAX: u64 = 1024 * 1024;

/// The TLS 1.2 suites offered when `tls.tls12` is set: ECDHE key exchange
/// with an AEAD, nothing else.
const TLS12_ALLOWED: [CipherSuite; 6] = [
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The crypto provider of the server: aws-lc-rs, with TLS 1.2 suites cut to
/// ECDHE + AEAD (or removed when `tls12` is false).
pub fn server_provider(tls12: bool) -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|suite| match suite {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(s) => {
            tls12 && s.kx == KeyExchangeAlgorithm::ECDHE && TLS12_ALLOWED.contains(&s.common.suite)
        }
    });
    provider
}

/// Builds the server's rustls configuration from `[tls]`: the server chain
/// and key, the client CA bundle and the CRLs, checked as described in the
/// module documentation.
pub fn server_config(tls: &TlsSettings) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(server_provider(tls.tls12));
    let now = SystemTime::now();

    // The server's own chain and key.
    let chain = load_certs(&tls.cert, "tls.cert")?;
    check_server_validity(&chain[0], now)?;
    let key = load_key(&tls.key)?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        ConfigError::new(
            "tls.key",
            format!("{} is not a usable private key: {e}", tls.key.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        ConfigError::new(
            "tls.key",
            format!(
                "{} does not match the certificate in {} ({e})",
                tls.key.display(),
                tls.cert.display()
            ),
        )
    })?;

    // Who may connect.
    let mut roots = RootCertStore::empty();
    for (i, ca) in load_certs(&tls.client_ca, "tls.client_ca")?
        .into_iter()
        .enumerate()
    {
        roots.add(ca).map_err(|e| {
            ConfigError::new(
                "tls.client_ca",
                format!(
                    "certificate #{} of {} is not a usable trust anchor: {e}",
                    i + 1,
                    tls.client_ca.display()
                ),
            )
        })?;
    }
    let roots = Arc::new(roots);

    let mut crls = Vec::new();
    for (i, path) in tls.crls.iter().enumerate() {
        let key = format!("tls.crls[{i}]");
        for crl in load_crls(path, &key, now)? {
            // Parse each CRL as the verifier will, so an error names its key.
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls([crl.clone()])
                .build()
                .map_err(|e| {
                    ConfigError::new(
                        key.as_str(),
                        format!("{} is not a usable CRL: {e}", path.display()),
                    )
                })?;
            crls.push(crl);
        }
    }
    if crls.is_empty() {
        tracing::warn!("tls.crls is empty: client certificates are not checked for revocation");
    }

    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| ConfigError::new("tls.client_ca", e.to_string()))?;

    let versions: &[&rustls::SupportedProtocolVersion] = if tls.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| ConfigError::new("tls.tls12", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// Reads what the configuration needs from the verified leaf certificate.
pub fn peer_identity(leaf_der: &[u8]) -> Result<PeerIdentity, String> {
    let cert = Certificate::from_der(leaf_der).map_err(|e| format!("certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    let spki = tbs
        .subject_public_key_info()
        .to_der()
        .map_err(|e| format!("subjectPublicKeyInfo: {e}"))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
    let spki_sha256: [u8; 32] = digest
        .as_ref()
        .try_into()
        .map_err(|_| "SHA-256 is not 32 bytes".to_string())?;

    let mut san_uris = Vec::new();
    let mut san_dns = Vec::new();
    let san = tbs
        .get_extension::<SubjectAltName>()
        .map_err(|e| format!("subjectAltName: {e}"))?;
    if let Some((_critical, SubjectAltName(names))) = san {
        for name in names {
            match name {
                GeneralName::UniformResourceIdentifier(u) => san_uris.push(u.to_string()),
                GeneralName::DnsName(d) => san_dns.push(d.to_string()),
                _ => {}
            }
        }
    }

    Ok(PeerIdentity {
        spki_sha256,
        subject: tbs.subject().to_string(),
        san_uris,
        san_dns,
        serial_hex: hex(tbs.serial_number().as_bytes()),
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(crate) fn read_bounded(path: &Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    crate::files::read_bounded(path, PKI_FILE_MAX).map_err(|e| ConfigError::new(key, e))
}

/// The PEM certificates of `path`, at least one.
fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read_bounded(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(key, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        Certificate::from_der(c).map_err(|e| {
            ConfigError::new(
                key,
                format!(
                    "certificate #{} of {} does not parse: {e}",
                    i + 1,
                    path.display()
                ),
            )
        })?;
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let key = "tls.key";
    let bytes = read_bounded(path, key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        ConfigError::new(
            key,
            format!(
                "{} holds no PEM private key (PKCS#8, SEC1 or PKCS#1): {e}",
                path.display()
            ),
        )
    })
}

/// An expired server certificate is refused (clients would refuse it
/// anyway); one not yet valid is only logged, as a clock may be a little
/// behind the CA's.
fn check_server_validity(leaf: &CertificateDer<'_>, now: SystemTime) -> Result<(), ConfigError> {
    let cert = Certificate::from_der(leaf)
        .map_err(|e| ConfigError::new("tls.cert", format!("does not parse: {e}")))?;
    let validity = cert.tbs_certificate().validity();
    let not_after = validity.not_after.to_system_time();
    if now > not_after {
        return Err(ConfigError::new(
            "tls.cert",
            format!("the server certificate expired at {}", validity.not_after),
        ));
    }
    if now < validity.not_before.to_system_time() {
        tracing::warn!(
            not_before = %validity.not_before,
            "tls.cert: the server certificate is not valid yet"
        );
    }
    Ok(())
}

/// The CRLs of one file, PEM (one or more `X509 CRL` sections) or DER (one).
fn load_crls(
    path: &Path,
    key: &str,
    now: SystemTime,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let bytes = read_bounded(path, key)?;
    let crls = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ConfigError::new(key, format!("{} is not valid PEM: {e}", path.display()))
            })?;
        if crls.is_empty() {
            return Err(ConfigError::new(
                key,
                format!(
                    "{} holds no PEM CRL (-----BEGIN X509 CRL-----)",
                    path.display()
                ),
            ));
        }
        crls
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    for crl in &crls {
        let list: CertificateList = CertificateList::from_der(crl).map_err(|e| {
            ConfigError::new(
                key,
                format!("{} is not a DER or PEM CRL: {e}", path.display()),
            )
        })?;
        let tbs = &list.tbs_cert_list;
        let Some(next) = tbs.next_update else {
            return Err(ConfigError::new(
                key,
                format!(
                    "the CRL of {} issued by {} has no nextUpdate, so it could never be found stale",
                    path.display(),
                    tbs.issuer
                ),
            ));
        };
        if now > next.to_system_time() {
            return Err(ConfigError::new(
                key,
                format!(
                    "the CRL of {} issued by {} is stale: its nextUpdate was {next}; install a fresh CRL",
                    path.display(),
                    tbs.issuer
                ),
            ));
        }
    }
    Ok(crls)
}
