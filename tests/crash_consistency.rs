//! Crash consistency: a real `signet serve` under a load of registrations,
//! authentications, device bindings (token redemptions), transaction
//! approvals and QR pairings from several client threads is killed with
//! SIGKILL at random moments, at least 20 times (200 under
//! `SIGNET_SOAK=1`, which `scripts/soak` sets), and restarted on the same
//! store and token. After every restart, and for everything at the end:
//!
//! - every acknowledged registration is still listed, and every bound
//!   device still bound to its passkey;
//! - every acknowledged approval is still approved, with the receipt the
//!   client was given (verified offline with `signet evidence verify` at
//!   the end);
//! - no counter went backwards: each stored signCount is at least the
//!   highest one acknowledged, and at least what was stored before;
//! - nothing consumed is usable again: the exact body of every
//!   acknowledged verify, redemption, approval, claim and consume is sent
//!   again and refused with its "already used" problem;
//! - a request that was in flight at the kill (no answer) may or may not
//!   have landed, but it too is used at most once: sent again, it either
//!   succeeds now (it had not landed) and is then refused, or is refused at
//!   once (it had);
//! - `signet audit verify`, as the officer runs it, passes on the store
//!   exactly as every fifth kill left it (every 25th in the soak), and on
//!   the final one after a clean stop.
//!
//! The client keeps its own ledger of what was acknowledged (an answer
//! received); the checks compare the server with it. The generator's seed
//! is printed; `SIGNET_CRASH_SEED` repeats a run's choices (the kill
//! moments still depend on timing). One summary line starts with
//! `crash-consistency:`.

#![cfg(feature = "testkit")]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signet::testkit::device::SoftDevice;
use signet::testkit::{Attestation, SoftAuthenticator, browser};
use signet::webauthn::b64url;

use common::load::{
    self, Api, DESKTOP, PHONE, Pinned, Request, Rng, assertion, sealed_registration, slug,
};
use common::server::{ORIGIN, SignetServer};

/// Limits far above what the workers send, and quiet logs (every access
/// line would otherwise cross a pipe).
const CONFIG: &str = "[limits]\nrate_per_second = 100000\nburst = 100000\nmax_in_flight = 10000\n\n\
                      [log]\nlevel = \"warn\"\n";

/// Client threads comparing the server with the ledger between rounds.
const CHECKERS: usize = 4;

/// `rp.ceremony_timeout_ms` and `pairing.ttl_s` at their defaults: a
/// replay older than that (only in a long soak) may meet the expiry
/// instead of the consumption.
const CEREMONY_TTL: Duration = Duration::from_secs(300);
const PAIRING_TTL: Duration = Duration::from_secs(120);

struct Settings {
    kills: usize,
    workers: usize,
    /// The kill comes this long after the load started (ms, uniform).
    delay_ms: (u64, u64),
    /// Older ledger entries of each kind checked after a restart, besides
    /// everything new since the last check (the final check takes all).
    sample: usize,
    /// `signet audit verify` on the killed store every this many kills.
    audit_every: usize,
}

fn settings() -> Settings {
    let soak = std::env::var("SIGNET_SOAK").is_ok_and(|v| !v.is_empty() && v != "0");
    if soak {
        Settings {
            kills: 200,
            workers: 4,
            delay_ms: (50, 400),
            sample: 12,
            audit_every: 25,
        }
    } else {
        Settings {
            kills: 20,
            workers: 3,
            delay_ms: (50, 400),
            sample: 12,
            audit_every: 5,
        }
    }
}

// ---- the ledger: what the client was told ----

/// A credential the server acknowledged (or was seen to hold after a
/// restart, for one whose request was in flight).
struct Cred {
    user_id: String,
    id: String,
    /// The highest counter of an acknowledged assertion (or of one whose
    /// effect was seen committed).
    acked: u32,
    /// The highest counter the server has listed for it.
    seen: u64,
}

struct Approval {
    tx_id: String,
    receipt: String,
}

struct Bound {
    device_id: String,
    cred: String,
}

/// A consuming request to send again, and what it must then get.
struct Replay {
    what: &'static str,
    req: Request,
    want: &'static str,
    at: Instant,
    /// Past this age the thing may have expired instead: these problems
    /// are then right too.
    expiry: Option<(Duration, &'static [&'static str])>,
}

#[derive(Default)]
struct Counts {
    registrations: usize,
    authentications: usize,
    redemptions: usize,
    approvals: usize,
    pairings: usize,
    /// Requests without an answer at a kill (not counting `unsent`).
    no_answer: usize,
    /// Those of them that consume something.
    in_flight: usize,
    in_flight_landed: usize,
    in_flight_not_landed: usize,
    /// Refused at connect after the kill: never reached the server.
    unsent: usize,
    replays_refused: usize,
    checks: usize,
}

#[derive(Default)]
struct Fresh {
    creds: HashSet<usize>,
    approvals: HashSet<usize>,
    devices: HashSet<usize>,
    replays: HashSet<usize>,
}

#[derive(Default)]
struct Ledger {
    creds: Vec<Cred>,
    approvals: Vec<Approval>,
    devices: Vec<Bound>,
    replays: Vec<Replay>,
    fresh: Fresh,
    n: Counts,
}

const CEREMONY_EXPIRY: Option<(Duration, &[&str])> =
    Some((CEREMONY_TTL, &["ceremony-expired", "ceremony-not-found"]));
const PAIRING_EXPIRY: Option<(Duration, &[&str])> = Some((PAIRING_TTL, &["pairing-expired"]));

