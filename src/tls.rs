//! TLS on both sides, with rustls and the `ring` provider only.
//!
//! Towards clients pgveil presents the configured certificate. Towards the
//! server it follows libpq's sslmode names: `require` encrypts without
//! checking the certificate, `verify-full` checks the chain against the
//! configured CA (or the system roots) and the host name.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ServerTlsMode, TlsConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    Pem {
        /// Which file it is.
        what: &'static str,
        /// Its path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The server name to verify is not a valid DNS name or IP address.
    #[error("server name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn pem_error(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::Pem {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error("certificate file", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate file", path, e))?;
    if certs.is_empty() {
        return Err(pem_error("certificate file", path, "no certificate found"));
    }
    Ok(certs)
}

/// Builds the acceptor that answers clients' SSLRequest.
pub fn acceptor(config: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let certs = load_certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| pem_error("key file", &config.key, e))?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// Builds the connector for the server side, or `None` for `disable`.
pub fn connector(
    mode: ServerTlsMode,
    ca_file: Option<&Path>,
) -> Result<Option<tokio_rustls::TlsConnector>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let client = match mode {
        ServerTlsMode::Disable => return Ok(None),
        ServerTlsMode::Prefer | ServerTlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider())))
            .with_no_client_auth(),
        ServerTlsMode::VerifyFull => builder
            .with_root_certificates(root_store(ca_file)?)
            .with_no_client_auth(),
    };
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(client))))
}

/// A client configuration that verifies certificates against `ca_file`,
/// or the system roots when absent.
pub fn verifying_client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(ca_file)?)
        .with_no_client_auth())
}

/// The name to verify (and send as SNI) for `host`.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}

fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| pem_error("CA file", path, e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Pem {
                    what: "system CA store",
                    path: String::new(),
                    message: "no CA certificate found; set server.ca_file".into(),
                });
            }
        }
    }
    Ok(roots)
}

/// Certificate check for `prefer` and `require`: encryption without
/// authentication of the server, as libpq does in those modes. Handshake
/// signatures are still verified so the session keys are sound.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
