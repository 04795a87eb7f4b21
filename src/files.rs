//! What an operator, an officer or a peer controls: a file is never read
//! past its limit, so a wrong path (a device, a log) or a hostile file
//! cannot make signet allocate without bound; text from them is printed
//! on one line, its control characters escaped.

use std::io::Read;
use std::path::Path;

/// At most `limit` bytes from `reader`; `name` prefixes every error.
pub fn read_limited(reader: impl Read, limit: u64, name: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{name}: larger than {limit} bytes"));
    }
    Ok(bytes)
}

/// The file at `path`, of at most `limit` bytes; errors name the path.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {name}: {e}"))?;
    read_limited(file, limit, &name)
}

/// Control characters escaped, so text from a file, a certificate, a
/// peer or the store prints as one line and cannot drive the terminal.
pub fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The permission bits of `path` (following symlinks); `None` when it does
/// not exist, which the code that reads it reports in its own words.
fn mode_of(path: &Path) -> Result<Option<u32>, String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.permissions().mode() & 0o777)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot stat {}: {e}", path.display())),
    }
}

/// Refuses a private key file that other users may read, or group or
/// other may write: the service will not use a key others can copy or
/// replace. Group read is allowed, the usual way to give a service user a
/// key root owns (root:signet 0640, as packaging/ installs it).
pub fn refuse_exposed_private_key(path: &Path) -> Result<(), String> {
    match mode_of(path)? {
        Some(mode) if mode & 0o027 != 0 => Err(format!(
            "{} is readable by other users or writable by group (mode {mode:04o}); run chmod 640 \
             (with the service's group) or chmod 600 on it",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// Refuses a file that group or other may write (the configuration, the
/// client CA, the key profile, the trust policy): whoever can write one
/// decides whom signet trusts.
pub fn refuse_writable_by_others(path: &Path) -> Result<(), String> {
    match mode_of(path)? {
        Some(mode) if mode & 0o022 != 0 => Err(format!(
            "{} is writable by group or other (mode {mode:04o}), and it decides whom signet \
             trusts; run chmod go-w on it",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// Makes `dir` a directory only its owner may enter: created 0700 when
/// missing, restricted to 0700 (with a warning) when others could read or
/// change it. The data directory decides who can log in; nobody but the
/// service's user has business in it.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        )),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format_args!("{mode:o}"),
                    "data directory was accessible to others; restricting it to 0700"
                );
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_past_the_limit_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 10]).expect("write");
        assert_eq!(read_bounded(&path, 10).expect("fits").len(), 10);
        let e = read_bounded(&path, 9).expect_err("too large");
        assert!(
            e.ends_with("larger than 9 bytes") && e.contains("/f"),
            "{e}"
        );
        let e = read_bounded(&dir.path().join("missing"), 9).expect_err("missing");
        assert!(e.contains("missing"), "{e}");
    }
}
