//! Per-action requirements: what a login, a payee change or a payment asks
//! of the credential that approves it, and what happens when the credential
//! falls short.
//!
//! # The model
//!
//! An action (`[actions.NAME]` in the policy file) names a minimum trust
//! tier, a user-verification requirement, whether the credential must be
//! device-bound, and what to do with flagged and marked credentials. Payment
//! actions add thresholds by amount and currency that raise those
//! requirements (never lower them).
//!
//! For one request, [`Action::requirement`] resolves the action and the
//! amount into a [`Requirement`]. The options endpoints shape the WebAuthn
//! options from it; the verify endpoints call [`Requirement::decide`] with
//! the facts of the credential that answered, which gives one of:
//!
//! - [`Decision::Allow`];
//! - [`Decision::StepUp`]: the signature was good but the credential is not
//!   strong enough for this action; the answer names the reason and the
//!   tiers that would do, and core banking asks for a stronger credential
//!   or another factor;
//! - [`Decision::Deny`]: the credential must not be used for this action
//!   at all (its model is denied or no longer admitted, or it is flagged
//!   and the action says deny).
//!
//! # Amounts the policy cannot compare
//!
//! An amount in a currency no threshold names, or no amount for an action
//! that has thresholds, gets the strictest of the action's thresholds: an
//! amount the policy cannot place is treated as a large one.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::amount::{Amount, Decimal, currency};
use super::tiers::{Admission, PolicyError, line_of};
use crate::webauthn::UserVerification;
use crate::webauthn::options::{
    AttestationConveyance, AuthenticatorAttachment, ResidentKeyRequirement,
};

/// The action used when a request names none.
pub const DEFAULT_ACTION: &str = "default";
/// Thresholds one action may list.
pub const THRESHOLDS_MAX: usize = 64;
/// Actions one policy may define.
pub const ACTIONS_MAX: usize = 256;

/// What an action does with a flagged credential (its authenticator model
/// was reported compromised, or an officer flagged it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFlagged {
    Deny,
    StepUp,
}

/// What an action does with a marked credential (registered under a tier
/// the registration policy accepts only marked, such as an unknown model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMarked {
    Allow,
    StepUp,
    Deny,
}

/// Raises an action's requirements from an amount up, in one currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub currency: String,
    pub at_least: Decimal,
    pub min_tier: Option<u8>,
    pub user_verification: Option<UserVerification>,
    pub device_bound: Option<bool>,
}

/// One `[actions.NAME]` table, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub description: Option<String>,
    /// The weakest tier allowed: 4 allows every tier, 1 only tier 1.
    pub min_tier: u8,
    pub user_verification: UserVerification,
    /// Registration options; `None` lets the request choose (default none).
    pub attestation: Option<AttestationConveyance>,
    /// Registration options; `None` lets the request choose (default preferred).
    pub resident_key: Option<ResidentKeyRequirement>,
    /// Registration options and check; `None` allows either.
    pub attachment: Option<AuthenticatorAttachment>,
    /// The credential must not be backup eligible (BE = 0).
    pub device_bound: bool,
    pub flagged: OnFlagged,
    pub marked: OnMarked,
    pub thresholds: Vec<Threshold>,
}

impl Default for Action {
    fn default() -> Action {
        Action {
            description: None,
            min_tier: 4,
            user_verification: UserVerification::Preferred,
            attestation: None,
            resident_key: None,
            attachment: None,
            device_bound: false,
            flagged: OnFlagged::Deny,
            marked: OnMarked::Allow,
            thresholds: Vec::new(),
        }
    }
}

/// The requirement in force for one request: an action resolved with the
/// amount, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub action: String,
    pub min_tier: u8,
    pub user_verification: UserVerification,
    pub attestation: Option<AttestationConveyance>,
    pub resident_key: Option<ResidentKeyRequirement>,
    pub attachment: Option<AuthenticatorAttachment>,
    pub device_bound: bool,
    pub flagged: OnFlagged,
    pub marked: OnMarked,
    /// Which thresholds applied, for the record ("at least 1000.00 EUR").
    pub threshold: Option<String>,
}

