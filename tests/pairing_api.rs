//! QR cross-device login ("pairing") over the API of a real `signet serve`:
//! the routes and their roles, a whole pairing through the network (the
//! desktop creates, the phone claims with the code from the QR payload and
//! approves with its passkey, the desktop polls and takes the login once)
//! and its audit trail, the desktop's long poll, the two secrets and the
//! code, concurrent claims and consumes, denial, an assertion made for
//! another ceremony, and malformed input.

#![cfg(feature = "testkit")]

mod common;

use std::collections::HashMap;

use serde_json::{Value, json};
use signet::testkit::{Ceremony, SoftAuthenticator};
use signet::webauthn::{CoseAlgorithm, b64url, b64url_decode};

use common::ceremony::register;
use common::server::{ORIGIN, RP_ID, SignetServer, read};

const PROBLEM: &str = "urn:signet:problem:";
const DESKTOP: &str = "Signet-Desktop-Secret";
const PHONE: &str = "Signet-Phone-Secret";
/// The desktop's browser, as its User-Agent header says.
const FIREFOX_ON_WINDOWS: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
const MODEL: &str = "22222222-2222-4222-8222-222222222222";
/// Where the QR code points in the sequence test (`[pairing] link`).
const LINK: &str = "https://localhost/app/pair";

/// A running server and the `rp` calls of a pairing, with the secret
/// headers set as given.
struct Fixture {
    server: SignetServer,
}

/// A created pairing: what the desktop session holds.
struct Pairing {
    id: String,
    desktop_secret: String,
    code: String,
    created: Value,
}

impl Fixture {
    fn start(extra: &str) -> Fixture {
        Fixture {
            server: SignetServer::start_with(extra),
        }
    }

    /// A passkey registered for `name` over the API.
    fn passkey(&self, name: &str) -> SoftAuthenticator {
        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        auth.aaguid = aaguid(MODEL);
        let (status, answer, auth) = register(&self.server, &json!({"user": {"name": name}}), auth);
        assert_eq!(status, 200, "{answer}");
        auth
    }

    /// A request as `role` with `headers`, and a JSON body if given.
    fn call(
        &self,
        role: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let client = self.server.client(role);
        let url = self.server.url(path);
        let mut r = match method {
            "GET" => client.get(url),
            _ => client.post(url),
        };
        for (name, value) in headers {
            r = r.header(*name, *value);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        read(r.send().expect("request"))
    }

    /// Creates a pairing as `rp`; it must answer 201.
    fn create(&self, body: &Value) -> Pairing {
        let (status, created) = self.server.post("rp", "/v1/pairings", body);
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["state"], "created", "{created}");
        assert_eq!(created["revision"], 1, "{created}");
        let id = created["pairingId"]
            .as_str()
            .expect("pairingId")
            .to_string();
        let desktop_secret = created["desktopSecret"]
            .as_str()
            .expect("desktopSecret")
            .to_string();
        let (_, fragment) = qr(&created);
        assert_eq!(fragment.get("pairing"), Some(&id), "{created}");
        let code = fragment
            .get("code")
            .expect("code in the QR payload")
            .clone();
        Pairing {
            id,
            desktop_secret,
            code,
            created,
        }
    }

    fn claim(&self, id: &str, body: &Value) -> (u16, Value) {
        self.server
            .post("rp", &format!("/v1/pairings/{id}/claim"), body)
    }

    /// Claims `p` with its code; it must answer 200.
    fn claimed(&self, p: &Pairing) -> Value {
        let (status, claimed) = self.claim(&p.id, &json!({"code": p.code}));
        assert_eq!(status, 200, "{claimed}");
        assert_eq!(claimed["state"], "claimed", "{claimed}");
        claimed
    }

    fn status(&self, id: &str, query: &str, secret: Option<&str>) -> (u16, Value) {
        let headers: Vec<(&str, &str)> = secret.map(|s| (DESKTOP, s)).into_iter().collect();
        self.call(
            "rp",
            "GET",
            &format!("/v1/pairings/{id}{query}"),
            &headers,
            None,
        )
    }

    /// The pairing's state as the desktop sees it, without waiting.
    fn state(&self, p: &Pairing) -> Value {
        let (status, shown) = self.status(&p.id, "", Some(&p.desktop_secret));
        assert_eq!(status, 200, "{shown}");
        shown
    }

