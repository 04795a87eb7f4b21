//! Transaction approval throughput: creation and approval through the
//! flows, next to the primitives an approval is made of, measured in the
//! same run: the key device's raw countersignature, the engine's ES256
//! assertion verification and the verification log's append. The ratios
//! say how much of an approval is the HSM/TPM operation and what the
//! verification log's fsync adds. Prints numbers, asserts nothing. Run it
//! through `scripts/bench approval`, which provisions a throw-away SoftHSM
//! token and swtpm:
//!
//! ```text
//! cargo bench --bench approval --features testkit -- --softhsm-profile P [--tpm-profile P] [--seconds S]
//! ```
//!
//! One thread, in process: a `Services` over a fresh `SledStore` in a temp
//! dir and the profile's keys, called the way the API handlers call it. One
//! user with one ES256 passkey (`SoftAuthenticator`) approves every
//! transaction. Each approval gets its own transaction and its own
//! assertion, prepared before the timed section (created, then asserted in
//! the order they are approved, so the authenticator's counter increases
//! from one approval to the next); only `approval::approve` is timed. The
//! approvals alternate between no verification log and the log configured
//! by `[transactions] verification_log`, so both variants see the same
//! machine and disk, and their difference is the log's cost.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use signet::evidence_log::VerificationLog;
use signet::flows::{Services, approval, ceremony};
use signet::keys::{EcPublicKey, KeyRing, Profile, Role};
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
/// Approvals prepared for the trial that sizes each approval run.
const TRIAL: usize = 20;
/// At most this many approvals (both variants) are prepared for the timed
/// run.
const APPROVE_MAX: usize = 20_000;

// As tests/transaction_approval.rs, with the longest lifetime and the most
// refusals the configuration allows, so that the first of thousands of
// prepared transactions is still pending when it is approved.
const EXTRA_CONFIG: &str = r#"
[transactions]
ttl_s = 86400
attempts_max = 100
"#;

/// The policy of the transaction tests (tests/data): tiers by AAGUID, and a
/// payment action with user verification and a threshold (the benchmark's
/// 250.00 CHF stays below it: tier 3 is enough).
const POLICY: &str = include_str!("../tests/data/transaction-policy.toml");

/// The transaction core banking creates for every approval.
fn payment() -> Value {
    json!({
        "user": {"name": "alice"},
        "details": {
            "type": "payment", "amount": "250.00", "currency": "CHF",
            "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"},
            "reference": "INV-2026-0042"
        }
    })
}

/// One prepared approval: the transaction's id and the approval body.
struct Prepared {
    id: String,
    body: Value,
    /// What the passkey signed and its signature (for the raw verification).
    signed: Vec<u8>,
    signature: Vec<u8>,
}

/// A `Services` over a fresh store and one profile's keys, with one user
/// holding one passkey.
struct Bench {
    s: Services,
    dir: tempfile::TempDir,
    auth: SoftAuthenticator,
    /// `[transactions] verification_log` as configured; `s.transactions.log`
    /// holds it while a run writes the log and is `None` while one does not.
    log: Option<VerificationLog>,
    countersign: EcPublicKey,
}

