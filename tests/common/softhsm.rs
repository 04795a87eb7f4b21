//! A private SoftHSM token per test.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, so each test process gets
//! its own configuration and token directory (nextest runs one test per
//! process, so that is one per test): a test that moves or re-initializes its
//! token must not disturb another test scanning the same directory. Each
//! token also has its own label. The directory lives under the one
//! `scripts/test` exports (and removes at exit), or under the system temp
//! directory for a plain `cargo test`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use signet::keys::pin::SecretSource;
use signet::keys::pkcs11::TokenSelector;
use signet::keys::profile::Pkcs11Settings;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "test-user-pin-4711";
pub const SO_PIN: &str = "test-so-pin-0815";

static CONF: OnceLock<PathBuf> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The process's SoftHSM configuration file, made on first use if the
/// environment does not name one.
pub fn conf() -> &'static Path {
    CONF.get_or_init(|| {
        let base = std::env::var_os("SOFTHSM2_CONF")
            .and_then(|c| PathBuf::from(c).parent().map(Path::to_path_buf))
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("signet-softhsm-{}", std::process::id()));
        let tokens = dir.join("tokens");
        // Left by an earlier process that had this pid and died before
        // cleaning up: its tokens would share our labels.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&tokens).expect("create token dir");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        // SAFETY: set once, before any test in this process loads SoftHSM
        // (the OnceLock runs this before the first token exists); the
        // variable is only read by SoftHSM at C_Initialize.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        conf
    })
}

/// The token directory named by the process's configuration.
pub fn token_dir() -> PathBuf {
    let text = std::fs::read_to_string(conf()).expect("read softhsm2.conf");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("directories.tokendir"))
        .map(|v| PathBuf::from(v.trim().trim_start_matches('=').trim()))
        .expect("tokendir in softhsm2.conf")
}

pub struct SoftHsm {
    pub label: String,
    pub dir: tempfile::TempDir,
}

