//! Device binding throughput: token issue and redemption through the flows,
//! next to the key device's raw sign and ECDH measured in the same run, so
//! the ratios say how much of each step is the HSM/TPM operation and how
//! much is everything else (store compare-and-swap, fsync'd audit entries,
//! sealing, WebAuthn verification). Prints numbers, asserts nothing. Run it
//! through `scripts/bench device`, which provisions a throw-away SoftHSM
//! token and swtpm:
//!
//! ```text
//! cargo bench --bench device --features testkit -- --softhsm-profile P [--tpm-profile P] [--seconds S]
//! ```
//!
//! One thread, in process: a `Services` over a fresh `SledStore` in a temp
//! dir and the profile's keys, called the way the API handlers call it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use signet::config::{Config, Overrides};
use signet::flows::{Services, enrollment};
use signet::keys::{EcPublicKey, KeyRing, Profile, Role};
use signet::store::SledStore;
use signet::testkit::device::{SoftDevice, create_passkey};
use signet::webauthn::{b64url, b64url_decode};

const ORIGIN: &str = "https://localhost";
const ACTOR: &str = "client:bench";
/// Devices prepared for the trial that sizes the redemption run.
const TRIAL: usize = 20;
/// At most this many devices are prepared for the timed redemptions.
const REDEEM_MAX: usize = 5000;

// As tests/device_binding.rs, with a token lifetime long enough that the
// first of thousands of prepared tokens is still valid when redeemed.
const CONFIG: &str = r#"
[tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
[[clients]]
name = "bench"
role = "rp"
san_uri = "urn:signet:role:rp"
[rp]
id = "localhost"
origins = ["https://localhost"]
[store]
data_dir = "data"
[keys]
profile = "profile.toml"
[devices]
token_ttl_s = 86400
enrollment_ttl_s = 864000
"#;

struct Args {
    softhsm: Option<PathBuf>,
    tpm: Option<PathBuf>,
    seconds: f64,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "device bench: {msg}\nusage: cargo bench --bench device --features testkit -- --softhsm-profile P [--tpm-profile P] [--seconds S]"
    );
    std::process::exit(2)
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
            "--softhsm-profile" => {
                args.softhsm = Some(
                    it.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage("--softhsm-profile needs a path")),
                )
            }
            "--tpm-profile" => {
                args.tpm = Some(
                    it.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage("--tpm-profile needs a path")),
                )
            }
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0 && *s <= 3600.0)
                    .unwrap_or_else(|| usage("--seconds needs a number in (0, 3600]"))
            }
            // cargo bench appends --bench to the harness's arguments.
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if args.softhsm.is_none() && args.tpm.is_none() {
        usage("give --softhsm-profile and/or --tpm-profile");
    }
    args
}

/// Per-operation latencies of one measurement.
struct Stats {
    lat: Vec<Duration>,
    elapsed: Duration,
}

impl Stats {
    fn ops_per_s(&self) -> f64 {
        self.lat.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Mean wall time per operation, ms (one thread: 1 / throughput).
    fn mean_ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3 / self.lat.len() as f64
    }

    /// Nearest-rank percentile, ms.
    fn pct_ms(&self, p: f64) -> f64 {
        let mut v = self.lat.clone();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    }
}

/// Runs `op` back to back for `seconds`, timing each call.
fn timed_loop(seconds: f64, mut op: impl FnMut(u64)) -> Stats {
    // A short warm-up outside the measurement: sessions, caches, sled pages.
    for i in 0..10 {
        op(u64::MAX - i);
    }
    let budget = Duration::from_secs_f64(seconds);
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget {
        let t = Instant::now();
        op(n);
        lat.push(t.elapsed());
        n += 1;
    }
    Stats {
        lat,
        elapsed: start.elapsed(),
    }
}

/// Runs `op` once per item, until the items run out or `seconds` pass.
fn timed_each<T>(items: &[T], seconds: f64, mut op: impl FnMut(&T)) -> Stats {
    let budget = Duration::from_secs_f64(seconds);
    let mut lat = Vec::with_capacity(items.len());
    let start = Instant::now();
    for item in items {
        if start.elapsed() >= budget {
            break;
        }
        let t = Instant::now();
        op(item);
        lat.push(t.elapsed());
    }
    Stats {
        lat,
        elapsed: start.elapsed(),
    }
}

/// A `Services` over a fresh store and one profile's keys.
struct Bench {
    s: Services,
    dir: tempfile::TempDir,
    signing: EcPublicKey,
    encryption: EcPublicKey,
}

