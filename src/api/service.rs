//! `signet serve`: opens the store and the key device, builds the API and
//! runs it until SIGINT or SIGTERM.
//!
//! Start-up order is the order of what can be wrong: configuration (already
//! validated by the caller), TLS material, store, key device (with its
//! keys provisioned), then the listener. Nothing listens until everything
//! behind it works, so a load balancer never sees a half-started node.
//!
//! Shutdown: stop accepting, let in-flight requests finish (up to
//! `server.shutdown_grace_ms`), checkpoint the audit log, flush the store.
//!
//! With an `[mds]` table, a background task refreshes the FIDO metadata
//! catalog: first a few seconds after the start, then every
//! `mds.refresh_interval_s`, on the blocking pool. Requests never wait on
//! it; they read whatever catalog is installed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::limits::ClientLimits;
use super::metrics::{MeteredBackend, Metrics};
use super::{AppState, router, server, tls};
use crate::config::{Config, MdsSettings, StoreBackend, StoreSettings};
use crate::flows::metadata::{self, RefreshOutcome};
use crate::flows::{Services, unix_ms};
use crate::keys::profile::Profile;
use crate::keys::{KeyRing, Role};
use crate::mds::crl::Crl;
use crate::mds::fetch::FetchOptions;
use crate::store::sled_store::SledStore;
use crate::store::{Store, Sweeper};

/// Objects swept per batch by the background sweeper.
const SWEEP_BATCH: usize = 512;
/// The first metadata refresh runs this long after the start, so that a
/// start never waits on the network.
const MDS_FIRST_REFRESH: Duration = Duration::from_secs(5);
/// How long the runtime waits at shutdown for a blocking task (a metadata
/// download in progress) before the process exits anyway.
const BLOCKING_GRACE: Duration = Duration::from_secs(2);
/// The audit actor of scheduled metadata installs.
const MDS_ACTOR: &str = "signet (scheduled MDS refresh)";

/// The roots and CRLs `[mds]` names, loaded once at start.
pub struct MdsTrust {
    pub roots: Vec<crate::webauthn::certpath::Cert>,
    pub crls: Vec<Crl>,
}

/// The trust policy `[policy] file` names, or the built-in one.
pub fn load_policy(config: &Config) -> anyhow::Result<crate::policy::tiers::Policy> {
    match &config.policy {
        Some(path) => crate::policy::tiers::Policy::load(path)
            .map_err(|e| anyhow::anyhow!("policy.file {}: {e}", path.display())),
        None => crate::policy::tiers::Policy::builtin()
            .map_err(|e| anyhow::anyhow!("built-in policy: {e}")),
    }
}

/// Loads `mds.root` (or the built-in FIDO MDS root) and `mds.crls`; an
/// error names the key and the file.
pub fn mds_trust(settings: &MdsSettings) -> anyhow::Result<MdsTrust> {
    let roots = metadata::load_roots(settings.root.as_deref(), "mds.root")?;
    let crls = settings
        .crls
        .iter()
        .enumerate()
        .map(|(i, p)| metadata::load_crl(p, &format!("mds.crls[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MdsTrust { roots, crls })
}

/// Everything built from the configuration, before any port is opened.
pub struct Prepared {
    pub state: AppState,
    pub tls: Arc<rustls::ServerConfig>,
}

/// The configured store: sled in `store.data_dir`, or the PostgreSQL
/// database of `[store.postgres]`, whose schema `signet store migrate`
/// must have applied.
pub fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match settings.backend {
        StoreBackend::Sled => Arc::new(
            SledStore::open(&settings.data_dir)
                .with_context(|| format!("store.data_dir: {}", settings.data_dir.display()))?,
        ),
        StoreBackend::Postgres => {
            let pg = settings
                .postgres
                .as_ref()
                .context("store.postgres: is required with store.backend = \"postgres\"")?;
            // Only the data directory's local files live there now; it is
            // still created owner-only.
            crate::files::ensure_private_dir(&settings.data_dir)
                .map_err(|e| anyhow::anyhow!("store.data_dir: {e}"))?;
            let options = pg
                .options(crate::store::postgres_store::DEFAULT_TOMBSTONE_GRACE_MS)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Arc::new(
                crate::store::PgStore::connect(&options)
                    .with_context(|| format!("store.postgres: {}", pg.url))?,
            )
        }
    })
}

/// Builds the application from a validated configuration and the key
/// profile it names (loaded, with its environment applied, by the caller
/// while the process had one thread): reads the TLS material, opens the key
/// device and checks every role has an active key, then opens the store.
pub fn prepare(config: &Config, profile: &Profile) -> anyhow::Result<Prepared> {
    let tls = tls::server_config(&config.tls)?;
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    let backend = profile
        .open_backend()
        .context("keys.profile: opening the key device")?;
    let ring = Arc::new(KeyRing::new(Arc::new(MeteredBackend::new(
        backend,
        metrics.clone(),
    ))));
    for role in Role::ALL {
        ring.active(role).with_context(|| {
            format!("keys: role {role} has no active key; provision with `signet hsm init --profile {}`", config.keys.profile.display())
        })?;
    }
    let store = open_store(&config.store)?;
    let key_certificates = match &config.keys.certificates_dir {
        Some(dir) => load_key_certificates(dir)?,
        None => Vec::new(),
    };
    let policy = load_policy(config)?;
    tracing::info!(version = %policy.version, sha256 = %policy.sha256, "trust policy loaded");
    let mut services = Services::new(config, store, ring, policy);
    // Services::new starts from the built-in roots; configured ones replace them.
    if !config.devices.key_attestation_roots.is_empty() {
        services.devices.key_attestation_roots =
            key_attestation_roots(&config.devices.key_attestation_roots)?;
    }
    if let Some(log) = &services.transactions.log {
        log.open()
            .with_context(|| format!("transactions.verification_log: {}", log.path().display()))?;
    }
    let services = Arc::new(services);
    let state = AppState {
        services,
        metrics,
        limits: Arc::new(ClientLimits::new(config.limits)),
        body_limit: config.server.body_limit,
        request_timeout: config.server.request_timeout,
        key_certificates: Arc::new(key_certificates),
    };
    Ok(Prepared { state, tls })
}

/// Every `*.pem` certificate in `dir`, keyed by its SPKI so `/v1/keys` can
/// put it beside the key it certifies. A file that does not parse stops
/// the start: an officer placed it there on purpose.
/// `devices.key_attestation_roots`: PEM files of trust anchors for
/// Android Key Attestation of device keys; none configured: the Google
/// hardware attestation roots built in.
pub fn key_attestation_roots(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    if paths.is_empty() {
        return Ok(crate::device_attestation::google_roots());
    }
    let mut roots = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let key = format!("devices.key_attestation_roots[{i}]");
        let bytes = crate::api::tls::read_bounded(path, &key)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{key}: {} is not PEM text", path.display()))?;
        roots.extend(
            crate::device_attestation::roots_from_pem(&text)
                .map_err(|e| anyhow::anyhow!("{key}: {}: {e}", path.display()))?,
        );
    }
    Ok(roots)
}

