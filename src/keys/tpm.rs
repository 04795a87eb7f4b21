//! TPM 2.0 backend: signet's keys as children of a storage primary key that is
//! re-derived from a fixed template at every start.
//!
//! # Why it is built this way
//!
//! * A TPM holds almost nothing: a handful of loaded objects and no room for
//!   signet's keys in NV memory. Each child key therefore lives on disk as the
//!   public/private pair `TPM2_Create` returns. The private half is encrypted
//!   and integrity-protected under the storage primary, so the file is useless
//!   on any other TPM (or after the owner hierarchy is cleared).
//! * The storage primary is never persisted: `TPM2_CreatePrimary` with the same
//!   template under the same owner seed yields the same key, so re-deriving it
//!   costs a few milliseconds at connect and leaves no NV state to manage.
//! * A tss-esapi `Context` is not thread-safe and every command takes
//!   `&mut self`, so one dedicated thread owns it (and everything that goes
//!   with it: the key index and the loaded-handle cache) and callers send it
//!   work over a channel.
//! * The TPM (or swtpm) may die or restart under us. Any transport failure
//!   drops the whole connection; the next request reconnects, re-derives the
//!   primary and starts with an empty handle cache, so the process never needs
//!   a restart. Reconnects are throttled so a dead TPM costs at most one
//!   connect attempt per `RECONNECT_INTERVAL`, not one per request.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use serde::{Deserialize, Serialize};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, PropertyTag};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket,
    KeyDerivationFunctionScheme, Private, Public, PublicBuffer, PublicBuilder,
    PublicEccParametersBuilder, Signature, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use super::pin::SecretSource;
use super::profile::TpmSettings;
use super::{
    DeviceAttributes, EcPublicKey, EcdsaSignature, KeyBackend, KeyError, Kid, Purpose, Role,
    SharedSecret, StoredKey, key_label,
};

/// A dead TPM must not cost a connect (and a primary derivation) per request.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);

/// Defence in depth for a TPM that accepts a command and never answers (a
/// stopped swtpm, a wedged driver): the TSS blocks without a timeout, so the
/// caller stops waiting instead and reports the TPM unavailable.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Dropping the backend waits this long for the worker to flush its handles:
/// swtpm serves one connection at a time, so a backend re-opened in the same
/// process would otherwise queue behind the old connection.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Requests queue here while the worker is busy; a full queue blocks callers,
/// which is the back-pressure we want in front of a ~2k op/s device.
const QUEUE_DEPTH: usize = 1024;

/// The TPM limits an object's authValue to the digest size of its name
/// algorithm (SHA-256).
const MAX_AUTH_LEN: usize = 32;

/// Key files are a few hundred bytes; anything much larger is not one.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Written into every key file so a reader can tell the layout apart from
/// whatever else may sit in the directory (and from future layouts).
const FORMAT: &str = "signet-tpm-key/1";

/// File names are `signet-<role>-v<version>-<kid>.json`; only names with this
/// prefix and suffix are treated as signet's (and must then parse).
const FILE_PREFIX: &str = "signet-";
const FILE_SUFFIX: &str = ".json";

/// Handles the LRU keeps when the TPM does not report TPM_PT_HR_TRANSIENT_MIN
/// (the specification's minimum is 3, one of which is the primary).
const DEFAULT_CACHE: usize = 2;
/// Resource managers may report generous numbers; more loaded keys than this
/// buys nothing for four roles and a few versions.
const MAX_CACHE: usize = 64;

/// TSS2 response-code layers (tss2_common.h) and the base codes that mean the
/// connection, not the command, failed.
const LAYER_TPM: u32 = 0;
const LAYER_ESAPI: u32 = 7;
const LAYER_SYS: u32 = 8;
const LAYER_TCTI: u32 = 10;
const LAYER_RESMGR: u32 = 11;
const LAYER_RESMGR_TPM: u32 = 12;
const BASE_GENERAL_FAILURE: u32 = 1;
const BASE_BAD_SEQUENCE: u32 = 7;
const BASE_NO_CONNECTION: u32 = 8;
const BASE_TRY_AGAIN: u32 = 9;
const BASE_IO_ERROR: u32 = 10;
const BASE_MALFORMED_RESPONSE: u32 = 17;
const BASE_INSUFFICIENT_RESPONSE: u32 = 19;

/// Signet's keys in a TPM 2.0, reached through a TCTI (swtpm, `/dev/tpmrm0`,
/// tabrmd). Cheap to share: every method sends a request to the worker thread
/// and blocks for its answer.
pub struct TpmBackend {
    jobs: Sender<Job>,
    description: String,
    backend_name: String,
    worker: Option<(JoinHandle<()>, Receiver<()>)>,
}

type JobFn = Box<dyn FnOnce(&mut Worker) + Send>;

struct Job {
    /// The caller stops waiting at this instant; a job still queued by then is
    /// dropped rather than run for nobody.
    deadline: Instant,
    run: JobFn,
}

