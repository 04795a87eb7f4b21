//! PKCS#11 backend (cryptoki): a pool of worker threads, each owning one
//! session on the token.
//!
//! # Why a pool
//!
//! A PKCS#11 session is not safe to share between threads, and signing
//! throughput grows with the number of sessions up to the number of cores the
//! token can use. Each worker opens its own read-write session, logs in (login
//! state is per token and application, so the second login answering
//! `CKR_USER_ALREADY_LOGGED_IN` is success) and caches the object handles it
//! looks up. Callers hand work to the pool over a channel and block on the
//! reply; none of this touches an async reactor.
//!
//! # Recovery
//!
//! When the token vanishes or is re-initialized, operations fail with
//! [`KeyError::Unavailable`] straight away (no retry loop on the request path).
//! The first failure marks the connection down; the next operation, at most
//! every [`RECONNECT_INTERVAL`], runs `C_Finalize` + `C_Initialize`, finds the
//! token again by label or serial and logs in again. Workers notice the new
//! connection generation and reopen their sessions. No process restart.
//!
//! `C_Finalize` tears down the library's state for the whole process, so no
//! call may be inside the library while it runs: every operation holds
//! `MODULE` shared, a reconnect holds it exclusively. Sessions of a
//! finalized connection are let go without `C_CloseSession`: finalizing
//! closed them, and after `C_Initialize` their handle numbers are handed out
//! again, so closing an old handle would close another worker's new session.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::Decode;
use zeroize::Zeroizing;

use super::profile::Pkcs11Settings;
use super::{
    DeviceAttributes, EcPublicKey, EcdsaSignature, KeyBackend, KeyError, Kid, Purpose, Role,
    SharedSecret, StoredKey, key_label, parse_key_label,
};

/// The least time between two reconnect attempts, so a dead token costs one
/// `C_Initialize` per interval rather than one per request.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// How often a listing that raced another process writing to the token is
/// read again.
const LIST_ATTEMPTS: u32 = 4;

/// DER of the prime256v1 (P-256) OID, the `CKA_EC_PARAMS` of every signet key.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Suffix appended to the label of a retired key.
const RETIRED_SUFFIX: &str = ":retired";

/// Which token to use. A bare slot number is deliberately not an option: slot
/// ids move when tokens are added (SoftHSM assigns random ones), labels and
/// serials do not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSelector {
    pub label: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
}

/// The parts of an RFC 7512 `pkcs11:` URI signet uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: TokenSelector,
    pub module_path: Option<PathBuf>,
    pub pin_source: Option<PathBuf>,
}

impl TokenSelector {
    pub fn label(label: String) -> TokenSelector {
        TokenSelector {
            label: Some(label),
            ..Default::default()
        }
    }

    pub fn serial(serial: String) -> TokenSelector {
        TokenSelector {
            serial: Some(serial),
            ..Default::default()
        }
    }

    /// Parses an RFC 7512 URI such as
    /// `pkcs11:token=signet;serial=1234?module-path=/usr/lib/x.so&pin-source=file:/run/pin`.
    /// `pin-value` is refused (a PIN does not belong in a URI that ends up in
    /// files and process lists), as are `slot-id` and unknown attributes.
    pub fn parse_uri(uri: &str) -> Result<Pkcs11Uri, String> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or("pkcs11.uri: must start with \"pkcs11:\"")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut token = TokenSelector::default();
        for part in path.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("pkcs11.uri: attribute {part:?} has no value"))?;
            let v = pct_decode(v).map_err(|e| format!("pkcs11.uri: {k}: {e}"))?;
            match k {
                "token" => token.label = Some(v),
                "serial" => token.serial = Some(v),
                "manufacturer" => token.manufacturer = Some(v),
                "model" => token.model = Some(v),
                // Object attributes narrow objects, not tokens; signet picks
                // its objects by role, so they are accepted and ignored.
                "object" | "id" | "type" => {}
                "slot-id" | "slot-description" | "slot-manufacturer" => {
                    return Err(format!(
                        "pkcs11.uri: {k} is not supported; select the token by token= or serial="
                    ));
                }
                other => return Err(format!("pkcs11.uri: unknown attribute {other:?}")),
            }
        }
        if token.label.is_none() && token.serial.is_none() {
            return Err("pkcs11.uri: needs token= or serial=".into());
        }
        let mut module_path = None;
        let mut pin_source = None;
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("pkcs11.uri: query attribute {part:?} has no value"))?;
            let v = pct_decode(v).map_err(|e| format!("pkcs11.uri: {k}: {e}"))?;
            match k {
                "module-path" => module_path = Some(PathBuf::from(v)),
                "pin-source" => {
                    let path = v.strip_prefix("file:").unwrap_or(&v);
                    if !path.starts_with('/') {
                        return Err(
                            "pkcs11.uri: pin-source must be an absolute file path (file:/...)"
                                .into(),
                        );
                    }
                    pin_source = Some(PathBuf::from(path));
                }
                "pin-value" => {
                    return Err(
                        "pkcs11.uri: pin-value is refused; use pin-source=file:/path or pin_env"
                            .into(),
                    );
                }
                "module-name" => {
                    return Err("pkcs11.uri: module-name is not supported; use module-path".into());
                }
                other => return Err(format!("pkcs11.uri: unknown query attribute {other:?}")),
            }
        }
        Ok(Pkcs11Uri {
            token,
            module_path,
            pin_source,
        })
    }

    fn matches(&self, info: &cryptoki::slot::TokenInfo) -> bool {
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| w.trim() == have.trim())
        };
        eq(&self.label, info.label())
            && eq(&self.serial, info.serial_number())
            && eq(&self.manufacturer, info.manufacturer_id())
            && eq(&self.model, info.model())
    }
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(l) = &self.label {
            parts.push(format!("label {l:?}"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial {s:?}"));
        }
        if let Some(m) = &self.manufacturer {
            parts.push(format!("manufacturer {m:?}"));
        }
        if let Some(m) = &self.model {
            parts.push(format!("model {m:?}"));
        }
        write!(f, "token with {}", parts.join(", "))
    }
}