    fn consume(&self, id: &str, secret: Option<&str>) -> (u16, Value) {
        let headers: Vec<(&str, &str)> = secret.map(|s| (DESKTOP, s)).into_iter().collect();
        self.call(
            "rp",
            "POST",
            &format!("/v1/pairings/{id}/consume"),
            &headers,
            None,
        )
    }

    fn approve(&self, id: &str, secret: Option<&str>, body: &Value) -> (u16, Value) {
        let headers: Vec<(&str, &str)> = secret.map(|s| (PHONE, s)).into_iter().collect();
        self.call(
            "rp",
            "POST",
            &format!("/v1/pairings/{id}/approve"),
            &headers,
            Some(body),
        )
    }

    fn deny(&self, id: &str, secret: Option<&str>, body: &Value) -> (u16, Value) {
        let headers: Vec<(&str, &str)> = secret.map(|s| (PHONE, s)).into_iter().collect();
        self.call(
            "rp",
            "POST",
            &format!("/v1/pairings/{id}/deny"),
            &headers,
            Some(body),
        )
    }
}

fn aaguid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// The QR payload of a creation answer: the link, and the fragment's
/// members.
fn qr(created: &Value) -> (String, HashMap<String, String>) {
    let payload = created["qrPayload"].as_str().expect("qrPayload");
    let (link, fragment) = payload
        .split_once('#')
        .unwrap_or_else(|| panic!("no fragment in {payload}"));
    let members = fragment
        .split('&')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{pair} in {payload}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    (link.to_string(), members)
}

/// The desktop's context: Firefox on Windows in Zurich.
fn context() -> Value {
    json!({"ip": "203.0.113.7", "userAgent": FIREFOX_ON_WINDOWS, "location": "Zurich"})
}

/// The approval body: `auth` signs the challenge of the claim answer's
/// request options, as the phone's browser would.
fn answer(auth: &mut SoftAuthenticator, claimed: &Value) -> Value {
    let parts = auth.assert(&Ceremony::new(
        RP_ID,
        ORIGIN,
        &challenge_of(&claimed["publicKey"]),
    ));
    json!({ "credential": parts.to_json() })
}

fn challenge_of(public_key: &Value) -> Vec<u8> {
    b64url_decode(
        "challenge",
        public_key["challenge"].as_str().expect("challenge"),
        64,
    )
    .expect("challenge")
}

/// A well-formed secret that is no pairing's.
fn stranger_secret() -> String {
    b64url(&[7u8; 32])
}

fn problem_type(answer: &Value) -> &str {
    answer["type"]
        .as_str()
        .and_then(|t| t.strip_prefix(PROBLEM))
        .unwrap_or_default()
}

fn assert_problem(status: u16, body: &Value, want: u16, slug: &str) {
    assert_eq!((status, problem_type(body)), (want, slug), "{body}");
    assert_eq!(body["status"], want, "{body}");
}

/// A problem naming `field`.
fn assert_field(status: u16, body: &Value, want: u16, slug: &str, field: &str) {
    assert_problem(status, body, want, slug);
    assert_eq!(body["field"], field, "{body}");
}

/// A request: method, path, headers, body.
type Call<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Option<&'a Value>);

/// Runs `f` on `n` threads at once; their answers.
fn race<F>(n: usize, f: F) -> Vec<(u16, Value)>
where
    F: Fn() -> (u16, Value) + Sync,
{
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (f, barrier) = (&f, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    f()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    })
}

