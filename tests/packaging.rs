//! The packaging (Dockerfile, .dockerignore, packaging/systemd/) checked
//! against the repository and the built binary, without a container engine
//! or a running systemd:
//!
//! - Dockerfile: every COPY source exists and .dockerignore lets it in (and
//!   keeps var/ and certs/dev/ out); every file the build reads (the
//!   manifest's targets without an explicit path, the signet binary,
//!   include_str!/include_bytes! outside tests) is copied; it
//!   builds `--release --locked --bin signet` with features that exist and
//!   without testkit; its runtime packages hold every shared library `ldd`
//!   reports for signet (dpkg -S), and exist; EXPOSE, SIGNET_LISTEN and the
//!   example configuration agree on the port; it runs as a non-root user;
//!   ENTRYPOINT + CMD is an invocation the CLI accepts.
//! - systemd: the unit has every hardening directive with its value;
//!   ExecStart/ExecStartPre are invocations the CLI accepts; TimeoutStopSec
//!   exceeds the default shutdown grace; `systemd-analyze verify` finds
//!   nothing in the unit (alone and with each drop-in) and
//!   `systemd-analyze security` rates it at most 2.0; sysusers and tmpfiles
//!   create the user and directories with their modes in a scratch root.
//! - MemoryDenyWriteExecute=yes holds for signet, every library it links
//!   and the SoftHSM2 module: no text relocations, no executable stack.
//!
//! A check that needs a tool this machine lacks (ldd, dpkg, readelf,
//! systemd-analyze) says so on stderr and is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SIGNET: &str = env!("CARGO_BIN_EXE_signet");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// clap accepts `args` (command path, options, values) without running
/// anything: with a sentinel option appended, the sentinel must be the only
/// complaint, since clap parses and runs value parsers left to right.
fn assert_cli_accepts(args: &[&str]) {
    const SENTINEL: &str = "--signet-packaging-sentinel";
    let mut all = args.to_vec();
    all.push(SENTINEL);
    let out = Command::new(SIGNET)
        .args(&all)
        .env_remove("SIGNET_LOG")
        .output()
        .expect("run signet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2)
            && stderr
                .lines()
                .next()
                .is_some_and(|l| l.contains(&format!("unexpected argument '{SENTINEL}'"))),
        "signet {} is not accepted: {stderr}",
        args.join(" ")
    );
}

// ---- Dockerfile ----

/// One instruction: its keyword (upper case), its arguments, and the stage
/// (index of its FROM) it belongs to.
struct Instruction {
    keyword: String,
    args: String,
    stage: usize,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    let mut stage = 0;
    let mut seen_from = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if !current.is_empty() && trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            if seen_from {
                stage += 1;
            }
            seen_from = true;
        }
        out.push(Instruction {
            keyword,
            args: args.trim().to_string(),
            stage,
        });
        current.clear();
    }
    out
}

fn all_of<'a>(ins: &'a [Instruction], keyword: &str) -> Vec<&'a Instruction> {
    ins.iter().filter(|i| i.keyword == keyword).collect()
}

fn last_stage(ins: &[Instruction]) -> usize {
    ins.iter().map(|i| i.stage).max().unwrap_or(0)
}

/// A JSON-array instruction argument (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not a JSON array: {args}: {e}"))
}

/// COPY without --from: (sources, destination), options dropped.
fn copies(ins: &[Instruction]) -> Vec<(usize, Vec<String>, String)> {
    all_of(ins, "COPY")
        .into_iter()
        .filter(|i| !i.args.contains("--from="))
        .map(|i| {
            let mut words: Vec<String> = i
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .map(String::from)
                .collect();
            let dest = words.pop().expect("COPY destination");
            (i.stage, words, dest)
        })
        .collect()
}

/// Whether .dockerignore lets `path` into the build context: the last rule
/// that matches decides. Rules are `*` or a path (a directory covers what
/// is under it), optionally negated with `!`.
fn context_includes(path: &str) -> bool {
    let mut included = true;
    for line in read(".dockerignore").lines() {
        let rule = line.trim();
        if rule.is_empty() || rule.starts_with('#') {
            continue;
        }
        let (negated, pattern) = match rule.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, rule),
        };
        let pattern = pattern.trim_end_matches('/');
        assert!(
            pattern == "*" || !pattern.contains(['*', '?', '[']),
            ".dockerignore: this test only understands `*` and plain paths: {rule}"
        );
        let matches = pattern == "*"
            || path == pattern
            || path
                .strip_prefix(pattern)
                .is_some_and(|r| r.starts_with('/'));
        if matches {
            included = negated;
        }
    }
    included
}