fn pct_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after percent-decoding".to_string())
}

/// How the token refused the PIN after start-up (see [`Shared::pin_refused`]).
#[derive(Clone, Copy)]
enum PinRefusal {
    Wrong,
    Locked,
}

/// The module, the token's slot and the login, shared by all workers.
struct Connection {
    pkcs11: Pkcs11,
    /// `None` while the token is away.
    slot: Option<Slot>,
    /// Bumped on every successful reconnect; workers holding a session from an
    /// older generation reopen it.
    generation: u64,
    last_attempt: Instant,
    /// Why the token is down, for the errors returned meanwhile.
    down_reason: Option<String>,
    /// Keys any worker has found on this connection generation.
    known: Arc<Mutex<HashSet<Kid>>>,
}

struct Shared {
    token: TokenSelector,
    pin: AuthPin,
    describe: String,
    conn: Mutex<Connection>,
    /// Set when the token refused the PIN (or reported it locked) after
    /// start-up; from then on no worker logs in again. A token counts wrong
    /// PINs and locks the user PIN after a few (an HSM partition then needs
    /// its security officer), so a service that retried on every request
    /// would turn a re-initialized token into a locked one within seconds.
    /// Held while logging in, so concurrent workers spend one attempt.
    pin_refused: Mutex<Option<PinRefusal>>,
}

/// What an operation needs of the connection.
struct Current {
    generation: u64,
    slot: Slot,
    pkcs11: Pkcs11,
    known: Arc<Mutex<HashSet<Kid>>>,
}

/// A worker's session and the handles it has looked up in it.
struct Live {
    session: Session,
    generation: u64,
    handles: HashMap<(Kid, bool), ObjectHandle>,
    /// Shared by all workers of one connection generation: a kid in here
    /// that can no longer be found means the token changed under us.
    known: Arc<Mutex<HashSet<Kid>>>,
}

type Job = Box<dyn FnOnce(&Shared, &mut Option<Live>) + Send>;