#[test]
fn only_rp_may_use_the_pairing_routes() {
    let fx = Fixture::start("");
    let mut auth = fx.passkey("alice");
    let p = fx.create(&json!({"context": context(), "user": {"name": "alice"}}));
    let claimed = fx.claimed(&p);
    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    let body = answer(&mut auth, &claimed);
    let code = json!({"code": p.code});

    for role in ["officer", "auditor", "monitor"] {
        let create = json!({"context": context()});
        let calls: [Call; 6] = [
            ("POST", "/v1/pairings".into(), vec![], Some(&create)),
            (
                "GET",
                format!("/v1/pairings/{}", p.id),
                vec![(DESKTOP, p.desktop_secret.as_str())],
                None,
            ),
            (
                "POST",
                format!("/v1/pairings/{}/claim", p.id),
                vec![],
                Some(&code),
            ),
            (
                "POST",
                format!("/v1/pairings/{}/approve", p.id),
                vec![(PHONE, phone)],
                Some(&body),
            ),
            (
                "POST",
                format!("/v1/pairings/{}/deny", p.id),
                vec![(PHONE, phone)],
                Some(&Value::Null),
            ),
            (
                "POST",
                format!("/v1/pairings/{}/consume", p.id),
                vec![(DESKTOP, p.desktop_secret.as_str())],
                None,
            ),
        ];
        for (method, path, headers, body) in &calls {
            let (status, refused) = fx.call(role, method, path, headers, *body);
            assert_problem(status, &refused, 403, "forbidden");
            assert!(
                !refused.to_string().contains(&p.desktop_secret),
                "{role} {method} {path}: {refused}"
            );
        }
    }
    // None of that touched the pairing: still claimed, at the claim's
    // revision, and the phone's answer still approves it.
    let shown = fx.state(&p);
    assert_eq!(
        (shown["state"].as_str(), shown["revision"].as_u64()),
        (Some("claimed"), Some(2)),
        "{shown}"
    );
    let (status, approved) = fx.approve(&p.id, Some(phone), &body);
    assert_eq!(status, 200, "{approved}");

    // Without a client certificate there is no connection at all.
    let client = fx.server.client_without_cert();
    let result = client
        .post(fx.server.url("/v1/pairings"))
        .json(&json!({"context": context()}))
        .send();
    assert!(result.is_err(), "got {:?}", result.map(|r| r.status()));
    let result = client
        .get(fx.server.url(&format!("/v1/pairings/{}", p.id)))
        .header(DESKTOP, &p.desktop_secret)
        .send();
    assert!(result.is_err(), "got {:?}", result.map(|r| r.status()));
}

