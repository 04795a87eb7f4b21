//! Downloading a metadata BLOB over HTTPS: the only part of the MDS layer
//! that touches the network. What comes back is bytes; verifying and
//! installing them is [`crate::flows::metadata`]'s job.
//!
//! - TLS is rustls on the aws-lc-rs provider, trusting the system's web PKI
//!   roots (`/etc/ssl/certs` through `rustls-native-certs`, which also honours
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus [`FetchOptions::extra_roots`] (a
//!   private MDS mirror's CA). Only `https` URLs are fetched, redirects
//!   included.
//! - A proxy is used only when given ([`FetchOptions::proxy`]);
//!   `HTTPS_PROXY` and friends are ignored, so what the service does is what
//!   its configuration says.
//! - Conditional requests: the previous response's `ETag` and
//!   `Last-Modified` ([`Validators`]) are sent as `If-None-Match` and
//!   `If-Modified-Since`; a 304 is [`Fetched::NotModified`].
//! - Retries: connection errors, timeouts, 5xx and 429 are retried up to
//!   [`FetchOptions::attempts`] times, waiting `backoff_base * 2^(n-1)`
//!   (at most [`FetchOptions::backoff_max`]) with jitter (a random 50 to
//!   100 % of it), or the server's `Retry-After` (at most
//!   [`FetchOptions::retry_after_max`]). Any other 4xx, a TLS refusal, an
//!   oversized body or a bad setup is final at once.
//! - The body is bounded ([`FetchOptions::max_bytes`]) while it streams in:
//!   a larger `Content-Length` is refused before reading, and a body that
//!   grows past the bound is cut off.
//! - The call blocks (the service runs it on a blocking thread). With
//!   [`FetchOptions::progress`], a progress bar is drawn on stderr.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_LENGTH, ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    RETRY_AFTER,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Largest `ETag` or `Last-Modified` value kept and sent back.
const VALIDATOR_MAX: usize = 1024;
/// Redirects followed (each must stay on https).
const REDIRECTS_MAX: usize = 5;

/// How to fetch. [`FetchOptions::default`] is what the service uses.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Trust anchors for the HTTPS server beside the system's (a private
    /// mirror's CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// An `http://` or `https://` proxy URL (CONNECT is used for the https
    /// target); `None`: direct, whatever the environment says.
    pub proxy: Option<String>,
    /// One attempt, from connecting to the last byte of the body.
    pub timeout: Duration,
    /// Connecting (TCP, and the proxy's CONNECT).
    pub connect_timeout: Duration,
    /// The largest body accepted.
    pub max_bytes: usize,
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// The first wait before a retry; it doubles at each retry.
    pub backoff_base: Duration,
    /// The longest computed wait.
    pub backoff_max: Duration,
    /// The longest wait a `Retry-After` can ask for.
    pub retry_after_max: Duration,
    /// Draw a progress bar on stderr (only done when stderr is a terminal).
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            extra_roots: Vec::new(),
            proxy: None,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(15),
            max_bytes: super::limits::BLOB,
            attempts: 4,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(120),
            progress: false,
        }
    }
}

/// The previous response's cache validators, sent back to make the request
/// conditional.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    fn from_headers(headers: &HeaderMap) -> Validators {
        let get = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= VALIDATOR_MAX)
                .map(str::to_string)
        };
        Validators {
            etag: get(ETAG),
            last_modified: get(LAST_MODIFIED),
        }
    }
}

/// What a fetch brought.
#[derive(Debug)]
pub enum Fetched {
    /// 200: the body and its validators.
    Body {
        bytes: Vec<u8>,
        validators: Validators,
        /// Attempts it took (1 without retries).
        attempts: u32,
    },
    /// 304 to a conditional request: the held BLOB is current.
    NotModified { attempts: u32 },
}

