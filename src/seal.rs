//! COSE_Encrypt to one P-256 key: how registration tokens reach a device
//! and how a device's sealed registration request reaches signet.
//!
//! # Format (RFC 9052 §5.1, RFC 9053 §5-6)
//!
//! ```text
//! COSE_Encrypt (tag 96) = [
//!   protected:   { 1 (alg): 3 (A256GCM) },
//!   unprotected: { 5 (IV): 12 random bytes },
//!   ciphertext:  AES-256-GCM(CEK, IV, plaintext, aad = Enc_structure),
//!   recipients:  [ [
//!     protected:   { 1 (alg): -25 (ECDH-ES + HKDF-256) },
//!     unprotected: { -1 (ephemeral key): COSE_Key EC2 P-256 {1: 2, -1: 1, -2: x, -3: y},
//!                    4 (kid): the recipient key's id, when known },
//!     ciphertext:  h'' (direct key agreement: the derived key is the CEK)
//!   ] ]
//! ]
//! Enc_structure = ["Encrypt", body protected (bstr), external_aad (bstr)]
//! CEK = HKDF-SHA-256(salt = none, IKM = ECDH x-coordinate,
//!                    info = COSE_KDF_Context, L = 32)
//! COSE_KDF_Context = [3, [nil, nil, nil], [nil, nil, nil],
//!                     [256, recipient protected (bstr)]]
//! ```
//!
//! The sender draws a fresh ephemeral key per message, so each message has
//! its own CEK and the 96-bit random IV never repeats under one key. The
//! recipient's half of the ECDH is a closure: signet's runs in the HSM or
//! TPM (`token-encryption`), a device's in its TEE or Secure Enclave.
//!
//! Parsing is strict and bounded: one recipient, exactly these algorithms,
//! a P-256 point on the curve, a 12-byte IV, nothing larger than
//! [`SEALED_MAX`]. Every refusal names the member at fault.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use coset::iana::{self, EnumI64};
use coset::{
    AsCborValue, CborSerializable, CoseEncrypt, CoseEncryptBuilder, CoseKdfContextBuilder, CoseKey,
    CoseKeyBuilder, CoseRecipientBuilder, HeaderBuilder, Label, ProtectedHeader, SuppPubInfo,
    TaggedCborSerializable,
};
use zeroize::Zeroizing;

use crate::keys::{EcPublicKey, KeyError, SharedSecret};

/// The largest sealed message accepted (tokens and requests are a few KiB;
/// a registration response with a long attestation chain stays far below).
pub const SEALED_MAX: usize = 64 * 1024;
/// A key id longer than this is refused.
pub const KID_MAX: usize = 64;
const IV_LEN: usize = 12;

/// Why a sealed message was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    /// The recipient's key agreement failed (the key device, usually).
    #[error("key agreement: {0}")]
    Key(#[from] KeyError),
    /// The tag did not verify: another recipient's message, or altered.
    #[error("ciphertext: does not decrypt with this key (another recipient, or altered)")]
    Decrypt,
    #[error("random generator or cipher failed")]
    Crypto,
}

fn bad(field: &'static str, reason: impl Into<String>) -> SealError {
    SealError::Malformed {
        field,
        reason: reason.into(),
    }
}

/// The recipient protected header every message uses, serialized once
/// here so the KDF context of sender and recipient agree byte for byte.
fn recipient_protected() -> coset::Header {
    HeaderBuilder::new()
        .algorithm(iana::Algorithm::ECDH_ES_HKDF_256)
        .build()
}

fn cek(
    secret: &SharedSecret,
    recipient_protected: &ProtectedHeader,
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let context = CoseKdfContextBuilder::new()
        .algorithm(iana::Algorithm::A256GCM)
        .supp_pub_info(SuppPubInfo {
            key_data_length: 256,
            protected: recipient_protected.clone(),
            other: None,
        })
        .build()
        .to_vec()
        .map_err(|_| SealError::Crypto)?;
    struct Len32;
    impl KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let info = [context.as_slice()];
    let prk = Salt::new(HKDF_SHA256, &[]).extract(secret.expose());
    let okm = prk.expand(&info, Len32).map_err(|_| SealError::Crypto)?;
    let mut key = Zeroizing::new([0u8; 32]);
    okm.fill(key.as_mut()).map_err(|_| SealError::Crypto)?;
    Ok(key)
}