impl Ledger {
    fn add_cred(&mut self, user_id: &str, id: &str, count: u32) -> usize {
        self.creds.push(Cred {
            user_id: user_id.to_string(),
            id: id.to_string(),
            acked: count,
            seen: 0,
        });
        let i = self.creds.len() - 1;
        self.fresh.creds.insert(i);
        i
    }

    fn raise(&mut self, cred: usize, count: u32) {
        let c = &mut self.creds[cred];
        c.acked = c.acked.max(count);
        self.fresh.creds.insert(cred);
    }

    fn replay(
        &mut self,
        what: &'static str,
        req: &Request,
        want: &'static str,
        expiry: Option<(Duration, &'static [&'static str])>,
    ) {
        self.replays.push(Replay {
            what,
            req: req.clone(),
            want,
            at: Instant::now(),
            expiry,
        });
        self.fresh.replays.insert(self.replays.len() - 1);
    }

    fn approval(&mut self, tx_id: &str, receipt: &str) {
        self.approvals.push(Approval {
            tx_id: tx_id.to_string(),
            receipt: receipt.to_string(),
        });
        self.fresh.approvals.insert(self.approvals.len() - 1);
    }

    fn bound(&mut self, device_id: &str, cred: &str) {
        self.devices.push(Bound {
            device_id: device_id.to_string(),
            cred: cred.to_string(),
        });
        self.fresh.devices.insert(self.devices.len() - 1);
    }

    /// A pairing taken by the desktop: its claim, answer and consume are
    /// all spent.
    fn pairing(&mut self, claim: &Request, approve: &Request, consume: &Request) {
        self.replay("pairing claim", claim, "pairing-consumed", None);
        self.replay("pairing approval", approve, "pairing-consumed", None);
        self.replay("pairing consume", consume, "pairing-consumed", None);
    }
}

// ---- coordination between the main thread and the workers ----

#[derive(Default)]
struct Phase {
    /// The server incarnation the workers are to use (0: none yet).
    round: u64,
    api: Option<Api>,
    /// The round whose load may run.
    go: u64,
    /// Workers done with their in-flight request this round.
    resolved: usize,
    /// Workers whose load ended this round.
    parked: usize,
    failures: Vec<String>,
}

#[derive(Default)]
struct Coord {
    phase: Mutex<Phase>,
    cv: Condvar,
    /// Set just before the SIGKILL: a transport error is expected only
    /// then.
    killed: AtomicBool,
    /// The last round: the load ends by itself after its current flow.
    finish: AtomicBool,
    /// Something failed: everyone stops.
    abort: AtomicBool,
}

