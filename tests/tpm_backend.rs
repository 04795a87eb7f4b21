//! TPM-specific behaviour of the tss-esapi backend, each test against its own
//! swtpm: persistence of key blobs, least privilege, recovery from a TPM that
//! dies and comes back, the loaded-handle cache, and auth values.
//!
//! Run with `TSS2_LOG=all+NONE` to keep tss2-esys quiet on stderr.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::swtpm::Swtpm;
use signet::keys::pin::SecretSource;
use signet::keys::profile::TpmSettings;
use signet::keys::tpm::TpmBackend;
use signet::keys::{EcPublicKey, KeyBackend, KeyError, Kid, Role, StoredKey, sha256};

fn open(settings: &TpmSettings) -> TpmBackend {
    TpmBackend::open(settings).unwrap_or_else(|e| panic!("open {}: {e}", settings.tcti))
}

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

fn sign_and_verify(backend: &dyn KeyBackend, key: &StoredKey, message: &[u8]) {
    let sig = backend
        .sign_digest(&key.kid, &sha256(message))
        .unwrap_or_else(|e| panic!("sign with {}: {e}", key.kid));
    assert!(
        key.public.verify(message, &sig),
        "signature by {} must verify",
        key.kid
    );
    assert!(!key.public.verify(b"some other message", &sig));
}

fn find(keys: &[StoredKey], kid: &Kid) -> StoredKey {
    keys.iter()
        .find(|k| &k.kid == kid)
        .cloned()
        .unwrap_or_else(|| panic!("{kid} not listed"))
}

fn auth_file(dir: &std::path::Path, name: &str, value: &str) -> SecretSource {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    SecretSource::File(path)
}

#[test]
fn keys_persist_across_reopen() {
    let tpm = Swtpm::start();
    let (signer, agreer, sig) = {
        let backend = open(&tpm.settings());
        let signer = backend.generate(Role::TokenSigning, 1).unwrap();
        let agreer = backend.generate(Role::TokenEncryption, 1).unwrap();
        let sig = backend
            .sign_digest(&signer.kid, &sha256(b"before"))
            .unwrap();
        (signer, agreer, sig)
    };
    assert!(signer.public.verify(b"before", &sig));

    let backend = open(&tpm.settings());
    let keys = backend.list().unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let again = find(&keys, &signer.kid);
    assert_eq!(again.public, signer.public);
    assert_eq!(again.role, Role::TokenSigning);
    assert_eq!(again.version, 1);
    assert_eq!(again.label, "signet:token-signing:v1");
    assert!(!again.retired);
    assert_eq!(Kid::of(&again.public), again.kid);
    assert_eq!(find(&keys, &agreer.kid).public, agreer.public);
    sign_and_verify(&backend, &signer, b"after re-open");

    // The key files are owner-only, in an owner-only directory.
    let dir_mode = std::fs::metadata(tpm.key_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    for entry in std::fs::read_dir(tpm.key_dir()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
    }
}

#[test]
fn signatures_verify_with_aws_lc() {
    let tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    for role in [
        Role::TokenSigning,
        Role::ApprovalCountersign,
        Role::AuditCheckpoint,
    ] {
        let key = backend.generate(role, 1).unwrap();
        for i in 0..20 {
            // Enough signatures that short r or s (leading zero bytes) show up
            // now and then; left-padding must keep them valid.
            sign_and_verify(&backend, &key, format!("{role} message {i}").as_bytes());
        }
        let sig = backend.sign_digest(&key.kid, &sha256(b"der")).unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            &key.public.sec1()[..],
        )
        .verify(b"der", &sig.to_der())
        .unwrap();
    }
}

#[test]
fn ecdh_matches_p256() {
    let tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    let key = backend.generate(Role::TokenEncryption, 1).unwrap();
    for _ in 0..10 {
        let (peer_secret, peer_public) = random_peer();
        let ours = backend.ecdh(&key.kid, &peer_public).unwrap();
        let theirs = p256::ecdh::diffie_hellman(
            peer_secret.to_nonzero_scalar(),
            key.public.to_p256().as_affine(),
        );
        assert_eq!(&ours.expose()[..], &theirs.raw_secret_bytes()[..]);
    }
}

