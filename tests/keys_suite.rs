//! The key-layer suite: the same tests against every backend (SoftHSM through
//! PKCS#11, swtpm through tss-esapi), through the role logic in `KeyRing`.

mod common;

use std::sync::Arc;

use common::Device;
use signet::keys::{EcPublicKey, KeyError, KeyRing, KeyStatus, Purpose, Role, sha256};

fn random_peer() -> (p256::SecretKey, EcPublicKey) {
    loop {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            let public = EcPublicKey::from_p256(&secret.public_key());
            return (secret, public);
        }
    }
}

pub fn init_is_idempotent_and_keys_are_protected(ring: &KeyRing) {
    let first = ring.init().unwrap();
    assert_eq!(first.created.len(), 4, "{first:?}");
    assert!(first.existing.is_empty());
    let second = ring.init().unwrap();
    assert!(
        second.created.is_empty(),
        "second init created keys: {second:?}"
    );
    assert_eq!(second.existing.len(), 4);
    let keys = ring.list().unwrap();
    assert_eq!(keys.len(), 4);
    for role in Role::ALL {
        let k = keys.iter().find(|k| k.role == role).unwrap();
        assert_eq!(k.status, KeyStatus::Active);
        assert_eq!(k.version, 1);
        assert_eq!(k.label, format!("signet:{role}:v1"));
        assert!(k.attributes.protected(), "{role}: {:?}", k.attributes);
        assert_eq!(
            k.attributes.local,
            Some(true),
            "{role}: generated on device"
        );
        assert_eq!(k.attributes.persistent, Some(true));
        assert_eq!(signet::keys::Kid::of(&k.public), k.kid);
    }
}

pub fn signatures_verify_with_aws_lc(ring: &KeyRing) {
    ring.init().unwrap();
    for role in Role::ALL
        .into_iter()
        .filter(|r| r.purpose() == Purpose::Sign)
    {
        let msg = format!("message for {role}");
        let (kid, sig) = ring.sign(role, msg.as_bytes()).unwrap();
        let key = ring.find(&kid).unwrap();
        assert_eq!(key.role, role);
        assert!(key.public.verify(msg.as_bytes(), &sig), "{role}: raw r||s");
        // The DER form verifies too, with aws-lc-rs's ASN.1 verifier.
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            &key.public.sec1()[..],
        )
        .verify(msg.as_bytes(), &sig.to_der())
        .unwrap();
        assert!(
            !key.public.verify(b"another message", &sig),
            "{role}: must not verify"
        );
        // sign_digest with the same digest is the same operation.
        let (_, sig2) = ring.sign_digest(role, &sha256(msg.as_bytes())).unwrap();
        assert!(key.public.verify(msg.as_bytes(), &sig2));
    }
}

pub fn ecdh_equals_p256(ring: &KeyRing) {
    ring.init().unwrap();
    let ours = ring.active(Role::TokenEncryption).unwrap().public.to_p256();
    for _ in 0..5 {
        let (peer_secret, peer_public) = random_peer();
        let (kid, secret) = ring.ecdh(Role::TokenEncryption, &peer_public).unwrap();
        assert_eq!(kid, ring.active(Role::TokenEncryption).unwrap().kid);
        let expected =
            p256::ecdh::diffie_hellman(peer_secret.to_nonzero_scalar(), ours.as_affine());
        assert_eq!(&secret.expose()[..], &expected.raw_secret_bytes()[..]);
    }
}

/// A message sealed to the `token-encryption` key (COSE_Encrypt, ECDH-ES +
/// HKDF-256) opens with the ECDH run inside the device, and only with the
/// key it was sealed to: a rotated-away key's messages still open by kid.
pub fn sealed_messages_open_with_the_device_ecdh(ring: &KeyRing) {
    use signet::seal::{Envelope, SealError, seal};
    ring.init().unwrap();
    let active = ring.active(Role::TokenEncryption).unwrap();
    let sealed = seal(
        b"a sealed registration request",
        &active.public,
        Some(active.kid.as_bytes()),
        b"device-1",
    )
    .unwrap();
    let envelope = Envelope::parse(&sealed).unwrap();
    assert_eq!(envelope.kid.as_deref(), Some(&active.kid.as_bytes()[..]));
    let (_, secret) = ring
        .ecdh(Role::TokenEncryption, &envelope.ephemeral)
        .unwrap();
    let plain = envelope.open(&secret, b"device-1").unwrap();
    assert_eq!(&plain[..], b"a sealed registration request");
    // Sealed to another key: the device's ECDH does not open it.
    let (_, stranger) = random_peer();
    let foreign = Envelope::parse(&seal(b"x", &stranger, None, b"").unwrap()).unwrap();
    let (_, secret) = ring
        .ecdh(Role::TokenEncryption, &foreign.ephemeral)
        .unwrap();
    assert!(matches!(
        foreign.open(&secret, b""),
        Err(SealError::Decrypt)
    ));
    // After a rotation the old key still opens what was sealed to it.
    ring.rotate(Role::TokenEncryption).unwrap();
    let kid = signet::keys::Kid::from_bytes(envelope.kid.as_deref().unwrap()).unwrap();
    let secret = ring.ecdh_with(&kid, &envelope.ephemeral).unwrap();
    assert_eq!(
        &envelope.open(&secret, b"device-1").unwrap()[..],
        b"a sealed registration request"
    );
}

