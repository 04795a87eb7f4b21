//! The app's side of device binding, for test teams and as a reference for
//! app teams: a device key (in memory here; in the phone's TEE or Secure
//! Enclave in production), opening a sealed registration token, checking
//! it against the pinned `token-signing` key, and sealing the signed
//! registration request to the pinned `token-encryption` key.
//!
//! Unlike the rest of the testkit these return errors instead of
//! panicking: refusing a spoofed token is the device's job, and
//! `signet device-sim` reports why a step failed.

use std::time::{SystemTime, UNIX_EPOCH};

use p256::ecdsa::signature::Signer;
use serde_json::{Value, json};

use crate::device_token::{self, Claims, Request, Token, TokenError};
use crate::keys::{EcPublicKey, EcdsaSignature, KeyError, Kid, SharedSecret};
use crate::seal::{self, Envelope, SealError};
use crate::webauthn::{b64url, b64url_decode};

/// Why the device refused a step.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("sealed token: {0}")]
    Seal(#[from] SealError),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("key: {0}")]
    Key(#[from] KeyError),
    #[error("token.did: the token is for device {found}, not this one ({ours})")]
    WrongDevice { ours: String, found: String },
    #[error("token.aud: the token is for RP {0:?}, not the expected one")]
    WrongAudience(String),
    #[error("token.exp: the token expired at {0} (Unix seconds)")]
    Expired(u64),
    #[error("options: {0}")]
    Options(String),
}

/// A device key pair, as the app's secure hardware would hold it.
pub struct SoftDevice {
    secret: p256::SecretKey,
    pub public: EcPublicKey,
}

/// A token the device opened and checked.
#[derive(Clone, Debug)]
pub struct OpenedToken {
    /// The COSE_Sign1 bytes: what goes back in the request, and what the
    /// passkey's challenge is derived from.
    pub bytes: Vec<u8>,
    pub claims: Claims,
}

impl SoftDevice {
    pub fn generate() -> SoftDevice {
        loop {
            let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(bytes.as_mut()).expect("system RNG");
            // Out of range (probability 2^-32) or zero: draw again.
            if let Ok(secret) = p256::SecretKey::from_slice(bytes.as_ref()) {
                return SoftDevice::from_secret(secret);
            }
        }
    }

    pub fn from_secret(secret: p256::SecretKey) -> SoftDevice {
        let public = EcPublicKey::from_p256(&secret.public_key());
        SoftDevice { secret, public }
    }

    /// The public key as a COSE_Key (EC2, P-256, ES256): what enrollment
    /// sends as `publicKey`.
    pub fn public_key_cose(&self) -> Vec<u8> {
        use coset::CborSerializable;
        coset::CoseKeyBuilder::new_ec2_pub_key(
            coset::iana::EllipticCurve::P_256,
            self.public.x().to_vec(),
            self.public.y().to_vec(),
        )
        .algorithm(coset::iana::Algorithm::ES256)
        .build()
        .to_vec()
        .unwrap_or_default()
    }

    /// The body of `POST /v1/devices` for `user_name`.
    pub fn enrollment(&self, user_name: &str, platform: Value) -> Value {
        json!({
            "user": { "name": user_name },
            "publicKey": b64url(&self.public_key_cose()),
            "platform": platform,
        })
    }

    /// The device's half of ECDH with a sender's ephemeral key.
    pub fn ecdh(&self, peer: &EcPublicKey) -> Result<SharedSecret, KeyError> {
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.to_p256().as_affine());
        SharedSecret::from_slice(shared.raw_secret_bytes())
    }

    /// Signs `message` (ES256) with the device key.
    pub fn sign(&self, message: &[u8]) -> Result<EcdsaSignature, KeyError> {
        let key = p256::ecdsa::SigningKey::from(&self.secret);
        let sig: p256::ecdsa::Signature = key.sign(message);
        EcdsaSignature::from_raw(&sig.to_bytes())
    }

    /// Opens a sealed token sent to device `device_id`, verifies it against
    /// the pinned `token-signing` key, and checks that it is for this
    /// device, for `rp_id`, and not expired at `now`.
    pub fn open_token(
        &self,
        sealed: &[u8],
        device_id: &[u8; 16],
        pinned: &EcPublicKey,
        rp_id: &str,
        now: SystemTime,
    ) -> Result<OpenedToken, DeviceError> {
        let envelope = Envelope::parse(sealed)?;
        let secret = self.ecdh(&envelope.ephemeral)?;
        let bytes = envelope.open(&secret, &device_token::token_aad(device_id))?;
        let claims = Token::parse(&bytes)?.verify(pinned)?;
        if &claims.device_id != device_id {
            return Err(DeviceError::WrongDevice {
                ours: b64url(device_id),
                found: b64url(&claims.device_id),
            });
        }
        if claims.rp_id != rp_id {
            return Err(DeviceError::WrongAudience(claims.rp_id));
        }
        if unix_s(now) >= claims.expires_s {
            return Err(DeviceError::Expired(claims.expires_s));
        }
        Ok(OpenedToken {
            bytes: bytes.to_vec(),
            claims,
        })
    }

    /// The signed request (COSE_Sign1), not yet sealed.
    pub fn sign_request(
        &self,
        token: &OpenedToken,
        registration: &Value,
        now: SystemTime,
    ) -> Result<Vec<u8>, DeviceError> {
        let request = Request {
            device_id: token.claims.device_id,
            token: token.bytes.clone(),
            registration: registration.to_string(),
            time_s: unix_s(now),
        };
        let (tbs, unsigned) = request.to_be_signed()?;
        Ok(Request::finish(unsigned, &self.sign(&tbs)?)?)
    }

    /// The sealed request for `POST /v1/devices/{id}/registration`.
    pub fn seal_request(
        &self,
        token: &OpenedToken,
        registration: &Value,
        server: &EcPublicKey,
        now: SystemTime,
    ) -> Result<Vec<u8>, DeviceError> {
        let signed = self.sign_request(token, registration, now)?;
        seal_signed(&signed, &token.claims.device_id, server)
    }
}