/// A PKCS#11 token as a [`KeyBackend`].
pub struct Pkcs11Backend {
    shared: Arc<Shared>,
    jobs: Option<crossbeam_channel::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

/// An operation's failure inside a worker: either a cryptoki error, which the
/// worker classifies (device gone or not), or a finished [`KeyError`].
enum OpError {
    Ck(&'static str, CkError),
    Key(KeyError),
    /// The token no longer matches what this connection saw (a key it held
    /// a handle for is gone): treat like a removed device and reconnect.
    Gone(&'static str, String),
}

impl From<KeyError> for OpError {
    fn from(e: KeyError) -> Self {
        OpError::Key(e)
    }
}

trait CkContext<T> {
    fn op(self, op: &'static str) -> Result<T, OpError>;
}

impl<T> CkContext<T> for Result<T, CkError> {
    fn op(self, op: &'static str) -> Result<T, OpError> {
        self.map_err(|e| OpError::Ck(op, e))
    }
}

/// Return values that mean the token, the session or the login is gone, as
/// opposed to a bad request.
fn is_gone(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::SessionCount
                | RvError::CryptokiNotInitialized
                | RvError::SlotIdInvalid
                | RvError::UserNotLoggedIn
                | RvError::GeneralError,
            _
        )
    )
}

impl Pkcs11Backend {
    /// Loads the module, finds the token, logs in and starts the workers.
    /// Fails with a precise error for a missing module, a missing token (the
    /// present tokens are listed), a wrong PIN or an unusable PIN source.
    pub fn open(settings: &Pkcs11Settings) -> Result<Pkcs11Backend, KeyError> {
        let pin_text = settings.pin.read()?;
        let pin = AuthPin::from(pin_text.as_str());
        drop(pin_text);
        let module_shown = settings.module.display().to_string();
        if !settings.module.exists() {
            return Err(KeyError::ModuleNotFound {
                path: module_shown,
                reason: "no such file".into(),
            });
        }
        let pkcs11 = Pkcs11::new(&settings.module).map_err(|e| KeyError::ModuleNotFound {
            path: module_shown.clone(),
            reason: e.to_string(),
        })?;
        initialize(&pkcs11).map_err(|e| KeyError::Device {
            op: "C_Initialize",
            detail: e.to_string(),
        })?;
        let describe = format!("pkcs11 {} ({module_shown})", settings.token);
        let slot = find_slot(&pkcs11, &settings.token)?;
        // Prove the PIN now, so a wrong one is an error at start-up and not
        // on the first request.
        let probe = pkcs11.open_rw_session(slot).map_err(|e| KeyError::Device {
            op: "C_OpenSession",
            detail: e.to_string(),
        })?;
        login(&probe, &pin, &describe)?;
        let shared = Arc::new(Shared {
            token: settings.token.clone(),
            pin,
            describe,
            pin_refused: Mutex::new(None),
            conn: Mutex::new(Connection {
                pkcs11,
                slot: Some(slot),
                generation: 1,
                last_attempt: Instant::now(),
                down_reason: None,
                known: Arc::default(),
            }),
        });
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut workers = Vec::with_capacity(settings.workers);
        for i in 0..settings.workers {
            let rx = rx.clone();
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("signet-pkcs11-{i}"))
                .spawn(move || {
                    let mut live: Option<Live> = None;
                    while let Ok(job) = rx.recv() {
                        job(&shared, &mut live);
                    }
                })
                .map_err(|e| KeyError::Io(format!("cannot start PKCS#11 worker: {e}")))?;
            workers.push(handle);
        }
        // The probe session kept the login alive until the workers exist;
        // from here on their sessions do.
        drop(probe);
        Ok(Pkcs11Backend {
            shared,
            jobs: Some(tx),
            workers,
        })
    }

    /// Runs `f` on a worker with a live, logged-in session and returns its result.
    fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Live) -> Result<R, OpError> + Send + 'static,
    ) -> Result<R, KeyError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |shared, live| {
            let result = shared.with_session(live, f);
            let _ = reply_tx.send(result);
        });
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| KeyError::Io("PKCS#11 backend is shutting down".into()))?;
        jobs.send(job)
            .map_err(|_| KeyError::Io("PKCS#11 workers have stopped".into()))?;
        reply_rx
            .recv()
            .map_err(|_| KeyError::Io("PKCS#11 worker died during the operation".into()))?
    }
}

impl Drop for Pkcs11Backend {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// `C_Initialize` and `C_Finalize` change process-wide library state; SoftHSM
/// crashes when two threads initialize at once. Every call goes through here.
static LIFECYCLE: Mutex<()> = Mutex::new(());

/// Held shared by every operation on a session (of any backend in the
/// process: the library's state is per process) and exclusively by a
/// reconnect, so `C_Finalize` never runs while another thread is inside
/// the library (SoftHSM frees the sessions under it). Operations are short
/// and fail fast on a dead token, so a reconnect waits milliseconds.
/// Order: `MODULE`, then a backend's connection mutex, then `LIFECYCLE`.
static MODULE: RwLock<()> = RwLock::new(());

fn initialize(pkcs11: &Pkcs11) -> Result<(), CkError> {
    let _guard = LIFECYCLE.lock().unwrap_or_else(|p| p.into_inner());
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another backend in this process initialized the same module: the
        // library's state is per process, so it is ours to use too.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        other => other,
    }
}

