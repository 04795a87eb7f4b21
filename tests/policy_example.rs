//! The README's policy guide is true: its worked example is
//! `examples/policy/bank.toml`, byte for byte, and that policy gives the
//! four kinds of credential the README describes the tiers and the
//! decisions its table shows for each action.

use std::path::Path;

use signet::flows::policy::{assess_credential, facts};
use signet::mds::stored::Known;
use signet::policy::actions::Decision;
use signet::policy::amount::Amount;
use signet::policy::tiers::{Admission, Policy};
use signet::store::CredentialRecord;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced block that follows the marker line naming the example file.
fn readme_example() -> String {
    let readme = read("README.md");
    let marker = "<!-- policy example: examples/policy/bank.toml -->";
    let after = readme
        .split_once(marker)
        .unwrap_or_else(|| panic!("README.md has no {marker:?} line"))
        .1;
    let body = after
        .trim_start()
        .strip_prefix("```toml\n")
        .expect("a ```toml block right after the marker");
    let end = body.find("\n```").expect("the block ends");
    format!("{}\n", &body[..end])
}

#[test]
fn the_readme_example_is_the_example_file() {
    assert_eq!(
        readme_example(),
        read("examples/policy/bank.toml"),
        "README.md's policy example and examples/policy/bank.toml differ"
    );
    let p = Policy::parse(&read("examples/policy/bank.toml")).expect("the example is valid");
    assert_eq!(p.version, "bank-2026-11-22");
    for action in ["default", "enroll", "login", "payee-change", "payment"] {
        assert!(p.actions.contains_key(action), "{action}");
    }
}

fn aaguid(text: &str) -> [u8; 16] {
    signet::webauthn::parse_uuid(text).expect("uuid")
}

fn credential(aaguid: [u8; 16], attested: bool, backup_eligible: bool) -> CredentialRecord {
    CredentialRecord {
        id: vec![1; 16],
        user_id: vec![2; 16],
        public_key_cose: Vec::new(),
        sign_count: 0,
        backup_eligible,
        backup_state: backup_eligible,
        aaguid,
        fmt: "packed".into(),
        attestation_type: "basic".into(),
        transports: Vec::new(),
        created_ms: 0,
        last_used_ms: None,
        flagged: None,
        tier: None,
        tier_reasons: Vec::new(),
        policy_version: None,
        marked: false,
        attested,
        metadata_key_id: None,
        device_id: None,
        disabled: None,
    }
}

fn model(levels: &[&str], protection: &[&str]) -> Known {
    Known {
        description: Some("Model".into()),
        roots: Vec::new(),
        statuses: levels
            .iter()
            .map(|s| (s.to_string(), Some("2024-01-01".into())))
            .collect(),
        attestation_types: vec!["basic_full".into()],
        authentication_algorithms: Vec::new(),
        key_protection: protection.iter().map(|s| s.to_string()).collect(),
        attachment_hint: Vec::new(),
    }
}

/// The decision letters of the README's table: A allow, S step-up, D deny.
fn letter(d: &Decision) -> char {
    match d {
        Decision::Allow => 'A',
        Decision::StepUp { .. } => 'S',
        Decision::Deny { .. } => 'D',
    }
}

fn row(p: &Policy, c: &CredentialRecord, known: Option<&Known>) -> (u8, Admission, String) {
    let (a, admission) = assess_credential(p, c, known);
    let f = facts(c, &a, admission);
    let columns: [(&str, Option<(&str, &str)>); 6] = [
        ("login", None),
        ("payee-change", None),
        ("payment", Some(("200.00", "EUR"))),
        ("payment", Some(("5000.00", "EUR"))),
        ("payment", Some(("20000.00", "EUR"))),
        ("payment", Some(("50.00", "USD"))),
    ];
    let letters = columns
        .iter()
        .map(|(action, amount)| {
            let amount = amount.map(|(v, c)| Amount::parse(v, c).expect("amount"));
            let (name, act) = p.action(Some(action)).expect("action");
            letter(&act.requirement(name, amount.as_ref()).decide(&f))
        })
        .collect();
    (a.tier, admission, letters)
}

/// The table in README.md "Trust policy", row by row.
#[test]
fn the_example_decides_as_the_readme_says() {
    let p = Policy::parse(&read("examples/policy/bank.toml")).expect("policy");
    let yubikey = model(
        &["FIDO_CERTIFIED_L1", "FIDO_CERTIFIED_L2"],
        &["hardware", "secure_element"],
    );
    let security_key = credential(aaguid("ee882879-721c-4913-9775-3dfcce97072a"), true, false);
    assert_eq!(
        row(&p, &security_key, Some(&yubikey)),
        (1, Admission::Accept, "AAAAAA".into())
    );

    let icloud = credential(aaguid("fbfc3007-154e-4ecc-8c0b-6e020557d7bd"), false, true);
    assert_eq!(
        row(&p, &icloud, None),
        (2, Admission::Accept, "AAAASS".into())
    );

    // A known model whose AAGUID is self-asserted (attestation none).
    let unproven = credential(aaguid("ee882879-721c-4913-9775-3dfcce97072a"), false, false);
    assert_eq!(
        row(&p, &unproven, Some(&yubikey)),
        (3, Admission::AcceptMarked, "ASSSSS".into())
    );

    // Unknown: refused at registration; one registered under an earlier
    // policy is denied everywhere.
    let unknown = credential([0x42; 16], false, false);
    assert_eq!(
        row(&p, &unknown, None),
        (4, Admission::Reject, "DDDDDD".into())
    );

    // Flagged (its model reported compromised): denied everywhere.
    let mut flagged = security_key.clone();
    flagged.flagged = Some("FIDO metadata reports KEY_COMPROMISE".into());
    assert_eq!(row(&p, &flagged, Some(&yubikey)).2, "DDDDDD");

    // The denied model.
    let denied = credential(aaguid("00000000-0000-0000-0000-00000000dead"), true, false);
    let (a, admission) = assess_credential(&p, &denied, Some(&yubikey));
    assert!(a.denied);
    assert_eq!(admission, Admission::Reject);
}

/// What the step-up answer names for the iCloud passkey and a large payment.
#[test]
fn a_large_payment_names_every_shortfall() {
    let p = Policy::parse(&read("examples/policy/bank.toml")).expect("policy");
    let icloud = credential(aaguid("fbfc3007-154e-4ecc-8c0b-6e020557d7bd"), false, true);
    let (a, admission) = assess_credential(&p, &icloud, None);
    let (name, act) = p.action(Some("payment")).expect("payment");
    let req = act.requirement(name, Some(&Amount::parse("20000.00", "EUR").expect("a")));
    assert_eq!(req.tiers(), vec![1]);
    assert!(req.device_bound);
    assert_eq!(req.threshold.as_deref(), Some("at least 15000.00 EUR"));
    match req.decide(&facts(&icloud, &a, admission)) {
        Decision::StepUp { reason } => {
            assert!(reason.contains("tier 2"), "{reason}");
            assert!(reason.contains("synced"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