#[test]
fn a_pairing_over_the_network_logs_the_desktop_in_once_and_is_audited_in_order() {
    let fx = Fixture::start(&format!("[pairing]\nlink = \"{LINK}\"\n"));
    let s = &fx.server;
    let mut auth = fx.passkey("alice");

    // The desktop starts; the QR payload carries the pairing and the code,
    // never the desktop's secret.
    let p = fx.create(&json!({"context": context(), "user": {"name": "alice"}}));
    let payload = p.created["qrPayload"].as_str().expect("qrPayload");
    let (link, fragment) = qr(&p.created);
    assert_eq!(link, LINK, "{payload}");
    assert_eq!(fragment.len(), 2, "{payload}");
    assert_eq!(
        b64url_decode("pairing", &p.id, 64)
            .expect("pairing id")
            .len(),
        16
    );
    assert_eq!(b64url_decode("code", &p.code, 64).expect("code").len(), 16);
    assert_eq!(
        b64url_decode("desktopSecret", &p.desktop_secret, 64)
            .expect("desktop secret")
            .len(),
        32
    );
    assert!(!payload.contains(&p.desktop_secret), "{payload}");
    assert!(p.created["expiresAt"].is_string(), "{}", p.created);
    let shown = fx.state(&p);
    assert_eq!(
        (shown["state"].as_str(), shown["revision"].as_u64()),
        (Some("created"), Some(1)),
        "{shown}"
    );

    // The phone scans it and claims with the code from the payload; it is
    // shown where the desktop is, and gets options for alice's passkey.
    let claimed = fx.claimed(&p);
    assert_eq!(claimed["pairingId"], p.id.as_str());
    let phone = claimed["phoneSecret"]
        .as_str()
        .expect("phoneSecret")
        .to_string();
    assert_eq!(
        b64url_decode("phoneSecret", &phone, 64)
            .expect("phone secret")
            .len(),
        32
    );
    assert_ne!(phone, p.desktop_secret);
    assert!(
        !claimed.to_string().contains(&p.desktop_secret),
        "the phone learns the desktop's secret: {claimed}"
    );
    let display = claimed["display"].as_str().expect("display");
    assert!(display.contains("Firefox on Windows"), "{display}");
    assert!(display.contains("Zurich"), "{display}");
    assert_eq!(
        claimed["context"],
        json!({
            "ip": "203.0.113.7",
            "userAgent": FIREFOX_ON_WINDOWS,
            "location": "Zurich",
            "browser": "Firefox on Windows",
        })
    );
    let options = &claimed["publicKey"];
    assert_eq!(options["rpId"], RP_ID, "{options}");
    assert_eq!(challenge_of(options).len(), 32, "{options}");
    assert_eq!(
        options["allowCredentials"][0]["id"],
        b64url(&auth.credential_id),
        "{options}"
    );
    let shown = fx.state(&p);
    assert_eq!(
        (shown["state"].as_str(), shown["revision"].as_u64()),
        (Some("claimed"), Some(2)),
        "{shown}"
    );

    // The phone's passkey answers the pairing's challenge.
    let (status, approved) = fx.approve(&p.id, Some(&phone), &answer(&mut auth, &claimed));
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "approved", "{approved}");
    assert_eq!(approved["pairingId"], p.id.as_str(), "{approved}");
    assert_eq!(
        approved["credentialId"],
        b64url(&auth.credential_id),
        "{approved}"
    );
    let shown = fx.state(&p);
    assert_eq!(
        (shown["state"].as_str(), shown["revision"].as_u64()),
        (Some("approved"), Some(3)),
        "{shown}"
    );
    // Approved is settled: a long poll answers it without waiting for a
    // later revision.
    let (status, polled) = fx.status(&p.id, "?since=3&wait=5", Some(&p.desktop_secret));
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["state"], "approved", "{polled}");

    // The desktop takes the login, once.
    let (status, login) = fx.consume(&p.id, Some(&p.desktop_secret));
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["userName"], "alice", "{login}");
    assert_eq!(login["userId"], approved["userId"], "{login}");
    assert_eq!(
        login["credentialId"],
        b64url(&auth.credential_id),
        "{login}"
    );
    assert_eq!(login["aaguid"], MODEL, "{login}");
    assert!(login["tier"].is_u64(), "{login}");
    let (status, again) = fx.consume(&p.id, Some(&p.desktop_secret));
    assert_field(status, &again, 409, "pairing-consumed", "pairingId");
    let shown = fx.state(&p);
    assert_eq!(shown["state"], "consumed", "{shown}");
    // The phone cannot answer again either.
    let (status, late) = fx.approve(&p.id, Some(&phone), &answer(&mut auth, &claimed));
    assert_problem(status, &late, 409, "pairing-consumed");

    // The audit log tells the pairing's story, in order.
    let (status, page) = s.get("auditor", "/v1/audit?limit=1000");
    assert_eq!(status, 200, "{page}");
    let story: Vec<&str> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"]["subject"] == p.id.as_str())
        .map(|e| e["event"]["event"].as_str().unwrap_or_default())
        .collect();
    let steps: Vec<&str> = story
        .iter()
        .copied()
        .filter(|e| {
            [
                "pairing.created",
                "pairing.claimed",
                "pairing.approved",
                "pairing.consumed",
            ]
            .contains(e)
        })
        .collect();
    assert_eq!(
        steps,
        [
            "pairing.created",
            "pairing.claimed",
            "pairing.approved",
            "pairing.consumed"
        ],
        "{story:?}"
    );
    assert_eq!(
        story[..4],
        [
            "pairing.created",
            "pairing.claimed",
            "pairing.approved",
            "pairing.consumed"
        ],
        "{story:?}"
    );
    // No secret, code or challenge reaches the audit log.
    let text = page.to_string();
    for secret in [&p.desktop_secret, &phone, &p.code] {
        assert!(!text.contains(secret.as_str()), "{secret} in the audit log");
    }
}