impl TpmBackend {
    /// Connects, re-derives the storage primary and starts the worker thread.
    ///
    /// The auth value is read here, once, so a rotated or removed auth file
    /// cannot make a running backend fail halfway; it stays in a zeroizing
    /// buffer owned by the worker.
    pub fn open(settings: &TpmSettings) -> Result<TpmBackend, KeyError> {
        let tcti = settings.tcti.clone();
        let conf = TctiNameConf::from_str(&tcti).map_err(|_| KeyError::TpmUnreachable {
            tcti: tcti.clone(),
            detail: "not a TCTI string tss-esapi understands \
                     (e.g. swtpm:host=127.0.0.1,port=2321 or device:/dev/tpmrm0)"
                .into(),
        })?;
        let auth = read_auth(settings.auth.as_ref())?;
        ensure_key_dir(&settings.key_dir)?;

        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<String, KeyError>>(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        let key_dir = settings.key_dir.clone();
        let worker_tcti = tcti.clone();
        let handle = std::thread::Builder::new()
            .name("signet-tpm".into())
            .spawn(move || {
                let mut worker = Worker {
                    tcti: worker_tcti,
                    conf,
                    key_dir,
                    auth,
                    conn: None,
                    last_attempt: None,
                    last_failure: String::new(),
                    records: HashMap::new(),
                    skipped: HashSet::new(),
                };
                match worker.initial_connect() {
                    Ok(description) => {
                        let _ = ready_tx.send(Ok(description));
                        worker.serve(jobs_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                // Flush every loaded handle before saying we are gone.
                drop(worker);
                let _ = done_tx.send(());
            })
            .map_err(|e| KeyError::Io(format!("cannot start the TPM worker thread: {e}")))?;

        let description = match ready_rx.recv_timeout(OP_TIMEOUT) {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(RecvTimeoutError::Timeout) => {
                // The thread is stuck in the TSS; it cannot be cancelled, so
                // leave it behind (dropping `jobs_tx` ends it if it ever returns).
                return Err(KeyError::TpmUnreachable {
                    tcti,
                    detail: format!("no answer within {} s", OP_TIMEOUT.as_secs()),
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = handle.join();
                return Err(KeyError::TpmUnreachable {
                    tcti,
                    detail: "the TPM worker failed while connecting".into(),
                });
            }
        };
        Ok(TpmBackend {
            jobs: jobs_tx,
            description: format!("{description}, keys in {}", settings.key_dir.display()),
            backend_name: format!("tpm {tcti}"),
            worker: Some((handle, done_rx)),
        })
    }

    /// Runs `f` on the worker thread and waits for its answer, at most until
    /// [`OP_TIMEOUT`].
    fn call<T, F>(&self, f: F) -> Result<T, KeyError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Worker) -> Result<T, KeyError> + Send + 'static,
    {
        let deadline = Instant::now() + OP_TIMEOUT;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job = Job {
            deadline,
            run: Box::new(move |w: &mut Worker| {
                let _ = tx.send(f(w));
            }),
        };
        let unavailable = |detail: String| KeyError::Unavailable {
            backend: self.backend_name.clone(),
            detail,
        };
        match self.jobs.send_deadline(job, deadline) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                return Err(unavailable(
                    "request queue full: the TPM is not keeping up".into(),
                ));
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                return Err(unavailable("the TPM worker thread has stopped".into()));
            }
        }
        match rx.recv_deadline(deadline) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(unavailable(format!(
                "no answer from the TPM within {} s",
                OP_TIMEOUT.as_secs()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(unavailable(
                "the TPM worker failed while handling the request".into(),
            )),
        }
    }
}

impl Drop for TpmBackend {
    fn drop(&mut self) {
        // Closing the queue ends the worker loop; it then drops the context,
        // which flushes what it loaded.
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some((handle, done)) = self.worker.take() {
            if done.recv_timeout(SHUTDOWN_WAIT).is_ok() {
                let _ = handle.join();
            } else {
                tracing::warn!(
                    backend = %self.backend_name,
                    "TPM worker did not stop within {} s; leaving it behind",
                    SHUTDOWN_WAIT.as_secs()
                );
            }
        }
    }
}

impl fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmBackend")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl KeyBackend for TpmBackend {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn list(&self) -> Result<Vec<StoredKey>, KeyError> {
        self.call(|w| w.list())
    }

    fn generate(&self, role: Role, version: u32) -> Result<StoredKey, KeyError> {
        self.call(move |w| w.generate(role, version))
    }

    fn sign_digest(&self, kid: &Kid, digest: &[u8; 32]) -> Result<EcdsaSignature, KeyError> {
        let (kid, digest) = (*kid, *digest);
        self.call(move |w| w.sign(kid, digest))
    }

    fn ecdh(&self, kid: &Kid, peer: &EcPublicKey) -> Result<SharedSecret, KeyError> {
        let (kid, peer) = (*kid, peer.clone());
        self.call(move |w| w.ecdh(kid, &peer))
    }

    /// Marks the key retired in its file and unloads it; signing and ECDH
    /// then refuse it.
    ///
    /// A TPM cannot change the attributes of an existing object, so "disabling
    /// the private key on the device" is enforced here rather than by the TPM.
    /// The private blob is kept on purpose: the file is the record that the
    /// key existed, and deleting it would not revoke anything (a copy of the
    /// blob still loads).
    fn retire(&self, kid: &Kid) -> Result<(), KeyError> {
        let kid = *kid;
        self.call(move |w| w.retire(kid))
    }

    fn ping(&self) -> Result<(), KeyError> {
        self.call(|w| w.ping())
    }
}

/// Everything the worker thread owns.
struct Worker {
    tcti: String,
    conf: TctiNameConf,
    key_dir: PathBuf,
    auth: Option<Zeroizing<Vec<u8>>>,
    conn: Option<Conn>,
    /// When the last connect was attempted, for throttling.
    last_attempt: Option<Instant>,
    /// Why the connection was lost or the last connect failed (no secrets).
    last_failure: String,
    /// Parsed key files by kid, revalidated against the file's metadata on use
    /// so that a retire done by another process is seen at once.
    records: HashMap<Kid, Arc<KeyRecord>>,
    /// Foreign files already warned about.
    skipped: HashSet<PathBuf>,
}

/// A live connection: the context, the re-derived primary and the loaded keys.
/// Dropping it drops the context, which flushes every handle it loaded.
struct Conn {
    ctx: Context,
    primary: KeyHandle,
    loaded: Lru,
    auth: Option<Auth>,
}

/// Why a TPM command failed, as far as recovery is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The connection or the TPM itself is gone or was reset.
    Lost,
    /// The TPM no longer knows a handle we hold (reset under a resource manager).
    Stale,
    /// No room for another loaded object.
    ObjectMemory,
    /// The key's auth value was rejected.
    AuthFailed,
    /// Dictionary-attack lockout.
    Lockout,
    Other,
}

enum OpError {
    Tpm {
        op: &'static str,
        err: tss_esapi::Error,
    },
    Key(KeyError),
}

impl From<KeyError> for OpError {
    fn from(e: KeyError) -> Self {
        OpError::Key(e)
    }
}

fn tpm(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> OpError {
    move |err| OpError::Tpm { op, err }
}

impl Worker {
    fn serve(&mut self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            if Instant::now() >= job.deadline {
                continue;
            }
            let run = job.run;
            if catch_unwind(AssertUnwindSafe(|| run(self))).is_err() {
                // The context may be mid-command; start over on a fresh one.
                tracing::error!(tcti = %self.tcti, "TPM request panicked; resetting the connection");
                self.conn = None;
            }
        }
    }

    fn unavailable(&self, detail: impl Into<String>) -> KeyError {
        let mut detail = detail.into();
        if detail.is_empty() {
            detail = "not connected; reconnecting".into();
        }
        KeyError::Unavailable {
            backend: format!("tpm {}", self.tcti),
            detail,
        }
    }

    /// The first connect, whose failure fails `open`. Returns a one-line
    /// description of the TPM.
    fn initial_connect(&mut self) -> Result<String, KeyError> {
        self.last_attempt = Some(Instant::now());
        match Conn::connect(&self.conf, self.auth.as_ref().map(|a| a.as_slice())) {
            Ok(mut conn) => {
                let description = conn.describe(&self.tcti);
                tracing::info!(
                    tcti = %self.tcti,
                    cached_keys = conn.loaded.cap,
                    "TPM connected; storage primary derived"
                );
                self.conn = Some(conn);
                Ok(description)
            }
            Err(OpError::Key(e)) => Err(e),
            Err(OpError::Tpm { op, err }) => Err(match classify(&err) {
                Class::Lost => KeyError::TpmUnreachable {
                    tcti: self.tcti.clone(),
                    detail: format!("{op}: {}", describe(&err)),
                },
                _ => KeyError::Device {
                    op,
                    detail: describe(&err),
                },
            }),
        }
    }

    /// Connects if there is no connection, at most once per
    /// [`RECONNECT_INTERVAL`] unless `force`.
    fn ensure_connected(&mut self, force: bool) -> Result<(), KeyError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if !force
            && let Some(at) = self.last_attempt
            && at.elapsed() < RECONNECT_INTERVAL
        {
            return Err(self.unavailable(self.last_failure.clone()));
        }
        self.last_attempt = Some(Instant::now());
        match Conn::connect(&self.conf, self.auth.as_ref().map(|a| a.as_slice())) {
            Ok(conn) => {
                tracing::info!(tcti = %self.tcti, "TPM reconnected; storage primary re-derived");
                self.conn = Some(conn);
                self.last_failure.clear();
                Ok(())
            }
            Err(OpError::Key(e)) => Err(e),
            Err(OpError::Tpm { op, err }) => {
                self.last_failure = format!("reconnect failed: {op}: {}", describe(&err));
                tracing::warn!(tcti = %self.tcti, detail = %self.last_failure, "TPM unavailable");
                Err(self.unavailable(self.last_failure.clone()))
            }
        }
    }

    fn drop_connection(&mut self, why: String) {
        if self.conn.take().is_some() {
            tracing::warn!(tcti = %self.tcti, detail = %why, "TPM connection lost; will reconnect");
        }
        self.last_failure = why;
    }

    /// Runs `f` on a live connection. A connection that breaks under `f` is
    /// dropped and, if it predates this request, `f` is retried once on a
    /// fresh one: the TPM may simply have restarted since the last request.
    fn with_conn<T>(
        &mut self,
        mut f: impl FnMut(&mut Conn) -> Result<T, OpError>,
    ) -> Result<T, KeyError> {
        let fresh = self.conn.is_none();
        self.ensure_connected(false)?;
        let first = match self.conn.as_mut() {
            Some(conn) => f(conn),
            None => return Err(self.unavailable(self.last_failure.clone())),
        };
        match first {
            Ok(v) => return Ok(v),
            Err(e) => match self.settle(e) {
                Settled::Retry(e) if !fresh => {
                    tracing::debug!(tcti = %self.tcti, error = %e, "retrying on a new TPM connection");
                }
                Settled::Retry(e) | Settled::Fail(e) => return Err(e),
            },
        }
        self.ensure_connected(true)?;
        let second = match self.conn.as_mut() {
            Some(conn) => f(conn),
            None => return Err(self.unavailable(self.last_failure.clone())),
        };
        second.map_err(|e| match self.settle(e) {
            Settled::Retry(e) | Settled::Fail(e) => e,
        })
    }

    /// Turns a failed operation into the caller's error, dropping the
    /// connection when the failure was the connection's.
    fn settle(&mut self, e: OpError) -> Settled {
        match e {
            OpError::Key(e) => Settled::Fail(e),
            OpError::Tpm { op, err } => {
                let class = classify(&err);
                let detail = format!("{op}: {}", describe(&err));
                match class {
                    Class::Lost | Class::Stale => {
                        self.drop_connection(detail.clone());
                        Settled::Retry(self.unavailable(detail))
                    }
                    Class::Lockout => Settled::Fail(KeyError::Device {
                        op,
                        detail: "the TPM is in dictionary-attack lockout after repeated \
                                 wrong auth values; wait for its recovery time or reset \
                                 the lockout with the lockout authorization"
                            .into(),
                    }),
                    _ => Settled::Fail(KeyError::Device {
                        op,
                        detail: describe(&err),
                    }),
                }
            }
        }
    }

    // ---- requests ----------------------------------------------------------

    fn list(&mut self) -> Result<Vec<StoredKey>, KeyError> {
        let records = self.scan()?;
        let auth_set = self.auth.is_some();
        self.with_conn(|conn| {
            let mut out = Vec::with_capacity(records.len());
            for rec in &records {
                let handle = conn.handle(rec).map_err(|e| rec.blame(e, auth_set))?;
                let (public, _, _) = conn
                    .ctx
                    .execute_without_session(|c| c.read_public(handle))
                    .map_err(tpm("read public area"))?;
                let point = ec_point(&public).map_err(|d| rec.corrupt(&d))?;
                if Kid::of(&point) != rec.file.kid {
                    return Err(OpError::Key(
                        rec.corrupt("the stored kid does not match the key the TPM loaded"),
                    ));
                }
                out.push(StoredKey {
                    kid: rec.file.kid,
                    role: rec.file.role,
                    version: rec.file.version,
                    label: key_label(rec.file.role, rec.file.version),
                    retired: rec.file.retired,
                    public: point,
                    attributes: attributes_of(&public),
                });
            }
            Ok(out)
        })
    }

    fn generate(&mut self, role: Role, version: u32) -> Result<StoredKey, KeyError> {
        if version == 0 {
            return Err(KeyError::Device {
                op: "generate",
                detail: "key versions start at 1".into(),
            });
        }
        let template = child_template(role, self.auth.is_none()).map_err(|e| KeyError::Device {
            op: "generate",
            detail: format!("building the key template: {}", describe(&e)),
        })?;
        let (public, private) = self.with_conn(|conn| conn.create(template.clone()))?;
        let point = ec_point(&public).map_err(|detail| KeyError::Device {
            op: "generate",
            detail,
        })?;
        let kid = Kid::of(&point);
        let file = KeyFile {
            format: FORMAT.into(),
            role,
            version,
            kid,
            retired: false,
            created: rfc3339(SystemTime::now()),
            retired_at: None,
            public: B64.encode(marshal_public(&public).map_err(|e| KeyError::Device {
                op: "generate",
                detail: format!("marshalling the public area: {}", describe(&e)),
            })?),
            private: B64.encode(marshal_private(&private)),
        };
        let path = self.key_dir.join(file_name(role, version, &kid));
        write_key_file(&path, &file)?;
        let rec = KeyRecord::read(&path)?;
        self.records.insert(kid, Arc::new(rec));
        tracing::info!(%kid, %role, version, "TPM key generated");
        Ok(StoredKey {
            kid,
            role,
            version,
            label: key_label(role, version),
            retired: false,
            public: point,
            attributes: attributes_of(&public),
        })
    }

    fn sign(&mut self, kid: Kid, digest: [u8; 32]) -> Result<EcdsaSignature, KeyError> {
        let rec = self.usable(kid, Purpose::Sign, "signing")?;
        let auth_set = self.auth.is_some();
        let signature = self.with_conn(|conn| {
            let handle = conn.handle(&rec).map_err(|e| rec.blame(e, auth_set))?;
            conn.sign(handle, &digest)
                .map_err(|e| rec.blame(e, auth_set))
        })?;
        match signature {
            Signature::EcDsa(sig) => {
                EcdsaSignature::from_scalars(sig.signature_r().value(), sig.signature_s().value())
            }
            other => Err(KeyError::Device {
                op: "sign",
                detail: format!("the TPM returned a {:?} signature", other.algorithm()),
            }),
        }
    }

    fn ecdh(&mut self, kid: Kid, peer: &EcPublicKey) -> Result<SharedSecret, KeyError> {
        let rec = self.usable(kid, Purpose::KeyAgreement, "key agreement")?;
        let auth_set = self.auth.is_some();
        let point = EccPoint::new(
            EccParameter::try_from(peer.x()).map_err(ecdh_input)?,
            EccParameter::try_from(peer.y()).map_err(ecdh_input)?,
        );
        let z = self.with_conn(|conn| {
            let handle = conn.handle(&rec).map_err(|e| rec.blame(e, auth_set))?;
            let point = point.clone();
            conn.ctx
                .execute_with_session(Some(AuthSession::Password), |c| c.ecdh_z_gen(handle, point))
                .map_err(tpm("ECDH"))
                .map_err(|e| rec.blame(e, auth_set))
        })?;
        SharedSecret::from_slice(z.x().value())
    }

    fn retire(&mut self, kid: Kid) -> Result<(), KeyError> {
        let rec = self.record(kid)?;
        if !rec.file.retired {
            let mut file = rec.file.clone();
            file.retired = true;
            file.retired_at = Some(rfc3339(SystemTime::now()));
            write_key_file(&rec.path, &file)?;
            let fresh = KeyRecord::read(&rec.path)?;
            self.records.insert(kid, Arc::new(fresh));
            tracing::info!(%kid, role = %rec.file.role, version = rec.file.version, "TPM key retired");
        }
        if let Some(conn) = self.conn.as_mut()
            && let Err(OpError::Tpm { op, err }) = conn.unload(&kid)
        {
            // The flag on disk is what refuses the key; a failed flush only
            // means the connection is suspect.
            let detail = format!("{op}: {}", describe(&err));
            tracing::warn!(%kid, %detail, "could not unload the retired key");
            if matches!(classify(&err), Class::Lost | Class::Stale) {
                self.drop_connection(detail);
            }
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<(), KeyError> {
        self.with_conn(|conn| {
            conn.ctx
                .execute_without_session(|c| {
                    c.get_capability(
                        CapabilityType::TpmProperties,
                        PropertyTag::HrTransientAvail.into(),
                        1,
                    )
                })
                .map(|_| ())
                .map_err(tpm("ping"))
        })
    }

    // ---- key files ---------------------------------------------------------

    /// A key that exists, is not retired and may do `purpose`.
    fn usable(
        &mut self,
        kid: Kid,
        purpose: Purpose,
        operation: &'static str,
    ) -> Result<Arc<KeyRecord>, KeyError> {
        let rec = self.record(kid)?;
        if rec.file.role.purpose() != purpose {
            return Err(KeyError::WrongPurpose {
                kid,
                role: rec.file.role,
                operation,
            });
        }
        if rec.file.retired {
            return Err(KeyError::Retired(kid));
        }
        Ok(rec)
    }

    /// The current record for `kid`: the cached parse if the file has not
    /// changed since, else a re-read; an unknown kid rescans the directory
    /// (another process may have generated it).
    fn record(&mut self, kid: Kid) -> Result<Arc<KeyRecord>, KeyError> {
        if let Some(rec) = self.records.get(&kid).cloned() {
            match fs::metadata(&rec.path) {
                Ok(meta) if FileStamp::of(&meta) == rec.stamp => return Ok(rec),
                Ok(_) => {
                    let fresh = Arc::new(KeyRecord::read(&rec.path)?);
                    if fresh.file.kid == kid {
                        self.records.insert(kid, fresh.clone());
                        return Ok(fresh);
                    }
                    self.records.remove(&kid);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.records.remove(&kid);
                }
                Err(e) => {
                    return Err(KeyError::Io(format!(
                        "cannot read TPM key file {}: {e}",
                        rec.path.display()
                    )));
                }
            }
        }
        self.scan()?;
        self.records
            .get(&kid)
            .cloned()
            .ok_or(KeyError::KeyNotFound(kid))
    }

    /// Reads every key file, reusing parses of unchanged files, and rebuilds
    /// the index. Sorted by role, version, kid.
    fn scan(&mut self) -> Result<Vec<Arc<KeyRecord>>, KeyError> {
        let dir_err = |e: io::Error| {
            KeyError::Io(format!(
                "cannot read TPM key directory {}: {e}",
                self.key_dir.display()
            ))
        };
        let mut by_path: HashMap<PathBuf, Arc<KeyRecord>> = self
            .records
            .values()
            .map(|r| (r.path.clone(), r.clone()))
            .collect();
        let mut found: HashMap<Kid, Arc<KeyRecord>> = HashMap::new();
        let mut skipped: Vec<(PathBuf, &'static str)> = Vec::new();
        for entry in fs::read_dir(&self.key_dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                skipped.push((path, "name is not UTF-8"));
                continue;
            };
            if name.starts_with('.') {
                // Our own in-flight temporary files, editor swap files.
                continue;
            }
            if !(name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX)) {
                skipped.push((path, "not named signet-*.json"));
                continue;
            }
            let meta = fs::metadata(&path).map_err(|e| {
                KeyError::Io(format!("cannot read TPM key file {}: {e}", path.display()))
            })?;
            if !meta.is_file() {
                skipped.push((path, "not a regular file"));
                continue;
            }
            let rec = match by_path.remove(&path) {
                Some(rec) if rec.stamp == FileStamp::of(&meta) => rec,
                _ => Arc::new(KeyRecord::read(&path)?),
            };
            if let Some(other) = found.get(&rec.file.kid) {
                return Err(KeyError::Io(format!(
                    "TPM key files {} and {} hold the same key {}; keep one",
                    other.path.display(),
                    path.display(),
                    rec.file.kid
                )));
            }
            found.insert(rec.file.kid, rec);
        }
        self.records = found;
        for (path, why) in skipped {
            // Once per file: list() runs often and the file will not go away.
            if self.skipped.insert(path.clone()) {
                tracing::warn!(file = %path.display(), reason = why, "skipping a file in the TPM key directory that is not a signet key file");
            }
        }
        let mut all: Vec<_> = self.records.values().cloned().collect();
        all.sort_by_key(|r| (r.file.role, r.file.version, r.file.kid));
        Ok(all)
    }
}

enum Settled {
    /// The connection was at fault and has been dropped; a retry may succeed.
    Retry(KeyError),
    Fail(KeyError),
}

fn ecdh_input(_: tss_esapi::Error) -> KeyError {
    KeyError::InvalidPublicKey("peer point does not fit a TPM ECC parameter".into())
}

impl Conn {
    /// Connects and re-derives the primary. Any previous connection must be
    /// gone first: swtpm serves one client at a time and would queue this
    /// one behind it.
    fn connect(conf: &TctiNameConf, auth: Option<&[u8]>) -> Result<Conn, OpError> {
        let auth = auth.map(Auth::try_from).transpose().map_err(|_| {
            KeyError::PinSource("the TPM auth value does not fit a TPM2B_AUTH".into())
        })?;
        let mut ctx = Context::new(conf.clone()).map_err(tpm("connect"))?;
        let template = primary_template().map_err(tpm("build the storage primary template"))?;
        let primary = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(tpm("derive the storage primary"))?
            .key_handle;
        let cap = match ctx.get_tpm_property(PropertyTag::HrTransientMin) {
            Ok(Some(n)) => (n as usize).saturating_sub(1).clamp(1, MAX_CACHE),
            Ok(None) => DEFAULT_CACHE,
            Err(e) => return Err(tpm("read TPM_PT_HR_TRANSIENT_MIN")(e)),
        };
        Ok(Conn {
            ctx,
            primary,
            loaded: Lru::new(cap),
            auth,
        })
    }

    /// "TPM 2.0 IBM fw 0x20191023 via swtpm:host=..., 2 loaded keys cached",
    /// so logs and `hsm list` say which TPM answered.
    fn describe(&mut self, tcti: &str) -> String {
        let vendor = match self.ctx.get_tpm_property(PropertyTag::Manufacturer) {
            Ok(Some(v)) => {
                let text: String = v
                    .to_be_bytes()
                    .iter()
                    .filter(|b| b.is_ascii_graphic())
                    .map(|b| char::from(*b))
                    .collect();
                if text.is_empty() {
                    "unknown vendor".to_string()
                } else {
                    text
                }
            }
            _ => "unknown vendor".to_string(),
        };
        let firmware = match self.ctx.get_tpm_property(PropertyTag::FirmwareVersion1) {
            // Vendor-defined encoding: show it raw.
            Ok(Some(v)) => format!(" fw {v:#010x}"),
            _ => String::new(),
        };
        format!(
            "TPM 2.0 {vendor}{firmware} via {tcti}, {} loaded keys cached",
            self.loaded.cap
        )
    }

    /// The loaded handle for a key: from the cache, or loaded now (evicting
    /// the least recently used key when the TPM has no room).
    fn handle(&mut self, rec: &KeyRecord) -> Result<KeyHandle, OpError> {
        if let Some(h) = self.loaded.get(&rec.file.kid) {
            return Ok(h);
        }
        if self.loaded.is_full() {
            self.evict_lru()?;
        }
        let handle = loop {
            let (private, public) = (rec.private.clone(), rec.public.clone());
            let primary = self.primary;
            match self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.load(primary, private, public)
                }) {
                Ok(h) => break h,
                Err(e) if classify(&e) == Class::ObjectMemory && !self.loaded.is_empty() => {
                    self.evict_lru()?;
                }
                Err(e) => return Err(tpm("load key")(e)),
            }
        };
        if let Some(auth) = &self.auth
            && let Err(e) = self.ctx.tr_set_auth(handle.into(), auth.clone())
        {
            let _ = self.ctx.flush_context(handle.into());
            return Err(tpm("set key auth")(e));
        }
        self.loaded.insert(rec.file.kid, handle);
        Ok(handle)
    }

