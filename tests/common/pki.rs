//! A throwaway PKI for mutual-TLS tests, generated with rcgen into a
//! directory:
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem`, `ca.key` | the client and server CA (`CN=signet test CA`) |
//! | `ca.crl` | CRL signed by the CA, listing `revoked`, nextUpdate in 2099 |
//! | `server.pem`, `server.key` | server cert for DNS:localhost and IP:127.0.0.1 |
//! | `rp`, `officer`, `auditor`, `monitor` `.pem/.key` | client certs, SAN URI `urn:signet:role:<role>`, CN `signet test <role>` |
//! | `stranger.pem/.key` | client cert of the CA with SAN URI `urn:signet:role:none` |
//! | `foreign.pem/.key` | client cert of another CA (`foreign-ca.pem`) |
//! | `revoked.pem/.key` | client cert of the CA listed in `ca.crl` |
//! | `expired.pem/.key` | client cert of the CA that expired in 2001 |
//!
//! Every subject is `CN=signet test <name>,O=signet test` (RFC 4514); keys
//! are ECDSA P-256, PKCS#8 PEM.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevocationReason, RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

/// The client certificates `generate` writes, with their serial numbers.
pub const CLIENTS: [(&str, u64); 8] = [
    ("rp", 0x10),
    ("officer", 0x11),
    ("auditor", 0x12),
    ("monitor", 0x13),
    ("stranger", 0x20),
    ("foreign", 0x21),
    ("revoked", 0x22),
    ("expired", 0x23),
];

/// The SAN URI of a role certificate.
pub fn role_uri(role: &str) -> String {
    format!("urn:signet:role:{role}")
}

/// The RFC 4514 subject of `name`'s certificate.
pub fn subject(name: &str) -> String {
    format!("CN=signet test {name},O=signet test")
}

pub struct TestPki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub ca_crl: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// SHA-256 of each certificate's SubjectPublicKeyInfo, from the key
    /// rcgen generated (not read back from the certificate).
    pub spki_sha256: BTreeMap<String, [u8; 32]>,
    ca: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// `<dir>/<name>.pem`
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// `<dir>/<name>.key`
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// DER of `<name>.pem` (its first certificate).
    pub fn cert_der(&self, name: &str) -> Vec<u8> {
        let pem = std::fs::read(self.cert(name)).expect("read certificate");
        CertificateDer::from_pem_slice(&pem)
            .expect("PEM certificate")
            .to_vec()
    }

    /// Writes to `path` a PEM CRL signed by the CA that revokes `revoked`,
    /// with the given thisUpdate and nextUpdate.
    pub fn write_crl(&self, path: &Path, this_update: OffsetDateTime, next_update: OffsetDateTime) {
        let crl = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(2u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(serial("revoked")),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)
        .expect("sign CRL");
        std::fs::write(path, crl.pem().expect("CRL PEM")).expect("write CRL");
    }
}

fn serial(name: &str) -> u64 {
    CLIENTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .expect("known client name")
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "signet test");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(SerialNumber::from(1u64));
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2099, 1, 1);
    p
}

fn client_params(name: &str, uri: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&format!("signet test {name}"));
    p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("IA5 URI"))];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(SerialNumber::from(serial(name)));
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2099, 1, 1);
    p
}

fn write(dir: &Path, name: &str, pem: &str, key: &KeyPair) {
    std::fs::write(dir.join(format!("{name}.pem")), pem).expect("write certificate");
    // Private keys 0600, as signet serve requires of its tls.key.
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
}

fn pin(key: &KeyPair) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
    d.as_ref().try_into().expect("32 bytes")
}

/// Generates the PKI described in the module documentation into `dir`.
pub fn generate(dir: &Path) -> TestPki {
    std::fs::create_dir_all(dir).expect("create PKI directory");
    let mut spki_sha256 = BTreeMap::new();

    let ca_key = KeyPair::generate().expect("CA key");
    let ca_p = ca_params("signet test CA");
    let ca_cert = ca_p.self_signed(&ca_key).expect("self-sign CA");
    write(dir, "ca", &ca_cert.pem(), &ca_key);
    let ca = Issuer::new(ca_p, ca_key);

    let foreign_key = KeyPair::generate().expect("foreign CA key");
    let foreign_p = ca_params("signet test foreign CA");
    let foreign_cert = foreign_p
        .self_signed(&foreign_key)
        .expect("self-sign foreign CA");
    write(dir, "foreign-ca", &foreign_cert.pem(), &foreign_key);
    let foreign = Issuer::new(foreign_p, foreign_key);

    // The server.
    let server_key = KeyPair::generate().expect("server key");
    let mut p = CertificateParams::default();
    p.distinguished_name = dn("localhost");
    p.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().expect("IA5 name")),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(SerialNumber::from(2u64));
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2099, 1, 1);
    let server_cert = p.signed_by(&server_key, &ca).expect("sign server");
    write(dir, "server", &server_cert.pem(), &server_key);
    spki_sha256.insert("server".to_string(), pin(&server_key));

    // The clients.
    for (name, _) in CLIENTS {
        let key = KeyPair::generate().expect("client key");
        let uri = match name {
            "rp" | "officer" | "auditor" | "monitor" => role_uri(name),
            "stranger" => role_uri("none"),
            _ => role_uri("rp"),
        };
        let mut p = client_params(name, &uri);
        if name == "expired" {
            p.not_before = date_time_ymd(2000, 1, 1);
            p.not_after = date_time_ymd(2001, 1, 1);
        }
        let issuer = if name == "foreign" { &foreign } else { &ca };
        let cert = p.signed_by(&key, issuer).expect("sign client");
        write(dir, name, &cert.pem(), &key);
        spki_sha256.insert(name.to_string(), pin(&key));
    }

    let pki = TestPki {
        dir: dir.to_path_buf(),
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        ca_crl: dir.join("ca.crl"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        spki_sha256,
        ca,
    };
    pki.write_crl(
        &pki.ca_crl,
        date_time_ymd(2024, 1, 1),
        date_time_ymd(2099, 1, 1),
    );
    pki
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(pki: &TestPki) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pki.ca_cert).expect("read ca.pem");
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    roots
}

/// A client trusting `ca.pem` and presenting `<name>.pem` (or no
/// certificate), offering the given protocol versions and ALPN http/1.1.
pub fn client_config_versions(
    pki: &TestPki,
    name: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots(pki));
    let mut config = match name {
        Some(name) => {
            let pem = std::fs::read(pki.cert(name)).expect("read client certificate");
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .expect("client PEM");
            let key_pem = std::fs::read(pki.key(name)).expect("read client key");
            let key = PrivateKeyDer::from_pem_slice(&key_pem).expect("client key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A client (TLS 1.3 or 1.2) trusting `ca.pem` and presenting `<name>.pem`.
pub fn client_config(pki: &TestPki, name: &str) -> rustls::ClientConfig {
    client_config_versions(pki, Some(name), rustls::ALL_VERSIONS)
}

/// A client trusting `ca.pem` that presents no certificate.
pub fn client_config_no_cert(pki: &TestPki) -> rustls::ClientConfig {
    client_config_versions(pki, None, rustls::ALL_VERSIONS)
}
