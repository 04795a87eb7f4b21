//! A FIDO metadata BLOB for Chromium's DevTools virtual authenticators,
//! for the demo and its browser test only.
//!
//! Chromium's virtual authenticators attest with one self-signed batch
//! certificate (`chromium-virtual-attestation.pem`, a fixed key; captured
//! from Chromium 156). signet refuses a self-signed certificate in x5c (the
//! trust anchor must not be sent) unless the model's metadata pins that very
//! certificate, so this BLOB pins it for the two models: the CTAP2 device by
//! its AAGUID, the U2F device by its attestation key identifier (SHA-1 of
//! the certificate's public key). Both are described as software
//! authenticators, which earns tier 3 when the attestation verifies.

use std::path::Path;

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use der::DecodePem;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde_json::{Value, json};

/// Chromium's virtual CTAP2 authenticator (`VirtualFidoDevice`).
pub const CTAP2_AAGUID: &str = "01020304-0506-0708-0102-030405060708";
const BATCH_CERT_PEM: &str = include_str!("chromium-virtual-attestation.pem");

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "signet demo bank");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes `dir/mds-root.pem` and `dir/mds-blob.jwt`.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let now = time::OffsetDateTime::now_utc();

    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = dn("demo bank test MDS root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root_params.not_before = now - time::Duration::days(1);
    root_params.not_after = now + time::Duration::days(3650);
    root_params.serial_number = Some(SerialNumber::from_slice(&[0x01]));
    let root = CertifiedIssuer::self_signed(root_params, KeyPair::generate()?)?;

    let signer_key = KeyPair::generate()?;
    let mut signer_params = CertificateParams::default();
    signer_params.distinguished_name = dn("demo bank test MDS signer");
    signer_params.is_ca = IsCa::ExplicitNoCa;
    signer_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    signer_params.not_before = now - time::Duration::days(1);
    signer_params.not_after = now + time::Duration::days(365);
    signer_params.serial_number = Some(SerialNumber::from_slice(&[0x02]));
    let signer = signer_params.signed_by(&signer_key, &root)?;

    let batch = x509_cert::Certificate::from_pem(BATCH_CERT_PEM.as_bytes())
        .context("chromium-virtual-attestation.pem")?;
    let batch_der = der::Encode::to_der(&batch)?;
    let public_key = batch
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let key_id =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &public_key);
    let key_id: String = key_id.as_ref().iter().map(|b| format!("{b:02x}")).collect();

    let today = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let next = now + time::Duration::days(30);
    let next_update = format!(
        "{:04}-{:02}-{:02}",
        next.year(),
        u8::from(next.month()),
        next.day()
    );
    let root_b64 = STANDARD.encode(&batch_der);
    let statement = |description: &str, family: &str| -> Value {
        json!({
            "description": description,
            "authenticatorVersion": 1,
            "protocolFamily": family,
            "schema": 3,
            "attestationTypes": ["basic_full"],
            "authenticationAlgorithms": ["secp256r1_ecdsa_sha256_raw"],
            "attestationRootCertificates": [root_b64],
            "keyProtection": ["software"],
            "matcherProtection": ["software"],
            "attachmentHint": ["internal"],
        })
    };
    let mut ctap2 = statement(
        "Chromium DevTools virtual authenticator, CTAP2 (test only)",
        "fido2",
    );
    ctap2["aaguid"] = json!(CTAP2_AAGUID);
    let u2f = statement(
        "Chromium DevTools virtual authenticator, U2F (test only)",
        "u2f",
    );
    let reports = json!([{"status": "NOT_FIDO_CERTIFIED", "effectiveDate": today}]);
    let payload = json!({
        "legalHeader": "A test catalog of the signet demo bank; not FIDO's.",
        // Newer than any earlier demo BLOB, so a rerun installs.
        "no": now.unix_timestamp(),
        "nextUpdate": next_update,
        "entries": [
            {
                "aaguid": CTAP2_AAGUID,
                "metadataStatement": ctap2,
                "statusReports": reports,
                "timeOfLastStatusChange": today,
            },
            {
                "attestationCertificateKeyIdentifiers": [key_id],
                "metadataStatement": u2f,
                "statusReports": reports,
                "timeOfLastStatusChange": today,
            },
        ],
    });
    let header = json!({"alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(signer.der())]});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &signer_key.serialize_der(),
    )
    .map_err(|e| anyhow::anyhow!("signer key: {e}"))?;
    let signature = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing the BLOB: {e}"))?;
    let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));

    std::fs::write(dir.join("mds-root.pem"), root.pem())?;
    std::fs::write(dir.join("mds-blob.jwt"), jwt)?;
    println!(
        "demo-bank: wrote {0}/mds-blob.jwt and {0}/mds-root.pem (install: signet mds import {0}/mds-blob.jwt --root {0}/mds-root.pem --config signet.toml)",
        dir.display()
    );
    Ok(())
}
