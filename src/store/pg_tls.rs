//! TLS to PostgreSQL over rustls on aws-lc-rs, signet's one TLS stack.
//!
//! tokio-postgres leaves TLS to a connector; the published rustls
//! connectors pull in `ring`, which `deny.toml` bans. This one is glue
//! only: rustls verifies the server's certificate against the configured
//! CA and the host name of the connection URL, and the stream reports the
//! `tls-server-end-point` channel binding (RFC 5929), so SCRAM-SHA-256-PLUS
//! ties the password exchange to this TLS session and a proxy holding
//! another valid certificate cannot relay it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_lc_rs::digest;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client configuration for the database: the certificates of
/// `ca_pem` as the only trust anchors, aws-lc-rs, rustls's safe protocol
/// versions (TLS 1.2 and 1.3). No client certificate: the database
/// authenticates signet by SCRAM, bound to this session.
pub fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem).enumerate() {
        let cert = cert.map_err(|e| format!("not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("certificate #{} is not a usable trust anchor: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Makes a TLS connection per PostgreSQL connection, verifying the server
/// for the host it dials.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl MakeRustlsConnect {
    pub fn new(config: rustls::ClientConfig) -> MakeRustlsConnect {
        MakeRustlsConnect {
            config: Arc::new(config),
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("store.postgres.url: {domain:?} is not a host name TLS can verify: {e}"),
            )
        })?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One pending TLS handshake.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let tls = connector.connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS session to the database.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        match end_point_digest(leaf.as_ref()) {
            Some(algorithm) => ChannelBinding::tls_server_end_point(
                digest::digest(algorithm, leaf).as_ref().into(),
            ),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 section 4.1: the certificate is hashed with its signature's
/// hash function, SHA-256 when that is MD5 or SHA-1. For a signature
/// without one hash (Ed25519, RSA-PSS) no binding is defined, and SCRAM
/// then runs without one, as libpq does.
fn end_point_digest(der: &[u8]) -> Option<&'static digest::Algorithm> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let oid = cert.signature_algorithm().oid.to_string();
    match oid.as_str() {
        // ecdsa-with-SHA256, sha256WithRSAEncryption, and the SHA-1 / MD5 ones
        "1.2.840.10045.4.3.2"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.4" => Some(&digest::SHA256),
        "1.2.840.10045.4.3.3" | "1.2.840.113549.1.1.12" => Some(&digest::SHA384),
        "1.2.840.10045.4.3.4" | "1.2.840.113549.1.1.13" => Some(&digest::SHA512),
        _ => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn algorithm_of(pem: &str) -> Option<usize> {
        let (_, der) = der::pem::decode_vec(pem.as_bytes()).expect("PEM");
        end_point_digest(&der).map(digest::Algorithm::output_len)
    }

    /// RFC 5929: the certificate's own signature hash; none for Ed25519.
    #[test]
    fn the_binding_hash_follows_the_signature() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pg-tls");
        let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).expect("fixture");
        assert_eq!(algorithm_of(&read("ecdsa-sha256.pem")), Some(32));
        assert_eq!(algorithm_of(&read("ecdsa-sha384.pem")), Some(48));
        assert_eq!(algorithm_of(&read("ed25519.pem")), None);
        assert!(end_point_digest(b"not a certificate").is_none());
    }
}
