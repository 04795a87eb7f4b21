//! `docs/policy.md` is true: its settings tables document exactly the keys
//! the policy parser reads, each literal Default is what the parser does
//! when the key is absent, every TOML block is valid (and every block
//! marked `<!-- policy-docs: parse -->` is a valid policy that sets every
//! documented key), and it links to the README's guide.

mod common;

use std::collections::BTreeSet;

use signet::policy::actions::{ACTIONS_MAX, Action, DEFAULT_ACTION, THRESHOLDS_MAX};
use signet::policy::metadata::REFUSED_STATUSES;
use signet::policy::tiers::{LEVELS, POLICY_MAX, Policy};

use common::docs::{default_literal, repo_file, settings_rows};

const DOC: &str = "docs/policy.md";
const PARSE_MARKER: &str = "<!-- policy-docs: parse -->";

/// Every key `Policy::parse` reads, as docs/policy.md writes them. A key
/// added to the parser belongs here and in the documentation.
const KEYS: [&str; 28] = [
    "version",
    "tier1.min_certification",
    "tier1.key_protection",
    "tier1.device_bound",
    "tier2.key_protection",
    "aaguid[].aaguid",
    "aaguid[].name",
    "aaguid[].tier",
    "aaguid[].attestation_required",
    "aaguid[].deny",
    "registration.tier1",
    "registration.tier2",
    "registration.tier3",
    "registration.tier4",
    "actions.<name>.description",
    "actions.<name>.min_tier",
    "actions.<name>.user_verification",
    "actions.<name>.attestation",
    "actions.<name>.resident_key",
    "actions.<name>.attachment",
    "actions.<name>.device_bound",
    "actions.<name>.flagged",
    "actions.<name>.marked",
    "actions.<name>.thresholds[].currency",
    "actions.<name>.thresholds[].at_least",
    "actions.<name>.thresholds[].min_tier",
    "actions.<name>.thresholds[].user_verification",
    "actions.<name>.thresholds[].device_bound",
];

/// The keys whose Default cell is a TOML literal. The others have none to
/// compare, each for a reason:
/// - `version`, `aaguid[].aaguid`, `thresholds[].currency` and
///   `thresholds[].at_least` are required;
/// - `aaguid[].name` and `actions.<name>.description` default to no text;
/// - `aaguid[].tier` is absent exactly when the entry denies the model;
/// - `actions.<name>.attestation` and `actions.<name>.resident_key`, when
///   absent, let the request choose; any value pins a floor, which is a
///   different policy even when the options come out the same;
/// - `thresholds[].min_tier`, `thresholds[].user_verification` and
///   `thresholds[].device_bound` are absent by default, and a threshold
///   needs at least one of them, so none has a neutral value.
///
/// Listed so that a Default cell that stops being a literal is noticed.
const LITERAL_DEFAULTS: [&str; 16] = [
    "tier1.min_certification",
    "tier1.key_protection",
    "tier1.device_bound",
    "tier2.key_protection",
    "aaguid[].attestation_required",
    "aaguid[].deny",
    "registration.tier1",
    "registration.tier2",
    "registration.tier3",
    "registration.tier4",
    "actions.<name>.min_tier",
    "actions.<name>.user_verification",
    "actions.<name>.attachment",
    "actions.<name>.device_bound",
    "actions.<name>.flagged",
    "actions.<name>.marked",
];

/// The fenced ```toml blocks: (marked for parsing as a policy, text).
fn toml_blocks(text: &str) -> Vec<(bool, String)> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    let mut previous = "";
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("```toml") {
            let mut body = String::new();
            for inner in lines.by_ref() {
                if inner.trim_start().starts_with("```") {
                    break;
                }
                body.push_str(inner);
                body.push('\n');
            }
            blocks.push((previous.trim() == PARSE_MARKER, body));
        }
        previous = line;
    }
    blocks
}