#[test]
fn keys_only_do_what_their_role_allows() {
    let tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    let signer = backend.generate(Role::AuditCheckpoint, 1).unwrap();
    let agreer = backend.generate(Role::TokenEncryption, 1).unwrap();
    let (_, peer) = random_peer();

    let err = backend.sign_digest(&agreer.kid, &sha256(b"x")).unwrap_err();
    assert!(
        matches!(err, KeyError::WrongPurpose { kid, role: Role::TokenEncryption, .. } if kid == agreer.kid),
        "{err}"
    );
    let err = backend.ecdh(&signer.kid, &peer).unwrap_err();
    assert!(
        matches!(err, KeyError::WrongPurpose { kid, role: Role::AuditCheckpoint, .. } if kid == signer.kid),
        "{err}"
    );
    let unknown = Kid::from_bytes(&[9u8; 16]).unwrap();
    assert!(matches!(
        backend.sign_digest(&unknown, &sha256(b"x")),
        Err(KeyError::KeyNotFound(k)) if k == unknown
    ));
    // The refusals did not disturb the keys.
    sign_and_verify(&backend, &signer, b"still fine");
    backend.ecdh(&agreer.kid, &peer).unwrap();
}

#[test]
fn retired_keys_refuse_and_stay_listed() {
    let tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    let signer = backend.generate(Role::TokenSigning, 1).unwrap();
    let agreer = backend.generate(Role::TokenEncryption, 1).unwrap();
    let (_, peer) = random_peer();
    sign_and_verify(&backend, &signer, b"before retiring");
    backend.ecdh(&agreer.kid, &peer).unwrap();

    backend.retire(&signer.kid).unwrap();
    backend.retire(&agreer.kid).unwrap();
    backend.retire(&agreer.kid).unwrap(); // idempotent

    let err = backend.sign_digest(&signer.kid, &sha256(b"x")).unwrap_err();
    assert!(
        matches!(err, KeyError::Retired(k) if k == signer.kid),
        "{err}"
    );
    let err = backend.ecdh(&agreer.kid, &peer).unwrap_err();
    assert!(
        matches!(err, KeyError::Retired(k) if k == agreer.kid),
        "{err}"
    );

    let keys = backend.list().unwrap();
    assert!(find(&keys, &signer.kid).retired);
    assert!(find(&keys, &agreer.kid).retired);

    // The record, private blob included, is kept.
    for entry in std::fs::read_dir(tpm.key_dir()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["retired"], true);
        assert!(json["private"].as_str().is_some_and(|p| !p.is_empty()));
    }

    // A second backend (another process, say) sees the flag too.
    drop(backend);
    let backend = open(&tpm.settings());
    let err = backend.sign_digest(&signer.kid, &sha256(b"x")).unwrap_err();
    assert!(matches!(err, KeyError::Retired(_)), "{err}");
}

#[test]
fn retire_by_another_writer_is_seen_at_once() {
    let tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    let signer = backend.generate(Role::TokenSigning, 1).unwrap();
    sign_and_verify(&backend, &signer, b"warm the cache");
    // Flip the flag in the file behind the backend's back.
    let path = std::fs::read_dir(tpm.key_dir())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["retired"] = serde_json::Value::Bool(true);
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let err = backend.sign_digest(&signer.kid, &sha256(b"x")).unwrap_err();
    assert!(matches!(err, KeyError::Retired(_)), "{err}");
}

#[test]
fn attributes_read_back_as_protected() {
    let tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    for role in Role::ALL {
        let generated = backend.generate(role, 1).unwrap();
        assert!(
            generated.attributes.protected(),
            "{role}: {:?}",
            generated.attributes
        );
    }
    let keys = backend.list().unwrap();
    assert_eq!(keys.len(), 4);
    for k in &keys {
        assert!(k.attributes.protected(), "{}: {:?}", k.role, k.attributes);
        assert_eq!(k.attributes.local, Some(true));
        assert_eq!(k.attributes.persistent, Some(true));
        assert_eq!(k.attributes.always_sensitive, Some(true));
    }
    assert!(
        backend.describe().contains(&tpm.tcti()),
        "{}",
        backend.describe()
    );
    backend.ping().unwrap();
}

