//! QR cross-device login ("pairing") throughput: each step of a pairing
//! through the flows, and a whole pairing, next to a plain discoverable
//! login through the flows and the primitives a pairing is made of,
//! measured in the same run: the engine's ES256 assertion verification, one
//! fsync'd store write and one audit append. The ratios say what a pairing
//! costs against the login it replaces and how much of it is the signature
//! check and how much the durable writes. Prints numbers, asserts nothing.
//! Run it through `scripts/bench pairing`, which provisions a throw-away
//! SoftHSM token and swtpm:
//!
//! ```text
//! cargo bench --bench pairing --features testkit -- --softhsm-profile P [--tpm-profile P] [--seconds S]
//! ```
//!
//! One thread, in process: a `Services` over a fresh `SledStore` in a temp
//! dir and the profile's keys, called the way the API handlers call it. One
//! user with one ES256 passkey (`SoftAuthenticator`) approves every pairing
//! and makes every login, discoverable (no user named). Each pairing is
//! created, claimed, approved, read once by the desktop and consumed; each
//! step is timed on its own. The phone's assertion answers the claim's
//! challenge, so it is made after the claim and before the approval,
//! outside the timed sections, in the order the assertions are verified
//! (the authenticator's counter increases from one to the next). Pairings
//! alternate with plain logins (options timed, assertion untimed, verify
//! timed), so both see the same machine and disk.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use signet::audit::AuditEvent;
use signet::flows::{Services, ceremony, pairing};
use signet::keys::{KeyRing, Profile};
use signet::testkit::{Attestation, Ceremony, SoftAuthenticator};
use signet::webauthn::cose_key::VerifyingKey;
use signet::webauthn::{CoseAlgorithm, b64url_decode};

mod common;
use common::{Backends, Row, Stats, flow_services, parse_args, share, timed_loop, usage};

const RP_ID: &str = "localhost";
const ORIGIN: &str = "https://localhost";
const ACTOR: &str = "client:bench";
/// The passkey's model: tier 3 by AAGUID in [`POLICY`].
const MODEL: [u8; 16] = [
    0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x43, 0x33, 0x83, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
];
/// Pairings and logins run untimed before the measurement.
const WARMUP: usize = 10;
/// Assertions kept for the raw verification.
const KEEP: usize = 20;
/// The desktop's User-Agent.
const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";

// As tests/pairing_flow.rs, with the longest lifetime and the most attempts
// the configuration allows.
const EXTRA_CONFIG: &str = r#"
[pairing]
ttl_s = 600
attempts_max = 20
"#;

/// The policy of the transaction tests (tests/data), as the approval bench
/// uses it: tiers by AAGUID. Pairings and logins ask for the default
/// action, which every tier meets.
const POLICY: &str = include_str!("../tests/data/transaction-policy.toml");

/// The desktop's request: its context, no user (the phone's passkey says
/// who logs in).
fn desktop_request() -> Value {
    json!({"context": {"ip": "203.0.113.7", "userAgent": FIREFOX, "location": "Zurich"}})
}

fn challenge_of(answer: &Value) -> Vec<u8> {
    b64url_decode(
        "challenge",
        answer["publicKey"]["challenge"]
            .as_str()
            .expect("challenge"),
        64,
    )
    .expect("challenge")
}

fn text(v: &Value, member: &str) -> String {
    v[member].as_str().expect(member).to_string()
}

/// The times of one pairing's steps.
struct Pairing {
    create: Duration,
    claim: Duration,
    approve: Duration,
    status: Duration,
    consume: Duration,
}

/// One alternating run: pairings and logins.
struct Run {
    create: Vec<Duration>,
    claim: Vec<Duration>,
    approve: Vec<Duration>,
    status: Vec<Duration>,
    consume: Vec<Duration>,
    /// create + claim + approve + consume of each pairing.
    whole: Vec<Duration>,
    options: Vec<Duration>,
    verify: Vec<Duration>,
    /// options + verify of each login.
    login: Vec<Duration>,
    elapsed: Duration,
}

