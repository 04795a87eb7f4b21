//! Evidence as signet writes it, from a real soft-authenticator approval:
//! for tests of the offline verifiers.

use crate::evidence::{LogRecord, SignetMeta};
use crate::transaction::{Details, NONCE_LEN};
use crate::webauthn::{CoseAlgorithm, b64url};

use super::{Ceremony, SoftAuthenticator};

/// signet's verification-log record of a payment of `amount` CHF to ACME
/// AG, approved on `https://{rp_id}` by a fresh ES256 soft authenticator;
/// nonce `[tx; 32]`, transaction id `[tx; 16]`.
pub fn signet_log_record(tx: u8, amount: &str, rp_id: &str) -> LogRecord {
    let details = Details::parse(&serde_json::json!({
        "type": "payment", "amount": amount, "currency": "CHF",
        "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"}
    }))
    .expect("details");
    let nonce = [tx; NONCE_LEN];
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let parts = auth.assert(&Ceremony::new(
        rp_id,
        &format!("https://{rp_id}"),
        &details.challenge(&nonce),
    ));
    LogRecord {
        signature: parts.signature.clone(),
        transaction: String::from_utf8(details.canonical).expect("utf-8"),
        authenticator_data: parts.auth_data.clone(),
        client_data_json: parts.client_data_json.clone(),
        nonce: b64url(&nonce),
        public_key: auth.key().cose_key(),
        signet: Some(SignetMeta {
            transaction_id: [tx; 16],
            rp_id: rp_id.into(),
            verified_ms: 1_800_000_000_123,
        }),
    }
}