fn find_slot(pkcs11: &Pkcs11, wanted: &TokenSelector) -> Result<Slot, KeyError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| KeyError::Device {
            op: "C_GetSlotList",
            detail: e.to_string(),
        })?;
    let mut available = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        let Ok(info) = pkcs11.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        if wanted.matches(&info) {
            found.push(slot);
        }
        available.push(format!(
            "{:?} (serial {})",
            info.label().trim(),
            info.serial_number().trim()
        ));
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(KeyError::TokenNotFound {
            wanted: wanted.to_string(),
            available,
        }),
        _ => Err(KeyError::TokenNotFound {
            wanted: format!("{wanted} (ambiguous: several tokens match; add serial=)"),
            available,
        }),
    }
}

fn login(session: &Session, pin: &AuthPin, describe: &str) -> Result<(), KeyError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
            _,
        )) => Err(KeyError::WrongPin(describe.to_string())),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
            Err(KeyError::PinLocked(describe.to_string()))
        }
        // C_InitToken done, C_InitPIN not yet: an officer is initializing
        // the token at this moment. It cannot be used yet, but will be:
        // unavailable (503, retried), not a fault of the request.
        Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => Err(KeyError::Unavailable {
            backend: describe.to_string(),
            detail: "the token has no user PIN yet (it is being initialized)".into(),
        }),
        Err(e) => Err(KeyError::Device {
            op: "C_Login",
            detail: e.to_string(),
        }),
    }
}

impl Shared {
    /// [`login`], unless the token has refused the PIN before: then that
    /// refusal again, without spending another of the token's tries.
    fn login_once(&self, session: &Session) -> Result<(), KeyError> {
        let mut refused = self.pin_refused.lock().unwrap_or_else(|p| p.into_inner());
        match *refused {
            Some(PinRefusal::Wrong) => return Err(KeyError::WrongPin(self.describe.clone())),
            Some(PinRefusal::Locked) => return Err(KeyError::PinLocked(self.describe.clone())),
            None => {}
        }
        let result = login(session, &self.pin, &self.describe);
        let (refusal, error) = match &result {
            Err(e @ KeyError::WrongPin(_)) => (PinRefusal::Wrong, e),
            Err(e @ KeyError::PinLocked(_)) => (PinRefusal::Locked, e),
            _ => return result,
        };
        tracing::error!(
            backend = %self.describe,
            %error,
            "the token refused the PIN; signet will not log in again until it is restarted, \
             so that the token does not lock the PIN"
        );
        *refused = Some(refusal);
        result
    }

    fn unavailable(&self, detail: impl Into<String>) -> KeyError {
        KeyError::Unavailable {
            backend: self.describe.clone(),
            detail: detail.into(),
        }
    }

    /// Makes sure `live` is a logged-in session of the current connection,
    /// runs `f`, and turns a device-gone failure into "down" for everyone.
    fn with_session<R>(
        &self,
        live: &mut Option<Live>,
        f: impl FnOnce(&mut Live) -> Result<R, OpError>,
    ) -> Result<R, KeyError> {
        // `_in_use` keeps any reconnect (C_Finalize) out until we are done.
        let (current, _in_use) = self.current()?;
        let generation = current.generation;
        if live.as_ref().is_none_or(|l| l.generation != generation) {
            if let Some(old) = live.take() {
                old.abandon();
            }
            let session = match current.pkcs11.open_rw_session(current.slot) {
                Ok(s) => s,
                Err(e) => return Err(self.mark_down(generation, "C_OpenSession", &e.to_string())),
            };
            // A token that came back with another PIN, or locked, needs an
            // officer; the device is reachable, so that error is returned as
            // is. One still being initialized (no user PIN yet) is down: the
            // library only sees the officer's C_InitPIN from another process
            // after the reconnect's C_Initialize.
            match self.login_once(&session) {
                Ok(()) => {}
                Err(KeyError::Unavailable { detail, .. }) => {
                    return Err(self.mark_down(generation, "C_Login", &detail));
                }
                Err(e) => return Err(e),
            }
            *live = Some(Live {
                session,
                generation,
                handles: HashMap::new(),
                known: current.known,
            });
        }
        let Some(l) = live.as_mut() else {
            return Err(self.unavailable("no session"));
        };
        let gone = |live: &mut Option<Live>, op, detail: &str| {
            // The session died with the token; the reconnect's C_Finalize
            // releases it.
            if let Some(old) = live.take() {
                old.abandon();
            }
            self.mark_down(generation, op, detail)
        };
        match f(l) {
            Ok(r) => Ok(r),
            Err(OpError::Key(e)) => Err(e),
            Err(OpError::Ck(op, e)) if is_gone(&e) => Err(gone(live, op, &e.to_string())),
            Err(OpError::Gone(op, detail)) => Err(gone(live, op, &detail)),
            Err(OpError::Ck(op, e)) => Err(KeyError::Device {
                op,
                detail: e.to_string(),
            }),
        }
    }

