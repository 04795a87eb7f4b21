//! `signet.toml`: everything `signet serve` needs, validated before anything
//! starts.
//!
//! Every setting is documented in `docs/config.md` and in the commented
//! example `signet.example.toml`. Relative paths are relative to the
//! directory of the configuration file, so a config and its PKI can move
//! together. Four environment variables override the file, for tests and
//! containers: `SIGNET_LISTEN` (`server.listen`), `SIGNET_DATA_DIR`
//! (`store.data_dir`), `SIGNET_RP_ID` (`rp.id`) and `SIGNET_RP_ORIGINS`
//! (`rp.origins`, comma-separated).
//!
//! Errors name the key (`tls.client_ca: cannot read ...`), so an operator
//! can fix the file without reading code. `signet serve --config F --check`
//! runs exactly this validation, including that the certificate, key, CA and
//! CRL files parse, and exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::identity::{ApiRole, ClientRule};
use crate::webauthn::CoseAlgorithm;
use crate::webauthn::options::{TIMEOUT_MAX_MS, TIMEOUT_MIN_MS};

/// Largest configuration file read (it is small; anything bigger is a mistake).
pub const CONFIG_MAX: u64 = 1024 * 1024;

/// A configuration error, naming the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: PathBuf,
    pub server: ServerSettings,
    pub tls: TlsSettings,
    pub clients: Vec<ClientRule>,
    pub rp: RpSettings,
    pub store: StoreSettings,
    pub keys: KeySettings,
    pub audit: AuditSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    /// FIDO Metadata Service refresh; `None` without an `[mds]` table.
    pub mds: Option<MdsSettings>,
    /// The trust policy file; `None` uses the built-in default policy.
    pub policy: Option<PathBuf>,
    /// How often the policy file is checked for changes.
    pub policy_reload_interval: Duration,
    /// Device binding: token and enrollment lifetimes, key attestation.
    pub devices: DeviceSettings,
    /// Transaction approval: lifetime, verification log.
    pub transactions: TransactionSettings,
    /// Cross-device (QR) login.
    pub pairing: PairingSettings,
}

#[derive(Clone, Debug)]
pub struct PairingSettings {
    /// How long a pairing waits to be claimed and approved.
    pub ttl: Duration,
    /// How long an approved pairing waits for the desktop to take it.
    pub approved_ttl: Duration,
    /// Wrong codes (and, separately, refused answers) after which a
    /// pairing locks.
    pub attempts_max: u32,
    /// The page the QR code opens on the phone; the payload is
    /// `{link}#pairing={id}&code={code}`.
    pub link: String,
}

#[derive(Clone, Debug)]
pub struct TransactionSettings {
    /// How long a transaction waits for its approval.
    pub ttl: Duration,
    /// Refused answers after which a transaction closes as failed.
    pub attempts_max: u32,
    /// Where each approval is also written as one JSON line (S, T, CAD,
    /// CCD, N, P and signet's members); `None`: no verification log.
    pub verification_log: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct DeviceSettings {
    /// How long a registration token may be redeemed after it is issued.
    pub token_ttl: Duration,
    /// How long after enrollment a device may still become bound.
    pub enrollment_ttl: Duration,
    /// Trust anchors for Android Key Attestation of device keys (PEM
    /// files); empty: the Google hardware attestation roots in certs/android.
    pub key_attestation_roots: Vec<PathBuf>,
    /// Refuse enrollments without a verified key attestation.
    pub require_key_attestation: bool,
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub body_limit: usize,
}

#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub crls: Vec<PathBuf>,
    /// Also offer TLS 1.2 (ECDHE + AEAD suites only).
    pub tls12: bool,
}

#[derive(Clone, Debug)]
pub struct RpSettings {
    pub id: String,
    pub name: String,
    pub origins: Vec<String>,
    pub ceremony_timeout_ms: u32,
    /// Credential algorithms accepted at registration, in preference order;
    /// empty: the engine's default list.
    pub algorithms: Vec<CoseAlgorithm>,
}

#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// Where the state lives: the embedded sled store in `data_dir`, or a
    /// PostgreSQL database shared by several instances.
    pub backend: StoreBackend,
    /// The sled store; with PostgreSQL, this instance's local files only
    /// (the FIDO metadata BLOB last installed and its HTTP validators).
    pub data_dir: PathBuf,
    pub sweep_interval: Duration,
    /// `[store.postgres]`, checked whenever present: `signet store migrate`
    /// and `signet store copy` use it before the backend is switched.
    pub postgres: Option<PostgresSettings>,
}