impl SoftHsm {
    /// A fresh, empty token with a unique label.
    pub fn new() -> SoftHsm {
        let label = format!(
            "t{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        init_token(&label, PIN);
        let dir = tempfile::tempdir().expect("tempdir");
        let pin = dir.path().join("pin");
        std::fs::write(&pin, format!("{PIN}\n")).expect("write pin");
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let profile = format!(
            "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"{MODULE}\"\ntoken_label = \"{label}\"\npin_file = \"{}\"\nworkers = 2\n[env]\nSOFTHSM2_CONF = \"{}\"\n",
            pin.display(),
            conf().display()
        );
        std::fs::write(dir.path().join("profile.toml"), profile).expect("write profile");
        SoftHsm { label, dir }
    }

    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    pub fn profile_path(&self) -> PathBuf {
        self.dir.path().join("profile.toml")
    }

    pub fn settings(&self) -> Pkcs11Settings {
        Pkcs11Settings {
            module: MODULE.into(),
            token: TokenSelector::label(self.label.clone()),
            pin: SecretSource::File(self.pin_file()),
            workers: 2,
        }
    }

    /// The token's serial as softhsm2-util reports it.
    pub fn serial(&self) -> String {
        let out = softhsm2_util(&["--show-slots"]);
        let mut serial = None;
        let mut last_serial = None;
        for line in out.lines() {
            let line = line.trim();
            if let Some(s) = line.strip_prefix("Serial number:") {
                last_serial = Some(s.trim().to_string());
            }
            if let Some(l) = line.strip_prefix("Label:")
                && l.trim() == self.label
            {
                serial = last_serial.clone();
            }
        }
        serial.expect("token serial")
    }

    /// The token's directory inside the token store (named by its serial-derived UUID).
    pub fn token_store_dir(&self) -> PathBuf {
        for entry in std::fs::read_dir(token_dir()).expect("read token dir") {
            let path = entry.expect("dir entry").path();
            let Ok(info) = std::fs::read(path.join("token.object")) else {
                continue;
            };
            if info
                .windows(self.label.len())
                .any(|w| w == self.label.as_bytes())
            {
                return path;
            }
        }
        panic!(
            "token {} not found in {}",
            self.label,
            token_dir().display()
        );
    }

    /// Deletes the token and makes a new, empty one with the same label and PIN,
    /// as an officer re-initializing the slot would.
    pub fn reinitialize(&self) {
        self.reinitialize_with_pin(PIN);
    }

    /// [`SoftHsm::reinitialize`] with another user PIN than the profile's.
    pub fn reinitialize_with_pin(&self, pin: &str) {
        self.erase();
        init_token(&self.label, pin);
    }

    /// Deletes the token. It leaves the token directory in one rename (what
    /// `softhsm2-util --delete-token` does file by file races a running
    /// process that still opens the token's lock files, and then fails to
    /// remove the directory), and is deleted outside it.
    pub fn erase(&self) {
        let store = self.token_store_dir();
        let erased = self.dir.path().join(format!(
            "erased-{}",
            store
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("token")
        ));
        std::fs::rename(&store, &erased).expect("move the token out of the token directory");
        // A process may still create a lock file in it; what is left goes
        // with the fixture's directory.
        let _ = std::fs::remove_dir_all(&erased);
    }

    /// The first half of initializing a token as a security officer does it
    /// with a vendor tool: `C_InitToken` (label and SO PIN) on the free
    /// slot, without a user PIN yet. [`SoftHsm::init_user_pin`] is the
    /// second half.
    pub fn init_token_without_user_pin(&self) {
        pkcs11_tool(&[
            "--slot",
            &free_slot(),
            "--init-token",
            "--label",
            &self.label,
            "--so-pin",
            SO_PIN,
        ]);
    }

    /// `C_InitPIN` by the security officer: the token's user PIN.
    pub fn init_user_pin(&self) {
        init_pin(&self.label, PIN);
    }
}

/// The id of the slot SoftHSM keeps free for a new token.
fn free_slot() -> String {
    let mut slot = None;
    for line in softhsm2_util(&["--show-slots"]).lines() {
        let line = line.trim();
        if let Some(id) = line.strip_prefix("Slot ") {
            slot = Some(id.trim().to_string());
        }
        if line.strip_prefix("Initialized:").map(str::trim) == Some("no") {
            return slot.expect("a slot before its token info");
        }
    }
    panic!("SoftHSM shows no free slot");
}

pub fn pkcs11_tool(args: &[&str]) -> String {
    let out = Command::new("pkcs11-tool")
        .args(["--module", MODULE])
        .args(args)
        .env("SOFTHSM2_CONF", conf())
        .output()
        .expect("run pkcs11-tool (apt-get install opensc)");
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn init_token(label: &str, pin: &str) {
    let args = [
        "--init-token",
        "--free",
        "--label",
        label,
        "--pin",
        pin,
        "--so-pin",
        SO_PIN,
    ];
    let out = Command::new("softhsm2-util")
        .args(args)
        .env("SOFTHSM2_CONF", conf())
        .output()
        .expect("run softhsm2-util (apt-get install softhsm2)");
    if out.status.success() {
        return;
    }
    // A process scanning the token directory at that moment (a running
    // server reconnecting) can make softhsm2-util fail after C_InitToken,
    // before C_InitPIN. Another --init-token would make a second token with
    // this label: finish the one that is there, as an officer would.
    match user_pin_initialized(label) {
        Some(true) => {}
        Some(false) => init_pin(label, pin),
        None => panic!(
            "softhsm2-util {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `C_InitPIN` by the security officer (pkcs11-tool).
fn init_pin(label: &str, pin: &str) {
    pkcs11_tool(&[
        "--token-label",
        label,
        "--login",
        "--login-type",
        "so",
        "--so-pin",
        SO_PIN,
        "--init-pin",
        "--pin",
        pin,
    ]);
}

/// Whether the token labelled `label` has its user PIN; `None`: no such token.
fn user_pin_initialized(label: &str) -> Option<bool> {
    let mut pin_initialized = None;
    for line in softhsm2_util(&["--show-slots"]).lines() {
        let line = line.trim();
        if line.starts_with("Slot ") {
            pin_initialized = None;
        }
        if let Some(v) = line.strip_prefix("User PIN init.:") {
            pin_initialized = Some(v.trim() == "yes");
        }
        if line.strip_prefix("Label:").map(str::trim) == Some(label) {
            return pin_initialized;
        }
    }
    None
}

pub fn softhsm2_util(args: &[&str]) -> String {
    let out = Command::new("softhsm2-util")
        .args(args)
        .env("SOFTHSM2_CONF", conf())
        .output()
        .expect("run softhsm2-util (apt-get install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
