//! The `signet` command: the security officer's tools, the support
//! engineer's offline verifier (and, in later releases, the service itself).
//! Every command prints readable text, or JSON with `--json` (`verify` always
//! prints its verdict as JSON); errors are one line on stderr with exit code
//! 1 (`serve`: 3 when the key device refuses the PIN), usage errors exit 2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

mod evidence_cmd;
mod mds_cmd;
mod policy_cmd;
mod store_cmd;
use signet::audit::{AuditEvent, AuditLog, CheckpointPolicy, checkpoint_keys};
use signet::keys::cert::{self, ExportFormat};
use signet::keys::{EcPublicKey, KeyInfo, KeyRing, Kid, Profile, Role};
use signet::store::SledStore;
use signet::webauthn::attestation::AttestationPolicy;
use signet::webauthn::authenticator_data::Flags;
use signet::webauthn::certpath::Cert;
use signet::webauthn::cose_key::CredentialPublicKey;
use signet::webauthn::response::{AuthenticationResponse, RegistrationResponse};
use signet::webauthn::{
    self, CoseAlgorithm, RelyingParty, UserVerification, assertion, b64url, b64url_decode,
    registration,
};

#[derive(Parser)]
#[command(
    name = "signet",
    version,
    about = "FIDO2 trust appliance: WebAuthn verification with keys in a PKCS#11 HSM or a TPM 2.0",
    long_about = "signet verifies passkey ceremonies for a bank and keeps its own keys in a \
PKCS#11 HSM slot or a TPM 2.0. This command holds the security officer's tools and \
the support engineer's offline verifier.\n\n\
PINs are never given on the command line: a profile names a PIN file (mode 0600) \
or an environment variable.",
    after_help = "Examples:\n  \
signet serve --config /etc/signet/signet.toml --check\n  \
signet serve --config /etc/signet/signet.toml\n  \
signet hsm list --profile hsm-profiles/softhsm.toml\n  \
signet audit verify --data-dir /var/lib/signet/data --profile /etc/signet/hsm/profile.toml\n  \
signet hsm rotate --help"
)]
struct Cli {
    /// Log filter for stderr (e.g. info, signet=debug); RUST_LOG also works.
    /// Default: warn for the officer commands, the config's log.level for
    /// serve; tss_esapi is muted, since signet reports its errors itself.
    #[arg(long, global = true, env = "SIGNET_LOG")]
    log: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: the mutual-TLS JSON API (see README, "API").
    ///
    /// Exit status: 0 stopped by SIGTERM or SIGINT; 1 an error (named on
    /// stderr); 3 the key device refused the PIN or reports it locked, which
    /// a supervisor must not restart (each start spends one of the token's
    /// few tries before it locks the PIN).
    #[command(after_help = "Examples:\n  \
signet serve --config /etc/signet/signet.toml --check\n  \
signet serve --config /etc/signet/signet.toml\n  \
signet serve --config var/dev/signet.toml --log signet=debug,info --log-json\n  \
signet serve --config var/dev/signet.toml --allow-root")]
    Serve(ServeArgs),
    /// Serve the FIDO Server Conformance Test API over HTTPS for the
    /// certification tool, forwarding to a signet over mutual TLS (test labs
    /// only; the appliance itself never listens without client authentication).
    #[command(after_help = "Examples:\n  \
signet conformance-proxy --upstream https://localhost:8443 --client-cert var/dev/pki/rp.pem \
--client-key var/dev/pki/rp.key --ca var/dev/pki/ca.pem\n  \
signet conformance-proxy --listen 0.0.0.0:8444 --upstream https://signet.bank.example:8443 \
--client-cert rp.pem --client-key rp.key --ca ca.pem --cert proxy.pem --key proxy.key")]
    ConformanceProxy(signet::conformance_proxy::ProxyArgs),
    /// Play the bank's app end to end against a running signet: enroll a
    /// device, bind a passkey to it with a registration token, log in with
    /// it (test builds only: cargo feature testkit).
    #[cfg(feature = "testkit")]
    #[command(
        long_about = "Play the bank's app (and core banking's relay) end to end against \
a running signet, over mutual TLS as the rp client: generate a device key, enroll the device \
(POST /v1/devices), report the person verified (POST /v1/devices/{id}/verification), open the \
sealed registration token and verify its signature against the pinned token-signing key, check \
the creation options against the token, create a passkey with the soft authenticator, seal the \
signed registration request to the pinned token-encryption key and send it (POST \
/v1/devices/{id}/registration), then log in with the new passkey. Each step prints one line as it \
completes; the last is `device-sim: device ID is bound (credential ID, user NAME)`. The first \
failure prints `device-sim: STEP: failed: REASON` on stderr and exits 1.\n\n\
DIR is what scripts/dev-up made (its --dir, default var/dev) and must contain:\n  \
pki/ca.pem                  the dev CA that signed signet's server certificate\n  \
pki/rp.pem, pki/rp.key      the rp client certificate and its key\n  \
keys/token-signing.pem      the pinned token-signing public key (SPKI PEM)\n  \
keys/token-encryption.pem   the pinned token-encryption public key (SPKI PEM)\n\
scripts/dev-up writes both with `signet hsm export --role ROLE --format pem`.",
        after_help = "Examples:\n  \
signet device-sim --server https://localhost:8443 --dev-dir var/dev\n  \
signet device-sim --server https://localhost:8443 --dev-dir var/dev --user alice@example.com --json"
    )]
    DeviceSim(signet::device_sim::DeviceSimArgs),
    /// A soft FIDO2 authenticator for walking the ceremonies with curl:
    /// signet's options on stdin, the request body to send on stdout (test
    /// builds only: cargo feature testkit).
    #[cfg(feature = "testkit")]
    #[command(
        subcommand,
        long_about = "A soft FIDO2 authenticator that plays the browser too, for walking the \
ceremonies with curl (README, \"Ten-minute tour\"). It reads one of signet's answers on stdin \
(registration or authentication options with their ceremonyId, a created transaction, a pairing \
claim: anything with a publicKey member, or bare options) and prints the JSON body to send next: \
{\"ceremonyId\", \"credential\"} when the input had a ceremonyId, else {\"credential\"}. The \
credential is the WebAuthn Level 3 toJSON() a browser would produce. `create` makes an ES256 \
credential and keeps it in a new state file (mode 0600: it holds the private key, which no real \
authenticator would allow); `get` signs with it, refusing options for another RP or an \
allowCredentials list without it, and saves the advanced counter before printing. Errors name \
the member at fault and exit 1.",
        after_help = "Examples:\n  \
signet authenticator create --state alice.json < registration-options.json > registration-verify.json\n  \
signet authenticator get --state alice.json < options.json > verify.json\n  \
signet authenticator create --state bob.json --origin https://localhost:8443 --attestation packed < options.json"
    )]
    Authenticator(signet::authenticator_cmd::AuthenticatorCommand),
    /// Provision and manage the backend keys in an HSM slot or a TPM.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