    fn evict_lru(&mut self) -> Result<(), OpError> {
        if let Some((_, h)) = self.loaded.pop_lru() {
            self.ctx.flush_context(h.into()).map_err(tpm("flush key"))?;
        }
        Ok(())
    }

    fn unload(&mut self, kid: &Kid) -> Result<(), OpError> {
        if let Some(h) = self.loaded.remove(kid) {
            self.ctx.flush_context(h.into()).map_err(tpm("flush key"))?;
        }
        Ok(())
    }

    fn create(&mut self, template: Public) -> Result<(Public, Private), OpError> {
        let auth = self.auth.clone();
        let primary = self.primary;
        loop {
            // TPM2_Create needs a free object slot for the key it builds.
            match self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.create(primary, template.clone(), auth.clone(), None, None, None)
                }) {
                Ok(r) => return Ok((r.out_public, r.out_private)),
                Err(e) if classify(&e) == Class::ObjectMemory && !self.loaded.is_empty() => {
                    self.evict_lru()?;
                }
                Err(e) => return Err(tpm("create key")(e)),
            }
        }
    }

    fn sign(&mut self, handle: KeyHandle, digest: &[u8; 32]) -> Result<Signature, OpError> {
        let digest = Digest::try_from(&digest[..]).map_err(tpm("sign"))?;
        // An unrestricted key signs any digest; the ticket only matters for
        // restricted keys, so the null ticket is the right one.
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(tpm("sign"))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.sign(handle, digest, scheme, ticket)
            })
            .map_err(tpm("sign"))
    }
}