impl PostgresSettings {
    /// What the PostgreSQL store connects with: the password read from its
    /// file (zeroized when dropped, never logged) and the TLS trust anchors
    /// from `ca`.
    pub fn options(
        &self,
        tombstone_grace_ms: u64,
    ) -> Result<crate::store::postgres_store::PgOptions, ConfigError> {
        let secret = crate::files::read_bounded(&self.password_file, 1024)
            .map_err(|e| ConfigError::new("store.postgres.password_file", e))?;
        let secret = zeroize::Zeroizing::new(secret);
        let text = std::str::from_utf8(&secret)
            .map_err(|_| ConfigError::new("store.postgres.password_file", "is not UTF-8 text"))?;
        let password = zeroize::Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
        if password.is_empty() {
            return Err(ConfigError::new("store.postgres.password_file", "is empty"));
        }
        let ca = crate::files::read_bounded(&self.ca, 1024 * 1024)
            .map_err(|e| ConfigError::new("store.postgres.ca", e))?;
        let tls = crate::store::pg_tls::client_config(&ca).map_err(|e| {
            ConfigError::new("store.postgres.ca", format!("{}: {e}", self.ca.display()))
        })?;
        Ok(crate::store::postgres_store::PgOptions {
            url: self.url.clone(),
            password,
            tls,
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            tombstone_grace_ms,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    Sled,
    Postgres,
}

impl StoreBackend {
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Sled => "sled",
            StoreBackend::Postgres => "postgres",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PostgresSettings {
    /// `postgresql://USER@HOST:PORT/DATABASE`, without a password.
    pub url: String,
    pub password_file: PathBuf,
    /// The CA (PEM) the database server's certificate must chain to.
    pub ca: PathBuf,
    pub pool_size: u32,
    pub connect_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct KeySettings {
    pub profile: PathBuf,
    /// Certificates an officer issued for role keys (`signet hsm self-cert`
    /// or a CA's answer to `signet hsm csr`), served by `GET /v1/keys`
    /// beside the key whose public key they carry.
    pub certificates_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
pub struct AuditSettings {
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct LimitSettings {
    /// Sustained requests per second per client certificate key.
    pub rate_per_second: u32,
    /// Requests a client may make at once above the sustained rate.
    pub burst: u32,
    /// Requests in flight per client certificate key.
    pub max_in_flight: usize,
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub json: bool,
    pub level: String,
}

#[derive(Clone, Debug)]
pub struct MdsSettings {
    /// Where the BLOB is fetched from (https only).
    pub url: String,
    /// How often the service refreshes it.
    pub refresh_interval: Duration,
    /// An HTTP(S) proxy for the fetch (`http://host:port`); none by default.
    pub proxy: Option<String>,
    /// Trust root for the BLOB; `None`: the built-in FIDO MDS root.
    pub root: Option<PathBuf>,
    /// CRLs for the BLOB signer's chain (files an officer keeps current).
    pub crls: Vec<PathBuf>,
}

// ---- the file as written ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    tls: Option<RawTls>,
    #[serde(default)]
    clients: Vec<RawClient>,
    rp: Option<RawRp>,
    #[serde(default)]
    store: RawStore,
    keys: Option<RawKeys>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    /// Moved to the policy file; present only to say so.
    actions: Option<toml::Value>,
    mds: Option<RawMds>,
    policy: Option<RawPolicy>,
    #[serde(default)]
    devices: RawDevices,
    #[serde(default)]
    transactions: RawTransactions,
    #[serde(default)]
    pairing: RawPairing,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPairing {
    ttl_s: Option<u64>,
    approved_ttl_s: Option<u64>,
    attempts_max: Option<u64>,
    link: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTransactions {
    ttl_s: Option<u64>,
    attempts_max: Option<u64>,
    verification_log: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDevices {
    token_ttl_s: Option<u64>,
    enrollment_ttl_s: Option<u64>,
    #[serde(default)]
    key_attestation_roots: Vec<String>,
    require_key_attestation: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMds {
    url: Option<String>,
    refresh_interval_s: Option<u64>,
    proxy: Option<String>,
    root: Option<String>,
    #[serde(default)]
    crls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    file: Option<String>,
    reload_interval_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_connections: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    header_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    body_limit_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    #[serde(default)]
    crls: Vec<String>,
    tls12: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Option<String>,
    role: Option<String>,
    spki_sha256: Option<String>,
    subject: Option<String>,
    san_uri: Option<String>,
    san_dns: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRp {
    id: Option<String>,
    name: Option<String>,
    origins: Option<Vec<String>>,
    ceremony_timeout_ms: Option<u32>,
    algorithms: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    data_dir: Option<String>,
    sweep_interval_ms: Option<u64>,
    postgres: Option<RawPostgres>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<String>,
    password_file: Option<String>,
    ca: Option<String>,
    pool_size: Option<u32>,
    connect_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    profile: Option<String>,
    certificates_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    checkpoint_every: Option<u64>,
    checkpoint_interval_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    rate_per_second: Option<u32>,
    burst: Option<u32>,
    max_in_flight: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

/// Environment overrides, passed in so tests need not touch the process
/// environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    pub rp_id: Option<String>,
    pub rp_origins: Option<String>,
}

impl Overrides {
    /// `SIGNET_LISTEN`, `SIGNET_DATA_DIR`, `SIGNET_RP_ID`, `SIGNET_RP_ORIGINS`.
    pub fn from_env() -> Overrides {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Overrides {
            listen: var("SIGNET_LISTEN"),
            data_dir: var("SIGNET_DATA_DIR"),
            rp_id: var("SIGNET_RP_ID"),
            rp_origins: var("SIGNET_RP_ORIGINS"),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`, applying `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = read_text(path)?;
        let config = Config::parse(&text, path, overrides)?;
        config.check_file_modes(path)?;
        Ok(config)
    }

    /// The files that decide whom signet trusts may be written by their
    /// owner only, and the TLS private key read by its owner and group
    /// only. (The
    /// PIN file is checked where it is read, `keys::pin`; the data
    /// directory is restricted to 0700 when the store opens.)
    fn check_file_modes(&self, path: &Path) -> Result<(), ConfigError> {
        use crate::files::{refuse_exposed_private_key, refuse_writable_by_others};
        refuse_exposed_private_key(&self.tls.key).map_err(|e| ConfigError::new("tls.key", e))?;
        let mut trusted = vec![
            ("config".to_string(), path),
            ("tls.cert".to_string(), self.tls.cert.as_path()),
            ("tls.client_ca".to_string(), self.tls.client_ca.as_path()),
            ("keys.profile".to_string(), self.keys.profile.as_path()),
        ];
        for (i, crl) in self.tls.crls.iter().enumerate() {
            trusted.push((format!("tls.crls[{i}]"), crl.as_path()));
        }
        if let Some(policy) = &self.policy {
            trusted.push(("policy.file".to_string(), policy.as_path()));
        }
        if let Some(pg) = &self.store.postgres {
            refuse_exposed_private_key(&pg.password_file)
                .map_err(|e| ConfigError::new("store.postgres.password_file", e))?;
            trusted.push(("store.postgres.ca".to_string(), pg.ca.as_path()));
        }
        for (key, file) in trusted {
            refuse_writable_by_others(file).map_err(|e| ConfigError::new(key, e))?;
        }
        Ok(())
    }

    /// Parses and validates `text` as if read from `path` (relative paths
    /// resolve against `path`'s directory).
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, &e))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        build(raw, &base, path, overrides)
    }
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let key = "config";
    let file = std::fs::File::open(path)
        .map_err(|e| ConfigError::new(key, format!("cannot open {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(CONFIG_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > CONFIG_MAX {
        return Err(ConfigError::new(
            key,
            format!("{} is larger than {CONFIG_MAX} bytes", path.display()),
        ));
    }
    Ok(text)
}

/// toml's messages name the key for unknown fields and wrong types; the
/// span gives the line for everything else.
fn toml_error(path: &Path, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let key = e
        .span()
        .map(|s| format!("{} (byte {})", path.display(), s.start))
        .unwrap_or_else(|| path.display().to_string());
    ConfigError::new(key, message)
}

fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::new(key, "is required"))
}

fn resolve(base: &Path, value: &str, key: &str) -> Result<PathBuf, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(key, "must not be empty"));
    }
    let p = Path::new(value);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    })
}

fn millis(
    value: Option<u64>,
    default: u64,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::new(
            key,
            format!("{v} is outside {min}..={max}"),
        ));
    }
    Ok(Duration::from_millis(v))
}

fn ranged<T: PartialOrd + Copy + std::fmt::Display>(
    value: Option<T>,
    default: T,
    key: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::new(
            key,
            format!("{v} is outside {min}..={max}"),
        ));
    }
    Ok(v)
}