signet hsm init --profile hsm-profiles/softhsm.toml\n  \
signet hsm list --profile /etc/signet/hsm/profile.toml --json\n  \
signet hsm rotate --profile /etc/signet/hsm/profile.toml --role token-signing \
--data-dir /var/lib/signet/data"
    )]
    Hsm(HsmCommand),
    /// Verify a captured WebAuthn ceremony offline with the service's engine,
    /// and print the verdict as JSON.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
signet verify registration --rp-id bank.example --origin https://bank.example \
--challenge cmVnaXN0ZXItY2hhbGxlbmdl registration.json\n  \
signet verify assertion --rp-id bank.example --origin https://bank.example \
--challenge bG9naW4tY2hhbGxlbmdl --credential-key \"$(jq -r .credentialPublicKey registered.json)\" \
assertion.json"
    )]
    Verify(VerifyCommand),
    /// Check the audit log in a data directory.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
signet audit verify --data-dir /var/lib/signet/data --profile /etc/signet/hsm/profile.toml"
    )]
    Audit(AuditCommand),
    /// FIDO Metadata Service: install and inspect the metadata catalog in a
    /// data directory (with the service stopped).
    #[command(
        subcommand,
        after_help = "Examples:\n  \
signet mds fetch --config /etc/signet/signet.toml\n  \
signet mds import blob.jwt --data-dir /var/lib/signet/data\n  \
signet mds status --config /etc/signet/signet.toml",
        mut_subcommands(mds_examples)
    )]
    Mds(mds_cmd::MdsCommand),
    /// The store's PostgreSQL schema: apply the migrations a database lacks.
    #[command(after_help = "Examples:\n  \
signet store migrate --config /etc/signet/signet.toml\n  \
signet store migrate --config /etc/signet/signet.toml --json")]
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// The trust policy file: check it, explain the tier a model earns, and
    /// simulate a new policy against the stored credentials.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
signet policy check /var/lib/signet/policy.toml\n  \
signet policy explain --aaguid ee882879-721c-4913-9775-3dfcce97072a --attested\n  \
signet policy simulate new-policy.toml --config /etc/signet/signet.toml",
        mut_subcommands(policy_examples)
    )]
    Policy(policy_cmd::PolicyCommand),
    /// Verify approval evidence offline: verification-log records (and
    /// Airlock IAM's), with no service, store or key device.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
signet evidence verify --key approval-countersign.pem receipt.cose\n  \
signet evidence verify --rp-id bank.example /var/log/signet/verification.jsonl"
    )]
    Evidence(evidence_cmd::EvidenceCommand),
    /// Measure the engine's verification rate on this machine (one thread)
    /// against a bare P-256 signature verification.
    #[command(after_help = "Examples:\n  \