/// Why a fetch failed. Every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nothing was sent: the URL, proxy, CA or TLS roots are unusable.
    #[error("{url}: {reason}")]
    Setup { url: String, reason: String },
    /// Connecting, TLS, sending or receiving failed.
    #[error("{url}{}: {cause}{}", via(.proxy), tries(*.attempts))]
    Transport {
        url: String,
        /// The proxy used, credentials removed.
        proxy: Option<String>,
        cause: String,
        attempts: u32,
    },
    /// The server answered something other than 200 or 304.
    #[error("{url}: HTTP {status}{}", tries(*.attempts))]
    Status {
        url: String,
        status: StatusCode,
        attempts: u32,
    },
    /// The body is larger than [`FetchOptions::max_bytes`].
    #[error("{url}: the body is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

fn via(proxy: &Option<String>) -> String {
    proxy
        .as_ref()
        .map_or(String::new(), |p| format!(" via proxy {p}"))
}

fn tries(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl FetchError {
    /// A stable machine-readable kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Setup { .. } => "setup",
            FetchError::Transport { .. } => "transport",
            FetchError::Status { .. } => "status",
            FetchError::TooLarge { .. } => "too_large",
        }
    }
}

/// Certificates from PEM (one or more `CERTIFICATE` blocks) or one DER
/// certificate, for [`FetchOptions::extra_roots`]. `label` names the file.
pub fn parse_ca(bytes: &[u8], label: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if super::pem_text(bytes).is_none() {
        return Ok(vec![CertificateDer::from(bytes.to_vec())]);
    }
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{label}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{label}: no PEM certificate in the file"));
    }
    Ok(certs)
}

/// `proxy` without user name and password, for messages.
pub fn redact_proxy(proxy: &str) -> String {
    match reqwest::Url::parse(proxy) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => proxy.to_string(),
    }
}

/// GETs `url`, conditionally on `previous` when it holds validators,
/// retrying as the module documentation says.
pub fn fetch(
    url: &str,
    previous: &Validators,
    options: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let client = client(url, options)?;
    let attempts = options.attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failure = match once(&client, url, previous, options, attempt) {
            Ok(fetched) => return Ok(fetched),
            Err(f) => f,
        };
        let Some(retry_after) = failure.retry else {
            return Err(failure.error);
        };
        if attempt >= attempts {
            return Err(failure.error);
        }
        let wait = match retry_after {
            Some(asked) => asked.min(options.retry_after_max),
            None => backoff(options, attempt),
        };
        tracing::info!(
            url,
            attempt,
            of = attempts,
            wait_ms = wait.as_millis() as u64,
            error = %failure.error,
            "MDS fetch failed; retrying"
        );
        std::thread::sleep(wait);
    }
}

/// `backoff_base * 2^(attempt-1)`, capped, then a random 50 to 100 % of it.
fn backoff(options: &FetchOptions, attempt: u32) -> Duration {
    let exp = options
        .backoff_base
        .saturating_mul(1u32 << (attempt - 1).min(20))
        .min(options.backoff_max);
    let mut byte = [0u8; 2];
    let fraction = match aws_lc_rs::rand::fill(&mut byte) {
        Ok(()) => f64::from(u16::from_be_bytes(byte)) / f64::from(u16::MAX),
        Err(_) => 1.0,
    };
    exp.mul_f64(0.5 + fraction / 2.0)
}