fn load_key_certificates(dir: &std::path::Path) -> anyhow::Result<Vec<(Vec<u8>, String)>> {
    use der::{Decode, DecodePem, Encode};
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("keys.certificates_dir: {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let meta = std::fs::metadata(&path)?;
        anyhow::ensure!(
            meta.len() <= 64 * 1024,
            "keys.certificates_dir: {} is larger than 64 KiB",
            path.display()
        );
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("keys.certificates_dir: {}", path.display()))?;
        let cert = x509_cert::Certificate::from_pem(text.as_bytes()).with_context(|| {
            format!(
                "keys.certificates_dir: {} is not a PEM certificate",
                path.display()
            )
        })?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .context("re-encoding a certificate's SPKI")?;
        let _ = x509_cert::Certificate::from_der(&cert.to_der()?)?;
        out.push((spki, text));
    }
    Ok(out)
}

/// Runs the service until a termination signal.
pub fn run(config: Config, profile: &Profile) -> anyhow::Result<()> {
    let mds = match &config.mds {
        Some(settings) => Some((settings.clone(), Arc::new(mds_trust(settings)?))),
        None => None,
    };
    let prepared = prepare(&config, profile)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("signet-io")
        .build()
        .context("starting the async runtime")?;
    let services = prepared.state.services.clone();
    let _sweeper = Sweeper::spawn(
        services.store.clone(),
        Box::new(|| unix_ms(SystemTime::now())),
        config.store.sweep_interval,
        SWEEP_BATCH,
    )
    .context("starting the store sweeper")?;

    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("server.listen: cannot bind {}", config.server.listen))?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, rp_id = %config.rp.id, "signet listening (mutual TLS)");
        // Tests and scripts wait for this line.
        println!("signet: listening on https://{local}");

        let timer = tokio::spawn(checkpoint_timer(
            services.clone(),
            config.audit.checkpoint_interval,
        ));
        let mds_timer = mds.map(|(settings, trust)| {
            tokio::spawn(mds_timer(
                services.clone(),
                config.store.data_dir.clone(),
                settings,
                trust,
            ))
        });
        // Always: SIGHUP must never fall through to its default (exit).
        let policy_watch = tokio::spawn(policy_watch(
            services.clone(),
            config.policy_reload_interval,
        ));
        // A body declared over the limit is refused at once; one that
        // trickles in is cut after the header timeout (see guard_bodies).
        let app = server::guard_bodies(
            router(prepared.state.clone()),
            config.server.body_limit,
            config.server.header_timeout,
        );
        let rules: Arc<[_]> = config.clients.clone().into();
        let opts = server::ServeOptions::from(&config.server);
        server::serve(
            listener,
            prepared.tls.clone(),
            rules,
            app,
            opts,
            shutdown_signal(),
        )
        .await?;
        timer.abort();
        if let Some(t) = mds_timer {
            t.abort();
        }
        policy_watch.abort();
        anyhow::Ok(())
    })?;
    // A metadata download in progress is abandoned (the catalog stays).
    runtime.shutdown_timeout(BLOCKING_GRACE);

    // In-flight requests are done: seal the log and make everything durable.
    let s = services.clone();
    if let Err(e) = s.audit.checkpoint_now(&s.keys, unix_ms(SystemTime::now())) {
        tracing::warn!(error = %e, "final audit checkpoint failed");
    }
    s.store.flush().context("flushing the store at shutdown")?;
    tracing::info!("signet stopped");
    Ok(())
}

