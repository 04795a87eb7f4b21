//! `signet mds`: install and inspect the FIDO metadata catalog in a data
//! directory (the service must be stopped: sled locks the directory).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use signet::audit::{AuditEvent, AuditLog, CheckpointPolicy};
use signet::flows::metadata::{self, InstallReport};
use signet::flows::unix_ms;
use signet::mds::crl::Crl;
use signet::mds::parse_roots;
use signet::store::{SledStore, Store};

/// The FIDO Metadata Service's production root (GlobalSign Root CA - R3),
/// used when `--root` is not given.
pub const MDS_ROOT: &[u8] = include_bytes!("../certs/globalsign-root-r3.pem");

/// Largest BLOB read (the 2024 production BLOB is about 2.5 MB).
const BLOB_FILE_MAX: u64 = 16 * 1024 * 1024;
/// Largest root or CRL file read.
const PKI_FILE_MAX: u64 = 4 * 1024 * 1024;

#[derive(Subcommand)]
pub enum MdsCommand {
    /// Verify an MDS3 BLOB file and install its catalog (offline installs;
    /// with --at, archived BLOBs as of their time). The BLOB must be signed
    /// through the root, fresh at --at, and newer than the installed one.
    Import {
        /// The BLOB (a compact JWS), or - for stdin.
        file: PathBuf,
        /// Trust root(s), PEM or DER (default: the built-in FIDO MDS root,
        /// GlobalSign Root CA - R3).
        #[arg(long, value_name = "PEM")]
        root: Option<PathBuf>,
        /// A CRL (PEM or DER) for the signer's chain; repeat for each issuer.
        /// With none, revocation is not checked (and the report says so).
        #[arg(long = "crl", value_name = "FILE")]
        crls: Vec<PathBuf>,
        /// Verify as of this time instead of now (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = signet::rfc3339::parse)]
        at: Option<SystemTime>,
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the installed catalog's entry for an AAGUID.
    Show {
        /// The AAGUID, as a UUID (with or without dashes).
        aaguid: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Print the stored entry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The installed catalog (serial, nextUpdate, entries) and the last
    /// refresh attempt.
    Status {
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Which store: a data directory, or the one a config file names.
#[derive(Args)]
pub struct StoreArgs {
    /// The service's data directory (store.data_dir).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    data_dir: Option<PathBuf>,
    /// Take the data directory from this signet.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl StoreArgs {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        match (&self.data_dir, &self.config) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(c)) => {
                let config =
                    signet::config::Config::load(c, &signet::config::Overrides::from_env())
                        .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
                Ok(config.store.data_dir)
            }
            (None, None) => anyhow::bail!("--data-dir or --config is required"),
        }
    }

    /// Opens the store; `create` only for commands that install.
    fn open(&self, create: bool) -> anyhow::Result<(PathBuf, SledStore)> {
        let dir = self.dir()?;
        if !create && !dir.join("db").is_file() {
            anyhow::bail!("--data-dir {}: no signet store there", dir.display());
        }
        let store = SledStore::open(&dir).map_err(|e| {
            anyhow::anyhow!(
                "--data-dir {}: {e} (if the service is running, stop it first)",
                dir.display()
            )
        })?;
        Ok((dir, store))
    }
}

pub fn run(command: MdsCommand, actor: &str) -> anyhow::Result<()> {
    match command {
        MdsCommand::Import {
            file,
            root,
            crls,
            at,
            store,
            json,
        } => {
            let jwt = crate::read_bounded(&file, BLOB_FILE_MAX, None)?;
            let roots = match &root {
                Some(p) => parse_roots(
                    &crate::read_bounded(p, PKI_FILE_MAX, Some("--root"))?,
                    "--root",
                )?,
                None => parse_roots(MDS_ROOT, "built-in MDS root")?,
            };
            let mut parsed = Vec::new();
            for p in &crls {
                let crl = Crl::parse(&crate::read_bounded(p, PKI_FILE_MAX, Some("--crl"))?)
                    .map_err(|e| anyhow::anyhow!("--crl {}: {e}", p.display()))?;
                parsed.push(crl);
            }
            let now = SystemTime::now();
            let (dir, store) = store.open(true)?;
            let source = if file == Path::new("-") {
                "stdin".to_string()
            } else {
                file.display().to_string()
            };
            let input = metadata::BlobInput {
                jwt: &jwt,
                roots: &roots,
                crls: &parsed,
                at: at.unwrap_or(now),
                source: &source,
            };
            let report = metadata::install(&store, &dir, &input, now)?;
            // An officer action: audited. The checkpoint follows at the
            // service's next timer tick (its key is the service's).
            AuditLog::new(std::sync::Arc::new(store), CheckpointPolicy::default()).append(
                &AuditEvent::new(
                    unix_ms(now),
                    actor,
                    "mds.installed",
                    format!("no {}", report.no),
                )
                .with_detail(json!({
                    "no": report.no,
                    "previousNo": report.previous_no,
                    "nextUpdate": report.next_update,
                    "entries": report.entries,
                    "source": source,
                    "revocationChecked": report.revocation_checked,
                })),
                None,
            )?;
            print_install(&report, json)
        }
        MdsCommand::Show {
            aaguid,
            store,
            json,
        } => {
            let bytes = parse_aaguid(&aaguid)?;
            let (_, store) = store.open(false)?;
            let Some(entry) = store.metadata_by_aaguid(&bytes)? else {
                anyhow::bail!("no metadata entry for AAGUID {aaguid}");
            };
            let doc: Value = serde_json::from_slice(&entry.entry)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", entry_text(&doc));
            }
            Ok(())
        }
        MdsCommand::Status { store, json } => {
            let (_, store) = store.open(false)?;
            let status = store.metadata_status()?;
            let catalog = status.catalog.as_ref();
            let doc = json!({
                "installed": catalog.is_some(),
                "no": catalog.map(|c| c.no),
                "nextUpdate": catalog.map(|c| signet::rfc3339::format_ms(c.next_update_ms)),
                "entries": catalog.map(|c| c.entries),
                "installedAt": catalog.map(|c| signet::rfc3339::format_ms(c.installed_ms)),
                "source": catalog.map(|c| c.source.clone()),
                "blobSha256": catalog.map(|c| signet::audit::hex(&c.blob_sha256)),
                "lastAttempt": status.last_attempt_ms.map(signet::rfc3339::format_ms),
                "lastError": status.last_error,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                match catalog {
                    None => println!("no metadata catalog installed"),
                    Some(c) => {
                        println!("BLOB no       {}", c.no);
                        println!(
                            "nextUpdate    {}",
                            signet::rfc3339::format_ms(c.next_update_ms)
                        );
                        println!("entries       {}", c.entries);
                        println!(
                            "installed     {} from {}",
                            signet::rfc3339::format_ms(c.installed_ms),
                            c.source
                        );
                    }
                }
                if let Some(t) = status.last_attempt_ms {
                    println!("last attempt  {}", signet::rfc3339::format_ms(t));
                }
                if let Some(e) = &status.last_error {
                    println!("last error    {e}");
                }
            }
            Ok(())
        }
    }
}

fn print_install(report: &InstallReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let previous = report
        .previous_no
        .map_or("none".to_string(), |n| n.to_string());
    println!(
        "installed MDS BLOB no {} (previous {previous}): {} entries, nextUpdate {}",
        report.no, report.entries, report.next_update
    );
    println!("signer        {}", report.signer);
    println!(
        "revocation    {}",
        if report.revocation_checked {
            "checked against the given CRLs"
        } else {
            "not checked (no --crl given)"
        }
    );
    println!("saved         {}", report.saved_to.display());
    const SHOWN: usize = 5;
    for w in report.warnings.iter().take(SHOWN) {
        println!("warning       {w}");
    }
    if report.warnings.len() > SHOWN {
        println!(
            "warning       ... and {} more (--json lists them all)",
            report.warnings.len() - SHOWN
        );
    }
    Ok(())
}

/// A UUID with or without dashes, any case.
fn parse_aaguid(text: &str) -> anyhow::Result<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let bad = || {
        anyhow::anyhow!(
            "AAGUID {text:?}: expected a UUID such as 08987058-cadc-4b81-b6e1-30de50dcbe96"
        )
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn entry_text(doc: &Value) -> String {
    let st = &doc["metadataStatement"];
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut out = String::new();
    out += &format!(
        "aaguid              {}\n",
        doc["aaguid"].as_str().unwrap_or("-")
    );
    out += &format!(
        "description         {}\n",
        st["description"].as_str().unwrap_or("-")
    );
    out += &format!(
        "protocol            {}\n",
        st["protocolFamily"].as_str().unwrap_or("-")
    );
    out += &format!("attestation types   {}\n", list(&st["attestationTypes"]));
    out += &format!("key protection      {}\n", list(&st["keyProtection"]));
    out += &format!("matcher protection  {}\n", list(&st["matcherProtection"]));
    out += &format!(
        "attestation roots   {}\n",
        st["attestationRootCertificates"]
            .as_array()
            .map_or(0, Vec::len)
    );
    if let Some(reports) = doc["statusReports"].as_array() {
        for r in reports {
            out += &format!(
                "status              {} ({})\n",
                r["status"].as_str().unwrap_or("?"),
                r["effectiveDate"].as_str().unwrap_or("no date")
            );
        }
    }
    out
}