/// A tiny LRU of loaded key handles; capacity is a handful, so a vector
/// ordered from least to most recently used is all it needs.
struct Lru {
    cap: usize,
    entries: Vec<(Kid, KeyHandle)>,
}

impl Lru {
    fn new(cap: usize) -> Lru {
        Lru {
            cap,
            entries: Vec::with_capacity(cap),
        }
    }

    fn get(&mut self, kid: &Kid) -> Option<KeyHandle> {
        let pos = self.entries.iter().position(|(k, _)| k == kid)?;
        let entry = self.entries.remove(pos);
        self.entries.push(entry);
        Some(entry.1)
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= self.cap
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn pop_lru(&mut self) -> Option<(Kid, KeyHandle)> {
        if self.entries.is_empty() {
            None
        } else {
            Some(self.entries.remove(0))
        }
    }

    fn insert(&mut self, kid: Kid, handle: KeyHandle) {
        self.entries.push((kid, handle));
    }

    fn remove(&mut self, kid: &Kid) -> Option<KeyHandle> {
        let pos = self.entries.iter().position(|(k, _)| k == kid)?;
        Some(self.entries.remove(pos).1)
    }
}

// ---- templates ---------------------------------------------------------------

/// The TCG Provisioning Guidance ECC P-256 storage-key ("SRK") template:
/// fixed, so every start derives the same primary, and standard, so the key
/// files can be inspected with tpm2-tools under the same primary
/// (`tpm2_createprimary -C o -g sha256 -G ecc256:null:aes128cfb -a
/// 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt'
/// -u UNIQUE`, UNIQUE being x and y of 32 zero bytes, then `tpm2_load`).
fn primary_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(vec![0u8; 32])?,
            EccParameter::try_from(vec![0u8; 32])?,
        ))
        .build()
}

