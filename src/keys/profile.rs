//! HSM profiles: one TOML file per device, naming the backend and how to reach it.
//!
//! ```toml
//! backend = "pkcs11"            # or "tpm"
//!
//! [pkcs11]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token_label = "signet"        # or token_serial = "...", or uri = "pkcs11:token=signet"
//! pin_file = "pin"              # or pin_env = "SIGNET_HSM_PIN"
//! workers = 2                   # threads, each with its own session
//!
//! [tpm]
//! tcti = "swtpm:host=127.0.0.1,port=2321"
//! key_dir = "tpm-keys"          # public/private blobs of the child keys
//! auth_file = "auth"            # optional auth value for the child keys
//!
//! [env]                         # set before the module loads (vendor config paths)
//! SOFTHSM2_CONF = "softhsm2.conf"
//! ```
//!
//! Relative paths (`module`, `pin_file`, `key_dir`, `auth_file`, and `[env]`
//! values that name existing files relative to the profile) resolve against
//! the profile file's directory, so a profile and its token can move together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::pin::SecretSource;
use super::pkcs11::{Pkcs11Backend, TokenSelector};
use super::tpm::TpmBackend;
use super::{KeyBackend, KeyError};

/// A loaded, validated profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub path: PathBuf,
    pub backend: BackendSettings,
    /// Environment the module needs, applied by [`Profile::apply_env`].
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub enum BackendSettings {
    Pkcs11(Pkcs11Settings),
    Tpm(TpmSettings),
}

#[derive(Clone, Debug)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token: TokenSelector,
    pub pin: SecretSource,
    pub workers: usize,
}

