//! `signet mds`: fetch, install and inspect the FIDO metadata catalog in a
//! data directory (the service must be stopped: sled locks the directory).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use signet::audit::{AuditLog, CheckpointPolicy};
use signet::config::{Config, MdsSettings};
use signet::flows::metadata::{self, InstallReport, RefreshOutcome};
use signet::mds::crl::Crl;
use signet::mds::fetch::{self, FetchOptions};
use signet::mds::{FIDO_MDS_ROOT, parse_roots};
use signet::store::{SledStore, Store};

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
    /// Download the BLOB over HTTPS and install it as import does
    /// (conditionally: "not modified" when the server answers 304 or serves
    /// the installed serial again). With --config, the URL, proxy, root and
    /// CRLs default to its [mds] table.
    Fetch {
        /// The BLOB's URL (https); required unless --config has an [mds] table.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// An HTTP(S) proxy, http://host:port (default: mds.proxy, else none;
        /// HTTPS_PROXY is not read).
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
        /// Trust root(s) for the BLOB, PEM or DER (default: mds.root, else the
        /// built-in FIDO MDS root).
        #[arg(long, value_name = "PEM")]
        root: Option<PathBuf>,
        /// A CRL for the signer's chain; repeat for each issuer (default:
        /// mds.crls).
        #[arg(long = "crl", value_name = "FILE")]
        crls: Vec<PathBuf>,
        /// Also trust this CA (PEM or DER) for the HTTPS server, beside the
        /// system's roots: for a private MDS mirror.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
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
    pub(crate) fn dir(&self) -> anyhow::Result<PathBuf> {
        match (&self.data_dir, self.config()?) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(config)) => Ok(config.store.data_dir),
            (None, None) => anyhow::bail!("--data-dir or --config is required"),
        }
    }

    /// The configuration, when --config is given.
    pub(crate) fn config(&self) -> anyhow::Result<Option<Config>> {
        self.config
            .as_ref()
            .map(|c| {
                Config::load(c, &signet::config::Overrides::from_env())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))
            })
            .transpose()
    }

    /// Opens the store; `create` only for commands that install.
    pub(crate) fn open(&self, create: bool) -> anyhow::Result<(PathBuf, SledStore)> {
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
                None => parse_roots(FIDO_MDS_ROOT, "built-in MDS root")?,
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
            audit_install(store, &report, &source, actor, now)?;
            print_install(&report, json)
        }
        MdsCommand::Fetch {
            url,
            proxy,
            root,
            crls,
            ca,
            store,
            json,
        } => {
            let config = store.config()?;
            let from_config = config.as_ref().and_then(|c| c.mds.clone());
            // Errors name the flag, or the config key, that gave the file.
            let root_key = if root.is_some() { "--root" } else { "mds.root" };
            let crl_flags = !crls.is_empty();
            let settings = fetch_settings(url, proxy, root, crls, from_config.as_ref())?;
            let crl_keys: Vec<String> = (0..settings.crls.len())
                .map(|i| {
                    if crl_flags {
                        "--crl".to_string()
                    } else {
                        format!("mds.crls[{i}]")
                    }
                })
                .collect();
            let roots = metadata::load_roots(settings.root.as_deref(), root_key)?;
            let crls = settings
                .crls
                .iter()
                .zip(&crl_keys)
                .map(|(p, key)| metadata::load_crl(p, key))
                .collect::<Result<Vec<_>, _>>()?;
            let extra_roots = match &ca {
                Some(p) => fetch::parse_ca(
                    &crate::read_bounded(p, PKI_FILE_MAX, Some("--ca"))?,
                    &format!("--ca {}", p.display()),
                )
                .map_err(|e| anyhow::anyhow!(e))?,
                None => Vec::new(),
            };
            let options = FetchOptions {
                extra_roots,
                progress: std::io::stderr().is_terminal() && !json,
                ..FetchOptions::default()
            };
            let (dir, store) = store.open(true)?;
            let now = SystemTime::now();
            match metadata::refresh(&store, &dir, &settings, &roots, &crls, &options, now)? {
                RefreshOutcome::Installed(report) => {
                    audit_install(store, &report, &settings.url, actor, now)?;
                    if json {
                        let mut doc = serde_json::to_value(&report)?;
                        doc["outcome"] = json!("installed");
                        println!("{}", serde_json::to_string_pretty(&doc)?);
                        Ok(())
                    } else {
                        print_install(&report, false)
                    }
                }
                RefreshOutcome::NotModified { no } => {
                    if json {
                        let doc =
                            json!({ "outcome": "not_modified", "no": no, "url": settings.url });
                        println!("{}", serde_json::to_string_pretty(&doc)?);
                    } else {
                        let held = no.map_or("none".to_string(), |n| format!("no {n}"));
                        println!(
                            "not modified: the installed BLOB ({held}) is current at {}",
                            settings.url
                        );
                    }
                    Ok(())
                }
            }
        }
        MdsCommand::Show {
            aaguid,
            store,
            json,
        } => {
            let bytes = signet::webauthn::parse_uuid(&aaguid).ok_or_else(|| {
                anyhow::anyhow!(
                    "AAGUID {aaguid:?}: expected a UUID such as 08987058-cadc-4b81-b6e1-30de50dcbe96"
                )
            })?;
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

/// An officer action: audited. The checkpoint follows at the service's
/// next timer tick (its key is the service's).
fn audit_install(
    store: SledStore,
    report: &InstallReport,
    source: &str,
    actor: &str,
    now: SystemTime,
) -> anyhow::Result<()> {
    let store = std::sync::Arc::new(store);
    let log = AuditLog::new(store.clone(), CheckpointPolicy::default());
    log.append(&metadata::installed_event(report, source, actor, now), None)?;
    // Credentials of models this catalog newly refuses are flagged now,
    // not at some later manual step.
    let flagged = metadata::flag_newly_refused(
        store.as_ref(),
        &log,
        None,
        &report.newly_refused,
        actor,
        now,
    )?;
    for r in &report.newly_refused {
        eprintln!(
            "status        {} now {}{}",
            r.aaguid,
            r.status,
            r.model
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
    if flagged > 0 {
        eprintln!("flagged       {flagged} credential(s) of newly refused models");
    }
    Ok(())
}

/// The fetch's settings: the flags, else the config's [mds] table.
fn fetch_settings(
    url: Option<String>,
    proxy: Option<String>,
    root: Option<PathBuf>,
    crls: Vec<PathBuf>,
    config: Option<&MdsSettings>,
) -> anyhow::Result<MdsSettings> {
    let url = match (url, config) {
        (Some(u), _) => u,
        (None, Some(m)) => m.url.clone(),
        (None, None) => {
            anyhow::bail!("--url is required (or --config with an [mds] table)")
        }
    };
    let parsed =
        reqwest::Url::parse(&url).map_err(|e| anyhow::anyhow!("--url {url:?}: not a URL: {e}"))?;
    anyhow::ensure!(parsed.scheme() == "https", "--url {url}: must be https");
    if let Some(p) = &proxy {
        let parsed = reqwest::Url::parse(p)
            .map_err(|e| anyhow::anyhow!("--proxy {:?}: not a URL: {e}", fetch::redact_proxy(p)))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "--proxy {}: must be an http:// or https:// proxy URL",
            fetch::redact_proxy(p)
        );
    }
    let root = root.or_else(|| config.and_then(|m| m.root.clone()));
    let crls = if crls.is_empty() {
        config.map(|m| m.crls.clone()).unwrap_or_default()
    } else {
        crls
    };
    Ok(MdsSettings {
        url,
        refresh_interval: config.map_or(Duration::from_secs(86_400), |m| m.refresh_interval),
        proxy: proxy.or_else(|| config.and_then(|m| m.proxy.clone())),
        root,
        crls,
    })
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
