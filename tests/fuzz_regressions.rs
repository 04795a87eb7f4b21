//! The fuzz targets' regression inputs, in the normal (stable) test suite.
//!
//! Every file in `fuzz/regressions/<target>/` goes through
//! `signet::fuzzing`'s body of that target: exactly the function the fuzz
//! binary `fuzz/fuzz_targets/<target>.rs` calls. They must not panic, and
//! no allocation may exceed what `scripts/fuzz` gives libFuzzer (checked by
//! this binary's allocator). A crash `scripts/fuzz` finds is kept by
//! copying its input from `fuzz/artifacts/<target>/` into
//! `fuzz/regressions/<target>/` before the fix.
//!
//! The lists of targets cannot drift apart: `signet::fuzzing::TARGETS`, the
//! fuzz crate's `[[bin]]`s, the files in `fuzz/fuzz_targets/` and the
//! directories in `fuzz/regressions/` must name the same targets.
#![cfg(feature = "testkit")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use signet::fuzzing::{TARGETS, Target};

/// libFuzzer's `-malloc_limit_mb` in scripts/fuzz: no single allocation
/// may be larger.
const MALLOC_LIMIT: usize = 512 << 20;
/// libFuzzer's `-rss_limit_mb` in scripts/fuzz, as live heap bytes.
const HEAP_LIMIT: usize = 2048 << 20;

/// The system allocator, refusing what libFuzzer would report as an
/// out-of-memory: the test then aborts with "memory allocation of N bytes
/// failed".
struct Bounded;

static LIVE: AtomicUsize = AtomicUsize::new(0);

impl Bounded {
    fn admit(size: usize) -> bool {
        if size > MALLOC_LIMIT {
            return false;
        }
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        if live > HEAP_LIMIT {
            LIVE.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

// SAFETY: every call is passed to the system allocator unchanged, or
// refused with a null pointer, which GlobalAlloc allows.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Bounded::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Bounded::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !Bounded::admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        if new_size > MALLOC_LIMIT {
            if new_size > layout.size() {
                LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
            }
            return std::ptr::null_mut();
        }
        // SAFETY: ptr was allocated by System with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > layout.size() {
                LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
            }
        } else if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn names(kind: &str, names: impl IntoIterator<Item = String>) -> (String, BTreeSet<String>) {
    (kind.to_string(), names.into_iter().collect())
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_target_is_fuzzed_and_has_regressions() {
    let fuzz = fuzz_dir();
    let manifest: toml::Table = std::fs::read_to_string(fuzz.join("Cargo.toml"))
        .expect("fuzz/Cargo.toml")
        .parse()
        .expect("fuzz/Cargo.toml is TOML");
    let bins = manifest["bin"].as_array().expect("[[bin]] targets");
    for bin in bins {
        let name = bin["name"].as_str().expect("bin name");
        assert_eq!(
            bin["path"].as_str(),
            Some(format!("fuzz_targets/{name}.rs").as_str()),
            "fuzz/Cargo.toml: [[bin]] {name}"
        );
    }
    let stems = |dir: &Path, files: bool| -> Vec<String> {
        entries(dir)
            .into_iter()
            .filter(|p| p.is_file() == files)
            .filter_map(|p| {
                let name = if files { p.file_stem() } else { p.file_name() };
                name.and_then(|n| n.to_str()).map(str::to_string)
            })
            .collect()
    };
    let lists = [
        names(
            "fuzz/Cargo.toml [[bin]]",
            bins.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_string)),
        ),
        names(
            "fuzz/fuzz_targets/*.rs",
            stems(&fuzz.join("fuzz_targets"), true),
        ),
        names(
            "fuzz/regressions/*/",
            stems(&fuzz.join("regressions"), false),
        ),
    ];
    let expected = names(
        "signet::fuzzing::TARGETS",
        TARGETS.iter().map(|t| t.name.to_string()),
    );
    for (kind, found) in &lists {
        let missing: Vec<_> = expected.1.difference(found).collect();
        let extra: Vec<_> = found.difference(&expected.1).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{kind} disagrees with {}: missing {missing:?}, not a target {extra:?}",
            expected.0
        );
    }
    for t in TARGETS {
        let source = std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{}.rs", t.name)))
            .expect("fuzz target source");
        for call in [
            format!("signet::fuzzing::init(\"{}\")", t.name),
            format!("signet::fuzzing::{}(data)", t.name),
        ] {
            assert!(
                source.contains(&call),
                "fuzz/fuzz_targets/{}.rs does not call {call}",
                t.name
            );
        }
        let dir = fuzz.join("regressions").join(t.name);
        assert!(
            entries(&dir).iter().any(|p| p.is_file()),
            "{} holds no input",
            dir.display()
        );
    }
}

/// Runs `inputs` through `t`, returning a line per input that panicked.
fn run_all(t: &Target, inputs: &[(String, Vec<u8>)]) -> Vec<String> {
    inputs
        .iter()
        .filter_map(|(name, bytes)| {
            catch_unwind(AssertUnwindSafe(|| (t.run)(bytes)))
                .err()
                .map(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!("{}: {name}: panicked: {why}", t.name)
                })
        })
        .collect()
}

#[test]
fn regression_inputs_do_not_crash() {
    let mut failures = Vec::new();
    let mut count = 0;
    for t in TARGETS {
        let dir = fuzz_dir().join("regressions").join(t.name);
        let inputs: Vec<(String, Vec<u8>)> = entries(&dir)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (p.display().to_string(), bytes)
            })
            .collect();
        count += inputs.len();
        failures.extend(run_all(t, &inputs));
    }
    assert!(count > 0, "no regression input at all");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The inputs signet's encoders make for scripts/fuzz's corpora.
#[test]
fn generated_seeds_do_not_crash() {
    let mut failures = Vec::new();
    for t in TARGETS {
        let seeds: Vec<(String, Vec<u8>)> = (t.seeds)()
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("seed {i}"), s))
            .collect();
        failures.extend(run_all(t, &seeds));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