#[test]
fn recovers_after_swtpm_is_killed_and_restarted() {
    let mut tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    let signer = backend.generate(Role::TokenSigning, 1).unwrap();
    let agreer = backend.generate(Role::TokenEncryption, 1).unwrap();
    sign_and_verify(&backend, &signer, b"before the crash");

    tpm.kill();
    let t = Instant::now();
    let err = backend.sign_digest(&signer.kid, &sha256(b"x")).unwrap_err();
    let first_failure = t.elapsed();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        matches!(&err, KeyError::Unavailable { backend, .. } if backend == &format!("tpm {}", tpm.tcti())),
        "{err:?}"
    );
    assert!(
        first_failure < Duration::from_secs(5),
        "took {first_failure:?}"
    );
    let (_, peer) = random_peer();
    // While the TPM is away, every request fails fast (reconnects are throttled).
    let t = Instant::now();
    for _ in 0..50 {
        assert!(
            backend
                .sign_digest(&signer.kid, &sha256(b"x"))
                .unwrap_err()
                .is_unavailable()
        );
        assert!(
            backend
                .ecdh(&agreer.kid, &peer)
                .unwrap_err()
                .is_unavailable()
        );
    }
    assert!(backend.ping().unwrap_err().is_unavailable());
    let dead_calls = t.elapsed();
    assert!(dead_calls < Duration::from_secs(5), "took {dead_calls:?}");

    tpm.restart();
    let t = Instant::now();
    let sig = loop {
        match backend.sign_digest(&signer.kid, &sha256(b"after the crash")) {
            Ok(sig) => break sig,
            Err(e) if e.is_unavailable() && t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("no recovery after {:?}: {e}", t.elapsed()),
        }
    };
    let recovery = t.elapsed();
    eprintln!(
        "swtpm SIGKILL: first error after {first_failure:?} ({err}); 101 calls while down \
         took {dead_calls:?}; recovered {recovery:?} after swtpm accepted connections again"
    );
    assert!(signer.public.verify(b"after the crash", &sig));
    backend.ecdh(&agreer.kid, &peer).unwrap();
    backend.ping().unwrap();
    assert_eq!(backend.list().unwrap().len(), 2);
}

#[test]
fn restart_between_requests_is_invisible() {
    let mut tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    let signer = backend.generate(Role::TokenSigning, 1).unwrap();
    sign_and_verify(&backend, &signer, b"before");
    // The TPM goes away and comes back while no request is in flight: the
    // next request finds a dead connection, reconnects once and succeeds.
    tpm.restart();
    sign_and_verify(&backend, &signer, b"after");
}

#[test]
fn eight_threads_sign_through_one_backend() {
    let tpm = Swtpm::start();
    let backend = Arc::new(open(&tpm.settings()));
    let a = backend.generate(Role::TokenSigning, 1).unwrap();
    let b = backend.generate(Role::ApprovalCountersign, 1).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let backend = backend.clone();
            let key = if t % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || {
                for i in 0..40 {
                    let msg = format!("thread {t} message {i}");
                    let sig = backend
                        .sign_digest(&key.kid, &sha256(msg.as_bytes()))
                        .unwrap();
                    assert!(key.public.verify(msg.as_bytes(), &sig), "{msg}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn more_keys_than_the_tpm_can_hold_loaded() {
    let tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    let mut keys = Vec::new();
    for v in 1..=5 {
        keys.push(backend.generate(Role::TokenSigning, v).unwrap());
    }
    keys.push(backend.generate(Role::TokenEncryption, 1).unwrap());
    let (peer_secret, peer) = random_peer();
    for round in 0..2 {
        for key in &keys {
            if key.role == Role::TokenEncryption {
                let ours = backend.ecdh(&key.kid, &peer).unwrap();
                let theirs = p256::ecdh::diffie_hellman(
                    peer_secret.to_nonzero_scalar(),
                    key.public.to_p256().as_affine(),
                );
                assert_eq!(&ours.expose()[..], &theirs.raw_secret_bytes()[..]);
            } else {
                sign_and_verify(
                    &backend,
                    key,
                    format!("round {round} v{}", key.version).as_bytes(),
                );
            }
        }
    }
    assert_eq!(backend.list().unwrap().len(), 6);
    // Still room to create after all that loading.
    backend.generate(Role::AuditCheckpoint, 1).unwrap();
}

#[test]
fn corrupt_key_file_is_named() {
    let tpm = Swtpm::start();
    let backend = open(&tpm.settings());
    backend.generate(Role::TokenSigning, 1).unwrap();
    let victim = backend.generate(Role::AuditCheckpoint, 1).unwrap();
    let path = std::fs::read_dir(tpm.key_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(&victim.kid.to_string()))
        .expect("the key file names its kid");

    // Files that are not signet's are skipped, not fatal.
    std::fs::write(tpm.key_dir().join("README"), "notes\n").unwrap();
    assert_eq!(backend.list().unwrap().len(), 2);

    std::fs::write(&path, "{ not json").unwrap();
    let err = backend.list().unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");

    // Valid JSON whose public area belongs to another key is caught too.
    let other = backend.generate(Role::ApprovalCountersign, 1).unwrap();
    let other_path = std::fs::read_dir(tpm.key_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(&other.kid.to_string()))
        .unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&other_path).unwrap()).unwrap();
    json["kid"] = serde_json::Value::String(victim.kid.to_string());
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = backend.list().unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("kid"), "{err}");
}