/// A `Services` over a fresh store and one profile's keys, with one user
/// holding one passkey.
struct Bench {
    s: Services,
    dir: tempfile::TempDir,
    auth: SoftAuthenticator,
    /// What the first pairing assertions signed and their signatures, for
    /// the raw verification.
    kept: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Bench {
    fn new(ring: KeyRing) -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = flow_services(dir.path(), ring, EXTRA_CONFIG, POLICY);

        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        auth.aaguid = MODEL;
        let now = SystemTime::now();
        let options =
            ceremony::registration_options(&s, &json!({ "user": { "name": "alice" } }), now)
                .expect("registration options");
        auth.user_handle = b64url_decode(
            "id",
            options["publicKey"]["user"]["id"].as_str().expect("id"),
            64,
        )
        .expect("user id");
        let parts = auth.register(
            &Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)),
            &Attestation::None,
        );
        ceremony::registration_verify(
            &s,
            &json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() }),
            ACTOR,
            now,
        )
        .expect("passkey registered");
        Bench {
            s,
            dir,
            auth,
            kept: Vec::new(),
        }
    }

    /// Creates a pairing: its id, the QR code's code and the desktop secret.
    fn create(&self) -> (String, String, String) {
        let answer =
            pairing::create(&self.s, &desktop_request(), ACTOR, SystemTime::now()).expect("create");
        let qr = text(&answer, "qrPayload");
        let (_, code) = qr.rsplit_once("&code=").expect("code in the QR payload");
        (
            text(&answer, "pairingId"),
            code.to_string(),
            text(&answer, "desktopSecret"),
        )
    }

    /// One whole pairing, each step timed on its own; the phone's
    /// assertion is made between the claim and the approval, untimed.
    fn pair(&mut self) -> Pairing {
        let t = Instant::now();
        let (id, code, desktop) = self.create();
        let create = t.elapsed();

        let body = json!({ "code": code });
        let t = Instant::now();
        let claimed = pairing::claim(&self.s, &id, &body, ACTOR, SystemTime::now()).expect("claim");
        let claim = t.elapsed();

        let phone = text(&claimed, "phoneSecret");
        let parts = self
            .auth
            .assert(&Ceremony::new(RP_ID, ORIGIN, &challenge_of(&claimed)));
        let body = json!({ "credential": parts.to_json() });
        if self.kept.len() < KEEP {
            self.kept.push((parts.signed_data(), parts.signature));
        }
        let t = Instant::now();
        let approved =
            pairing::approve(&self.s, &id, Some(&phone), &body, ACTOR, SystemTime::now())
                .expect("approve");
        let approve = t.elapsed();
        assert_eq!(approved["state"], "approved");

        let pid = pairing::parse_id(&id).expect("pairing id");
        let t = Instant::now();
        let st = pairing::status(&self.s, &pid, Some(&desktop), ACTOR, SystemTime::now())
            .expect("status");
        let status = t.elapsed();
        assert_eq!(st.answer["state"], "approved");

        let t = Instant::now();
        let consumed = pairing::consume(&self.s, &id, Some(&desktop), ACTOR, SystemTime::now())
            .expect("consume");
        let consume = t.elapsed();
        assert_eq!(consumed["state"], "consumed");
        Pairing {
            create,
            claim,
            approve,
            status,
            consume,
        }
    }

    /// One discoverable login: options and verify timed, the assertion
    /// between them untimed.
    fn login(&mut self) -> (Duration, Duration) {
        let t = Instant::now();
        let options = ceremony::authentication_options(&self.s, &json!({}), SystemTime::now())
            .expect("authentication options");
        let opt = t.elapsed();

        let parts = self
            .auth
            .assert(&Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)));
        let body = json!({ "ceremonyId": options["ceremonyId"], "credential": parts.to_json() });
        let t = Instant::now();
        let answer = ceremony::authentication_verify(&self.s, &body, ACTOR, SystemTime::now())
            .expect("authentication verify");
        let verify = t.elapsed();
        assert_eq!(answer["decision"], "allow");
        (opt, verify)
    }

    /// Pairings and logins, one after the other, until `seconds` pass.
    /// Interleaving puts both in the same moments of the machine's (and the
    /// disk's) load, so their ratio is the flows' and not the moment's.
    fn run(&mut self, seconds: f64) -> Run {
        for _ in 0..WARMUP {
            self.pair();
            self.login();
        }
        let budget = Duration::from_secs_f64(seconds);
        let mut r = Run {
            create: Vec::new(),
            claim: Vec::new(),
            approve: Vec::new(),
            status: Vec::new(),
            consume: Vec::new(),
            whole: Vec::new(),
            options: Vec::new(),
            verify: Vec::new(),
            login: Vec::new(),
            elapsed: Duration::ZERO,
        };
        let start = Instant::now();
        while start.elapsed() < budget {
            let p = self.pair();
            r.create.push(p.create);
            r.claim.push(p.claim);
            r.approve.push(p.approve);
            r.status.push(p.status);
            r.consume.push(p.consume);
            r.whole.push(p.create + p.claim + p.approve + p.consume);
            let (options, verify) = self.login();
            r.options.push(options);
            r.verify.push(verify);
            r.login.push(options + verify);
        }
        r.elapsed = start.elapsed();
        r
    }
}

