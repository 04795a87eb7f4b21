//! The trust policy in force: what credentials are decided by, read and
//! replaced by officers, reloaded from its file, and simulated against the
//! stored credentials before a change is deployed.
//!
//! # One policy per request
//!
//! A request takes one snapshot ([`PolicySlot::get`]) and decides with it
//! from options to answer, so a reload in the middle never mixes two
//! versions in one decision. Every decision records the version.
//!
//! # Changes
//!
//! The policy changes in three ways, each audited as `policy.changed` with
//! the old and new version and SHA-256:
//!
//! - an officer replaces it over the API ([`replace`]): the text is
//!   validated, written atomically to `[policy] file`, then put in force;
//!   the request names the hash it replaces, so two officers cannot
//!   overwrite each other's change unseen;
//! - the file changes on disk, noticed by polling its hash ([`reload`]);
//! - SIGHUP asks for the same reload at once.
//!
//! A file that does not validate leaves the policy in force untouched; the
//! failure is logged and audited once per distinct content
//! (`policy.reload_failed`), not at every poll.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde_json::{Value, json};

use super::{FlowError, Services, metadata, truncate, unix_ms, uuid_text};
use crate::audit::AuditEvent;
use crate::mds::stored::Known;
use crate::policy::actions::{Action, Decision, Facts};
use crate::policy::amount::{Amount, Decimal};
use crate::policy::tiers::{Admission, Assessment, POLICY_MAX, Policy, TierInput};
use crate::store::{CredentialRecord, Store};
use crate::webauthn::b64url;

/// The audit actor of reloads from the file.
pub const RELOAD_ACTOR: &str = "signet (policy file reload)";
/// Credentials read per page during a simulation.
const SCAN_PAGE: usize = 256;

/// The policy in force and where it came from.
pub struct PolicySlot {
    current: RwLock<Arc<Policy>>,
    file: Option<PathBuf>,
    /// Serializes changes; holds the hash of the last file content that
    /// failed to validate, so that failure is reported once.
    change: Mutex<Option<String>>,
}

impl PolicySlot {
    /// `file` is `[policy] file`; `None` means the built-in policy, which
    /// cannot be replaced over the API.
    pub fn new(policy: Policy, file: Option<PathBuf>) -> PolicySlot {
        PolicySlot {
            current: RwLock::new(Arc::new(policy)),
            file,
            change: Mutex::new(None),
        }
    }

    /// The policy in force now.
    pub fn get(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(p) => p.clone(),
            // A panic while swapping an Arc leaves a whole Arc behind.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Serializes a change; the guard holds the hash of the last file
    /// content that failed to validate.
    fn lock_changes(&self) -> Result<std::sync::MutexGuard<'_, Option<String>>, FlowError> {
        self.change
            .lock()
            .map_err(|_| FlowError::Internal("policy lock poisoned".into()))
    }

    fn put(&self, policy: Policy) -> Arc<Policy> {
        let new = Arc::new(policy);
        let mut slot = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::replace(&mut *slot, new)
    }
}

/// `GET /v1/policy`: the policy in force, with its text.
pub fn describe(s: &Services) -> Value {
    let p = s.policy.get();
    json!({
        "version": p.version,
        "sha256": p.sha256,
        "source": match s.policy.file() {
            Some(f) => json!({ "file": f.display().to_string() }),
            None => json!("builtin"),
        },
        "replaceable": s.policy.file().is_some(),
        "actions": p.actions.keys().collect::<Vec<_>>(),
        "text": p.text,
    })
}

fn parse_candidate(text: &str) -> Result<Policy, FlowError> {
    if text.len() as u64 > POLICY_MAX {
        return Err(FlowError::invalid(
            "policy",
            format!("larger than {POLICY_MAX} bytes"),
        ));
    }
    Policy::parse(text).map_err(|e| FlowError::invalid("policy", e.to_string()))
}

