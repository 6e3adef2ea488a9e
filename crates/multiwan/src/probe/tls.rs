//! TLS for `https` probes: rustls (no OpenSSL), the server's certificate verified for
//! the URL's host against the system's trust anchors or the check's `ca_file`.
//!
//! The trust anchors are loaded lazily, by the first https probe, on tokio's blocking
//! pool (reading and parsing `/etc/ssl/certs` takes milliseconds the event loop must
//! not spend): the system's once per process, a `ca_file` once per link prober. A load
//! that fails is not kept: the next probe tries again, so fixing a missing `ca_file`
//! needs no restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where the trust anchors of a link's https probes come from, and the TLS client
/// configuration once loaded.
#[derive(Debug)]
pub(crate) struct Trust {
    ca_file: Option<PathBuf>,
    config: OnceCell<Arc<ClientConfig>>,
}

impl Trust {
    pub(crate) fn new(ca_file: Option<PathBuf>) -> Trust {
        Trust {
            ca_file,
            config: OnceCell::new(),
        }
    }

    /// What the certificates are checked against, for reasons.
    fn anchors(&self) -> String {
        match &self.ca_file {
            Some(path) => format!("ca_file {}", path.display()),
            None => "the system's trust store".to_string(),
        }
    }

    async fn config(&self) -> Result<Arc<ClientConfig>, String> {
        // The system's store is the same for every link: loaded once per process.
        static SYSTEM: OnceCell<Arc<ClientConfig>> = OnceCell::const_new();
        let cell = if self.ca_file.is_some() {
            &self.config
        } else {
            &SYSTEM
        };
        cell.get_or_try_init(|| async {
            let ca_file = self.ca_file.clone();
            tokio::task::spawn_blocking(move || client_config(ca_file.as_deref()))
                .await
                .map_err(|e| format!("loading trust anchors failed: {e}"))?
        })
        .await
        .cloned()
    }

    /// The TLS handshake over an established (pinned) connection, with SNI and the
    /// certificate verified for `host`. The error is a probe's failure reason.
    pub(crate) async fn handshake(
        &self,
        stream: TcpStream,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, String> {
        let config = self.config().await?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host} is not a name TLS can verify: {e}"))?;
        TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| self.reason(host, &e))
    }

    /// A handshake failure in the operator's words.
    fn reason(&self, host: &str, e: &io::Error) -> String {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return format!("TLS handshake failed: {}", super::describe(e));
        };
        match tls {
            rustls::Error::InvalidCertificate(cert) => certificate_reason(host, cert, self),
            rustls::Error::AlertReceived(alert) => {
                format!("the server ended the TLS handshake ({alert:?})")
            }
            other => format!("TLS handshake failed: {other}"),
        }
    }
}

fn certificate_reason(host: &str, e: &CertificateError, trust: &Trust) -> String {
    match e {
        CertificateError::NotValidForName => format!("certificate not valid for name {host}"),
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "certificate not valid for name {host} (it is for {})",
            presented
                .iter()
                .map(|p| bare_name(p))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CertificateError::UnknownIssuer => format!(
            "certificate of {host} is from an unknown issuer (not in {})",
            trust.anchors()
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("certificate of {host} has expired")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("certificate of {host} is not valid yet (is the router's clock right?)")
        }
        CertificateError::Revoked => format!("certificate of {host} is revoked"),
        other => format!("certificate of {host} is not acceptable: {other}"),
    }
}

/// rustls lists presented names as `DnsName("a.example")`: the name alone.
fn bare_name(presented: &str) -> &str {
    match (presented.find('"'), presented.rfind('"')) {
        (Some(a), Some(b)) if b > a => &presented[a + 1..b],
        _ => presented,
    }
}

/// Builds the client configuration: TLS 1.2/1.3 with ring, the given anchors.
fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "ca_file {} holds no usable PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            // Some unreadable files in the store are no reason to give up on the rest.
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let why = native
                    .errors
                    .first()
                    .map_or_else(|| "it is empty".to_string(), ToString::to_string);
                return Err(format!(
                    "no trust anchors in the system's store ({why}); install \
                     ca-certificates or set ca_file"
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Loads the anchors now (for the start-up check): the error says what is wrong.
pub(crate) fn check_anchors(ca_file: Option<&Path>) -> Result<(), String> {
    client_config(ca_file).map(drop)
}
