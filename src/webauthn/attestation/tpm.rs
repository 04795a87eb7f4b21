//! `tpm` (WebAuthn L3 §8.3): the credential key was created inside a TPM 2.0,
//! which certified it with TPM2_Certify under an attestation identity key
//! (AIK) whose certificate is `x5c[0]`.
//!
//! What binds the pieces together:
//!
//! - `pubArea` (TPMT_PUBLIC) is the key as the TPM describes it; it must be
//!   the credential public key in authenticatorData.
//! - `certInfo` (TPMS_ATTEST) names that key (`attested.name`, a digest of
//!   `pubArea`) and carries `extraData`, the hash of
//!   authenticatorData || clientDataHash, so the TPM's statement is tied to
//!   this ceremony.
//! - `sig` is the AIK's signature over `certInfo`, and the AIK certificate
//!   must meet §8.3.1.
//!
//! TPMT_PUBLIC and TPMS_ATTEST are parsed here by hand. They are fixed,
//! big-endian TPM wire structures with a handful of fields; no pure-Rust
//! crate parses them, and `tss-esapi` would run the TSS's C unmarshalling
//! on hostile input inside an engine that is meant to be pure. The parser
//! below is one bounds-checked cursor and a few tables taken from TPM 2.0
//! Part 2; every TPM2B size is capped at the largest the structure allows
//! before it is used, and bytes left after a structure are an error.
//!
//! # The Name rule
//!
//! `attested.name` is a TPM2B_NAME holding a TPMT_HA: a 2-byte hash
//! algorithm id followed by that hash of `pubArea`. We take the algorithm
//! from the Name itself and require `name == id || H_id(pubArea)` byte for
//! byte; `pubArea.nameAlg` must be a hash we know but need not equal `id`.
//!
//! Why not insist on `pubArea.nameAlg` as the §8.3 text reads: the FIDO
//! conformance suite (Server-ServerAuthenticatorAttestationResponse-Resp-9
//! P-3) sends a pubArea whose nameAlg differs from the hash of the Name and
//! requires acceptance (fido-alliance/conformance-test-tools-resources#396,
//! w3c/webauthn#1925). It costs no security: the Name is inside the signed
//! certInfo, so swapping in another pubArea needs a second preimage of the
//! digest the TPM signed, whatever nameAlg the substitute declares. A real
//! TPM always hashes with the object's own nameAlg, so every device vector
//! has the two equal.

use aws_lc_rs::digest;
use ciborium::Value;
use der::Decode;
use der::asn1::{ObjectIdentifier, OctetString};
use x509_cert::ext::pkix::name::{DirectoryString, GeneralName};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};

use super::{
    AttestationType, Statement, Verified, alg_member, bytes_member, check_members, field, shorten,
};
use crate::webauthn::certpath::{self, Cert, oid};
use crate::webauthn::cose_key::{Curve, VerifyingKey};
use crate::webauthn::{CoseAlgorithm, Error, constant_time_eq};

const PUB_AREA: &str = "response.attestationObject.attStmt.pubArea";
const CERT_INFO: &str = "response.attestationObject.attStmt.certInfo";

/// The members a tpm statement has (§8.3 syntax); anything else is refused
/// rather than ignored, so a statement means exactly one thing.
const MEMBERS: [&str; 6] = ["ver", "alg", "x5c", "sig", "certInfo", "pubArea"];

const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;

/// TPM_ALG_ID values (TPM 2.0 Part 2, table 9) that the parser meets.
mod tpm_alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const MGF1: u16 = 0x0007;
    pub const SHA256: u16 = 0x000b;
    pub const SHA384: u16 = 0x000c;
    pub const SHA512: u16 = 0x000d;
    pub const NULL: u16 = 0x0010;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAES: u16 = 0x0015;
    pub const RSAPSS: u16 = 0x0016;
    pub const OAEP: u16 = 0x0017;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDH: u16 = 0x0019;
    pub const ECDAA: u16 = 0x001a;
    pub const SM2: u16 = 0x001b;
    pub const ECSCHNORR: u16 = 0x001c;
    pub const ECMQV: u16 = 0x001d;
    pub const KDF1_SP800_56A: u16 = 0x0020;
    pub const KDF2: u16 = 0x0021;
    pub const KDF1_SP800_108: u16 = 0x0022;
    pub const ECC: u16 = 0x0023;
}

/// TPM_ECC_CURVE values (Part 2, table 10) for the curves we verify on.
const TPM_ECC_NIST_P256: u16 = 0x0003;
const TPM_ECC_NIST_P384: u16 = 0x0004;
const TPM_ECC_NIST_P521: u16 = 0x0005;

/// Size caps from Part 2, with SHA-512 as the largest digest: TPMT_HA is
/// 2 + 64 bytes, and TPMU_NAME and TPM2B_DATA are both sized by it.
const MAX_DIGEST: usize = 64;
const MAX_NAME: usize = 2 + MAX_DIGEST;
const MAX_DATA: usize = 2 + MAX_DIGEST;
const MAX_RSA_BYTES: usize = crate::webauthn::cose_key::MAX_RSA_BITS / 8;
/// P-521 coordinates.
const MAX_ECC_BYTES: usize = 66;
/// TPMS_CLOCK_INFO: clock (8), resetCount (4), restartCount (4), safe (1).
const CLOCK_INFO_LEN: usize = 17;
const FIRMWARE_VERSION_LEN: usize = 8;

/// The largest TPMS_ATTEST of type CERTIFY, so an oversized certInfo is
/// refused before anything reads it.
const MAX_CERT_INFO: usize = 4
    + 2
    + (2 + MAX_NAME)
    + (2 + MAX_DATA)
    + CLOCK_INFO_LEN
    + FIRMWARE_VERSION_LEN
    + 2 * (2 + MAX_NAME);
/// The largest RSA TPMT_PUBLIC we accept (the ECC one is smaller): type,
/// nameAlg, objectAttributes, authPolicy, symmetric, scheme with a hash,
/// keyBits, exponent, unique.
const MAX_PUB_AREA: usize = 2 + 2 + 4 + (2 + MAX_DIGEST) + 2 + 4 + 2 + 4 + (2 + MAX_RSA_BYTES);

/// tcg-at-tpmManufacturer, tcg-at-tpmModel, tcg-at-tpmVersion (TCG EK
/// Credential Profile §3.2.9).
const TCG_AT_TPM_MANUFACTURER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.1");
const TCG_AT_TPM_MODEL: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.2");
const TCG_AT_TPM_VERSION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.3");

/// Verifies a `tpm` attestation statement (§8.3 verification procedure).
pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    check_members(stmt, &MEMBERS)?;
    check_ver(stmt)?;
    let alg_id = alg_member(stmt)?;
    let alg = CoseAlgorithm::from_id(alg_id).ok_or_else(|| Error::Algorithm {
        field: field("alg"),
        alg: alg_id,
        reason: "is not supported",
    })?;
    let hash = HashAlg::for_signature(alg).ok_or_else(|| Error::Algorithm {
        field: field("alg"),
        alg: alg_id,
        reason: "cannot sign a TPM attestation",
    })?;
    let x5c_value = stmt.member("x5c").ok_or_else(|| Error::Missing {
        field: field("x5c"),
    })?;
    let x5c = certpath::parse_x5c(x5c_value, &field("x5c"))?;
    let sig = bytes_member(stmt, "sig")?;
    let cert_info = bounded(bytes_member(stmt, "certInfo")?, CERT_INFO, MAX_CERT_INFO)?;
    let pub_area_bytes = bounded(bytes_member(stmt, "pubArea")?, PUB_AREA, MAX_PUB_AREA)?;
    let attested = stmt
        .auth_data
        .attested
        .as_ref()
        .ok_or_else(|| Error::Missing {
            field: "response.attestationObject.authData.attestedCredentialData".into(),
        })?;

    // Without this the TPM could be vouching for some other key.
    let pub_area = parse_pub_area(pub_area_bytes)?;
    check_public_key(&pub_area, &attested.public_key.key)?;

    // certInfo: magic and type are checked while parsing, since the rest of
    // the structure depends on the type.
    let info = parse_cert_info(cert_info)?;
    let expected_extra = hash.digest(&stmt.signed_data());
    if !constant_time_eq(info.extra_data, expected_extra.as_ref()) {
        return Err(Error::mismatch(
            format!("{CERT_INFO}.extraData"),
            format!(
                "is not the {} of authenticatorData || clientDataHash (the hash of alg {})",
                hash.name(),
                alg.name()
            ),
        ));
    }
    check_name(info.name, pub_area_bytes)?;

    // qualifiedSigner, clockInfo and firmwareVersion are skipped: §8.3
    // leaves them to risk engines.

    let aik = x5c.first().ok_or_else(|| Error::Empty {
        field: field("x5c"),
    })?;
    let aik_key = aik.public_key()?;
    if !key_fits(&aik_key, alg) {
        return Err(Error::Algorithm {
            field: field("alg"),
            alg: alg_id,
            reason: "does not fit the AIK certificate's public key",
        });
    }
    aik_key.verify(alg, cert_info, sig, &field("sig"))?;
    check_aik_certificate(aik, &attested.aaguid)?;

    Ok(Verified {
        attestation_type: AttestationType::AttCa,
        trust_path: x5c,
        root_in_path_allowed: false,
    })
}