#[test]
fn dockerfile_copies_exist_and_the_context_lets_them_in() {
    let ins = dockerfile();
    let copies = copies(&ins);
    assert!(!copies.is_empty());
    for (_, sources, _) in &copies {
        for source in sources {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            assert!(
                Path::new(ROOT).join(source).exists(),
                "Dockerfile copies {source}, which does not exist"
            );
            assert!(
                context_includes(source),
                ".dockerignore keeps {source} out of the build context"
            );
        }
    }
    for secret in [
        "var/dev/softhsm/pin",
        "var/dev/pki/server.key",
        "certs/dev/ca.key",
        "target/release/signet",
        ".git/config",
    ] {
        assert!(!context_includes(secret), ".dockerignore lets {secret} in");
    }
}

/// Everything the build stage's `cargo build` reads from the repository.
fn build_inputs() -> Vec<String> {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let mut inputs = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    let lib = manifest
        .get("lib")
        .and_then(|l| l.get("path"))
        .and_then(|p| p.as_str())
        .unwrap_or("src/lib.rs");
    inputs.push(lib.to_string());
    // Cargo parses every target of the manifest: one without a `path` must
    // be where cargo infers it ("can't find `keys` bench at
    // `benches/keys.rs`"), while an explicit path is only read when that
    // target is built, which here is the signet binary alone.
    for (kind, dir) in [
        ("bin", "src/bin"),
        ("bench", "benches"),
        ("example", "examples"),
        ("test", "tests"),
    ] {
        for target in manifest
            .get(kind)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let name = target["name"].as_str().expect("target name");
            match target.get("path").and_then(|p| p.as_str()) {
                Some(path) if kind == "bin" && name == "signet" => inputs.push(path.to_string()),
                Some(_) => {}
                None => inputs.push(format!("{dir}/{name}.rs")),
            }
        }
    }
    // Files compiled in, outside the test modules (which follow the first
    // #[cfg(test)] of a file).
    let mut stack = vec![PathBuf::from(ROOT).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            for mac in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in text.match_indices(mac) {
                    let rest = &text[at + mac.len()..];
                    let rel = &rest[..rest.find('"').expect("closing quote")];
                    let file = path.parent().expect("dir").join(rel);
                    let file = file
                        .canonicalize()
                        .unwrap_or_else(|e| panic!("{} includes {rel}: {e}", path.display()));
                    let root = Path::new(ROOT).canonicalize().expect("root");
                    let rel = file.strip_prefix(&root).expect("inside the repository");
                    inputs.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    inputs
}

#[test]
fn the_build_stage_copies_everything_cargo_build_reads() {
    let ins = dockerfile();
    let build_copies: Vec<(Vec<String>, String)> = copies(&ins)
        .into_iter()
        .filter(|(stage, _, _)| *stage == 0)
        .map(|(_, s, d)| (s, d))
        .collect();
    // The build stage mirrors the repository under its WORKDIR.
    for (sources, dest) in &build_copies {
        if sources.len() == 1 {
            let s = sources[0].trim_end_matches('/');
            let d = dest.trim_start_matches("./").trim_end_matches('/');
            assert!(d == s || d.is_empty(), "COPY {s} {dest}: not mirrored");
        } else {
            assert!(dest == "./", "COPY {sources:?} {dest}: not mirrored");
        }
    }
    let copied: Vec<String> = build_copies
        .iter()
        .flat_map(|(s, _)| s.iter().map(|p| p.trim_end_matches('/').to_string()))
        .collect();
    let inputs = build_inputs();
    assert!(
        inputs.iter().any(|i| i == "docs/openapi.json"),
        "{inputs:?}"
    );
    for input in inputs {
        assert!(
            copied
                .iter()
                .any(|c| input == *c || input.starts_with(&format!("{c}/"))),
            "cargo build reads {input}, which the build stage does not copy ({copied:?})"
        );
    }
}

#[test]
fn the_build_is_release_locked_signet_with_existing_features() {
    let ins = dockerfile();
    let build = all_of(&ins, "RUN")
        .into_iter()
        .find(|i| i.args.contains("cargo build"))
        .expect("a RUN with cargo build");
    let words: Vec<&str> = build.args.split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "cargo build without {flag}");
    }
    assert!(!words.contains(&"--all-features"));
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let bins: Vec<&str> = manifest["bin"]
        .as_array()
        .expect("[[bin]]")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    let at = words.iter().position(|w| *w == "--bin").expect("--bin");
    assert_eq!(words[at + 1], "signet");
    assert!(bins.contains(&"signet"), "{bins:?}");
    let features = manifest["features"].as_table().expect("[features]");
    for (i, w) in words.iter().enumerate() {
        let list = match w.strip_prefix("--features=") {
            Some(l) => l,
            None if *w == "--features" || *w == "-F" => words[i + 1],
            None => continue,
        };
        for f in list.split(',') {
            assert!(features.contains_key(f), "feature {f} is not in Cargo.toml");
            assert_ne!(f, "testkit", "production images are built without testkit");
        }
    }
    // The binary the runtime stage takes is the one this RUN installs.
    let out = build
        .args
        .split_whitespace()
        .last()
        .expect("install target");
    let from_build = all_of(&ins, "COPY")
        .into_iter()
        .find(|i| i.args.contains("--from="))
        .expect("COPY --from");
    assert!(
        from_build.args.contains(out),
        "runtime copies {} but the build installs {out}",
        from_build.args
    );
}