fn policy_text(body: &Value) -> Result<(&str, Option<&str>), FlowError> {
    let obj = body
        .as_object()
        .ok_or_else(|| FlowError::invalid("body", "must be an object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["policy", "replaces"].contains(&k.as_str()))
    {
        return Err(FlowError::invalid(
            truncate(k, 64),
            "unknown member; expected one of: policy, replaces",
        ));
    }
    let text = match obj.get("policy") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(FlowError::invalid(
                "policy",
                "must be a string (the TOML text)",
            ));
        }
        None => return Err(FlowError::invalid("policy", "is required")),
    };
    let replaces = match obj.get("replaces") {
        None | Some(Value::Null) => None,
        Some(Value::String(h)) => Some(h.as_str()),
        Some(_) => return Err(FlowError::invalid("replaces", "must be a string")),
    };
    Ok((text, replaces))
}

fn changed_event(now_ms: u64, actor: &str, via: &str, old: &Policy, new: &Policy) -> AuditEvent {
    AuditEvent::new(now_ms, actor, "policy.changed", new.version.clone()).with_detail(json!({
        "via": via,
        "from": { "version": old.version, "sha256": old.sha256 },
        "to": { "version": new.version, "sha256": new.sha256 },
    }))
}

/// `PUT /v1/policy` `{"policy": TOML, "replaces": SHA256}`: validates,
/// writes `[policy] file` atomically, puts it in force, audits.
pub fn replace(
    s: &Services,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let (text, replaces) = policy_text(body)?;
    let Some(replaces) = replaces else {
        return Err(FlowError::invalid(
            "replaces",
            "is required: the sha256 of the policy this one replaces (GET /v1/policy)",
        ));
    };
    let candidate = parse_candidate(text)?;
    let Some(file) = s.policy.file() else {
        return Err(FlowError::Conflict {
            field: "policy".into(),
            reason: "signet runs the built-in policy; set [policy] file in the configuration to manage the policy over the API".into(),
        });
    };
    let mut failed = s.policy.lock_changes()?;
    let old = s.policy.get();
    if !replaces.eq_ignore_ascii_case(&old.sha256) {
        return Err(FlowError::Conflict {
            field: "replaces".into(),
            reason: format!(
                "the policy in force is {} (sha256 {}); read it again and re-apply your change",
                old.version, old.sha256
            ),
        });
    }
    if candidate.sha256 == old.sha256 {
        return Ok(json!({ "changed": false, "version": old.version, "sha256": old.sha256 }));
    }
    super::write_atomically(file, text.as_bytes()).map_err(|(path, e)| FlowError::Conflict {
        field: "policy".into(),
        reason: format!("cannot write the policy file {}: {e}", path.display()),
    })?;
    *failed = None;
    let answer = json!({
        "changed": true,
        "version": candidate.version,
        "sha256": candidate.sha256,
        "previous": { "version": old.version, "sha256": old.sha256 },
    });
    let event = changed_event(unix_ms(now), actor, "api", &old, &candidate);
    s.policy.put(candidate);
    s.record(event)?;
    Ok(answer)
}

/// What a reload found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// No `[policy] file`, or its content is the policy in force.
    Unchanged,
    Changed {
        from: String,
        to: String,
    },
    /// The file does not validate (reported once per content).
    Invalid(String),
    /// The same invalid content as last time.
    StillInvalid,
}