fn check_ver(stmt: &Statement<'_>) -> Result<(), Error> {
    match stmt.member("ver") {
        None => Err(Error::Missing {
            field: field("ver"),
        }),
        Some(Value::Text(v)) if v == "2.0" => Ok(()),
        Some(Value::Text(v)) => Err(Error::mismatch(
            field("ver"),
            format!("is {:?}; only \"2.0\" is defined", shorten(v)),
        )),
        Some(_) => Err(Error::WrongType {
            field: field("ver"),
            expected: "a text string",
        }),
    }
}

fn bounded<'b>(bytes: &'b [u8], field: &str, limit: usize) -> Result<&'b [u8], Error> {
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            field: field.to_string(),
            limit,
        });
    }
    Ok(bytes)
}

/// Attacker-chosen text quoted in an error, cut to a readable length.
/// The hashes a TPM Name or a TPM attestation signature may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    fn from_tpm(id: u16) -> Option<HashAlg> {
        match id {
            tpm_alg::SHA1 => Some(HashAlg::Sha1),
            tpm_alg::SHA256 => Some(HashAlg::Sha256),
            tpm_alg::SHA384 => Some(HashAlg::Sha384),
            tpm_alg::SHA512 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// The hash inside `alg`: §8.3 hashes attToBeSigned into extraData with it.
    fn for_signature(alg: CoseAlgorithm) -> Option<HashAlg> {
        use CoseAlgorithm as A;
        match alg {
            A::Rs1 => Some(HashAlg::Sha1),
            A::Es256 | A::Rs256 | A::Ps256 => Some(HashAlg::Sha256),
            A::Es384 | A::Rs384 | A::Ps384 => Some(HashAlg::Sha384),
            A::Es512 | A::Rs512 | A::Ps512 => Some(HashAlg::Sha512),
            // A TPM cannot produce EdDSA signatures.
            A::EdDsa => None,
        }
    }

    fn digest(self, data: &[u8]) -> digest::Digest {
        let algorithm = match self {
            HashAlg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &digest::SHA256,
            HashAlg::Sha384 => &digest::SHA384,
            HashAlg::Sha512 => &digest::SHA512,
        };
        digest::digest(algorithm, data)
    }

    fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "SHA-1",
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha384 => "SHA-384",
            HashAlg::Sha512 => "SHA-512",
        }
    }
}

/// A big-endian cursor over one TPM structure. Each read checks what is
/// left before taking it, and a failed read names the field it was after.
struct Reader<'a> {
    data: &'a [u8],
    base: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], base: &'static str) -> Reader<'a> {
        Reader { data, base }
    }

    fn truncated(&self, name: &str, needed: usize) -> Error {
        Error::malformed(
            format!("{}.{name}", self.base),
            format!("truncated: {needed} bytes needed, {} left", self.data.len()),
        )
    }

    fn array<const N: usize>(&mut self, name: &str) -> Result<[u8; N], Error> {
        let Some((head, rest)) = self.data.split_first_chunk::<N>() else {
            return Err(self.truncated(name, N));
        };
        self.data = rest;
        Ok(*head)
    }

    fn u16(&mut self, name: &str) -> Result<u16, Error> {
        self.array::<2>(name).map(u16::from_be_bytes)
    }

    fn u32(&mut self, name: &str) -> Result<u32, Error> {
        self.array::<4>(name).map(u32::from_be_bytes)
    }

    fn skip(&mut self, len: usize, name: &str) -> Result<(), Error> {
        let Some((_, rest)) = self.data.split_at_checked(len) else {
            return Err(self.truncated(name, len));
        };
        self.data = rest;
        Ok(())
    }

    /// A TPM2B: a 2-byte size, then that many bytes, at most `max`.
    fn tpm2b(&mut self, name: &str, max: usize) -> Result<&'a [u8], Error> {
        let size = usize::from(self.u16(name)?);
        if size > max {
            return Err(Error::malformed(
                format!("{}.{name}", self.base),
                format!("size {size} exceeds the {max} bytes the structure allows"),
            ));
        }
        let Some((body, rest)) = self.data.split_at_checked(size) else {
            return Err(self.truncated(name, size));
        };
        self.data = rest;
        Ok(body)
    }

    fn finish(self) -> Result<(), Error> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(Error::malformed(
                self.base,
                format!("{} bytes after the end of the structure", self.data.len()),
            ))
        }
    }
}

/// The parts of TPMT_PUBLIC the verification uses.
#[derive(Debug)]
struct PubArea<'a> {
    key: TpmKey<'a>,
}

#[derive(Debug)]
enum TpmKey<'a> {
    Rsa {
        key_bits: u16,
        /// 0 stands for the default exponent 65537.
        exponent: u32,
        modulus: &'a [u8],
    },
    Ecc {
        curve: u16,
        x: &'a [u8],
        y: &'a [u8],
    },
}

/// Size of TPMU_ASYM_SCHEME's details for a scheme (Part 2, 11.2.3.5): a
/// hashAlg for the hash-based schemes, a hashAlg and a count for ECDAA.
/// Constants are written as paths so that a misspelt one cannot turn into
/// a catch-all binding.
fn scheme_details_len(kind: u16, scheme: u16) -> Option<usize> {
    use tpm_alg as t;
    match (kind, scheme) {
        (_, t::NULL) | (t::RSA, t::RSAES) => Some(0),
        (t::RSA, t::RSASSA | t::RSAPSS | t::OAEP)
        | (t::ECC, t::ECDSA | t::ECDH | t::SM2 | t::ECSCHNORR | t::ECMQV) => Some(2),
        (t::ECC, t::ECDAA) => Some(4),
        _ => None,
    }
}

/// Size of TPMU_KDF_SCHEME's details (Part 2, 11.2.3.3): a hashAlg, or nothing.
fn kdf_details_len(kdf: u16) -> Option<usize> {
    use tpm_alg as t;
    match kdf {
        t::NULL => Some(0),
        t::MGF1 | t::KDF1_SP800_56A | t::KDF2 | t::KDF1_SP800_108 => Some(2),
        _ => None,
    }
}