#[test]
fn the_desktop_long_polls_with_its_secret_in_a_header_only() {
    let fx = Fixture::start("");
    let mut auth = fx.passkey("alice");
    let p = fx.create(&json!({"context": context(), "user": {"name": "alice"}}));

    // A poll waiting past revision 1 answers the claim.
    let (status, polled, claimed) = std::thread::scope(|scope| {
        let poll = scope.spawn(|| fx.status(&p.id, "?since=1&wait=10", Some(&p.desktop_secret)));
        // Give the poll a head start, so it is likely waiting when the
        // claim comes (either way the answer is the same).
        std::thread::sleep(std::time::Duration::from_millis(300));
        let claimed = fx.claimed(&p);
        let (status, polled) = poll.join().expect("poll thread");
        (status, polled, claimed)
    });
    assert_eq!(status, 200, "{polled}");
    assert_eq!(
        (polled["state"].as_str(), polled["revision"].as_u64()),
        (Some("claimed"), Some(2)),
        "{polled}"
    );
    assert_eq!(polled["pairingId"], p.id.as_str(), "{polled}");
    // Nothing changes: the poll ends with the same revision.
    let (status, polled) = fx.status(&p.id, "?since=2&wait=1", Some(&p.desktop_secret));
    assert_eq!(status, 200, "{polled}");
    assert_eq!(
        (polled["state"].as_str(), polled["revision"].as_u64()),
        (Some("claimed"), Some(2)),
        "{polled}"
    );
    // At most 60 seconds.
    let (status, refused) = fx.status(&p.id, "?since=2&wait=61", Some(&p.desktop_secret));
    assert_field(status, &refused, 400, "invalid-request", "wait");

    // The secret in the query string is refused, and does not stand in for
    // the header, with or without one.
    let query = format!("?desktopSecret={}", p.desktop_secret);
    let (status, refused) = fx.status(&p.id, &query, None);
    assert_field(status, &refused, 400, "invalid-request", "desktopSecret");
    assert!(
        !refused.to_string().contains(&p.desktop_secret),
        "{refused}"
    );
    let (status, refused) = fx.status(&p.id, &query, Some(&stranger_secret()));
    assert_problem(status, &refused, 400, "invalid-request");
    let query = format!("?since=1&{}", &query[1..]);
    let (status, refused) = fx.status(&p.id, &query, None);
    assert_field(status, &refused, 400, "invalid-request", "desktopSecret");

    // The phone can still approve, and the desktop still take the login.
    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    let (status, approved) = fx.approve(&p.id, Some(phone), &answer(&mut auth, &claimed));
    assert_eq!(status, 200, "{approved}");
    let (status, polled) = fx.status(&p.id, "?since=2&wait=10", Some(&p.desktop_secret));
    assert_eq!(status, 200, "{polled}");
    assert_eq!(
        (polled["state"].as_str(), polled["revision"].as_u64()),
        (Some("approved"), Some(3)),
        "{polled}"
    );
}

#[test]
fn each_side_is_known_by_its_own_secret() {
    let fx = Fixture::start("");
    let mut auth = fx.passkey("alice");
    let p = fx.create(&json!({"context": context(), "user": {"name": "alice"}}));
    let claimed = fx.claimed(&p);
    let phone = claimed["phoneSecret"]
        .as_str()
        .expect("phoneSecret")
        .to_string();
    let body = answer(&mut auth, &claimed);
    let stranger = stranger_secret();

    // The desktop's routes: GET and consume.
    type Desktop<'a> = &'a dyn Fn(Option<&str>) -> (u16, Value);
    let get = |secret: Option<&str>| fx.status(&p.id, "", secret);
    let consume = |secret: Option<&str>| fx.consume(&p.id, secret);
    let routes: [(&str, Desktop); 2] = [("GET", &get), ("consume", &consume)];
    for (route, call) in routes {
        let (status, refused) = call(None);
        assert_field(status, &refused, 400, "invalid-request", DESKTOP);
        for malformed in ["not a secret!", "c2hvcnQ", &b64url(&[7u8; 33])] {
            let (status, refused) = call(Some(malformed));
            assert_field(status, &refused, 400, "invalid-request", DESKTOP);
        }
        let (status, refused) = call(Some(&stranger));
        assert_field(status, &refused, 403, "pairing-secret", DESKTOP);
        let (status, refused) = call(Some(&phone));
        assert_field(status, &refused, 403, "pairing-secret", DESKTOP);
        assert!(!refused.to_string().contains(&phone), "{route}: {refused}");
    }

    // The phone's routes: approve and deny.
    let (status, refused) = fx.approve(&p.id, None, &body);
    assert_field(status, &refused, 400, "invalid-request", PHONE);
    let (status, refused) = fx.deny(&p.id, None, &Value::Null);
    assert_field(status, &refused, 400, "invalid-request", PHONE);
    let (status, refused) = fx.approve(&p.id, Some("not a secret!"), &body);
    assert_field(status, &refused, 400, "invalid-request", PHONE);
    let (status, refused) = fx.deny(&p.id, Some("c2hvcnQ"), &json!({}));
    assert_field(status, &refused, 400, "invalid-request", PHONE);
    for wrong in [&stranger, &p.desktop_secret] {
        let (status, refused) = fx.approve(&p.id, Some(wrong), &body);
        assert_field(status, &refused, 403, "pairing-secret", PHONE);
        let (status, refused) = fx.deny(&p.id, Some(wrong), &json!({"reason": "not me"}));
        assert_field(status, &refused, 403, "pairing-secret", PHONE);
    }

    // None of that moved the pairing; the right secrets still work.
    let shown = fx.state(&p);
    assert_eq!(
        (shown["state"].as_str(), shown["revision"].as_u64()),
        (Some("claimed"), Some(2)),
        "{shown}"
    );
    let (status, approved) = fx.approve(&p.id, Some(&phone), &body);
    assert_eq!(status, 200, "{approved}");
    // Approved: the wrong desktop secret still takes nothing.
    let (status, refused) = fx.consume(&p.id, Some(&phone));
    assert_field(status, &refused, 403, "pairing-secret", DESKTOP);
    let (status, login) = fx.consume(&p.id, Some(&p.desktop_secret));
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["userName"], "alice", "{login}");

    // The refused secrets are audited, without their values.
    let (status, page) = fx.server.get("auditor", "/v1/audit?limit=1000");
    assert_eq!(status, 200, "{page}");
    let refusals = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| {
            e["event"]["subject"] == p.id.as_str()
                && e["event"]["event"] == "pairing.secret_refused"
        })
        .count();
    assert!(refusals >= 4, "{page}");
    let text = page.to_string();
    assert!(!text.contains(&phone) && !text.contains(&p.desktop_secret));
}