signet speed\n  \
signet speed --seconds 10 --json")]
    Speed {
        /// How long to measure, in seconds (at most 600).
        #[arg(long, default_value_t = 3.0, value_parser = parse_seconds)]
        seconds: f64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The configuration file (see signet.example.toml and docs/config.md).
    /// SIGNET_LISTEN, SIGNET_DATA_DIR, SIGNET_RP_ID and SIGNET_RP_ORIGINS
    /// (comma-separated) override it.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration (including that the TLS certificate, key,
    /// client CA and CRLs load, and that the key profile parses), print a
    /// summary, and exit: 0 valid, 1 not.
    #[arg(long)]
    check: bool,
    /// Serve even as root (SIGNET_ALLOW_ROOT=1 does the same). Without it,
    /// serve refuses to start with euid 0: run it as its own user, as
    /// packaging/systemd/signet.service and the container image do.
    #[arg(long, env = "SIGNET_ALLOW_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    allow_root: bool,
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

/// Where an officer action is audited.
#[derive(Args)]
struct OfficerAudit {
    /// Append this action to the audit log in the service's data directory,
    /// checkpointed at once with the audit-checkpoint key. Only while the service
    /// is stopped: sled locks the directory, so while the service holds it the
    /// officer uses the service's API instead, which audits the action itself.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum HsmCommand {
    /// Create the missing role keys (idempotent): token-signing, token-encryption,
    /// approval-countersign, audit-checkpoint.
    #[command(after_help = "Examples:\n  \
signet hsm init --profile hsm-profiles/softhsm.toml\n  \
signet hsm init --profile /etc/signet/hsm/profile.toml --data-dir /var/lib/signet/data")]
    Init {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        audit: OfficerAudit,
    },
    /// List signet's keys with the protection attributes read back from the device.
    #[command(after_help = "Examples:\n  \
signet hsm list --profile hsm-profiles/softhsm.toml\n  \
signet hsm list --profile hsm-profiles/swtpm.toml --json")]
    List(Common),
    /// Add a new version of a role's key; it becomes active and the previous one
    /// stays for verification until retired.
    #[command(after_help = "Examples:\n  \
signet hsm rotate --profile hsm-profiles/softhsm.toml --role token-signing\n  \
signet hsm rotate --profile /etc/signet/hsm/profile.toml --role audit-checkpoint \
--data-dir /var/lib/signet/data")]
    Rotate {
        #[command(flatten)]
        common: Common,
        /// token-signing, token-encryption, approval-countersign or audit-checkpoint.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        audit: OfficerAudit,
    },
    /// Disable a verify-only key on the device for good (the active key cannot be retired).
    #[command(after_help = "Examples:\n  \
signet hsm retire --profile hsm-profiles/softhsm.toml --kid v7AWqAZLIOp1T_xHW9Xinw\n  \
signet hsm retire --profile /etc/signet/hsm/profile.toml --kid v7AWqAZLIOp1T_xHW9Xinw \
--data-dir /var/lib/signet/data --json")]
    Retire {
        #[command(flatten)]
        common: Common,
        /// The key id as `hsm list` shows it.
        #[arg(long, value_parser = parse_kid)]
        kid: Kid,
        #[command(flatten)]
        audit: OfficerAudit,
    },
    /// Print a role's active public key for pinning.
    #[command(after_help = "Examples:\n  \
signet hsm export --profile hsm-profiles/softhsm.toml --role token-signing\n  \
signet hsm export --profile hsm-profiles/softhsm.toml --role token-encryption --format jwk\n  \
signet hsm export --profile /etc/signet/hsm/profile.toml --role audit-checkpoint > audit-checkpoint.pem")]
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
    #[command(after_help = "Examples:\n  \
signet hsm csr --profile /etc/signet/hsm/profile.toml --role approval-countersign \
--subject \"CN=signet approvals,O=Example Bank,C=CH\" > approvals.csr")]
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
    #[command(after_help = "Examples:\n  \
signet hsm self-cert --profile hsm-profiles/softhsm.toml --role token-signing \
--subject \"CN=signet tokens,O=Example Bank\" --days 365\n  \
signet hsm self-cert --profile /etc/signet/hsm/profile.toml --role token-encryption \
--subject \"CN=signet token encryption,O=Example Bank\" > /etc/signet/key-certs/token-encryption.pem")]
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

#[derive(Subcommand)]
enum VerifyCommand {
    /// Verify a registration (navigator.credentials.create()).
    #[command(
        long_about = "Verify a registration (navigator.credentials.create()) and print what \
the service would store: fmt, attestationType, aaguid, credentialId, credentialPublicKey, coseAlg, \
signCount, flags, trustPath, anchored.\n\n\
This command is for looking at real devices, so it is more lenient than the service: every \
attestation format and every credential algorithm the engine knows is accepted, and an x5c that \
carries its own root is accepted. The attestation statement is always verified in full. Without \
--root nothing is anchored (\"anchored\": false); with --root, a chain that does not lead to one of \
the roots is a rejection.",
        after_help = "Examples:\n  \
signet verify registration --rp-id bank.example --origin https://bank.example \
--challenge cmVnaXN0ZXItY2hhbGxlbmdl registration.json > registered.json\n  \
signet verify registration --rp-id bank.example --origin https://bank.example \
--origin android:apk-key-hash:Ow4Wl5KdcEqhVQ8Xfo2CqhbJvS9UpCpPDeWNdQ6a6Tg \
--challenge cmVnaXN0ZXItY2hhbGxlbmdl --root yubico-u2f-root.pem --at 2025-01-01T00:00:00Z \
registration.json"
    )]
    Registration {
        #[command(flatten)]
        ceremony: Ceremony,
        /// A trust anchor for the attestation chain: a PEM file with one or more
        /// certificates (repeat for several files).
        #[arg(long = "root", value_name = "PEM")]
        roots: Vec<PathBuf>,
        /// The time to judge certificates at, RFC 3339 (e.g. 2025-01-01T00:00:00Z);
        /// default now. Use the capture time for old samples. With --at, a
        /// SafetyNet timestampMs within 24 hours either side of it is accepted,
        /// since a capture's time is seldom known to the second; without it the
        /// service's 60-second window applies.
        #[arg(long, value_name = "RFC3339", value_parser = signet::rfc3339::parse)]
        at: Option<SystemTime>,
    },
    /// Verify an assertion (navigator.credentials.get()) with the credential's
    /// public key, and print the new counter and flags.
    #[command(after_help = "Examples:\n  \