/// Reads `[policy] file` and puts it in force if its content changed and
/// validates. `via` names the trigger for the audit log ("file", "sighup").
pub fn reload(s: &Services, via: &str, now: SystemTime) -> Result<Reload, FlowError> {
    let Some(file) = s.policy.file() else {
        return Ok(Reload::Unchanged);
    };
    let mut failed = s.policy.lock_changes()?;
    let old = s.policy.get();
    let text = match Policy::read_text(file) {
        Ok(t) => t,
        Err(e) => {
            let e = e.to_string();
            return report_invalid(s, &mut failed, e.clone(), e, via, now);
        }
    };
    let sha = crate::audit::hex(&crate::keys::sha256(text.as_bytes()));
    if sha == old.sha256 {
        *failed = None;
        return Ok(Reload::Unchanged);
    }
    match Policy::parse(&text) {
        Ok(new) => {
            *failed = None;
            let result = Reload::Changed {
                from: old.version.clone(),
                to: new.version.clone(),
            };
            tracing::info!(from = %old.sha256, to = %new.sha256, version = %new.version, via, "trust policy reloaded");
            let event = changed_event(unix_ms(now), RELOAD_ACTOR, via, &old, &new);
            s.policy.put(new);
            s.record(event)?;
            Ok(result)
        }
        Err(e) => report_invalid(
            s,
            &mut failed,
            sha,
            format!("{}: {e}", file.display()),
            via,
            now,
        ),
    }
}

fn report_invalid(
    s: &Services,
    failed: &mut Option<String>,
    key: String,
    error: String,
    via: &str,
    now: SystemTime,
) -> Result<Reload, FlowError> {
    if failed.as_deref() == Some(key.as_str()) {
        return Ok(Reload::StillInvalid);
    }
    tracing::error!(error = %error, via, "trust policy file not reloaded; the policy in force stays");
    s.record(
        AuditEvent::new(unix_ms(now), RELOAD_ACTOR, "policy.reload_failed", "policy").with_detail(
            json!({ "via": via, "error": truncate(&error, 512), "inForce": s.policy.get().sha256 }),
        ),
    )?;
    *failed = Some(key);
    Ok(Reload::Invalid(error))
}

// ---- credentials under a policy ----

/// The tier a stored credential earns under `policy` with the catalog's
/// current entry for its model, and what registration would do with it.
pub fn assess_credential(
    policy: &Policy,
    credential: &CredentialRecord,
    known: Option<&Known>,
) -> (Assessment, Admission) {
    let a = policy.assess(&TierInput {
        aaguid: credential.aaguid,
        attested: credential.attested && known.is_some(),
        metadata: known,
        backup_eligible: credential.backup_eligible,
    });
    let admission = policy.admission(&a);
    (a, admission)
}

/// The facts [`crate::policy::actions::Requirement::decide`] needs.
pub fn facts<'a>(
    credential: &'a CredentialRecord,
    assessment: &'a Assessment,
    admission: Admission,
) -> Facts<'a> {
    Facts {
        tier: assessment.tier,
        tier_reasons: &assessment.reasons,
        denied: assessment.denied,
        admission,
        backup_eligible: credential.backup_eligible,
        flagged: credential.flagged.as_deref(),
    }
}

/// The points at which an action is decided in a simulation: below every
/// threshold, and at each threshold.
fn decision_points(name: &str, action: &Action) -> Vec<(String, Option<Amount>)> {
    let Some(first) = action.thresholds.first() else {
        return vec![(name.to_string(), None)];
    };
    let mut points = vec![(
        name.to_string(),
        Some(Amount {
            value: Decimal::ZERO,
            currency: first.currency.clone(),
        }),
    )];
    for t in &action.thresholds {
        points.push((
            format!("{name} >= {} {}", t.at_least, t.currency),
            Some(Amount {
                value: t.at_least,
                currency: t.currency.clone(),
            }),
        ));
    }
    points
}

fn decisions(
    policy: &Policy,
    credential: &CredentialRecord,
    known: Option<&Known>,
) -> (u8, Admission, BTreeMap<String, Decision>) {
    let (a, admission) = assess_credential(policy, credential, known);
    let f = facts(credential, &a, admission);
    let mut out = BTreeMap::new();
    for (name, action) in &policy.actions {
        for (label, amount) in decision_points(name, action) {
            let d = action.requirement(name, amount.as_ref()).decide(&f);
            out.insert(label, d);
        }
    }
    (a.tier, admission, out)
}

