//! The server's certificate: the administrator's files, or one generated on first start and
//! kept private in the state directory; its SHA-256 fingerprint, for desks to pin.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::ServeError;

/// The certificate chain and key a server presents.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a PEM certificate chain and a PEM private key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, ServeError> {
        let bad = |what: &str, p: &Path, e: String| {
            ServeError::Tls(format!("cannot read the {what} {}: {e}", p.display()))
        };
        let pem = std::fs::read(cert).map_err(|e| bad("certificate", cert, e.to_string()))?;
        let chain: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("certificate", cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(bad("certificate", cert, "no PEM certificate in it".into()));
        }
        let pem = std::fs::read(key).map_err(|e| bad("private key", key, e.to_string()))?;
        let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| bad("private key", key, e.to_string()))?
            .ok_or_else(|| bad("private key", key, "no PEM private key in it".into()))?;
        Ok(Identity {
            chain,
            key: key_der,
        })
    }

    /// The certificate kept in `dir` (`server-cert.pem`, `server-key.pem`), generated there on
    /// first use for `listen` (and localhost), private to the owner.
    pub fn generated_in(dir: &Path, listen: IpAddr) -> Result<Self, ServeError> {
        let cert = dir.join("server-cert.pem");
        let key = dir.join("server-key.pem");
        if !cert.exists() || !key.exists() {
            generate(dir, &cert, &key, listen)?;
        }
        Self::from_files(&cert, &key)
    }

    /// SHA-256 of the leaf certificate, in uppercase hex.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.chain[0].as_ref());
        digest.iter().map(|b| format!("{b:02X}")).collect()
    }

    /// A rustls configuration serving this identity (HTTP/1.1).
    pub fn server_config(self) -> Result<Arc<ServerConfig>, ServeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain, self.key)
            .map_err(|e| ServeError::Tls(format!("the certificate and key do not match: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn generate(dir: &Path, cert: &Path, key: &Path, listen: IpAddr) -> Result<(), ServeError> {
    let io = |e: std::io::Error| {
        ServeError::Tls(format!(
            "cannot keep the server's certificate in {}: {e}",
            dir.display()
        ))
    };
    create_private_dir(dir).map_err(io)?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !listen.is_unspecified() && !listen.is_loopback() {
        names.push(listen.to_string());
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ServeError::Tls(format!("cannot make a certificate: {e}")))?;
    // The key first: a certificate without its key would be kept and never work.
    write_private(key, made.key_pair.serialize_pem().as_bytes()).map_err(io)?;
    write_private(cert, made.cert.pem().as_bytes()).map_err(io)?;
    Ok(())
}

/// Creates `dir` (mode 0700) if it does not exist.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Writes `bytes` to `path` through a temporary file of mode 0600 whatever the umask, synced,
/// then renamed into place.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(&tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