#[test]
fn the_builder_matches_the_toolchain_and_the_runtime_release() {
    let ins = dockerfile();
    let froms = all_of(&ins, "FROM");
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    let arg = all_of(&ins, "ARG")
        .into_iter()
        .find_map(|i| i.args.strip_prefix("RUST_VERSION="))
        .expect("ARG RUST_VERSION=");
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let msrv = manifest["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    let version = |v: &str| -> (u32, u32) {
        let mut p = v.split('.').map(|n| n.parse::<u32>().expect("number"));
        (p.next().expect("major"), p.next().unwrap_or(0))
    };
    assert!(
        version(arg) >= version(msrv),
        "RUST_VERSION {arg} is older than rust-version {msrv}"
    );
    assert!(froms[0].args.starts_with("rust:${RUST_VERSION}-bookworm "));
    assert!(froms[1].args.starts_with("debian:bookworm-slim"));
}

/// The packages the runtime stage installs with apt-get.
fn runtime_packages(ins: &[Instruction]) -> Vec<String> {
    let stage = last_stage(ins);
    let run = all_of(ins, "RUN")
        .into_iter()
        .find(|i| i.stage == stage && i.args.contains("apt-get install"))
        .expect("apt-get install in the runtime stage");
    let after = run.args.split("apt-get install").nth(1).expect("install");
    after
        .split("&&")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && !w.starts_with('$'))
        .map(String::from)
        .collect()
}

#[test]
fn the_runtime_packages_hold_every_library_signet_links() {
    let packages = runtime_packages(&dockerfile());
    assert!(packages.iter().any(|p| p == "ca-certificates"));
    // A TPM profile with tcti = "device:/dev/tpmrm0" needs the device TCTI,
    // which tctildr dlopen()s (ldd cannot see it).
    assert!(packages.iter().any(|p| p == "libtss2-tcti-device0"));
    if !have("ldd") || !have("dpkg") {
        return;
    }
    let out = run("ldd", &[SIGNET]);
    assert!(out.status.success(), "ldd {SIGNET}");
    let ldd = String::from_utf8_lossy(&out.stdout);
    let mut needed = BTreeMap::new();
    for line in ldd.lines() {
        let Some((name, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        let path = rest.split_whitespace().next().expect("a path");
        let real = std::fs::canonicalize(path).expect("library path");
        let mut owner = None;
        for candidate in [real.to_string_lossy().into_owned(), path.to_string()] {
            let o = run("dpkg", &["-S", &candidate]);
            if o.status.success() {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let pkg = text.split(':').next().expect("package").trim().to_string();
                owner = Some(pkg);
                break;
            }
        }
        let owner = owner.unwrap_or_else(|| panic!("no Debian package owns {name} ({path})"));
        needed.insert(name.to_string(), owner);
    }
    assert!(
        needed.keys().any(|n| n.starts_with("libtss2-esys")),
        "{ldd}"
    );
    for (library, package) in &needed {
        if matches!(package.as_str(), "libc6" | "libgcc-s1") {
            continue; // in debian:bookworm-slim
        }
        assert!(
            packages.contains(package),
            "signet links {library} from {package}, which the runtime stage does not install \
             ({packages:?})"
        );
    }
    // Every package named exists in this Debian release.
    if have("apt-cache") && run("apt-cache", &["show", "libc6"]).status.success() {
        for p in &packages {
            assert!(
                run("apt-cache", &["show", "--no-all-versions", p])
                    .status
                    .success(),
                "apt-cache knows no package {p}"
            );
        }
    }
}

fn listen_port(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen}"))
}

#[test]
fn the_exposed_port_is_the_configured_one() {
    let ins = dockerfile();
    let example: toml::Table = read("signet.example.toml").parse().expect("example");
    let port = listen_port(example["server"]["listen"].as_str().expect("server.listen"));
    let exposed: Vec<u16> = all_of(&ins, "EXPOSE")
        .iter()
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.split('/').next().unwrap_or(p).parse().expect("port"))
        .collect();
    assert_eq!(exposed, [port]);
    let listen = all_of(&ins, "ENV")
        .into_iter()
        .find_map(|i| i.args.strip_prefix("SIGNET_LISTEN="))
        .expect("ENV SIGNET_LISTEN=");
    assert_eq!(listen_port(listen), port);
    assert!(listen.starts_with("0.0.0.0:"), "{listen}");
}

