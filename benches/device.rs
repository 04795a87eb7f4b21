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

use std::path::Path;
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};
use signet::flows::{Services, enrollment};
use signet::keys::{EcPublicKey, KeyRing, Profile, Role};
use signet::testkit::device::{SoftDevice, create_passkey};
use signet::webauthn::{b64url, b64url_decode};

mod common;
use common::{Backends, Row, flow_services, parse_args, share, timed_each, timed_loop, usage};

const ORIGIN: &str = "https://localhost";
const ACTOR: &str = "client:bench";
/// Devices prepared for the trial that sizes the redemption run.
const TRIAL: usize = 20;
/// At most this many devices are prepared for the timed redemptions.
const REDEEM_MAX: usize = 5000;

// As tests/device_binding.rs, with a token lifetime long enough that the
// first of thousands of prepared tokens is still valid when redeemed.
const EXTRA_CONFIG: &str = r#"
[devices]
token_ttl_s = 86400
enrollment_ttl_s = 864000
"#;

/// A `Services` over a fresh store and one profile's keys.
struct Bench {
    s: Services,
    dir: tempfile::TempDir,
    signing: EcPublicKey,
    encryption: EcPublicKey,
}

impl Bench {
    fn new(ring: KeyRing) -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = flow_services(
            dir.path(),
            ring,
            EXTRA_CONFIG,
            signet::policy::tiers::BUILTIN,
        );
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

fn backend(label: &str, path: &Path, profile: &Profile, s: f64) -> Vec<(String, Row)> {
    let ring = KeyRing::open(profile).unwrap_or_else(|e| usage("device", &format!("{label}: {e}")));
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

fn main() {
    let args = parse_args("device");
    let s = args.seconds;
    let backends = Backends::load("device", &args);

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
    backends.run(|label, path, profile| backend(label, path, profile, s));
}