signet verify assertion --rp-id bank.example --origin https://bank.example \
--challenge bG9naW4tY2hhbGxlbmdl --sign-count 41 --credential-key \
pQECAyYgASFYIGsX0fLhLEJH-Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWIlggT-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU \
assertion.json\n  \
signet verify assertion --rp-id bank.example --origin https://bank.example --require-uv \
--challenge bG9naW4tY2hhbGxlbmdl --credential-key \"$(jq -r .credentialPublicKey registered.json)\" - \
< assertion.json")]
    Assertion {
        #[command(flatten)]
        ceremony: Ceremony,
        /// The credential public key as registered: COSE_Key, base64url (the
        /// credentialPublicKey that `verify registration` prints). The credential
        /// id is taken from FILE.
        #[arg(long, value_name = "COSE_B64URL", value_parser = parse_credential_key)]
        credential_key: CredentialPublicKey,
        /// The stored signature counter; the assertion's must be greater unless
        /// both are 0.
        #[arg(long, value_name = "N", default_value_t = 0)]
        sign_count: u32,
        /// The credential was backup eligible (BE) at registration; BE may not
        /// change afterwards.
        #[arg(long)]
        backup_eligible: bool,
        /// The user handle the credential was registered for, base64url; the
        /// response must then carry it (a discoverable credential).
        #[arg(long, value_name = "B64URL", value_parser = parse_b64url)]
        user_handle: Option<Bytes>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the audit log's hash chain and its signed checkpoints.
    #[command(
        long_about = "Verify the audit log's hash chain and its signed checkpoints, reading the \
chain in pages, and print the report (text, or JSON with --json). Exit status: 0 intact, 1 broken \
(stderr names the first broken record), 2 usage.\n\n\
Checkpoints are verified with the audit-checkpoint public keys: every version on the device \
with --profile (retired ones included), and/or SPKI PEM files with --checkpoint-key, as \
`signet hsm export --role audit-checkpoint` prints them. A checkpoint by any other key is a \
finding, so with no keys at all any checkpoint fails.\n\n\
The store is opened read-write, because sled has no read-only mode; nothing is written. sled \
locks the directory: stop the service first, or verify a copy of the directory.",
        after_help = "Examples:\n  \
signet audit verify --data-dir /var/lib/signet/data --profile /etc/signet/hsm/profile.toml\n  \
signet audit verify --data-dir /srv/backup/signet-data --checkpoint-key audit-checkpoint.pem --json"
    )]
    Verify {
        /// The service's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// HSM profile whose audit-checkpoint keys verify the checkpoints.
        #[arg(long, value_name = "FILE")]
        profile: Option<PathBuf>,
        /// An audit-checkpoint public key, SPKI PEM (repeat for several files; a file
        /// may hold several keys).
        #[arg(long = "checkpoint-key", value_name = "PEM")]
        checkpoint_keys: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What both ceremonies are checked against.
#[derive(Args)]
struct Ceremony {
    /// The RP ID, e.g. bank.example.
    #[arg(long, value_name = "RP_ID")]
    rp_id: String,
    /// An accepted origin, compared exactly (repeat for several):
    /// https://bank.example, android:apk-key-hash:<base64url sha256>.
    #[arg(long = "origin", value_name = "ORIGIN", required = true)]
    origins: Vec<String>,
    /// The challenge that was issued, base64url (as in clientDataJSON.challenge).
    #[arg(long, value_name = "B64URL", value_parser = parse_b64url)]
    challenge: Bytes,
    /// Accept crossOrigin: true (a ceremony in an iframe), with any topOrigin.
    #[arg(long)]
    allow_cross_origin: bool,
    /// Require user verification (the UV flag).
    #[arg(long)]
    require_uv: bool,
    /// The browser's PublicKeyCredential.toJSON() output, or - for stdin.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// Examples for the `signet mds` subcommands, which are declared in
/// mds_cmd.rs: attached here so that every command's help has them.
fn mds_examples(c: clap::Command) -> clap::Command {
    let examples = match c.get_name() {
        "import" => {
            "Examples:\n  \
signet mds import blob.jwt --data-dir /var/lib/signet/data\n  \
signet mds import archived-blob.jwt --at 2025-06-01T00:00:00Z --crl root-r3.crl \
--crl gsextendvalsha2g3r3.crl --config /etc/signet/signet.toml"
        }
        "fetch" => {
            "Examples:\n  \
signet mds fetch --config /etc/signet/signet.toml\n  \
signet mds fetch --url https://mds3.fidoalliance.org/ --proxy http://proxy.example:3128 \
--data-dir /var/lib/signet/data --json"
        }
        "show" => {
            "Examples:\n  \
signet mds show ee882879-721c-4913-9775-3dfcce97072a --config /etc/signet/signet.toml\n  \
signet mds show ee882879721c491397753dfcce97072a --data-dir var/dev/data --json"
        }
        "status" => {
            "Examples:\n  \
signet mds status --config /etc/signet/signet.toml\n  \
signet mds status --data-dir var/dev/data --json"
        }
        _ => return c,
    };
    c.after_help(examples)
}

/// Examples for the `signet policy` subcommands declared in policy_cmd.rs
/// that have none of their own.
fn policy_examples(c: clap::Command) -> clap::Command {
    let examples = match c.get_name() {
        "check" => {
            "Examples:\n  \
signet policy check /var/lib/signet/policy.toml\n  \
signet policy check new-policy.toml --json"
        }
        "explain" => {
            "Examples:\n  \
signet policy explain --aaguid ee882879-721c-4913-9775-3dfcce97072a --attested\n  \
signet policy explain --aaguid ee882879-721c-4913-9775-3dfcce97072a --attested --be \
--policy /var/lib/signet/policy.toml --data-dir /var/lib/signet/data --json"
        }
        _ => return c,
    };
    c.after_help(examples)
}

/// Decoded base64url. A newtype, because clap reads a `Vec` field as a
/// repeated argument.
#[derive(Clone)]
struct Bytes(Vec<u8>);

fn parse_b64url(s: &str) -> Result<Bytes, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    b64url_decode("value", s, 64 * 1024)
        .map(Bytes)
        .map_err(|_| "not base64url".into())
}

fn parse_credential_key(s: &str) -> Result<CredentialPublicKey, String> {
    let bytes = parse_b64url(s)?;
    CredentialPublicKey::from_cose(&bytes.0, "credentialPublicKey").map_err(|e| e.to_string())
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 600.0 => Ok(v),
        _ => Err("expected a number of seconds greater than 0 and at most 600".into()),
    }
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
    if let Command::Serve(args) = &cli.command {
        return match serve(args, cli.log.as_deref(), cli.log_json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("signet: {e:#}");
                serve_exit_code(&e)
            }
        };
    }
    init_logging(cli.log.as_deref().unwrap_or("warn"), cli.log_json);
    if let Command::Evidence(command) = cli.command {
        return evidence_cmd::run(command);
    }
    #[cfg(feature = "testkit")]
    if let Command::DeviceSim(args) = cli.command {
        return signet::device_sim::run(args);
    }
    #[cfg(feature = "testkit")]
    if let Command::Authenticator(command) = cli.command {
        return signet::authenticator_cmd::run(command);
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signet: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Exit status of a failed `serve`: 3 when the key device refused the PIN
/// or reports it locked, else 1. A supervisor must not restart on 3
/// (packaging/systemd/signet.service: RestartPreventExitStatus=3): every
/// start spends one of the few wrong PINs a token allows before it locks.
fn serve_exit_code(e: &anyhow::Error) -> ExitCode {
    let refused = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<signet::keys::KeyError>(),
            Some(signet::keys::KeyError::WrongPin(_) | signet::keys::KeyError::PinLocked(_))
        )
    });
    ExitCode::from(if refused { 3 } else { 1 })
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
        .add_directive("tss_esapi=off".parse().expect("static directive"));
    // Colour only for a person at a terminal: escape codes in a log file
    // break grep and log shippers.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `signet serve [--check]`. The configuration is read before logging