/// What the policy knows about the credential that answered.
pub struct Facts<'a> {
    /// The tier under the policy in force.
    pub tier: u8,
    pub tier_reasons: &'a [String],
    /// The policy's `[[aaguid]] deny` names the model.
    pub denied: bool,
    /// What registration would do with this tier today.
    pub admission: Admission,
    pub backup_eligible: bool,
    /// Why the credential is flagged, if it is.
    pub flagged: Option<&'a str>,
}

/// The outcome for one credential and one requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    StepUp { reason: String },
    Deny { reason: String },
}

impl Decision {
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::StepUp { .. } => "step-up",
            Decision::Deny { .. } => "deny",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Decision::Allow => None,
            Decision::StepUp { reason } | Decision::Deny { reason } => Some(reason),
        }
    }
}

/// The stronger of two requirements by `rank`: a request may raise what
/// an action pins, never lower it.
fn raise<T: Copy>(a: T, b: T, rank: fn(T) -> u8) -> T {
    if rank(b) > rank(a) { b } else { a }
}

/// The stricter of two user-verification requirements.
pub fn stricter_uv(a: UserVerification, b: UserVerification) -> UserVerification {
    raise(a, b, |u| match u {
        UserVerification::Discouraged => 0,
        UserVerification::Preferred => 1,
        UserVerification::Required => 2,
    })
}

/// The stricter of two resident-key requirements.
pub fn stricter_rk(a: ResidentKeyRequirement, b: ResidentKeyRequirement) -> ResidentKeyRequirement {
    raise(a, b, |r| match r {
        ResidentKeyRequirement::Discouraged => 0,
        ResidentKeyRequirement::Preferred => 1,
        ResidentKeyRequirement::Required => 2,
    })
}

/// The stronger of two attestation conveyance preferences.
pub fn stronger_attestation(
    a: AttestationConveyance,
    b: AttestationConveyance,
) -> AttestationConveyance {
    raise(a, b, |c| match c {
        AttestationConveyance::None => 0,
        AttestationConveyance::Indirect => 1,
        AttestationConveyance::Direct => 2,
        AttestationConveyance::Enterprise => 3,
    })
}

pub fn attachment_str(a: AuthenticatorAttachment) -> &'static str {
    match a {
        AuthenticatorAttachment::Platform => "platform",
        AuthenticatorAttachment::CrossPlatform => "cross-platform",
    }
}

impl Action {
    /// The requirement for a request of this action, with its amount.
    pub fn requirement(&self, name: &str, amount: Option<&Amount>) -> Requirement {
        let mut r = Requirement {
            action: name.to_string(),
            min_tier: self.min_tier,
            user_verification: self.user_verification,
            attestation: self.attestation,
            resident_key: self.resident_key,
            attachment: self.attachment,
            device_bound: self.device_bound,
            flagged: self.flagged,
            marked: self.marked,
            threshold: None,
        };
        if self.thresholds.is_empty() {
            return r;
        }
        let placed = amount.filter(|a| self.thresholds.iter().any(|t| t.currency == a.currency));
        let applied: Vec<&Threshold> = match placed {
            Some(a) => self
                .thresholds
                .iter()
                .filter(|t| t.currency == a.currency && a.value >= t.at_least)
                .collect(),
            // Fail closed: an amount the thresholds cannot place is large.
            None => self.thresholds.iter().collect(),
        };
        for t in &applied {
            if let Some(tier) = t.min_tier {
                r.min_tier = r.min_tier.min(tier);
            }
            if let Some(u) = t.user_verification {
                r.user_verification = stricter_uv(r.user_verification, u);
            }
            if t.device_bound == Some(true) {
                r.device_bound = true;
            }
        }
        r.threshold = match (placed, amount) {
            (Some(a), _) => applied
                .iter()
                .filter(|t| t.currency == a.currency)
                .max_by(|x, y| x.at_least.cmp(&y.at_least))
                .map(|t| format!("at least {} {}", t.at_least, t.currency)),
            (None, Some(a)) => Some(format!("strictest: no threshold is set in {}", a.currency)),
            (None, None) => Some("strictest: the request gave no amount".into()),
        };
        r
    }
}