fn client(url: &str, options: &FetchOptions) -> Result<reqwest::blocking::Client, FetchError> {
    let setup = |reason: String| FetchError::Setup {
        url: url.to_string(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| setup(format!("not a URL: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(setup("only https URLs are fetched".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "reading the system's TLS roots");
    }
    roots.add_parsable_certificates(native.certs);
    for (i, cert) in options.extra_roots.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| setup(format!("extra TLS root [{i}]: {e}")))?;
    }
    if roots.is_empty() {
        return Err(setup(
            "no TLS trust anchors: the system has none (install ca-certificates) and none \
             was given"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut builder = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::limited(REDIRECTS_MAX))
        .timeout(options.timeout)
        .connect_timeout(options.connect_timeout)
        .user_agent(concat!("signet/", env!("CARGO_PKG_VERSION")));
    builder = match &options.proxy {
        Some(p) => builder.proxy(reqwest::Proxy::all(p).map_err(|e| {
            setup(format!(
                "proxy {}: {}",
                redact_proxy(p),
                cause_chain(&e, None)
            ))
        })?),
        None => builder.no_proxy(),
    };
    builder
        .build()
        .map_err(|e| setup(format!("HTTP client: {}", cause_chain(&e, None))))
}

/// A failed attempt: the error, and whether to retry (`Some`), with the
/// server's `Retry-After` when it gave one.
struct Failure {
    error: FetchError,
    retry: Option<Option<Duration>>,
}

fn once(
    client: &reqwest::blocking::Client,
    url: &str,
    previous: &Validators,
    options: &FetchOptions,
    attempt: u32,
) -> Result<Fetched, Failure> {
    let transport = |e: &reqwest::Error| {
        let retry = (!is_final(e)).then_some(None);
        Failure {
            error: FetchError::Transport {
                url: url.to_string(),
                proxy: options.proxy.as_deref().map(redact_proxy),
                cause: cause_chain(e, Some(url)),
                attempts: attempt,
            },
            retry,
        }
    };
    let mut request = client.get(url);
    if let Some(etag) = &previous.etag {
        request = request.header(IF_NONE_MATCH, etag);
    }
    if let Some(date) = &previous.last_modified {
        request = request.header(IF_MODIFIED_SINCE, date);
    }
    let mut response = request.send().map_err(|e| transport(&e))?;
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED && !previous.is_empty() {
        return Ok(Fetched::NotModified { attempts: attempt });
    }
    if status != StatusCode::OK {
        let retry = (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| retry_after(response.headers()));
        return Err(Failure {
            error: FetchError::Status {
                url: url.to_string(),
                status,
                attempts: attempt,
            },
            retry,
        });
    }
    let too_large = || Failure {
        error: FetchError::TooLarge {
            url: url.to_string(),
            limit: options.max_bytes,
        },
        retry: None,
    };
    // reqwest's content_length() is the body's size hint; the header is
    // what the server claimed.
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > options.max_bytes as u64) {
        return Err(too_large());
    }
    let validators = Validators::from_headers(response.headers());
    let mut progress = Progress::new(options.progress, declared);
    let mut bytes = Vec::with_capacity(declared.map_or(64 * 1024, |n| n as usize));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match response.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                progress.finish();
                return Err(Failure {
                    error: FetchError::Transport {
                        url: url.to_string(),
                        proxy: options.proxy.as_deref().map(redact_proxy),
                        cause: format!("reading the body: {}", cause_chain(&e, None)),
                        attempts: attempt,
                    },
                    retry: Some(None),
                });
            }
        };
        if bytes.len() + n > options.max_bytes {
            progress.finish();
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk[..n]);
        progress.advance(bytes.len() as u64);
    }
    progress.finish();
    Ok(Fetched::Body {
        bytes,
        validators,
        attempts: attempt,
    })
}

/// Errors that another attempt would not fix: a bad request, a refused
/// redirect, a TLS refusal (bad certificate, no common parameters).
fn is_final(e: &reqwest::Error) -> bool {
    if e.is_builder() || e.is_redirect() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if is_tls_error(err) {
            return true;
        }
        source = err.source();
    }
    false
}

/// A rustls error, possibly inside (nested) `io::Error`s, whose `source()`
/// skips the error they wrap.
fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    match err
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        Some(inner) => is_tls_error(inner),
        None => false,
    }
}