/// Least privilege: a signing role's key can only sign (ECDSA-SHA256 fixed in
/// the key), the encryption role's key can only do ECDH (ECDH scheme, no sign
/// attribute). `no_da` is set only
/// when the key has no auth value: dictionary-attack protection then guards
/// nothing, and a lockout (which a few power cuts can trigger) would only
/// stop signing.
fn child_template(role: Role, no_auth: bool) -> tss_esapi::Result<Public> {
    let sign = role.purpose() == Purpose::Sign;
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(no_auth)
        .with_sign_encrypt(sign)
        .with_decrypt(!sign)
        .build()?;
    // Pinning the scheme (rather than leaving it null) also rules out the
    // other uses a null-scheme key allows: ECDAA/Schnorr signing, ECMQV.
    let scheme = if sign {
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256))
    } else {
        EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha256))
    };
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_ecc_scheme(scheme)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(sign)
                .with_is_decryption_key(!sign)
                .with_restricted(false)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The P-256 point of an ECC public area.
fn ec_point(public: &Public) -> Result<EcPublicKey, String> {
    match public {
        Public::Ecc {
            parameters, unique, ..
        } => {
            if parameters.ecc_curve() != EccCurve::NistP256 {
                return Err(format!(
                    "curve {:?}, expected P-256",
                    parameters.ecc_curve()
                ));
            }
            EcPublicKey::from_xy(unique.x().value(), unique.y().value()).map_err(|e| e.to_string())
        }
        _ => Err("not an ECC key".into()),
    }
}

