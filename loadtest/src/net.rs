//! Where and how sockets connect: endpoints from discovery (or
//! `--target`), the transport, TLS trust, and opening many connections
//! with bounded concurrency.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::stream::{self, StreamExt as _};
use hanmadi_client::{Client, ClientConfig, ClientError, Deliveries, TlsOptions};
use hanmadi_proto::websocket::Encoding;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cli::{Common, EncodingArg, TransportArg};
use crate::control::{Control, Node};

/// How long a request over a socket may wait for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Deliveries a connection may hold unread: a receiver that falls this far
/// behind is the tool's own fault, and closes with `SlowConsumer`.
const EVENT_CAPACITY: usize = 1 << 16;

/// Attempts per connection before the run gives up on it.
const CONNECT_ATTEMPTS: u32 = 5;

/// One place to connect to.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `host:port`.
    addr: String,
    /// The certificate name.
    server_name: String,
}

/// Everything needed to open a connection for any user.
#[derive(Debug, Clone)]
pub struct Dialer {
    endpoints: Vec<Endpoint>,
    transport: TransportArg,
    encoding: EncodingArg,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    /// Works out the endpoints: `--target`, else every node discovery
    /// lists (`--discovery`), else the first node it lists, reached at the
    /// `--http` URL's host.
    pub async fn new(common: &Common, control: &Control) -> anyhow::Result<Self> {
        let transport = common.transport;
        let endpoints = if let Some(target) = &common.target {
            let addr = host_port(target);
            vec![Endpoint {
                server_name: host_of(&addr).to_owned(),
                addr,
            }]
        } else {
            let nodes = control.discover().await?;
            // `--discovery`: every live node; `--http` alone: that node.
            let spread = common.discovery.is_some();
            let chosen: Vec<&Node> = if spread {
                nodes.iter().collect()
            } else {
                nodes.iter().take(1).collect()
            };
            let mut endpoints = Vec::new();
            for node in chosen {
                let e = &node.endpoints;
                let listed = match transport {
                    TransportArg::Tcp => e.tcp.as_deref(),
                    TransportArg::Tls => e.tls.as_deref(),
                    TransportArg::Ws => e.ws.as_deref(),
                    TransportArg::Wss => e.wss.as_deref(),
                };
                let Some(listed) = listed else { continue };
                let mut addr = host_port(listed);
                if !spread {
                    // One node, reached the way its HTTP API was.
                    let http_host = host_of(host_port(common.http_url()).as_str()).to_owned();
                    addr = format!("{http_host}:{}", port_of(&addr));
                }
                endpoints.push(Endpoint {
                    addr,
                    server_name: node.hostname.clone(),
                });
            }
            if endpoints.is_empty() {
                bail!(
                    "no node offers a {} endpoint (start the node with that listener, or pass --target)",
                    transport.name()
                );
            }
            endpoints
        };
        let endpoints = match &common.tls_name {
            Some(name) => endpoints
                .into_iter()
                .map(|e| Endpoint {
                    server_name: name.clone(),
                    ..e
                })
                .collect(),
            None => endpoints,
        };
        let tls = if transport.is_tls() {
            Some(tls_config(common)?)
        } else {
            None
        };
        Ok(Self {
            endpoints,
            transport,
            encoding: common.encoding,
            tls,
        })
    }

    /// The `host:port` connection `index` goes to.
    pub fn addr(&self, index: usize) -> &str {
        &self.endpoints[index % self.endpoints.len()].addr
    }

    /// How many distinct endpoints connections are spread over.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The configuration of connection `index` for a user with `token`.
    pub fn config(&self, index: usize, token: &str) -> ClientConfig {
        let endpoint = &self.endpoints[index % self.endpoints.len()];
        let mut config = ClientConfig::new(&endpoint.addr, token, format!("lt-{index}"));
        config.request_timeout = REQUEST_TIMEOUT;
        config.event_capacity = EVENT_CAPACITY;
        if let Some(tls) = &self.tls {
            config = config.with_tls(TlsOptions {
                server_name: endpoint.server_name.clone(),
                config: Arc::clone(tls),
            });
        }
        if matches!(self.transport, TransportArg::Ws | TransportArg::Wss) {
            config = config.with_websocket(match self.encoding {
                EncodingArg::Binary => Encoding::Binary,
                EncodingArg::Json => Encoding::Json,
            });
        }
        config
    }

    /// Connects every `(index, token)` with at most `concurrency` handshakes
    /// at once, retrying transient failures; answers in input order.
    pub async fn connect_all(
        &self,
        tokens: Vec<(usize, String)>,
        concurrency: usize,
    ) -> anyhow::Result<Vec<(Client, Deliveries)>> {
        let results: Vec<anyhow::Result<(Client, Deliveries)>> = stream::iter(tokens)
            .map(|(index, token)| {
                let config = self.config(index, &token);
                async move { connect(config).await }
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// One connection, retried with a short backoff while the failure is one
/// that retrying can mend.
pub async fn connect(config: ClientConfig) -> anyhow::Result<(Client, Deliveries)> {
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=CONNECT_ATTEMPTS {
        match Client::connect(config.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) if attempt < CONNECT_ATTEMPTS && retryable(&e) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("connecting to {} (attempt {attempt})", config.addr))
            }
        }
    }
    unreachable!("the last attempt returns")
}

fn retryable(e: &ClientError) -> bool {
    use hanmadi_client::ErrorAction;
    matches!(e, ClientError::Io(_) | ClientError::Timeout(_)) || e.action() == ErrorAction::Retry
}

/// `host:port` of a `host:port` or a `scheme://host:port/path`.
pub fn host_port(s: &str) -> String {
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    s.split('/').next().unwrap_or(s).to_owned()
}

fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or("", |(_, port)| port)
}

/// TLS trust: `--ca`, or with `--insecure` none at all.
fn tls_config(common: &Common) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .context("TLS protocol versions")?;
    let config = if let Some(ca) = &common.ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots
                .add(cert.with_context(|| format!("reading {}", ca.display()))?)
                .context("a certificate in --ca")?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else if common.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        bail!(
            "--transport {} needs --ca FILE (the server's certificate or its CA) or --insecure",
            common.transport.name()
        );
    };
    Ok(Arc::new(config))
}

/// `--insecure`: accepts any certificate, still checking the handshake's
/// signatures so the TLS work matches a real client's.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
