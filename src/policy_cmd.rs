//! `signet policy`: the officer's tools for the trust policy file.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;
use signet::mds::stored::Known;
use signet::policy::tiers::{Policy, TierInput};
use signet::store::{SledStore, Store};
use signet::webauthn::parse_uuid;

use crate::mds_cmd::StoreArgs;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file: exit 0 and print its version and SHA-256, or
    /// exit 1 naming the line at fault.
    Check {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Which tier a model would earn, and why.
    Explain {
        /// The AAGUID (UUID, dashes optional).
        #[arg(long)]
        aaguid: String,
        /// The attestation chain verified to the model's metadata root.
        #[arg(long)]
        attested: bool,
        /// The credential is backup eligible (may be synced).
        #[arg(long)]
        be: bool,
        /// The policy file (default: the built-in policy).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Read the model's metadata from this data directory's catalog
        /// (with the service stopped); without it the model is unknown.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Which stored credentials would change tier or decision under a new
    /// policy, before it is deployed (with the service stopped; on a
    /// running service, POST /v1/policy/simulation does the same).
    #[command(after_help = "Examples:\n  \
        signet policy simulate new-policy.toml --config /etc/signet/signet.toml\n  \
        signet policy simulate new.toml --current old.toml --data-dir /var/lib/signet/data --json")]
    Simulate {
        /// The candidate policy file.
        file: PathBuf,
        /// The policy to compare with. Default: the --config file's
        /// [policy] file, else the built-in policy.
        #[arg(long, value_name = "FILE")]
        current: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        /// Changed credentials listed (all are counted).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn load(policy: Option<&PathBuf>) -> anyhow::Result<Policy> {
    match policy {
        Some(p) => Policy::load(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display())),
        None => Policy::builtin().map_err(|e| anyhow::anyhow!("built-in policy: {e}")),
    }
}

pub fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { file, json } => {
            let p = load(Some(&file))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "valid": true,
                        "version": p.version,
                        "sha256": p.sha256,
                        "registration": p.registration.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                        "aaguids": p.aaguids.len(),
                        "actions": p.actions.keys().collect::<Vec<_>>(),
                    }))?
                );
            } else {
                println!("{}: valid", file.display());
                println!("  version   {}", p.version);
                println!("  sha256    {}", p.sha256);
                for (i, a) in p.registration.iter().enumerate() {
                    println!("  tier {}    {}", i + 1, a.as_str());
                }
                println!("  aaguids   {} vouched for or denied", p.aaguids.len());
                for (name, a) in &p.actions {
                    println!(
                        "  action    {name}: tier {} or better, user verification {}{}{}",
                        a.min_tier,
                        a.user_verification.as_str(),
                        if a.device_bound { ", device-bound" } else { "" },
                        if a.thresholds.is_empty() {
                            String::new()
                        } else {
                            format!(", {} thresholds", a.thresholds.len())
                        }
                    );
                }
            }
            Ok(())
        }
        PolicyCommand::Simulate {
            file,
            current,
            store,
            limit,
            json,
        } => {
            let candidate = load(Some(&file))?;
            let current = match current {
                Some(c) => load(Some(&c))?,
                None => match store.config()?.and_then(|c| c.policy) {
                    Some(p) => load(Some(&p))?,
                    None => load(None)?,
                },
            };
            let (_, db) = store.open(false)?;
            let report = signet::flows::policy::simulate(&db, &current, &candidate, limit)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_simulation(&report);
            }
            Ok(())
        }
        PolicyCommand::Explain {
            aaguid,
            attested,
            be,
            policy,
            data_dir,
            json,
        } => {
            let id = parse_uuid(&aaguid).ok_or_else(|| {
                anyhow::anyhow!("--aaguid {aaguid:?}: expected a UUID such as 08987058-cadc-4b81-b6e1-30de50dcbe96")
            })?;
            let p = load(policy.as_ref())?;
            let known: Option<Known> = match &data_dir {
                Some(dir) => {
                    if !dir.join("db").is_file() {
                        anyhow::bail!("--data-dir {}: no signet store there", dir.display());
                    }
                    let store = SledStore::open(dir).map_err(|e| {
                        anyhow::anyhow!(
                            "--data-dir {}: {e} (if the service is running, stop it first)",
                            dir.display()
                        )
                    })?;
                    match store.metadata_by_aaguid(&id)? {
                        Some(e) => Some(Known::decode(&e.entry)?),
                        None => None,
                    }
                }
                None => None,
            };
            let a = p.assess(&TierInput {
                aaguid: id,
                attested: attested && known.is_some(),
                metadata: known.as_ref(),
                backup_eligible: be,
            });
            let admission = p.admission(&a);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "aaguid": signet::webauthn::uuid_text(&id),
                        "tier": a.tier,
                        "registration": admission.as_str(),
                        "reasons": a.reasons,
                        "policyVersion": p.version,
                        "model": known.as_ref().and_then(|k| k.description.clone()),
                    }))?
                );
            } else {
                println!(
                    "tier {} ({}) under policy {}",
                    a.tier,
                    admission.as_str(),
                    p.version
                );
                if let Some(d) = known.as_ref().and_then(|k| k.description.as_deref()) {
                    println!("  model   {d}");
                }
                for r in &a.reasons {
                    println!("  because {r}");
                }
                if attested && known.is_none() {
                    println!("  note    --attested has no effect without the model's metadata");
                }
            }
            Ok(())
        }
    }
}

fn print_simulation(r: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    println!(
        "{} (sha256 {}) against the policy in force {} (sha256 {})",
        text(&r["candidate"]["version"]),
        text(&r["candidate"]["sha256"]),
        text(&r["current"]["version"]),
        text(&r["current"]["sha256"]),
    );
    println!("  credentials  {}", r["credentials"]);
    println!("  changed      {}", r["changed"]);
    let counts = |key: &str, label: &str| {
        if let Some(m) = r[key].as_object() {
            for (k, n) in m {
                println!("  {label:<12} {k}: {n}");
            }
        }
    };
    counts("tierChanges", "tier");
    counts("decisionChanges", "decision");
    for kind in ["added", "removed", "changed"] {
        if let Some(list) = r["actions"][kind].as_array().filter(|l| !l.is_empty()) {
            let names: Vec<String> = list.iter().map(text).collect();
            println!("  actions {kind:<5} {}", names.join(", "));
        }
    }
    for c in r["listed"].as_array().into_iter().flatten() {
        println!(
            "  credential {} (user {}, aaguid {}): tier {} -> {}, registration {} -> {}",
            text(&c["credentialId"]),
            text(&c["userId"]),
            text(&c["aaguid"]),
            c["tier"]["from"],
            c["tier"]["to"],
            text(&c["registration"]["from"]),
            text(&c["registration"]["to"]),
        );
        for (label, d) in c["decisions"].as_object().into_iter().flatten() {
            println!(
                "      {label}: {} -> {}{}",
                text(&d["from"]),
                text(&d["to"]),
                d["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
    }
    if r["truncated"].as_bool() == Some(true) {
        println!("  (more changed credentials than listed; raise --limit or use --json)");
    }
}