/// Protection attributes as the TPM states them in the public area. The
/// private part only ever leaves the TPM encrypted under the storage key, so
/// it is always sensitive; it can leave in a usable form only by duplication,
/// which fixedTPM and fixedParent forbid.
fn attributes_of(public: &Public) -> DeviceAttributes {
    let a = public.object_attributes();
    let fixed = a.fixed_tpm() && a.fixed_parent();
    DeviceAttributes {
        sensitive: Some(true),
        extractable: Some(!fixed),
        never_extractable: Some(fixed),
        always_sensitive: Some(true),
        local: Some(a.sensitive_data_origin()),
        persistent: Some(true),
    }
}

/// Whether a role's key has exactly the attributes its purpose allows.
fn matches_purpose(role: Role, public: &Public) -> bool {
    let a = public.object_attributes();
    match role.purpose() {
        Purpose::Sign => a.sign_encrypt() && !a.decrypt() && !a.restricted(),
        Purpose::KeyAgreement => a.decrypt() && !a.sign_encrypt() && !a.restricted(),
    }
}

// ---- errors --------------------------------------------------------------------

fn raw_rc(e: &tss_esapi::Error) -> Option<u32> {
    match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(c)) => Some(c.0),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(c)) => Some(c.0),
        _ => None,
    }
}

