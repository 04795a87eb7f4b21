//! `signet authenticator`: a soft FIDO2 authenticator on the command line,
//! so a newcomer can walk every ceremony with curl (README, "Ten-minute
//! tour") and a test team can script one without a browser.
//!
//! It plays the browser and the authenticator together: `create` reads
//! signet's answer to registration options on stdin and prints the body of
//! the verify request; `get` does the same for authentication options, a
//! transaction or a pairing claim. The credential (an ES256 key, its id,
//! user handle, counter and RP) is kept in a state file, mode 0600, written
//! atomically before the answer is printed so a counter is never reused.
//!
//! Test builds only (cargo feature `testkit`): the private key sits in a
//! file, which no real authenticator allows.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::files::{one_line, read_bounded, read_limited};
use crate::testkit::{Attestation, SigningKey, SoftAuthenticator, browser};
use crate::webauthn::{b64url, b64url_decode};

/// The largest answer read on stdin.
const INPUT_MAX: u64 = 1024 * 1024;
/// The largest state file read.
const STATE_MAX: u64 = 64 * 1024;
const FORMAT: &str = "signet-soft-authenticator/1";

#[derive(clap::Subcommand, Debug)]
pub enum AuthenticatorCommand {
    /// Make a credential: registration options on stdin, the verify body on stdout.
    #[command(after_help = "Examples:\n  \
signet authenticator create --state alice.json < registration-options.json > registration-verify.json\n  \
signet authenticator create --state alice.json --origin https://localhost:8443 --attestation packed < registration-options.json")]
    Create(CreateArgs),
    /// Sign in with the credential: request options on stdin, the answer body on stdout.
    #[command(after_help = "Examples:\n  \
signet authenticator get --state alice.json < authentication-options.json > authentication-verify.json\n  \
signet authenticator get --state alice.json --origin https://localhost:8443 < transaction.json > approval.json")]
    Get(GetArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The state file to create (mode 0600); an existing file is refused,
    /// so a credential is never overwritten.
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// The origin put in clientDataJSON (default: https://<rp.id>); it must
    /// be one of signet's rp.origins. Kept for `get`.
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,
    /// `none`, or `packed` (self attestation: signed by the credential key).
    #[arg(long, value_name = "FMT", default_value = "none", value_parser = ["none", "packed"])]
    pub attestation: String,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The state file `create` wrote; its counter advances.
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// The origin put in clientDataJSON (default: the one given to `create`).
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,
}

/// The credential between runs. Zeroized on drop: it holds the private key.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct State {
    format: String,
    rp_id: String,
    origin: String,
    credential_id: String,
    user_handle: String,
    user_name: String,
    sign_count: u32,
    /// PKCS#8 DER of the ES256 key, base64url.
    private_key: String,
}

impl State {
    fn authenticator(&self) -> Result<SoftAuthenticator, String> {
        let der = Zeroizing::new(
            b64url_decode("privateKey", &self.private_key, 1024).map_err(|e| e.to_string())?,
        );
        let mut auth = SoftAuthenticator::with_key(
            SigningKey::es256_from_pkcs8(&der).map_err(|e| format!("privateKey: {e}"))?,
        );
        auth.credential_id =
            b64url_decode("credentialId", &self.credential_id, 1023).map_err(|e| e.to_string())?;
        auth.user_handle =
            b64url_decode("userHandle", &self.user_handle, 64).map_err(|e| e.to_string())?;
        auth.sign_count = self.sign_count;
        Ok(auth)
    }
}