    /// The current connection, reconnecting first if it is down and the
    /// last attempt is old enough, with [`MODULE`] held shared: no reconnect
    /// can finalize it until the guard is dropped.
    fn current(&self) -> Result<(Current, RwLockReadGuard<'static, ()>), KeyError> {
        // A bounded loop: another worker may finalize again between our
        // reconnect and our taking the lock shared, but reconnects are at
        // most one per RECONNECT_INTERVAL.
        for _ in 0..3 {
            {
                let in_use = MODULE.read().unwrap_or_else(|p| p.into_inner());
                let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(slot) = conn.slot {
                    let current = Current {
                        generation: conn.generation,
                        slot,
                        pkcs11: conn.pkcs11.clone(),
                        known: conn.known.clone(),
                    };
                    return Ok((current, in_use));
                }
                if conn.last_attempt.elapsed() < RECONNECT_INTERVAL {
                    let reason = conn.down_reason.clone().unwrap_or_default();
                    return Err(self.unavailable(format!("{reason}; reconnecting")));
                }
            }
            self.reconnect()?;
        }
        Err(self.unavailable("reconnecting"))
    }

    /// `C_Finalize`, `C_Initialize`, find the token again. Holds [`MODULE`]
    /// exclusively, so it waits for operations in flight in other workers
    /// (and other backends of this process) to leave the library first.
    fn reconnect(&self) -> Result<(), KeyError> {
        let _exclusive = MODULE.write().unwrap_or_else(|p| p.into_inner());
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.slot.is_some() {
            // Another worker reconnected while we waited for the lock.
            return Ok(());
        }
        if conn.last_attempt.elapsed() < RECONNECT_INTERVAL {
            let reason = conn.down_reason.clone().unwrap_or_default();
            return Err(self.unavailable(format!("{reason}; reconnecting")));
        }
        conn.last_attempt = Instant::now();
        tracing::info!(backend = %self.describe, "reconnecting to the PKCS#11 token");
        // A full finalize/initialize cycle: SoftHSM (and some HSM clients)
        // only re-read their tokens at C_Initialize.
        {
            let _guard = LIFECYCLE.lock().unwrap_or_else(|p| p.into_inner());
            let _ = conn.pkcs11.clone().finalize();
        }
        if let Err(e) = initialize(&conn.pkcs11) {
            conn.down_reason = Some(format!("C_Initialize: {e}"));
            return Err(self.unavailable(format!("C_Initialize: {e}")));
        }
        let slot = match find_slot(&conn.pkcs11, &self.token) {
            Ok(s) => s,
            Err(e) => {
                conn.down_reason = Some(e.to_string());
                return Err(self.unavailable(e.to_string()));
            }
        };
        conn.slot = Some(slot);
        conn.generation += 1;
        conn.down_reason = None;
        conn.known = Arc::default();
        tracing::info!(backend = %self.describe, generation = conn.generation, "PKCS#11 token reconnected");
        Ok(())
    }

    fn mark_down(&self, generation: u64, op: &'static str, e: &str) -> KeyError {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.generation == generation && conn.slot.is_some() {
            tracing::warn!(backend = %self.describe, %op, error = %e, "PKCS#11 token unavailable");
            conn.slot = None;
            conn.down_reason = Some(format!("{op}: {e}"));
            // Let the very next operation try to reconnect.
            conn.last_attempt = Instant::now() - RECONNECT_INTERVAL;
        }
        self.unavailable(format!("{op}: {e}"))
    }
}