impl Bench {
    fn new(ring: KeyRing) -> Bench {
        ring.init().expect("provision keys");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
        let config = Config::parse(
            CONFIG,
            Path::new("/etc/signet/signet.toml"),
            &Overrides::default(),
        )
        .expect("config");
        let policy =
            signet::policy::tiers::Policy::parse(signet::policy::tiers::BUILTIN).expect("policy");
        let s = Services::new(&config, store, Arc::new(ring), policy);
        let signing = s.keys.active(Role::TokenSigning).expect("token-signing");
        let encryption = s
            .keys
            .active(Role::TokenEncryption)
            .expect("token-encryption");
        Bench {
            s,
            dir,
            signing: signing.public,
            encryption: encryption.public,
        }
    }

    /// Enrolls a new device for `user` and verifies it: state `token_issued`.
    fn verified_device(&self, user: &str) -> (SoftDevice, String, Value) {
        let dev = SoftDevice::generate();
        let enrolled = enrollment::enroll(
            &self.s,
            &dev.enrollment(user, json!({"os": "android", "model": "bench"})),
            ACTOR,
            SystemTime::now(),
        )
        .expect("enroll");
        let id = enrolled["deviceId"].as_str().expect("deviceId").to_string();
        let answer = enrollment::verification(
            &self.s,
            &id,
            &json!({"outcome": "verified", "reference": "KYC-bench"}),
            ACTOR,
            SystemTime::now(),
        )
        .expect("verification");
        (dev, id, answer)
    }

    /// `n` devices with a sealed registration request each, ready for
    /// `enrollment::redeem`: (device id, request body).
    fn prepare(&self, tag: &str, n: usize) -> Vec<(String, Value)> {
        (0..n)
            .map(|i| {
                let (dev, id, answer) = self.verified_device(&format!("{tag}-{i}@example.com"));
                let did: [u8; 16] = b64url_decode("deviceId", &id, 16)
                    .expect("deviceId")
                    .try_into()
                    .expect("16 bytes");
                let sealed_token = b64url_decode(
                    "sealed",
                    answer["token"]["sealed"].as_str().expect("sealed"),
                    1 << 20,
                )
                .expect("sealed token");
                let now = SystemTime::now();
                let opened = dev
                    .open_token(&sealed_token, &did, &self.signing, "localhost", now)
                    .expect("the device opens its token");
                let options = &answer["token"]["publicKey"];
                opened.check_options(options).expect("options");
                let (_, registration) = create_passkey(options, ORIGIN).expect("passkey");
                let sealed = dev
                    .seal_request(&opened, &registration, &self.encryption, now)
                    .expect("seal request");
                (id, json!({ "sealed": b64url(&sealed) }))
            })
            .collect()
    }

    fn redeem(&self, (id, body): &(String, Value)) {
        enrollment::redeem(&self.s, id, body, ACTOR, SystemTime::now()).expect("redeem");
    }
}

struct Row {
    name: &'static str,
    stats: Stats,
}