impl Coord {
    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, message: String) {
        self.abort.store(true, Ordering::SeqCst);
        self.lock().failures.push(message);
        self.cv.notify_all();
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    /// Waits until `ready` holds; false if the run was aborted meanwhile or
    /// it took more than two minutes (then it aborts).
    fn wait(&self, what: &str, ready: impl Fn(&Phase) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut p = self.lock();
        loop {
            if self.aborted() {
                return false;
            }
            if ready(&p) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(p);
                self.fail(format!("waited two minutes for {what}"));
                return false;
            }
            p = self
                .cv
                .wait_timeout(p, (deadline - now).min(Duration::from_millis(200)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn update(&self, f: impl FnOnce(&mut Phase)) {
        f(&mut self.lock());
        self.cv.notify_all();
    }
}

// ---- the workers: one client each, its own passkeys ----

struct Passkey {
    name: String,
    cred: usize,
    auth: SoftAuthenticator,
}

/// A consuming request whose answer never came, with what the worker
/// needs to finish the story once the server is back.
enum Pending {
    Register {
        req: Request,
        name: String,
        user_id: String,
        auth: SoftAuthenticator,
    },
    Authenticate {
        req: Request,
        passkey: usize,
        count: u32,
    },
    Redeem {
        req: Request,
        device_id: String,
        name: String,
        auth: SoftAuthenticator,
    },
    Approve {
        req: Request,
        tx_id: String,
        passkey: usize,
        count: u32,
    },
    Claim {
        req: Request,
    },
    PairingApprove {
        claim: Request,
        req: Request,
        consume: Request,
        passkey: usize,
        count: u32,
    },
    Consume {
        claim: Request,
        approve: Request,
        req: Request,
    },
}

/// Why a flow ended early.
enum Stop {
    /// No answer, after the kill; the request to finish later, if it
    /// consumed something.
    Lost(Option<Box<(Pending, bool)>>),
    Failed(String),
}

struct Worker<'a> {
    id: usize,
    rng: Rng,
    api: Option<Api>,
    pinned: &'a Pinned,
    ledger: &'a Mutex<Ledger>,
    coord: &'a Coord,
    passkeys: Vec<Passkey>,
    /// The request in flight at the kill, and whether it was refused at
    /// connect (so never reached the server).
    pending: Option<Box<(Pending, bool)>>,
    made: usize,
}

fn expect(what: &str, got: (u16, &Value), want: u16) -> Result<(), Stop> {
    if got.0 == want {
        Ok(())
    } else {
        Err(Stop::Failed(format!(
            "{what}: want {want}, got {} {}",
            got.0, got.1
        )))
    }
}

fn refused(what: &str, got: (u16, &Value), slug_wanted: &str) -> Result<(), String> {
    if got.0 == 409 && slug(got.1) == slug_wanted {
        Ok(())
    } else {
        Err(format!(
            "{what}: sent again, want 409 {slug_wanted}, got {} {}",
            got.0, got.1
        ))
    }
}

impl<'a> Worker<'a> {
    fn ledger(&self) -> MutexGuard<'a, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn api(&self) -> &Api {
        self.api.as_ref().expect("a round's client")
    }

    /// The worker's life: per round, finish the in-flight request, then
    /// load until the kill (or the end).
    fn run(&mut self) {
        let mut round = 0;
        loop {
            if !self.coord.wait("the next round", |p| p.round > round) {
                return;
            }
            let api = {
                let p = self.coord.lock();
                round = p.round;
                p.api.clone()
            };
            self.api = api;
            if let Some(pending) = self.pending.take()
                && let Err(e) = self.resolve(pending.0, pending.1)
            {
                self.coord.fail(format!("worker {}: {e}", self.id));
                return;
            }
            self.coord.update(|p| p.resolved += 1);
            if !self.coord.wait("the load to start", |p| p.go >= round) {
                return;
            }
            loop {
                if self.coord.aborted() {
                    return;
                }
                if self.coord.finish.load(Ordering::SeqCst) {
                    self.coord.update(|p| p.parked += 1);
                    return;
                }
                match self.step() {
                    Ok(()) => {}
                    Err(Stop::Lost(pending)) => {
                        self.pending = pending;
                        break;
                    }
                    Err(Stop::Failed(e)) => {
                        self.coord.fail(format!("worker {}: {e}", self.id));
                        return;
                    }
                }
            }
            self.coord.update(|p| p.parked += 1);
        }
    }

    /// A transport error: expected only after the kill.
    fn lost(&self, e: reqwest::Error, pending: Option<Pending>) -> Stop {
        if !self.coord.killed.load(Ordering::SeqCst) {
            return Stop::Failed(format!("no answer, and no kill: {e:?}"));
        }
        let unsent = e.is_connect();
        let mut l = self.ledger();
        if unsent {
            l.n.unsent += 1;
        } else {
            l.n.no_answer += 1;
            l.n.in_flight += usize::from(pending.is_some());
        }
        Stop::Lost(pending.map(|p| Box::new((p, unsent))))
    }

    fn send(&self, req: &Request) -> Result<(u16, Value), Stop> {
        self.api().send(req).map_err(|e| self.lost(e, None))
    }

    fn post(&self, path: &str, body: Value) -> Result<(u16, Value), Stop> {
        self.send(&Request::post(path, body))
    }

    fn step(&mut self) -> Result<(), Stop> {
        if self.passkeys.len() < 2 {
            return self.register();
        }
        match self.rng.below(100) {
            0..15 => self.register(),
            15..45 => self.authenticate(),
            45..60 => self.bind_device(),
            60..85 => self.approve(),
            _ => self.pair(),
        }
    }

    fn name(&mut self, what: &str) -> String {
        self.made += 1;
        format!("crash-w{}-{what}{}", self.id, self.made)
    }

    fn register(&mut self) -> Result<(), Stop> {
        let name = self.name("user");
        let (status, options) =
            self.post("/v1/registrations/options", json!({"user": {"name": name}}))?;
        expect("registration options", (status, &options), 200)?;
        let (auth, credential) = browser::create(&options["publicKey"], ORIGIN, &Attestation::None)
            .map_err(|e| Stop::Failed(format!("create: {e}")))?;
        let user_id = options["publicKey"]["user"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let req = Request::post(
            "/v1/registrations/verify",
            json!({"ceremonyId": options["ceremonyId"], "credential": credential}),
        );
        let (status, answer) = match self.api().send(&req) {
            Ok(a) => a,
            Err(e) => {
                let pending = Pending::Register {
                    req,
                    name,
                    user_id,
                    auth,
                };
                return Err(self.lost(e, Some(pending)));
            }
        };
        expect("registration", (status, &answer), 200)?;
        self.registered(&req, name, &user_id, auth, &answer)
    }

    /// An acknowledged registration: in the ledger, and a passkey to use.
    fn registered(
        &mut self,
        req: &Request,
        name: String,
        user_id: &str,
        auth: SoftAuthenticator,
        answer: &Value,
    ) -> Result<(), Stop> {
        let id = b64url(&auth.credential_id);
        if answer["credentialId"] != id.as_str() || answer["userId"] != user_id {
            return Err(Stop::Failed(format!(
                "registration answered another credential or user: {answer}"
            )));
        }
        let mut l = self.ledger();
        l.n.registrations += 1;
        let cred = l.add_cred(user_id, &id, 0);
        l.replay(
            "registration ceremony",
            req,
            "ceremony-consumed",
            CEREMONY_EXPIRY,
        );
        drop(l);
        self.passkeys.push(Passkey { name, cred, auth });
        Ok(())
    }

    fn authenticate(&mut self) -> Result<(), Stop> {
        let i = self.rng.below(self.passkeys.len());
        let name = self.passkeys[i].name.clone();
        let (status, options) = self.post(
            "/v1/authentications/options",
            json!({"user": {"name": name}}),
        )?;
        expect("authentication options", (status, &options), 200)?;
        let p = &mut self.passkeys[i];
        let credential = assertion(&mut p.auth, &options["publicKey"]);
        let count = p.auth.sign_count;
        let req = Request::post(
            "/v1/authentications/verify",
            json!({"ceremonyId": options["ceremonyId"], "credential": credential}),
        );
        let (status, answer) = match self.api().send(&req) {
            Ok(a) => a,
            Err(e) => {
                let pending = Pending::Authenticate {
                    req,
                    passkey: i,
                    count,
                };
                return Err(self.lost(e, Some(pending)));
            }
        };
        expect("authentication", (status, &answer), 200)?;
        self.authenticated(&req, i, count, &answer)
    }

    fn authenticated(
        &mut self,
        req: &Request,
        passkey: usize,
        count: u32,
        answer: &Value,
    ) -> Result<(), Stop> {
        if answer["signCount"] != count {
            return Err(Stop::Failed(format!(
                "authentication answered signCount {}, the assertion said {count}",
                answer["signCount"]
            )));
        }
        let cred = self.passkeys[passkey].cred;
        let mut l = self.ledger();
        l.n.authentications += 1;
        l.raise(cred, count);
        l.replay(
            "authentication ceremony",
            req,
            "ceremony-consumed",
            CEREMONY_EXPIRY,
        );
        Ok(())
    }

    fn bind_device(&mut self) -> Result<(), Stop> {
        let name = self.name("device");
        let dev = SoftDevice::generate();
        let (status, enrolled) = self.post(
            "/v1/devices",
            dev.enrollment(&name, json!({"os": "android"})),
        )?;
        expect("enrollment", (status, &enrolled), 201)?;
        let device_id = enrolled["deviceId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (status, token) = self.post(
            &format!("/v1/devices/{device_id}/verification"),
            json!({"outcome": "verified", "reference": "KYC"}),
        )?;
        expect("verification", (status, &token), 200)?;
        let (body, auth) = sealed_registration(&dev, &device_id, &token, self.pinned);
        let req = Request::post(format!("/v1/devices/{device_id}/registration"), body);
        let (status, answer) = match self.api().send(&req) {
            Ok(a) => a,
            Err(e) => {
                let pending = Pending::Redeem {
                    req,
                    device_id,
                    name,
                    auth,
                };
                return Err(self.lost(e, Some(pending)));
            }
        };
        expect("redemption", (status, &answer), 200)?;
        self.redeemed(&req, &device_id, name, auth, &answer)
    }

    fn redeemed(
        &mut self,
        req: &Request,
        device_id: &str,
        name: String,
        auth: SoftAuthenticator,
        answer: &Value,
    ) -> Result<(), Stop> {
        let id = b64url(&auth.credential_id);
        if answer["credentialId"] != id.as_str() || answer["state"] != "bound" {
            return Err(Stop::Failed(format!(
                "redemption answered another credential: {answer}"
            )));
        }
        let user_id = answer["userId"].as_str().unwrap_or_default();
        let mut l = self.ledger();
        l.n.redemptions += 1;
        let cred = l.add_cred(user_id, &id, 0);
        l.bound(device_id, &id);
        l.replay("registration token", req, "token-consumed", None);
        drop(l);
        self.passkeys.push(Passkey { name, cred, auth });
        Ok(())
    }

    fn approve(&mut self) -> Result<(), Stop> {
        let i = self.rng.below(self.passkeys.len());
        let name = self.passkeys[i].name.clone();
        let reference = self.name("ref");
        let amount = format!("{}.{:02}", self.rng.range(1, 999), self.rng.range(0, 99));
        let (status, tx) = self.post(
            "/v1/transactions",
            load::payment(&name, &amount, &reference),
        )?;
        expect("transaction", (status, &tx), 201)?;
        let tx_id = tx["transactionId"].as_str().unwrap_or_default().to_string();
        let p = &mut self.passkeys[i];
        let credential = assertion(&mut p.auth, &tx["publicKey"]);
        let count = p.auth.sign_count;
        let req = Request::post(
            format!("/v1/transactions/{tx_id}/approval"),
            json!({"credential": credential}),
        );
        let (status, answer) = match self.api().send(&req) {
            Ok(a) => a,
            Err(e) => {
                let pending = Pending::Approve {
                    req,
                    tx_id,
                    passkey: i,
                    count,
                };
                return Err(self.lost(e, Some(pending)));
            }
        };
        expect("approval", (status, &answer), 200)?;
        self.approved(&req, &tx_id, i, count, &answer)
    }

    fn approved(
        &mut self,
        req: &Request,
        tx_id: &str,
        passkey: usize,
        count: u32,
        answer: &Value,
    ) -> Result<(), Stop> {
        let receipt = answer["receipt"].as_str().unwrap_or_default();
        if answer["state"] != "approved" || receipt.is_empty() || answer["signCount"] != count {
            return Err(Stop::Failed(format!(
                "approval of {tx_id} (counter {count}) answered {answer}"
            )));
        }
        let cred = self.passkeys[passkey].cred;
        let mut l = self.ledger();
        l.n.approvals += 1;
        l.raise(cred, count);
        l.approval(tx_id, receipt);
        l.replay("transaction approval", req, "transaction-approved", None);
        Ok(())
    }

    fn pair(&mut self) -> Result<(), Stop> {
        let i = self.rng.below(self.passkeys.len());
        let name = self.passkeys[i].name.clone();
        let (status, created) = self.post("/v1/pairings", load::pairing(&name))?;
        expect("pairing", (status, &created), 201)?;
        let id = created["pairingId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let desktop = created["desktopSecret"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let claim = Request::post(
            format!("/v1/pairings/{id}/claim"),
            json!({"code": load::qr_code(&created)}),
        );
        let consume =
            Request::empty(format!("/v1/pairings/{id}/consume")).header(DESKTOP, &desktop);
        let (status, claimed) = match self.api().send(&claim) {
            Ok(a) => a,
            Err(e) => return Err(self.lost(e, Some(Pending::Claim { req: claim }))),
        };
        expect("claim", (status, &claimed), 200)?;
        let p = &mut self.passkeys[i];
        let credential = assertion(&mut p.auth, &claimed["publicKey"]);
        let count = p.auth.sign_count;
        let phone = claimed["phoneSecret"].as_str().unwrap_or_default();
        let approve = Request::post(
            format!("/v1/pairings/{id}/approve"),
            json!({"credential": credential}),
        )
        .header(PHONE, phone);
        let (status, answer) = match self.api().send(&approve) {
            Ok(a) => a,
            Err(e) => {
                let pending = Pending::PairingApprove {
                    claim,
                    req: approve,
                    consume,
                    passkey: i,
                    count,
                };
                return Err(self.lost(e, Some(pending)));
            }
        };
        expect("pairing approval", (status, &answer), 200)?;
        let cred = self.passkeys[i].cred;
        self.ledger().raise(cred, count);
        let (status, answer) = match self.api().send(&consume) {
            Ok(a) => a,
            Err(e) => {
                let pending = Pending::Consume {
                    claim,
                    approve,
                    req: consume,
                };
                return Err(self.lost(e, Some(pending)));
            }
        };
        expect("pairing consume", (status, &answer), 200)?;
        let mut l = self.ledger();
        l.n.pairings += 1;
        l.pairing(&claim, &approve, &consume);
        Ok(())
    }

    /// Sends the in-flight request again on the restarted server. It
    /// either had not landed and succeeds now (and is then refused when
    /// sent once more), or had landed and is refused at once: never both
    /// used before and usable now.
    fn resolve(&mut self, pending: Pending, unsent: bool) -> Result<(), String> {
        let api = self.api().clone();
        let send = |req: &Request| {
            api.send(req)
                .map_err(|e| format!("no answer after the restart: {e:?}"))
        };
        let stop = |s: Stop| match s {
            Stop::Failed(e) => e,
            Stop::Lost(_) => "no answer after the restart".into(),
        };
        let landed = match pending {
            Pending::Register {
                req,
                name,
                user_id,
                auth,
            } => match send(&req)? {
                (200, answer) => {
                    self.registered(&req, name, &user_id, auth, &answer)
                        .map_err(stop)?;
                    refused("registration", send(&req)?.pair(), "ceremony-consumed")?;
                    false
                }
                (409, answer) if slug(&answer) == "ceremony-consumed" => {
                    // Spent; whether the credential was stored before the
                    // kill shows in the user's list (a user that does not
                    // exist was never stored either).
                    let id = b64url(&auth.credential_id);
                    let (status, list) = api
                        .get(&format!("/v1/users/{user_id}/credentials"))
                        .map_err(|e| format!("{e:?}"))?;
                    let stored = status == 200
                        && list["credentials"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c["credentialId"] == id.as_str()));
                    let mut l = self.ledger();
                    l.replay(
                        "registration ceremony",
                        &req,
                        "ceremony-consumed",
                        CEREMONY_EXPIRY,
                    );
                    if stored {
                        let cred = l.add_cred(&user_id, &id, 0);
                        drop(l);
                        self.passkeys.push(Passkey { name, cred, auth });
                    }
                    true
                }
                (s, a) => return Err(format!("in-flight registration, sent again: {s} {a}")),
            },
            Pending::Authenticate {
                req,
                passkey,
                count,
            } => match send(&req)? {
                (200, answer) => {
                    self.authenticated(&req, passkey, count, &answer)
                        .map_err(stop)?;
                    refused("authentication", send(&req)?.pair(), "ceremony-consumed")?;
                    false
                }
                (409, answer) if slug(&answer) == "ceremony-consumed" => {
                    self.ledger().replay(
                        "authentication ceremony",
                        &req,
                        "ceremony-consumed",
                        CEREMONY_EXPIRY,
                    );
                    true
                }
                (s, a) => return Err(format!("in-flight authentication, sent again: {s} {a}")),
            },
            Pending::Redeem {
                req,
                device_id,
                name,
                auth,
            } => match send(&req)? {
                (200, answer) => {
                    self.redeemed(&req, &device_id, name, auth, &answer)
                        .map_err(stop)?;
                    refused("redemption", send(&req)?.pair(), "token-consumed")?;
                    false
                }
                (409, answer) if slug(&answer) == "token-consumed" => {
                    // Bound before the kill: to this passkey, as the device
                    // shows.
                    let (_, shown) = api
                        .get(&format!("/v1/devices/{device_id}"))
                        .map_err(|e| format!("{e:?}"))?;
                    let id = b64url(&auth.credential_id);
                    if shown["state"] != "bound" || shown["credentials"] != json!([id]) {
                        return Err(format!(
                            "in-flight redemption refused as token-consumed, but the device \
                             is not bound to its passkey {id}: {shown}"
                        ));
                    }
                    let user_id = shown["user"]["id"].as_str().unwrap_or_default().to_string();
                    let mut l = self.ledger();
                    l.replay("registration token", &req, "token-consumed", None);
                    let cred = l.add_cred(&user_id, &id, 0);
                    l.bound(&device_id, &id);
                    drop(l);
                    self.passkeys.push(Passkey { name, cred, auth });
                    true
                }
                (s, a) => return Err(format!("in-flight redemption, sent again: {s} {a}")),
            },
            Pending::Approve {
                req,
                tx_id,
                passkey,
                count,
            } => match send(&req)? {
                (200, answer) => {
                    self.approved(&req, &tx_id, passkey, count, &answer)
                        .map_err(stop)?;
                    refused("approval", send(&req)?.pair(), "transaction-approved")?;
                    false
                }
                (409, answer) if slug(&answer) == "transaction-approved" => {
                    // Approved before the kill, by this answer (no other
                    // was sent): its receipt from now on never changes,
                    // and the counter moved with it.
                    let (status, receipt) = api
                        .get(&format!("/v1/transactions/{tx_id}/receipt"))
                        .map_err(|e| format!("{e:?}"))?;
                    if status != 200 {
                        return Err(format!("receipt of approved {tx_id}: {status} {receipt}"));
                    }
                    let cred = self.passkeys[passkey].cred;
                    let mut l = self.ledger();
                    l.raise(cred, count);
                    l.approval(&tx_id, receipt["receipt"].as_str().unwrap_or_default());
                    l.replay("transaction approval", &req, "transaction-approved", None);
                    true
                }
                (s, a) => return Err(format!("in-flight approval, sent again: {s} {a}")),
            },
            Pending::Claim { req } => match send(&req)? {
                (200, _) => {
                    // Claimed now; left so, and spent.
                    refused("claim", send(&req)?.pair(), "pairing-claimed")?;
                    self.ledger()
                        .replay("pairing claim", &req, "pairing-claimed", PAIRING_EXPIRY);
                    false
                }
                (409, answer) if slug(&answer) == "pairing-claimed" => {
                    self.ledger()
                        .replay("pairing claim", &req, "pairing-claimed", PAIRING_EXPIRY);
                    true
                }
                (s, a) => return Err(format!("in-flight claim, sent again: {s} {a}")),
            },
            Pending::PairingApprove {
                claim,
                req,
                consume,
                passkey,
                count,
            } => {
                let landed = match send(&req)? {
                    (200, _) => false,
                    (409, answer) if slug(&answer) == "pairing-approved" => true,
                    (s, a) => {
                        return Err(format!("in-flight pairing approval, sent again: {s} {a}"));
                    }
                };
                let cred = self.passkeys[passkey].cred;
                self.ledger().raise(cred, count);
                // The desktop takes the login, once.
                let (status, answer) = send(&consume)?;
                if status != 200 {
                    return Err(format!(
                        "consume after a pairing approval: {status} {answer}"
                    ));
                }
                let mut l = self.ledger();
                l.n.pairings += 1;
                l.pairing(&claim, &req, &consume);
                landed
            }
            Pending::Consume {
                claim,
                approve,
                req,
            } => {
                let landed = match send(&req)? {
                    (200, _) => false,
                    (409, answer) if slug(&answer) == "pairing-consumed" => true,
                    (s, a) => return Err(format!("in-flight consume, sent again: {s} {a}")),
                };
                let mut l = self.ledger();
                l.n.pairings += usize::from(!landed);
                l.pairing(&claim, &approve, &req);
                landed
            }
        };
        if unsent && landed {
            return Err("a request refused at connect had landed".into());
        }
        let mut l = self.ledger();
        if !unsent {
            if landed {
                l.n.in_flight_landed += 1;
            } else {
                l.n.in_flight_not_landed += 1;
            }
        }
        Ok(())
    }
}

trait Pair {
    fn pair(&self) -> (u16, &Value);
}

impl Pair for (u16, Value) {
    fn pair(&self) -> (u16, &Value) {
        (self.0, &self.1)
    }
}

// ---- the checks, between rounds (the load paused) ----

/// What to look at: everything new since the last check, and `sample`
/// older entries at random (everything when `all`).
fn pick(fresh: &HashSet<usize>, len: usize, sample: usize, all: bool, rng: &mut Rng) -> Vec<usize> {
    if all {
        return (0..len).collect();
    }
    let mut out: HashSet<usize> = fresh.clone();
    if len > 0 {
        for _ in 0..sample {
            out.insert(rng.below(len));
        }
    }
    let mut v: Vec<usize> = out.into_iter().collect();
    v.sort_unstable();
    v
}

fn get(api: &Api, path: &str) -> Result<(u16, Value), String> {
    api.get(path)
        .map_err(|e| format!("GET {path}: no answer: {e:?}"))
}

/// One look at the server.
enum Probe {
    /// A user's credentials (ledger indexes), with their counters.
    User(String, Vec<usize>),
    Approval(usize),
    Device(usize),
    Replay(usize),
}

/// What a probe found: problems, counters seen, replays refused.
#[derive(Default)]
struct Found {
    errors: Vec<String>,
    seen: Vec<(usize, u64)>,
    refused: usize,
}

fn probe(api: &Api, ledger: &Ledger, p: &Probe, out: &mut Found) -> Result<(), String> {
    match p {
        Probe::User(user, idx) => {
            let (status, list) = get(api, &format!("/v1/users/{user}/credentials"))?;
            for &i in idx {
                let c = &ledger.creds[i];
                let listed = (status == 200)
                    .then(|| list["credentials"].as_array())
                    .flatten()
                    .and_then(|l| l.iter().find(|x| x["credentialId"] == c.id.as_str()));
                let Some(listed) = listed else {
                    out.errors.push(format!(
                        "acknowledged registration lost: credential {} of user {user}: \
                         {status} {list}",
                        c.id
                    ));
                    continue;
                };
                let stored = listed["signCount"].as_u64().unwrap_or(0);
                if stored < u64::from(c.acked) {
                    out.errors.push(format!(
                        "counter of {} is {stored}, below the acknowledged {}",
                        c.id, c.acked
                    ));
                }
                if stored < c.seen {
                    out.errors.push(format!(
                        "counter of {} went backwards: {stored} after {}",
                        c.id, c.seen
                    ));
                }
                out.seen.push((i, stored));
            }
        }
        Probe::Approval(i) => {
            let a = &ledger.approvals[*i];
            let (status, shown) = get(api, &format!("/v1/transactions/{}", a.tx_id))?;
            if status != 200 || shown["state"] != "approved" {
                out.errors.push(format!(
                    "acknowledged approval lost: transaction {}: {status} {shown}",
                    a.tx_id
                ));
                return Ok(());
            }
            let (status, receipt) = get(api, &format!("/v1/transactions/{}/receipt", a.tx_id))?;
            if status != 200 || receipt["receipt"] != a.receipt.as_str() {
                out.errors.push(format!(
                    "the receipt of {} changed: {status} {receipt}",
                    a.tx_id
                ));
            }
        }
        Probe::Device(i) => {
            let d = &ledger.devices[*i];
            let (status, shown) = get(api, &format!("/v1/devices/{}", d.device_id))?;
            if status != 200 || shown["state"] != "bound" || shown["credentials"] != json!([d.cred])
            {
                out.errors.push(format!(
                    "bound device {} is no longer bound to {}: {status} {shown}",
                    d.device_id, d.cred
                ));
            }
        }
        Probe::Replay(i) => {
            let r = &ledger.replays[*i];
            let (status, answer) = api
                .send(&r.req)
                .map_err(|e| format!("{} sent again: no answer: {e:?}", r.what))?;
            let got = slug(&answer);
            let expired = r.expiry.is_some_and(|(ttl, slugs)| {
                r.at.elapsed() + Duration::from_secs(10) >= ttl && slugs.contains(&got)
            });
            if (status == 409 && got == r.want) || (expired && (400..500).contains(&status)) {
                out.refused += 1;
            } else {
                out.errors.push(format!(
                    "{} usable again? sent again to {}: want 409 {}, got {status} {answer}",
                    r.what, r.req.path, r.want
                ));
            }
        }
    }
    Ok(())
}

/// Compares the server with the ledger: what is new since the last check
/// and a sample of the rest, or everything (`all`). Several clients at
/// once, so the refusals' audit records share their fsyncs.
fn check(
    api: &Api,
    ledger: &mut Ledger,
    all: bool,
    sample: usize,
    rng: &mut Rng,
) -> Result<(), String> {
    let fresh = std::mem::take(&mut ledger.fresh);
    let mut by_user: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in pick(&fresh.creds, ledger.creds.len(), sample, all, rng) {
        by_user
            .entry(ledger.creds[i].user_id.clone())
            .or_default()
            .push(i);
    }
    let mut probes: Vec<Probe> = by_user
        .into_iter()
        .map(|(u, idx)| Probe::User(u, idx))
        .collect();
    probes.extend(
        pick(&fresh.approvals, ledger.approvals.len(), sample, all, rng)
            .into_iter()
            .map(Probe::Approval),
    );
    probes.extend(
        pick(&fresh.devices, ledger.devices.len(), sample, all, rng)
            .into_iter()
            .map(Probe::Device),
    );
    probes.extend(
        pick(&fresh.replays, ledger.replays.len(), sample, all, rng)
            .into_iter()
            .map(Probe::Replay),
    );
    let shared: &Ledger = ledger;
    let found: Vec<Result<Found, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CHECKERS)
            .map(|k| {
                let probes = &probes;
                scope.spawn(move || {
                    let mut out = Found::default();
                    for p in probes.iter().skip(k).step_by(CHECKERS) {
                        probe(api, shared, p, &mut out)?;
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a checker panicked".into()))
            })
            .collect()
    });
    let mut errors = Vec::new();
    for f in found {
        let f = f?;
        errors.extend(f.errors);
        ledger.n.replays_refused += f.refused;
        for (i, stored) in f.seen {
            let c = &mut ledger.creds[i];
            c.seen = c.seen.max(stored);
        }
    }
    ledger.n.checks += 1;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

// ---- the run ----

#[test]
fn kills_with_sigkill_lose_nothing_acknowledged_and_reuse_nothing_consumed() {
    let started = Instant::now();
    let s = settings();
    let seed = Rng::seed_from_env("SIGNET_CRASH_SEED");
    eprintln!(
        "crash-consistency: seed {seed} (SIGNET_CRASH_SEED), {} kills, {} workers",
        s.kills, s.workers
    );
    let mut rng = Rng::new(seed);
    let mut server = SignetServer::start_with(CONFIG);
    let pinned = Pinned::fetch(&Api::new(&server, "rp"));
    let ledger = Mutex::new(Ledger::default());
    let coord = Coord::default();
    let mut audit_checks = 0usize;
    let mut restarts = Vec::new();
    let mut time = Timings::default();

    std::thread::scope(|scope| {
        for id in 0..s.workers {
            let mut w = Worker {
                id,
                rng: Rng::new(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(id as u64 + 1))),
                api: None,
                pinned: &pinned,
                ledger: &ledger,
                coord: &coord,
                passkeys: Vec::new(),
                pending: None,
                made: 0,
            };
            let coord = &coord;
            scope.spawn(move || {
                let id = w.id;
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| w.run())) {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    coord.fail(format!("worker {id} panicked: {what}"));
                }
            });
        }

        let main = AssertUnwindSafe(|| -> Result<(), String> {
            for round in 1..=(s.kills as u64 + 1) {
                let api = Api::new(&server, "rp");
                coord.update(|p| {
                    p.round = round;
                    p.api = Some(api.clone());
                    p.resolved = 0;
                    p.parked = 0;
                });
                let t = Instant::now();
                if !coord.wait("the in-flight requests", |p| p.resolved == s.workers) {
                    return Err("aborted".into());
                }
                time.resolve += t.elapsed();
                let t = Instant::now();
                {
                    let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                    check(&api, &mut l, false, s.sample, &mut rng)
                        .map_err(|e| format!("after restart {}: {e}", round - 1))?;
                }
                time.check += t.elapsed();
                coord.update(|p| p.go = round);
                let delay = Duration::from_millis(rng.range(s.delay_ms.0, s.delay_ms.1));
                std::thread::sleep(delay);
                time.load += delay;
                if round == s.kills as u64 + 1 {
                    coord.finish.store(true, Ordering::SeqCst);
                    if !coord.wait("the load to end", |p| p.parked == s.workers) {
                        return Err("aborted".into());
                    }
                    break;
                }
                let t = Instant::now();
                coord.killed.store(true, Ordering::SeqCst);
                let (status, _) = load::kill(&mut server);
                if status.code().is_some() {
                    return Err(format!("signet exited by itself before the kill: {status}"));
                }
                if !coord.wait("the workers to notice the kill", |p| p.parked == s.workers) {
                    return Err("aborted".into());
                }
                coord.killed.store(false, Ordering::SeqCst);
                time.kill += t.elapsed();
                if round as usize % s.audit_every == 0 {
                    // The officer's check, on the store exactly as the kill
                    // left it.
                    let t = Instant::now();
                    load::audit_verify(&server.data_dir(), &server.hsm.profile_path())
                        .map_err(|e| format!("after kill {round}: {e}"))?;
                    audit_checks += 1;
                    time.audit += t.elapsed();
                }
                let t = Instant::now();
                server.spawn();
                restarts.push(t.elapsed());
            }
            Ok(())
        });
        let outcome = std::panic::catch_unwind(main);
        let failed = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "main thread panicked".into()),
            ),
        };
        if let Some(e) = failed {
            coord.fail(e);
        }
        // Workers exit on finish or abort.
        coord.finish.store(true, Ordering::SeqCst);
        coord.cv.notify_all();
    });
    let failures = coord.lock().failures.clone();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Everything, once more, on the running server.
    let api = Api::new(&server, "rp");
    let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
    let t = Instant::now();
    check(&api, &mut l, true, 0, &mut rng).unwrap_or_else(|e| panic!("final check: {e}"));
    time.final_check = t.elapsed();
    let t = Instant::now();

    // Every receipt, offline, with the exported countersigning key.
    let files = tempfile::tempdir().expect("tempdir");
    let key = files.path().join("approval-countersign.pem");
    std::fs::write(
        &key,
        load::export_pem(&server.hsm.profile_path(), "approval-countersign"),
    )
    .expect("key");
    let receipts: Vec<(String, std::path::PathBuf)> = l
        .approvals
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let file = files.path().join(format!("receipt-{i}.json"));
            std::fs::write(&file, json!({"receipt": a.receipt}).to_string()).expect("write");
            (a.tx_id.clone(), file)
        })
        .collect();
    let bad: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = receipts
            .chunks(receipts.len().div_ceil(2).max(1))
            .map(|chunk| {
                let key = &key;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|(tx, file)| {
                            load::evidence_verify(file, key)
                                .err()
                                .map(|e| format!("receipt of {tx}: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verifier"))
            .collect()
    });
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    time.evidence = t.elapsed();

    // A clean stop, and the officer's verification of the audit log.
    let (status, log) = server.stop();
    assert!(status.success(), "signet exited with {status}: {log}");
    let report = load::audit_verify(&server.data_dir(), &server.hsm.profile_path())
        .unwrap_or_else(|e| panic!("final audit verify: {e}"));
    audit_checks += 1;
    let records = report["records"].as_u64().unwrap_or(0);

    let restart_ms: Vec<u128> = restarts.iter().map(Duration::as_millis).collect();
    eprintln!("crash-consistency: time spent: {time:?}");
    let n = &l.n;
    println!(
        "crash-consistency: {} kills (SIGKILL) with {} workers in {:.1} s; acknowledged: \
         {} registrations, {} authentications, {} redemptions, {} approvals, {} pairings; \
         no answer at the kills: {} requests, {} of them consuming ({} had landed, {} had not), \
         {} more refused at connect; \
         replays refused: {}; receipts verified offline: {}; audit verify passed {} times, \
         {} records at the end; restart p50 {} ms, max {} ms; seed {seed}",
        restarts.len(),
        s.workers,
        started.elapsed().as_secs_f64(),
        n.registrations,
        n.authentications,
        n.redemptions,
        n.approvals,
        n.pairings,
        n.no_answer,
        n.in_flight,
        n.in_flight_landed,
        n.in_flight_not_landed,
        n.unsent,
        n.replays_refused,
        receipts.len(),
        audit_checks,
        records,
        median(&restart_ms),
        restart_ms.iter().max().copied().unwrap_or(0),
    );
    assert!(restarts.len() >= s.kills, "only {} kills", restarts.len());
}

/// Where the run's time went (main thread).
#[derive(Default, Debug)]
struct Timings {
    /// Waiting for the workers to settle their in-flight requests.
    resolve: Duration,
    check: Duration,
    load: Duration,
    /// From the kill until every worker noticed.
    kill: Duration,
    audit: Duration,
    final_check: Duration,
    evidence: Duration,
}

fn median(v: &[u128]) -> u128 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}