pub fn each_key_does_only_its_purpose(ring: &KeyRing) {
    ring.init().unwrap();
    let (_, peer) = random_peer();
    let err = ring.sign(Role::TokenEncryption, b"x").unwrap_err();
    assert!(matches!(err, KeyError::WrongPurpose { .. }), "{err}");
    let err = ring.ecdh(Role::TokenSigning, &peer).unwrap_err();
    assert!(matches!(err, KeyError::WrongPurpose { .. }), "{err}");
    // Below the role logic, the device itself refuses.
    let enc = ring.active(Role::TokenEncryption).unwrap().kid;
    let sig = ring.active(Role::TokenSigning).unwrap().kid;
    assert!(ring.backend().sign_digest(&enc, &[1u8; 32]).is_err());
    assert!(ring.backend().ecdh(&sig, &peer).is_err());
}

/// The cached lookups follow this ring's lifecycle changes at once, and
/// another process's after a refresh; retired and unknown kids are refused.
pub fn cached_lookups_follow_the_key_lifecycle(ring: &KeyRing) {
    ring.init().unwrap();
    let v1 = ring.current(Role::TokenSigning).unwrap();
    assert_eq!(ring.live(&v1.kid).unwrap().kid, v1.kid);
    let v2 = ring.rotate(Role::TokenSigning).unwrap();
    assert_eq!(ring.current(Role::TokenSigning).unwrap().kid, v2.kid);
    assert_eq!(
        ring.live(&v1.kid).unwrap().status,
        KeyStatus::VerifyOnly,
        "a rotated key still verifies"
    );
    ring.retire(&v1.kid).unwrap();
    assert!(matches!(ring.live(&v1.kid), Err(KeyError::Retired(_))));
    let (_, stranger) = random_peer();
    assert!(matches!(
        ring.live(&signet::keys::Kid::of(&stranger)),
        Err(KeyError::KeyNotFound(_))
    ));
    // A rotation the ring did not make (an officer's CLI, in another
    // process; here the backend directly): seen after a refresh.
    let v3 = ring.backend().generate(Role::TokenSigning, 3).unwrap();
    assert_eq!(ring.current(Role::TokenSigning).unwrap().kid, v2.kid);
    ring.refresh().unwrap();
    assert_eq!(ring.current(Role::TokenSigning).unwrap().kid, v3.kid);
    let (kid, sig) = ring.sign(Role::TokenSigning, b"after rotation").unwrap();
    assert_eq!(kid, v3.kid);
    assert!(v3.public.verify(b"after rotation", &sig));
}

pub fn rotation_keeps_old_versions_verifiable(ring: &KeyRing) {
    ring.init().unwrap();
    let (v1, old_sig) = ring
        .sign(Role::ApprovalCountersign, b"old receipt")
        .unwrap();
    let v2 = ring.rotate(Role::ApprovalCountersign).unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.status, KeyStatus::Active);
    assert_ne!(v2.kid, v1);
    let old = ring.find(&v1).unwrap();
    assert_eq!(old.status, KeyStatus::VerifyOnly);
    assert!(old.public.verify(b"old receipt", &old_sig));
    let (signer, new_sig) = ring
        .sign(Role::ApprovalCountersign, b"new receipt")
        .unwrap();
    assert_eq!(signer, v2.kid, "the new version signs");
    assert!(v2.public.verify(b"new receipt", &new_sig));
    // Other roles are untouched.
    assert_eq!(ring.active(Role::TokenSigning).unwrap().version, 1);

    // The active key cannot be retired; the old one can, once.
    assert!(matches!(
        ring.retire(&v2.kid),
        Err(KeyError::RetireActive(_))
    ));
    let retired = ring.retire(&v1).unwrap();
    assert_eq!(retired.status, KeyStatus::Retired);
    assert!(matches!(ring.retire(&v1), Err(KeyError::Retired(_))));
    // A retired key can no longer sign on the device, but stays listed.
    assert!(ring.backend().sign_digest(&v1, &[2u8; 32]).is_err());
    assert!(ring.list().unwrap().iter().any(|k| k.kid == v1));
    // Versions keep counting up past retired ones.
    let v3 = ring.rotate(Role::ApprovalCountersign).unwrap();
    assert_eq!(v3.version, 3);
    let statuses: Vec<_> = ring
        .list()
        .unwrap()
        .into_iter()
        .filter(|k| k.role == Role::ApprovalCountersign)
        .map(|k| (k.version, k.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (1, KeyStatus::Retired),
            (2, KeyStatus::VerifyOnly),
            (3, KeyStatus::Active)
        ]
    );
}

