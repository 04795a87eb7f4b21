//! The `signet` command: the security officer's tools (and, in later
//! releases, the service itself). Every command prints readable text, or JSON
//! with `--json`; errors are one line on stderr with exit code 1, usage errors
//! exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use signet::keys::cert::{self, ExportFormat};
use signet::keys::{KeyInfo, KeyRing, Kid, Profile, Role};

#[derive(Parser)]
#[command(
    name = "signet",
    version,
    about = "FIDO2 trust appliance: WebAuthn verification with keys in a PKCS#11 HSM or a TPM 2.0",
    long_about = "signet verifies passkey ceremonies for a bank and keeps its own keys in a \
PKCS#11 HSM slot or a TPM 2.0. This command holds the security officer's tools.\n\n\
PINs are never given on the command line: a profile names a PIN file (mode 0600) \
or an environment variable."
)]
struct Cli {
    /// Log filter for stderr (e.g. info, signet=debug); RUST_LOG also works. The
    /// default mutes tss_esapi, whose connection errors signet reports itself.
    #[arg(
        long,
        global = true,
        default_value = "warn,tss_esapi=off",
        env = "SIGNET_LOG"
    )]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Provision and manage the backend keys in an HSM slot or a TPM.
    #[command(subcommand)]
    Hsm(HsmCommand),
}

#[derive(Args)]
struct Common {
    /// HSM profile (TOML): hsm-profiles/softhsm.toml, hsm-profiles/swtpm.toml, or one
    /// written by scripts/softhsm-init or scripts/swtpm-up.
    #[arg(long, value_name = "FILE")]
    profile: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum HsmCommand {
    /// Create the missing role keys (idempotent): token-signing, token-encryption,
    /// approval-countersign, audit-checkpoint.
    Init(Common),
    /// List signet's keys with the protection attributes read back from the device.
    List(Common),
    /// Add a new version of a role's key; it becomes active and the previous one
    /// stays for verification until retired.
    Rotate {
        #[command(flatten)]
        common: Common,
        /// token-signing, token-encryption, approval-countersign or audit-checkpoint.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Disable a verify-only key on the device for good (the active key cannot be retired).
    Retire {
        #[command(flatten)]
        common: Common,
        /// The key id as `hsm list` shows it.
        #[arg(long, value_parser = parse_kid)]
        kid: Kid,
    },
    /// Print a role's active public key for pinning.
    Export {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// pem (SPKI), jwk, or cose (COSE_Key, base64url).
        #[arg(long, value_parser = parse_format, default_value = "pem")]
        format: ExportFormat,
    },
    /// Print a PKCS#10 request for a role's active key, signed by that key.
    Csr {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Subject DN, RFC 4514, e.g. "CN=signet token-signing,O=Example Bank,C=CH".
        #[arg(long)]
        subject: String,
    },
    /// Print a certificate for a role's active key: self-signed for signing roles;
    /// token-encryption (which cannot sign) is certified by the token-signing key.
    SelfCert {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Subject DN, RFC 4514.
        #[arg(long)]
        subject: String,
        /// Validity in days (1 to 3650).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: signet::keys::KeyError| e.to_string())
}

fn parse_kid(s: &str) -> Result<Kid, String> {
    s.parse().map_err(|e: signet::keys::KeyError| e.to_string())
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    s.parse().map_err(|e: signet::keys::KeyError| e.to_string())
}

fn main() -> ExitCode {
    // The TSS library logs to stderr by itself (connection refused and the
    // like); signet reports those failures in its own words, once.
    if std::env::var_os("TSS2_LOG").is_none() {
        // SAFETY: first statement of main, no other thread exists yet.
        unsafe { std::env::set_var("TSS2_LOG", "all+NONE") };
    }
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signet: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads the profile and opens its device. Runs before any thread exists, so
/// applying the profile's environment is sound here.
fn open(common: &Common) -> anyhow::Result<KeyRing> {
    let profile = Profile::load(&common.profile)?;
    // SAFETY: single-threaded at this point: the logger does not spawn
    // threads and no backend has been opened yet.
    unsafe { profile.apply_env() };
    Ok(KeyRing::open(&profile)?)
}

fn run(command: Command) -> anyhow::Result<()> {
    let Command::Hsm(hsm) = command;
    match hsm {
        HsmCommand::Init(common) => {
            let ring = open(&common)?;
            let report = ring.init()?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for k in &report.created {
                    println!("created  {:<21} {} {}", k.role, k.kid, k.label);
                }
                for k in &report.existing {
                    println!("existing {:<21} {} {}", k.role, k.kid, k.label);
                }
                println!(
                    "{} created, {} already present on {}",
                    report.created.len(),
                    report.existing.len(),
                    ring.backend().describe()
                );
            }
        }
        HsmCommand::List(common) => {
            let ring = open(&common)?;
            let keys = ring.list()?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print_table(&keys);
            }
        }
        HsmCommand::Rotate { common, role } => {
            let ring = open(&common)?;
            let key = ring.rotate(role)?;
            print_one(&common, "rotated", &key)?;
        }
        HsmCommand::Retire { common, kid } => {
            let ring = open(&common)?;
            let key = ring.retire(&kid)?;
            print_one(&common, "retired", &key)?;
        }
        HsmCommand::Export {
            common,
            role,
            format,
        } => {
            let ring = open(&common)?;
            let key = ring.active(role)?;
            let text = cert::export_public(&key, format);
            if common.json {
                let out = serde_json::json!({
                    "role": role, "kid": key.kid, "format": format.as_str(), "key": text,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{}", text.trim_end());
            }
        }
        HsmCommand::Csr {
            common,
            role,
            subject,
        } => {
            let ring = open(&common)?;
            let pem = cert::csr_pem(&ring, role, &subject)?;
            print_pem(&common, role, "csr", &pem)?;
        }
        HsmCommand::SelfCert {
            common,
            role,
            subject,
            days,
        } => {
            let ring = open(&common)?;
            let pem =
                cert::self_cert_pem(&ring, role, &subject, days, std::time::SystemTime::now())?;
            print_pem(&common, role, "certificate", &pem)?;
        }
    }
    Ok(())
}

fn print_one(common: &Common, what: &str, key: &KeyInfo) -> anyhow::Result<()> {
    if common.json {
        println!("{}", serde_json::to_string_pretty(key)?);
    } else {
        println!(
            "{what} {} {} {} ({})",
            key.role, key.kid, key.label, key.status
        );
    }
    Ok(())
}

fn print_pem(common: &Common, role: Role, kind: &str, pem: &str) -> anyhow::Result<()> {
    if common.json {
        let out = serde_json::json!({ "role": role, kind: pem });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{pem}");
    }
    Ok(())
}

fn print_table(keys: &[KeyInfo]) {
    let yn = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    };
    println!(
        "{:<21} {:<22} {:<34} {:<8} {:>3} {:<11} {:<9} {:<11} NEVER_EXTRACTABLE",
        "ROLE", "KID", "LABEL", "ALG", "VER", "STATUS", "SENSITIVE", "EXTRACTABLE"
    );
    for k in keys {
        println!(
            "{:<21} {:<22} {:<34} {:<8} {:>3} {:<11} {:<9} {:<11} {}",
            k.role,
            k.kid.to_string(),
            k.label,
            k.algorithm,
            k.version,
            k.status,
            yn(k.attributes.sensitive),
            yn(k.attributes.extractable),
            yn(k.attributes.never_extractable)
        );
    }
    if keys.is_empty() {
        println!("(no signet keys on this device; run `signet hsm init`)");
    }
}