impl Live {
    /// Every signet key on the token, once.
    fn list_keys(&mut self) -> Result<Vec<StoredKey>, OpError> {
        let privates = self
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
            ])
            .op("C_FindObjects")?;
        let mut keys = Vec::new();
        for h in privates {
            if let Some(k) = self.read_key(h)? {
                keys.push(k);
            }
        }
        // A key this connection has used that the listing lacks: the token
        // was removed or swapped under us (SoftHSM then lists nothing rather
        // than failing). Reconnect, as a signature would.
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gone) = known.iter().find(|k| !keys.iter().any(|s| s.kid == **k)) {
            return Err(OpError::Gone(
                "C_FindObjects",
                format!("key {gone} vanished from the token"),
            ));
        }
        drop(known);
        Ok(keys)
    }

    /// Lets go of the session without `C_CloseSession`: it belongs to a
    /// connection that is down or already finalized, and finalizing closes
    /// every session; after the next `C_Initialize` its handle number may
    /// name another worker's new session, which closing it would close. What
    /// stays behind is the session's small handle struct, once per worker
    /// per reconnect.
    fn abandon(self) {
        let Live { session, .. } = self;
        std::mem::forget(session);
    }

    /// The private (`private = true`) or public key object with this kid.
    fn handle(&mut self, kid: &Kid, private: bool) -> Result<ObjectHandle, OpError> {
        if let Some(h) = self.handles.get(&(*kid, private)) {
            return Ok(*h);
        }
        let class = if private {
            ObjectClass::PRIVATE_KEY
        } else {
            ObjectClass::PUBLIC_KEY
        };
        let found = self
            .session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Id(kid.as_bytes().to_vec()),
            ])
            .op("C_FindObjects")?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match found.as_slice() {
            [h] => {
                self.handles.insert((*kid, private), *h);
                known.insert(*kid);
                Ok(*h)
            }
            [] if known.contains(kid) => Err(OpError::Gone(
                "C_FindObjects",
                format!("key {kid} vanished from the token"),
            )),
            [] => Err(KeyError::KeyNotFound(*kid).into()),
            _ => Err(KeyError::Device {
                op: "C_FindObjects",
                detail: format!("{} objects share kid {kid}", found.len()),
            }
            .into()),
        }
    }

    /// Runs `f` with the key's handle; a stale cached handle is looked up
    /// once more. If a key this connection already knew is then gone, the
    /// token was swapped or removed underneath us (SoftHSM reports a vanished
    /// token directory this way): [`Live::handle`] reports that as a device
    /// fault, so an unknown kid alone never forces a reconnect.
    fn with_handle<R>(
        &mut self,
        kid: &Kid,
        private: bool,
        f: impl Fn(&Session, ObjectHandle) -> Result<R, CkError>,
        op: &'static str,
    ) -> Result<R, OpError> {
        let h = self.handle(kid, private)?;
        match f(&self.session, h) {
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)) => {
                self.handles.remove(&(*kid, private));
                let h = self.handle(kid, private)?;
                f(&self.session, h).op(op)
            }
            other => other.op(op),
        }
    }

    /// Reads back one signet key (private object plus its public twin).
    fn read_key(&mut self, private: ObjectHandle) -> Result<Option<StoredKey>, OpError> {
        let attrs = self
            .session
            .get_attributes(
                private,
                &[
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Local,
                    AttributeType::Token,
                ],
            )
            .op("C_GetAttributeValue")?;
        let mut label = None;
        let mut id = None;
        let mut device = DeviceAttributes::default();
        // get_attributes silently omits what the token will not report:
        // every field stays None unless the device said it.
        for a in attrs {
            match a {
                Attribute::Label(l) => label = Some(String::from_utf8_lossy(&l).into_owned()),
                Attribute::Id(i) => id = Some(i),
                Attribute::Sensitive(b) => device.sensitive = Some(b),
                Attribute::Extractable(b) => device.extractable = Some(b),
                Attribute::NeverExtractable(b) => device.never_extractable = Some(b),
                Attribute::AlwaysSensitive(b) => device.always_sensitive = Some(b),
                Attribute::Local(b) => device.local = Some(b),
                Attribute::Token(b) => device.persistent = Some(b),
                _ => {}
            }
        }
        let Some(label) = label else { return Ok(None) };
        let (retired, base_label) = match label.strip_suffix(RETIRED_SUFFIX) {
            Some(base) => (true, base),
            None => (false, label.as_str()),
        };
        let Some((role, version)) = parse_key_label(base_label) else {
            return Ok(None);
        };
        let Some(kid) = id.as_deref().and_then(Kid::from_bytes) else {
            tracing::warn!(%label, "signet-labelled key without a 16-byte CKA_ID; ignored");
            return Ok(None);
        };
        let public_handle = self.handle(&kid, false)?;
        let point = self
            .session
            .get_attributes(public_handle, &[AttributeType::EcPoint])
            .op("C_GetAttributeValue")?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| KeyError::Device {
                op: "C_GetAttributeValue",
                detail: format!("public key of {kid} has no CKA_EC_POINT"),
            })?;
        let public = decode_ec_point(&point)?;
        if Kid::of(&public) != kid {
            tracing::warn!(%label, %kid, "CKA_ID does not match the public key; ignored");
            return Ok(None);
        }
        Ok(Some(StoredKey {
            kid,
            role,
            version,
            label,
            retired,
            public,
            attributes: device,
        }))
    }
}

