//! TLS for the `tls` and `https` listeners: rustls configuration from PEM
//! files, and self-signed certificates for `hanmadi gen-cert`.
//!
//! Every configuration here names its crypto provider (ring) explicitly
//! instead of relying on rustls's process-wide default. That default panics
//! when a build enables more than one provider, which feature unification
//! across a workspace can do behind anyone's back.
//!
//! Protocols are TLS 1.3 and 1.2, with ring's default cipher suites: AEAD
//! only, forward secret key exchange. Older versions are not compiled in.
//!
//! The node's listeners present their certificate through
//! [`ReloadableCert`], so `hanmadi serve` reloads the files on SIGHUP
//! without a restart and without dropping a connection.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub mod gen_cert;

pub use gen_cert::GenCertArgs;

/// The ALPN protocol id of HTTP/1.1, which the `https` listener offers so
/// WebSocket upgrades work through clients that insist on ALPN.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be built or a certificate written.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or is not PEM.
    #[error("reading certificate file {path}: {source}")]
    ReadCert {
        /// The file named by `--cert`.
        path: PathBuf,
        /// What went wrong, I/O or PEM syntax.
        #[source]
        source: pem::Error,
    },
    /// The certificate file is PEM but holds no `CERTIFICATE` section.
    #[error("certificate file {path} holds no PEM certificate")]
    NoCertificates {
        /// The file named by `--cert`.
        path: PathBuf,
    },
    /// The key file could not be read, is not PEM, or holds no private key.
    #[error("reading private key file {path}: {source}")]
    ReadKey {
        /// The file named by `--key`.
        path: PathBuf,
        /// What went wrong, I/O, PEM syntax or no key found.
        #[source]
        source: pem::Error,
    },
    /// rustls refused the certificate and key, for example because the key
    /// does not belong to the certificate or its type is unsupported.
    #[error("certificate {cert} with key {key}: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// A certificate to trust could not be used as a trust anchor.
    #[error("trusting certificate {path}: {source}")]
    Trust {
        /// The certificate file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// A hostname for a new certificate is neither a DNS name nor an IP
    /// address.
    #[error("{0:?} is not a valid DNS name or IP address")]
    InvalidHostname(String),
    /// A new certificate needs at least one hostname.
    #[error("a certificate needs at least one hostname")]
    NoHostnames,
    /// rcgen could not generate the key or certificate.
    #[error("generating self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// An output file already exists; keys are never overwritten silently.
    #[error("{0} already exists; remove it or choose another directory")]
    AlreadyExists(PathBuf),
    /// An output file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A server configuration for the `tls` listener: certificate chain and key
/// from PEM files, no client authentication, no ALPN.
///
/// # Errors
///
/// [`TlsError::ReadCert`], [`TlsError::NoCertificates`] or
/// [`TlsError::ReadKey`] when a file is missing, unreadable or not PEM of the
/// right kind; [`TlsError::Rustls`] when the key does not match the
/// certificate or is of an unsupported type.
pub fn server_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with_alpn(cert_pem_path, key_pem_path, &[])
}

/// Like [`server_config`], offering `alpn` protocols in order of preference
/// (the `https` listener passes [`ALPN_HTTP_1_1`]).
///
/// # Errors
///
/// As [`server_config`].
pub fn server_config_with_alpn(
    cert_pem_path: &Path,
    key_pem_path: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    // One way to build a listener's configuration: a certificate that is
    // simply never reloaded.
    Ok(Arc::new(ReloadableCert::load(cert_pem_path, key_pem_path)?).server_config(alpn))
}

/// The certificate and key of the TLS listeners, swapped in place when the
/// files change ([`ReloadableCert::reload`], on SIGHUP).
///
/// Each handshake takes the current pair with one atomic load, so a reload
/// never blocks a handshake and never touches connections already
/// established: they keep the session keys they negotiated.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl ReloadableCert {
    /// Loads the certificate chain and key from PEM files.
    ///
    /// # Errors
    ///
    /// As [`server_config`].
    pub fn load(cert_pem_path: &Path, key_pem_path: &Path) -> Result<Self, TlsError> {
        let current = ArcSwap::from_pointee(certified_key(cert_pem_path, key_pem_path)?);
        Ok(Self {
            cert_path: cert_pem_path.to_owned(),
            key_path: key_pem_path.to_owned(),
            current,
        })
    }

    /// Reads the files again and serves the new pair from the next
    /// handshake on. On an error the old pair stays in use.
    ///
    /// # Errors
    ///
    /// As [`server_config`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified_key(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    /// A server configuration that presents this certificate, offering
    /// `alpn` protocols in order of preference.
    #[must_use]
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            // The ring provider supports every default version.
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The chain and signing key from PEM files, checked to belong together.
fn certified_key(cert_pem_path: &Path, key_pem_path: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(cert_pem_path)?;
    let key = PrivateKeyDer::from_pem_file(key_pem_path).map_err(|source| TlsError::ReadKey {
        path: key_pem_path.to_owned(),
        source,
    })?;
    let rustls_error = |source| TlsError::Rustls {
        cert: cert_pem_path.to_owned(),
        key: key_pem_path.to_owned(),
        source,
    };
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(rustls_error)?;
    let certified = CertifiedKey::new(certs, signing_key);
    // A key that does not match the certificate would fail every handshake.
    certified.keys_match().map_err(rustls_error)?;
    Ok(certified)
}