#[test]
fn auth_value_is_required_when_set() {
    let tpm = Swtpm::start();
    let right = auth_file(tpm.dir(), "auth", "correct horse battery");
    let wrong = auth_file(tpm.dir(), "wrong-auth", "incorrect mule");
    let with = |auth: SecretSource| TpmSettings {
        auth: Some(auth),
        ..tpm.settings()
    };

    let (signer, agreer) = {
        let backend = open(&with(right.clone()));
        let signer = backend.generate(Role::TokenSigning, 1).unwrap();
        let agreer = backend.generate(Role::TokenEncryption, 1).unwrap();
        sign_and_verify(&backend, &signer, b"with the right auth");
        (signer, agreer)
    };

    // Keys with an auth value are DA-protected and swtpm locks out after 3
    // failures (for 1000 s): this test spends exactly two.
    {
        let backend = open(&with(wrong));
        let err = backend.sign_digest(&signer.kid, &sha256(b"x")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, KeyError::WrongPin(_)), "{err:?}");
        assert!(!err.is_unavailable());
        assert!(text.contains("auth value"), "{text}");
        assert!(
            !text.contains("incorrect mule") && !text.contains("correct horse"),
            "{text}"
        );
        // Listing needs no key auth; the keys are still there.
        assert_eq!(backend.list().unwrap().len(), 2);
    }
    {
        // No auth at all for keys that have one.
        let backend = open(&tpm.settings());
        let (_, peer) = random_peer();
        let err = backend.ecdh(&agreer.kid, &peer).unwrap_err();
        assert!(matches!(err, KeyError::WrongPin(_)), "{err:?}");
    }

    let backend = open(&with(right));
    sign_and_verify(&backend, &signer, b"right auth again");

    // The TPM limits auth values to 32 bytes (SHA-256 name algorithm).
    let long = auth_file(tpm.dir(), "long-auth", &"x".repeat(33));
    drop(backend);
    let err = TpmBackend::open(&with(long)).unwrap_err();
    assert!(matches!(err, KeyError::PinSource(_)), "{err:?}");
    assert!(!err.to_string().contains("xxxx"), "{err}");
}

#[test]
fn open_against_nothing_listening_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = TpmSettings {
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        key_dir: dir.path().join("keys"),
        auth: None,
    };
    let t = Instant::now();
    let err = TpmBackend::open(&settings).unwrap_err();
    assert!(
        matches!(&err, KeyError::TpmUnreachable { tcti, .. } if tcti == &settings.tcti),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );

    let err = TpmBackend::open(&TpmSettings {
        tcti: "carrier-pigeon:coop=3".into(),
        ..settings
    })
    .unwrap_err();
    assert!(matches!(err, KeyError::TpmUnreachable { .. }), "{err:?}");
}