#[derive(Clone, Debug)]
pub struct TpmSettings {
    /// tss-esapi TCTI string, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`.
    pub tcti: String,
    /// Where child keys are kept as public/private blobs (created if missing, mode 0700).
    pub key_dir: PathBuf,
    /// Optional auth value given to child keys at creation and presented on use.
    pub auth: Option<SecretSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    backend: String,
    pkcs11: Option<RawPkcs11>,
    tpm: Option<RawTpm>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkcs11 {
    module: Option<PathBuf>,
    token_label: Option<String>,
    token_serial: Option<String>,
    uri: Option<String>,
    pin_file: Option<PathBuf>,
    pin_env: Option<String>,
    workers: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTpm {
    tcti: String,
    key_dir: PathBuf,
    auth_file: Option<PathBuf>,
    auth_env: Option<String>,
}

/// Profiles are small; anything larger is not a profile.
const MAX_PROFILE_BYTES: u64 = 64 * 1024;

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, KeyError> {
        let err = |detail: String| KeyError::Profile {
            path: path.display().to_string(),
            detail,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_PROFILE_BYTES {
            return Err(err(format!("larger than {MAX_PROFILE_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &base).map_err(err).map(|mut p| {
            p.path = path.to_path_buf();
            p
        })
    }

    /// Parses profile text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Profile, String> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let backend = match raw.backend.as_str() {
            "pkcs11" => {
                if raw.tpm.is_some() {
                    return Err("backend is pkcs11 but a [tpm] table is present".into());
                }
                let p = raw
                    .pkcs11
                    .ok_or("backend = \"pkcs11\" needs a [pkcs11] table")?;
                let uri = p.uri.as_deref().map(TokenSelector::parse_uri).transpose()?;
                let chosen = [
                    p.token_label.is_some(),
                    p.token_serial.is_some(),
                    uri.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if chosen != 1 {
                    return Err(
                        "pkcs11: give exactly one of token_label, token_serial or uri".into(),
                    );
                }
                let (token, uri_module, uri_pin) = match uri {
                    Some(u) => (u.token, u.module_path, u.pin_source),
                    None => (
                        match (p.token_label, p.token_serial) {
                            (Some(label), _) => TokenSelector::label(label),
                            (_, Some(serial)) => TokenSelector::serial(serial),
                            _ => unreachable!("one selector was checked above"),
                        },
                        None,
                        None,
                    ),
                };
                let module = match (p.module, uri_module) {
                    (Some(m), _) => resolve(m),
                    (None, Some(m)) => m,
                    (None, None) => {
                        return Err("pkcs11.module: missing (the PKCS#11 library path)".into());
                    }
                };
                let pin = match (p.pin_file, p.pin_env, uri_pin) {
                    (Some(f), None, None) => SecretSource::File(resolve(f)),
                    (None, Some(v), None) => SecretSource::Env(v),
                    (None, None, Some(f)) => SecretSource::File(resolve(f)),
                    (None, None, None) => {
                        return Err(
                            "pkcs11: give pin_file or pin_env (never the PIN itself)".into()
                        );
                    }
                    _ => return Err("pkcs11: give only one PIN source".into()),
                };
                let workers = p.workers.unwrap_or(2);
                if !(1..=64).contains(&workers) {
                    return Err("pkcs11.workers: must be between 1 and 64".into());
                }
                BackendSettings::Pkcs11(Pkcs11Settings {
                    module,
                    token,
                    pin,
                    workers,
                })
            }
            "tpm" => {
                if raw.pkcs11.is_some() {
                    return Err("backend is tpm but a [pkcs11] table is present".into());
                }
                let t = raw.tpm.ok_or("backend = \"tpm\" needs a [tpm] table")?;
                if t.tcti.trim().is_empty() {
                    return Err("tpm.tcti: empty".into());
                }
                let auth = match (t.auth_file, t.auth_env) {
                    (Some(f), None) => Some(SecretSource::File(resolve(f))),
                    (None, Some(v)) => Some(SecretSource::Env(v)),
                    (None, None) => None,
                    _ => return Err("tpm: give only one of auth_file and auth_env".into()),
                };
                BackendSettings::Tpm(TpmSettings {
                    tcti: t.tcti,
                    key_dir: resolve(t.key_dir),
                    auth,
                })
            }
            other => {
                return Err(format!(
                    "backend: {other:?} is not one of \"pkcs11\", \"tpm\""
                ));
            }
        };
        let env = raw
            .env
            .into_iter()
            .map(|(k, v)| {
                let candidate = base.join(&v);
                let v = if !Path::new(&v).is_absolute() && candidate.exists() {
                    candidate.display().to_string()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        Ok(Profile {
            path: PathBuf::new(),
            backend,
            env,
        })
    }

    /// Sets the profile's `[env]` variables in this process, before the module loads.
    ///
    /// # Safety
    ///
    /// Changing the environment is only sound while no other thread reads or
    /// writes it: call this at start-up, before spawning threads or a runtime.
    pub unsafe fn apply_env(&self) {
        for (k, v) in &self.env {
            if std::env::var(k).as_deref() != Ok(v.as_str()) {
                // SAFETY: the caller guarantees no other thread touches the environment.
                unsafe { std::env::set_var(k, v) };
            }
        }
    }

    /// Opens the device. For PKCS#11 this loads the module, finds the token,
    /// logs in and starts the worker threads; for a TPM it connects and
    /// re-derives the primary key.
    pub fn open_backend(&self) -> Result<Arc<dyn KeyBackend>, KeyError> {
        Ok(match &self.backend {
            BackendSettings::Pkcs11(s) => Arc::new(Pkcs11Backend::open(s)?),
            BackendSettings::Tpm(s) => Arc::new(TpmBackend::open(s)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs11_profile_resolves_relative_paths() {
        let p = Profile::parse(
            "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"/usr/lib/x.so\"\ntoken_label = \"signet\"\npin_file = \"pin\"\n",
            Path::new("/etc/signet"),
        )
        .unwrap();
        let BackendSettings::Pkcs11(s) = p.backend else {
            panic!("pkcs11 expected")
        };
        assert_eq!(s.pin, SecretSource::File("/etc/signet/pin".into()));
        assert_eq!(s.workers, 2);
        assert_eq!(s.token, TokenSelector::label("signet".into()));
    }

    #[test]
    fn profile_errors_name_the_key() {
        let base = Path::new("/");
        let cases = [
            ("backend = \"hsm\"", "backend"),
            ("backend = \"pkcs11\"", "[pkcs11]"),
            (
                "backend = \"pkcs11\"\n[pkcs11]\nmodule=\"/m\"\npin_file=\"p\"",
                "token_label",
            ),
            (
                "backend = \"pkcs11\"\n[pkcs11]\nmodule=\"/m\"\ntoken_label=\"t\"",
                "pin_file",
            ),
            (
                "backend = \"pkcs11\"\n[pkcs11]\nmodule=\"/m\"\ntoken_label=\"t\"\npin_env=\"A\"\npin_file=\"p\"",
                "one PIN source",
            ),
            (
                "backend = \"pkcs11\"\n[pkcs11]\nmodule=\"/m\"\ntoken_label=\"t\"\npin_env=\"A\"\nworkers=0",
                "workers",
            ),
            (
                "backend = \"pkcs11\"\n[pkcs11]\nmodule=\"/m\"\ntoken_label=\"t\"\npin=\"1234\"",
                "pin",
            ),
            (
                "backend = \"tpm\"\n[tpm]\ntcti=\"\"\nkey_dir=\"k\"",
                "tpm.tcti",
            ),
        ];
        for (text, needle) in cases {
            let err = Profile::parse(text, base).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn uri_supplies_token_module_and_pin_source() {
        let p = Profile::parse(
            "backend = \"pkcs11\"\n[pkcs11]\nuri = \"pkcs11:token=my%20token?module-path=/usr/lib/m.so&pin-source=file:/run/pin\"\n",
            Path::new("/"),
        )
        .unwrap();
        let BackendSettings::Pkcs11(s) = p.backend else {
            panic!("pkcs11 expected")
        };
        assert_eq!(s.module, PathBuf::from("/usr/lib/m.so"));
        assert_eq!(s.pin, SecretSource::File("/run/pin".into()));
        assert_eq!(s.token, TokenSelector::label("my token".into()));
    }
}
