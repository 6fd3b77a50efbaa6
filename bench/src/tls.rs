//! TLS for the benchmark: the test certificate, and the rustls configurations of the load
//! generator's client and of the tokio peer.
//!
//! Everything uses rustls 0.23 with its aws-lc-rs provider, passed explicitly
//! ([`provider`]), so exactly one crypto provider is in play and nothing depends on a
//! process-wide default. Protocol versions, cipher suites and key exchange groups are rustls's
//! defaults, so two rustls peers negotiate TLS 1.3 with the provider's first suite and group: with
//! aws-lc-rs in rustls 0.23.46, `TLS13_AES_256_GCM_SHA384` and the hybrid `X25519MLKEM768`
//! (rustls's `prefer-post-quantum` default). A unit test checks that this is what is negotiated.
//!
//! The certificate is self-signed for [`SERVER_NAME`] (`localhost`), with an ECDSA P-256 key
//! (rcgen's default algorithm, the usual choice for a TLS server today: a signature is cheap next
//! to RSA 2048's, so the handshake figures are about the key exchange and the protocol rather
//! than one expensive private-key operation). The client trusts exactly that certificate as its
//! root and verifies the server against it, as a real client would against a CA.
//!
//! The client disables session resumption, so every connection of the churn mode is a full
//! handshake (`--mode churn` measures handshakes, not ticket lookups). The server side is left at
//! rustls's defaults (it may still issue TLS 1.3 tickets, which the client then ignores), as the
//! library's `TlsConfig::from_pem_files` is.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The name the test certificate is issued for, and the one the client verifies.
pub const SERVER_NAME: &str = "localhost";

/// The file names [`write_test_cert`] writes in its directory.
pub const CERT_FILE: &str = "cert.pem";
/// See [`CERT_FILE`].
pub const KEY_FILE: &str = "key.pem";

/// rustls's aws-lc-rs provider with its default cipher suites and key exchange groups.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The PEM files of a certificate and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (`cert.pem`): the server's chain, and the client's root.
    pub cert: PathBuf,
    /// The PKCS#8 private key (`key.pem`).
    pub key: PathBuf,
}

/// Makes a fresh self-signed certificate for [`SERVER_NAME`] with an ECDSA P-256 key and writes
/// it and its key as PEM into `dir` (created if need be), as [`CERT_FILE`] and [`KEY_FILE`].
///
/// # Errors
///
/// The generation, or the directory or a file could not be written.
pub fn write_test_cert(dir: &Path) -> Result<CertFiles, String> {
    let issued = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| format!("generating the test certificate: {e}"))?;
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let files = CertFiles {
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };
    let write = |path: &Path, text: String| {
        fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write(&files.cert, issued.cert.pem())?;
    write(&files.key, issued.signing_key.serialize_pem())?;
    Ok(files)
}

/// Every certificate in the PEM file `path`; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("reading certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The server configuration of the tokio peer: the chain in `cert`, the key in `key`, rustls's
/// defaults otherwise, the aws-lc-rs provider.
///
/// # Errors
///
/// A file that cannot be read or holds no certificate or key, or a key that does not match.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the private key from {}: {e}", key.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS server configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("TLS server certificate and key: {e}"))?;
    Ok(Arc::new(config))
}

/// The load generator's client configuration: trusts the certificates in `ca` (and nothing
/// else) as roots, sends no client certificate, and never resumes a session.
///
/// # Errors
///
/// The file cannot be read, holds no certificate, or a certificate is not a usable root.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable root certificate: {e}", ca.display()))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// [`SERVER_NAME`] as rustls takes it.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("localhost is a valid DNS name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    use rustls::{ClientConnection, Connection, ServerConnection};

    /// A fresh directory under the system's temporary directory.
    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hydrogen-bench-tls-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Moves every TLS byte `from` has to send into `to` and lets `to` process them; returns
    /// whether there were any.
    fn transfer(from: &mut Connection, to: &mut Connection) -> Result<bool, rustls::Error> {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).expect("writing to a Vec");
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).expect("reading from a slice");
            to.process_new_packets()?;
        }
        Ok(!wire.is_empty())
    }

    /// A client and a server connection of these configurations, in memory: the handshake,
    /// then `ping` from the client, which the server reads and sends back. Returns the echo.
    fn handshake_and_echo(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        ping: &[u8],
    ) -> Result<Vec<u8>, rustls::Error> {
        let mut c = Connection::from(ClientConnection::new(client, server_name())?);
        let mut s = Connection::from(ServerConnection::new(server)?);
        // Written before the handshake: rustls holds it until the handshake is done.
        c.writer().write_all(ping).unwrap();
        let mut got = Vec::new();
        for _ in 0..10 {
            let a = transfer(&mut c, &mut s)?;
            let mut buf = [0u8; 256];
            while let Ok(n) = s.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.writer().write_all(&buf[..n]).unwrap();
            }
            let b = transfer(&mut s, &mut c)?;
            while let Ok(n) = c.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if !a && !b {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        if let Connection::Client(c) = &c {
            // rustls's defaults between two rustls peers: the provider's first suite and group
            // (with aws-lc-rs in rustls 0.23.46: TLS13_AES_256_GCM_SHA384, X25519MLKEM768).
            let defaults = provider();
            assert_eq!(
                c.negotiated_cipher_suite().map(|s| s.suite()),
                Some(defaults.cipher_suites[0].suite())
            );
            assert_eq!(
                c.negotiated_key_exchange_group().map(|g| g.name()),
                Some(defaults.kx_groups[0].name())
            );
            assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        }
        Ok(got)
    }

    #[test]
    fn client_verifies_the_test_certificate() {
        let dir = temp_dir("verify");
        let files = write_test_cert(&dir).unwrap();
        let server = server_config(&files.cert, &files.key).unwrap();
        let client = client_config(&files.cert).unwrap();
        let echo = handshake_and_echo(client, server.clone(), b"hello over TLS").unwrap();
        assert_eq!(echo, b"hello over TLS");
        // A client that trusts another certificate refuses the server.
        let other = write_test_cert(&temp_dir("other")).unwrap();
        let stranger = client_config(&other.cert).unwrap();
        let e = handshake_and_echo(stranger, server, b"x").unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(other.cert.parent().unwrap());
    }

    #[test]
    fn certificate_files_are_pem_and_load() {
        let dir = temp_dir("files");
        let files = write_test_cert(&dir).unwrap();
        assert_eq!(files.cert, dir.join(CERT_FILE));
        let cert = fs::read_to_string(&files.cert).unwrap();
        let key = fs::read_to_string(&files.key).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        server_config(&files.cert, &files.key).unwrap();
        client_config(&files.cert).unwrap();
        // Two generations give two different certificates.
        let again = write_test_cert(&temp_dir("again")).unwrap();
        assert_ne!(cert, fs::read_to_string(&again.cert).unwrap());
        // The wrong files are refused with the file named.
        let e = server_config(&files.key, &files.key).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = server_config(&files.cert, &files.cert).unwrap_err();
        assert!(e.contains("private key"), "{e}");
        let e = client_config(&dir.join("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(again.cert.parent().unwrap());
    }
}
