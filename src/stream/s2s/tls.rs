//! Certificates between servers. Both sides of a connection show their certificate (the
//! connecting side as a client certificate), and every handshake completes whatever the
//! certificate says, its signatures checked: whether the certificate is valid for the peer's
//! domain is decided afterwards, once the stream says which domain that is. Valid, the peer
//! may authenticate with SASL EXTERNAL (RFC 6120 §6, XEP-0178) and dialback needs no
//! round-trip (XEP-0344); not valid, only dialback (XEP-0220) can authenticate it, unless
//! `federation.require_valid_certificates` refuses it outright.
//!
//! Trusted authorities are the system's (`rustls-native-certs`: /etc/ssl/certs on Debian,
//! kept current by its ca-certificates package, where a root compiled into the binary would
//! age with it), plus `federation.ca_files`.

use crate::config::Config;
use crate::error::Error;
use rustls::SignatureScheme;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use std::sync::Arc;

/// ALPN protocol id of server-to-server connections with TLS from the first byte (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// The authorities certificates are checked against, and the TLS configurations.
pub struct Tls {
    /// None when no authority is known at all: then no certificate is valid.
    verifier: Option<Arc<WebPkiServerVerifier>>,
    /// For connections other servers make.
    pub server: Arc<ServerConfig>,
    /// For connections this server makes, with STARTTLS and with direct TLS (ALPN).
    pub client: Arc<ClientConfig>,
    pub client_direct: Arc<ClientConfig>,
    /// How many authorities are trusted, for `hearth check`.
    pub authorities: usize,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    pub fn load(config: &Config) -> Result<Tls, Error> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            log::warn!("reading the system's certificate authorities: {e}");
        }
        roots.add_parsable_certificates(native.certs);
        for path in &config.federation.ca_files {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::Tls(format!(
                        "{} is not a PEM file of certificates ({e}); fix federation.ca_files",
                        path.display()
                    ))
                })?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    Error::Tls(format!(
                        "{} holds a certificate that cannot be an authority ({e}); fix \
                         federation.ca_files",
                        path.display()
                    ))
                })?;
            }
        }
        let authorities = roots.len();
        if authorities == 0 && config.federation.listens() {
            log::warn!(
                "no certificate authority is known (install ca-certificates, or list some in \
                 federation.ca_files): no other server's certificate can be valid"
            );
        }
        let verifier = match authorities {
            0 => None,
            _ => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| Error::Tls(format!("certificate authorities: {e}")))?,
            ),
        };
        let (certs, key, path) = crate::tls::load_parts(config)?;
        let fits = |e: rustls::Error| {
            Error::Tls(format!(
                "the certificate {} and its key do not fit together: {e}",
                path.display()
            ))
        };
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(format!("TLS setup failed: {e}")))?
            .with_client_cert_verifier(Arc::new(AnyCertificate(provider())))
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(fits)?;
        server.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(format!("TLS setup failed: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_client_auth_cert(certs, key)
            .map_err(fits)?;
        let mut client_direct = client.clone();
        client_direct.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        Ok(Tls {
            verifier,
            server: Arc::new(server),
            client: Arc::new(client),
            client_direct: Arc::new(client_direct),
            authorities,
        })
    }

    /// Whether `chain` (end entity first) is a certificate a trusted authority signed for
    /// `domain`, now; the reason when not.
    pub fn valid_for(&self, chain: &[CertificateDer<'_>], domain: &str) -> Result<(), String> {
        let Some(verifier) = &self.verifier else {
            return Err("no certificate authority is trusted".into());
        };
        let (end, intermediates) = chain.split_first().ok_or("no certificate was shown")?;
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(end, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Takes any certificate in the handshake (checking only that the peer holds its key), for
/// the stream to judge once it knows the domain.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl AnyCertificate {
    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AnyCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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
        self.schemes()
    }
}

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
        self.schemes()
    }
}