/// Parses TPMT_PUBLIC (Part 2, 12.2.4) for an RSA or ECC key.
fn parse_pub_area(bytes: &[u8]) -> Result<PubArea<'_>, Error> {
    let mut r = Reader::new(bytes, PUB_AREA);
    let kind = r.u16("type")?;
    if kind != tpm_alg::RSA && kind != tpm_alg::ECC {
        return Err(Error::malformed(
            format!("{PUB_AREA}.type"),
            format!("0x{kind:04x} is not TPM_ALG_RSA or TPM_ALG_ECC"),
        ));
    }
    // Only checked to be a digest algorithm: TPM_ALG_NULL would mean the
    // object has no digest Name, so a Name could not certify it. The Name
    // check takes its hash from the Name (see the module documentation).
    let name_alg = r.u16("nameAlg")?;
    if HashAlg::from_tpm(name_alg).is_none() {
        return Err(Error::malformed(
            format!("{PUB_AREA}.nameAlg"),
            format!("0x{name_alg:04x} is not SHA-1, SHA-256, SHA-384 or SHA-512"),
        ));
    }
    // objectAttributes and authPolicy are not part of the key; §8.3 does
    // not constrain them.
    r.u32("objectAttributes")?;
    r.tpm2b("authPolicy", MAX_DIGEST)?;

    // Part 2 requires TPM_ALG_NULL here for anything but a restricted
    // decryption (storage) key, which a credential key is not.
    let symmetric = r.u16("parameters.symmetric")?;
    if symmetric != tpm_alg::NULL {
        return Err(Error::malformed(
            format!("{PUB_AREA}.parameters.symmetric"),
            format!("0x{symmetric:04x}: a signing key has no symmetric algorithm (TPM_ALG_NULL)"),
        ));
    }
    let scheme = r.u16("parameters.scheme")?;
    let details = scheme_details_len(kind, scheme).ok_or_else(|| {
        Error::malformed(
            format!("{PUB_AREA}.parameters.scheme"),
            format!("0x{scheme:04x} is not a scheme for this key type"),
        )
    })?;
    r.skip(details, "parameters.scheme.details")?;

    let key = if kind == tpm_alg::RSA {
        let key_bits = r.u16("parameters.keyBits")?;
        let exponent = r.u32("parameters.exponent")?;
        let modulus = r.tpm2b("unique", MAX_RSA_BYTES)?;
        TpmKey::Rsa {
            key_bits,
            exponent,
            modulus,
        }
    } else {
        let curve = r.u16("parameters.curveID")?;
        let kdf = r.u16("parameters.kdf")?;
        let kdf_len = kdf_details_len(kdf).ok_or_else(|| {
            Error::malformed(
                format!("{PUB_AREA}.parameters.kdf"),
                format!("0x{kdf:04x} is not a key derivation scheme"),
            )
        })?;
        r.skip(kdf_len, "parameters.kdf.details")?;
        let x = r.tpm2b("unique.x", MAX_ECC_BYTES)?;
        let y = r.tpm2b("unique.y", MAX_ECC_BYTES)?;
        TpmKey::Ecc { curve, x, y }
    };
    r.finish()?;
    Ok(PubArea { key })
}

/// §8.3: the key in `parameters` and `unique` is the credential public key.
fn check_public_key(area: &PubArea<'_>, credential: &VerifyingKey) -> Result<(), Error> {
    let unique = || {
        Error::mismatch(
            format!("{PUB_AREA}.unique"),
            "is not the credential public key in authenticatorData",
        )
    };
    match (&area.key, credential) {
        (
            TpmKey::Rsa {
                key_bits,
                exponent,
                modulus,
            },
            VerifyingKey::Rsa { n, e },
        ) => {
            if usize::from(*key_bits) != modulus.len().saturating_mul(8) {
                return Err(Error::malformed(
                    format!("{PUB_AREA}.parameters.keyBits"),
                    format!(
                        "{key_bits} bits, but unique holds a {}-byte modulus",
                        modulus.len()
                    ),
                ));
            }
            let tpm_e = if *exponent == 0 {
                65537
            } else {
                u64::from(*exponent)
            };
            // The COSE parser caps e at 4 bytes; a longer one cannot match.
            let cose_e = if e.len() > 4 {
                None
            } else {
                Some(e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
            };
            if cose_e != Some(tpm_e) {
                return Err(Error::mismatch(
                    format!("{PUB_AREA}.parameters.exponent"),
                    "is not the credential public key's RSA exponent",
                ));
            }
            if *modulus != n.as_slice() {
                return Err(unique());
            }
            Ok(())
        }
        (
            TpmKey::Ecc { curve, x, y },
            VerifyingKey::Ec {
                curve: cose_curve,
                point,
            },
        ) => {
            let tpm_curve = match *curve {
                TPM_ECC_NIST_P256 => Curve::P256,
                TPM_ECC_NIST_P384 => Curve::P384,
                TPM_ECC_NIST_P521 => Curve::P521,
                other => {
                    return Err(Error::malformed(
                        format!("{PUB_AREA}.parameters.curveID"),
                        format!("curve 0x{other:04x} is not supported"),
                    ));
                }
            };
            if tpm_curve != *cose_curve {
                return Err(Error::mismatch(
                    format!("{PUB_AREA}.parameters.curveID"),
                    "is not the credential public key's curve",
                ));
            }
            // The credential point is 0x04 || x || y with equal-length
            // coordinates; the TPM pads its coordinates to the curve size.
            let Some((&0x04, xy)) = point.split_first() else {
                return Err(unique());
            };
            let (cose_x, cose_y) = xy.split_at(xy.len() / 2);
            if cose_x != *x || cose_y != *y {
                return Err(unique());
            }
            Ok(())
        }
        (key, _) => Err(Error::mismatch(
            format!("{PUB_AREA}.type"),
            format!(
                "is {}, but the credential public key is not",
                match key {
                    TpmKey::Rsa { .. } => "TPM_ALG_RSA",
                    TpmKey::Ecc { .. } => "TPM_ALG_ECC",
                }
            ),
        )),
    }
}

/// The parts of TPMS_ATTEST the verification uses.
#[derive(Debug)]
struct CertInfo<'a> {
    extra_data: &'a [u8],
    name: &'a [u8],
}

/// Parses TPMS_ATTEST (Part 2, 10.12.12) of type TPM_ST_ATTEST_CERTIFY.
fn parse_cert_info(bytes: &[u8]) -> Result<CertInfo<'_>, Error> {
    let mut r = Reader::new(bytes, CERT_INFO);
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED_VALUE {
        // Not made by a TPM: TPM_GENERATED_VALUE is what keeps the AIK from
        // signing arbitrary data that looks like an attestation.
        return Err(Error::mismatch(
            format!("{CERT_INFO}.magic"),
            format!("0x{magic:08x} is not TPM_GENERATED_VALUE (0xff544347)"),
        ));
    }
    let kind = r.u16("type")?;
    if kind != TPM_ST_ATTEST_CERTIFY {
        return Err(Error::mismatch(
            format!("{CERT_INFO}.type"),
            format!("0x{kind:04x} is not TPM_ST_ATTEST_CERTIFY (0x8017)"),
        ));
    }
    r.tpm2b("qualifiedSigner", MAX_NAME)?;
    let extra_data = r.tpm2b("extraData", MAX_DATA)?;
    r.skip(CLOCK_INFO_LEN, "clockInfo")?;
    r.skip(FIRMWARE_VERSION_LEN, "firmwareVersion")?;
    let name = r.tpm2b("attested.name", MAX_NAME)?;
    r.tpm2b("attested.qualifiedName", MAX_NAME)?;
    r.finish()?;
    Ok(CertInfo { extra_data, name })
}

/// `name == id || H_id(pubArea)`, with `id` read from the Name (see the
/// module documentation for why not from pubArea.nameAlg).
fn check_name(name: &[u8], pub_area: &[u8]) -> Result<(), Error> {
    let field = format!("{CERT_INFO}.attested.name");
    let Some((id, digest)) = name.split_first_chunk::<2>() else {
        return Err(Error::malformed(
            field,
            "too short to hold a hash algorithm and a digest",
        ));
    };
    let id = u16::from_be_bytes(*id);
    let hash = HashAlg::from_tpm(id).ok_or_else(|| {
        Error::malformed(
            &field,
            format!("hash algorithm 0x{id:04x} is not SHA-1, SHA-256, SHA-384 or SHA-512"),
        )
    })?;
    if digest != hash.digest(pub_area).as_ref() {
        return Err(Error::mismatch(
            field,
            format!("is not the Name of pubArea ({} of pubArea)", hash.name()),
        ));
    }
    Ok(())
}

fn key_fits(key: &VerifyingKey, alg: CoseAlgorithm) -> bool {
    use CoseAlgorithm as A;
    match key {
        VerifyingKey::Ec { .. } => matches!(alg, A::Es256 | A::Es384 | A::Es512),
        VerifyingKey::Rsa { .. } => matches!(
            alg,
            A::Rs1 | A::Rs256 | A::Rs384 | A::Rs512 | A::Ps256 | A::Ps384 | A::Ps512
        ),
        VerifyingKey::Ed25519 { .. } => false,
    }
}

