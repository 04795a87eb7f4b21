//! Trust tiers and the policy file that defines them.
//!
//! # Tiers
//!
//! | tier | meaning | earned by |
//! |---|---|---|
//! | 1 | hardware-backed, attested, device-bound, certified | attestation verified to the model's MDS root, certification at least `tier1.min_certification`, key protection in `tier1.key_protection`, and (if `tier1.device_bound`) BE = 0 |
//! | 2 | platform authenticator with strong hardware backing | attestation verified to an MDS root and key protection in `tier2.key_protection` |
//! | 3 | third-party / synced, or a model the catalog knows | attested otherwise, or an AAGUID found in the catalog without a verified chain |
//! | 4 | unknown | anything else |
//!
//! An AAGUID without a verified attestation chain is self-asserted: it
//! never earns tier 1 or 2 by itself. An officer may vouch for a model in
//! the policy file (`[[aaguid]]` with a `tier`): that lifts it to the tier
//! given, but only with a verified chain unless `attestation_required =
//! false` says the bank accepts the risk for that model (for example a
//! platform's synced passkeys, which are never attested). `deny = true`
//! refuses a model at registration whatever else is true.
//!
//! # The file
//!
//! TOML, with a `version` recorded beside every decision and a SHA-256 of
//! the file's bytes that the audit log records on every change. Errors name
//! the line. The README's "Trust policy" section has a worked example;
//! docs/policy.md documents every key.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::actions::Action;
use crate::mds::stored::Known;

/// The largest policy file read.
pub const POLICY_MAX: u64 = 1024 * 1024;

/// The built-in policy, used when `[policy] file` is not configured.
pub const BUILTIN: &str = include_str!("builtin-policy.toml");

/// Certification levels, weakest first.
pub const LEVELS: [&str; 6] = ["L1", "L1plus", "L2", "L2plus", "L3", "L3plus"];

/// What registration does with a credential of a tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Accept, and mark the credential for downstream scrutiny.
    AcceptMarked,
    Reject,
}

impl Admission {
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Accept => "accept",
            Admission::AcceptMarked => "accept-marked",
            Admission::Reject => "reject",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vouch {
    pub name: Option<String>,
    pub tier: Option<u8>,
    pub attestation_required: bool,
    pub deny: bool,
}

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub version: String,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// The file's text, as parsed (what the officer API serves).
    pub text: String,
    pub tier1_min_certification: usize,
    pub tier1_key_protection: Vec<String>,
    pub tier1_device_bound: bool,
    pub tier2_key_protection: Vec<String>,
    pub aaguids: BTreeMap<[u8; 16], Vouch>,
    /// Index 0 is tier 1.
    pub registration: [Admission; 4],
    /// Per-action requirements; always holds `default`.
    pub actions: BTreeMap<String, Action>,
}

