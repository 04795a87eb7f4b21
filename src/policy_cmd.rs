//! `signet policy`: the officer's tools for the trust policy file.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;
use signet::mds::stored::Known;
use signet::policy::tiers::{Policy, TierInput};
use signet::store::{SledStore, Store};
use signet::webauthn::parse_uuid;

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