/// `CKA_EC_POINT` is specified as a DER OCTET STRING around the SEC1 point,
/// but some tokens return the bare point. Decide by structure: the bare point
/// starts with 0x04 too, so a leading byte proves nothing.
fn decode_ec_point(bytes: &[u8]) -> Result<EcPublicKey, KeyError> {
    if let Ok(os) = der::asn1::OctetString::from_der(bytes)
        && let Ok(key) = EcPublicKey::from_sec1(os.as_bytes())
    {
        return Ok(key);
    }
    EcPublicKey::from_sec1(bytes)
        .map_err(|_| KeyError::InvalidPublicKey("CKA_EC_POINT is not a P-256 point".into()))
}

impl KeyBackend for Pkcs11Backend {
    fn describe(&self) -> String {
        self.shared.describe.clone()
    }

    fn list(&self) -> Result<Vec<StoredKey>, KeyError> {
        self.run(move |live| {
            // Another process may be writing to the token while we read it
            // (an officer's `signet hsm init` provisioning a re-initialized
            // token under the running service): an object found a moment
            // ago may answer "invalid handle", or its attributes may read
            // back torn. That is a race, not a fault: read the listing
            // again after a moment. An error that persists is returned.
            for attempt in 1..LIST_ATTEMPTS {
                match live.list_keys() {
                    Err(OpError::Ck(_, e)) if !is_gone(&e) => {
                        live.handles.clear();
                        std::thread::sleep(Duration::from_millis(2 << attempt));
                    }
                    other => return other,
                }
            }
            live.list_keys()
        })
    }

    fn generate(&self, role: Role, version: u32) -> Result<StoredKey, KeyError> {
        self.run(move |live| {
            let label = key_label(role, version).into_bytes();
            let sign = role.purpose() == Purpose::Sign;
            // Every usage flag is spelled out: tokens default some of them to
            // true (SoftHSM enables decrypt and unwrap on EC private keys),
            // and a role key must do its one operation and nothing else.
            let public_template = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::EcParams(P256_PARAMS.to_vec()),
                Attribute::Verify(sign),
                Attribute::VerifyRecover(false),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::Derive(false),
                Attribute::Label(label.clone()),
            ];
            let private_template = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(sign),
                Attribute::SignRecover(false),
                Attribute::Derive(!sign),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Label(label),
            ];
            let (public, private) = live
                .session
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &public_template,
                    &private_template,
                )
                .op("C_GenerateKeyPair")?;
            // The kid is a function of the public key, so it can only be set
            // once the device has made the key.
            let finish = |live: &mut Live| -> Result<StoredKey, OpError> {
                let point = live
                    .session
                    .get_attributes(public, &[AttributeType::EcPoint])
                    .op("C_GetAttributeValue")?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcPoint(p) => Some(p),
                        _ => None,
                    })
                    .ok_or_else(|| KeyError::Device {
                        op: "C_GenerateKeyPair",
                        detail: "new public key has no CKA_EC_POINT".into(),
                    })?;
                let kid = Kid::of(&decode_ec_point(&point)?);
                for h in [public, private] {
                    live.session
                        .update_attributes(h, &[Attribute::Id(kid.as_bytes().to_vec())])
                        .op("C_SetAttributeValue")?;
                }
                live.read_key(private)?.ok_or_else(|| {
                    OpError::Key(KeyError::Device {
                        op: "C_GenerateKeyPair",
                        detail: "new key does not read back as a signet key".into(),
                    })
                })
            };
            match finish(live) {
                Ok(k) => Ok(k),
                Err(e) => {
                    // Nothing half-made stays on the token.
                    let _ = live.session.destroy_object(private);
                    let _ = live.session.destroy_object(public);
                    Err(e)
                }
            }
        })
    }

    fn sign_digest(&self, kid: &Kid, digest: &[u8; 32]) -> Result<EcdsaSignature, KeyError> {
        let kid = *kid;
        let digest = *digest;
        let raw = self.run(move |live| {
            live.with_handle(
                &kid,
                true,
                |s, h| s.sign(&Mechanism::Ecdsa, h, &digest),
                "C_Sign",
            )
            .map_err(|e| refine_key_error(e, kid, "signing"))
        })?;
        EcdsaSignature::from_raw(&raw)
    }

    fn ecdh(&self, kid: &Kid, peer: &EcPublicKey) -> Result<SharedSecret, KeyError> {
        let kid = *kid;
        let point = *peer.sec1();
        self.run(move |live| {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ];
            // SoftHSM has no HKDF mechanism: derive the raw secret as a
            // short-lived session object, read it, destroy it.
            let derived = live
                .with_handle(
                    &kid,
                    true,
                    |s, h| {
                        let params = Ecdh1DeriveParams::new(EcKdf::null(), &point);
                        s.derive_key(&Mechanism::Ecdh1Derive(params), h, &template)
                    },
                    "C_DeriveKey",
                )
                .map_err(|e| refine_key_error(e, kid, "key agreement"))?;
            let value = live
                .session
                .get_attributes(derived, &[AttributeType::Value])
                .op("C_GetAttributeValue");
            let destroyed = live.session.destroy_object(derived).op("C_DestroyObject");
            let secret = value?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Value(v) => Some(Zeroizing::new(v)),
                    _ => None,
                })
                .ok_or_else(|| KeyError::Device {
                    op: "C_DeriveKey",
                    detail: "derived secret has no readable CKA_VALUE".into(),
                })?;
            destroyed?;
            Ok(SharedSecret::from_slice(&secret)?)
        })
    }

    fn retire(&self, kid: &Kid) -> Result<(), KeyError> {
        let kid = *kid;
        self.run(move |live| {
            let private = live.handle(&kid, true)?;
            let Some(key) = live.read_key(private)? else {
                return Err(KeyError::KeyNotFound(kid).into());
            };
            if key.retired {
                return Err(KeyError::Retired(kid).into());
            }
            let label = format!("{}{RETIRED_SUFFIX}", key.label).into_bytes();
            // Disable the private key's use first: if relabelling then fails,
            // the key is unusable but still listed as live, which is the safe
            // half to be left in.
            live.session
                .update_attributes(private, &[Attribute::Sign(false), Attribute::Derive(false)])
                .op("C_SetAttributeValue")?;
            live.session
                .update_attributes(private, &[Attribute::Label(label.clone())])
                .op("C_SetAttributeValue")?;
            let public = live.handle(&kid, false)?;
            live.session
                .update_attributes(public, &[Attribute::Label(label)])
                .op("C_SetAttributeValue")?;
            Ok(())
        })
    }

    fn ping(&self) -> Result<(), KeyError> {
        self.run(|live| {
            live.session
                .get_session_info()
                .map(|_| ())
                .op("C_GetSessionInfo")
        })
    }
}

