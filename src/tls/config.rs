//! [`TlsConfig`]: the server's certificate, key and TLS options; [`TlsError`], what is wrong
//! with them; the client side's roots.

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The server side's TLS configuration: a cheap handle (`Clone`) on a shared
/// `rustls::ServerConfig`.
///
/// Build it from PEM files ([`from_pem_files`](TlsConfig::from_pem_files)) or from a
/// `rustls::ServerConfig` you made ([`from_rustls`](TlsConfig::from_rustls), for client
/// certificates, several certificates chosen by SNI, other protocol versions or another
/// crypto provider). Everything that can be wrong with a certificate or key is found here,
/// before the server starts.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
}

impl TlsConfig {
    /// Loads a certificate chain and its private key from PEM files.
    ///
    /// `cert` holds the server's certificate first, then any intermediates (`CERTIFICATE`
    /// blocks). `key` holds its private key, in any of the usual encodings: PKCS#8
    /// (`PRIVATE KEY`), RSA (PKCS#1, `RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`); the first
    /// key in the file is used. TLS 1.2 and 1.3, rustls's default cipher suites, with the
    /// aws-lc-rs provider; no client certificates; no ALPN until
    /// [`with_alpn`](TlsConfig::with_alpn).
    ///
    /// # Errors
    ///
    /// A [`TlsError`] that names the file and the problem: a file that cannot be read, is not
    /// PEM, or holds no certificate (no key); a key rustls cannot use; a key that does not
    /// belong to the certificate ([`TlsErrorKind::KeyMismatch`]).
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let chain = read_certs(cert)?;
        let private = PrivateKeyDer::from_pem_file(key).map_err(|err| {
            pem_error(
                err,
                key,
                "private key (PKCS#8 \"PRIVATE KEY\", RSA \"RSA PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")",
            )
        })?;
        TlsConfig::from_der(chain, private, &cert.display(), &key.display())
    }

    /// Like [`from_pem_files`](TlsConfig::from_pem_files), from PEM text already in memory.
    ///
    /// # Errors
    ///
    /// As [`from_pem_files`](TlsConfig::from_pem_files), naming "the certificate PEM" and
    /// "the key PEM" instead of files.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<TlsConfig, TlsError> {
        let source = Path::new("the certificate PEM");
        let chain = certs_from(CertificateDer::pem_slice_iter(cert), source)?;
        let key_source = Path::new("the key PEM");
        let private = PrivateKeyDer::from_pem_slice(key)
            .map_err(|err| pem_error(err, key_source, "private key"))?;
        TlsConfig::from_der(chain, private, &source.display(), &key_source.display())
    }

    /// The configuration of [`from_pem_files`](TlsConfig::from_pem_files), from DER.
    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cert_name: &dyn fmt::Display,
        key_name: &dyn fmt::Display,
    ) -> Result<TlsConfig, TlsError> {
        let provider = Arc::new(provider());
        // Load the key first, to tell a key rustls cannot use from one that does not match.
        if let Err(err) = provider.key_provider.load_private_key(key.clone_key()) {
            return Err(TlsError::new(
                TlsErrorKind::BadKey,
                format!("{key_name}: the private key cannot be used: {err}"),
            )
            .with_source(err));
        }
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| {
                TlsError::new(
                    TlsErrorKind::Rejected,
                    format!("the TLS provider supports no protocol version: {err}"),
                )
                .with_source(err)
            })?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|err| match err {
                rustls::Error::InconsistentKeys(_) => TlsError::new(
                    TlsErrorKind::KeyMismatch,
                    format!(
                        "the private key in {key_name} does not match the certificate in {cert_name}"
                    ),
                )
                .with_source(err),
                other => TlsError::new(
                    TlsErrorKind::BadCertificate,
                    format!("{cert_name}: the certificate cannot be used with the key in {key_name}: {other}"),
                )
                .with_source(other),
            })?;
        Ok(TlsConfig {
            server: Arc::new(server),
        })
    }

    /// Uses a `rustls::ServerConfig` of your own, as it is.
    pub fn from_rustls(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig { server: config }
    }

    /// Offers these application protocols in ALPN, most preferred first (such as
    /// `b"h2".to_vec()`). A client that offers some of them gets the first of its own list the
    /// server has; a client that offers only others is refused in the handshake (rustls's
    /// `no_application_protocol` alert); a client that offers none is served without.
    /// What was agreed shows in [`Socket::alpn_protocol`](crate::Socket::alpn_protocol).
    pub fn with_alpn(self, protocols: Vec<Vec<u8>>) -> TlsConfig {
        let mut server = Arc::unwrap_or_clone(self.server);
        server.alpn_protocols = protocols;
        TlsConfig {
            server: Arc::new(server),
        }
    }

    /// The rustls configuration each connection's session is made from.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }
}

