//! TLS to the PostgreSQL server through rustls (ring), as `sslmode` asks (ADR 0018): what
//! libpq does, mode by mode, with rustls's own certificate verifier wherever a certificate is
//! checked. No cryptography here: the choice of a verifier only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::pg_address::{PgAddress, TlsMode};
use crate::StoreError;

/// How a store connects: in clear (a Unix socket, or `sslmode=disable`) or through rustls.
#[derive(Clone)]
pub(crate) enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

fn unavailable(why: String) -> StoreError {
    StoreError::Unavailable(why)
}

/// libpq's default root certificate: `~/.postgresql/root.crt`.
fn default_root_cert() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
}

fn read_roots(path: &Path) -> Result<RootCertStore, StoreError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            unavailable(format!(
                "cannot read the root certificate {}: {e}",
                path.display()
            ))
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            unavailable(format!(
                "cannot read the root certificate {}: {e}",
                path.display()
            ))
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(unavailable(format!(
            "the root certificate file {} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// The connector `address` asks for.
pub(crate) fn connector(address: &PgAddress) -> Result<Tls, StoreError> {
    let mode = address.tls_mode();
    if mode == TlsMode::Disable || address.local_only() {
        // libpq never uses TLS on a Unix socket, whatever sslmode says.
        return Ok(Tls::None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let named = address.root_cert.clone();
    let root = named.clone().or_else(default_root_cert);
    let roots = match (mode, root) {
        // libpq: `require` checks the chain when a root certificate is found.
        (TlsMode::Require, Some(path)) if named.is_some() || path.is_file() => {
            Some(read_roots(&path)?)
        }
        (TlsMode::VerifyCa | TlsMode::VerifyFull, Some(path))
            if named.is_some() || path.is_file() =>
        {
            Some(read_roots(&path)?)
        }
        (TlsMode::VerifyCa | TlsMode::VerifyFull, _) => {
            return Err(unavailable(
                "sslmode verify-ca and verify-full need a root certificate: add sslrootcert=FILE to the URI, or put it in ~/.postgresql/root.crt".into(),
            ))
        }
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(AnyCertificate(provider.clone())),
        Some(roots) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| unavailable(format!("cannot use the root certificate: {e}")))?;
            if mode == TlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Tls::Rustls(MakeRustlsConnect::new(config)))
}

/// `prefer` and `require` without a root certificate: any certificate (libpq checks none), but
/// the handshake's signatures are still checked by the provider, so that the session is with
/// the certificate's key holder.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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

/// `verify-ca`: rustls's verifier, whose one complaint set aside is a name that is not the
/// host's (it checks the name last, once the chain is good).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
