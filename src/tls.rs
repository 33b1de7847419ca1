//! TLS (rustls with the ring provider): the certificate from configured PEM files, or a
//! self-signed one made with rcgen on first start and kept in the data directory.
//!
//! TLS 1.3 session tickets (RFC 8446 §4.6.1) let a phone that comes back resume its TLS
//! session: no certificate chain, no signature, one round trip less work on both ends. The
//! tickets are stateless (encrypted under a key of this process, rotated every 6 hours by
//! rustls), so they cost the server no memory per client; the ticket key outlives a
//! certificate reload, so a reload does not force every phone into a full handshake. A restart
//! makes new keys: the next handshake of each client is a full one.

use crate::config::Config;
use crate::error::Error;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::rc::Rc;
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

/// The client TLS setup: rustls's configuration and what channel bindings need of the
/// certificate it serves.
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// `tls-server-end-point` channel binding data (RFC 5929 §4.1): the hash of the certificate,
    /// when its signature algorithm names one hash.
    pub endpoint: Option<Vec<u8>>,
}

/// One ticket key (and its rotation) for the whole process, kept across certificate reloads.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, Error> {
    static TICKETER: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>> =
        std::sync::OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| Error::Tls(format!("cannot make a TLS session ticket key: {e}")))?;
    Ok(TICKETER.get_or_init(|| t).clone())
}

pub fn load(config: &Config) -> Result<Rc<ServerTls>, Error> {
    let (certs, key, cert_path) = load_parts(config)?;
    let fp = fingerprint(&certs[0]);
    let endpoint = end_point_hash(&certs[0]);
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
    cfg.send_tls13_tickets = config.tls.session_tickets;
    if config.tls.session_tickets > 0 {
        cfg.ticketer = ticketer()?;
    }
    println!("certificate {} sha256 {fp}", cert_path.display());
    Ok(Rc::new(ServerTls {
        config: Arc::new(cfg),
        endpoint,
    }))
}

/// The `tls-server-end-point` hash of a certificate (RFC 5929 §4.1): the hash of its signature
/// algorithm, SHA-256 in place of MD5 and SHA-1; none for algorithms with no single hash
/// (Ed25519, RSA-PSS with its parameters), for which the binding is undefined.
pub fn end_point_hash(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use sha2::{Sha384, Sha512};
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, .. }
    let (_, cert_body) = der(cert.as_ref(), 0x30)?;
    let (rest, _tbs) = der(cert_body, 0x30)?;
    let (_, alg) = der(rest, 0x30)?;
    let (_, oid) = der(alg, 0x06)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let bits = match oid {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1: SHA-256 (RFC 5929 §4.1).
        [r @ .., 4 | 5] if r == RSA => 256,
        [e @ .., 1] if e == ECDSA => 256,
        [r @ .., 11] if r == RSA => 256,
        [r @ .., 12] if r == RSA => 384,
        [r @ .., 13] if r == RSA => 512,
        [e @ .., 3, 2] if e == ECDSA => 256,
        [e @ .., 3, 3] if e == ECDSA => 384,
        [e @ .., 3, 4] if e == ECDSA => 512,
        _ => return None,
    };
    let der = cert.as_ref();
    Some(match bits {
        256 => Sha256::digest(der).to_vec(),
        384 => Sha384::digest(der).to_vec(),
        _ => Sha512::digest(der).to_vec(),
    })
}

/// One DER element of type `tag` at the start of `input`: (what follows it, its contents).
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (&rest[len..], &rest[..len]))
}

/// SHA-256 of the DER certificate, as colon-separated hex (what clients show for pinning).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(alg: &'static rcgen::SignatureAlgorithm) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["example.org".into()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        use sha2::Sha384;
        let p256 = cert_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            end_point_hash(&p256),
            Some(Sha256::digest(p256.as_ref()).to_vec())
        );
        let p384 = cert_with(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            end_point_hash(&p384),
            Some(Sha384::digest(p384.as_ref()).to_vec())
        );
        // Ed25519 names no hash of its own: the binding is undefined, so none is offered.
        assert_eq!(end_point_hash(&cert_with(&rcgen::PKCS_ED25519)), None);
        // Garbage is not a certificate.
        assert_eq!(
            end_point_hash(&CertificateDer::from(vec![0x30, 0x82, 0xff])),
            None
        );
    }
}