/// The one extension with `id`; a repeated extension is refused (RFC 5280
/// §4.2) so that no check reads a different copy than a peer would.
fn single_extension<'c>(
    cert: &'c Cert,
    id: &ObjectIdentifier,
    field: &str,
) -> Result<Option<(&'c [u8], bool)>, Error> {
    let mut found = None;
    for ext in cert.tbs().extensions().into_iter().flatten() {
        if &ext.extn_id == id {
            if found.is_some() {
                return Err(Error::malformed(field, "appears more than once"));
            }
            found = Some((ext.extn_value.as_bytes(), ext.critical));
        }
    }
    Ok(found)
}

/// §8.3.1 TPM attestation statement certificate requirements, and the
/// id-fido-gen-ce-aaguid check of §8.3.
fn check_aik_certificate(cert: &Cert, aaguid: &[u8; 16]) -> Result<(), Error> {
    let f = &cert.field;
    if cert.version_number() != 2 {
        return Err(Error::malformed(
            format!("{f}.version"),
            format!(
                "is v{}; an AIK certificate must be v3",
                u16::from(cert.version_number()) + 1
            ),
        ));
    }
    if !cert.tbs().subject().is_empty() {
        return Err(Error::malformed(
            format!("{f}.subject"),
            "must be empty in an AIK certificate (the TPM is named in subjectAltName)",
        ));
    }

    let san_field = format!("{f}.extensions.subjectAltName");
    let Some((san, critical)) = single_extension(cert, &oid::SUBJECT_ALT_NAME, &san_field)? else {
        return Err(Error::Missing { field: san_field });
    };
    check_subject_alt_name(san, critical, &san_field)?;

    let eku_field = format!("{f}.extensions.extKeyUsage");
    let Some((eku, _)) = single_extension(cert, &oid::EXT_KEY_USAGE, &eku_field)? else {
        return Err(Error::Missing { field: eku_field });
    };
    let eku = ExtendedKeyUsage::from_der(eku).map_err(|e| Error::malformed(&eku_field, e))?;
    if !eku.0.contains(&oid::TCG_KP_AIK_CERTIFICATE) {
        return Err(Error::malformed(
            eku_field,
            "does not contain tcg-kp-AIKCertificate (2.23.133.8.3)",
        ));
    }

    // §8.3.1 lists basicConstraints among the extensions the certificate
    // MUST have, so an absent one is refused, not read as "not a CA".
    let bc_field = format!("{f}.extensions.basicConstraints");
    let Some((bc, _)) = single_extension(cert, &oid::BASIC_CONSTRAINTS, &bc_field)? else {
        return Err(Error::Missing { field: bc_field });
    };
    let bc = BasicConstraints::from_der(bc).map_err(|e| Error::malformed(&bc_field, e))?;
    if bc.ca {
        return Err(Error::malformed(
            bc_field,
            "cA must be false in an AIK certificate",
        ));
    }

    let aaguid_field = format!("{f}.extensions.id-fido-gen-ce-aaguid");
    if let Some((value, _)) = single_extension(cert, &oid::FIDO_AAGUID, &aaguid_field)? {
        let inner = OctetString::from_der(value).map_err(|e| Error::malformed(&aaguid_field, e))?;
        if inner.as_bytes().len() != 16 {
            return Err(Error::malformed(
                aaguid_field,
                "must be an OCTET STRING of 16 bytes",
            ));
        }
        if inner.as_bytes() != aaguid.as_slice() {
            return Err(Error::mismatch(
                aaguid_field,
                "is not the AAGUID in authenticatorData",
            ));
        }
    }
    Ok(())
}

/// The TPM's identity in subjectAltName (TCG EK Credential Profile §3.2.9):
/// a directoryName with manufacturer, model and version. Windows AIK
/// certificates put the three either in one multi-valued RDN or one per
/// RDN; both mean the same name, so the attributes are read across RDNs.
fn check_subject_alt_name(value: &[u8], critical: bool, field: &str) -> Result<(), Error> {
    // RFC 5280 §4.2.1.6: with an empty subject the SAN must be critical.
    if !critical {
        return Err(Error::malformed(
            field,
            "must be critical: the subject of an AIK certificate is empty",
        ));
    }
    let san = SubjectAltName::from_der(value).map_err(|e| Error::malformed(field, e))?;
    let mut manufacturer = None;
    let mut model = None;
    let mut version = None;
    let names = san.0.iter().filter_map(|general| match general {
        GeneralName::DirectoryName(name) => Some(name),
        _ => None,
    });
    for name in names {
        for atv in name.iter() {
            let (slot, label) = if atv.oid == TCG_AT_TPM_MANUFACTURER {
                (&mut manufacturer, "tcg-at-tpmManufacturer")
            } else if atv.oid == TCG_AT_TPM_MODEL {
                (&mut model, "tcg-at-tpmModel")
            } else if atv.oid == TCG_AT_TPM_VERSION {
                (&mut version, "tcg-at-tpmVersion")
            } else {
                continue;
            };
            if slot.is_some() {
                return Err(Error::malformed(
                    format!("{field}.{label}"),
                    "appears more than once",
                ));
            }
            let text = DirectoryString::try_from(&atv.value)
                .map_err(|e| Error::malformed(format!("{field}.{label}"), e))?;
            *slot = Some(text.value().into_owned());
        }
    }
    let present = |slot: Option<String>, label: &str| {
        slot.ok_or_else(|| Error::Missing {
            field: format!("{field}.{label}"),
        })
    };
    let manufacturer = present(manufacturer, "tcg-at-tpmManufacturer")?;
    let model = present(model, "tcg-at-tpmModel")?;
    let version = present(version, "tcg-at-tpmVersion")?;

    // The profile writes the 4-byte TPM_PT_MANUFACTURER as "id:" and 8 hex
    // digits. Whether that vendor is trusted is the trust anchors' business.
    if !is_tcg_id(&manufacturer, 8, 8) {
        return Err(Error::malformed(
            format!("{field}.tcg-at-tpmManufacturer"),
            format!(
                "{:?} is not \"id:\" and 8 hex digits",
                shorten(&manufacturer)
            ),
        ));
    }
    if model.is_empty() {
        return Err(Error::Empty {
            field: format!("{field}.tcg-at-tpmModel"),
        });
    }
    // Real certificates shorten the firmware version ("id:13", "id:72").
    if !is_tcg_id(&version, 1, 16) {
        return Err(Error::malformed(
            format!("{field}.tcg-at-tpmVersion"),
            format!("{:?} is not \"id:\" and hex digits", shorten(&version)),
        ));
    }
    Ok(())
}