fn gcm(key: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Crypto)
}

/// Seals `plaintext` to `recipient`. `kid` names the recipient key (so a
/// recipient with several keys knows which to use); `external_aad` binds
/// context the message does not carry (e.g. the device id).
pub fn seal(
    plaintext: &[u8],
    recipient: &EcPublicKey,
    kid: Option<&[u8]>,
    external_aad: &[u8],
) -> Result<Vec<u8>, SealError> {
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, &aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| SealError::Crypto)?;
    let ephemeral_public = ephemeral
        .compute_public_key()
        .map_err(|_| SealError::Crypto)?;
    let point = EcPublicKey::from_sec1(ephemeral_public.as_ref())?;
    let peer = UnparsedPublicKey::new(&ECDH_P256, recipient.sec1().to_vec());
    let secret = agree_ephemeral(ephemeral, peer, SealError::Crypto, |x| {
        SharedSecret::from_slice(x).map_err(SealError::from)
    })?;

    let protected = ProtectedHeader {
        original_data: None,
        header: recipient_protected(),
    };
    let protected =
        ProtectedHeader::from_cbor_bstr(protected.cbor_bstr().map_err(|_| SealError::Crypto)?)
            .map_err(|_| SealError::Crypto)?;
    let key = cek(&secret, &protected)?;

    let ephemeral_key = CoseKeyBuilder::new_ec2_pub_key(
        iana::EllipticCurve::P_256,
        point.x().to_vec(),
        point.y().to_vec(),
    )
    .build()
    .to_cbor_value()
    .map_err(|_| SealError::Crypto)?;
    let mut unprotected = HeaderBuilder::new().value(
        iana::HeaderAlgorithmParameter::EphemeralKey.to_i64(),
        ephemeral_key,
    );
    if let Some(k) = kid {
        unprotected = unprotected.key_id(k.to_vec());
    }
    let recipient = CoseRecipientBuilder::new()
        .protected(protected.header.clone())
        .unprotected(unprotected.build())
        .ciphertext(Vec::new())
        .build();

    let mut iv = [0u8; IV_LEN];
    aws_lc_rs::rand::fill(&mut iv).map_err(|_| SealError::Crypto)?;
    let cipher = gcm(&key)?;
    let message = CoseEncryptBuilder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::A256GCM)
                .build(),
        )
        .unprotected(HeaderBuilder::new().iv(iv.to_vec()).build())
        .add_recipient(recipient)
        .try_create_ciphertext(plaintext, external_aad, |pt, aad| {
            let mut buf = pt.to_vec();
            cipher
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(aad),
                    &mut buf,
                )
                .map(|()| buf)
                .map_err(|_| SealError::Crypto)
        })?
        .build();
    message.to_tagged_vec().map_err(|_| SealError::Crypto)
}

/// A parsed, structurally valid sealed message, not yet decrypted.
#[derive(Debug)]
pub struct Envelope {
    message: CoseEncrypt,
    /// The sender's ephemeral public key: what the recipient's ECDH takes.
    pub ephemeral: EcPublicKey,
    /// The recipient key id the sender named, if any.
    pub kid: Option<Vec<u8>>,
}

