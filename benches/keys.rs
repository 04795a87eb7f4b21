//! Key-layer throughput: signet's backends next to the raw primitives, in one
//! run on one machine, so the ratios mean something. Prints numbers, asserts
//! nothing. Run it through `scripts/bench keys`, which provisions a throw-away
//! SoftHSM token and swtpm:
//!
//! ```text
//! cargo bench --bench keys -- --softhsm-profile P --tpm-profile P [--seconds S]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use signet::keys::pkcs11::Pkcs11Backend;
use signet::keys::profile::{BackendSettings, Pkcs11Settings};
use signet::keys::{EcPublicKey, KeyRing, Profile, Role};

struct Args {
    softhsm: Option<PathBuf>,
    tpm: Option<PathBuf>,
    seconds: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        softhsm: None,
        tpm: None,
        seconds: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--softhsm-profile" => args.softhsm = it.next().map(PathBuf::from),
            "--tpm-profile" => args.tpm = it.next().map(PathBuf::from),
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .unwrap_or_else(|| usage("--seconds needs a positive number"))
            }
            // cargo bench appends --bench to the harness's arguments.
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "keys bench: {msg}\nusage: cargo bench --bench keys -- [--softhsm-profile P] [--tpm-profile P] [--seconds S]"
    );
    std::process::exit(2)
}

/// Runs `op` on `threads` threads for `seconds` and returns operations per second.
fn measure<F>(threads: usize, seconds: f64, op: F) -> f64
where
    F: Fn(u64) + Sync,
{
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    // A short warm-up outside the measurement: first calls open sessions
    // and fill handle caches.
    for i in 0..20 {
        op(i);
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, count, op) = (&stop, &count, &op);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(t as u64 * 1_000_000_000 + n);
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn digest(n: u64) -> [u8; 32] {
    signet::keys::sha256(&n.to_le_bytes())
}

struct Report {
    rows: Vec<(String, f64, Option<f64>)>,
}

impl Report {
    fn row(&mut self, name: &str, ops: f64, baseline: Option<f64>) {
        let ratio = baseline.map(|b| ops / b);
        match ratio {
            Some(r) => println!("{name:<52} {ops:>10.0}/s   {r:>5.2}x"),
            None => println!("{name:<52} {ops:>10.0}/s"),
        }
        self.rows.push((name.to_string(), ops, ratio));
    }
}

fn main() {
    let args = parse_args();
    let s = args.seconds;
    println!(
        "signet key-layer benchmark: {s} s per measurement, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<52} {:>12}   vs raw", "operation", "throughput");
    let mut report = Report { rows: Vec::new() };

    // The software floor: aws-lc-rs signing in process memory.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("generate software key");
    let soft = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
    )
    .expect("load software key");
    let aws_sign = measure(1, s, |n| {
        soft.sign(&rng, &n.to_le_bytes()).expect("sign");
    });
    report.row(
        "aws-lc-rs ECDSA P-256 sign, in memory, 1 thread",
        aws_sign,
        None,
    );

    if let Some(path) = &args.softhsm {
        softhsm(&mut report, path, s);
    }
    if let Some(path) = &args.tpm {
        tpm(&mut report, path, s);
    }
    if args.softhsm.is_none() && args.tpm.is_none() {
        println!("(no --softhsm-profile or --tpm-profile: only the software floor was measured)");
    }
    let json: Vec<_> = report
        .rows
        .iter()
        .map(|(n, o, r)| serde_json::json!({"operation": n, "per_s": o.round(), "ratio": r}))
        .collect();
    println!("JSON {}", serde_json::Value::Array(json));
}

fn load_profile(path: &Path) -> Profile {
    let profile = Profile::load(path).unwrap_or_else(|e| usage(&e.to_string()));
    // SAFETY: single-threaded here: no measurement thread or backend exists yet
    // for this profile, and the earlier measurements' threads have ended.
    unsafe { profile.apply_env() };
    profile
}

