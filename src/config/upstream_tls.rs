//! TLS to upstreams, as a pool's keys describe it: the trusted roots, a
//! client certificate, ALPN from the pool's protocol, read and built into
//! one rustls `ClientConfig` when the config is loaded, so that `check` and
//! a reload refuse files the connections could not use.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::types::{CertPaths, Protocol};

/// Why a pool's TLS could not be built: the key (after the pool's own,
/// `ca_file`) and the message, which names the file.
pub type Failure = (&'static str, String);

/// The rustls client config of one pool, and the bytes of the files it
/// was built from.
pub fn client_config(
    protocol: Protocol,
    ca_file: Option<&Path>,
    client_cert: Option<&CertPaths>,
    insecure_skip_verify: bool,
) -> Result<(Arc<ClientConfig>, Vec<u8>), Failure> {
    let mut contents = Vec::new();
    let roots = match ca_file {
        Some(path) => {
            let pem = read("ca_file", path)?;
            let certs = certs("ca_file", path, &pem)?;
            contents.extend_from_slice(&pem);
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err((
                    "ca_file",
                    format!("{}: no usable CA certificate in the file", path.display()),
                ));
            }
            Arc::new(roots)
        }
        None => system_roots(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(paths) => {
            let cert_pem = read("tls_cert_file", &paths.cert)?;
            let chain = certs("tls_cert_file", &paths.cert, &cert_pem)?;
            let key_pem = read("tls_key_file", &paths.key)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                (
                    "tls_key_file",
                    format!("{}: cannot read a private key: {e}", paths.key.display()),
                )
            })?;
            contents.extend_from_slice(&cert_pem);
            contents.extend_from_slice(&key_pem);
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                (
                    "tls_key_file",
                    format!(
                        "{}: does not go with the certificate {}: {e}",
                        paths.key.display(),
                        paths.cert.display()
                    ),
                )
            })?
        }
    };
    if insecure_skip_verify {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(NoVerify(provider)));
    }
    config.alpn_protocols = match protocol {
        Protocol::H2 => vec![b"h2".to_vec()],
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok((Arc::new(config), contents))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| (key, format!("{}: cannot read: {e}", path.display())))
}

fn certs(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            (
                key,
                format!("{}: not a PEM certificate: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err((
            key,
            format!("{}: no certificate in the file", path.display()),
        ));
    }
    Ok(certs)
}

/// The system's roots, read once per process (a few hundred certificates);
/// the Mozilla roots of `webpki-roots` when the system has none.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(roots)
        })
        .clone()
}

/// `tls_insecure_skip_verify`: any certificate is accepted, but the
/// handshake's signatures are still checked (so the key is the cert's).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
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