fn postgres_settings(raw: RawPostgres, base: &Path) -> Result<PostgresSettings, ConfigError> {
    let url = required(raw.url, "store.postgres.url")?;
    let scheme_ok = url.starts_with("postgresql://") || url.starts_with("postgres://");
    if !scheme_ok || url.len() > 1024 {
        return Err(ConfigError::new(
            "store.postgres.url",
            "must be a postgresql://USER@HOST:PORT/DATABASE URL of at most 1024 bytes",
        ));
    }
    // The whole URL is printed by --check and may reach logs: the password
    // has its own file.
    let authority = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
    if authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
    {
        return Err(ConfigError::new(
            "store.postgres.url",
            "carries a password; put it in store.postgres.password_file",
        ));
    }
    Ok(PostgresSettings {
        url,
        password_file: resolve(
            base,
            &required(raw.password_file, "store.postgres.password_file")?,
            "store.postgres.password_file",
        )?,
        ca: resolve(
            base,
            &required(raw.ca, "store.postgres.ca")?,
            "store.postgres.ca",
        )?,
        pool_size: ranged(raw.pool_size, 16, "store.postgres.pool_size", 1, 1000)?,
        connect_timeout: millis(
            raw.connect_timeout_ms,
            5_000,
            "store.postgres.connect_timeout_ms",
            100,
            600_000,
        )?,
    })
}