fn softhsm(report: &mut Report, path: &Path, s: f64) {
    let profile = load_profile(path);
    let BackendSettings::Pkcs11(settings) = &profile.backend else {
        usage("--softhsm-profile must be a pkcs11 profile")
    };
    let ring = KeyRing::open(&profile).expect("open SoftHSM profile");
    ring.init().expect("provision keys");
    let signing = ring.active(Role::TokenSigning).expect("token-signing key");
    let encryption = ring
        .active(Role::TokenEncryption)
        .expect("token-encryption key");
    drop(ring);

    // Raw cryptoki, the same module and key, no signet code in the loop.
    let raw = RawToken::open(settings);
    let raw1 = measure(1, s, |n| raw.sign(&signing.kid, &digest(n)));
    report.row("SoftHSM sign, raw cryptoki, 1 session", raw1, None);
    let raw2 = measure(2, s, |n| raw.sign(&signing.kid, &digest(n)));
    report.row("SoftHSM sign, raw cryptoki, 2 sessions", raw2, None);

    // Two numbers per pool size: with one caller per worker, each operation
    // also pays two thread wake-ups (request, reply), so that is the
    // latency-bound figure; with twice as many callers the queue never runs
    // dry, which is the throughput a loaded service sees.
    for workers in [1usize, 2] {
        let settings = Pkcs11Settings {
            workers,
            ..settings.clone()
        };
        let ring = KeyRing::new(Arc::new(
            Pkcs11Backend::open(&settings).expect("open backend"),
        ));
        let base = if workers == 1 { raw1 } else { raw2 };
        for callers in [workers, 2 * workers] {
            let ours = measure(callers, s, |n| {
                ring.sign_digest(Role::TokenSigning, &digest(n))
                    .expect("sign");
            });
            report.row(
                &format!("SoftHSM sign, signet, {workers} worker(s), {callers} caller(s)"),
                ours,
                Some(base),
            );
        }
    }

    let peer = peer_key();
    let raw_ecdh = measure(1, s, |_| raw.ecdh(&encryption.kid, &peer));
    report.row("SoftHSM ECDH, raw cryptoki, 1 session", raw_ecdh, None);
    let settings1 = Pkcs11Settings {
        workers: 1,
        ..settings.clone()
    };
    let ring = KeyRing::new(Arc::new(
        Pkcs11Backend::open(&settings1).expect("open backend"),
    ));
    for callers in [1, 2] {
        let ours_ecdh = measure(callers, s, |_| {
            ring.ecdh(Role::TokenEncryption, &peer).expect("ecdh");
        });
        report.row(
            &format!("SoftHSM ECDH, signet, 1 worker, {callers} caller(s)"),
            ours_ecdh,
            Some(raw_ecdh),
        );
    }
}

fn tpm(report: &mut Report, path: &Path, s: f64) {
    let profile = load_profile(path);
    let ring = KeyRing::open(&profile).expect("open TPM profile");
    ring.init().expect("provision keys");
    let sign = measure(1, s, |n| {
        ring.sign_digest(Role::TokenSigning, &digest(n))
            .expect("sign");
    });
    report.row("swtpm sign, signet key layer", sign, None);
    let peer = peer_key();
    let ecdh = measure(1, s, |_| {
        ring.ecdh(Role::TokenEncryption, &peer).expect("ecdh");
    });
    report.row("swtpm ECDH, signet key layer", ecdh, None);
}

fn peer_key() -> EcPublicKey {
    let secret = p256::SecretKey::from_slice(&[0x42; 32]).expect("valid scalar");
    EcPublicKey::from_p256(&secret.public_key())
}

/// The shortest path through cryptoki: one logged-in session per thread,
/// the key handle looked up once.
struct RawToken {
    pkcs11: Pkcs11,
    slot: cryptoki::slot::Slot,
}

type RawCache = Option<(
    cryptoki::session::Session,
    std::collections::HashMap<[u8; 16], cryptoki::object::ObjectHandle>,
)>;

thread_local! {
    // One session per thread and each key handle looked up once: the
    // shortest honest path, so the ratio charges signet for all it adds.
    static RAW: std::cell::RefCell<RawCache> = const { std::cell::RefCell::new(None) };
}

impl RawToken {
    fn open(settings: &Pkcs11Settings) -> RawToken {
        let pkcs11 = Pkcs11::new(&settings.module).expect("load module");
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        let label = settings
            .token
            .label
            .clone()
            .expect("bench profile selects by token_label");
        let slot = pkcs11
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .map(|i| i.label().trim() == label)
                    .unwrap_or(false)
            })
            .expect("token");
        let pin = settings.pin.read().expect("pin");
        let session = pkcs11.open_rw_session(slot).expect("session");
        match session.login(UserType::User, Some(&AuthPin::from(pin.as_str()))) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => panic!("login: {e}"),
        }
        // Keep this session open so the login outlives the per-thread ones.
        std::mem::forget(session);
        RawToken { pkcs11, slot }
    }

    fn with_key<R>(
        &self,
        kid: &signet::keys::Kid,
        f: impl FnOnce(&cryptoki::session::Session, cryptoki::object::ObjectHandle) -> R,
    ) -> R {
        RAW.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (session, handles) = cell.get_or_insert_with(|| {
                let session = self.pkcs11.open_rw_session(self.slot).expect("session");
                (session, Default::default())
            });
            let handle = *handles.entry(*kid.as_bytes()).or_insert_with(|| {
                session
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Id(kid.as_bytes().to_vec()),
                    ])
                    .expect("find")[0]
            });
            f(session, handle)
        })
    }

    fn sign(&self, kid: &signet::keys::Kid, digest: &[u8; 32]) {
        self.with_key(kid, |session, key| {
            session.sign(&Mechanism::Ecdsa, key, digest).expect("sign");
        })
    }

    fn ecdh(&self, kid: &signet::keys::Kid, peer: &EcPublicKey) {
        self.with_key(kid, |session, key| {
            let params = Ecdh1DeriveParams::new(EcKdf::null(), peer.sec1());
            let secret = session
                .derive_key(
                    &Mechanism::Ecdh1Derive(params),
                    key,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::GENERIC_SECRET),
                        Attribute::ValueLen(32.into()),
                        Attribute::Token(false),
                        Attribute::Sensitive(false),
                        Attribute::Extractable(true),
                    ],
                )
                .expect("derive");
            session
                .get_attributes(secret, &[cryptoki::object::AttributeType::Value])
                .expect("value");
            session.destroy_object(secret).expect("destroy");
        });
    }
}