/// The crypto provider hydrogen's configurations use, named explicitly (see the
/// [module documentation](super#the-crypto-provider-aws-lc-rs)).
fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The certificates of a PEM file, at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(err, path, "certificate (\"CERTIFICATE\")"))?;
    certs_from(iter, path)
}

fn certs_from<'a>(
    iter: impl Iterator<Item = Result<CertificateDer<'a>, pem::Error>>,
    source: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut chain = Vec::new();
    for cert in iter {
        let cert = cert.map_err(|err| pem_error(err, source, "certificate (\"CERTIFICATE\")"))?;
        chain.push(cert.into_owned());
    }
    if chain.is_empty() {
        return Err(pem_error(
            pem::Error::NoItemsFound,
            source,
            "certificate (\"CERTIFICATE\")",
        ));
    }
    Ok(chain)
}

/// A PEM loading error, naming the file and what was looked for in it.
fn pem_error(err: pem::Error, path: &Path, what: &str) -> TlsError {
    let shown = path.display();
    let (kind, message) = match &err {
        pem::Error::Io(io) => (TlsErrorKind::Read, format!("{shown}: cannot read it: {io}")),
        pem::Error::NoItemsFound => (TlsErrorKind::Missing, format!("{shown}: no {what} in it")),
        other => (
            TlsErrorKind::BadPem,
            format!("{shown}: not valid PEM: {other}"),
        ),
    };
    TlsError::new(kind, message)
        .with_source(err)
        .with_path(path)
}

/// A client configuration that trusts `roots` (with the same provider, versions and cipher
/// suites as the server side), for [`Client::connect_tls_with`](crate::client::Client::connect_tls_with)
/// or a `rustls::ClientConnection` of your own.
///
/// # Panics
///
/// Never with the aws-lc-rs provider, which supports the default protocol versions.
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The certificates of a PEM file as trust roots: for a client of a server whose certificate
/// is self-signed (or signed by a private authority).
///
/// # Errors
///
/// A [`TlsError`] naming the file: it cannot be read, is not PEM, holds no certificate, or a
/// certificate in it is not a usable trust anchor.
pub fn roots_from_pem_file(path: impl AsRef<Path>) -> Result<RootCertStore, TlsError> {
    let path = path.as_ref();
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|err| {
            TlsError::new(
                TlsErrorKind::BadCertificate,
                format!("{}: not a usable trust anchor: {err}", path.display()),
            )
            .with_source(err)
            .with_path(path)
        })?;
    }
    Ok(roots)
}

/// What is wrong with a TLS certificate, key or configuration (see [`TlsError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsErrorKind {
    /// A file could not be read (missing, no permission).
    Read,
    /// A file is not valid PEM.
    BadPem,
    /// A file holds no certificate, or no private key.
    Missing,
    /// rustls cannot use the private key (an unsupported algorithm, a corrupt key).
    BadKey,
    /// rustls cannot use the certificate chain.
    BadCertificate,
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// rustls refused the configuration otherwise.
    Rejected,
}

/// The error of building a [`TlsConfig`] (or trust roots): its message names the file and the
/// problem, its [`kind`](TlsError::kind) says which problem, and its
/// [`source`](Error::source) is the underlying error (I/O, PEM or rustls).
#[derive(Debug)]
pub struct TlsError {
    kind: TlsErrorKind,
    message: String,
    path: Option<PathBuf>,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl TlsError {
    fn new(kind: TlsErrorKind, message: String) -> TlsError {
        TlsError {
            kind,
            message,
            path: None,
            source: None,
        }
    }

    fn with_source(mut self, source: impl Error + Send + Sync + 'static) -> TlsError {
        self.source = Some(Box::new(source));
        self
    }

    fn with_path(mut self, path: &Path) -> TlsError {
        self.path = Some(path.to_path_buf());
        self
    }

    /// Which problem it is.
    pub fn kind(&self) -> TlsErrorKind {
        self.kind
    }

    /// The file the problem is in, when it is in one file (not for a key that does not match
    /// its certificate: the message names both).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for TlsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|err| err as &(dyn Error + 'static))
    }
}

impl From<TlsError> for std::io::Error {
    fn from(err: TlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, err)
    }
}