impl Bench {
    fn new(ring: KeyRing) -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("log/verification.jsonl");
        let mut s = flow_services(
            dir.path(),
            ring,
            &format!(
                "{EXTRA_CONFIG}verification_log = {:?}\n",
                log_path.display().to_string()
            ),
            POLICY,
        );
        let log = s.transactions.log.take();
        assert!(log.is_some(), "the verification log is configured");
        let countersign = s
            .keys
            .active(Role::ApprovalCountersign)
            .expect("approval-countersign")
            .public;

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
        let challenge = b64url_decode(
            "challenge",
            options["publicKey"]["challenge"]
                .as_str()
                .expect("challenge"),
            64,
        )
        .expect("challenge");
        let parts = auth.register(
            &Ceremony::new(RP_ID, ORIGIN, &challenge),
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
            log,
            countersign,
        }
    }

    /// Turns the verification log on or off for the approvals that follow.
    fn set_log(&mut self, on: bool) {
        if on != self.s.transactions.log.is_some() {
            std::mem::swap(&mut self.s.transactions.log, &mut self.log);
        }
    }

    fn create(&self) -> Value {
        approval::create(&self.s, &payment(), ACTOR, SystemTime::now()).expect("create")
    }

    /// `n` pending transactions, each with its own assertion, made in the
    /// order they are to be approved (the counter grows with each).
    fn prepare(&mut self, n: usize) -> Vec<Prepared> {
        (0..n)
            .map(|_| {
                let tx = self.create();
                let challenge = b64url_decode(
                    "challenge",
                    tx["publicKey"]["challenge"].as_str().expect("challenge"),
                    64,
                )
                .expect("challenge");
                let parts = self.auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge));
                Prepared {
                    id: tx["transactionId"]
                        .as_str()
                        .expect("transactionId")
                        .to_string(),
                    body: json!({ "credential": parts.to_json() }),
                    signed: parts.signed_data(),
                    signature: parts.signature,
                }
            })
            .collect()
    }

    /// Approves one prepared transaction: the only call timed.
    fn approve(&self, p: &Prepared) -> Value {
        approval::approve(&self.s, &p.id, &p.body, ACTOR, SystemTime::now()).expect("approve")
    }

    /// Approves `set` in order, the verification log off for even items
    /// and on for odd ones, until the set runs out or `seconds` pass;
    /// times each `approval::approve`. Interleaving puts both variants in
    /// the same moments of the machine's (and the disk's) load, so their
    /// difference is the log's cost. Returns (no log, log, receipts).
    fn approve_alternating(&mut self, set: &[Prepared], seconds: f64) -> Approvals {
        let budget = Duration::from_secs_f64(seconds);
        let mut lat = [Vec::new(), Vec::new()];
        let mut receipts = Vec::new();
        let start = Instant::now();
        for (i, p) in set.iter().enumerate() {
            if start.elapsed() >= budget {
                break;
            }
            self.set_log(i % 2 == 1);
            let t = Instant::now();
            let answer = self.approve(p);
            lat[i % 2].push(t.elapsed());
            assert_eq!(answer["state"], "approved");
            let receipt = answer["receipt"].as_str().expect("receipt");
            receipts.push(b64url_decode("receipt", receipt, 1 << 16).expect("receipt"));
        }
        let [plain, logged] = lat.map(Stats::busy);
        Approvals {
            plain,
            logged,
            receipts,
            elapsed: start.elapsed(),
        }
    }

    /// A trial to size the run, then [`Bench::approve_alternating`] over
    /// as many prepared transactions as `s` seconds per variant take (with
    /// a margin). Returns the timed run and the trial's prepared set.
    fn approve_runs(&mut self, s: f64) -> (Approvals, Vec<Prepared>) {
        let trial_set = self.prepare(TRIAL);
        let trial = self.approve_alternating(&trial_set, 3600.0);
        let rate =
            (trial.plain.lat.len() + trial.logged.lat.len()) as f64 / trial.elapsed.as_secs_f64();
        let want = (rate * 2.0 * s * 1.25).ceil() as usize;
        let n = want.clamp(TRIAL, APPROVE_MAX);
        let t = Instant::now();
        let set = self.prepare(n);
        println!(
            "approve: trial {rate:.0}/s over {TRIAL}; prepared {n} transactions and \
             assertions{} in {:.1} s (untimed)",
            if n < want { " (capped)" } else { "" },
            t.elapsed().as_secs_f64()
        );
        let run = self.approve_alternating(&set, 2.0 * s);
        println!(
            "approve: timed {} ({} without the log, {} with it, alternating) of the {} \
             prepared in {:.2} s ({})",
            run.receipts.len(),
            run.plain.lat.len(),
            run.logged.lat.len(),
            set.len(),
            run.elapsed.as_secs_f64(),
            if run.receipts.len() == set.len() {
                "ran out of transactions"
            } else {
                "stopped at the time budget"
            }
        );
        (run, trial_set)
    }
}

/// One alternating approval run.
struct Approvals {
    /// Without the verification log.
    plain: Stats,
    /// With it.
    logged: Stats,
    receipts: Vec<Vec<u8>>,
    elapsed: Duration,
}