pub fn many_threads_sign_at_once(ring: &KeyRing) {
    ring.init().unwrap();
    let public = ring.active(Role::TokenSigning).unwrap().public;
    let ring = Arc::new(ring);
    std::thread::scope(|s| {
        for t in 0..8 {
            let ring = ring.clone();
            let public = public.clone();
            s.spawn(move || {
                for i in 0..40 {
                    let msg = format!("thread {t} message {i}");
                    let (_, sig) = ring.sign(Role::TokenSigning, msg.as_bytes()).unwrap();
                    assert!(public.verify(msg.as_bytes(), &sig), "{msg}");
                }
            });
        }
    });
}

pub fn unknown_kid_and_missing_roles_are_named(ring: &KeyRing) {
    let err = ring.sign(Role::TokenSigning, b"x").unwrap_err();
    assert!(
        matches!(err, KeyError::NoActiveKey(Role::TokenSigning)),
        "{err}"
    );
    let (_, peer) = random_peer();
    let kid = signet::keys::Kid::of(&peer);
    let err = ring.backend().sign_digest(&kid, &[0u8; 32]).unwrap_err();
    assert!(matches!(err, KeyError::KeyNotFound(k) if k == kid), "{err}");
    assert!(matches!(ring.find(&kid), Err(KeyError::KeyNotFound(_))));
}

pub fn keys_survive_reopening<D: Device>(device: &D) {
    let kids: Vec<_> = {
        let ring = device.ring();
        ring.init().unwrap();
        ring.list()
            .unwrap()
            .into_iter()
            .map(|k| (k.role, k.kid))
            .collect()
    };
    let ring = device.ring();
    let again: Vec<_> = ring
        .list()
        .unwrap()
        .into_iter()
        .map(|k| (k.role, k.kid))
        .collect();
    assert_eq!(kids, again);
    let (kid, sig) = ring.sign(Role::AuditCheckpoint, b"after reopen").unwrap();
    assert!(
        ring.find(&kid)
            .unwrap()
            .public
            .verify(b"after reopen", &sig)
    );
}

macro_rules! backend_suite {
    ($name:ident, $device:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn init_is_idempotent_and_keys_are_protected() {
                let d = $device;
                super::init_is_idempotent_and_keys_are_protected(&d.ring());
            }
            #[test]
            fn signatures_verify_with_aws_lc() {
                let d = $device;
                super::signatures_verify_with_aws_lc(&d.ring());
            }
            #[test]
            fn ecdh_equals_p256() {
                let d = $device;
                super::ecdh_equals_p256(&d.ring());
            }
            #[test]
            fn sealed_messages_open_with_the_device_ecdh() {
                let d = $device;
                super::sealed_messages_open_with_the_device_ecdh(&d.ring());
            }
            #[test]
            fn each_key_does_only_its_purpose() {
                let d = $device;
                super::each_key_does_only_its_purpose(&d.ring());
            }
            #[test]
            fn rotation_keeps_old_versions_verifiable() {
                let d = $device;
                super::rotation_keeps_old_versions_verifiable(&d.ring());
            }
            #[test]
            fn many_threads_sign_at_once() {
                let d = $device;
                super::many_threads_sign_at_once(&d.ring());
            }
            #[test]
            fn unknown_kid_and_missing_roles_are_named() {
                let d = $device;
                super::unknown_kid_and_missing_roles_are_named(&d.ring());
            }
            #[test]
            fn cached_lookups_follow_the_key_lifecycle() {
                let d = $device;
                super::cached_lookups_follow_the_key_lifecycle(&d.ring());
            }
            #[test]
            fn keys_survive_reopening() {
                let d = $device;
                super::keys_survive_reopening(&d);
            }
        }
    };
}

backend_suite!(softhsm, common::softhsm::SoftHsm::new());
backend_suite!(swtpm, common::swtpm::Swtpm::start());
