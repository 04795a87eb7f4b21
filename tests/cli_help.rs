//! Every command's `--help` has an "Examples:" section, and every example is
//! an invocation the CLI accepts.
//!
//! The command tree is read from the built binary itself (the CLI is
//! declared in src/main.rs, not in the library): the "Commands:" section of
//! `signet --help`, then of each command's help, recursively. For each
//! command the test checks that `signet help PATH` and `signet PATH --help`
//! exit 0 and show "Examples:", and for each example that
//!
//! - it starts with `signet` followed by an existing command path: this
//!   command's own, or for a parent command one of its descendants';
//! - every long option it uses is one that command's help lists;
//! - clap accepts it: the example is run with a sentinel option appended,
//!   and the only complaint must be that sentinel. clap parses (and runs
//!   every value parser: roles, kids, base64url, times, URLs) left to right,
//!   so a misspelt command, an unknown option or a bad value is reported
//!   before the sentinel is reached, and nothing is ever executed. Examples
//!   with a shell substitution (`"$(jq ...)"`) skip this step; an example
//!   ending in `--help` is run as it is and must exit 0.

use std::collections::BTreeMap;
use std::process::{Command, Output};

const SENTINEL: &str = "--signet-example-sentinel";

fn signet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        // The examples name files that do not exist here; nothing may run,
        // and nothing may read the environment's overrides either.
        .env_remove("SIGNET_LOG")
        .env_remove("RUST_LOG")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run signet")
}

fn help_of(path: &[String]) -> String {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let out = signet(&args);
    assert!(
        out.status.success(),
        "signet {} exited {:?}: {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The names in a help text's "Commands:" section, without clap's `help`.
fn subcommands(help: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line == "Commands:" {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if line.trim().is_empty() {
            break;
        }
        // `  name  description`; wrapped descriptions are indented further.
        let Some(rest) = line.strip_prefix("  ") else {
            break;
        };
        if rest.starts_with(' ') {
            continue;
        }
        let name = rest.split_whitespace().next().expect("a command name");
        if name != "help" {
            names.push(name.to_string());
        }
    }
    names
}

/// The long options a help text lists (`--name`), global ones included.
/// Options are at most six columns in (`  -h, --help`, `      --json`);
/// their descriptions are indented further, and `--help` separates them
/// with blank lines.
fn long_options(help: &str) -> Vec<String> {
    let mut options = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if !line.is_empty() && !line.starts_with(' ') {
            inside = line == "Options:";
            continue;
        }
        let text = line.trim_start();
        if !inside || line.len() - text.len() > 6 {
            continue;
        }
        let text = match text.strip_prefix('-') {
            Some(t) if !t.starts_with('-') => t.get(3..).unwrap_or("").trim_start(),
            _ => text,
        };
        if let Some(name) = text.strip_prefix("--") {
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            options.push(format!("--{}", &name[..end]));
        }
    }
    options
}

/// The examples of a help text: each `  signet ...` line of the "Examples:"
/// section, with the lines a trailing `\` continues joined to it.
fn examples(help: &str) -> Vec<String> {
    let section = help
        .split_once("\nExamples:\n")
        .map(|(_, s)| s)
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let mut continued = false;
    for line in section.lines() {
        let text = line.trim();
        if text.is_empty() {
            break;
        }
        if continued {
            let last = out.last_mut().expect("a continued example");
            last.push(' ');
            last.push_str(text.trim_end_matches('\\').trim_end());
        } else if text.starts_with("signet ") || text == "signet" {
            out.push(text.trim_end_matches('\\').trim_end().to_string());
        } else {
            assert!(
                text.starts_with('#'),
                "an example line that is neither `signet ...` nor a # comment: {line:?}"
            );
        }
        continued = text.ends_with('\\');
    }
    out
}

/// Shell-like words: whitespace-separated, double or single quotes group
/// (and are removed). Stops at a redirection or a pipe, which the shell
/// consumes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in {line:?}");
    if in_word {
        out.push(word);
    }
    let end = out
        .iter()
        .position(|w| matches!(w.as_str(), ">" | ">>" | "<" | "|" | "2>"))
        .unwrap_or(out.len());
    out.truncate(end);
    out
}

/// Every command path of the CLI (the root is `[]`) with its help text.
fn command_tree() -> BTreeMap<Vec<String>, String> {
    let mut tree = BTreeMap::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let help = help_of(&path);
        for name in subcommands(&help) {
            let mut child = path.clone();
            child.push(name);
            todo.push(child);
        }
        tree.insert(path, help);
    }
    tree
}