#[test]
fn the_image_runs_signet_serve_as_a_user_it_creates() {
    let ins = dockerfile();
    let stage = last_stage(&ins);
    let user = all_of(&ins, "USER")
        .last()
        .map(|i| i.args.clone())
        .expect("USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.as_str()),
        "USER {user}"
    );
    assert!(
        all_of(&ins, "RUN")
            .iter()
            .any(|i| i.stage == stage && i.args.contains("useradd") && i.args.contains(&user)),
        "the runtime stage does not create {user}"
    );
    let entrypoint = exec_form(&all_of(&ins, "ENTRYPOINT").last().expect("ENTRYPOINT").args);
    let cmd = exec_form(&all_of(&ins, "CMD").last().expect("CMD").args);
    assert_eq!(entrypoint, ["/usr/bin/signet"]);
    let from_build = all_of(&ins, "COPY")
        .into_iter()
        .find(|i| i.args.contains("--from="))
        .expect("COPY --from");
    assert!(from_build.args.ends_with(" /usr/bin/signet"));
    assert_eq!(cmd, ["serve", "--config", "/etc/signet/signet.toml"]);
    assert_cli_accepts(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
    let volumes = exec_form(&all_of(&ins, "VOLUME").last().expect("VOLUME").args);
    assert!(
        volumes.iter().any(|v| v == "/var/lib/signet"),
        "{volumes:?}"
    );
}

// ---- systemd ----

type Unit = BTreeMap<(String, String), Vec<String>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        unit.entry((section.clone(), key.trim().to_string()))
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

fn unit() -> Unit {
    parse_unit(&read("packaging/systemd/signet.service"))
}

fn service<'a>(unit: &'a Unit, key: &str) -> &'a [String] {
    unit.get(&("Service".to_string(), key.to_string()))
        .map_or(&[], Vec::as_slice)
}