#[test]
fn concurrent_claims_and_consumes_over_the_network_succeed_once() {
    let fx = Fixture::start("");
    let mut auth = fx.passkey("alice");
    let p = fx.create(&json!({"context": context(), "user": {"name": "alice"}}));

    let body = json!({"code": p.code});
    let results = race(8, || fx.claim(&p.id, &body));
    let won: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for (status, refused) in results.iter().filter(|(s, _)| *s != 200) {
        assert_problem(*status, refused, 409, "pairing-claimed");
    }
    let claimed = won[0].clone();
    let shown = fx.state(&p);
    assert_eq!(
        (shown["state"].as_str(), shown["revision"].as_u64()),
        (Some("claimed"), Some(2)),
        "{shown}"
    );

    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    let (status, approved) = fx.approve(&p.id, Some(phone), &answer(&mut auth, &claimed));
    assert_eq!(status, 200, "{approved}");

    let results = race(8, || fx.consume(&p.id, Some(&p.desktop_secret)));
    let taken: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(taken.len(), 1, "{results:?}");
    assert_eq!(taken[0]["userName"], "alice", "{}", taken[0]);
    for (status, refused) in results.iter().filter(|(s, _)| *s != 200) {
        assert_problem(*status, refused, 409, "pairing-consumed");
    }

    // One of each in the audit log.
    let (_, page) = fx.server.get("auditor", "/v1/audit?limit=1000");
    let count = |event: &str| {
        page["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["event"]["subject"] == p.id.as_str() && e["event"]["event"] == event)
            .count()
    };
    assert_eq!(count("pairing.claimed"), 1, "{page}");
    assert_eq!(count("pairing.consumed"), 1, "{page}");
}

#[test]
fn wrong_codes_lock_denials_stick_and_other_ceremonies_do_not_approve() {
    let fx = Fixture::start("[pairing]\nattempts_max = 3\n");
    let s = &fx.server;
    let mut auth = fx.passkey("alice");

    // Guessing the code: attempts_max wrong codes, then the right one is
    // too late.
    let p = fx.create(&json!({"context": context()}));
    for guess in 0..3u8 {
        let wrong = b64url(&[guess; 16]);
        assert_ne!(wrong, p.code);
        let (status, refused) = fx.claim(&p.id, &json!({"code": wrong}));
        assert_field(status, &refused, 403, "pairing-code", "code");
    }
    let (status, refused) = fx.claim(&p.id, &json!({"code": p.code}));
    assert_problem(status, &refused, 409, "pairing-locked");
    let shown = fx.state(&p);
    assert_eq!(shown["state"], "locked", "{shown}");
    let (status, refused) = fx.consume(&p.id, Some(&p.desktop_secret));
    assert_problem(status, &refused, 409, "pairing-locked");

    // Denied on the phone: the desktop sees it, and nothing comes after.
    let p = fx.create(&json!({"context": context(), "user": {"name": "alice"}}));
    let claimed = fx.claimed(&p);
    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    let (status, denied) = fx.deny(&p.id, Some(phone), &json!({"reason": "not me"}));
    assert_eq!(status, 200, "{denied}");
    assert_eq!(denied["state"], "denied", "{denied}");
    let shown = fx.state(&p);
    assert_eq!(
        (shown["state"].as_str(), shown["closedReason"].as_str()),
        (Some("denied"), Some("not me")),
        "{shown}"
    );
    let (status, polled) = fx.status(&p.id, "?since=99&wait=5", Some(&p.desktop_secret));
    assert_eq!((status, polled["state"].as_str()), (200, Some("denied")));
    let (status, refused) = fx.consume(&p.id, Some(&p.desktop_secret));
    assert_field(status, &refused, 409, "pairing-denied", "pairingId");
    let (status, refused) = fx.approve(&p.id, Some(phone), &answer(&mut auth, &claimed));
    assert_problem(status, &refused, 409, "pairing-denied");
    let (status, refused) = fx.deny(&p.id, Some(phone), &Value::Null);
    assert_problem(status, &refused, 409, "pairing-denied");
    let (status, refused) = fx.claim(&p.id, &json!({"code": p.code}));
    assert_problem(status, &refused, 409, "pairing-denied");

    // A denial without a body.
    let p = fx.create(&json!({"context": context()}));
    let claimed = fx.claimed(&p);
    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    let (status, denied) = fx.deny(&p.id, Some(phone), &Value::Null);
    assert_eq!(status, 200, "{denied}");
    assert_eq!(fx.state(&p)["state"], "denied");

    // An assertion the passkey made for a plain login does not approve a
    // pairing: its challenge is another one.
    let p = fx.create(&json!({"context": context(), "user": {"name": "alice"}}));
    let claimed = fx.claimed(&p);
    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    let (status, login) = s.post(
        "rp",
        "/v1/authentications/options",
        &json!({"user": {"name": "alice"}}),
    );
    assert_eq!(status, 200, "{login}");
    let (status, refused) = fx.approve(&p.id, Some(phone), &answer(&mut auth, &login));
    assert_field(
        status,
        &refused,
        400,
        "credential-mismatch",
        "credential.response.clientDataJSON.challenge",
    );
    let shown = fx.state(&p);
    assert_eq!(shown["state"], "claimed", "{shown}");
    let (status, refused) = fx.consume(&p.id, Some(&p.desktop_secret));
    assert_problem(status, &refused, 409, "pairing-claimed");
    // The pairing's own challenge still approves it.
    let (status, approved) = fx.approve(&p.id, Some(phone), &answer(&mut auth, &claimed));
    assert_eq!(status, 200, "{approved}");
}

#[test]
fn malformed_input_is_refused_naming_the_field() {
    let fx = Fixture::start("");
    let mut auth = fx.passkey("alice");
    let p = fx.create(&json!({"context": context()}));
    let secret = stranger_secret();
    // A well-formed assertion, for routes that parse it before the id.
    let credential = json!({
        "credential": auth.assert(&Ceremony::new(RP_ID, ORIGIN, &[1; 32])).to_json()
    });
    let code = json!({"code": b64url(&[1u8; 16])});

    // Malformed ids and an unknown one, on every route that takes one.
    let unknown = b64url(&[9u8; 16]);
    let routes: [(&str, &str, &str, Option<&Value>); 5] = [
        ("GET", "", DESKTOP, None),
        ("POST", "/claim", DESKTOP, Some(&code)),
        ("POST", "/approve", PHONE, Some(&credential)),
        ("POST", "/deny", PHONE, Some(&Value::Null)),
        ("POST", "/consume", DESKTOP, None),
    ];
    for (method, rest, header, body) in routes {
        let headers = [(header, secret.as_str())];
        for bad in ["short", "AAAAAAAAAAAAAAAAAAAAAAAA", "not*base64url*at*all!"] {
            let at = format!("/v1/pairings/{bad}{rest}");
            let (status, refused) = fx.call("rp", method, &at, &headers, body);
            assert_field(status, &refused, 400, "invalid-request", "pairingId");
        }
        let at = format!("/v1/pairings/{unknown}{rest}");
        let (status, missing) = fx.call("rp", method, &at, &headers, body);
        assert_field(status, &missing, 404, "not-found", "pairingId");
    }

    // The creation body.
    let agent = FIREFOX_ON_WINDOWS;
    let cases = [
        (json!({}), "context"),
        (json!({"context": null}), "context"),
        (json!({"context": "203.0.113.7"}), "context"),
        (json!({"context": {"userAgent": agent}}), "context.ip"),
        (
            json!({"context": {"ip": "not-an-ip", "userAgent": agent}}),
            "context.ip",
        ),
        (
            json!({"context": {"ip": "203.0.113.7", "userAgent": "Firefox\u{7}/133.0"}}),
            "context.userAgent",
        ),
        (
            json!({"context": {"ip": "203.0.113.7", "userAgent": "Firefox\n/133.0"}}),
            "context.userAgent",
        ),
        (
            json!({"context": {"ip": "203.0.113.7", "userAgent": ""}}),
            "context.userAgent",
        ),
        (
            json!({"context": {"ip": "203.0.113.7", "userAgent": agent, "location": "Zu\u{1b}[2Jrich"}}),
            "context.location",
        ),
        (
            json!({"context": {"ip": "203.0.113.7", "userAgent": agent, "colour": "red"}}),
            "context.colour",
        ),
        (json!({"context": context(), "colour": "red"}), "colour"),
        (
            json!({"context": context(), "user": {"name": "alice", "id": "x"}}),
            "user.id",
        ),
    ];
    for (body, field) in &cases {
        let (status, refused) = fx.server.post("rp", "/v1/pairings", body);
        assert_field(status, &refused, 400, "invalid-request", field);
    }
    let (status, missing) = fx.server.post(
        "rp",
        "/v1/pairings",
        &json!({"context": context(), "user": {"name": "nobody"}}),
    );
    assert_field(status, &missing, 404, "not-found", "user.name");
    // An IPv6 address and no location are fine.
    let (status, created) = fx.server.post(
        "rp",
        "/v1/pairings",
        &json!({"context": {"ip": "2001:db8::7", "userAgent": agent}}),
    );
    assert_eq!(status, 201, "{created}");

    // The claim body.
    for (body, field) in [
        (json!({}), "code"),
        (json!({"code": "short"}), "code"),
        (json!({"code": 42}), "code"),
        (json!({"code": p.code, "colour": "red"}), "colour"),
    ] {
        let (status, refused) = fx.claim(&p.id, &body);
        assert_field(status, &refused, 400, "invalid-request", field);
    }
    // None of those counted as a wrong code or moved the pairing.
    let shown = fx.state(&p);
    assert_eq!(
        (shown["state"].as_str(), shown["revision"].as_u64()),
        (Some("created"), Some(1)),
        "{shown}"
    );
    // Approve and consume before a claim: the pairing says it waits.
    let (status, refused) = fx.consume(&p.id, Some(&p.desktop_secret));
    assert_problem(status, &refused, 409, "pairing-created");
    let (status, refused) = fx.approve(&p.id, Some(&secret), &credential);
    assert_problem(status, &refused, 409, "pairing-created");

    // The approval and denial bodies.
    let claimed = fx.claimed(&p);
    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    let (status, refused) = fx.approve(&p.id, Some(phone), &json!({}));
    assert_field(status, &refused, 400, "invalid-request", "credential");
    let (status, refused) = fx.approve(
        &p.id,
        Some(phone),
        &json!({"credential": credential["credential"], "colour": "red"}),
    );
    assert_field(status, &refused, 400, "invalid-request", "colour");
    let (status, refused) = fx.deny(&p.id, Some(phone), &json!({"because": "no"}));
    assert_field(status, &refused, 400, "invalid-request", "because");
    let shown = fx.state(&p);
    assert_eq!(shown["state"], "claimed", "{shown}");
}

#[test]
fn an_approved_login_nobody_takes_expires_after_approved_ttl() {
    let fx = Fixture::start("[pairing]\napproved_ttl_s = 5\n");
    let mut auth = fx.passkey("alice");
    let p = fx.create(&json!({"context": context(), "user": {"name": "alice"}}));
    let claimed = fx.claimed(&p);
    let phone = claimed["phoneSecret"].as_str().expect("phoneSecret");
    let (status, approved) = fx.approve(&p.id, Some(phone), &answer(&mut auth, &claimed));
    assert_eq!(status, 200, "{approved}");
    std::thread::sleep(std::time::Duration::from_millis(5_500));
    let (status, late) = fx.consume(&p.id, Some(&p.desktop_secret));
    assert_field(status, &late, 410, "pairing-expired", "pairingId");
    let shown = fx.state(&p);
    assert_eq!(shown["state"], "expired", "{shown}");
    assert_eq!(shown["closedReason"], "expired while approved", "{shown}");
}