fn backend(label: &str, path: &Path, profile: &Profile, s: f64) -> Vec<(String, Row)> {
    let ring = KeyRing::open(profile).unwrap_or_else(|e| usage(&format!("{label}: {e}")));
    let b = Bench::new(ring);
    println!();
    println!("== {label} (profile {}) ==", path.display());
    println!("store: sled in {}", b.dir.path().display());

    // 3. The raw primitives through the same KeyRing.
    let sign = timed_loop(s, |n| {
        b.s.keys
            .sign(Role::TokenSigning, &n.to_le_bytes())
            .expect("sign");
    });
    let peers: Vec<EcPublicKey> = (0..64).map(|_| SoftDevice::generate().public).collect();
    let ecdh = timed_loop(s, |n| {
        b.s.keys
            .ecdh(Role::TokenEncryption, &peers[n as usize % peers.len()])
            .expect("ecdh");
    });
    let list = timed_loop(s, |_| {
        b.s.keys.list().expect("list");
    });

    // 1. Token issue: re-issue to one verified device.
    let (_dev, id, _) = b.verified_device("issue@example.com");
    let issue = timed_loop(s, |_| {
        enrollment::reissue(&b.s, &id, ACTOR, SystemTime::now()).expect("reissue");
    });

    // 2. Redemption: size the run with a short trial, prepare, then time
    // only enrollment::redeem.
    let trial_set = b.prepare("trial", TRIAL);
    let trial = timed_each(&trial_set, 3600.0, |r| b.redeem(r));
    let want = (trial.ops_per_s() * s * 1.25).ceil() as usize;
    let n = want.clamp(TRIAL, REDEEM_MAX);
    let t = Instant::now();
    let set = b.prepare("redeem", n);
    println!(
        "redemption: trial {:.0}/s over {TRIAL}; prepared {n} devices{} in {:.1} s (untimed)",
        trial.ops_per_s(),
        if n < want { " (capped)" } else { "" },
        t.elapsed().as_secs_f64()
    );
    let redeem = timed_each(&set, s, |r| b.redeem(r));
    println!(
        "redemption: timed {} of the {} prepared in {:.2} s ({})",
        redeem.lat.len(),
        set.len(),
        redeem.elapsed.as_secs_f64(),
        if redeem.lat.len() == set.len() {
            "ran out of devices"
        } else {
            "stopped at the time budget"
        }
    );

    let rows = vec![
        Row {
            name: "KeyRing::sign(token-signing), raw",
            stats: sign,
        },
        Row {
            name: "KeyRing::ecdh(token-encryption), raw",
            stats: ecdh,
        },
        Row {
            name: "KeyRing::list (key lookup), raw",
            stats: list,
        },
        Row {
            name: "token issue (enrollment::reissue)",
            stats: issue,
        },
        Row {
            name: "redemption (enrollment::redeem)",
            stats: redeem,
        },
    ];
    println!(
        "{:<40} {:>7} {:>10} {:>9} {:>9} {:>9}",
        "operation", "ops", "ops/s", "mean ms", "p50 ms", "p99 ms"
    );
    for r in &rows {
        let st = &r.stats;
        println!(
            "{:<40} {:>7} {:>10.0} {:>9.3} {:>9.3} {:>9.3}",
            r.name,
            st.lat.len(),
            st.ops_per_s(),
            st.mean_ms(),
            st.pct_ms(50.0),
            st.pct_ms(99.0)
        );
    }
    let [sign, ecdh, _, issue, redeem] = [0, 1, 2, 3, 4].map(|i| rows[i].stats.mean_ms());
    println!("ratios (mean time per op, one thread):");
    share("issue", issue, "raw sign", sign);
    share("redemption", redeem, "raw ECDH", ecdh);
    rows.into_iter().map(|r| (label.to_string(), r)).collect()
}

/// Prints what fraction of `step`'s time its key operation takes.
fn share(step: &str, step_ms: f64, prim: &str, prim_ms: f64) {
    let key = prim_ms / step_ms;
    println!(
        "  {step:<10} = {key:.3}x the {prim} rate: {prim} is {:.1}% of its time ({prim_ms:.3} of {step_ms:.3} ms); \
         everything else {:.3} ms ({:.1}%)",
        key * 100.0,
        step_ms - prim_ms,
        (1.0 - key) * 100.0
    );
}

fn main() {
    let args = parse_args();
    let s = args.seconds;
    // Load the profiles and apply their environment (SOFTHSM2_CONF) before
    // any thread exists: sled, the PKCS#11 workers and the TPM worker all
    // start later.
    let load = |p: &PathBuf| {
        let profile = Profile::load(p).unwrap_or_else(|e| usage(&e.to_string()));
        // SAFETY: single-threaded here: no backend, store or thread exists yet.
        unsafe { profile.apply_env() };
        profile
    };
    let softhsm = args.softhsm.as_ref().map(|p| (p, load(p)));
    let tpm = args.tpm.as_ref().map(|p| (p, load(p)));

    println!(
        "signet device-binding benchmark: {s} s per measurement, single thread (one caller, \
         in process, no HTTP), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "issue      = load, HSM/TPM ES256 sign, seal to the device key, creation options,\n\
         \x20            device CAS (fsync), audit entry (fsync)\n\
         redemption = load, HSM/TPM ECDH, device signature, token check, WebAuthn registration,\n\
         \x20            atomic bind (fsync), 2 audit entries (fsync)\n\
         Key lookups come from KeyRing's cached listing (the KeyRing::list row is what one\n\
         uncached listing of the device costs). Both pay audit checkpoints (one signature per\n\
         1000 records or 60 s) as the service does."
    );
    let mut all = Vec::new();
    if let Some((path, profile)) = &softhsm {
        all.extend(backend("SoftHSM", path, profile, s));
    }
    if let Some((path, profile)) = &tpm {
        all.extend(backend("swtpm", path, profile, s));
    }
    let json: Vec<_> = all
        .iter()
        .map(|(backend, r)| {
            json!({
                "backend": backend,
                "operation": r.name,
                "ops": r.stats.lat.len(),
                "per_s": r.stats.ops_per_s().round(),
                "p50_ms": (r.stats.pct_ms(50.0) * 1e3).round() / 1e3,
                "p99_ms": (r.stats.pct_ms(99.0) * 1e3).round() / 1e3,
            })
        })
        .collect();
    println!("JSON {}", Value::Array(json));
}