/// Runs a subcommand: 0 when the answer was printed, 1 with the reason on
/// stderr otherwise.
pub fn run(command: AuthenticatorCommand) -> ExitCode {
    let result = match command {
        AuthenticatorCommand::Create(args) => create(&args),
        AuthenticatorCommand::Get(args) => get(&args),
    };
    match result {
        Ok(body) => {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{body}").and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("signet authenticator: stdout: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(reason) => {
            eprintln!("signet authenticator: {}", one_line(&reason));
            ExitCode::from(1)
        }
    }
}

/// What came on stdin: the options, and the ceremony id to hand back.
struct Input {
    options: Value,
    ceremony_id: Option<Value>,
}

/// signet's answers carry the options as `publicKey` next to a
/// `ceremonyId` (registration, authentication) or without one
/// (transactions, pairing claims); bare options are taken as they are.
fn read_input(reader: impl Read) -> Result<Input, String> {
    let bytes = read_limited(reader, INPUT_MAX, "stdin")?;
    let mut value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("stdin: not JSON: {e}"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("stdin: not a JSON object".into());
    };
    if let Some(problem) = object.get("type").and_then(Value::as_str)
        && problem.starts_with("urn:signet:problem:")
    {
        return Err(format!(
            "stdin: signet answered a problem, not options: {}",
            Value::Object(object.clone())
        ));
    }
    let ceremony_id = object.get("ceremonyId").cloned();
    let options = match object.remove("publicKey") {
        Some(options) if options.is_object() => options,
        Some(_) => return Err("stdin: publicKey is not an object".into()),
        None if object.contains_key("challenge") => value,
        None => return Err("stdin: neither publicKey nor challenge: not WebAuthn options".into()),
    };
    Ok(Input {
        options,
        ceremony_id,
    })
}

fn answer(input: &Input, credential: Value) -> Value {
    match &input.ceremony_id {
        Some(id) => json!({ "ceremonyId": id, "credential": credential }),
        None => json!({ "credential": credential }),
    }
}

fn create(args: &CreateArgs) -> Result<Value, String> {
    let input = read_input(std::io::stdin().lock())?;
    let rp_id = input
        .options
        .pointer("/rp/id")
        .and_then(Value::as_str)
        .ok_or("publicKey.rp.id: is missing or not a string")?;
    let origin = args
        .origin
        .clone()
        .unwrap_or_else(|| format!("https://{rp_id}"));
    let attestation = match args.attestation.as_str() {
        "packed" => Attestation::PackedSelf,
        _ => Attestation::None,
    };
    let (auth, credential) = browser::create(&input.options, &origin, &attestation)
        .map_err(|e| format!("publicKey.{e}"))?;
    let user_name = input
        .options
        .pointer("/user/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let private_key = auth
        .key()
        .es256_pkcs8()
        .ok_or("the new ES256 key cannot be exported")?;
    let state = State {
        format: FORMAT.into(),
        rp_id: rp_id.to_string(),
        origin,
        credential_id: b64url(&auth.credential_id),
        user_handle: b64url(&auth.user_handle),
        user_name: user_name.to_string(),
        sign_count: auth.sign_count,
        private_key: b64url(&private_key),
    };
    create_state(&args.state, &state)?;
    eprintln!(
        "signet authenticator: credential {} for {} at {} ({} attestation), kept in {}",
        state.credential_id,
        one_line(user_name),
        one_line(rp_id),
        args.attestation,
        args.state.display()
    );
    Ok(answer(&input, credential))
}

fn get(args: &GetArgs) -> Result<Value, String> {
    let mut state = read_state(&args.state)?;
    let input = read_input(std::io::stdin().lock())?;
    let mut auth = state
        .authenticator()
        .map_err(|e| format!("{}: {e}", args.state.display()))?;
    let origin = args.origin.clone().unwrap_or_else(|| state.origin.clone());
    let credential = browser::get(&mut auth, &state.rp_id, &input.options, &origin)
        .map_err(|e| format!("publicKey.{e}"))?;
    state.sign_count = auth.sign_count;
    save_state(&args.state, &state)?;
    eprintln!(
        "signet authenticator: signed in as {} with credential {} (signCount {})",
        one_line(&state.user_name),
        state.credential_id,
        state.sign_count
    );
    Ok(answer(&input, credential))
}

fn read_state(path: &Path) -> Result<State, String> {
    let bytes = Zeroizing::new(read_bounded(path, STATE_MAX)?);
    let state: State = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not an authenticator state file: {e}", path.display()))?;
    if state.format != FORMAT {
        return Err(format!(
            "{}: format is {:?}, not {FORMAT}",
            path.display(),
            one_line(&state.format)
        ));
    }
    Ok(state)
}

fn encode(state: &State) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    Ok(Zeroizing::new(bytes))
}

/// A new state file, mode 0600 from its first byte; an existing one is an
/// error (it holds someone's credential).
fn create_state(path: &Path, state: &State) -> Result<(), String> {
    let bytes = encode(state)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{}: exists; it holds a credential (choose another --state)",
                path.display()
            ),
            _ => format!("{}: {e}", path.display()),
        })?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The state with its new counter, replacing the old file atomically (it
/// keeps its mode 0600).
fn save_state(path: &Path, state: &State) -> Result<(), String> {
    let bytes = encode(state)?;
    crate::flows::write_atomically(path, &bytes).map_err(|(at, e)| format!("{}: {e}", at.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_takes_options_from_signets_answers_or_bare() {
        let wrapped =
            read_input(br#"{"ceremonyId":"c1","publicKey":{"challenge":"AAAA"}}"#.as_slice())
                .expect("wrapped");
        assert_eq!(wrapped.ceremony_id, Some(json!("c1")));
        assert_eq!(wrapped.options, json!({"challenge": "AAAA"}));
        let bare = read_input(br#"{"challenge":"AAAA"}"#.as_slice()).expect("bare");
        assert_eq!(bare.ceremony_id, None);
        let answer = answer(&bare, json!({"id": "x"}));
        assert_eq!(answer, json!({"credential": {"id": "x"}}));
    }

    #[test]
    fn input_refuses_what_is_not_options() {
        for (input, expected) in [
            (b"".as_slice(), "not JSON"),
            (b"[1]".as_slice(), "not a JSON object"),
            (
                br#"{"publicKey":3}"#.as_slice(),
                "publicKey is not an object",
            ),
            (br#"{"ceremonyId":"c"}"#.as_slice(), "neither publicKey"),
            (
                br#"{"type":"urn:signet:problem:step-up-required","status":403}"#.as_slice(),
                "signet answered a problem",
            ),
        ] {
            let e = read_input(input).err().expect("refused");
            assert!(e.contains(expected), "{e}");
        }
        let huge = vec![b' '; INPUT_MAX as usize + 1];
        let e = read_input(huge.as_slice()).err().expect("too large");
        assert!(e.contains("larger than"), "{e}");
    }
}