fn classify(e: &tss_esapi::Error) -> Class {
    let Some(rc) = raw_rc(e) else {
        return Class::Other;
    };
    let layer = (rc >> 16) & 0xff;
    match layer {
        LAYER_TCTI => Class::Lost,
        LAYER_ESAPI | LAYER_SYS => match rc & 0xffff {
            BASE_GENERAL_FAILURE
            | BASE_BAD_SEQUENCE
            | BASE_NO_CONNECTION
            | BASE_TRY_AGAIN
            | BASE_IO_ERROR
            | BASE_MALFORMED_RESPONSE
            | BASE_INSUFFICIENT_RESPONSE => Class::Lost,
            _ => Class::Other,
        },
        LAYER_TPM | LAYER_RESMGR | LAYER_RESMGR_TPM => {
            let tss_esapi::Error::Tss2Error(code) = e else {
                return Class::Other;
            };
            use Tss2ResponseCodeKind as K;
            match code.kind() {
                Some(K::Initialize | K::Failure | K::Reboot) => Class::Lost,
                Some(
                    K::Handle
                    | K::ReferenceH0
                    | K::ReferenceH1
                    | K::ReferenceH2
                    | K::ReferenceH3
                    | K::ReferenceH4
                    | K::ReferenceH5
                    | K::ReferenceH6,
                ) => Class::Stale,
                Some(K::ObjectMemory | K::ObjectHandles) => Class::ObjectMemory,
                Some(K::AuthFail | K::BadAuth) => Class::AuthFailed,
                Some(K::Lockout) => Class::Lockout,
                _ => Class::Other,
            }
        }
        _ => Class::Other,
    }
}

/// A one-line, secret-free description of a TSS error. tss-esapi's own text
/// decodes every code as if it came from the TPM, which is wrong for TSS
/// and TCTI errors, so those are named by layer.
fn describe(e: &tss_esapi::Error) -> String {
    let Some(rc) = raw_rc(e) else {
        return e.to_string();
    };
    match (rc >> 16) & 0xff {
        LAYER_TPM => format!("{e} (TPM rc {rc:#x})"),
        LAYER_TCTI => match rc & 0xffff {
            BASE_IO_ERROR => format!("TPM connection broken (TCTI I/O error, rc {rc:#x})"),
            BASE_NO_CONNECTION => format!("no connection to the TPM (rc {rc:#x})"),
            _ => format!("TPM transport (TCTI) error rc {rc:#x}"),
        },
        LAYER_ESAPI | LAYER_SYS => format!("TSS error rc {rc:#x}"),
        LAYER_RESMGR | LAYER_RESMGR_TPM => format!("resource manager: {e} (rc {rc:#x})"),
        _ => format!("TSS error rc {rc:#x}"),
    }
}

// ---- key files -----------------------------------------------------------------

/// On-disk form of one child key.
#[derive(Clone, Serialize, Deserialize)]
struct KeyFile {
    format: String,
    role: Role,
    version: u32,
    kid: Kid,
    retired: bool,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<String>,
    /// base64 of the marshalled TPM2B_PUBLIC.
    public: String,
    /// base64 of the marshalled TPM2B_PRIVATE (encrypted under the primary).
    private: String,
}

/// Identity of a file's current content, cheap to compare on every use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// A parsed, validated key file.
struct KeyRecord {
    path: PathBuf,
    stamp: FileStamp,
    file: KeyFile,
    public: Public,
    private: Private,
}

impl KeyRecord {
    fn read(path: &Path) -> Result<KeyRecord, KeyError> {
        let shown = path.display();
        let mut f = fs::File::open(path)
            .map_err(|e| KeyError::Io(format!("cannot read TPM key file {shown}: {e}")))?;
        let meta = f
            .metadata()
            .map_err(|e| KeyError::Io(format!("cannot read TPM key file {shown}: {e}")))?;
        let corrupt =
            |detail: &str| KeyError::Io(format!("corrupt TPM key file {shown}: {detail}"));
        if meta.len() > MAX_KEY_FILE {
            return Err(corrupt(&format!("larger than {MAX_KEY_FILE} bytes")));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        Read::by_ref(&mut f)
            .take(MAX_KEY_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| KeyError::Io(format!("cannot read TPM key file {shown}: {e}")))?;
        let file: KeyFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&format!("not valid JSON: {e}")))?;
        if file.format != FORMAT {
            return Err(corrupt(&format!(
                "format {:?}, expected {FORMAT:?}",
                file.format.chars().take(40).collect::<String>()
            )));
        }
        if file.version == 0 {
            return Err(corrupt("version 0 (versions start at 1)"));
        }
        let public_bytes = B64
            .decode(&file.public)
            .map_err(|_| corrupt("public is not base64"))?;
        let public = PublicBuffer::unmarshall(&public_bytes)
            .and_then(Public::try_from)
            .map_err(|_| corrupt("public is not a TPM2B_PUBLIC"))?;
        let private_bytes = B64
            .decode(&file.private)
            .map_err(|_| corrupt("private is not base64"))?;
        let private = unmarshal_private(&private_bytes)
            .ok_or_else(|| corrupt("private is not a TPM2B_PRIVATE"))?;
        let point = ec_point(&public).map_err(|d| corrupt(&d))?;
        if Kid::of(&point) != file.kid {
            return Err(corrupt("the kid does not match the public key"));
        }
        if !matches_purpose(file.role, &public) {
            return Err(corrupt(&format!(
                "the key's TPM attributes do not fit role {}",
                file.role
            )));
        }
        Ok(KeyRecord {
            path: path.to_path_buf(),
            stamp: FileStamp::of(&meta),
            file,
            public,
            private,
        })
    }

    fn corrupt(&self, detail: &str) -> KeyError {
        KeyError::Io(format!(
            "corrupt TPM key file {}: {detail}",
            self.path.display()
        ))
    }

    /// Names the key (and, for a blob the TPM refuses, the file) in errors a
    /// request cannot recover from by reconnecting.
    fn blame(&self, e: OpError, auth_set: bool) -> OpError {
        let OpError::Tpm { op, err } = &e else {
            return e;
        };
        match classify(err) {
            Class::AuthFailed => OpError::Key(KeyError::WrongPin(format!(
                "TPM key {} ({}): the TPM rejected the {} auth value",
                self.file.kid,
                self.file.role,
                if auth_set {
                    "configured"
                } else {
                    "empty (no auth_file or auth_env set)"
                }
            ))),
            Class::Other if *op == "load key" => OpError::Key(KeyError::Device {
                op: "load key",
                detail: format!(
                    "TPM key file {} does not load under this TPM's storage key \
                     (made on another TPM, or the owner hierarchy was cleared?): {}",
                    self.path.display(),
                    describe(err)
                ),
            }),
            _ => e,
        }
    }
}