/// The error and its causes, `: `-separated, without repeats and without
/// reqwest's "for url (...)" (the URL is named once by the caller).
fn cause_chain(e: &(dyn std::error::Error + 'static), url: Option<&str>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(e);
    while let Some(err) = source {
        let mut text = err.to_string();
        if let Some(u) = url {
            text = text.replace(&format!(" for url ({u})"), "");
        }
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = err.source();
    }
    parts.join(": ")
}

/// `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = http_date(text)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 IMF-fixdate).
fn http_date(text: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u64 + 1;
    let day: u64 = day.parse().ok()?;
    let year: u64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if !(1970..=9999).contains(&year) || !(1..=31).contains(&day) || *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), for years >= 1970.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

/// A one-line progress bar on stderr, redrawn with `\r` at most every
/// 100 ms; nothing at all unless enabled and stderr is a terminal.
struct Progress {
    enabled: bool,
    total: Option<u64>,
    done: u64,
    last: Option<Instant>,
}

impl Progress {
    fn new(wanted: bool, total: Option<u64>) -> Progress {
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            total,
            done: 0,
            last: None,
        }
    }

    fn advance(&mut self, done: u64) {
        self.done = done;
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.draw();
    }

    fn draw(&self) {
        let line = progress_line(self.done, self.total);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            self.draw();
            let _ = writeln!(std::io::stderr());
        }
        self.enabled = false;
    }
}

fn progress_line(done: u64, total: Option<u64>) -> String {
    const WIDTH: u64 = 30;
    let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
    match total {
        Some(t) if t > 0 => {
            let filled = (done.min(t) * WIDTH / t) as usize;
            format!(
                "MDS BLOB [{}{}] {:.1}/{:.1} MiB {:>3}%",
                "#".repeat(filled),
                " ".repeat(WIDTH as usize - filled),
                mib(done),
                mib(t),
                done.min(t) * 100 / t
            )
        }
        _ => format!("MDS BLOB {:.1} MiB", mib(done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let o = FetchOptions {
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(10),
            ..FetchOptions::default()
        };
        for _ in 0..50 {
            let first = backoff(&o, 1);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2));
            let third = backoff(&o, 3);
            assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(8));
            let capped = backoff(&o, 30);
            assert!(capped >= Duration::from_secs(5) && capped <= Duration::from_secs(10));
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a past date: now");
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(
            http_date("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
        assert_eq!(http_date("yesterday"), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn errors_name_url_status_proxy_and_attempts() {
        let e = FetchError::Status {
            url: "https://mds.example/".into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            attempts: 4,
        };
        assert_eq!(
            e.to_string(),
            "https://mds.example/: HTTP 503 Service Unavailable (after 4 attempts)"
        );
        let e = FetchError::Transport {
            url: "https://mds.example/".into(),
            proxy: Some(redact_proxy("http://user:secret@proxy.example:3128")),
            cause: "connection refused".into(),
            attempts: 1,
        };
        assert_eq!(
            e.to_string(),
            "https://mds.example/ via proxy http://proxy.example:3128/: connection refused"
        );
        assert_eq!(e.kind(), "transport");
    }

    #[test]
    fn only_https_is_fetched() {
        let e = fetch(
            "http://mds.example/",
            &Validators::default(),
            &FetchOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("only https"), "{e}");
        let e = fetch(
            "https://mds.example/",
            &Validators::default(),
            &FetchOptions {
                proxy: Some("::not a url".into()),
                ..FetchOptions::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("proxy ::not a url"), "{e}");
    }

    #[test]
    fn the_progress_line_shows_bytes_and_share() {
        assert_eq!(
            progress_line(512 * 1024, Some(1024 * 1024)),
            format!(
                "MDS BLOB [{}{}] 0.5/1.0 MiB  50%",
                "#".repeat(15),
                " ".repeat(15)
            )
        );
        assert_eq!(progress_line(3 * 1024 * 1024, None), "MDS BLOB 3.0 MiB");
    }

    #[test]
    fn ca_files_are_pem_or_der() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        assert_eq!(parse_ca(&der, "--ca").unwrap().len(), 1);
        assert!(parse_ca(b"-----BEGIN CERTIFICATE-----\n", "--ca").is_err());
    }
}