fn backend(label: &str, path: &Path, profile: &Profile, s: f64) -> Vec<(String, Row)> {
    let ring =
        KeyRing::open(profile).unwrap_or_else(|e| usage("pairing", &format!("{label}: {e}")));
    let mut b = Bench::new(ring);
    println!();
    println!("== {label} (profile {}) ==", path.display());
    println!("store: sled in {}", b.dir.path().display());

    // 1. Pairings and plain logins, alternating.
    let run = b.run(2.0 * s);
    println!(
        "pairing + login: {} pairings and {} logins, alternating, in {:.2} s wall (with the \
         untimed assertions; {WARMUP} of each before, untimed)",
        run.whole.len(),
        run.login.len(),
        run.elapsed.as_secs_f64()
    );

    // 2. The raw primitives a pairing is made of, through the same engine,
    // store and audit code.
    let passkey: VerifyingKey = b.auth.key().verifying_key();
    let kept = &b.kept;
    let verify = timed_loop(s, |n| {
        let (signed, signature) = &kept[n as usize % kept.len()];
        passkey
            .verify(CoseAlgorithm::Es256, signed, signature, "bench")
            .expect("ES256 verify");
    });
    // A created pairing, then revision after revision of it, each counting
    // one more wrong code (the store keeps the count; the flow locks at
    // attempts_max, the store does not).
    let (id, _, _) = b.create();
    let pid = pairing::parse_id(&id).expect("pairing id");
    let mut rec = b.s.store.pairing(&pid).expect("read").expect("pairing");
    let write = timed_loop(s, |_| {
        rec.revision += 1;
        rec.code_attempts += 1;
        rec.updated_ms = signet::flows::unix_ms(SystemTime::now());
        b.s.store.update_pairing(&rec).expect("update_pairing");
    });
    // An audit record the size of a pairing's largest (pairing.approved),
    // through Services::record: fsync and amortized checkpoints, as the
    // flows pay them.
    let detail = json!({
        "userId": "x".repeat(22), "credentialId": "x".repeat(22), "tier": 3,
        "action": "default", "userVerified": true, "signCount": 1_000_000,
        "policyVersion": "tx-test-1",
    });
    let audit = timed_loop(s, |_| {
        let now = signet::flows::unix_ms(SystemTime::now());
        b.s.record(AuditEvent::new(now, ACTOR, "bench.audit", &id).with_detail(detail.clone()))
            .expect("audit append");
    });

    let rows = vec![
        Row {
            name: "ES256 assertion verify (aws-lc-rs), raw",
            stats: verify,
        },
        Row {
            name: "store write: update_pairing (fsync), raw",
            stats: write,
        },
        Row {
            name: "audit append (fsync), raw",
            stats: audit,
        },
        Row {
            name: "pairing::create",
            stats: Stats::busy(run.create),
        },
        Row {
            name: "pairing::claim",
            stats: Stats::busy(run.claim),
        },
        Row {
            name: "pairing::approve",
            stats: Stats::busy(run.approve),
        },
        Row {
            name: "pairing::status (one read)",
            stats: Stats::busy(run.status),
        },
        Row {
            name: "pairing::consume",
            stats: Stats::busy(run.consume),
        },
        Row {
            name: "pairing, whole (create+claim+approve+consume)",
            stats: Stats::busy(run.whole),
        },
        Row {
            name: "ceremony::authentication_options",
            stats: Stats::busy(run.options),
        },
        Row {
            name: "ceremony::authentication_verify",
            stats: Stats::busy(run.verify),
        },
        Row {
            name: "login, whole (options+verify)",
            stats: Stats::busy(run.login),
        },
    ];
    println!(
        "{:<46} {:>7} {:>10} {:>9} {:>9} {:>9}",
        "operation", "ops", "ops/s", "mean ms", "p50 ms", "p99 ms"
    );
    for r in &rows {
        let st = &r.stats;
        println!(
            "{:<46} {:>7} {:>10.0} {:>9.3} {:>9.3} {:>9.3}",
            r.name,
            st.lat.len(),
            st.ops_per_s(),
            st.mean_ms(),
            st.pct_ms(50.0),
            st.pct_ms(99.0)
        );
    }
    let [
        verify,
        write,
        audit,
        create,
        claim,
        approve,
        _,
        consume,
        whole,
        _,
        _,
        login,
    ] = std::array::from_fn(|i| rows[i].stats.mean_ms());
    println!("ratios (mean time per op, one thread):");
    println!(
        "  pairing     = {:.2}x a plain login's time ({whole:.3} vs {login:.3} ms): {:.0} \
         pairings/s against {:.0} logins/s; a pairing makes 8 fsync'd writes (4 store, 4 \
         audit), a login 4 (3 store, 1 audit)",
        whole / login,
        1e3 / whole,
        1e3 / login
    );
    share("pairing", whole, "ES256 verify", verify);
    share("pairing", whole, "4 store writes", 4.0 * write);
    share("pairing", whole, "4 audit appends", 4.0 * audit);
    share("pairing", whole, "8 writes", 4.0 * (write + audit));
    share("login", login, "ES256 verify", verify);
    share("login", login, "4 writes", 3.0 * write + audit);
    for (step, ms) in [
        ("create", create),
        ("claim", claim),
        ("approve", approve),
        ("consume", consume),
    ] {
        share(step, ms, "store+audit write", write + audit);
    }
    share("approve", approve, "ES256 verify", verify);
    println!(
        "  (writes counted at the raw update_pairing and audit-append costs, measured apart: \
         a create inserts and a login writes its ceremony and counter in other trees, so a \
         share near or above 100% means the step's own writes cost about the raw ones or less)"
    );
    rows.into_iter().map(|r| (label.to_string(), r)).collect()
}