/// Every leaf key of a policy, written as docs/policy.md writes them:
/// arrays of tables as `name[]`, action names as `<name>`.
fn policy_keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let toml::Value::Table(t) = value else {
        panic!("{prefix} is not a table");
    };
    for (k, v) in t {
        let name = match prefix {
            "" => k.clone(),
            "actions" => "actions.<name>".to_string(),
            p => format!("{p}.{k}"),
        };
        match v {
            toml::Value::Table(_) => policy_keys(v, &name, out),
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_table()) =>
            {
                for item in items {
                    policy_keys(item, &format!("{name}[]"), out);
                }
            }
            _ => {
                out.insert(name);
            }
        }
    }
}

fn parse(text: &str) -> Policy {
    Policy::parse(text).unwrap_or_else(|e| panic!("{e}\n--- policy ---\n{text}"))
}

/// What a policy decides, without its text and hash (which follow the
/// bytes, not the meaning).
fn meaning(p: &Policy) -> String {
    format!(
        "{:?}",
        (
            &p.version,
            p.tier1_min_certification,
            &p.tier1_key_protection,
            p.tier1_device_bound,
            &p.tier2_key_protection,
            &p.aaguids,
            p.registration,
            &p.actions,
        )
    )
}

const VOUCHED: &str = "07070707-0707-0707-0707-070707070707";

/// The smallest policies in which `key` can be set: the tables the key
/// lives in, with the members they require (a `[[aaguid]]` entry needs its
/// AAGUID and a tier; a threshold needs currency, amount and a raise), and
/// the key set to `value` when given. Several variants when the key's
/// table may also be absent altogether.
fn minimal(key: &str, value: Option<&toml::Value>) -> Vec<String> {
    let mut root = toml::Table::new();
    root.insert("version".into(), "docs".into());
    let (path, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let set = |t: &mut toml::Table| {
        if let Some(v) = value {
            t.insert(leaf.to_string(), v.clone());
        }
    };
    let mut without_table = None;
    match path {
        "" => set(&mut root),
        "tier1" | "tier2" | "registration" => {
            without_table = Some(root.clone());
            let mut t = toml::Table::new();
            set(&mut t);
            root.insert(path.into(), t.into());
        }
        "aaguid[]" => {
            let mut entry = toml::Table::new();
            entry.insert("aaguid".into(), VOUCHED.into());
            entry.insert("tier".into(), 2.into());
            set(&mut entry);
            root.insert("aaguid".into(), vec![toml::Value::from(entry)].into());
        }
        "actions.<name>" => {
            let mut action = toml::Table::new();
            set(&mut action);
            let mut actions = toml::Table::new();
            actions.insert("x".into(), action.into());
            root.insert("actions".into(), actions.into());
        }
        "actions.<name>.thresholds[]" => {
            let mut threshold = toml::Table::new();
            threshold.insert("currency".into(), "EUR".into());
            threshold.insert("at_least".into(), "1000.00".into());
            threshold.insert("min_tier".into(), 2.into());
            set(&mut threshold);
            let mut action = toml::Table::new();
            action.insert(
                "thresholds".into(),
                vec![toml::Value::from(threshold)].into(),
            );
            let mut actions = toml::Table::new();
            actions.insert("x".into(), action.into());
            root.insert("actions".into(), actions.into());
        }
        other => panic!("no minimal policy for {key} (table {other})"),
    }
    let mut out = vec![toml::to_string(&root).expect("serialize")];
    out.extend(without_table.map(|t| toml::to_string(&t).expect("serialize")));
    out
}

#[test]
fn the_documented_keys_are_the_parsers_keys() {
    let doc = repo_file(DOC);
    let rows = settings_rows(&doc);
    let documented: BTreeSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(documented.len(), rows.len(), "a key is documented twice");
    let expected: BTreeSet<&str> = KEYS.into_iter().collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{DOC}: keys not documented: {missing:?}; documented but not in KEYS: {extra:?}"
    );
    let literal: BTreeSet<&str> = rows
        .iter()
        .filter(|(_, d)| default_literal(d).is_some())
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        literal,
        LITERAL_DEFAULTS.into_iter().collect::<BTreeSet<_>>(),
        "{DOC}: the keys with a literal Default changed"
    );
}