impl OpenedToken {
    /// The challenge the passkey must be created with.
    pub fn challenge(&self) -> [u8; 32] {
        device_token::challenge(&self.bytes)
    }

    /// Checks creation options core banking relayed: the challenge must be
    /// the one derived from this token, and the user the token names.
    pub fn check_options(&self, options: &Value) -> Result<(), DeviceError> {
        let field = |name: &str| {
            options
                .pointer(name)
                .and_then(Value::as_str)
                .ok_or_else(|| DeviceError::Options(format!("{name} is missing")))
        };
        let challenge = b64url_decode("challenge", field("/challenge")?, 64)
            .map_err(|e| DeviceError::Options(e.to_string()))?;
        if challenge != self.challenge() {
            return Err(DeviceError::Options(
                "challenge is not derived from this token".into(),
            ));
        }
        let user = b64url_decode("user.id", field("/user/id")?, 64)
            .map_err(|e| DeviceError::Options(e.to_string()))?;
        if user != self.claims.user_handle {
            return Err(DeviceError::Options(
                "user.id is not the token's user handle".into(),
            ));
        }
        if field("/rp/id")? != self.claims.rp_id {
            return Err(DeviceError::Options("rp.id is not the token's aud".into()));
        }
        Ok(())
    }
}

/// Seals a signed request to signet's `token-encryption` key (its kid
/// named, so signet picks the right version during a rotation).
pub fn seal_signed(
    signed: &[u8],
    device_id: &[u8; 16],
    server: &EcPublicKey,
) -> Result<Vec<u8>, DeviceError> {
    let kid = Kid::of(server);
    Ok(seal::seal(
        signed,
        server,
        Some(kid.as_bytes()),
        &device_token::request_aad(device_id),
    )?)
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the app does with the options once the token checked out: a
/// passkey made by a fresh soft authenticator (no attestation) for the
/// options' user, on `origin`. Returns the authenticator (holding the
/// credential, for later logins) and the registration response JSON.
pub fn create_passkey(
    options: &Value,
    origin: &str,
) -> Result<(super::SoftAuthenticator, Value), DeviceError> {
    super::browser::create(options, origin, &super::Attestation::None)
        .map_err(|e| DeviceError::Options(e.to_string()))
}
