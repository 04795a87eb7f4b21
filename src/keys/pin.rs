//! PIN and auth-value sources. A secret comes from a file (owner-only
//! permissions) or from an environment variable named in the profile; never
//! from argv, never logged, zeroized when dropped.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::KeyError;

/// Where a secret is read from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// The longest secret accepted; a PIN file that is larger is not a PIN file.
pub const MAX_SECRET_LEN: u64 = 256;

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

impl SecretSource {
    /// Reads the secret. One trailing newline is dropped (files written by
    /// `echo`); an empty secret is refused.
    pub fn read(&self) -> Result<Zeroizing<String>, KeyError> {
        let mut secret = match self {
            SecretSource::File(path) => read_file(path)?,
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) => Zeroizing::new(v),
                Err(std::env::VarError::NotPresent) => {
                    return Err(KeyError::PinSource(format!(
                        "environment variable {var} is not set"
                    )));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(KeyError::PinSource(format!(
                        "environment variable {var} is not valid UTF-8"
                    )));
                }
            },
        };
        if secret.ends_with('\n') {
            secret.pop();
            if secret.ends_with('\r') {
                secret.pop();
            }
        }
        if secret.is_empty() {
            return Err(KeyError::PinSource(format!("{self:?} is empty")));
        }
        if secret.len() as u64 > MAX_SECRET_LEN {
            return Err(KeyError::PinSource(format!(
                "{self:?} is longer than {MAX_SECRET_LEN} bytes"
            )));
        }
        Ok(secret)
    }
}

fn read_file(path: &std::path::Path) -> Result<Zeroizing<String>, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mut file = std::fs::File::open(path)
        .map_err(|e| KeyError::PinSource(format!("cannot read PIN file {shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| KeyError::PinSource(format!("cannot stat PIN file {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(KeyError::PinSource(format!(
            "PIN file {shown} is not a regular file"
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::PinSource(format!(
            "PIN file {shown} is readable or writable by group or other (mode {mode:04o}); run chmod 600 on it"
        )));
    }
    if meta.len() > MAX_SECRET_LEN {
        return Err(KeyError::PinSource(format!(
            "PIN file {shown} is larger than {MAX_SECRET_LEN} bytes"
        )));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_SECRET_LEN as usize + 1));
    file.by_ref()
        .take(MAX_SECRET_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| KeyError::PinSource(format!("cannot read PIN file {shown}: {e}")))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| KeyError::PinSource(format!("PIN file {shown} is not UTF-8")))?;
    Ok(Zeroizing::new(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_pin_needs_owner_only_mode_and_drops_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "1234\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretSource::File(path.clone())
            .read()
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("1234"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            SecretSource::File(path.clone()).read().unwrap().as_str(),
            "1234"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(SecretSource::File(path.clone()).read().is_err());
        std::fs::write(&path, vec![b'1'; 300]).unwrap();
        assert!(
            SecretSource::File(path)
                .read()
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
    }

    #[test]
    fn missing_sources_are_named() {
        let err = SecretSource::Env("SIGNET_TEST_NO_SUCH_VAR".into())
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("SIGNET_TEST_NO_SUCH_VAR"));
        let err = SecretSource::File("/nonexistent/pin".into())
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pin"));
    }
}
