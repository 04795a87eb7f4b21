//! Reading the repository's documentation: files by path, and the settings
//! tables of docs/config.md and docs/policy.md.

use std::path::{Path, PathBuf};

/// `relative` to the repository root.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The text of the repository file `relative`.
pub fn repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// The rows of the settings tables of a markdown document (a header line
/// starting with `| Key | Type | Default |`, five columns): each row's key,
/// without its backticks, and its Default cell. Panics on a malformed
/// header or row.
pub fn settings_rows(text: &str) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("| Key |") {
            assert!(
                line.starts_with("| Key | Type | Default |")
                    && line.trim_end().split('|').count() == 7,
                "settings table header needs Key, Type, Default and two more columns: {line}"
            );
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| key | type | default | values | meaning |" splits into 7 cells.
        assert_eq!(cells.len(), 7, "settings row needs 5 cells: {line}");
        let key = cells[1]
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .unwrap_or_else(|| panic!("key cell not in backticks: {line}"));
        assert!(
            !key.is_empty() && !key.contains([' ', '`']),
            "bad key cell: {line}"
        );
        assert!(!cells[3].is_empty(), "empty Default cell: {line}");
        rows.push((key.to_string(), cells[3].to_string()));
    }
    rows
}

/// The Default cell as a TOML value, when it is one (`4`, `"L2"`,
/// `["ES256"]`); `None` for words such as "required" or "none", or a
/// reference to another key.
pub fn default_literal(cell: &str) -> Option<toml::Value> {
    let literal = cell.strip_prefix('`')?.strip_suffix('`')?;
    let table: toml::Table = toml::from_str(&format!("v = {literal}")).ok()?;
    table.get("v").cloned()
}

/// The section of a markdown document under the heading line `heading`
/// (e.g. `## Ten-minute tour`), up to the next heading of the same or a
/// higher level. Panics when the heading is missing.
pub fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"))
        + heading.len()
        + 2;
    let rest = &text[start..];
    let mut offset = 0;
    let mut fenced = false;
    for line in rest.split_inclusive('\n') {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !fenced && hashes >= 1 && hashes <= level && line[hashes..].starts_with(' ') {
            return &rest[..offset];
        }
        offset += line.len();
    }
    rest
}

/// The bodies of the fenced code blocks of `text` whose info string is
/// `lang` (```sh), in order.
pub fn fenced_blocks(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for inner in lines.by_ref() {
            if inner.starts_with("```") {
                break;
            }
            body.push_str(inner);
            body.push('\n');
        }
        if info.trim() == lang {
            blocks.push(body);
        }
    }
    blocks
}
