//! PKCS#11-specific behaviour on real SoftHSM tokens: start-up errors that an
//! officer must be able to act on, token selection, and recovery when the
//! token goes away and comes back under a running backend.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::Device;
use common::softhsm::{PIN, SoftHsm};
use signet::keys::pin::SecretSource;
use signet::keys::pkcs11::{Pkcs11Backend, TokenSelector};
use signet::keys::{KeyError, KeyRing, Role};

fn open_err(settings: &signet::keys::profile::Pkcs11Settings) -> KeyError {
    match Pkcs11Backend::open(settings) {
        Ok(_) => panic!("open should fail"),
        Err(e) => e,
    }
}

#[test]
fn wrong_pin_is_refused_without_echoing_it() {
    let hsm = SoftHsm::new();
    let bad = hsm.dir.path().join("bad-pin");
    std::fs::write(&bad, "definitely-not-the-pin").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut settings = hsm.settings();
    settings.pin = SecretSource::File(bad);
    let err = open_err(&settings);
    assert!(matches!(err, KeyError::WrongPin(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("wrong PIN"), "{text}");
    assert!(
        !text.contains("definitely-not-the-pin"),
        "PIN echoed: {text}"
    );
}

#[test]
fn pin_file_readable_by_others_is_refused() {
    let hsm = SoftHsm::new();
    std::fs::set_permissions(hsm.pin_file(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = open_err(&hsm.settings());
    assert!(matches!(err, KeyError::PinSource(_)), "{err:?}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn pin_from_environment_variable() {
    let hsm = SoftHsm::new();
    // SAFETY: nextest runs each test in its own process; nothing else runs yet.
    unsafe { std::env::set_var("SIGNET_TEST_HSM_PIN", PIN) };
    let mut settings = hsm.settings();
    settings.pin = SecretSource::Env("SIGNET_TEST_HSM_PIN".into());
    let ring = KeyRing::new(std::sync::Arc::new(Pkcs11Backend::open(&settings).unwrap()));
    ring.init().unwrap();
    settings.pin = SecretSource::Env("SIGNET_TEST_UNSET_VARIABLE".into());
    let err = open_err(&settings);
    assert!(
        err.to_string().contains("SIGNET_TEST_UNSET_VARIABLE"),
        "{err}"
    );
}

#[test]
fn missing_token_lists_the_tokens_present() {
    let hsm = SoftHsm::new();
    let mut settings = hsm.settings();
    settings.token = TokenSelector::label("no-such-token".into());
    let err = open_err(&settings);
    let text = err.to_string();
    assert!(matches!(err, KeyError::TokenNotFound { .. }), "{err:?}");
    assert!(text.contains("no-such-token"), "{text}");
    assert!(
        text.contains(&hsm.label),
        "present token not listed: {text}"
    );
}

#[test]
fn missing_module_is_named() {
    let hsm = SoftHsm::new();
    let mut settings = hsm.settings();
    settings.module = "/nonexistent/libpkcs11.so".into();
    let err = open_err(&settings);
    assert!(matches!(err, KeyError::ModuleNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/libpkcs11.so"));
    // A file that is not a PKCS#11 library.
    settings.module = hsm.pin_file();
    assert!(matches!(
        open_err(&settings),
        KeyError::ModuleNotFound { .. }
    ));
}

#[test]
fn token_selected_by_serial_and_by_uri() {
    let hsm = SoftHsm::new();
    let mut settings = hsm.settings();
    settings.token = TokenSelector::serial(hsm.serial());
    let ring = KeyRing::new(std::sync::Arc::new(Pkcs11Backend::open(&settings).unwrap()));
    ring.init().unwrap();
    let uri = format!("pkcs11:token={};serial={}", hsm.label, hsm.serial());
    settings.token = TokenSelector::parse_uri(&uri).unwrap().token;
    let ring2 = KeyRing::new(std::sync::Arc::new(Pkcs11Backend::open(&settings).unwrap()));
    assert_eq!(ring2.list().unwrap().len(), 4);
    settings.token = TokenSelector::parse_uri(&format!("pkcs11:token={};serial=0000", hsm.label))
        .unwrap()
        .token;
    assert!(matches!(
        open_err(&settings),
        KeyError::TokenNotFound { .. }
    ));
}

/// Polls `f` until it succeeds, returning how long that took.
fn until_ok<T>(limit: Duration, mut f: impl FnMut() -> Result<T, KeyError>) -> (Duration, T) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return (start.elapsed(), v),
            Err(e) if start.elapsed() < limit => {
                assert!(
                    e.is_unavailable(),
                    "while recovering, errors say unavailable: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("not recovered within {limit:?}: {e}"),
        }
    }
}

#[test]
fn token_outage_fails_fast_then_recovers_without_restart() {
    let hsm = SoftHsm::new();
    let ring = hsm.ring();
    ring.init().unwrap();
    let (kid, _) = ring.sign(Role::TokenSigning, b"before").unwrap();
    let store = hsm.token_store_dir();
    // Outside the token directory: SoftHSM scans every directory in it.
    let aside = hsm.dir.path().join("token-away");

    std::fs::rename(&store, &aside).unwrap();
    let start = Instant::now();
    let mut failures = 0;
    // Operations fail, each quickly, while the token is away.
    for _ in 0..20 {
        let t = Instant::now();
        match ring.sign(Role::TokenSigning, b"during") {
            Ok(_) => {}
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                failures += 1;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "an operation hung for {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    eprintln!(
        "outage: {failures}/20 operations failed in {:?}",
        start.elapsed()
    );
    assert!(
        failures >= 18,
        "operations kept succeeding with the token gone: {failures}/20 failed"
    );

    std::fs::rename(&aside, &store).unwrap();
    let (took, (signer, sig)) = until_ok(Duration::from_secs(5), || {
        ring.sign(Role::TokenSigning, b"after")
    });
    eprintln!("recovered {took:?} after the token returned");
    assert_eq!(signer, kid, "same key after recovery");
    assert!(ring.find(&kid).unwrap().public.verify(b"after", &sig));
}

#[test]
fn reinitialized_token_is_found_again_and_can_be_provisioned() {
    let hsm = SoftHsm::new();
    let ring = hsm.ring();
    ring.init().unwrap();
    let (old, _) = ring.sign(Role::TokenSigning, b"before").unwrap();

    hsm.reinitialize();
    // The old keys are gone with the old token. Signing with one must never
    // succeed; the backend reports the key missing or the device unavailable.
    match ring.backend().sign_digest(&old, &[3u8; 32]) {
        Ok(_) => panic!("signed with a key of the erased token"),
        Err(e) => assert!(
            e.is_unavailable() || matches!(e, KeyError::KeyNotFound(_)),
            "{e}"
        ),
    }
    // Provisioning the new token works through the same backend: SoftHSM
    // answers the first write to the vanished token with CKR_GENERAL_ERROR,
    // the backend reconnects (finalize, initialize, find by label, login).
    let (took, report) = until_ok(Duration::from_secs(5), || ring.init());
    eprintln!("re-initialized token provisioned {took:?} after the first attempt");
    assert_eq!(report.created.len(), 4, "{report:?}");
    let (kid, sig) = ring.sign(Role::TokenSigning, b"new token").unwrap();
    assert_ne!(kid, old);
    assert!(ring.find(&kid).unwrap().public.verify(b"new token", &sig));
}