impl Requirement {
    /// The tiers that meet this requirement's minimum, strongest first.
    pub fn tiers(&self) -> Vec<u8> {
        (1..=self.min_tier).collect()
    }

    fn needs(&self) -> String {
        let mut s = format!(
            "action {} needs tier {} or better",
            self.action, self.min_tier
        );
        if let Some(t) = &self.threshold {
            s.push_str(&format!(" ({t})"));
        }
        s
    }

    /// The decision at authentication. Reasons that deny come first; every
    /// reason to step up is named, so one answer tells core banking all of
    /// what is missing.
    pub fn decide(&self, f: &Facts<'_>) -> Decision {
        if f.denied {
            return Decision::Deny {
                reason: f
                    .tier_reasons
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "the model is denied by policy".into()),
            };
        }
        if f.admission == Admission::Reject {
            return Decision::Deny {
                reason: format!(
                    "the policy in force rejects tier {} credentials at registration",
                    f.tier
                ),
            };
        }
        let mut step_up = Vec::new();
        if let Some(why) = f.flagged {
            match self.flagged {
                OnFlagged::Deny => {
                    return Decision::Deny {
                        reason: format!("the credential is flagged: {why}"),
                    };
                }
                OnFlagged::StepUp => step_up.push(format!("the credential is flagged: {why}")),
            }
        }
        if f.admission == Admission::AcceptMarked {
            match self.marked {
                OnMarked::Allow => {}
                OnMarked::Deny => {
                    return Decision::Deny {
                        reason: format!(
                            "the credential is marked (tier {}), and action {} refuses marked credentials",
                            f.tier, self.action
                        ),
                    };
                }
                OnMarked::StepUp => step_up.push(format!(
                    "the credential is marked (tier {}), and action {} steps marked credentials up",
                    f.tier, self.action
                )),
            }
        }
        if f.tier > self.min_tier {
            step_up.push(format!(
                "the credential is tier {}; {}",
                f.tier,
                self.needs()
            ));
        }
        if self.device_bound && f.backup_eligible {
            step_up.push(format!(
                "the credential may be synced (backup eligible); action {} needs a device-bound one",
                self.action
            ));
        }
        if step_up.is_empty() {
            Decision::Allow
        } else {
            Decision::StepUp {
                reason: step_up.join("; "),
            }
        }
    }

    /// The decision at registration: a registration cannot step up, so a
    /// shortfall refuses. `attachment` is what the client reported
    /// (`authenticatorAttachment` of the response; a client's claim, not
    /// signed by the authenticator).
    pub fn admit_registration(
        &self,
        tier: u8,
        backup_eligible: bool,
        attachment: Option<&str>,
    ) -> Result<(), String> {
        if tier > self.min_tier {
            return Err(format!(
                "the authenticator is tier {tier}; {}",
                self.needs()
            ));
        }
        if self.device_bound && backup_eligible {
            return Err(format!(
                "the credential may be synced (backup eligible); action {} needs a device-bound one",
                self.action
            ));
        }
        if let (Some(want), Some(got)) = (self.attachment, attachment)
            && attachment_str(want) != got
        {
            return Err(format!(
                "the client reports a {got} authenticator; action {} needs {}",
                self.action,
                attachment_str(want)
            ));
        }
        Ok(())
    }
}

/// An action name: short, lowercase, safe in logs and URLs.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