/// A policy error: the line (1-based) when the file has one to blame.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct PolicyError {
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: toml::Spanned<String>,
    tier1: Option<RawTier1>,
    tier2: Option<RawTier2>,
    #[serde(default)]
    aaguid: Vec<toml::Spanned<RawVouch>>,
    registration: Option<toml::Spanned<RawRegistration>>,
    #[serde(default)]
    actions: BTreeMap<String, toml::Spanned<super::actions::RawAction>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier1 {
    min_certification: Option<toml::Spanned<String>>,
    key_protection: Option<Vec<String>>,
    device_bound: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier2 {
    key_protection: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVouch {
    aaguid: String,
    name: Option<String>,
    tier: Option<u8>,
    attestation_required: Option<bool>,
    #[serde(default)]
    deny: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    tier1: Option<String>,
    tier2: Option<String>,
    tier3: Option<String>,
    tier4: Option<String>,
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Policy {
    /// The built-in policy (a test keeps it valid).
    pub fn builtin() -> Result<Policy, PolicyError> {
        Policy::parse(BUILTIN)
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Policy::parse(&Policy::read_text(path)?)
    }

    /// A policy file's text, read to at most [`POLICY_MAX`] bytes.
    pub fn read_text(path: &Path) -> Result<String, PolicyError> {
        let err = |message: String| PolicyError {
            line: None,
            message,
        };
        let bytes = crate::files::read_bounded(path, POLICY_MAX).map_err(err)?;
        String::from_utf8(bytes).map_err(|_| err(format!("{}: not UTF-8 text", path.display())))
    }

    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError {
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let at = |span: std::ops::Range<usize>, message: String| PolicyError {
            line: Some(line_of(text, span.start)),
            message,
        };
        let version = raw.version.get_ref().trim().to_string();
        if version.is_empty() || version.len() > 64 || version.chars().any(char::is_control) {
            return Err(at(
                raw.version.span(),
                "version must be 1 to 64 printable characters".into(),
            ));
        }
        let protections = |list: Option<Vec<String>>, default: &[&str]| -> Vec<String> {
            list.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
        };
        let (min_cert, tier1_kp, device_bound) = match raw.tier1 {
            Some(t) => {
                let level = match t.min_certification {
                    Some(l) => LEVELS
                        .iter()
                        .position(|x| *x == l.get_ref())
                        .ok_or_else(|| {
                            at(
                                l.span(),
                                format!(
                                    "tier1.min_certification {:?} is not one of {}",
                                    l.get_ref(),
                                    LEVELS.join(", ")
                                ),
                            )
                        })?,
                    None => 2,
                };
                (
                    level,
                    protections(t.key_protection, &["hardware", "secure_element"]),
                    t.device_bound.unwrap_or(true),
                )
            }
            None => (2, protections(None, &["hardware", "secure_element"]), true),
        };
        let tier2_kp = protections(
            raw.tier2.and_then(|t| t.key_protection),
            &["hardware", "secure_element", "tee"],
        );
        let mut aaguids = BTreeMap::new();
        for v in raw.aaguid {
            let span = v.span();
            let v = v.into_inner();
            let id = crate::webauthn::parse_uuid(&v.aaguid)
                .ok_or_else(|| at(span.clone(), format!("aaguid {:?} is not a UUID", v.aaguid)))?;
            if let Some(t) = v.tier
                && !(1..=4).contains(&t)
            {
                return Err(at(span, format!("tier {t} is not 1 to 4")));
            }
            if v.deny && v.tier.is_some() {
                return Err(at(
                    span,
                    "an entry either denies a model or gives it a tier, not both".into(),
                ));
            }
            if !v.deny && v.tier.is_none() {
                return Err(at(
                    span,
                    "an [[aaguid]] entry needs tier = 1..4 or deny = true".into(),
                ));
            }
            let vouch = Vouch {
                name: v.name,
                tier: v.tier,
                attestation_required: v.attestation_required.unwrap_or(true),
                deny: v.deny,
            };
            if aaguids.insert(id, vouch).is_some() {
                return Err(at(span, format!("aaguid {} appears twice", v.aaguid)));
            }
        }
        let mut registration = [
            Admission::Accept,
            Admission::Accept,
            Admission::Accept,
            Admission::AcceptMarked,
        ];
        if let Some(r) = raw.registration {
            let span = r.span();
            let r = r.into_inner();
            for (i, value) in [r.tier1, r.tier2, r.tier3, r.tier4].into_iter().enumerate() {
                if let Some(v) = value {
                    registration[i] = match v.as_str() {
                        "accept" => Admission::Accept,
                        "accept-marked" => Admission::AcceptMarked,
                        "reject" => Admission::Reject,
                        other => {
                            return Err(at(
                                span.clone(),
                                format!(
                                    "registration.tier{} {other:?} is not accept, accept-marked or reject",
                                    i + 1
                                ),
                            ));
                        }
                    };
                }
            }
        }
        let actions = super::actions::parse(text, raw.actions)?;
        Ok(Policy {
            version,
            sha256: crate::audit::hex(&crate::keys::sha256(text.as_bytes())),
            text: text.to_string(),
            tier1_min_certification: min_cert,
            tier1_key_protection: tier1_kp,
            tier1_device_bound: device_bound,
            tier2_key_protection: tier2_kp,
            aaguids,
            registration,
            actions,
        })
    }

    /// The action of that name; `None` names `default`.
    pub fn action(&self, name: Option<&str>) -> Option<(&str, &Action)> {
        let name = name.unwrap_or(super::actions::DEFAULT_ACTION);
        self.actions
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The tier a credential earns, and why.
    pub fn assess(&self, input: &TierInput<'_>) -> Assessment {
        let mut reasons = Vec::new();
        let vouch = self.aaguids.get(&input.aaguid);
        if let Some(v) = vouch
            && v.deny
        {
            reasons.push(format!(
                "AAGUID {} is denied by policy{}",
                crate::webauthn::uuid_text(&input.aaguid),
                v.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ));
            return Assessment {
                tier: 4,
                reasons,
                denied: true,
            };
        }
        let mut tier = 4u8;
        match (input.attested, input.metadata) {
            (true, Some(known)) => {
                reasons.push("attestation verified to the model's FIDO metadata root".into());
                let level = known.certification_level();
                let level_index = level
                    .as_deref()
                    .and_then(|l| LEVELS.iter().position(|x| *x == l));
                let protected =
                    |list: &[String]| known.key_protection.iter().any(|k| list.contains(k));
                let bound_ok = !self.tier1_device_bound || !input.backup_eligible;
                if level_index.is_some_and(|i| i >= self.tier1_min_certification)
                    && protected(&self.tier1_key_protection)
                    && bound_ok
                {
                    tier = 1;
                    reasons.push(format!(
                        "certified {}, key protection {}, {}",
                        level.unwrap_or_default(),
                        known.key_protection.join("+"),
                        if input.backup_eligible {
                            "synced"
                        } else {
                            "device-bound"
                        }
                    ));
                } else if protected(&self.tier2_key_protection) {
                    tier = 2;
                    reasons.push(format!(
                        "hardware-backed key ({}); not tier 1: {}",
                        known.key_protection.join("+"),
                        tier1_miss(self, level.as_deref(), level_index, input.backup_eligible)
                    ));
                } else {
                    tier = 3;
                    reasons.push(format!(
                        "attested, but key protection {} is not hardware-backed",
                        known.key_protection.join("+")
                    ));
                }
            }
            (false, Some(_)) => {
                tier = 3;
                reasons.push(
                    "model known to FIDO metadata, but its AAGUID is self-asserted (no verified attestation chain)".into(),
                );
            }
            (_, None) => {
                reasons.push("no FIDO metadata for this AAGUID".into());
            }
        }
        if let Some(v) = vouch
            && let Some(t) = v.tier
            && t < tier
        {
            if input.attested || !v.attestation_required {
                tier = t;
                reasons.push(format!(
                    "vouched for by policy as tier {t}{}{}",
                    v.name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default(),
                    if input.attested {
                        ""
                    } else {
                        " without attestation"
                    }
                ));
            } else {
                reasons.push(format!(
                    "policy vouches for tier {t} only with a verified attestation chain"
                ));
            }
        }
        Assessment {
            tier,
            reasons,
            denied: false,
        }
    }

    /// What registration does with an assessment.
    pub fn admission(&self, a: &Assessment) -> Admission {
        if a.denied {
            return Admission::Reject;
        }
        self.registration[usize::from(a.tier.clamp(1, 4)) - 1]
    }
}

fn tier1_miss(p: &Policy, level: Option<&str>, index: Option<usize>, be: bool) -> String {
    let mut why = Vec::new();
    if index.is_none_or(|i| i < p.tier1_min_certification) {
        why.push(format!(
            "certification {} below {}",
            level.unwrap_or("none"),
            LEVELS[p.tier1_min_certification]
        ));
    }
    if p.tier1_device_bound && be {
        why.push("synced (backup eligible)".into());
    }
    if why.is_empty() {
        why.push("key protection not in tier1.key_protection".into());
    }
    why.join(", ")
}

/// What the tier depends on.
pub struct TierInput<'a> {
    pub aaguid: [u8; 16],
    /// The attestation chain was verified to a root from the model's metadata.
    pub attested: bool,
    pub metadata: Option<&'a Known>,
    /// The BE flag: the credential may be synced off the device.
    pub backup_eligible: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    pub tier: u8,
    pub reasons: Vec<String>,
    pub denied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(levels: &[&str], protection: &[&str]) -> Known {
        Known {
            description: Some("Model".into()),
            roots: Vec::new(),
            statuses: levels
                .iter()
                .enumerate()
                .map(|(i, s)| (s.to_string(), Some(format!("2024-0{}-01", i + 1))))
                .collect(),
            attestation_types: vec!["basic_full".into()],
            authentication_algorithms: Vec::new(),
            key_protection: protection.iter().map(|s| s.to_string()).collect(),
            attachment_hint: Vec::new(),
        }
    }

    fn input(attested: bool, metadata: Option<&Known>, be: bool) -> TierInput<'_> {
        TierInput {
            aaguid: [7; 16],
            attested,
            metadata,
            backup_eligible: be,
        }
    }

    #[test]
    fn the_builtin_policy_is_valid() {
        let p = Policy::builtin().expect("built-in policy");
        assert!(!p.version.is_empty());
        assert_eq!(p.sha256.len(), 64);
    }

    #[test]
    fn the_four_tiers() {
        let p = Policy::builtin().expect("policy");
        let l2_hw = known(
            &["FIDO_CERTIFIED_L1", "FIDO_CERTIFIED_L2"],
            &["hardware", "secure_element"],
        );
        assert_eq!(p.assess(&input(true, Some(&l2_hw), false)).tier, 1);
        // Synced, or only L1, or TEE: tier 2.
        assert_eq!(p.assess(&input(true, Some(&l2_hw), true)).tier, 2);
        let l1_hw = known(&["FIDO_CERTIFIED_L1"], &["hardware"]);
        let a = p.assess(&input(true, Some(&l1_hw), false));
        assert_eq!(a.tier, 2);
        assert!(a.reasons.iter().any(|r| r.contains("below L2")), "{a:?}");
        // Attested software key: tier 3. Known model, self-asserted: tier 3.
        let sw = known(&["FIDO_CERTIFIED_L1"], &["software"]);
        assert_eq!(p.assess(&input(true, Some(&sw), false)).tier, 3);
        assert_eq!(p.assess(&input(false, Some(&l2_hw), false)).tier, 3);
        // Unknown: tier 4, accepted but marked by the built-in policy.
        let a = p.assess(&input(false, None, false));
        assert_eq!(a.tier, 4);
        assert_eq!(p.admission(&a), Admission::AcceptMarked);
        // Decertified: a later NOT_FIDO_CERTIFIED withdraws the level.
        let withdrawn = known(&["FIDO_CERTIFIED_L2", "NOT_FIDO_CERTIFIED"], &["hardware"]);
        assert_eq!(p.assess(&input(true, Some(&withdrawn), false)).tier, 2);
    }

    #[test]
    fn vouching_and_denying() {
        let text = r#"
version = "t1"
[[aaguid]]
aaguid = "07070707-0707-0707-0707-070707070707"
name = "Synced platform passkeys"
tier = 2
attestation_required = false
[[aaguid]]
aaguid = "08080808080808080808080808080808"
tier = 1
[[aaguid]]
aaguid = "09090909-0909-0909-0909-090909090909"
deny = true
[registration]
tier4 = "reject"
"#;
        let p = Policy::parse(text).expect("policy");
        // Unattested, unknown, but vouched for without attestation: tier 2.
        let a = p.assess(&input(false, None, true));
        assert_eq!(a.tier, 2, "{a:?}");
        // Vouched for tier 1 only with attestation: stays tier 4 without.
        let mut i = input(false, None, false);
        i.aaguid = [8; 16];
        let a = p.assess(&i);
        assert_eq!(a.tier, 4);
        assert_eq!(p.admission(&a), Admission::Reject);
        // Denied whatever else is true.
        let hw = known(&["FIDO_CERTIFIED_L3"], &["hardware"]);
        let mut i = input(true, Some(&hw), false);
        i.aaguid = [9; 16];
        let a = p.assess(&i);
        assert!(a.denied);
        assert_eq!(p.admission(&a), Admission::Reject);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "version = \"x\"\n[tier1]\nmin_certification = \"L9\"\n",
                3,
                "L9",
            ),
            (
                "version = \"x\"\n\n[[aaguid]]\naaguid = \"nope\"\ntier = 1\n",
                3,
                "not a UUID",
            ),
            (
                "version = \"x\"\n[[aaguid]]\naaguid = \"07070707070707070707070707070707\"\ntier = 5\n",
                2,
                "not 1 to 4",
            ),
            (
                "version = \"x\"\n[[aaguid]]\naaguid = \"07070707070707070707070707070707\"\n",
                2,
                "needs tier",
            ),
            ("version = \"x\"\nunknown = 1\n", 2, "unknown"),
            ("version = \"\"\n", 1, "version"),
            (
                "version = \"x\"\n[registration]\ntier3 = \"maybe\"\n",
                2,
                "maybe",
            ),
        ];
        for (text, line, needle) in cases {
            let e = Policy::parse(text).expect_err(text);
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
        let e = Policy::parse("[tier2]\nkey_protection = []\n").expect_err("no version");
        assert!(e.to_string().contains("version"), "{e}");
    }

    #[test]
    fn the_hash_follows_the_bytes() {
        let a = Policy::parse("version = \"x\"\n").expect("a");
        let b = Policy::parse("version = \"x\" \n").expect("b");
        assert_ne!(a.sha256, b.sha256);
    }
}