fn build(
    raw: RawConfig,
    base: &Path,
    source: &Path,
    ov: &Overrides,
) -> Result<Config, ConfigError> {
    // server
    let listen_text = ov
        .listen
        .clone()
        .or(raw.server.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8443".to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::new(
            "server.listen",
            format!("{listen_text:?} is not an address:port such as 127.0.0.1:8443"),
        )
    })?;
    let s = &raw.server;
    let server = ServerSettings {
        listen,
        max_connections: ranged(
            s.max_connections,
            1024,
            "server.max_connections",
            1,
            1_000_000,
        )?,
        handshake_timeout: millis(
            s.handshake_timeout_ms,
            10_000,
            "server.handshake_timeout_ms",
            100,
            600_000,
        )?,
        header_timeout: millis(
            s.header_timeout_ms,
            10_000,
            "server.header_timeout_ms",
            100,
            600_000,
        )?,
        request_timeout: millis(
            s.request_timeout_ms,
            30_000,
            "server.request_timeout_ms",
            100,
            600_000,
        )?,
        idle_timeout: millis(
            s.idle_timeout_ms,
            120_000,
            "server.idle_timeout_ms",
            1_000,
            3_600_000,
        )?,
        shutdown_grace: millis(
            s.shutdown_grace_ms,
            30_000,
            "server.shutdown_grace_ms",
            0,
            600_000,
        )?,
        body_limit: ranged(
            s.body_limit_bytes,
            256 * 1024,
            "server.body_limit_bytes",
            1024,
            16 * 1024 * 1024,
        )?,
    };

    // tls
    let t = required(raw.tls, "tls")?;
    let mut crls = Vec::new();
    for (i, c) in t.crls.iter().enumerate() {
        crls.push(resolve(base, c, &format!("tls.crls[{i}]"))?);
    }
    let tls = TlsSettings {
        cert: resolve(base, &required(t.cert, "tls.cert")?, "tls.cert")?,
        key: resolve(base, &required(t.key, "tls.key")?, "tls.key")?,
        client_ca: resolve(
            base,
            &required(t.client_ca, "tls.client_ca")?,
            "tls.client_ca",
        )?,
        crls,
        tls12: t.tls12.unwrap_or(true),
    };

    // clients
    if raw.clients.is_empty() {
        return Err(ConfigError::new(
            "clients",
            "at least one [[clients]] rule is required; without one every request is refused",
        ));
    }
    let mut clients = Vec::with_capacity(raw.clients.len());
    for (i, c) in raw.clients.into_iter().enumerate() {
        clients.push(client_rule(c, i)?);
    }

    // rp
    let r = required(raw.rp, "rp")?;
    let id = ov.rp_id.clone().or(r.id);
    let id = required(id, "rp.id")?;
    validate_rp_id(&id)?;
    let origins: Vec<String> = match &ov.rp_origins {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => required(r.origins, "rp.origins")?,
    };
    if origins.is_empty() {
        return Err(ConfigError::new(
            "rp.origins",
            "must list at least one origin",
        ));
    }
    for (i, o) in origins.iter().enumerate() {
        validate_origin(o, &id, &format!("rp.origins[{i}]"))?;
    }
    let mut algorithms = Vec::new();
    for (i, name) in r.algorithms.unwrap_or_default().iter().enumerate() {
        let alg = CoseAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("rp.algorithms[{i}]"),
                    format!("{name:?} is not one of ES256, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512, RS1"),
                )
            })?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    let rp = RpSettings {
        algorithms,
        name: r.name.unwrap_or_else(|| id.clone()),
        id,
        origins,
        ceremony_timeout_ms: ranged(
            r.ceremony_timeout_ms,
            300_000,
            "rp.ceremony_timeout_ms",
            TIMEOUT_MIN_MS,
            TIMEOUT_MAX_MS,
        )?,
    };
    if rp.name.is_empty() || rp.name.len() > 256 {
        return Err(ConfigError::new("rp.name", "must be 1 to 256 bytes"));
    }

    // store
    let data_dir = match &ov.data_dir {
        Some(d) => resolve(Path::new("."), d, "store.data_dir (SIGNET_DATA_DIR)")?,
        None => resolve(
            base,
            &required(raw.store.data_dir, "store.data_dir")?,
            "store.data_dir",
        )?,
    };
    let backend = match raw.store.backend.as_deref().unwrap_or("sled") {
        "sled" => StoreBackend::Sled,
        "postgres" => StoreBackend::Postgres,
        other => {
            return Err(ConfigError::new(
                "store.backend",
                format!("{other:?} is not a store backend; use \"sled\" or \"postgres\""),
            ));
        }
    };
    let postgres = match raw.store.postgres {
        None if backend == StoreBackend::Postgres => {
            return Err(ConfigError::new(
                "store.postgres",
                "is required with store.backend = \"postgres\"",
            ));
        }
        None => None,
        Some(pg) => Some(postgres_settings(pg, base)?),
    };
    let store = StoreSettings {
        backend,
        postgres,
        data_dir,
        sweep_interval: millis(
            raw.store.sweep_interval_ms,
            60_000,
            "store.sweep_interval_ms",
            100,
            3_600_000,
        )?,
    };

    // keys
    let k = required(raw.keys, "keys")?;
    let keys = KeySettings {
        profile: resolve(base, &required(k.profile, "keys.profile")?, "keys.profile")?,
        certificates_dir: k
            .certificates_dir
            .map(|d| resolve(base, &d, "keys.certificates_dir"))
            .transpose()?,
    };

    let audit = AuditSettings {
        checkpoint_every: ranged(
            raw.audit.checkpoint_every,
            1000,
            "audit.checkpoint_every",
            1,
            1_000_000,
        )?,
        checkpoint_interval: Duration::from_secs(ranged(
            raw.audit.checkpoint_interval_s,
            60,
            "audit.checkpoint_interval_s",
            1,
            86_400,
        )?),
    };

    let limits = LimitSettings {
        rate_per_second: ranged(
            raw.limits.rate_per_second,
            500,
            "limits.rate_per_second",
            1,
            1_000_000,
        )?,
        burst: ranged(raw.limits.burst, 1000, "limits.burst", 1, 10_000_000)?,
        max_in_flight: ranged(
            raw.limits.max_in_flight,
            256,
            "limits.max_in_flight",
            1,
            1_000_000,
        )?,
    };

    let json = match raw.log.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ConfigError::new(
                "log.format",
                format!("{other:?} is not \"text\" or \"json\""),
            ));
        }
    };
    let level = raw.log.level.unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        return Err(ConfigError::new(
            "log.level",
            format!("{level:?} is not a tracing filter such as \"info\" or \"signet=debug\""),
        ));
    }
    let log = LogSettings { json, level };

    let mds = raw.mds.map(|m| mds_settings(m, base)).transpose()?;
    let (policy, policy_reload_interval) = match raw.policy {
        Some(p) => (
            Some(resolve(
                base,
                &required(p.file, "policy.file")?,
                "policy.file",
            )?),
            ranged(p.reload_interval_s, 5, "policy.reload_interval_s", 1, 3600)?,
        ),
        None => (None, 5),
    };
    let policy_reload_interval = Duration::from_secs(policy_reload_interval);

    let mut key_attestation_roots = Vec::new();
    for (i, r) in raw.devices.key_attestation_roots.iter().enumerate() {
        key_attestation_roots.push(resolve(
            base,
            r,
            &format!("devices.key_attestation_roots[{i}]"),
        )?);
    }
    let devices = DeviceSettings {
        token_ttl: Duration::from_secs(ranged(
            raw.devices.token_ttl_s,
            900,
            "devices.token_ttl_s",
            60,
            86_400,
        )?),
        enrollment_ttl: Duration::from_secs(ranged(
            raw.devices.enrollment_ttl_s,
            30 * 86_400,
            "devices.enrollment_ttl_s",
            3600,
            366 * 86_400,
        )?),
        key_attestation_roots,
        require_key_attestation: raw.devices.require_key_attestation.unwrap_or(false),
    };

    let transactions = TransactionSettings {
        ttl: Duration::from_secs(ranged(
            raw.transactions.ttl_s,
            300,
            "transactions.ttl_s",
            30,
            86_400,
        )?),
        attempts_max: ranged(
            raw.transactions.attempts_max,
            5,
            "transactions.attempts_max",
            1,
            100,
        )? as u32,
        verification_log: raw
            .transactions
            .verification_log
            .as_deref()
            .map(|f| resolve(base, f, "transactions.verification_log"))
            .transpose()?,
    };

    let pairing = pairing_settings(&raw.pairing, &rp)?;

    if raw.actions.is_some() {
        return Err(ConfigError::new(
            "actions",
            "actions are defined in the trust policy file now ([policy] file; see docs/policy.md), \
             so that they are versioned, reloaded and audited with the tiers",
        ));
    }

    Ok(Config {
        source: source.to_path_buf(),
        server,
        tls,
        clients,
        rp,
        store,
        keys,
        audit,
        limits,
        log,
        mds,
        policy,
        policy_reload_interval,
        devices,
        transactions,
        pairing,
    })
}