// ---- the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAction {
    description: Option<String>,
    min_tier: Option<toml::Spanned<i64>>,
    user_verification: Option<toml::Spanned<String>>,
    attestation: Option<toml::Spanned<String>>,
    resident_key: Option<toml::Spanned<String>>,
    attachment: Option<toml::Spanned<String>>,
    device_bound: Option<bool>,
    flagged: Option<toml::Spanned<String>>,
    marked: Option<toml::Spanned<String>>,
    #[serde(default)]
    thresholds: Vec<toml::Spanned<RawThreshold>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThreshold {
    currency: toml::Spanned<String>,
    at_least: toml::Spanned<toml::Value>,
    min_tier: Option<toml::Spanned<i64>>,
    user_verification: Option<toml::Spanned<String>>,
    device_bound: Option<bool>,
}

struct Ctx<'t> {
    text: &'t str,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: String) -> PolicyError {
        PolicyError {
            line: Some(line_of(self.text, span.start)),
            message,
        }
    }

    fn tier(&self, key: &str, v: &toml::Spanned<i64>) -> Result<u8, PolicyError> {
        match u8::try_from(*v.get_ref()) {
            Ok(t @ 1..=4) => Ok(t),
            _ => Err(self.err(v.span(), format!("{key} {} is not 1 to 4", v.get_ref()))),
        }
    }

    fn uv(&self, key: &str, v: &toml::Spanned<String>) -> Result<UserVerification, PolicyError> {
        match v.get_ref().as_str() {
            "required" => Ok(UserVerification::Required),
            "preferred" => Ok(UserVerification::Preferred),
            "discouraged" => Ok(UserVerification::Discouraged),
            o => Err(self.err(
                v.span(),
                format!("{key} {o:?} is not required, preferred or discouraged"),
            )),
        }
    }
}

