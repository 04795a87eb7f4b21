//! WebAuthn ceremonies through a running `signet serve`, with the
//! testkit's soft authenticator as the browser.

use serde_json::{Value, json};
use signet::testkit::{Attestation, Ceremony, SoftAuthenticator};
use signet::webauthn::b64url_decode;

use super::server::{ORIGIN, RP_ID, SignetServer};

/// The challenge of registration or authentication options
/// (`publicKey.challenge`), decoded.
pub fn challenge_of(options: &Value) -> Vec<u8> {
    let text = options["publicKey"]["challenge"]
        .as_str()
        .expect("challenge");
    b64url_decode("challenge", text, 64).expect("base64url challenge")
}

/// Registers `auth` as the `rp` role: posts `options_body` to
/// /v1/registrations/options (which must answer 200), gives `auth` the user
/// handle signet chose, registers without attestation and posts the result
/// to /v1/registrations/verify. Returns the verify status and answer, and
/// the authenticator (now holding its credential).
pub fn register(
    server: &SignetServer,
    options_body: &Value,
    mut auth: SoftAuthenticator,
) -> (u16, Value, SoftAuthenticator) {
    let (status, options) = server.post("rp", "/v1/registrations/options", options_body);
    assert_eq!(status, 200, "{options}");
    let uid = options["publicKey"]["user"]["id"]
        .as_str()
        .expect("user id");
    auth.user_handle = b64url_decode("user.id", uid, 64).expect("user id");
    let parts = auth.register(
        &Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)),
        &Attestation::None,
    );
    let (status, answer) = server.post(
        "rp",
        "/v1/registrations/verify",
        &json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
    );
    (status, answer, auth)
}

/// The /v1/authentications/verify request body for an assertion by `auth`
/// answering authentication `options`.
pub fn assertion_body(options: &Value, auth: &mut SoftAuthenticator) -> Value {
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge_of(options)));
    json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() })
}

/// Asserts with `auth` for authentication `options` and posts it to
/// /v1/authentications/verify as the `rp` role: the status and answer.
pub fn authenticate(
    server: &SignetServer,
    options: &Value,
    auth: &mut SoftAuthenticator,
) -> (u16, Value) {
    let body = assertion_body(options, auth);
    server.post("rp", "/v1/authentications/verify", &body)
}