fn pairing_settings(p: &RawPairing, rp: &RpSettings) -> Result<PairingSettings, ConfigError> {
    // Without a link, the RP's first https origin serves the page (else
    // an http://localhost one, else the RP ID's host): /pair.
    let link = match &p.link {
        Some(l) => l.clone(),
        None => match rp
            .origins
            .iter()
            .find(|o| o.starts_with("https://"))
            .or_else(|| {
                rp.origins
                    .iter()
                    .find(|o| o.starts_with("http://localhost"))
            }) {
            Some(o) => format!("{o}/pair"),
            None => format!("https://{}/pair", rp.id),
        },
    };
    let url = reqwest::Url::parse(&link)
        .map_err(|e| ConfigError::new("pairing.link", format!("{link:?} is not a URL: {e}")))?;
    // As for origins: plain http only on localhost, which browsers treat
    // as a secure context (development and the demo bank).
    let secure =
        url.scheme() == "https" || (url.scheme() == "http" && url.host_str() == Some("localhost"));
    if !secure || url.fragment().is_some() || link.contains('#') {
        return Err(ConfigError::new(
            "pairing.link",
            format!(
                "{link:?} must be an https URL (or http://localhost) without a fragment \
                 (signet appends #pairing=...&code=...)"
            ),
        ));
    }
    Ok(PairingSettings {
        ttl: Duration::from_secs(ranged(p.ttl_s, 120, "pairing.ttl_s", 30, 600)?),
        approved_ttl: Duration::from_secs(ranged(
            p.approved_ttl_s,
            30,
            "pairing.approved_ttl_s",
            5,
            300,
        )?),
        attempts_max: ranged(p.attempts_max, 5, "pairing.attempts_max", 1, 20)? as u32,
        link,
    })
}

