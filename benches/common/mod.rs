//! What the key-backend benches share: their arguments, the base
//! configuration of the in-process flows, the timing loops, the statistics
//! they print (as a table and as one JSON line) and the share of a step
//! spent in one primitive.

#![allow(dead_code)] // each bench uses part of it

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Args {
    pub softhsm: Option<PathBuf>,
    pub tpm: Option<PathBuf>,
    pub seconds: f64,
}

pub fn usage(bench: &str, msg: &str) -> ! {
    eprintln!(
        "{bench} bench: {msg}\nusage: cargo bench --bench {bench} --features testkit -- --softhsm-profile P [--tpm-profile P] [--seconds S]"
    );
    std::process::exit(2)
}

/// The arguments of a key-backend bench named `bench`.
pub fn parse_args(bench: &str) -> Args {
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
                        .unwrap_or_else(|| usage(bench, "--softhsm-profile needs a path")),
                )
            }
            "--tpm-profile" => {
                args.tpm = Some(
                    it.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage(bench, "--tpm-profile needs a path")),
                )
            }
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0 && *s <= 3600.0)
                    .unwrap_or_else(|| usage(bench, "--seconds needs a number in (0, 3600]"))
            }
            // cargo bench appends --bench to the harness's arguments.
            "--bench" => {}
            other => usage(bench, &format!("unknown argument {other}")),
        }
    }
    if args.softhsm.is_none() && args.tpm.is_none() {
        usage(bench, "give --softhsm-profile and/or --tpm-profile");
    }
    args
}

/// Per-operation latencies of one measurement.
pub struct Stats {
    pub lat: Vec<Duration>,
    pub elapsed: Duration,
}

impl Stats {
    /// Operations timed one by one among others: their own time only.
    pub fn busy(lat: Vec<Duration>) -> Stats {
        let elapsed = lat.iter().sum();
        Stats { lat, elapsed }
    }

    pub fn ops_per_s(&self) -> f64 {
        self.lat.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Mean wall time per operation, ms (one thread: 1 / throughput).
    pub fn mean_ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3 / self.lat.len() as f64
    }

    /// Nearest-rank percentile, ms.
    pub fn pct_ms(&self, p: f64) -> f64 {
        let mut v = self.lat.clone();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    }
}

/// Runs `op` back to back for `seconds`, timing each call.
pub fn timed_loop(seconds: f64, mut op: impl FnMut(u64)) -> Stats {
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
pub fn timed_each<T>(items: &[T], seconds: f64, mut op: impl FnMut(&T)) -> Stats {
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

pub struct Row {
    pub name: &'static str,
    pub stats: Stats,
}

/// Prints what fraction of `step`'s time its key operation takes.
pub fn share(step: &str, step_ms: f64, prim: &str, prim_ms: f64) {
    let key = prim_ms / step_ms;
    println!(
        "  {step:<11} = {key:.3}x the {prim} rate: {prim} is {:.1}% of its time ({prim_ms:.3} of \
         {step_ms:.3} ms); everything else {:.3} ms ({:.1}%)",
        key * 100.0,
        step_ms - prim_ms,
        (1.0 - key) * 100.0
    );
}

/// The configuration the in-process flow benches start from (as
/// tests/common/flows.rs; the files it names are never read by the flows).
/// Each bench appends its own sections.
pub const BASE_CONFIG: &str = r#"
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
"#;

/// Prints every row of every backend as one `JSON [...]` line, for tools
/// that compare runs.
pub fn print_json(all: &[(String, Row)]) {
    let rows: Vec<serde_json::Value> = all
        .iter()
        .map(|(backend, r)| {
            serde_json::json!({
                "backend": backend,
                "operation": r.name,
                "ops": r.stats.lat.len(),
                "per_s": r.stats.ops_per_s().round(),
                "p50_ms": (r.stats.pct_ms(50.0) * 1e3).round() / 1e3,
                "p99_ms": (r.stats.pct_ms(99.0) * 1e3).round() / 1e3,
            })
        })
        .collect();
    println!("JSON {}", serde_json::Value::Array(rows));
}

/// `Services` over a fresh `SledStore` under `dir` and `ring`'s keys
/// (provisioned here), with [`BASE_CONFIG`] plus `extra` and the policy
/// `policy`: the flows as the API handlers call them.
pub fn flow_services(
    dir: &std::path::Path,
    ring: signet::keys::KeyRing,
    extra: &str,
    policy: &str,
) -> signet::flows::Services {
    ring.init().expect("provision keys");
    let store =
        std::sync::Arc::new(signet::store::SledStore::open(&dir.join("data")).expect("store"));
    let config = signet::config::Config::parse(
        &format!("{BASE_CONFIG}{extra}"),
        std::path::Path::new("/etc/signet/signet.toml"),
        &signet::config::Overrides::default(),
    )
    .expect("config");
    let policy = signet::policy::tiers::Policy::parse(policy).expect("policy");
    signet::flows::Services::new(&config, store, std::sync::Arc::new(ring), policy)
}

/// The key devices a flow bench runs on: the profiles given, loaded, with
/// their environment (SOFTHSM2_CONF) applied.
pub struct Backends {
    softhsm: Option<(PathBuf, signet::keys::Profile)>,
    tpm: Option<(PathBuf, signet::keys::Profile)>,
}

impl Backends {
    /// Loads the profiles of `args`. Call it before any thread exists:
    /// sled, the PKCS#11 workers and the TPM worker all start later.
    pub fn load(bench: &str, args: &Args) -> Backends {
        let load = |p: &PathBuf| {
            let profile =
                signet::keys::Profile::load(p).unwrap_or_else(|e| usage(bench, &e.to_string()));
            // SAFETY: single-threaded here: no backend, store or thread
            // exists yet.
            unsafe { profile.apply_env() };
            (p.clone(), profile)
        };
        Backends {
            softhsm: args.softhsm.as_ref().map(load),
            tpm: args.tpm.as_ref().map(load),
        }
    }

    /// Runs `bench` on SoftHSM, then on swtpm (those given), and prints
    /// every row as one JSON line.
    pub fn run(
        &self,
        bench: impl Fn(&str, &std::path::Path, &signet::keys::Profile) -> Vec<(String, Row)>,
    ) {
        let mut all = Vec::new();
        if let Some((path, profile)) = &self.softhsm {
            all.extend(bench("SoftHSM", path, profile));
        }
        if let Some((path, profile)) = &self.tpm {
            all.extend(bench("swtpm", path, profile));
        }
        print_json(&all);
    }
}