#[test]
fn documented_defaults_are_the_code_defaults() {
    let doc = repo_file(DOC);
    let mut checked = 0;
    for (key, cell) in settings_rows(&doc) {
        let Some(default) = default_literal(&cell) else {
            continue;
        };
        let with = minimal(&key, Some(&default));
        let without = minimal(&key, None);
        let set = parse(&with[0]);
        for text in &without {
            let unset = parse(text);
            assert_eq!(
                meaning(&set),
                meaning(&unset),
                "{DOC}: {key} = {default} is not what an absent {key} means\n--- with ---\n{}\n--- without ---\n{text}",
                with[0]
            );
        }
        // The defaults of an action are those of the `default` action the
        // parser adds, and of `Action::default()`.
        if key.starts_with("actions.<name>.") && !key.contains("thresholds") {
            assert_eq!(set.actions["x"], set.actions[DEFAULT_ACTION], "{key}");
            assert_eq!(set.actions["x"], Action::default(), "{key}");
        }
        checked += 1;
    }
    assert_eq!(checked, LITERAL_DEFAULTS.len());
    // The built-in policy spells out the file-level defaults: it decides as
    // a policy with nothing but a version does.
    let builtin = Policy::builtin().expect("built-in policy");
    let bare = parse(&format!("version = {:?}\n", builtin.version));
    assert_eq!(meaning(&builtin), meaning(&bare));
}

#[test]
fn toml_blocks_are_valid_and_the_full_example_sets_every_key() {
    let doc = repo_file(DOC);
    let blocks = toml_blocks(&doc);
    assert!(
        blocks.iter().any(|(marked, _)| *marked),
        "{DOC}: no ```toml block is marked {PARSE_MARKER:?}"
    );
    let mut union = BTreeSet::new();
    for (marked, text) in &blocks {
        let value: toml::Value =
            toml::from_str(text).unwrap_or_else(|e| panic!("{DOC}: invalid TOML: {e}\n{text}"));
        if *marked {
            let p = parse(text);
            assert!(p.actions.contains_key(DEFAULT_ACTION));
            policy_keys(&value, "", &mut union);
        }
    }
    let expected: BTreeSet<String> = KEYS.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        union, expected,
        "{DOC}: the marked policies should set exactly the documented keys"
    );
}

#[test]
fn links_to_the_guide_and_states_the_decisions() {
    let doc = repo_file(DOC);
    assert!(
        doc.contains("](../README.md#trust-policy)"),
        "{DOC}: no link to the guide"
    );
    assert!(repo_file("README.md").contains("\n## Trust policy\n"));
    assert!(doc.contains("REVOKED"));
    for status in REFUSED_STATUSES {
        assert!(doc.contains(status), "{DOC} does not name {status}");
    }
    for level in LEVELS {
        assert!(
            doc.contains(&format!("`{level}`")),
            "{DOC} does not name {level}"
        );
    }
    for limit in [POLICY_MAX as usize, ACTIONS_MAX, THRESHOLDS_MAX] {
        assert!(
            doc.contains(&limit.to_string()),
            "{DOC} does not state {limit}"
        );
    }
    assert!(doc.contains("registration.tier4 = \"reject\""));
    for endpoint in [
        "GET /v1/policy",
        "PUT /v1/policy",
        "POST /v1/policy/simulation",
        "policy.changed",
        "policy.reload_failed",
        "signet policy check",
        "signet policy explain",
        "signet policy simulate",
    ] {
        assert!(doc.contains(endpoint), "{DOC} does not mention {endpoint}");
    }
}