/// `signet policy simulate` and `POST /v1/policy/simulation`: every stored
/// credential decided under the policy in force and under `candidate`,
/// and the differences. At most `max_listed` changed credentials are
/// listed; all are counted.
pub fn simulate(
    store: &dyn Store,
    current: &Policy,
    candidate: &Policy,
    max_listed: usize,
) -> Result<Value, FlowError> {
    let mut catalog: HashMap<metadata::ModelKey, Option<Known>> = HashMap::new();
    let mut total = 0u64;
    let mut changed = 0u64;
    let mut listed = Vec::new();
    let mut tier_moves: BTreeMap<String, u64> = BTreeMap::new();
    let mut decision_moves: BTreeMap<String, u64> = BTreeMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.credentials_after(after.as_deref(), SCAN_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for c in &page {
            total += 1;
            let key = metadata::model_key(c);
            if !catalog.contains_key(&key) {
                let known = metadata::lookup_credential(store, c)?;
                catalog.insert(key.clone(), known);
            }
            let known = catalog.get(&key).and_then(|k| k.as_ref());
            let (t0, r0, d0) = decisions(current, c, known);
            let (t1, r1, d1) = decisions(candidate, c, known);
            let labels: BTreeSet<&String> = d0.keys().chain(d1.keys()).collect();
            let mut moved = serde_json::Map::new();
            for label in labels {
                let from = d0.get(label).map_or("undefined", |d| d.as_str());
                let to = d1.get(label).map_or("undefined", |d| d.as_str());
                if from != to {
                    *decision_moves
                        .entry(format!("{label}: {from} -> {to}"))
                        .or_default() += 1;
                    let mut m = json!({ "from": from, "to": to });
                    if let Some(r) = d1.get(label).and_then(|d| d.reason()) {
                        m["reason"] = json!(r);
                    }
                    moved.insert(label.clone(), m);
                }
            }
            if t0 == t1 && r0 == r1 && moved.is_empty() {
                continue;
            }
            changed += 1;
            if t0 != t1 {
                *tier_moves.entry(format!("{t0} -> {t1}")).or_default() += 1;
            }
            if listed.len() < max_listed {
                listed.push(json!({
                    "credentialId": b64url(&c.id),
                    "userId": b64url(&c.user_id),
                    "aaguid": uuid_text(&c.aaguid),
                    "tier": { "from": t0, "to": t1 },
                    "registration": { "from": r0.as_str(), "to": r1.as_str() },
                    "decisions": moved,
                }));
            }
        }
    }
    let names = |p: &Policy| p.actions.keys().cloned().collect::<BTreeSet<_>>();
    let (before, after_names) = (names(current), names(candidate));
    Ok(json!({
        "current": { "version": current.version, "sha256": current.sha256 },
        "candidate": { "version": candidate.version, "sha256": candidate.sha256 },
        "credentials": total,
        "changed": changed,
        "tierChanges": tier_moves,
        "decisionChanges": decision_moves,
        "actions": {
            "added": after_names.difference(&before).collect::<Vec<_>>(),
            "removed": before.difference(&after_names).collect::<Vec<_>>(),
            "changed": before.intersection(&after_names)
                .filter(|n| current.actions.get(*n) != candidate.actions.get(*n))
                .collect::<Vec<_>>(),
        },
        "listed": listed,
        "truncated": (changed as usize) > listed.len(),
    }))
}

/// `POST /v1/policy/simulation` `{"policy": TOML}`: [`simulate`] against
/// the policy in force.
pub fn simulate_request(s: &Services, body: &Value, max_listed: usize) -> Result<Value, FlowError> {
    let (text, replaces) = policy_text(body)?;
    if replaces.is_some() {
        return Err(FlowError::invalid(
            "replaces",
            "is not used by a simulation",
        ));
    }
    let candidate = parse_candidate(text)?;
    simulate(s.store.as_ref(), &s.policy.get(), &candidate, max_listed)
}
