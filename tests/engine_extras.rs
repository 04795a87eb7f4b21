//! Engine behaviour beyond the conformance checklist that later flows rely
//! on: Secure Payment Confirmation client data and Android app origins.
#![cfg(feature = "testkit")]

use signet::testkit::{AssertionParts, Ceremony, SoftAuthenticator};
use signet::webauthn::assertion::{self, Assertion, StoredCredential};
use signet::webauthn::cose_key::CredentialPublicKey;
use signet::webauthn::response::AuthenticationResponse;
use signet::webauthn::{CoseAlgorithm, Error, RelyingParty, UserVerification};

fn verify(
    auth: &SoftAuthenticator,
    rp: &RelyingParty,
    parts: &AssertionParts,
    challenge: &[u8],
    allow_payment: bool,
) -> Result<Assertion, Error> {
    let key = CredentialPublicKey::from_cose(&auth.key().cose_key(), "k").unwrap();
    let response = AuthenticationResponse::from_value(&parts.to_json())?;
    assertion::verify(
        &response,
        &StoredCredential {
            id: &auth.credential_id,
            public_key: &key,
            sign_count: 0,
            backup_eligible: auth.be,
            user_handle: &auth.user_handle,
        },
        &assertion::Expectation {
            rp,
            challenge,
            user_verification: UserVerification::Preferred,
            require_user_presence: true,
            discoverable: false,
            allow_payment,
        },
    )
}

#[test]
fn payment_get_is_accepted_only_when_asked_for_and_returns_the_payment_member() {
    let rp = RelyingParty::new("bank.example", vec!["https://bank.example".into()]);
    let challenge = [5u8; 32];
    let ceremony = Ceremony::new("bank.example", "https://bank.example", &challenge);
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let mut parts = auth.assert(&ceremony);
    parts.client_data_json = format!(
        r#"{{"type":"payment.get","challenge":"{}","origin":"https://bank.example","payment":{{"rpId":"bank.example","topOrigin":"https://merchant.example","payeeOrigin":"https://merchant.example","total":{{"value":"12.50","currency":"CHF"}},"instrument":{{"displayName":"Visa ****1234","icon":"https://bank.example/card.png"}}}}}}"#,
        signet::webauthn::b64url(&challenge)
    );
    auth.sign_assertion(&mut parts);

    let err = verify(&auth, &rp, &parts, &challenge, false).unwrap_err();
    assert_eq!(err.field(), "response.clientDataJSON.type");

    let ok = verify(&auth, &rp, &parts, &challenge, true).unwrap();
    assert_eq!(ok.client_data.ceremony, "payment.get");
    let payment = ok.client_data.payment.expect("payment member returned");
    assert_eq!(payment["total"]["value"], "12.50");
    assert_eq!(payment["total"]["currency"], "CHF");
    assert_eq!(payment["payeeOrigin"], "https://merchant.example");
}

#[test]
fn android_app_origins_are_accepted_when_configured() {
    let app = "android:apk-key-hash:WAtdJ8nbm1sOpqXjiF4X1uYf2BQ4yfDmuqLy4VgYBZ4";
    let challenge = [6u8; 32];
    let ceremony = Ceremony::new("bank.example", app, &challenge);
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let parts = auth.assert(&ceremony);

    let web_only = RelyingParty::new("bank.example", vec!["https://bank.example".into()]);
    let err = verify(&auth, &web_only, &parts, &challenge, false).unwrap_err();
    assert_eq!(err.field(), "response.clientDataJSON.origin");

    let with_app = RelyingParty::new(
        "bank.example",
        vec!["https://bank.example".into(), app.into()],
    );
    verify(&auth, &with_app, &parts, &challenge, false).unwrap();
    // Another app's signing-key hash is a different origin.
    let other = RelyingParty::new(
        "bank.example",
        vec!["android:apk-key-hash:AAAAJ8nbm1sOpqXjiF4X1uYf2BQ4yfDmuqLy4VgYBZ4".into()],
    );
    assert!(verify(&auth, &other, &parts, &challenge, false).is_err());
}
