//! The verification log: every approval also written as one JSON line
//! (signet's format of [`crate::evidence::LogRecord`]) to a file the bank
//! archives, so its approvals can be re-verified offline with nothing but
//! that file (`signet evidence verify`).
//!
//! The file holds transaction data (payees, amounts, references) as the
//! users approved them: it must be protected like the transactions
//! themselves. It is created with mode 0600.
//!
//! # Durability and order
//!
//! A line is appended and fsync'd *before* the approval is committed, so an
//! approval signet acknowledged always has its line. A crash (or a lost
//! race between two answers to one transaction) after the line and before
//! the commit leaves a line for an assertion the user really made but
//! signet did not record as the approval: the receipt, not the log, says
//! which approval counted. A line torn by a crash is finished with a
//! newline when the file is next opened, so it fails verification on its
//! own and the next line is whole.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Appends lines to the verification log file.
#[derive(Debug)]
pub struct VerificationLog {
    path: PathBuf,
    /// Opened at the first line (or by [`VerificationLog::open`]).
    file: Mutex<Option<File>>,
}

impl VerificationLog {
    pub fn new(path: PathBuf) -> VerificationLog {
        VerificationLog {
            path,
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating) the file now, so a path that cannot be written is
    /// found at start rather than at the first approval.
    pub fn open(&self) -> Result<(), std::io::Error> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if file.is_none() {
            *file = Some(open(&self.path)?);
        }
        Ok(())
    }

    /// Appends `line` (one JSON object, no newline) and fsyncs it.
    pub fn append(&self, line: &str) -> Result<(), std::io::Error> {
        if line.contains('\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a verification-log line must not contain a newline",
            ));
        }
        let mut guard = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(open(&self.path)?);
        }
        let Some(file) = guard.as_mut() else {
            return Err(std::io::Error::other("verification log not open"));
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        if written.is_err() {
            // Reopen next time: the handle may be on a file that was
            // rotated away or a disk that failed.
            *guard = None;
        }
        written
    }
}

fn open(path: &Path) -> Result<File, std::io::Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // A line torn by a crash: end it, so the next line starts whole.
    let len = file.metadata()?.len();
    if len > 0 {
        file.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_whole_and_a_torn_line_is_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/verification.jsonl");
        let log = VerificationLog::new(path.clone());
        log.append(r#"{"a":1}"#).expect("append");
        log.append(r#"{"b":2}"#).expect("append");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        assert!(log.append("{\"c\":\n3}").is_err());
        drop(log);
        // A crash mid-line.
        std::fs::write(&path, "{\"a\":1}\n{\"b\"").expect("write");
        let log = VerificationLog::new(path.clone());
        log.open().expect("open");
        log.append(r#"{"c":3}"#).expect("append");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"a\":1}\n{\"b\"\n{\"c\":3}\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_unwritable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("file"), "x").expect("write");
        let log = VerificationLog::new(dir.path().join("file/verification.jsonl"));
        assert!(log.open().is_err());
        assert!(log.append("{}").is_err());
    }
}