impl Envelope {
    /// Parses `bytes` (tagged or untagged COSE_Encrypt) and checks every
    /// header: algorithms, IV, the ephemeral key, one recipient.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, SealError> {
        if bytes.len() > SEALED_MAX {
            return Err(bad("sealed", format!("larger than {SEALED_MAX} bytes")));
        }
        if bytes.is_empty() {
            return Err(bad("sealed", "empty"));
        }
        let message = CoseEncrypt::from_tagged_slice(bytes)
            .or_else(|_| CoseEncrypt::from_slice(bytes))
            .map_err(|e| bad("sealed", format!("not a COSE_Encrypt: {e}")))?;
        let alg = message.protected.header.alg.clone();
        if alg != Some(coset::Algorithm::Assigned(iana::Algorithm::A256GCM)) {
            return Err(bad(
                "sealed.protected.alg",
                "must be 3 (A256GCM), in the protected header",
            ));
        }
        if message.unprotected.iv.len() != IV_LEN || !message.protected.header.iv.is_empty() {
            return Err(bad(
                "sealed.unprotected.iv",
                format!("must be {IV_LEN} bytes, in the unprotected header"),
            ));
        }
        if message.ciphertext.as_ref().is_none_or(|c| c.len() < 16) {
            return Err(bad(
                "sealed.ciphertext",
                "missing or shorter than the GCM tag",
            ));
        }
        let [recipient] = message.recipients.as_slice() else {
            return Err(bad(
                "sealed.recipients",
                format!(
                    "must hold exactly one recipient, not {}",
                    message.recipients.len()
                ),
            ));
        };
        if recipient.protected.header != recipient_protected() {
            return Err(bad(
                "sealed.recipients[0].protected",
                "must be exactly {1: -25} (ECDH-ES + HKDF-256)",
            ));
        }
        if recipient.ciphertext.as_ref().is_some_and(|c| !c.is_empty())
            || !recipient.recipients.is_empty()
        {
            return Err(bad(
                "sealed.recipients[0].ciphertext",
                "must be empty: direct key agreement carries no wrapped key",
            ));
        }
        let kid = match recipient.unprotected.key_id.len() {
            0 => None,
            n if n > KID_MAX => {
                return Err(bad(
                    "sealed.recipients[0].unprotected.kid",
                    format!("longer than {KID_MAX} bytes"),
                ));
            }
            _ => Some(recipient.unprotected.key_id.clone()),
        };
        let label = Label::Int(iana::HeaderAlgorithmParameter::EphemeralKey.to_i64());
        let mut ephemeral = recipient
            .unprotected
            .rest
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, v)| v);
        let (Some(value), None) = (ephemeral.next(), ephemeral.next()) else {
            return Err(bad(
                "sealed.recipients[0].unprotected.-1",
                "must hold exactly one ephemeral key",
            ));
        };
        let key = CoseKey::from_cbor_value(value.clone()).map_err(|e| {
            bad(
                "sealed.recipients[0].unprotected.-1",
                format!("not a COSE_Key: {e}"),
            )
        })?;
        let ephemeral = ec2_p256(&key)?;
        Ok(Envelope {
            message,
            ephemeral,
            kid,
        })
    }

    /// Decrypts with the recipient's ECDH of [`Envelope::ephemeral`].
    pub fn open(
        &self,
        secret: &SharedSecret,
        external_aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let protected = &self.message.recipients[0].protected;
        let key = cek(secret, protected)?;
        let cipher = gcm(&key)?;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&self.message.unprotected.iv);
        let plain = self.message.decrypt_ciphertext(
            external_aad,
            || SealError::Decrypt,
            |ct, aad| {
                let mut buf = ct.to_vec();
                let n = cipher
                    .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf)
                    .map_err(|_| SealError::Decrypt)?
                    .len();
                buf.truncate(n);
                Ok::<_, SealError>(buf)
            },
        )?;
        Ok(Zeroizing::new(plain))
    }
}

