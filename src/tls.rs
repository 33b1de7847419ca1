//! TLS (rustls with the ring provider): the certificate from configured PEM files, or a
//! self-signed one made with rcgen on first start and kept in the data directory.

use crate::config::Config;
use crate::error::Error;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// ALPN protocol id for XMPP client connections (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

fn paths(config: &Config) -> (PathBuf, PathBuf, bool) {
    match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => (
            config.server.data_dir.join("cert.pem"),
            config.server.data_dir.join("key.pem"),
            true,
        ),
    }
}

/// Writes a self-signed certificate for the domain unless one is there.
fn generate(domain: &str, cert: &Path, key: &Path) -> Result<(), Error> {
    let ck = rcgen::generate_simple_self_signed(vec![domain.to_owned()])
        .map_err(|e| Error::Tls(format!("cannot make a self-signed certificate: {e}")))?;
    write_private(key, ck.signing_key.serialize_pem().as_bytes())?;
    write_private(cert, ck.cert.pem().as_bytes())?;
    log::info!(
        "made a self-signed certificate for {domain} at {}",
        cert.display()
    );
    Ok(())
}

/// Writes a file of the data directory, mode 0600 from its creation on. A file that was there
/// keeps its mode through `open`, so it is tightened before anything is written to it.
fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = crate::config::PRIVATE_FILE;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io("write", path, &e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("restrict", path, &e))?;
    f.write_all(data).map_err(|e| Error::io("write", path, &e))
}

/// The certificate chain and key as configured (or generated), checked to match.
pub fn load_parts(
    config: &Config,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        PathBuf,
    ),
    Error,
> {
    let (cert_path, key_path, generated) = paths(config);
    if generated && !cert_path.exists() {
        generate(&config.server.domain, &cert_path, &key_path)?;
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io("read certificate file", p, &e));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&cert_path)?)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Error::Tls(format!(
                "{} is not a PEM certificate chain ({e}); give tls.cert a PEM file",
                cert_path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{} holds no certificate; give tls.cert a PEM certificate chain",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|e| {
        Error::Tls(format!(
            "{} is not a PEM private key ({e}); give tls.key the key of the certificate",
            key_path.display()
        ))
    })?;
    Ok((certs, key, cert_path))
}

pub fn load(config: &Config) -> Result<Arc<ServerConfig>, Error> {
    let (certs, key, cert_path) = load_parts(config)?;
    let fp = fingerprint(&certs[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Tls(format!(
                "the certificate {} and its key do not fit together: {e}",
                cert_path.display()
            ))
        })?;
    cfg.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    // Session tickets cost memory per ticket and save little for long-lived connections.
    cfg.send_tls13_tickets = 0;
    println!("certificate {} sha256 {fp}", cert_path.display());
    Ok(Arc::new(cfg))
}

/// SHA-256 of the DER certificate, as colon-separated hex (what clients show for pinning).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