fn mds_settings(m: RawMds, base: &Path) -> Result<MdsSettings, ConfigError> {
    let url = required(m.url, "mds.url")?;
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| ConfigError::new("mds.url", format!("{url:?} is not a URL: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(ConfigError::new("mds.url", "must be https"));
    }
    if let Some(proxy) = &m.proxy {
        let p = reqwest::Url::parse(proxy)
            .map_err(|e| ConfigError::new("mds.proxy", format!("{proxy:?} is not a URL: {e}")))?;
        if !matches!(p.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "mds.proxy",
                "must be an http:// or https:// proxy URL",
            ));
        }
    }
    let mut crls = Vec::new();
    for (i, c) in m.crls.iter().enumerate() {
        crls.push(resolve(base, c, &format!("mds.crls[{i}]"))?);
    }
    Ok(MdsSettings {
        url,
        refresh_interval: Duration::from_secs(ranged(
            m.refresh_interval_s,
            86_400,
            "mds.refresh_interval_s",
            60,
            30 * 86_400,
        )?),
        proxy: m.proxy,
        root: m.root.map(|r| resolve(base, &r, "mds.root")).transpose()?,
        crls,
    })
}

fn client_rule(c: RawClient, i: usize) -> Result<ClientRule, ConfigError> {
    let key = |k: &str| format!("clients[{i}].{k}");
    let name = required(c.name, &key("name"))?;
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            key("name"),
            "must be 1 to 128 printable characters",
        ));
    }
    let role_text = required(c.role, &key("role"))?;
    let role = ApiRole::parse(&role_text).ok_or_else(|| {
        ConfigError::new(
            key("role"),
            format!("{role_text:?} is not one of rp, officer, auditor, monitor"),
        )
    })?;
    let spki_sha256 = c
        .spki_sha256
        .map(|h| parse_pin(&h).ok_or_else(|| {
            ConfigError::new(
                key("spki_sha256"),
                "must be the SHA-256 of the certificate's SubjectPublicKeyInfo as 64 hex digits (colons allowed) or 43 base64url characters",
            )
        }))
        .transpose()?;
    if spki_sha256.is_none() && c.subject.is_none() && c.san_uri.is_none() && c.san_dns.is_none() {
        return Err(ConfigError::new(
            format!("clients[{i}]"),
            "needs at least one of spki_sha256, subject, san_uri, san_dns",
        ));
    }
    for (k, v) in [
        ("subject", &c.subject),
        ("san_uri", &c.san_uri),
        ("san_dns", &c.san_dns),
    ] {
        if let Some(v) = v
            && v.is_empty()
        {
            return Err(ConfigError::new(key(k), "must not be empty"));
        }
    }
    Ok(ClientRule {
        name,
        role,
        spki_sha256,
        subject: c.subject,
        san_uri: c.san_uri,
        san_dns: c.san_dns,
    })
}

/// An SPKI pin as hex (optionally colon-separated, as `openssl` prints
/// fingerprints) or unpadded base64url (as HPKP did).
pub fn parse_pin(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 {
        return crate::hex::decode(&hex)?.try_into().ok();
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()?;
    bytes.try_into().ok()
}

fn validate_rp_id(id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 253
        && id.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "rp.id",
            format!("{id:?} is not a lowercase DNS name such as example.com or localhost"),
        ))
    }
}