#[test]
fn the_unit_has_every_hardening_directive() {
    let unit = unit();
    for (key, value) in [
        ("Type", "exec"),
        ("User", "signet"),
        ("Group", "signet"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/signet /var/log/signet"),
        ("ReadOnlyPaths", "/etc/signet"),
        ("PrivateTmp", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("LimitCORE", "0"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("StateDirectory", "signet"),
        ("LogsDirectory", "signet"),
    ] {
        assert_eq!(
            service(&unit, key),
            [value.to_string()],
            "[Service] {key}= must be set once, to {value:?}"
        );
    }
    // Every directive systemd knows of the kind, not just the ones above.
    for key in ["PrivateDevices", "RestrictNamespaces", "ProtectClock"] {
        assert_eq!(service(&unit, key), ["yes".to_string()], "{key}");
    }
    // The data directory and the verification log of the documented layout
    // are inside ReadWritePaths and nothing else is.
    let writable: Vec<&str> = service(&unit, "ReadWritePaths")[0].split(' ').collect();
    let readme = read("packaging/README.md");
    for path in [
        "/var/lib/signet/data",
        "/var/log/signet/verification.jsonl",
        "/var/lib/signet/policy.toml",
    ] {
        assert!(
            readme.contains(path),
            "packaging/README.md does not name {path}"
        );
        assert!(
            writable
                .iter()
                .any(|w| path.strip_prefix(w).is_some_and(|r| r.starts_with('/'))),
            "{path} is not under ReadWritePaths {writable:?}"
        );
    }
}

#[test]
fn the_unit_runs_signet_serve_as_the_cli_defines_it() {
    let unit = unit();
    let pre = service(&unit, "ExecStartPre");
    let start = service(&unit, "ExecStart");
    assert_eq!(pre.len(), 1, "{pre:?}");
    assert_eq!(start.len(), 1, "{start:?}");
    let pre: Vec<&str> = pre[0].split_whitespace().collect();
    let start: Vec<&str> = start[0].split_whitespace().collect();
    assert_eq!(
        pre,
        [
            "/usr/bin/signet",
            "serve",
            "--config",
            "/etc/signet/signet.toml",
            "--check"
        ]
    );
    assert_eq!(
        start,
        [
            "/usr/bin/signet",
            "serve",
            "--config",
            "/etc/signet/signet.toml"
        ]
    );
    assert_cli_accepts(&pre[1..]);
    assert_cli_accepts(&start[1..]);
    // ... and `signet serve --help` documents both options.
    let out = run(SIGNET, &["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config <FILE>") && help.contains("--check"),
        "{help}"
    );
    // A token locks its PIN after a few wrong tries: serve exits 3 when the
    // PIN is refused, and systemd must not restart it then.
    assert_eq!(service(&unit, "RestartPreventExitStatus"), ["3"]);
    assert!(help.contains("3 the key device refused the PIN"), "{help}");
}

#[test]
fn the_stop_timeout_exceeds_the_default_shutdown_grace() {
    let unit = unit();
    let timeout = &service(&unit, "TimeoutStopSec")[0];
    let seconds: u64 = if let Some(m) = timeout.strip_suffix("min") {
        m.trim().parse::<u64>().expect("minutes") * 60
    } else {
        timeout.trim_end_matches('s').parse().expect("seconds")
    };
    let example: toml::Table = read("signet.example.toml").parse().expect("example");
    let grace_ms = example["server"]["shutdown_grace_ms"]
        .as_integer()
        .expect("server.shutdown_grace_ms");
    // The example holds the defaults; docs/config.md says the same.
    assert!(
        read("docs/config.md").contains(&format!("{grace_ms}")),
        "docs/config.md does not mention the default {grace_ms}"
    );
    assert!(
        seconds * 1000 >= u64::try_from(grace_ms).expect("positive") + 10_000,
        "TimeoutStopSec {timeout} leaves less than 10 s beyond the {grace_ms} ms grace \
         for the final checkpoint and flush"
    );
}

#[test]
fn the_drop_ins_open_exactly_the_key_devices() {
    let tpm = parse_unit(&read("packaging/systemd/tpm.conf"));
    let get = |u: &Unit, k: &str| service(u, k).to_vec();
    assert_eq!(get(&tpm, "DeviceAllow"), ["/dev/tpmrm0 rw"]);
    assert_eq!(get(&tpm, "SupplementaryGroups"), ["tss"]);
    assert_eq!(get(&tpm, "PrivateDevices"), ["no"]);
    assert_eq!(get(&tpm, "DevicePolicy"), ["closed"]);
    let softhsm = parse_unit(&read("packaging/systemd/softhsm.conf"));
    assert_eq!(get(&softhsm, "ReadWritePaths"), ["/var/lib/softhsm/tokens"]);
    assert_eq!(get(&softhsm, "SupplementaryGroups"), ["softhsm"]);
}

/// The unit with /usr/bin/signet replaced by the built binary, which
/// `systemd-analyze verify` wants to find.
fn unit_for_analysis(dir: &Path, extra: &str, name: &str) -> PathBuf {
    let text = read("packaging/systemd/signet.service").replace("/usr/bin/signet", SIGNET);
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n{extra}")).expect("write unit");
    path
}

#[test]
fn systemd_analyze_finds_nothing_and_rates_the_unit_ok() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, extra) in [
        ("signet.service", String::new()),
        ("signet-tpm.service", read("packaging/systemd/tpm.conf")),
        (
            "signet-softhsm.service",
            read("packaging/systemd/softhsm.conf"),
        ),
    ] {
        let path = unit_for_analysis(dir.path(), &extra, name);
        let out = run("systemd-analyze", &["verify", path.to_str().expect("path")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {name}: {stderr}"
        );
    }
    let path = unit_for_analysis(dir.path(), "", "signet.service");
    let out = run(
        "systemd-analyze",
        &[
            "security",
            "--offline=yes",
            "--threshold=20",
            path.to_str().expect("path"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security rates the unit above 2.0:\n{}",
        stdout.lines().last().unwrap_or_default()
    );
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_the_directories() {
    if !have("systemd-sysusers") || !have("systemd-tmpfiles") {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("etc")).expect("etc");
    let with_stdin = |program: &str, args: &[&str], file: &str| {
        let out = Command::new(program)
            .arg(format!("--root={}", root.path().display()))
            .args(args)
            .arg("-")
            .stdin(std::fs::File::open(Path::new(ROOT).join(file)).expect("open"))
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{program}: {stderr}");
        assert!(
            !stderr.contains("ignoring") && !stderr.contains("Failed"),
            "{program}: {stderr}"
        );
    };
    with_stdin("systemd-sysusers", &[], "packaging/systemd/signet.sysusers");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("signet:"))
        .expect("user signet");
    let fields: Vec<&str> = entry.split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "signet is a system user: {entry}");
    assert_eq!(fields[6], "/usr/sbin/nologin");
    let group = std::fs::read_to_string(root.path().join("etc/group")).expect("group");
    let gid: u32 = group
        .lines()
        .find(|l| l.starts_with("signet:"))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|g| g.parse().ok())
        .expect("group signet");
    if !nix_is_root() {
        eprintln!("skipped: systemd-tmpfiles --create needs root to chown");
        return;
    }
    with_stdin(
        "systemd-tmpfiles",
        &["--create"],
        "packaging/systemd/signet.tmpfiles",
    );
    use std::os::unix::fs::MetadataExt;
    for (dir, mode, owner, group_of) in [
        ("etc/signet", 0o750, 0, gid),
        ("etc/signet/hsm", 0o750, 0, gid),
        ("etc/signet/pki", 0o750, 0, gid),
        ("var/lib/signet", 0o700, uid, gid),
        ("var/lib/signet/data", 0o700, uid, gid),
        ("var/log/signet", 0o700, uid, gid),
    ] {
        let meta =
            std::fs::metadata(root.path().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(meta.is_dir(), "{dir}");
        assert_eq!(
            meta.mode() & 0o7777,
            mode,
            "{dir}: mode {:o}",
            meta.mode() & 0o7777
        );
        assert_eq!((meta.uid(), meta.gid()), (owner, group_of), "{dir}: owner");
    }
}

fn nix_is_root() -> bool {
    run("id", &["-u"]).stdout.starts_with(b"0\n")
}

// ---- MemoryDenyWriteExecute ----

/// The ELF files that run inside signet: the binary, what it links, the
/// device TCTI and the SoftHSM2 module (when installed) with what they link.
fn elf_files() -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    let mut roots = vec![PathBuf::from(SIGNET)];
    for module in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0",
        "/usr/lib/aarch64-linux-gnu/libtss2-tcti-device.so.0",
    ] {
        if Path::new(module).exists() {
            roots.push(PathBuf::from(module));
        }
    }
    for root in roots {
        files.insert(root.canonicalize().expect("path"));
        let out = run("ldd", &[root.to_str().expect("path")]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.trim().split_once(" => ") {
                Some((_, rest)) => rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                None => line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            if path.starts_with('/') {
                files.insert(Path::new(&path).canonicalize().expect("library"));
            }
        }
    }
    files
}

#[test]
fn nothing_signet_loads_needs_writable_executable_memory() {
    if !have("ldd") || !have("readelf") {
        return;
    }
    let files = elf_files();
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        let f = file.to_str().expect("path");
        let dynamic = String::from_utf8_lossy(&run("readelf", &["-dW", f]).stdout).into_owned();
        assert!(
            !dynamic.contains("TEXTREL"),
            "{f} has text relocations: loading it needs W+X pages"
        );
        let headers = String::from_utf8_lossy(&run("readelf", &["-lW", f]).stdout).into_owned();
        if let Some(stack) = headers
            .lines()
            .find(|l| l.trim_start().starts_with("GNU_STACK"))
        {
            // GNU_STACK Offset VirtAddr PhysAddr FileSiz MemSiz Flg... Align
            let words: Vec<&str> = stack.split_whitespace().collect();
            let flags = words[6..words.len() - 1].concat();
            assert!(
                !flags.contains('E'),
                "{f} asks for an executable stack ({stack}): dlopen would mprotect it W+X"
            );
        }
    }
}
