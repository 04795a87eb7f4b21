//! `signet conformance-proxy` end to end: a real `signet serve` (SoftHSM
//! token, test PKI, mutual TLS), the real proxy binary in front of it, and
//! a soft authenticator driving the FIDO Server Conformance Test API the way
//! the certification tool does: options, then a result, positive and
//! negative.
#![cfg(feature = "testkit")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::server::{ORIGIN, RP_ID, SignetServer, signet_bin, terminate, wait_timeout};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use signet::conformance_proxy::fingerprint;
use signet::testkit::{Attestation, Ceremony, SoftAuthenticator, client_data_json, random_bytes};
use signet::webauthn::{CoseAlgorithm, b64url, b64url_decode};

/// A running `signet conformance-proxy`, stopped with SIGTERM on drop.
struct Proxy {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`, from the proxy's `listening on` line.
    url: String,
    /// The SHA-256 fingerprint it printed for its ephemeral certificate.
    fingerprint: Option<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Proxy {
    /// Starts the proxy on a free port in front of `server`, presenting the
    /// rp certificate; `extra` arguments are appended.
    fn start(server: &SignetServer, extra: &[&Path]) -> Proxy {
        let pki = &server.pki;
        let mut command = Command::new(signet_bin());
        command
            .args(["conformance-proxy", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("https://{}", server.addr))
            .arg("--client-cert")
            .arg(pki.cert("rp"))
            .arg("--client-key")
            .arg(pki.key("rp"))
            .arg("--ca")
            .arg(&pki.ca_cert);
        if let [cert, key] = extra {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn signet conformance-proxy");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = line_tx.send(line);
            }
            for _ in lines {}
        });
        let (fp_tx, fp_rx) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, fp)) = line.split_once("SHA-256 fingerprint ") {
                    let _ = fp_tx.send(fp.trim().to_string());
                }
                log.push_str(&line);
                log.push('\n');
            }
            log
        });
        let mut proxy = Proxy {
            child: Some(child),
            url: String::new(),
            fingerprint: None,
            stderr: Some(stderr),
        };
        let line = match line_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let (status, log) = proxy.stop();
                panic!("the proxy did not start ({status}); stderr:\n{log}");
            }
        };
        proxy.url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        assert!(proxy.url.starts_with("https://127.0.0.1:"), "{line}");
        // Printed before the listening line, when there is one.
        proxy.fingerprint = fp_rx.recv_timeout(Duration::from_millis(500)).ok();
        proxy
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGTERM, wait; the exit status and stderr.
    fn stop(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        terminate(child.id());
        let status = wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            child.wait().expect("wait after kill")
        });
        let log = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, log)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Accepts exactly the certificate with this SHA-256 fingerprint: how a
/// lab pins the proxy's ephemeral certificate.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("certificate fingerprint".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The conformance tool: no client certificate, trusting `verifier`.
fn tool_with(config: rustls::ClientConfig) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

fn pinned_tool(fingerprint: &str) -> reqwest::blocking::Client {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: fingerprint.to_string(),
            provider,
        }))
        .with_no_client_auth();
    tool_with(config)
}

fn ca_tool(ca: &Path) -> reqwest::blocking::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA PEM") {
        roots
            .add(cert.expect("CA certificate"))
            .expect("trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tool_with(config)
}

fn post_raw(tool: &reqwest::blocking::Client, url: &str, body: &str) -> (u16, Value) {
    let r = tool
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("request to the proxy");
    let status = r.status().as_u16();
    let text = r.text().expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the proxy answered non-JSON ({e}): {text}"));
    (status, body)
}

fn post(tool: &reqwest::blocking::Client, url: &str, body: &Value) -> (u16, Value) {
    post_raw(tool, url, &body.to_string())
}

/// 200 with `status: ok` and an empty errorMessage.
fn assert_ok((status, body): &(u16, Value)) {
    assert_eq!(*status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["errorMessage"], "", "{body}");
}

/// A 4xx with `status: failed` and an errorMessage that mentions `needle`.
fn assert_failed((status, body): &(u16, Value), needle: &str) {
    assert!((400..500).contains(status), "HTTP {status}: {body}");
    assert_eq!(body["status"], "failed", "{body}");
    let message = body["errorMessage"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{body}");
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "errorMessage {message:?} does not mention {needle:?}"
    );
}

/// The challenge of the conformance tool's options (a top-level
/// `challenge`, unlike signet's `publicKey.challenge`), 16 to 64 bytes.
fn challenge_of(options: &Value) -> Vec<u8> {
    let text = options["challenge"].as_str().expect("challenge");
    let challenge = b64url_decode("challenge", text, 64).expect("base64url challenge");
    assert!((16..=64).contains(&challenge.len()), "{options}");
    challenge
}

/// Fresh registration options for `name`: the answer and its challenge.
fn attestation_options(
    tool: &reqwest::blocking::Client,
    proxy: &Proxy,
    name: &str,
) -> (Value, Vec<u8>) {
    let answer = post(
        tool,
        &proxy.url("/attestation/options"),
        &json!({"username": name, "displayName": name, "attestation": "none"}),
    );
    assert_ok(&answer);
    let challenge = challenge_of(&answer.1);
    (answer.1, challenge)
}

fn assertion_options(
    tool: &reqwest::blocking::Client,
    proxy: &Proxy,
    name: &str,
) -> (Value, Vec<u8>) {
    let answer = post(
        tool,
        &proxy.url("/assertion/options"),
        &json!({"username": name, "userVerification": "required"}),
    );
    assert_ok(&answer);
    let challenge = challenge_of(&answer.1);
    (answer.1, challenge)
}

#[test]
fn the_conformance_api_registers_and_authenticates_through_the_proxy() {
    let server = SignetServer::start();
    let mut proxy = Proxy::start(&server, &[]);
    let fp = proxy
        .fingerprint
        .clone()
        .expect("an ephemeral certificate's fingerprint on stderr");
    let tool = pinned_tool(&fp);
    let result = |path: &str, credential: &Value| post(&tool, &proxy.url(path), credential);

    // ---- registration, positive ----
    let answer = post(
        &tool,
        &proxy.url("/attestation/options"),
        &json!({
            "username": "alice",
            "displayName": "Alice Example",
            "authenticatorSelection": {"userVerification": "preferred"},
            "attestation": "none"
        }),
    );
    assert_ok(&answer);
    let options = answer.1;
    assert_eq!(options["rp"]["id"], RP_ID, "{options}");
    assert_eq!(options["user"]["name"], "alice");
    assert_eq!(options["user"]["displayName"], "Alice Example");
    assert_eq!(options["attestation"], "none");
    assert!(
        options["timeout"].as_u64().is_some_and(|t| t > 0),
        "{options}"
    );
    assert!(
        options["pubKeyCredParams"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{options}"
    );
    assert!(options.get("ceremonyId").is_none(), "{options}");
    assert_eq!(
        options["excludeCredentials"].as_array().map_or(0, Vec::len),
        0,
        "{options}"
    );
    let user_id = b64url_decode(
        "user.id",
        options["user"]["id"].as_str().expect("user.id"),
        64,
    )
    .expect("base64url user.id");
    let challenge = challenge_of(&options);

    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    auth.user_handle = user_id;
    let registration = auth.register(
        &Ceremony::new(RP_ID, ORIGIN, &challenge),
        &Attestation::None,
    );
    // Another options call between: the proxy finds the ceremony by its
    // challenge, not by recency.
    let (other, _) = attestation_options(&tool, &proxy, "bob");
    assert_ne!(other["challenge"], options["challenge"]);
    assert_ok(&result("/attestation/result", &registration.to_json()));

    // The credential is now excluded from alice's next registration.
    let (options, challenge) = attestation_options(&tool, &proxy, "alice");
    let excluded: Vec<&str> = options["excludeCredentials"]
        .as_array()
        .expect("excludeCredentials")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(excluded, [b64url(&auth.credential_id)], "{options}");

    // ---- registration, negative (each after fresh options) ----
    // Wrong challenge: verified against the latest ceremony, and refused.
    let _ = attestation_options(&tool, &proxy, "carol");
    let stranger = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let wrong = Ceremony::new(RP_ID, ORIGIN, &random_bytes(32));
    let answer = result(
        "/attestation/result",
        &stranger.register(&wrong, &Attestation::None).to_json(),
    );
    assert_failed(&answer, "challenge");

    // clientDataJSON not base64url.
    let (_, challenge2) = attestation_options(&tool, &proxy, "carol");
    let ceremony = Ceremony::new(RP_ID, ORIGIN, &challenge2);
    let mut json = stranger.register(&ceremony, &Attestation::None).to_json();
    json["response"]["clientDataJSON"] = json!("!!not base64url!!");
    assert_failed(&result("/attestation/result", &json), "clientDataJSON");

    // clientDataJSON that is base64url but not JSON.
    let _ = attestation_options(&tool, &proxy, "carol");
    json["response"]["clientDataJSON"] = json!(b64url(b"{\"type\":"));
    assert_failed(&result("/attestation/result", &json), "clientDataJSON");

    // Credential type other than public-key.
    let (_, challenge3) = attestation_options(&tool, &proxy, "carol");
    let ceremony = Ceremony::new(RP_ID, ORIGIN, &challenge3);
    let mut json = stranger.register(&ceremony, &Attestation::None).to_json();
    json["type"] = json!("private-key");
    assert_failed(&result("/attestation/result", &json), "type");

    // clientDataJSON.type webauthn.get in a registration.
    let (_, challenge4) = attestation_options(&tool, &proxy, "carol");
    let ceremony = Ceremony::new(RP_ID, ORIGIN, &challenge4);
    let mut parts = stranger.register(&ceremony, &Attestation::None);
    parts.client_data_json = client_data_json("webauthn.get", &challenge4, ORIGIN);
    assert_failed(&result("/attestation/result", &parts.to_json()), "type");

    // The options still outstanding from above (alice's second call) are
    // still good: the negatives took the newer ones, and a readable known
    // challenge wins over recency.
    let mut second = SoftAuthenticator::new(CoseAlgorithm::Es256);
    second.user_handle = auth.user_handle.clone();
    let ceremony = Ceremony::new(RP_ID, ORIGIN, &challenge);
    assert_ok(&result(
        "/attestation/result",
        &second.register(&ceremony, &Attestation::None).to_json(),
    ));

    // ---- authentication, positive ----
    let (options, challenge) = assertion_options(&tool, &proxy, "alice");
    assert_eq!(options["rpId"], RP_ID, "{options}");
    assert_eq!(options["userVerification"], "required", "{options}");
    let mut allowed: Vec<&str> = options["allowCredentials"]
        .as_array()
        .expect("allowCredentials")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    allowed.sort_unstable();
    let mut expected = [b64url(&auth.credential_id), b64url(&second.credential_id)];
    expected.sort_unstable();
    assert_eq!(allowed, expected, "{options}");
    let assertion = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge));
    assert_ok(&result("/assertion/result", &assertion.to_json()));

    // ---- authentication, negative ----
    // Replay of that assertion against fresh options: wrong challenge.
    let _ = assertion_options(&tool, &proxy, "alice");
    assert_failed(
        &result("/assertion/result", &assertion.to_json()),
        "challenge",
    );

    // clientDataJSON mangled.
    let (_, challenge) = assertion_options(&tool, &proxy, "alice");
    let mut json = auth
        .assert(&Ceremony::new(RP_ID, ORIGIN, &challenge))
        .to_json();
    json["response"]["clientDataJSON"] = json!("%%%");
    assert_failed(&result("/assertion/result", &json), "clientDataJSON");

    // Credential type other than public-key.
    let (_, challenge) = assertion_options(&tool, &proxy, "alice");
    let mut json = auth
        .assert(&Ceremony::new(RP_ID, ORIGIN, &challenge))
        .to_json();
    json["type"] = json!("");
    assert_failed(&result("/assertion/result", &json), "type");

    // clientDataJSON.type webauthn.create in an authentication, signed.
    let (_, challenge) = assertion_options(&tool, &proxy, "alice");
    let mut parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge));
    parts.client_data_json = client_data_json("webauthn.create", &challenge, ORIGIN);
    auth.sign_assertion(&mut parts);
    assert_failed(&result("/assertion/result", &parts.to_json()), "type");

    // Unknown user.
    let answer = post(
        &tool,
        &proxy.url("/assertion/options"),
        &json!({"username": "nobody-registered-this"}),
    );
    assert_failed(&answer, "user.name");

    // A good assertion still works after all that.
    let (_, challenge) = assertion_options(&tool, &proxy, "alice");
    let assertion = second.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge));
    assert_ok(&result("/assertion/result", &assertion.to_json()));

    // ---- the proxy's own refusals ----
    for path in [
        "/attestation/options",
        "/attestation/result",
        "/assertion/options",
        "/assertion/result",
    ] {
        assert_failed(
            &post_raw(&tool, &proxy.url(path), "{\"username\": "),
            "JSON",
        );
    }
    assert_failed(
        &post(
            &tool,
            &proxy.url("/attestation/options"),
            &json!({"displayName": "x"}),
        ),
        "username",
    );
    let answer = post(&tool, &proxy.url("/no/such/endpoint"), &json!({}));
    assert_eq!(answer.0, 404);
    assert_failed(&answer, "endpoint");
    // Nothing outstanding and an unreadable challenge: said plainly.
    assert_failed(
        &post(&tool, &proxy.url("/assertion/result"), &json!({})),
        "/assertion/options first",
    );

    let (status, log) = proxy.stop();
    assert!(status.success(), "proxy exited with {status}: {log}");
}

#[test]
fn the_proxy_serves_a_given_certificate() {
    let server = SignetServer::start();
    let pki = &server.pki;
    let proxy = Proxy::start(&server, &[&pki.server_cert, &pki.server_key]);
    assert_eq!(proxy.fingerprint, None, "no ephemeral certificate");
    let tool = ca_tool(&pki.ca_cert);
    let (options, _) = attestation_options(&tool, &proxy, "dave");
    assert_eq!(options["rp"]["id"], RP_ID);
    // And a client that pins something else is refused at the handshake.
    let wrong = pinned_tool("00");
    assert!(
        wrong
            .post(proxy.url("/attestation/options"))
            .body("{}")
            .send()
            .is_err()
    );
}