#[test]
fn the_tree_is_read_from_the_binary() {
    let tree = command_tree();
    let paths: Vec<String> = tree.keys().map(|p| p.join(" ")).collect();
    for expected in [
        "serve",
        "hsm init",
        "hsm self-cert",
        "verify assertion",
        "audit verify",
        "mds fetch",
        "policy simulate",
        "evidence verify",
        "speed",
        "conformance-proxy",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "signet {expected} missing from the tree read from --help: {paths:?}"
        );
    }
    assert!(tree.len() >= 25, "{paths:?}");
}

#[test]
fn every_command_help_has_examples() {
    for (path, help) in command_tree() {
        let shown = format!("signet {}", path.join(" "));
        assert!(
            help.contains("\nExamples:\n"),
            "`{shown} --help` has no Examples: section"
        );
        assert!(!examples(&help).is_empty(), "`{shown} --help`: no example");
        // `signet help PATH` shows the same page.
        let mut args = vec!["help"];
        args.extend(path.iter().map(String::as_str));
        let out = signet(&args);
        assert!(out.status.success(), "signet {} failed", args.join(" "));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("\nExamples:\n"),
            "`signet {}` has no Examples: section",
            args.join(" ")
        );
    }
}

#[test]
fn every_example_names_an_existing_command_and_its_options() {
    let tree = command_tree();
    let mut checked = 0;
    for (path, help) in &tree {
        let shown = format!("signet {}", path.join(" "));
        for example in examples(help) {
            let words = words(&example);
            assert_eq!(words[0], "signet", "{shown}: {example}");
            // The longest command path the example's leading words name.
            let mut target: Vec<String> = Vec::new();
            for w in &words[1..] {
                let mut next = target.clone();
                next.push(w.clone());
                if tree.contains_key(&next) {
                    target = next;
                } else {
                    break;
                }
            }
            assert!(
                !target.is_empty(),
                "{shown}: example names no command: {example}"
            );
            if !path.is_empty() {
                assert!(
                    target.starts_with(path),
                    "{shown}: example is for `signet {}`, not this command or one below it: {example}",
                    target.join(" ")
                );
            }
            assert!(
                tree.get(&target).is_some_and(|h| subcommands(h).is_empty()),
                "{shown}: example stops at a parent command: {example}"
            );
            let options = long_options(&tree[&target]);
            for w in &words[1 + target.len()..] {
                if let Some(flag) = w.strip_prefix("--") {
                    let flag = format!("--{}", flag.split('=').next().unwrap_or(""));
                    assert!(
                        options.contains(&flag),
                        "{shown}: `{flag}` is not an option of `signet {}` ({options:?}): {example}",
                        target.join(" ")
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} examples");
}

#[test]
fn every_example_parses() {
    let tree = command_tree();
    let mut parsed = 0;
    for (path, help) in &tree {
        let shown = format!("signet {}", path.join(" "));
        for example in examples(help) {
            if example.contains("$(") {
                continue;
            }
            let words = words(&example);
            let mut args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
            if args.last() == Some(&"--help") {
                let out = signet(&args);
                assert!(out.status.success(), "{shown}: {example} failed");
                continue;
            }
            args.push(SENTINEL);
            let out = signet(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{shown}: {example}: {stderr}");
            let first = stderr.lines().next().unwrap_or_default();
            assert!(
                first.contains(&format!("unexpected argument '{SENTINEL}'")),
                "{shown}: clap refuses the example before its end: {example}\n{stderr}"
            );
            parsed += 1;
        }
    }
    assert!(parsed >= 50, "only {parsed} examples parsed");
}

#[test]
fn the_helpers_read_help_as_clap_writes_it() {
    let help = "Usage: signet hsm <COMMAND>\n\nCommands:\n  init    Create\n          \
                more\n  list    List\n  help    Print\n\nOptions:\n  -h, --help  Print help\n      \
                --profile <FILE>  P\n      --json  J\n\nExamples:\n  signet hsm init \\\n  \
                --profile p.toml\n  # a comment\n  signet hsm list --profile \"a b.toml\" > out\n";
    assert_eq!(subcommands(help), ["init", "list"]);
    assert_eq!(long_options(help), ["--help", "--profile", "--json"]);
    assert_eq!(
        examples(help),
        [
            "signet hsm init --profile p.toml",
            "signet hsm list --profile \"a b.toml\" > out"
        ]
    );
    assert_eq!(
        words("signet hsm list --profile \"a b.toml\" > out"),
        ["signet", "hsm", "list", "--profile", "a b.toml"]
    );
}