/// starts (it holds the log settings) and the key profile's environment is
/// applied while the process still has one thread.
fn serve(args: &ServeArgs, log: Option<&str>, log_json: bool) -> anyhow::Result<()> {
    let config = signet::config::Config::load(&args.config, &signet::config::Overrides::from_env())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    init_logging(
        log.unwrap_or(&config.log.level),
        log_json || config.log.json,
    );
    let profile =
        Profile::load(&config.keys.profile).map_err(|e| anyhow::anyhow!("keys.profile: {e}"))?;
    if args.check {
        signet::api::tls::server_config(&config.tls)?;
        if let Some(mds) = &config.mds {
            signet::api::service::mds_trust(mds)?;
        }
        let policy = signet::api::service::load_policy(&config)?;
        let attestation_roots =
            signet::api::service::key_attestation_roots(&config.devices.key_attestation_roots)?;
        println!("{}: valid", args.config.display());
        println!(
            "  listen      https://{} (mutual TLS)",
            config.server.listen
        );
        println!(
            "  rp          {} ({})",
            config.rp.id,
            config.rp.origins.join(", ")
        );
        println!("  data dir    {}", config.store.data_dir.display());
        // The password file and the CA are read and checked too; the
        // database itself is not contacted (serve does that).
        if let Some(pg) = &config.store.postgres {
            pg.options(0).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        println!(
            "  store       {}{}",
            config.store.backend.as_str(),
            config
                .store
                .postgres
                .as_ref()
                .map_or(String::new(), |pg| format!(
                    " ({}, pool {})",
                    pg.url, pg.pool_size
                ))
        );
        println!("  key profile {}", config.keys.profile.display());
        println!(
            "  policy      {} (sha256 {})",
            policy.version, policy.sha256
        );
        println!(
            "  devices     token ttl {} s, enrollment window {} s, {} key attestation roots{}",
            config.devices.token_ttl.as_secs(),
            config.devices.enrollment_ttl.as_secs(),
            attestation_roots.len(),
            if config.devices.require_key_attestation {
                " (attestation required)"
            } else {
                ""
            }
        );
        println!(
            "  transactions ttl {} s, failed after {} refused answers, verification log {}",
            config.transactions.ttl.as_secs(),
            config.transactions.attempts_max,
            config
                .transactions
                .verification_log
                .as_ref()
                .map_or("off".to_string(), |p| p.display().to_string())
        );
        println!(
            "  pairing     ttl {} s, approved waits {} s, locked after {} failures, QR link {}",
            config.pairing.ttl.as_secs(),
            config.pairing.approved_ttl.as_secs(),
            config.pairing.attempts_max,
            config.pairing.link
        );
        for c in &config.clients {
            println!("  client      {} -> {}", c.name, c.role);
        }
        return Ok(());
    }
    // Before the PIN is read or a key device opened: not root unless told
    // so, and no core file or debugger may carry the secrets off.
    signet::process::harden(args.allow_root)?;
    // SAFETY: single-threaded: the logger spawns no threads, and nothing
    // else has started yet.
    unsafe { profile.apply_env() };
    signet::api::service::run(config, &profile)
}

/// Loads the profile and opens its device. Runs before any thread exists, so
/// applying the profile's environment is sound here.
fn open(common: &Common) -> anyhow::Result<KeyRing> {
    open_profile(&common.profile)
}

/// [`open`] for a bare profile path. Must run before the store is opened:
/// sled starts threads.
fn open_profile(path: &Path) -> anyhow::Result<KeyRing> {
    let profile = Profile::load(path)?;
    // SAFETY: single-threaded at this point: the logger does not spawn
    // threads and no backend has been opened yet.
    unsafe { profile.apply_env() };
    Ok(KeyRing::open(&profile)?)
}

fn run(command: Command) -> anyhow::Result<()> {
    let hsm = match command {
        Command::Hsm(hsm) => hsm,
        Command::Serve(_) => anyhow::bail!("serve is dispatched before run"),
        Command::ConformanceProxy(args) => return signet::conformance_proxy::run(args),
        #[cfg(feature = "testkit")]
        Command::DeviceSim(_) => anyhow::bail!("device-sim is dispatched before run"),
        #[cfg(feature = "testkit")]
        Command::Authenticator(_) => anyhow::bail!("authenticator is dispatched before run"),
        Command::Evidence(_) => anyhow::bail!("evidence is dispatched before run"),
        Command::Verify(verify) => return run_verify(verify),
        Command::Audit(audit) => return run_audit(audit),
        Command::Policy(policy) => return policy_cmd::run(policy),
        Command::Store(store) => return store_cmd::run(store),
        Command::Mds(mds) => {
            return mds_cmd::run(mds, &officer_actor(std::env::var("USER").ok().as_deref()));
        }
        Command::Speed { seconds, json } => {
            let report = signet::speed::run(seconds)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.table());
            }
            return Ok(());
        }
    };
    match hsm {
        HsmCommand::Init { common, audit } => {
            let ring = open(&common)?;
            let log = officer_log(&audit)?;
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
            if let Some(log) = &log {
                for k in &report.created {
                    log.record(&ring, "key.created", k, common.json)?;
                }
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
        HsmCommand::Rotate {
            common,
            role,
            audit,
        } => {
            let ring = open(&common)?;
            let log = officer_log(&audit)?;
            let key = ring.rotate(role)?;
            print_one(&common, "rotated", &key)?;
            if let Some(log) = &log {
                log.record(&ring, "key.rotated", &key, common.json)?;
            }
        }
        HsmCommand::Retire { common, kid, audit } => {
            let ring = open(&common)?;
            let log = officer_log(&audit)?;
            let key = ring.retire(&kid)?;
            print_one(&common, "retired", &key)?;
            if let Some(log) = &log {
                log.record(&ring, "key.retired", &key, common.json)?;
            }
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

/// The audit log an officer action is appended to.
struct OfficerLog {
    log: AuditLog,
    dir: PathBuf,
    actor: String,
}

/// Opens the audit log of `--data-dir`, if given, before the action runs, so
/// that a directory the service holds refuses the action rather than leaving
/// it unaudited.
fn officer_log(audit: &OfficerAudit) -> anyhow::Result<Option<OfficerLog>> {
    let Some(dir) = &audit.data_dir else {
        return Ok(None);
    };
    let store = SledStore::open(dir).map_err(|e| {
        anyhow::anyhow!(
            "--data-dir {}: {e} (if the service is running, use its API instead)",
            dir.display()
        )
    })?;
    // The CLI exits right after the action, so no timer would ever cover a
    // record left after the last checkpoint: each officer action is
    // checkpointed at once. They are rare, so the signatures cost nothing.
    let policy = CheckpointPolicy {
        every_records: 1,
        every_ms: 0,
    };
    Ok(Some(OfficerLog {
        log: AuditLog::new(Arc::new(store), policy),
        dir: dir.clone(),
        actor: officer_actor(std::env::var("USER").ok().as_deref()),
    }))
}

/// `cli:officer`, plus the login name when there is one. USER is whatever
/// the officer's environment says, a hint for the reader of the log and not
/// an identity: what authorizes the action is the token's PIN.
fn officer_actor(user: Option<&str>) -> String {
    match user {
        Some(u) if !u.is_empty() && u.len() <= 256 && !u.chars().any(char::is_control) => {
            format!("cli:officer:{u}")
        }
        _ => "cli:officer".into(),
    }
}

impl OfficerLog {
    fn record(&self, ring: &KeyRing, event: &str, key: &KeyInfo, json: bool) -> anyhow::Result<()> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let event = AuditEvent::new(now_ms, self.actor.as_str(), event, key.kid.to_string())
            .with_detail(serde_json::json!({
                "role": key.role.as_str(),
                "version": key.version,
                "label": key.label,
            }));
        let entry = self.log.append(&event, Some(ring)).map_err(|e| {
            anyhow::anyhow!(
                "{} {} was done on the device but not audited in {}: {e}",
                event.event,
                key.kid,
                self.dir.display()
            )
        })?;
        // JSON output stays the single document the command always printed.
        if !json {
            println!("audited as record {} in {}", entry.seq, self.dir.display());
        }
        Ok(())
    }
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

fn run_audit(command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify {
        data_dir,
        profile,
        checkpoint_keys: pem_files,
        json,
    } = command;
    let mut keys: HashMap<String, EcPublicKey> = HashMap::new();
    if let Some(profile) = &profile {
        let ring = open_profile(profile)?;
        keys.extend(checkpoint_keys(&ring.list()?));
    }
    for path in &pem_files {
        for key in read_public_keys(path)? {
            keys.insert(Kid::of(&key).to_string(), key);
        }
    }
    // SledStore::open would create an empty store where none is, and a
    // mistyped path would then verify as an intact empty log.
    if !data_dir.join("db").is_file() {
        anyhow::bail!("--data-dir {}: no signet store there", data_dir.display());
    }
    let store = SledStore::open(&data_dir).map_err(|e| {
        anyhow::anyhow!(
            "--data-dir {}: {e} (if the service is running, stop it or verify a copy)",
            data_dir.display()
        )
    })?;
    let report = signet::audit::verify_store(&store, &keys)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        // Kids and body errors come from the store, which an attacker may
        // have written: no control characters reach the terminal.
        let text: String = report
            .to_string()
            .lines()
            .map(signet::files::one_line)
            .collect::<Vec<_>>()
            .join("\n");
        println!("{text}");
    }
    match &report.first_broken {
        None => Ok(()),
        Some(first) => Err(anyhow::anyhow!(
            "audit log broken: first broken record seq {}: {}",
            first.seq,
            signet::files::one_line(&first.reason.to_string())
        )),
    }
}

/// Every P-256 SPKI public key in a PEM file, in order.
fn read_public_keys(path: &Path) -> anyhow::Result<Vec<EcPublicKey>> {
    use p256::pkcs8::DecodePublicKey as _;
    pem_blocks(path, "--checkpoint-key", "PUBLIC KEY")?
        .into_iter()
        .map(|(field, der)| {
            p256::PublicKey::from_public_key_der(&der)
                .map(|key| EcPublicKey::from_p256(&key))
                .map_err(|e| anyhow::anyhow!("{field}: not a P-256 public key: {e}"))
        })
        .collect()
}

/// The DER of every PEM block in `path`, each with its name for errors
/// (`--root FILE[1]`); every block must carry `label`, and there must be at
/// least one. The file is read with the same bound as any other input.
fn pem_blocks(path: &Path, flag: &str, label: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let name = format!("{flag} {}", path.display());
    let text = read_input(path).map_err(|e| anyhow::anyhow!("{flag} {e}"))?;
    let text =
        String::from_utf8(text).map_err(|_| anyhow::anyhow!("{name}: not a PEM text file"))?;
    let blocks =
        signet::mds::pem_blocks(&text, label).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(blocks
        .into_iter()
        .enumerate()
        .map(|(i, der)| (format!("{name}[{i}]"), der))
        .collect())
}

/// Browsers' JSON is a few kilobytes; the engine refuses anything over its
/// own limit anyway, this only keeps a wrong file or pipe from being read
/// into memory whole.
const INPUT_LIMIT: u64 = 1024 * 1024;

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    read_bounded(path, INPUT_LIMIT, None)
}

/// Reads a file (or stdin for `-`) of at most `limit` bytes; errors name
/// the flag it came from, when there is one.
pub(crate) fn read_bounded(path: &Path, limit: u64, flag: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let shown = match flag {
        Some(f) => format!("{f} {}", path.display()),
        None => path.display().to_string(),
    };
    if path == Path::new("-") {
        return signet::files::read_limited(std::io::stdin().lock(), limit, "stdin")
            .map_err(|e| anyhow::anyhow!(e));
    }
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    signet::files::read_limited(file, limit, &shown).map_err(|e| anyhow::anyhow!(e))
}

/// Every certificate in a PEM file, in order, each with its exact DER.
fn read_roots(path: &Path) -> anyhow::Result<Vec<Cert>> {
    pem_blocks(path, "--root", "CERTIFICATE")?
        .into_iter()
        .map(|(field, der)| Cert::parse(&der, field).map_err(engine_error))
        .collect()
}

/// The engine's error as one line: it already starts with the JSON path of
/// the field; names from certificates and clients could carry line breaks.
fn engine_error(e: webauthn::Error) -> anyhow::Error {
    anyhow::anyhow!(signet::files::one_line(&e.to_string()))
}

fn relying_party(c: &Ceremony) -> RelyingParty {
    let mut rp = RelyingParty::new(c.rp_id.clone(), c.origins.clone());
    rp.allow_cross_origin = c.allow_cross_origin;
    // The algorithms a deployment accepts are its configuration; here the
    // question is only whether the ceremony verifies.
    rp.algorithms = CoseAlgorithm::ALL.to_vec();
    rp
}

fn user_verification(c: &Ceremony) -> UserVerification {
    if c.require_uv {
        UserVerification::Required
    } else {
        UserVerification::Preferred
    }
}

fn flags_json(f: &Flags) -> serde_json::Value {
    serde_json::json!({
        "UP": f.up, "UV": f.uv, "BE": f.be, "BS": f.bs, "AT": f.at, "ED": f.ed,
    })
}

fn run_verify(command: VerifyCommand) -> anyhow::Result<()> {
    let verdict = match command {
        VerifyCommand::Registration {
            ceremony,
            roots,
            at,
        } => {
            let mut anchors = Vec::new();
            for path in &roots {
                anchors.extend(read_roots(path)?);
            }
            let json = read_input(&ceremony.file)?;
            let response = RegistrationResponse::from_json(&json).map_err(engine_error)?;
            let mut policy = AttestationPolicy {
                formats: None,
                allow_root_in_x5c: true,
                ..AttestationPolicy::default()
            };
            if at.is_some() {
                policy.safetynet_max_age = Duration::from_secs(24 * 3600);
                policy.safetynet_max_skew = Duration::from_secs(24 * 3600);
            }
            let now = at.unwrap_or_else(SystemTime::now);
            let rp = relying_party(&ceremony);
            let exp = registration::Expectation {
                rp: &rp,
                challenge: &ceremony.challenge.0,
                user_verification: user_verification(&ceremony),
                require_user_presence: true,
                policy: &policy,
                trust_anchors: &anchors,
                now,
            };
            let r = registration::verify(&response, &exp).map_err(engine_error)?;
            serde_json::json!({
                "fmt": r.fmt,
                "attestationType": r.attestation_type.as_str(),
                "aaguid": webauthn::uuid_text(&r.aaguid),
                "credentialId": b64url(&r.credential_id),
                "credentialPublicKey": b64url(&r.public_key.cose),
                "coseAlg": r.public_key.alg.id(),
                "signCount": r.sign_count,
                "flags": flags_json(&r.flags),
                "trustPath": r.trust_path.iter().map(Cert::subject).collect::<Vec<_>>(),
                "anchored": r.anchored,
                "transports": r.transports,
                "verifiedAt": signet::rfc3339::format(now),
            })
        }
        VerifyCommand::Assertion {
            ceremony,
            credential_key,
            sign_count,
            backup_eligible,
            user_handle,
        } => {
            let json = read_input(&ceremony.file)?;
            let response = AuthenticationResponse::from_json(&json).map_err(engine_error)?;
            // Without --user-handle there is nothing to compare the response's
            // own user handle with, so it stands for itself.
            let handle = match (&user_handle, &response.user_handle) {
                (Some(h), _) => h.0.clone(),
                (None, Some(h)) => h.clone(),
                (None, None) => Vec::new(),
            };
            let stored = assertion::StoredCredential {
                id: &response.id,
                public_key: &credential_key,
                sign_count,
                backup_eligible,
                user_handle: &handle,
            };
            let rp = relying_party(&ceremony);
            let exp = assertion::Expectation {
                rp: &rp,
                challenge: &ceremony.challenge.0,
                user_verification: user_verification(&ceremony),
                require_user_presence: true,
                discoverable: user_handle.is_some(),
                allow_payment: false,
            };
            let a = assertion::verify(&response, &stored, &exp).map_err(engine_error)?;
            serde_json::json!({
                "credentialId": b64url(&a.credential_id),
                "signCount": a.sign_count,
                "flags": flags_json(&a.flags),
                "userVerified": a.user_verified,
                "backupState": a.backup_state,
                "userHandle": response.user_handle.as_deref().map(b64url),
            })
        }
    };
    println!("{}", serde_json::to_string_pretty(&verdict)?);
    Ok(())
}