/// An EC2 P-256 public COSE_Key with both coordinates, on the curve.
fn ec2_p256(key: &CoseKey) -> Result<EcPublicKey, SealError> {
    const FIELD: &str = "sealed.recipients[0].unprotected.-1";
    if key.kty != coset::KeyType::Assigned(iana::KeyType::EC2) {
        return Err(bad(FIELD, "kty must be 2 (EC2)"));
    }
    let mut crv = None;
    let mut x = None;
    let mut y = None;
    for (label, value) in &key.params {
        match label {
            Label::Int(-1) => crv = value.as_integer().and_then(|i| i64::try_from(i).ok()),
            Label::Int(-2) => x = value.as_bytes().cloned(),
            Label::Int(-3) => y = value.as_bytes().cloned(),
            Label::Int(-4) => return Err(bad(FIELD, "carries a private key (-4)")),
            _ => {}
        }
    }
    if crv != Some(iana::EllipticCurve::P_256.to_i64()) {
        return Err(bad(FIELD, "crv must be 1 (P-256)"));
    }
    match (x, y) {
        (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
            EcPublicKey::from_xy(&x, &y).map_err(|_| bad(FIELD, "the point is not on P-256"))
        }
        _ => Err(bad(
            FIELD,
            "x and y must be 32-byte strings (compressed points are not accepted)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipient key held in memory, as a device's would be in its TEE.
    struct Recipient(p256::SecretKey);

    impl Recipient {
        fn new() -> Recipient {
            // Random bytes below the order with overwhelming probability;
            // from_slice refuses the rest, and the loop draws again.
            loop {
                let mut bytes = [0u8; 32];
                aws_lc_rs::rand::fill(&mut bytes).expect("random");
                if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                    return Recipient(k);
                }
            }
        }
        fn public(&self) -> EcPublicKey {
            EcPublicKey::from_p256(&self.0.public_key())
        }
        fn agree(&self, peer: &EcPublicKey) -> SharedSecret {
            let s =
                p256::ecdh::diffie_hellman(self.0.to_nonzero_scalar(), peer.to_p256().as_affine());
            SharedSecret::from_slice(s.raw_secret_bytes()).expect("32 bytes")
        }
    }

    fn open(r: &Recipient, bytes: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let env = Envelope::parse(bytes)?;
        env.open(&r.agree(&env.ephemeral), aad).map(|p| p.to_vec())
    }

    #[test]
    fn round_trip_and_only_the_recipient_opens() {
        let device = Recipient::new();
        let sealed = seal(b"token", &device.public(), Some(b"device-1"), b"aad").expect("seal");
        assert_eq!(open(&device, &sealed, b"aad").expect("open"), b"token");
        assert_eq!(
            Envelope::parse(&sealed).expect("parse").kid.as_deref(),
            Some(&b"device-1"[..])
        );
        // Another key, or other context, does not open it.
        assert!(matches!(
            open(&Recipient::new(), &sealed, b"aad"),
            Err(SealError::Decrypt)
        ));
        assert!(matches!(
            open(&device, &sealed, b"other"),
            Err(SealError::Decrypt)
        ));
        // Two seals of one plaintext share nothing.
        let again = seal(b"token", &device.public(), None, b"aad").expect("seal");
        assert_ne!(sealed, again);
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let device = Recipient::new();
        let sealed = seal(b"a registration token", &device.public(), None, b"").expect("seal");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&device, &bad, b"").is_err(),
                "byte {i} flipped and still opened"
            );
        }
    }

    #[test]
    fn truncated_oversized_and_foreign_messages_name_the_member() {
        let device = Recipient::new();
        let sealed = seal(b"x", &device.public(), None, b"").expect("seal");
        for n in [0, 1, 10, sealed.len() / 2, sealed.len() - 1] {
            let e = Envelope::parse(&sealed[..n]).expect_err("truncated");
            assert!(matches!(e, SealError::Malformed { .. }), "{n}: {e}");
        }
        let e = Envelope::parse(&vec![0u8; SEALED_MAX + 1]).expect_err("big");
        assert!(e.to_string().contains("larger than"), "{e}");
        // A COSE_Encrypt with another content algorithm.
        let mut msg = CoseEncrypt::from_tagged_slice(&sealed).expect("parse");
        msg.protected = ProtectedHeader {
            original_data: None,
            header: HeaderBuilder::new()
                .algorithm(iana::Algorithm::A128GCM)
                .build(),
        };
        let e = Envelope::parse(&msg.clone().to_tagged_vec().expect("cbor")).expect_err("alg");
        assert!(e.to_string().starts_with("sealed.protected.alg"), "{e}");
        // Two recipients.
        let mut two = CoseEncrypt::from_tagged_slice(&sealed).expect("parse");
        two.recipients.push(two.recipients[0].clone());
        let e = Envelope::parse(&two.to_tagged_vec().expect("cbor")).expect_err("two");
        assert!(e.to_string().starts_with("sealed.recipients"), "{e}");
        // A point off the curve.
        let mut off = CoseEncrypt::from_tagged_slice(&sealed).expect("parse");
        let bogus =
            CoseKeyBuilder::new_ec2_pub_key(iana::EllipticCurve::P_256, vec![1; 32], vec![2; 32])
                .build()
                .to_cbor_value()
                .expect("cbor");
        off.recipients[0].unprotected.rest = vec![(Label::Int(-1), bogus)];
        let e = Envelope::parse(&off.to_tagged_vec().expect("cbor")).expect_err("off curve");
        assert!(e.to_string().contains("not on P-256"), "{e}");
    }
}