/// An origin is `https://host[:port]` (or `http://localhost[:port]`, which
/// browsers treat as secure), whose host is the RP ID or a subdomain of it
/// (WebAuthn L3 §5.1.4.1's rule, checked here so a typo is found at start,
/// not at the first failed ceremony). Android app origins
/// (`android:apk-key-hash:...`) are accepted as they are.
fn validate_origin(origin: &str, rp_id: &str, key: &str) -> Result<(), ConfigError> {
    if origin.starts_with("android:apk-key-hash:") && origin.len() > 21 {
        return Ok(());
    }
    let bad = |why: &str| ConfigError::new(key, format!("{origin:?} {why}"));
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or_else(|| bad("is not scheme://host[:port]"))?;
    let host_port = rest;
    if host_port.contains('/') || host_port.contains('?') || host_port.contains('#') {
        return Err(bad("must not have a path, query or fragment"));
    }
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) => {
            port.parse::<u16>()
                .map_err(|_| bad("has a port that is not a number 0-65535"))?;
            h
        }
        None => host_port,
    };
    match scheme {
        "https" => {}
        "http" if host == "localhost" => {}
        _ => return Err(bad("must be https (http only for localhost)")),
    }
    if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
        return Err(bad(&format!("is not rp.id {rp_id:?} or a subdomain of it")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pairing_link_is_https_or_http_on_localhost_without_a_fragment() {
        let rp = |origins: &[&str]| RpSettings {
            id: "localhost".into(),
            name: "t".into(),
            origins: origins.iter().map(|o| o.to_string()).collect(),
            ceremony_timeout_ms: 1000,
            algorithms: Vec::new(),
        };
        let link = |given: Option<&str>, origins: &[&str]| {
            pairing_settings(
                &RawPairing {
                    link: given.map(str::to_string),
                    ..RawPairing::default()
                },
                &rp(origins),
            )
            .map(|p| p.link)
        };
        let both = ["http://localhost:8080", "https://localhost:8443"];
        assert_eq!(link(None, &both).unwrap(), "https://localhost:8443/pair");
        assert_eq!(
            link(None, &["http://localhost:8080"]).unwrap(),
            "http://localhost:8080/pair"
        );
        assert_eq!(
            link(None, &["android:apk-key-hash:x"]).unwrap(),
            "https://localhost/pair"
        );
        assert!(link(Some("http://localhost:9/p"), &both).is_ok());
        for bad in [
            "http://bank.example/pair",
            "http://127.0.0.1/pair",
            "https://bank.example/pair#x",
            "ftp://localhost/pair",
            "not a url",
        ] {
            let e = link(Some(bad), &both).expect_err(bad);
            assert_eq!(e.key, "pairing.link", "{bad}");
        }
    }

    use super::*;

    const MINIMAL: &str = r#"
[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"
crls = ["pki/ca.crl"]

[[clients]]
name = "core"
role = "rp"
san_uri = "urn:signet:role:rp"

[rp]
id = "bank.example"
origins = ["https://bank.example"]

[store]
data_dir = "data"

[keys]
profile = "/etc/signet/hsm.toml"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("/etc/signet/signet.toml"),
            &Overrides::default(),
        )
    }

    fn key_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.key,
        }
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(MINIMAL).expect("minimal config");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.server.body_limit, 256 * 1024);
        assert_eq!(c.tls.cert, Path::new("/etc/signet/pki/server.pem"));
        assert_eq!(c.tls.crls, vec![PathBuf::from("/etc/signet/pki/ca.crl")]);
        assert!(c.tls.tls12);
        assert_eq!(c.store.data_dir, Path::new("/etc/signet/data"));
        assert_eq!(c.keys.profile, Path::new("/etc/signet/hsm.toml"));
        assert_eq!(c.rp.name, "bank.example");
        assert_eq!(c.rp.ceremony_timeout_ms, 300_000);
        assert_eq!(c.clients[0].role, ApiRole::Rp);
        assert!(!c.log.json);
    }

    #[test]
    fn postgres_store_settings() {
        let c = parse(MINIMAL).expect("minimal config");
        assert_eq!(c.store.backend, StoreBackend::Sled);
        assert!(c.store.postgres.is_none());
        let text = format!(
            "{}\n[store.postgres]\nurl = \"postgresql://signet@db.bank.example/signet?sslmode=require\"\n\
             password_file = \"pg/password\"\nca = \"/etc/ssl/db-ca.pem\"\n",
            MINIMAL.replace(
                "data_dir = \"data\"",
                "data_dir = \"data\"\nbackend = \"postgres\""
            )
        );
        let c = parse(&text).expect("postgres config");
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        let pg = c.store.postgres.expect("[store.postgres]");
        assert_eq!(pg.password_file, Path::new("/etc/signet/pg/password"));
        assert_eq!(pg.ca, Path::new("/etc/ssl/db-ca.pem"));
        assert_eq!(
            (pg.pool_size, pg.connect_timeout),
            (16, Duration::from_secs(5))
        );
    }

    #[test]
    fn environment_overrides_win() {
        let ov = Overrides {
            listen: Some("0.0.0.0:9443".into()),
            data_dir: Some("/var/lib/signet".into()),
            rp_id: Some("other.example".into()),
            rp_origins: Some("https://other.example, https://app.other.example:8443".into()),
        };
        let c = Config::parse(MINIMAL, Path::new("/etc/signet/signet.toml"), &ov).expect("config");
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(c.store.data_dir, Path::new("/var/lib/signet"));
        assert_eq!(c.rp.id, "other.example");
        assert_eq!(
            c.rp.origins,
            ["https://other.example", "https://app.other.example:8443"]
        );
        // An override is validated like the file.
        let bad = Overrides {
            rp_origins: Some("https://evil.example".into()),
            ..Overrides::default()
        };
        let e = Config::parse(MINIMAL, Path::new("/x/signet.toml"), &bad).expect_err("evil origin");
        assert_eq!(e.key, "rp.origins[0]");
    }

    #[test]
    fn every_error_names_its_key() {
        let cases: Vec<(String, &str)> = vec![
            (
                MINIMAL.replace("[tls]", "[tls]\ntls13 = true"),
                "signet.toml",
            ),
            (
                MINIMAL.replace("role = \"rp\"", "role = \"admin\""),
                "clients[0].role",
            ),
            (
                MINIMAL.replace("san_uri = \"urn:signet:role:rp\"", ""),
                "clients[0]",
            ),
            (
                MINIMAL.replace("san_uri = \"urn:signet:role:rp\"", "spki_sha256 = \"abcd\""),
                "clients[0].spki_sha256",
            ),
            (MINIMAL.replace("name = \"core\"\n", ""), "clients[0].name"),
            (
                MINIMAL.replace("id = \"bank.example\"", "id = \"Bank.Example\""),
                "rp.id",
            ),
            (
                MINIMAL.replace("[\"https://bank.example\"]", "[\"http://bank.example\"]"),
                "rp.origins[0]",
            ),
            (
                MINIMAL.replace(
                    "[\"https://bank.example\"]",
                    "[\"https://bank.example/login\"]",
                ),
                "rp.origins[0]",
            ),
            (
                MINIMAL.replace("[\"https://bank.example\"]", "[]"),
                "rp.origins",
            ),
            (
                format!("{MINIMAL}\n[server]\nlisten = \"localhost\"\n"),
                "server.listen",
            ),
            (
                format!("{MINIMAL}\n[server]\nbody_limit_bytes = 10\n"),
                "server.body_limit_bytes",
            ),
            (
                format!("{MINIMAL}\n[log]\nformat = \"xml\"\n"),
                "log.format",
            ),
            (
                format!("{MINIMAL}\n[actions.pay]\nuser_verification = \"required\"\n"),
                "actions",
            ),
            (
                MINIMAL.replace("origins = [", "algorithms = [\"ES257\"]\norigins = ["),
                "rp.algorithms[0]",
            ),
            (MINIMAL.replace("data_dir = \"data\"", ""), "store.data_dir"),
            (
                MINIMAL.replace("data_dir = \"data\"", "data_dir = \"data\"\nbackend = \"mysql\""),
                "store.backend",
            ),
            (
                MINIMAL.replace("data_dir = \"data\"", "data_dir = \"data\"\nbackend = \"postgres\""),
                "store.postgres",
            ),
            (
                format!("{MINIMAL}\n[store.postgres]\nurl = \"postgresql://signet@db:5432/signet\"\npassword_file = \"pw\"\nca = \"ca.pem\"\n").replace("signet@db", "signet:hunter2@db"),
                "store.postgres.url",
            ),
            (
                format!("{MINIMAL}\n[store.postgres]\nurl = \"postgresql://signet@db:5432/signet\"\npassword_file = \"pw\"\nca = \"ca.pem\"\n").replace("postgresql://", "mysql://"),
                "store.postgres.url",
            ),
            (
                format!("{MINIMAL}\n[store.postgres]\nurl = \"postgresql://signet@db:5432/signet\"\npassword_file = \"pw\"\nca = \"ca.pem\"\n").replace("ca = \"ca.pem\"\n", ""),
                "store.postgres.ca",
            ),
            (
                format!("{MINIMAL}\n[store.postgres]\nurl = \"postgresql://signet@db:5432/signet\"\npassword_file = \"pw\"\nca = \"ca.pem\"\npool_size = 0\n"),
                "store.postgres.pool_size",
            ),
            (
                format!("{MINIMAL}\n[store.postgres]\nurl = \"postgresql://signet@db:5432/signet\"\npassword_file = \"pw\"\nca = \"ca.pem\"\nconnect_timeout_ms = 10\n"),
                "store.postgres.connect_timeout_ms",
            ),
            (
                MINIMAL.replace("[keys]\nprofile = \"/etc/signet/hsm.toml\"", ""),
                "keys",
            ),
            (
                MINIMAL.replace("cert = \"pki/server.pem\"\n", ""),
                "tls.cert",
            ),
            (
                MINIMAL.replace("crls = [\"pki/ca.crl\"]", "crls = [\"\"]"),
                "tls.crls[0]",
            ),
        ];
        for (text, key) in cases {
            let got = key_of(&text);
            assert!(
                got.contains(key),
                "expected key {key}, got {got} for:\n{text}"
            );
        }
        // An unknown member is named by toml's message.
        let e = parse(&MINIMAL.replace("[tls]", "[tls]\ntls13 = true")).expect_err("unknown");
        assert!(e.reason.contains("tls13"), "{e}");
    }

    #[test]
    fn pins_parse_as_hex_or_base64url() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let bytes = parse_pin(hex).expect("hex");
        assert_eq!(bytes[1], 0x11);
        let colons: String = hex
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(":")
            .to_uppercase();
        assert_eq!(parse_pin(&colons), Some(bytes));
        assert_eq!(parse_pin(&crate::webauthn::b64url(&bytes)), Some(bytes));
        assert_eq!(parse_pin("abcd"), None);
        assert_eq!(parse_pin(&"00".repeat(31)), None);
    }

    #[test]
    fn algorithms() {
        let text = format!(
            "{}\n",
            MINIMAL.replace(
                "origins = [",
                "algorithms = [\"ES256\", \"RS1\", \"ES256\"]\norigins = ["
            )
        );
        let c = parse(&text).expect("config");
        assert_eq!(c.rp.algorithms, [CoseAlgorithm::Es256, CoseAlgorithm::Rs1]);
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.toml");
        std::fs::write(&path, vec![b'#'; CONFIG_MAX as usize + 1]).expect("write");
        let e = Config::load(&path, &Overrides::default()).expect_err("too big");
        assert_eq!(e.key, "config");
    }
}