fn backend(label: &str, path: &Path, profile: &Profile, s: f64) -> Vec<(String, Row)> {
    let ring =
        KeyRing::open(profile).unwrap_or_else(|e| usage("approval", &format!("{label}: {e}")));
    let mut b = Bench::new(ring);
    println!();
    println!("== {label} (profile {}) ==", path.display());
    println!("store: sled in {}", b.dir.path().display());

    // 1. Approval without and with the verification log, alternating.
    let (run, trial) = b.approve_runs(s);
    let receipts = run.receipts;
    b.set_log(true);
    let log_path =
        b.s.transactions
            .log
            .as_ref()
            .expect("log on")
            .path()
            .to_path_buf();
    let line = std::fs::read_to_string(&log_path)
        .expect("verification log")
        .lines()
        .next()
        .expect("a line")
        .to_string();

    // 2. Creation (no key operation but the audit log's checkpoints).
    let create = timed_loop(s, |_| {
        b.create();
    });

    // 3. The raw primitives an approval is made of, through the same
    // KeyRing, engine and log code, on inputs of the approvals' sizes.
    let receipt = &receipts[0];
    let sign = timed_loop(s, |n| {
        let mut tbs = receipt.clone();
        tbs[..8].copy_from_slice(&n.to_le_bytes());
        b.s.keys
            .sign(Role::ApprovalCountersign, &tbs)
            .expect("sign");
    });
    let passkey: VerifyingKey = b.auth.key().verifying_key();
    let verify = timed_loop(s, |n| {
        let p = &trial[n as usize % trial.len()];
        passkey
            .verify(CoseAlgorithm::Es256, &p.signed, &p.signature, "bench")
            .expect("ES256 verify");
    });
    let receipt_verify = timed_loop(s, |n| {
        signet::receipt::verify(&receipts[n as usize % receipts.len()], &b.countersign)
            .expect("receipt verifies");
    });
    let raw_log = VerificationLog::new(b.dir.path().join("log/raw.jsonl"));
    let append = timed_loop(s, |_| {
        raw_log.append(&line).expect("append");
    });
    println!(
        "raw inputs: {}-byte messages signed (a receipt's size), {}-byte log lines",
        receipt.len(),
        line.len()
    );

    let rows = vec![
        Row {
            name: "KeyRing::sign(approval-countersign), raw",
            stats: sign,
        },
        Row {
            name: "ES256 assertion verify (aws-lc-rs), raw",
            stats: verify,
        },
        Row {
            name: "receipt::verify (offline), raw",
            stats: receipt_verify,
        },
        Row {
            name: "verification-log append (fsync), raw",
            stats: append,
        },
        Row {
            name: "approval::create",
            stats: create,
        },
        Row {
            name: "approval::approve, no log",
            stats: run.plain,
        },
        Row {
            name: "approval::approve, verification log",
            stats: run.logged,
        },
    ];
    println!(
        "{:<42} {:>7} {:>10} {:>9} {:>9} {:>9}",
        "operation", "ops", "ops/s", "mean ms", "p50 ms", "p99 ms"
    );
    for r in &rows {
        let st = &r.stats;
        println!(
            "{:<42} {:>7} {:>10.0} {:>9.3} {:>9.3} {:>9.3}",
            r.name,
            st.lat.len(),
            st.ops_per_s(),
            st.mean_ms(),
            st.pct_ms(50.0),
            st.pct_ms(99.0)
        );
    }
    let [sign, verify, _, append, _, approve, approve_log] =
        [0, 1, 2, 3, 4, 5, 6].map(|i| rows[i].stats.mean_ms());
    println!("ratios (mean time per op, one thread):");
    share("approve", approve, "raw sign", sign);
    share("approve+log", approve_log, "raw sign", sign);
    share("approve", approve, "ES256 verify", verify);
    let log_cost = approve_log - approve;
    let p50_cost = rows[6].stats.pct_ms(50.0) - rows[5].stats.pct_ms(50.0);
    println!(
        "  log cost    = {log_cost:.3} ms per approval on the mean, {p50_cost:.3} ms on the p50 \
         ({:.1}% of an approval with the log; {:.2}x the no-log rate); a raw append takes \
         {append:.3} ms",
        log_cost / approve_log * 100.0,
        approve / approve_log
    );
    rows.into_iter().map(|r| (label.to_string(), r)).collect()
}

fn main() {
    let args = parse_args("approval");
    let s = args.seconds;
    let backends = Backends::load("approval", &args);

    println!(
        "signet transaction-approval benchmark: {s} s per measurement, single thread (one \
         caller, in process, no HTTP), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "create  = details checked and canonicalized, policy requirement, user and credentials\n\
         \x20         read, nonce, challenge, options, transaction insert (fsync), audit entry (fsync)\n\
         approve = load, challenge re-derived, WebAuthn assertion verified (ES256, aws-lc-rs),\n\
         \x20         receipt countersigned by the HSM/TPM (ES256), [verification-log line (fsync)],\n\
         \x20         approval + counter commit (fsync), audit entry (fsync)\n\
         Each approval has its own transaction and assertion, prepared untimed before the run;\n\
         only approval::approve is timed, alternately without and with the verification log\n\
         (ops/s of those two rows = 1 / their mean latency). Key lookups come from KeyRing's\n\
         cached listing. Both pay audit checkpoints (one signature per 1000 records or 60 s)\n\
         as the service does."
    );
    backends.run(|label, path, profile| backend(label, path, profile, s));
}