fn is_tcg_id(text: &str, min_digits: usize, max_digits: usize) -> bool {
    text.strip_prefix("id:").is_some_and(|hex| {
        (min_digits..=max_digits).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::SystemTime;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair};

    use super::*;
    use crate::webauthn::attestation::{self, AttestationPolicy};
    use crate::webauthn::authenticator_data::AuthenticatorData;
    use crate::webauthn::cose_key::cose_p256;
    use crate::webauthn::registration::AttestationObject;
    use crate::webauthn::{b64url_decode, limits};

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/");

    /// Every tpm registration in the corpus; `corpus_has_no_other_tpm_vector`
    /// keeps this list complete.
    const TPM_VECTORS: [&str; 9] = [
        "w3c/tpm-es256.registration.json",
        "devices/fido2-net-lib-tpm-sha1-conformance.registration.json",
        "devices/simplewebauthn-tpm-ecc-pubarea.registration.json",
        "devices/simplewebauthn-tpm-nonspec-san.registration.json",
        "devices/simplewebauthn-tpm-spec-san.registration.json",
        "devices/webauthn-rs-windows-hello-tpm-ecc.registration.json",
        "devices/webauthn-rs-windows-hello-tpm-rs256.registration.json",
        "devices/yubico-thinkpad-tpm-es256.registration.json",
        "devices/yubico-windows-hello-tpm-rs256.registration.json",
    ];

    fn read_json(path: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!(
                "test vector {} is missing or unreadable ({e}); the tpm tests need /work/shared/vectors",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
    }

    /// A registration vector, decoded down to what a Statement borrows.
    struct Case {
        name: String,
        object: AttestationObject,
        client_data_hash: [u8; 32],
        now: SystemTime,
    }

    fn text<'j>(json: &'j serde_json::Value, key: &str, name: &str) -> &'j str {
        json[key]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: `{key}` is not a string"))
    }

    /// "YYYY-MM-DDTHH:MM:SSZ", the only form the corpus uses.
    fn parse_time(s: &str) -> SystemTime {
        let num = |range: std::ops::Range<usize>| -> u16 {
            s.get(range)
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("verify_time {s:?} is not YYYY-MM-DDTHH:MM:SSZ"))
        };
        assert_eq!(s.len(), 20, "verify_time {s:?}");
        let u8_ = |r| u8::try_from(num(r)).unwrap();
        der::DateTime::new(
            num(0..4),
            u8_(5..7),
            u8_(8..10),
            u8_(11..13),
            u8_(14..16),
            u8_(17..19),
        )
        .unwrap()
        .to_system_time()
    }

    fn load(rel: &str) -> Case {
        let json = read_json(&PathBuf::from(VECTORS).join(rel));
        assert_eq!(text(&json, "fmt", rel), "tpm", "{rel}");
        let ao = b64url_decode(
            "attestationObject",
            text(&json, "attestationObject", rel),
            limits::ATTESTATION_OBJECT,
        )
        .unwrap();
        let cdj = b64url_decode(
            "clientDataJSON",
            text(&json, "clientDataJSON", rel),
            limits::CLIENT_DATA_JSON,
        )
        .unwrap();
        Case {
            name: rel.to_string(),
            object: AttestationObject::parse(&ao).unwrap_or_else(|e| panic!("{rel}: {e}")),
            client_data_hash: crate::keys::sha256(&cdj),
            now: parse_time(text(&json, "verify_time", rel)),
        }
    }

    fn run_with(case: &Case, att_stmt: &Value) -> Result<Verified, Error> {
        let policy = AttestationPolicy::default();
        let stmt = Statement {
            fmt: &case.object.fmt,
            att_stmt,
            auth_data: &case.object.auth_data,
            client_data_hash: &case.client_data_hash,
            policy: &policy,
            now: case.now,
        };
        attestation::verify(&stmt)
    }

    fn run(case: &Case) -> Result<Verified, Error> {
        run_with(case, &case.object.att_stmt)
    }

    /// A copy of `att_stmt` with member `key` replaced (or added) by `value`.
    fn with_member(att_stmt: &Value, key: &str, value: Value) -> Value {
        let Value::Map(entries) = att_stmt else {
            panic!("attStmt is not a map")
        };
        let mut entries = entries.clone();
        match entries
            .iter_mut()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
        {
            Some((_, v)) => *v = value,
            None => entries.push((Value::Text(key.into()), value)),
        }
        Value::Map(entries)
    }

    fn without_member(att_stmt: &Value, key: &str) -> Value {
        let Value::Map(entries) = att_stmt else {
            panic!("attStmt is not a map")
        };
        let entries = entries
            .iter()
            .filter(|(k, _)| !matches!(k, Value::Text(t) if t == key))
            .cloned()
            .collect();
        Value::Map(entries)
    }

    fn member_bytes(att_stmt: &Value, key: &str) -> Vec<u8> {
        match attestation::map_get(att_stmt, key) {
            Some(Value::Bytes(b)) => b.clone(),
            _ => panic!("attStmt.{key} is not bytes"),
        }
    }

    fn with_bytes(att_stmt: &Value, key: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Value {
        let mut bytes = member_bytes(att_stmt, key);
        edit(&mut bytes);
        with_member(att_stmt, key, Value::Bytes(bytes))
    }

    fn assert_err(result: Result<Verified, Error>, field: &str, kind: &str, case: &str) {
        match result {
            Ok(_) => panic!("{case}: accepted, expected {kind} at {field}"),
            Err(e) => {
                assert_eq!(e.field(), field, "{case}: {e}");
                assert_eq!(e.kind(), kind, "{case}: {e}");
            }
        }
    }

    fn be16(b: &[u8], at: usize) -> usize {
        usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
    }

    /// Offset of extraData's bytes in a certInfo.
    fn extra_data_at(ci: &[u8]) -> usize {
        8 + be16(ci, 6) + 2
    }

    /// Offset of the RSA exponent / ECC curveID in a pubArea whose scheme
    /// (like every vector's) is TPM_ALG_NULL.
    fn after_scheme(pa: &[u8]) -> usize {
        8 + 2 + be16(pa, 8) + 2 + 2
    }

    #[test]
    fn every_tpm_vector_verifies() {
        for rel in TPM_VECTORS {
            let case = load(rel);
            let verified = run(&case).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(verified.attestation_type, AttestationType::AttCa, "{rel}");
            assert!(!verified.root_in_path_allowed, "{rel}");
            let Some(Value::Array(x5c)) = attestation::map_get(&case.object.att_stmt, "x5c") else {
                panic!("{rel}: no x5c")
            };
            assert_eq!(verified.trust_path.len(), x5c.len(), "{rel}");
            assert_eq!(
                verified.trust_path[0].field,
                "response.attestationObject.attStmt.x5c[0]"
            );
        }
    }

    #[test]
    fn corpus_has_no_other_tpm_vector() {
        for dir in ["w3c", "devices"] {
            let path = PathBuf::from(VECTORS).join(dir);
            let entries = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("vector folder {} is missing ({e})", path.display()));
            for entry in entries {
                let entry = entry.unwrap();
                let file = entry.file_name().to_string_lossy().into_owned();
                if !file.ends_with(".registration.json") {
                    continue;
                }
                let json = read_json(&entry.path());
                if json["fmt"] == "tpm" {
                    let rel = format!("{dir}/{file}");
                    assert!(
                        TPM_VECTORS.contains(&rel.as_str()),
                        "{rel} is not in TPM_VECTORS"
                    );
                }
            }
        }
    }

    /// One RSA (RS1-signed, real Windows TPM) and one ECC (ES256) vector.
    const RSA_CASE: &str = "devices/yubico-windows-hello-tpm-rs256.registration.json";
    const ECC_CASE: &str = "w3c/tpm-es256.registration.json";

    #[test]
    fn changed_magic_type_extra_data_and_name_are_named() {
        for rel in [RSA_CASE, ECC_CASE] {
            let case = load(rel);
            let st = &case.object.att_stmt;
            let magic = with_bytes(st, "certInfo", |ci| ci[3] ^= 1);
            assert_err(
                run_with(&case, &magic),
                &format!("{CERT_INFO}.magic"),
                "mismatch",
                rel,
            );
            let kind = with_bytes(st, "certInfo", |ci| ci[5] ^= 1);
            assert_err(
                run_with(&case, &kind),
                &format!("{CERT_INFO}.type"),
                "mismatch",
                rel,
            );
            let extra = with_bytes(st, "certInfo", |ci| {
                let at = extra_data_at(ci);
                ci[at] ^= 0x80;
            });
            assert_err(
                run_with(&case, &extra),
                &format!("{CERT_INFO}.extraData"),
                "mismatch",
                rel,
            );
            // The last byte of attested.name (qualifiedName follows it).
            let name = with_bytes(st, "certInfo", |ci| {
                let q = be16(ci, extra_data_at(ci) - 2);
                let at = extra_data_at(ci) + q + CLOCK_INFO_LEN + FIRMWARE_VERSION_LEN;
                let len = be16(ci, at);
                ci[at + 2 + len - 1] ^= 1;
            });
            assert_err(
                run_with(&case, &name),
                &format!("{CERT_INFO}.attested.name"),
                "mismatch",
                rel,
            );
        }
    }

    #[test]
    fn changed_pub_area_is_caught() {
        for rel in [RSA_CASE, ECC_CASE] {
            let case = load(rel);
            let st = &case.object.att_stmt;
            // unique is the last field (the modulus, or y).
            let unique = with_bytes(st, "pubArea", |pa| {
                let last = pa.len() - 1;
                pa[last] ^= 1;
            });
            assert_err(
                run_with(&case, &unique),
                &format!("{PUB_AREA}.unique"),
                "mismatch",
                rel,
            );
            // objectAttributes is not part of the key, so the Name catches it.
            let attrs = with_bytes(st, "pubArea", |pa| pa[7] ^= 0x01);
            assert_err(
                run_with(&case, &attrs),
                &format!("{CERT_INFO}.attested.name"),
                "mismatch",
                rel,
            );
        }
        let rsa = load(RSA_CASE);
        let exponent = with_bytes(&rsa.object.att_stmt, "pubArea", |pa| {
            let at = after_scheme(pa) + 2;
            pa[at..at + 4].copy_from_slice(&3u32.to_be_bytes());
        });
        assert_err(
            run_with(&rsa, &exponent),
            &format!("{PUB_AREA}.parameters.exponent"),
            "mismatch",
            RSA_CASE,
        );
        let ecc = load(ECC_CASE);
        let curve = with_bytes(&ecc.object.att_stmt, "pubArea", |pa| {
            let at = after_scheme(pa);
            pa[at..at + 2].copy_from_slice(&TPM_ECC_NIST_P384.to_be_bytes());
        });
        assert_err(
            run_with(&ecc, &curve),
            &format!("{PUB_AREA}.parameters.curveID"),
            "mismatch",
            ECC_CASE,
        );
        // An RSA pubArea against an EC credential.
        let swapped = with_member(
            &ecc.object.att_stmt,
            "pubArea",
            Value::Bytes(member_bytes(&rsa.object.att_stmt, "pubArea")),
        );
        assert_err(
            run_with(&ecc, &swapped),
            &format!("{PUB_AREA}.type"),
            "mismatch",
            ECC_CASE,
        );
    }

    #[test]
    fn flipped_signature_bytes_fail() {
        for rel in TPM_VECTORS {
            let case = load(rel);
            let len = member_bytes(&case.object.att_stmt, "sig").len();
            for at in [0, len / 2, len - 1] {
                let st = with_bytes(&case.object.att_stmt, "sig", |s| s[at] ^= 0x01);
                assert_err(run_with(&case, &st), &field("sig"), "bad_signature", rel);
            }
        }
    }

    #[test]
    fn ver_alg_and_members() {
        let case = load(RSA_CASE);
        let st = &case.object.att_stmt;
        let ver = with_member(st, "ver", Value::Text("1.0".into()));
        assert_err(run_with(&case, &ver), &field("ver"), "mismatch", "ver 1.0");
        let ver_int = with_member(st, "ver", Value::Integer(2.into()));
        assert_err(
            run_with(&case, &ver_int),
            &field("ver"),
            "wrong_type",
            "ver 2",
        );
        assert_err(
            run_with(&case, &without_member(st, "ver")),
            &field("ver"),
            "missing",
            "no ver",
        );

        // RS1 -> RS256: extraData is a SHA-1 digest, so it no longer matches.
        let rs256 = with_member(st, "alg", Value::Integer((-257).into()));
        assert_err(
            run_with(&case, &rs256),
            &format!("{CERT_INFO}.extraData"),
            "mismatch",
            "RS256",
        );
        let eddsa = with_member(st, "alg", Value::Integer((-8).into()));
        assert_err(run_with(&case, &eddsa), &field("alg"), "algorithm", "EdDSA");
        let unknown = with_member(st, "alg", Value::Integer((-4242).into()));
        assert_err(
            run_with(&case, &unknown),
            &field("alg"),
            "algorithm",
            "unknown alg",
        );

        // ES256 statement re-labelled RS256: same hash, wrong key type.
        let ecc = load(ECC_CASE);
        let relabel = with_member(&ecc.object.att_stmt, "alg", Value::Integer((-257).into()));
        assert_err(
            run_with(&ecc, &relabel),
            &field("alg"),
            "algorithm",
            "ES256 as RS256",
        );
        let es384 = with_member(&ecc.object.att_stmt, "alg", Value::Integer((-35).into()));
        assert_err(
            run_with(&ecc, &es384),
            &format!("{CERT_INFO}.extraData"),
            "mismatch",
            "ES384",
        );

        let ecdaa = with_member(st, "ecdaaKeyId", Value::Bytes(vec![1; 32]));
        assert_err(
            run_with(&case, &ecdaa),
            &field("ecdaaKeyId"),
            "policy",
            "ecdaaKeyId",
        );
        let extra = with_member(st, "extra", Value::Bool(true));
        assert_err(
            run_with(&case, &extra),
            &field("extra"),
            "malformed",
            "unknown member",
        );
        let Value::Map(mut entries) = st.clone() else {
            unreachable!()
        };
        entries.push((Value::Text("sig".into()), Value::Bytes(vec![0; 256])));
        assert_err(
            run_with(&case, &Value::Map(entries)),
            &field("sig"),
            "malformed",
            "duplicate sig",
        );
        assert_err(
            run_with(&case, &without_member(st, "x5c")),
            &field("x5c"),
            "missing",
            "no x5c",
        );
        assert_err(
            run_with(&case, &without_member(st, "pubArea")),
            &field("pubArea"),
            "missing",
            "no pubArea",
        );
        let empty_x5c = with_member(st, "x5c", Value::Array(vec![]));
        assert_err(
            run_with(&case, &empty_x5c),
            &field("x5c"),
            "empty",
            "empty x5c",
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for rel in [RSA_CASE, ECC_CASE] {
            let case = load(rel);
            for key in ["certInfo", "pubArea"] {
                let st = with_bytes(&case.object.att_stmt, key, |b| b.push(0));
                let e = run_with(&case, &st).unwrap_err();
                assert_eq!(e.field(), field(key), "{rel} {key}: {e}");
                assert!(e.to_string().contains("after the end"), "{rel} {key}: {e}");
            }
        }
    }

    #[test]
    fn every_truncation_fails_without_panicking() {
        for rel in TPM_VECTORS {
            let case = load(rel);
            for key in ["certInfo", "pubArea"] {
                let full = member_bytes(&case.object.att_stmt, key);
                for len in 0..full.len() {
                    let st = with_member(
                        &case.object.att_stmt,
                        key,
                        Value::Bytes(full[..len].to_vec()),
                    );
                    let e = run_with(&case, &st).expect_err("a truncated structure verified");
                    assert!(
                        e.field().starts_with(&field(key)),
                        "{rel} {key}[..{len}]: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn parsers_survive_hostile_sizes() {
        // A TPM2B that claims more than the data holds, or more than allowed.
        let mut ci = Vec::new();
        ci.extend(TPM_GENERATED_VALUE.to_be_bytes());
        ci.extend(TPM_ST_ATTEST_CERTIFY.to_be_bytes());
        ci.extend(0xffffu16.to_be_bytes());
        assert!(
            parse_cert_info(&ci)
                .unwrap_err()
                .to_string()
                .contains("exceeds")
        );
        ci.truncate(6);
        ci.extend(20u16.to_be_bytes());
        ci.extend([0; 3]);
        assert!(
            parse_cert_info(&ci)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        let mut pa = Vec::new();
        pa.extend(tpm_alg::RSA.to_be_bytes());
        pa.extend(tpm_alg::SHA256.to_be_bytes());
        pa.extend(0u32.to_be_bytes());
        pa.extend(0u16.to_be_bytes());
        pa.extend(tpm_alg::NULL.to_be_bytes());
        pa.extend(tpm_alg::NULL.to_be_bytes());
        pa.extend(2048u16.to_be_bytes());
        pa.extend(0u32.to_be_bytes());
        pa.extend(0xffffu16.to_be_bytes());
        let e = parse_pub_area(&pa).unwrap_err();
        assert_eq!(e.field(), format!("{PUB_AREA}.unique"), "{e}");
        // Unknown type, scheme, kdf and symmetric.
        let mut bad_type = pa.clone();
        bad_type[1] = 0x08;
        assert_eq!(
            parse_pub_area(&bad_type).unwrap_err().field(),
            format!("{PUB_AREA}.type")
        );
        let mut bad_sym = pa.clone();
        bad_sym[10..12].copy_from_slice(&0x0006u16.to_be_bytes());
        assert_eq!(
            parse_pub_area(&bad_sym).unwrap_err().field(),
            format!("{PUB_AREA}.parameters.symmetric")
        );
        let mut bad_scheme = pa.clone();
        bad_scheme[12..14].copy_from_slice(&tpm_alg::ECDSA.to_be_bytes());
        assert_eq!(
            parse_pub_area(&bad_scheme).unwrap_err().field(),
            format!("{PUB_AREA}.parameters.scheme")
        );
        let mut null_name = pa.clone();
        null_name[2..4].copy_from_slice(&tpm_alg::NULL.to_be_bytes());
        assert_eq!(
            parse_pub_area(&null_name).unwrap_err().field(),
            format!("{PUB_AREA}.nameAlg")
        );
        assert!(check_name(&[0x00], b"x").is_err());
        assert!(check_name(&[0x00, 0x12, 1, 2, 3], b"x").is_err());
    }

    #[test]
    fn oversized_structures_are_refused_before_parsing() {
        let case = load(RSA_CASE);
        let big = with_member(
            &case.object.att_stmt,
            "certInfo",
            Value::Bytes(vec![0; MAX_CERT_INFO + 1]),
        );
        assert_err(
            run_with(&case, &big),
            &field("certInfo"),
            "too_large",
            "certInfo",
        );
        let big = with_member(
            &case.object.att_stmt,
            "pubArea",
            Value::Bytes(vec![0; MAX_PUB_AREA + 1]),
        );
        assert_err(
            run_with(&case, &big),
            &field("pubArea"),
            "too_large",
            "pubArea",
        );
    }

    // ---- Synthetic statements: an AIK and certificate made here, so the
    // ---- certificate requirements and the Name rule can be varied.

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        let n = content.len();
        if n < 0x80 {
            v.push(n as u8);
        } else if n < 0x100 {
            v.extend([0x81, n as u8]);
        } else {
            v.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        v.extend_from_slice(content);
        v
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn der_oid(dotted: &str) -> Vec<u8> {
        tlv(0x06, ObjectIdentifier::new(dotted).unwrap().as_bytes())
    }

    fn attr(dotted: &str, value: &str) -> Vec<u8> {
        seq(&[der_oid(dotted), tlv(0x0c, value.as_bytes())])
    }

    /// A DER SET OF: members sorted by their encoding.
    fn rdn(attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut attrs = attrs.to_vec();
        attrs.sort();
        tlv(0x31, &attrs.concat())
    }

    fn extension(dotted: &str, critical: bool, value: &[u8]) -> Vec<u8> {
        let mut parts = vec![der_oid(dotted)];
        if critical {
            parts.push(tlv(0x01, &[0xff]));
        }
        parts.push(tlv(0x04, value));
        seq(&parts)
    }

    #[derive(Clone, Copy, PartialEq)]
    enum San {
        OneRdn,
        RdnEach,
        NoModel,
        BadManufacturer,
        Absent,
    }

    #[derive(Clone)]
    struct Aik {
        version: u8,
        subject_cn: bool,
        san: San,
        san_critical: bool,
        eku: Option<&'static str>,
        ca: Option<bool>,
        aaguid: Option<Vec<u8>>,
    }

    impl Default for Aik {
        fn default() -> Self {
            Aik {
                version: 2,
                subject_cn: false,
                san: San::RdnEach,
                san_critical: true,
                eku: Some("2.23.133.8.3"),
                ca: Some(false),
                aaguid: None,
            }
        }
    }

    fn aik_certificate(key: &EcdsaKeyPair, o: &Aik) -> Vec<u8> {
        let rng = SystemRandom::new();
        let ecdsa_sha256 = seq(&[der_oid("1.2.840.10045.4.3.2")]);
        let manufacturer = attr(
            "2.23.133.2.1",
            if o.san == San::BadManufacturer {
                "NTC"
            } else {
                "id:FFFFF1D0"
            },
        );
        let model = attr("2.23.133.2.2", "NPCT6xx");
        let version = attr("2.23.133.2.3", "id:13");
        let dir_name = match o.san {
            San::OneRdn => seq(&[rdn(&[manufacturer, model, version])]),
            San::NoModel => seq(&[rdn(&[manufacturer]), rdn(&[version])]),
            _ => seq(&[rdn(&[manufacturer]), rdn(&[model]), rdn(&[version])]),
        };
        let mut exts = Vec::new();
        if o.san != San::Absent {
            exts.push(extension(
                "2.5.29.17",
                o.san_critical,
                &seq(&[tlv(0xa4, &dir_name)]),
            ));
        }
        if let Some(eku) = o.eku {
            exts.push(extension("2.5.29.37", false, &seq(&[der_oid(eku)])));
        }
        if let Some(ca) = o.ca {
            let body = if ca {
                seq(&[tlv(0x01, &[0xff])])
            } else {
                seq(&[])
            };
            exts.push(extension("2.5.29.19", true, &body));
        }
        if let Some(aaguid) = &o.aaguid {
            exts.push(extension(
                "1.3.6.1.4.1.45724.1.1.4",
                false,
                &tlv(0x04, aaguid),
            ));
        }
        let subject = if o.subject_cn {
            seq(&[rdn(&[attr("2.5.4.3", "AIK")])])
        } else {
            seq(&[])
        };
        let mut point = vec![0];
        point.extend_from_slice(key.public_key().as_ref());
        let tbs = seq(&[
            tlv(0xa0, &tlv(0x02, &[o.version])),
            tlv(0x02, &[0x01]),
            ecdsa_sha256.clone(),
            seq(&[rdn(&[attr("2.5.4.3", "Synthetic TPM CA")])]),
            seq(&[tlv(0x17, b"200101000000Z"), tlv(0x17, b"491231235959Z")]),
            subject,
            seq(&[
                seq(&[der_oid("1.2.840.10045.2.1"), der_oid("1.2.840.10045.3.1.7")]),
                tlv(0x03, &point),
            ]),
            tlv(0xa3, &seq(&exts)),
        ]);
        let signature = key.sign(&rng, &tbs).unwrap();
        let mut bits = vec![0];
        bits.extend_from_slice(signature.as_ref());
        seq(&[tbs, ecdsa_sha256, tlv(0x03, &bits)])
    }

    fn keypair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap()
    }

    const SYNTH_AAGUID: [u8; 16] = [0xaa; 16];

    struct Synth {
        /// pubArea.nameAlg
        pub_name_alg: u16,
        /// The hash algorithm id the Name is computed with.
        name_alg: u16,
        aik: Aik,
    }

    impl Default for Synth {
        fn default() -> Self {
            Synth {
                pub_name_alg: tpm_alg::SHA256,
                name_alg: tpm_alg::SHA256,
                aik: Aik::default(),
            }
        }
    }

    struct Built {
        auth_data: AuthenticatorData,
        client_data_hash: [u8; 32],
        att_stmt: Value,
    }

    impl Built {
        fn verify(&self) -> Result<Verified, Error> {
            self.verify_with(&self.att_stmt)
        }

        fn verify_with(&self, att_stmt: &Value) -> Result<Verified, Error> {
            let policy = AttestationPolicy::default();
            let stmt = Statement {
                fmt: "tpm",
                att_stmt,
                auth_data: &self.auth_data,
                client_data_hash: &self.client_data_hash,
                policy: &policy,
                now: SystemTime::UNIX_EPOCH,
            };
            attestation::verify(&stmt)
        }
    }

    /// A statement the way a TPM makes it: ES256 AIK, P-256 credential.
    fn build(s: &Synth) -> Built {
        let rng = SystemRandom::new();
        let aik = keypair();
        let credential = keypair();
        let point: [u8; 65] = credential.public_key().as_ref().try_into().unwrap();

        let mut ad = vec![0x11; 32];
        ad.push(0x45);
        ad.extend(0u32.to_be_bytes());
        ad.extend(SYNTH_AAGUID);
        ad.extend(16u16.to_be_bytes());
        ad.extend([7u8; 16]);
        ad.extend(cose_p256(&point));
        let client_data_hash = crate::keys::sha256(b"client data");

        let mut pa = Vec::new();
        pa.extend(tpm_alg::ECC.to_be_bytes());
        pa.extend(s.pub_name_alg.to_be_bytes());
        pa.extend(0x0004_0072u32.to_be_bytes());
        pa.extend(0u16.to_be_bytes());
        pa.extend(tpm_alg::NULL.to_be_bytes());
        pa.extend(tpm_alg::ECDSA.to_be_bytes());
        pa.extend(tpm_alg::SHA256.to_be_bytes());
        pa.extend(TPM_ECC_NIST_P256.to_be_bytes());
        pa.extend(tpm_alg::NULL.to_be_bytes());
        for coordinate in [&point[1..33], &point[33..]] {
            pa.extend(32u16.to_be_bytes());
            pa.extend_from_slice(coordinate);
        }

        let mut to_sign = ad.clone();
        to_sign.extend(client_data_hash);
        let extra = HashAlg::Sha256.digest(&to_sign);
        let mut name = s.name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(HashAlg::from_tpm(s.name_alg).unwrap().digest(&pa).as_ref());
        let mut ci = Vec::new();
        ci.extend(TPM_GENERATED_VALUE.to_be_bytes());
        ci.extend(TPM_ST_ATTEST_CERTIFY.to_be_bytes());
        ci.extend(0u16.to_be_bytes());
        ci.extend(32u16.to_be_bytes());
        ci.extend_from_slice(extra.as_ref());
        ci.extend([0x5a; CLOCK_INFO_LEN + FIRMWARE_VERSION_LEN]);
        ci.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
        ci.extend(name);
        ci.extend(0u16.to_be_bytes());
        let signature = aik.sign(&rng, &ci).unwrap();

        let text = |t: &str| Value::Text(t.into());
        let att_stmt = Value::Map(vec![
            (text("ver"), text("2.0")),
            (text("alg"), Value::Integer((-7).into())),
            (
                text("x5c"),
                Value::Array(vec![Value::Bytes(aik_certificate(&aik, &s.aik))]),
            ),
            (text("sig"), Value::Bytes(signature.as_ref().to_vec())),
            (text("certInfo"), Value::Bytes(ci)),
            (text("pubArea"), Value::Bytes(pa)),
        ]);
        Built {
            auth_data: AuthenticatorData::parse(&ad, "").unwrap(),
            client_data_hash,
            att_stmt,
        }
    }

    fn synth_err(s: &Synth, field_suffix: &str, kind: &str) {
        let built = build(s);
        let e = built.verify().expect_err("verified");
        assert_eq!(
            e.field(),
            format!(
                "{}.x5c[0].{field_suffix}",
                "response.attestationObject.attStmt"
            ),
            "{e}"
        );
        assert_eq!(e.kind(), kind, "{e}");
    }

    #[test]
    fn synthetic_statement_verifies_with_both_san_layouts() {
        for san in [San::OneRdn, San::RdnEach] {
            let s = Synth {
                aik: Aik {
                    san,
                    ..Aik::default()
                },
                ..Synth::default()
            };
            let v = build(&s).verify().unwrap();
            assert_eq!(v.attestation_type, AttestationType::AttCa);
            assert_eq!(v.trust_path.len(), 1);
        }
    }

    #[test]
    fn name_hash_is_taken_from_the_name() {
        // The conformance case: pubArea.nameAlg differs from the Name's hash.
        for (pub_name_alg, name_alg) in [
            (tpm_alg::SHA1, tpm_alg::SHA256),
            (tpm_alg::SHA256, tpm_alg::SHA1),
            (tpm_alg::SHA512, tpm_alg::SHA384),
        ] {
            let s = Synth {
                pub_name_alg,
                name_alg,
                ..Synth::default()
            };
            build(&s)
                .verify()
                .unwrap_or_else(|e| panic!("nameAlg {pub_name_alg:#x} / Name {name_alg:#x}: {e}"));
        }
        // A pubArea with no digest Name is refused whatever the Name says.
        let s = Synth {
            pub_name_alg: tpm_alg::NULL,
            ..Synth::default()
        };
        let e = build(&s).verify().unwrap_err();
        assert_eq!(e.field(), format!("{PUB_AREA}.nameAlg"), "{e}");
    }

    #[test]
    fn aik_certificate_requirements() {
        const SAN: &str = "extensions.subjectAltName";
        /// A change to the default AIK, the field it breaks, the error kind.
        type Refusal = (fn(&mut Aik), &'static str, &'static str);
        let refused: [Refusal; 12] = [
            (|a| a.subject_cn = true, "subject", "malformed"),
            (|a| a.version = 1, "version", "malformed"),
            (|a| a.san = San::Absent, SAN, "missing"),
            (|a| a.san_critical = false, SAN, "malformed"),
            (
                |a| a.san = San::NoModel,
                "extensions.subjectAltName.tcg-at-tpmModel",
                "missing",
            ),
            (
                |a| a.san = San::BadManufacturer,
                "extensions.subjectAltName.tcg-at-tpmManufacturer",
                "malformed",
            ),
            (|a| a.eku = None, "extensions.extKeyUsage", "missing"),
            (
                |a| a.eku = Some("1.3.6.1.5.5.7.3.2"),
                "extensions.extKeyUsage",
                "malformed",
            ),
            (|a| a.ca = None, "extensions.basicConstraints", "missing"),
            (
                |a| a.ca = Some(true),
                "extensions.basicConstraints",
                "malformed",
            ),
            (
                |a| a.aaguid = Some(vec![0xbb; 16]),
                "extensions.id-fido-gen-ce-aaguid",
                "mismatch",
            ),
            (
                |a| a.aaguid = Some(vec![0xaa; 15]),
                "extensions.id-fido-gen-ce-aaguid",
                "malformed",
            ),
        ];
        for (edit, field_suffix, kind) in refused {
            let mut s = Synth::default();
            edit(&mut s.aik);
            synth_err(&s, field_suffix, kind);
        }
        let mut s = Synth::default();
        s.aik.aaguid = Some(SYNTH_AAGUID.to_vec());
        build(&s).verify().expect("matching AAGUID extension");
    }

    #[test]
    fn san_helper_on_real_certificates() {
        // One RDN holding all three attributes, and one attribute per RDN.
        for rel in [
            "devices/simplewebauthn-tpm-nonspec-san.registration.json",
            "devices/simplewebauthn-tpm-spec-san.registration.json",
        ] {
            let case = load(rel);
            let x5c = certpath::parse_x5c(
                attestation::map_get(&case.object.att_stmt, "x5c").unwrap(),
                &field("x5c"),
            )
            .unwrap();
            let (san, critical) = x5c[0].extension(&oid::SUBJECT_ALT_NAME).unwrap();
            check_subject_alt_name(san, critical, "san").unwrap();
            assert!(check_subject_alt_name(san, false, "san").is_err());
            check_aik_certificate(
                &x5c[0],
                &case.object.auth_data.attested.as_ref().unwrap().aaguid,
            )
            .unwrap();
        }
    }

    #[test]
    fn synthetic_mutations() {
        let built = build(&Synth::default());
        let sig = with_bytes(&built.att_stmt, "sig", |s| {
            let last = s.len() - 1;
            s[last] ^= 1;
        });
        assert_err(
            built.verify_with(&sig),
            &field("sig"),
            "bad_signature",
            "flipped sig",
        );
        let rs1 = with_member(&built.att_stmt, "alg", Value::Integer((-65535).into()));
        assert_err(
            built.verify_with(&rs1),
            &format!("{CERT_INFO}.extraData"),
            "mismatch",
            "RS1",
        );
        // ES512 on a P-256 AIK is a supported pairing for verify(), but the
        // extraData was made with SHA-256.
        let es512 = with_member(&built.att_stmt, "alg", Value::Integer((-36).into()));
        assert_err(
            built.verify_with(&es512),
            &format!("{CERT_INFO}.extraData"),
            "mismatch",
            "ES512",
        );
    }
}