/// Maps "the key may not do this" answers to the error that names the cause.
fn refine_key_error(e: OpError, kid: Kid, operation: &'static str) -> OpError {
    match e {
        OpError::Ck(
            _,
            CkError::Pkcs11(RvError::KeyFunctionNotPermitted | RvError::KeyTypeInconsistent, _),
        ) => OpError::Key(KeyError::Device {
            op: operation,
            detail: format!(
                "the device refuses {operation} with key {kid} (wrong purpose or retired)"
            ),
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parsing() {
        let u = TokenSelector::parse_uri("pkcs11:token=a%3Bb;serial=12?module-path=/m.so").unwrap();
        assert_eq!(u.token.label.as_deref(), Some("a;b"));
        assert_eq!(u.token.serial.as_deref(), Some("12"));
        assert_eq!(u.module_path, Some(PathBuf::from("/m.so")));
        for (bad, needle) in [
            ("token=x", "pkcs11:"),
            ("pkcs11:slot-id=3", "slot-id"),
            ("pkcs11:object=x", "token= or serial="),
            ("pkcs11:token=x?pin-value=1234", "pin-value is refused"),
            ("pkcs11:token=x?pin-source=relative", "absolute"),
            ("pkcs11:token=%zz", "percent"),
            ("pkcs11:color=blue;token=x", "unknown attribute"),
        ] {
            let err = TokenSelector::parse_uri(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(!err.contains("1234"), "PIN echoed: {err}");
        }
    }

    #[test]
    fn ec_point_is_unwrapped_by_structure() {
        let secret = p256::SecretKey::from_slice(&[9u8; 32]).unwrap();
        let key = EcPublicKey::from_p256(&secret.public_key());
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(key.sec1());
        assert_eq!(decode_ec_point(&wrapped).unwrap(), key);
        assert_eq!(decode_ec_point(key.sec1()).unwrap(), key);
        assert!(decode_ec_point(&[0x04, 0x01, 0x00]).is_err());
    }
}
