//! End-to-end load on a running signet: N client threads, each with its own
//! keep-alive mutual-TLS connection and its own registered soft
//! authenticator, loop over authentication options + verify for S seconds.
//! Prints ops/s (one op = options + verify) and p50/p99 latency of the
//! pair, then the engine's single-thread verification floor
//! (`signet speed`) measured in the same run, and the ratio.
//!
//! cargo bench --bench service --features testkit -- --url URL --pki DIR
//!     --signet BIN [--clients N] [--seconds S]
//!
//! `scripts/bench service` sets up SoftHSM, a PKI, a config and the server,
//! then runs this.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use signet::testkit::{Attestation, Ceremony, SoftAuthenticator};
use signet::webauthn::{CoseAlgorithm, b64url_decode};

const RP_ID: &str = "localhost";
const ORIGIN: &str = "https://localhost";

struct Args {
    url: String,
    pki: PathBuf,
    signet: PathBuf,
    clients: usize,
    seconds: u64,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "service bench: {msg}\nusage: cargo bench --bench service --features testkit -- --url URL --pki DIR --signet BIN [--clients N] [--seconds S]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut url = None;
    let mut pki = None;
    let mut signet = None;
    let mut clients = 8;
    let mut seconds = 10;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = it.next(),
            "--pki" => pki = it.next().map(PathBuf::from),
            "--signet" => signet = it.next().map(PathBuf::from),
            "--clients" => {
                clients = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (1..=1024).contains(n))
                    .unwrap_or_else(|| usage("--clients needs 1..=1024"))
            }
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (1..=3600).contains(n))
                    .unwrap_or_else(|| usage("--seconds needs 1..=3600"))
            }
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    Args {
        url: url.unwrap_or_else(|| usage("--url is required")),
        pki: pki.unwrap_or_else(|| usage("--pki is required")),
        signet: signet.unwrap_or_else(|| usage("--signet is required")),
        clients,
        seconds,
    }
}

fn client(pki: &std::path::Path, role: &str, port: u16) -> reqwest::blocking::Client {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(pki.join(format!("{role}.pem")))
        .expect("client certificate")
        .collect::<Result<_, _>>()
        .expect("client certificate PEM");
    let key = PrivateKeyDer::from_pem_file(pki.join(format!("{role}.key"))).expect("client key");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(
            "localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

fn post(c: &reqwest::blocking::Client, url: &str, body: &Value) -> Value {
    let r = c.post(url).json(body).send().expect("request");
    let status = r.status();
    let v: Value = r.json().expect("JSON answer");
    assert!(status.is_success(), "{url}: {status}: {v}");
    v
}

fn challenge(options: &Value) -> Vec<u8> {
    let text = options["publicKey"]["challenge"]
        .as_str()
        .expect("challenge");
    b64url_decode("challenge", text, 64).expect("challenge")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = parse_args();
    let port: u16 = args
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| usage("--url must end with :PORT"));
    let base = format!("https://localhost:{port}");
    let deadline_secs = args.seconds;

    println!(
        "service bench: {} clients, {} s, authentication options + verify per op, against {}",
        args.clients, args.seconds, args.url
    );
    let results: Vec<Vec<Duration>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.clients)
            .map(|i| {
                let base = base.clone();
                let pki = args.pki.clone();
                scope.spawn(move || {
                    let c = client(&pki, "rp", port);
                    let name = format!("bench-{}-{i}", std::process::id());
                    let options = post(
                        &c,
                        &format!("{base}/v1/registrations/options"),
                        &json!({"user": {"name": name}}),
                    );
                    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
                    let user_id = options["publicKey"]["user"]["id"].as_str().expect("user id");
                    auth.user_handle = b64url_decode("user.id", user_id, 64).expect("user id");
                    let parts = auth.register(&Ceremony::new(RP_ID, ORIGIN, &challenge(&options)), &Attestation::None);
                    post(
                        &c,
                        &format!("{base}/v1/registrations/verify"),
                        &json!({"ceremonyId": options["ceremonyId"], "credential": parts.to_json()}),
                    );
                    let mut latencies = Vec::new();
                    let end = Instant::now() + Duration::from_secs(deadline_secs);
                    while Instant::now() < end {
                        let start = Instant::now();
                        let options = post(
                            &c,
                            &format!("{base}/v1/authentications/options"),
                            &json!({"user": {"name": name}}),
                        );
                        let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&options)));
                        post(
                            &c,
                            &format!("{base}/v1/authentications/verify"),
                            &json!({"ceremonyId": options["ceremonyId"], "credential": parts.to_json()}),
                        );
                        latencies.push(start.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut all: Vec<Duration> = results.into_iter().flatten().collect();
    all.sort();
    let ops = all.len() as f64 / args.seconds as f64;
    println!("  ops:            {}", all.len());
    println!("  ops/s:          {ops:.0}");
    println!(
        "  p50 latency:    {:.2} ms",
        percentile(&all, 0.50).as_secs_f64() * 1e3
    );
    println!(
        "  p99 latency:    {:.2} ms",
        percentile(&all, 0.99).as_secs_f64() * 1e3
    );

    // The floor: the engine and a bare P-256 verify on one thread, now.
    let out = std::process::Command::new(&args.signet)
        .args(["speed", "--seconds", "3", "--json"])
        .output()
        .expect("signet speed");
    let speed: Value = serde_json::from_slice(&out.stdout).expect("signet speed --json");
    let floor = speed["floor_p256_verify_per_s"].as_f64().unwrap_or(0.0);
    let engine = speed["assertion_verify_per_s"].as_f64().unwrap_or(0.0);
    println!("  floor:          {floor:.0} bare ECDSA P-256 verifies/s (aws-lc-rs, one thread)");
    println!(
        "  engine:         {engine:.0} assertion verifies/s (signet speed, one thread, no I/O)"
    );
    if floor > 0.0 && engine > 0.0 {
        println!(
            "  ratio:          service/floor {:.4}, service/engine {:.4}",
            ops / floor,
            ops / engine
        );
    } else {
        println!("  ratio:          n/a (signet speed printed no rates: {speed})");
    }
}