fn file_name(role: Role, version: u32, kid: &Kid) -> String {
    format!("{FILE_PREFIX}{role}-v{version}-{kid}{FILE_SUFFIX}")
}

fn marshal_public(public: &Public) -> tss_esapi::Result<Vec<u8>> {
    PublicBuffer::try_from(public.clone())?.marshall()
}

/// TPM2B_PRIVATE on the wire: a big-endian u16 size, then the bytes.
fn marshal_private(private: &Private) -> Vec<u8> {
    let body = private.value();
    let mut out = Vec::with_capacity(2 + body.len());
    // Private::MAX_SIZE is far below u16::MAX, so the length always fits.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn unmarshal_private(bytes: &[u8]) -> Option<Private> {
    let (len, body) = bytes.split_first_chunk::<2>()?;
    if usize::from(u16::from_be_bytes(*len)) != body.len() || body.is_empty() {
        return None;
    }
    Private::try_from(body).ok()
}

/// Writes the file so that a crash leaves either the old or the new content,
/// never a torn one: temporary file, fsync, rename, fsync the directory.
fn write_key_file(path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let shown = path.display();
    let err = |e: io::Error| KeyError::Io(format!("cannot write TPM key file {shown}: {e}"));
    let dir = path
        .parent()
        .ok_or_else(|| KeyError::Io(format!("TPM key file {shown} has no directory")))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| KeyError::Io(format!("TPM key file {shown} has no name")))?;
    let mut json = serde_json::to_vec_pretty(file)
        .map_err(|e| KeyError::Io(format!("cannot encode TPM key file {shown}: {e}")))?;
    json.push(b'\n');
    let tmp = dir.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Creates the key directory owner-only if it is missing. An existing
/// directory is left as the operator set it up.
fn ensure_key_dir(dir: &Path) -> Result<(), KeyError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            KeyError::Io(format!(
                "cannot create TPM key directory {}: {e}",
                dir.display()
            ))
        })
}

fn read_auth(source: Option<&SecretSource>) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    let Some(source) = source else {
        return Ok(None);
    };
    let secret = source.read()?;
    if secret.len() > MAX_AUTH_LEN {
        return Err(KeyError::PinSource(format!(
            "{source:?}: a TPM auth value is at most {MAX_AUTH_LEN} bytes"
        )));
    }
    Ok(Some(Zeroizing::new(secret.as_bytes().to_vec())))
}

/// UTC timestamp in RFC 3339 form, whole seconds.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::rfc3339::format(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn private_blob_round_trips_and_rejects_bad_lengths() {
        let private = Private::try_from(vec![1u8, 2, 3]).unwrap();
        let bytes = marshal_private(&private);
        assert_eq!(bytes, [0, 3, 1, 2, 3]);
        assert_eq!(unmarshal_private(&bytes).unwrap().value(), &[1, 2, 3]);
        assert!(unmarshal_private(&[0, 4, 1, 2, 3]).is_none());
        assert!(unmarshal_private(&[0]).is_none());
        assert!(unmarshal_private(&[0, 0]).is_none());
    }

    #[test]
    fn templates_give_each_role_one_purpose() {
        for role in Role::ALL {
            let public = child_template(role, true).unwrap();
            assert!(matches_purpose(role, &public), "{role}");
            let a = public.object_attributes();
            assert!(a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin());
            assert!(a.user_with_auth() && a.no_da());
            assert!(
                !child_template(role, false)
                    .unwrap()
                    .object_attributes()
                    .no_da()
            );
        }
        let a = primary_template().unwrap().object_attributes();
        assert!(a.restricted() && a.decrypt() && !a.sign_encrypt());
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let kid = |n: u8| Kid::from_bytes(&[n; 16]).unwrap();
        let h = |n: u32| KeyHandle::from(tss_esapi::handles::ObjectHandle::from(0x8000_0000 + n));
        let mut lru = Lru::new(2);
        lru.insert(kid(1), h(1));
        lru.insert(kid(2), h(2));
        assert!(lru.is_full());
        assert_eq!(lru.get(&kid(1)), Some(h(1)));
        assert_eq!(lru.pop_lru().map(|e| e.0), Some(kid(2)));
        assert_eq!(lru.remove(&kid(1)), Some(h(1)));
        assert!(lru.is_empty());
    }

    #[test]
    fn tcti_errors_count_as_lost_connections() {
        let io = tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(
            tss_esapi::constants::response_code::FormatZeroResponseCode(0x000a_000a),
        ));
        assert_eq!(classify(&io), Class::Lost);
        assert!(describe(&io).contains("connection"));
    }
}