/// Validates the `[actions.*]` tables; `default` is added when absent.
pub(super) fn parse(
    text: &str,
    raw: BTreeMap<String, toml::Spanned<RawAction>>,
) -> Result<BTreeMap<String, Action>, PolicyError> {
    let cx = Ctx { text };
    if raw.len() > ACTIONS_MAX {
        return Err(PolicyError {
            line: None,
            message: format!("more than {ACTIONS_MAX} actions"),
        });
    }
    let mut out = BTreeMap::new();
    for (name, spanned) in raw {
        let span = spanned.span();
        let key = format!("actions.{name}");
        if !valid_name(&name) {
            return Err(cx.err(
                span,
                format!("{key:?}: action names are 1 to 64 characters of a-z, 0-9, '-', '_', '.'"),
            ));
        }
        let a = spanned.into_inner();
        let mut action = Action {
            description: a.description,
            ..Action::default()
        };
        if let Some(t) = &a.min_tier {
            action.min_tier = cx.tier(&format!("{key}.min_tier"), t)?;
        }
        if let Some(u) = &a.user_verification {
            action.user_verification = cx.uv(&format!("{key}.user_verification"), u)?;
        }
        if let Some(v) = &a.attestation {
            action.attestation = Some(match v.get_ref().as_str() {
                "none" => AttestationConveyance::None,
                "indirect" => AttestationConveyance::Indirect,
                "direct" => AttestationConveyance::Direct,
                "enterprise" => AttestationConveyance::Enterprise,
                o => {
                    return Err(cx.err(
                        v.span(),
                        format!(
                            "{key}.attestation {o:?} is not none, indirect, direct or enterprise"
                        ),
                    ));
                }
            });
        }
        if let Some(v) = &a.resident_key {
            action.resident_key = Some(match v.get_ref().as_str() {
                "required" => ResidentKeyRequirement::Required,
                "preferred" => ResidentKeyRequirement::Preferred,
                "discouraged" => ResidentKeyRequirement::Discouraged,
                o => {
                    return Err(cx.err(
                        v.span(),
                        format!(
                            "{key}.resident_key {o:?} is not required, preferred or discouraged"
                        ),
                    ));
                }
            });
        }
        if let Some(v) = &a.attachment {
            action.attachment = match v.get_ref().as_str() {
                "platform" => Some(AuthenticatorAttachment::Platform),
                "cross-platform" => Some(AuthenticatorAttachment::CrossPlatform),
                "any" => None,
                o => {
                    return Err(cx.err(
                        v.span(),
                        format!("{key}.attachment {o:?} is not platform, cross-platform or any"),
                    ));
                }
            };
        }
        if let Some(b) = a.device_bound {
            action.device_bound = b;
        }
        if let Some(v) = &a.flagged {
            action.flagged = match v.get_ref().as_str() {
                "deny" => OnFlagged::Deny,
                "step-up" => OnFlagged::StepUp,
                o => {
                    return Err(cx.err(
                        v.span(),
                        format!("{key}.flagged {o:?} is not deny or step-up"),
                    ));
                }
            };
        }
        if let Some(v) = &a.marked {
            action.marked = match v.get_ref().as_str() {
                "allow" => OnMarked::Allow,
                "step-up" => OnMarked::StepUp,
                "deny" => OnMarked::Deny,
                o => {
                    return Err(cx.err(
                        v.span(),
                        format!("{key}.marked {o:?} is not allow, step-up or deny"),
                    ));
                }
            };
        }
        if a.thresholds.len() > THRESHOLDS_MAX {
            return Err(cx.err(
                span,
                format!("{key}: more than {THRESHOLDS_MAX} thresholds"),
            ));
        }
        for t in a.thresholds {
            let tspan = t.span();
            let t = t.into_inner();
            let tkey = format!("{key}.thresholds");
            let code = currency(t.currency.get_ref())
                .map_err(|e| cx.err(t.currency.span(), format!("{tkey}.currency: {e}")))?;
            let at_least = match t.at_least.get_ref() {
                toml::Value::String(s) => Decimal::parse(s)
                    .map_err(|e| cx.err(t.at_least.span(), format!("{tkey}.at_least: {e}")))?,
                _ => {
                    return Err(cx.err(
                        t.at_least.span(),
                        format!(
                            "{tkey}.at_least must be a decimal string such as \"1000.00\" (numbers are not exact)"
                        ),
                    ));
                }
            };
            let threshold = Threshold {
                currency: code,
                at_least,
                min_tier: t
                    .min_tier
                    .as_ref()
                    .map(|v| cx.tier(&format!("{tkey}.min_tier"), v))
                    .transpose()?,
                user_verification: t
                    .user_verification
                    .as_ref()
                    .map(|v| cx.uv(&format!("{tkey}.user_verification"), v))
                    .transpose()?,
                device_bound: t.device_bound,
            };
            if threshold.min_tier.is_none()
                && threshold.user_verification.is_none()
                && threshold.device_bound.is_none()
            {
                return Err(cx.err(
                    tspan,
                    format!(
                        "{tkey}: a threshold needs min_tier, user_verification or device_bound"
                    ),
                ));
            }
            if action
                .thresholds
                .iter()
                .any(|x| x.currency == threshold.currency && x.at_least == threshold.at_least)
            {
                return Err(cx.err(
                    tspan,
                    format!(
                        "{tkey}: {} {} appears twice",
                        threshold.at_least, threshold.currency
                    ),
                ));
            }
            action.thresholds.push(threshold);
        }
        out.insert(name, action);
    }
    out.entry(DEFAULT_ACTION.to_string()).or_default();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tiers::Policy;

    const PAYMENTS: &str = r#"
version = "t"
[actions.payment]
min_tier = 3
user_verification = "required"
[[actions.payment.thresholds]]
currency = "EUR"
at_least = "1000.00"
min_tier = 2
[[actions.payment.thresholds]]
currency = "EUR"
at_least = "10000"
min_tier = 1
device_bound = true
[[actions.payment.thresholds]]
currency = "CHF"
at_least = "1000"
min_tier = 2
"#;

    fn facts(tier: u8) -> Facts<'static> {
        Facts {
            tier,
            tier_reasons: &[],
            denied: false,
            admission: Admission::Accept,
            backup_eligible: false,
            flagged: None,
        }
    }

    #[test]
    fn a_request_may_raise_requirements_never_lower_them() {
        use UserVerification::*;
        assert_eq!(stricter_uv(Required, Discouraged), Required);
        assert_eq!(stricter_uv(Discouraged, Required), Required);
        assert_eq!(stricter_uv(Preferred, Discouraged), Preferred);
        assert_eq!(stricter_uv(Discouraged, Preferred), Preferred);
        use ResidentKeyRequirement as Rk;
        assert_eq!(stricter_rk(Rk::Required, Rk::Discouraged), Rk::Required);
        assert_eq!(stricter_rk(Rk::Discouraged, Rk::Preferred), Rk::Preferred);
        use AttestationConveyance as A;
        assert_eq!(stronger_attestation(A::Direct, A::None), A::Direct);
        assert_eq!(stronger_attestation(A::None, A::Indirect), A::Indirect);
        assert_eq!(
            stronger_attestation(A::Enterprise, A::Direct),
            A::Enterprise
        );
    }

    #[test]
    fn thresholds_raise_by_amount_and_currency() {
        let p = Policy::parse(PAYMENTS).expect("policy");
        let pay = &p.actions["payment"];
        let at = |v: &str, c: &str| {
            pay.requirement("payment", Some(&Amount::parse(v, c).expect("amount")))
        };
        assert_eq!(at("999.99", "EUR").min_tier, 3);
        assert_eq!(at("1000", "EUR").min_tier, 2);
        assert_eq!(
            at("1000", "EUR").threshold.as_deref(),
            Some("at least 1000.00 EUR")
        );
        let big = at("10000.00", "EUR");
        assert_eq!((big.min_tier, big.device_bound), (1, true));
        assert_eq!(big.user_verification, UserVerification::Required);
        assert_eq!(at("5000", "CHF").min_tier, 2);
        // A currency no threshold names, or no amount: the strictest.
        let usd = at("1", "USD");
        assert_eq!((usd.min_tier, usd.device_bound), (1, true));
        assert!(usd.threshold.as_deref().is_some_and(|t| t.contains("USD")));
        assert_eq!(pay.requirement("payment", None).min_tier, 1);
        // The default action exists and allows every tier.
        assert_eq!(p.actions[DEFAULT_ACTION].min_tier, 4);
    }

    #[test]
    fn decisions() {
        let p = Policy::parse(PAYMENTS).expect("policy");
        let r = p.actions["payment"]
            .requirement("payment", Some(&Amount::parse("1500", "EUR").expect("a")));
        assert_eq!(r.decide(&facts(2)), Decision::Allow);
        assert_eq!(r.tiers(), vec![1, 2]);
        let d = r.decide(&facts(3));
        assert!(
            matches!(&d, Decision::StepUp { reason } if reason.contains("tier 3") && reason.contains("1000.00 EUR")),
            "{d:?}"
        );
        // Flagged: deny by default, step-up when the action says so.
        let mut f = facts(1);
        f.flagged = Some("model reported compromised");
        assert!(matches!(r.decide(&f), Decision::Deny { .. }));
        let mut soft = r.clone();
        soft.flagged = OnFlagged::StepUp;
        assert!(matches!(soft.decide(&f), Decision::StepUp { .. }));
        // Denied models and tiers registration now rejects: deny.
        let mut f = facts(1);
        f.denied = true;
        assert!(matches!(r.decide(&f), Decision::Deny { .. }));
        let mut f = facts(1);
        f.admission = Admission::Reject;
        assert!(matches!(r.decide(&f), Decision::Deny { .. }));
        // Marked: per action.
        let mut f = facts(1);
        f.admission = Admission::AcceptMarked;
        assert_eq!(r.decide(&f), Decision::Allow);
        soft.marked = OnMarked::StepUp;
        assert!(matches!(soft.decide(&f), Decision::StepUp { .. }));
        soft.marked = OnMarked::Deny;
        assert!(matches!(soft.decide(&f), Decision::Deny { .. }));
        // Every reason to step up is named.
        let big = p.actions["payment"].requirement("payment", None);
        let mut f = facts(3);
        f.backup_eligible = true;
        let d = big.decide(&f);
        assert!(
            matches!(&d, Decision::StepUp { reason } if reason.contains("tier 3") && reason.contains("synced")),
            "{d:?}"
        );
    }

    #[test]
    fn registration_refuses_what_the_action_cannot_take() {
        let text = "version = \"t\"\n[actions.enroll]\nmin_tier = 2\ndevice_bound = true\nattachment = \"platform\"\n";
        let p = Policy::parse(text).expect("policy");
        let r = p.actions["enroll"].requirement("enroll", None);
        assert!(r.admit_registration(2, false, Some("platform")).is_ok());
        assert!(r.admit_registration(2, false, None).is_ok());
        assert!(r.admit_registration(3, false, None).is_err());
        assert!(r.admit_registration(1, true, None).is_err());
        let e = r
            .admit_registration(1, false, Some("cross-platform"))
            .expect_err("attachment");
        assert!(e.contains("cross-platform"), "{e}");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("version = \"x\"\n[actions.Pay]\n", 2, "action names"),
            (
                "version = \"x\"\n[actions.pay]\nmin_tier = 0\n",
                3,
                "not 1 to 4",
            ),
            (
                "version = \"x\"\n[actions.pay]\nuser_verification = \"always\"\n",
                3,
                "always",
            ),
            (
                "version = \"x\"\n[actions.pay]\nflagged = \"ignore\"\n",
                3,
                "ignore",
            ),
            ("version = \"x\"\n[actions.pay]\nmarked = \"ok\"\n", 3, "ok"),
            (
                "version = \"x\"\n[actions.pay]\nattachment = \"usb\"\n",
                3,
                "usb",
            ),
            (
                "version = \"x\"\n[actions.pay]\nattestation = \"all\"\n",
                3,
                "all",
            ),
            (
                "version = \"x\"\n[actions.pay]\nresident_key = \"yes\"\n",
                3,
                "yes",
            ),
            (
                "version = \"x\"\n[[actions.pay.thresholds]]\ncurrency = \"EUR\"\nat_least = 1000.0\nmin_tier = 2\n",
                4,
                "decimal string",
            ),
            (
                "version = \"x\"\n[[actions.pay.thresholds]]\ncurrency = \"eur\"\nat_least = \"1\"\nmin_tier = 2\n",
                3,
                "ISO 4217",
            ),
            (
                "version = \"x\"\n[[actions.pay.thresholds]]\ncurrency = \"EUR\"\nat_least = \"1,000\"\nmin_tier = 2\n",
                4,
                "1,000",
            ),
            (
                "version = \"x\"\n[[actions.pay.thresholds]]\ncurrency = \"EUR\"\nat_least = \"1\"\n",
                2,
                "needs min_tier",
            ),
            (
                "version = \"x\"\n[[actions.pay.thresholds]]\ncurrency = \"EUR\"\nat_least = \"1\"\nmin_tier = 2\n[[actions.pay.thresholds]]\ncurrency = \"EUR\"\nat_least = \"1.00\"\nmin_tier = 1\n",
                6,
                "twice",
            ),
            (
                "version = \"x\"\n[actions.pay]\nmin_teir = 2\n",
                3,
                "unknown field",
            ),
        ];
        for (text, line, needle) in cases {
            let e = Policy::parse(text).expect_err(text);
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}