/// Checkpoints the audit head every `interval` when records arrived since
/// the last checkpoint, so a quiet log is not left covered by the chain alone.
async fn checkpoint_timer(services: Arc<Services>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = services.clone();
        let done = tokio::task::spawn_blocking(move || {
            s.audit.checkpoint_now(&s.keys, unix_ms(SystemTime::now()))
        })
        .await;
        match done {
            Ok(Ok(Some(c))) => tracing::debug!(seq = c.seq, "audit checkpoint"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "audit checkpoint failed; retried at the next tick")
            }
            Err(e) => tracing::warn!(error = %e, "audit checkpoint task failed"),
        }
    }
}

/// Refreshes the metadata catalog [`MDS_FIRST_REFRESH`] after the start,
/// then every `settings.refresh_interval`. Failures are recorded in the
/// store's metadata status (and logged); the installed catalog stays.
async fn mds_timer(
    services: Arc<Services>,
    data_dir: std::path::PathBuf,
    settings: MdsSettings,
    trust: Arc<MdsTrust>,
) {
    let start = tokio::time::Instant::now() + MDS_FIRST_REFRESH;
    let mut tick = tokio::time::interval_at(start, settings.refresh_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let settings = Arc::new(settings);
    loop {
        tick.tick().await;
        let (s, dir, m, t) = (
            services.clone(),
            data_dir.clone(),
            settings.clone(),
            trust.clone(),
        );
        let done = tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            let outcome = metadata::refresh(
                s.store.as_ref(),
                &dir,
                &m,
                &t.roots,
                &t.crls,
                &FetchOptions::default(),
                now,
            )?;
            if let RefreshOutcome::Installed(report) = &outcome {
                let event = metadata::installed_event(report, &m.url, MDS_ACTOR, now);
                if let Err(e) = s.audit.append(&event, Some(&s.keys)) {
                    tracing::error!(error = %e, no = report.no, "MDS install not audited");
                }
                match metadata::flag_newly_refused(
                    s.store.as_ref(),
                    &s.audit,
                    Some(&s.keys),
                    &report.newly_refused,
                    MDS_ACTOR,
                    now,
                ) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(flagged = n, "credentials of newly refused models flagged")
                    }
                    Err(e) => tracing::error!(error = %e, "flagging newly refused models failed"),
                }
            }
            if let RefreshOutcome::NotModified { .. } = &outcome {
                // Completes a flagging run an earlier refresh could not finish.
                match metadata::flag_refused(
                    s.store.as_ref(),
                    &s.audit,
                    Some(&s.keys),
                    MDS_ACTOR,
                    now,
                ) {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(flagged = n, "credentials of refused models flagged"),
                    Err(e) => tracing::error!(error = %e, "flagging refused models failed"),
                }
            }
            Ok::<_, metadata::MetadataError>(outcome)
        })
        .await;
        match done {
            Ok(Ok(RefreshOutcome::Installed(r))) => tracing::info!(
                no = r.no,
                previous_no = r.previous_no,
                entries = r.entries,
                next_update = %r.next_update,
                "MDS BLOB installed"
            ),
            Ok(Ok(RefreshOutcome::NotModified { no })) => {
                tracing::info!(no, "MDS BLOB not modified")
            }
            Ok(Err(e)) => tracing::warn!(
                error = %e,
                "MDS refresh failed; the installed catalog stays; retried at the next interval"
            ),
            Err(e) => tracing::warn!(error = %e, "MDS refresh task failed"),
        }
    }
}

/// Reloads the policy file when its content changes (checked every
/// `interval`) or at once on SIGHUP. See [`crate::flows::policy`].
async fn policy_watch(services: Arc<Services>, interval: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGHUP; the policy file is still polled");
            None
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let via = match &mut hup {
            Some(h) => tokio::select! {
                _ = tick.tick() => "file",
                _ = h.recv() => "sighup",
            },
            None => {
                tick.tick().await;
                "file"
            }
        };
        let s = services.clone();
        let done = tokio::task::spawn_blocking(move || {
            crate::flows::policy::reload(&s, via, SystemTime::now())
        })
        .await;
        match done {
            Ok(Ok(crate::flows::policy::Reload::Unchanged)) if via == "sighup" => {
                tracing::info!("SIGHUP: the policy in force is current (or built in)")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "policy reload failed"),
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