fn main() {
    let args = parse_args("pairing");
    let s = args.seconds;
    let backends = Backends::load("pairing", &args);

    println!(
        "signet cross-device (QR) login benchmark: {s} s per raw measurement, {} s for the \
         alternating pairings and logins, single thread (one caller, in process, no HTTP), {} \
         cores",
        2.0 * s,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "create  = context checked, policy requirement, id, nonce, code and desktop secret drawn,\n\
         \x20         pairing insert (fsync), audit entry (fsync)\n\
         claim   = load, code checked, requirement, options, phone secret, pairing update\n\
         \x20         (fsync), audit entry (fsync)\n\
         approve = load, phone secret checked, challenge re-derived, WebAuthn assertion verified\n\
         \x20         (ES256, aws-lc-rs), approval + counter commit (fsync), audit entry (fsync)\n\
         status  = load, desktop secret checked (one read, no write)\n\
         consume = load, desktop secret checked, credential read, pairing update (fsync), audit\n\
         \x20         entry (fsync)\n\
         login   = authentication_options (ceremony put, fsync) + authentication_verify\n\
         \x20         (ceremony take, fsync; ES256 verified; counter, fsync; audit entry, fsync)\n\
         Both discoverable (no user named). The assertions are made untimed between the steps;\n\
         a whole pairing is the sum of its four timed steps (status not included), a login of\n\
         its two (ops/s of those rows = 1 / their mean latency). The key device signs only the\n\
         audit checkpoints (one signature per 1000 records or 60 s), paid as the service does."
    );
    backends.run(|label, path, profile| backend(label, path, profile, s));
}