/// A client configuration that trusts exactly the certificates in
/// `cert_pem_path`, typically one made by [`generate_self_signed`].
///
/// For local setups and tests, where the server's certificate is not signed
/// by a public authority. The hostname is still checked against the
/// certificate. No ALPN is offered; to add some, clone the inner config and
/// set `alpn_protocols`.
///
/// # Errors
///
/// [`TlsError::ReadCert`] or [`TlsError::NoCertificates`] when the file is
/// missing or holds no certificate; [`TlsError::Trust`] when a certificate
/// cannot be used as a trust anchor.
pub fn client_config_trusting(cert_pem_path: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let rustls_error = |source| TlsError::Trust {
        path: cert_pem_path.to_owned(),
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(cert_pem_path)? {
        roots.add(cert).map_err(rustls_error)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(rustls_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Writes a new self-signed certificate valid for `hostnames` to `cert_out`
/// and its private key (ECDSA P-256, PKCS#8) to `key_out`.
///
/// Each hostname that parses as an IP address becomes an IP SAN, the rest DNS
/// SANs. The key file is created with mode 0600. Neither file may exist
/// beforehand: a key is never overwritten.
///
/// # Errors
///
/// [`TlsError::NoHostnames`] or [`TlsError::InvalidHostname`] for bad input,
/// [`TlsError::AlreadyExists`] when an output file exists,
/// [`TlsError::Generate`] if rcgen fails, [`TlsError::Write`] on I/O errors
/// (a key written before a failed certificate write is removed again).
pub fn generate_self_signed(
    hostnames: &[String],
    cert_out: &Path,
    key_out: &Path,
) -> Result<(), TlsError> {
    if hostnames.is_empty() {
        return Err(TlsError::NoHostnames);
    }
    for name in hostnames {
        // rcgen only checks that DNS names are ASCII; rustls's parser is the
        // one that will judge the name at handshake time.
        if ServerName::try_from(name.as_str()).is_err() {
            return Err(TlsError::InvalidHostname(name.clone()));
        }
    }
    for path in [cert_out, key_out] {
        if path.exists() {
            return Err(TlsError::AlreadyExists(path.to_owned()));
        }
    }

    let mut params = rcgen::CertificateParams::new(hostnames.to_vec())?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, hostnames[0].as_str());
    subject.push(rcgen::DnType::OrganizationName, "Hanmadi self-signed");
    params.distinguished_name = subject;
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;

    write_new(key_out, key_pair.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(cert_out, cert.pem().as_bytes(), 0o644) {
        // Best effort: a lone key is useless and would block a retry.
        let _ = std::fs::remove_file(key_out);
        return Err(e);
    }
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::ReadCert {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Creates `path`, which must not exist, with `mode` (on Unix) from the
/// start, so a key is never readable by others even for an instant.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::AlreadyExists(path.to_owned())
        } else {
            TlsError::Write {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    fn generated(hostnames: &[&str]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let names: Vec<String> = hostnames.iter().map(|s| (*s).to_owned()).collect();
        generate_self_signed(&names, &cert, &key).unwrap();
        Files {
            _dir: dir,
            cert,
            key,
        }
    }

    /// Serves one TLS connection that echoes what it reads, upper-cased.
    async fn echo_server(
        config: Arc<rustls::ServerConfig>,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            buf.make_ascii_uppercase();
            tls.write_all(&buf).await?;
            tls.shutdown().await?;
            Ok(())
        });
        (addr, task)
    }

    async fn connect(
        config: Arc<rustls::ClientConfig>,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        TlsConnector::from(config).connect(name, tcp).await
    }

    /// Sends `message` to an [`echo_server`] and returns its answer.
    async fn echo(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, message: &[u8]) -> Vec<u8> {
        tls.write_all(message).await.unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn real_handshake_and_echo() {
        let f = generated(&["localhost", "127.0.0.1"]);
        let (addr, server) = echo_server(server_config(&f.cert, &f.key).unwrap()).await;
        let client = client_config_trusting(&f.cert).unwrap();

        let mut tls = connect(client, addr, "localhost").await.unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        assert_eq!(echo(&mut tls, b"hello").await, b"HELLO");
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn ip_address_names_and_tls12() {
        let f = generated(&["localhost", "127.0.0.1"]);
        let (addr, server) = echo_server(server_config(&f.cert, &f.key).unwrap()).await;

        // A client that speaks only TLS 1.2 still gets in, by IP address.
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(&f.cert).unwrap() {
            roots.add(c).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tls = connect(Arc::new(client), addr, "127.0.0.1").await.unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(echo(&mut tls, b"abcde").await, b"ABCDE");
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn alpn_http_1_1() {
        let f = generated(&["localhost"]);
        let config = server_config_with_alpn(&f.cert, &f.key, &[ALPN_HTTP_1_1]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let (addr, server) = echo_server(config).await;

        let mut client = (*client_config_trusting(&f.cert).unwrap()).clone();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut tls = connect(Arc::new(client), addr, "localhost").await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(echo(&mut tls, b"hello").await, b"HELLO");
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn wrong_hostname_fails_handshake() {
        let f = generated(&["localhost"]);
        let (addr, server) = echo_server(server_config(&f.cert, &f.key).unwrap()).await;
        let client = client_config_trusting(&f.cert).unwrap();

        let err = connect(client, addr, "chat.example.com").await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("certificate"), "{msg}");
        // The server sees the client's alert, not a hang.
        let server_result = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        assert!(server_result.is_err());
    }

    #[tokio::test]
    async fn untrusted_certificate_fails_handshake() {
        let served = generated(&["localhost"]);
        let other = generated(&["localhost"]);
        let (addr, _server) = echo_server(server_config(&served.cert, &served.key).unwrap()).await;
        let client = client_config_trusting(&other.cert).unwrap();
        assert!(connect(client, addr, "localhost").await.is_err());
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let f = generated(&["localhost"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&f.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(&f.key).unwrap();
        let again = generate_self_signed(&["localhost".to_owned()], &f.cert, &f.key);
        assert!(
            matches!(again, Err(TlsError::AlreadyExists(_))),
            "{again:?}"
        );
        assert_eq!(std::fs::read(&f.key).unwrap(), before);
    }

    #[test]
    fn bad_hostnames() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        assert!(matches!(
            generate_self_signed(&[], &cert, &key),
            Err(TlsError::NoHostnames)
        ));
        for bad in ["", "has space", "a..b", "한마디"] {
            let r = generate_self_signed(&[bad.to_owned()], &cert, &key);
            assert!(
                matches!(r, Err(TlsError::InvalidHostname(_))),
                "{bad}: {r:?}"
            );
        }
        assert!(!cert.exists() && !key.exists());
    }

    #[test]
    fn missing_and_garbage_files_give_clear_errors() {
        let f = generated(&["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, b"\x00\xffnot a pem file at all\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, b"-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();

        let e = server_config(&missing, &f.key).unwrap_err();
        assert!(matches!(e, TlsError::ReadCert { .. }), "{e:?}");
        assert!(e.to_string().contains("nope.pem"), "{e}");

        let e = server_config(&garbage, &f.key).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificates { .. }), "{e:?}");
        assert!(e.to_string().contains("garbage.pem"), "{e}");

        let e = server_config(&broken, &f.key).unwrap_err();
        assert!(matches!(e, TlsError::ReadCert { .. }), "{e:?}");

        let e = server_config(&f.cert, &missing).unwrap_err();
        assert!(matches!(e, TlsError::ReadKey { .. }), "{e:?}");
        assert!(e.to_string().contains("nope.pem"), "{e}");

        // A certificate given as the key: PEM, but no private key inside.
        let e = server_config(&f.cert, &f.cert).unwrap_err();
        assert!(matches!(e, TlsError::ReadKey { .. }), "{e:?}");

        let e = client_config_trusting(&garbage).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificates { .. }), "{e:?}");
    }

    #[test]
    fn key_from_another_certificate_is_refused() {
        let a = generated(&["localhost"]);
        let b = generated(&["localhost"]);
        let e = server_config(&a.cert, &b.key).unwrap_err();
        assert!(matches!(e, TlsError::Rustls { .. }), "{e:?}");
    }
}
