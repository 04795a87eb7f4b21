//! What `signet serve` does to its own process before it reads a secret.
//!
//! The service holds the HSM PIN (or TPM auth value) in memory for as long
//! as it runs, and passes session keys and registration tokens through it.
//! A core dump or a debugger attached by another process of the same user
//! would carry them off, so dumps are switched off and the process is made
//! non-dumpable, which also closes `ptrace` and `/proc/PID/mem` to every
//! process without `CAP_SYS_PTRACE`. And it refuses to run as root unless
//! told to: a bug in a root service is a bug in the machine.

use std::fmt;

/// Why the process cannot be made safe to hold secrets.
#[derive(Debug)]
pub enum HardenError {
    /// Running as root (euid 0) without `--allow-root`.
    Root,
    /// `setrlimit(RLIMIT_CORE)` or `prctl(PR_SET_DUMPABLE)` failed.
    System {
        call: &'static str,
        source: std::io::Error,
    },
}

impl fmt::Display for HardenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HardenError::Root => write!(
                f,
                "refusing to run as root: run signet as its own user (packaging/systemd/signet.service \
                 does), or pass --allow-root (SIGNET_ALLOW_ROOT=1) to accept the risk"
            ),
            HardenError::System { call, source } => write!(f, "{call}: {source}"),
        }
    }
}

impl std::error::Error for HardenError {}

/// Whether a process with effective uid `euid` may serve.
pub fn check_user(euid: u32, allow_root: bool) -> Result<(), HardenError> {
    if euid == 0 && !allow_root {
        return Err(HardenError::Root);
    }
    Ok(())
}

/// The process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// No core file, hard limit included (so a later `setrlimit` cannot raise
/// it), and not dumpable (no core through a pipe handler either, no
/// `ptrace`, `/proc/PID/mem` and `/proc/PID/environ` readable by root only).
pub fn disable_core_dumps() -> Result<(), HardenError> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an initialized rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        return Err(HardenError::System {
            call: "setrlimit(RLIMIT_CORE, 0)",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: PR_SET_DUMPABLE takes one integer argument; the rest are ignored.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(HardenError::System {
            call: "prctl(PR_SET_DUMPABLE, 0)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Both of the above, as `serve` runs them.
pub fn harden(allow_root: bool) -> Result<(), HardenError> {
    check_user(euid(), allow_root)?;
    disable_core_dumps()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_needs_to_be_allowed() {
        assert!(matches!(check_user(0, false), Err(HardenError::Root)));
        assert!(check_user(0, true).is_ok());
        assert!(check_user(1000, false).is_ok());
        let text = HardenError::Root.to_string();
        assert!(text.contains("--allow-root"), "{text}");
    }

    #[test]
    fn core_dumps_are_off_afterwards() {
        // nextest runs each test in its own process, so this changes only it.
        disable_core_dumps().expect("harden");
        let mut limit = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: a valid pointer to an rlimit to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) }, 0);
        assert_eq!((limit.rlim_cur, limit.rlim_max), (0, 0));
        // SAFETY: PR_GET_DUMPABLE takes no further arguments.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        // The hard limit cannot be raised again without CAP_SYS_RESOURCE,
        // and root has that; what matters is that nothing in signet raises it.
    }
}
