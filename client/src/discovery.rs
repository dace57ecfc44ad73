//! Service discovery for the reconnect helper (DESIGN §6): before each
//! connection attempt, ask a node's `GET /v1/discovery` which live nodes
//! to use, best first, and take the next one's endpoint for the transport
//! the client speaks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::ClientError;
use crate::reconnect::{Endpoint, Endpoints};

/// Largest discovery answer read.
const MAX_ANSWER: usize = 1 << 20;

/// Which of a node's endpoints a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Raw TCP.
    Tcp,
    /// TCP with TLS.
    Tls,
    /// WebSocket.
    Ws,
    /// WebSocket with TLS.
    Wss,
}

/// Where and how to ask for nodes.
#[derive(Clone)]
pub struct DiscoveryOptions {
    /// A node's HTTP or HTTPS base address, e.g. `https://chat.example:7443`.
    pub url: String,
    /// The client's region: nodes there are listed first.
    pub region: Option<String>,
    /// The endpoint kind to take from each node.
    pub transport: Transport,
    /// Trust for an `https` URL.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How long one discovery request may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for DiscoveryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryOptions")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct NodeList {
    nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Node {
    hostname: String,
    #[serde(default)]
    endpoints: NodeEndpoints,
}

#[derive(Debug, Default, Deserialize)]
struct NodeEndpoints {
    tcp: Option<String>,
    tls: Option<String>,
    ws: Option<String>,
    wss: Option<String>,
}

impl Endpoints {
    /// Asks `GET /v1/discovery` before every attempt. The first attempt
    /// takes the best-ranked node, each further one the next in the answer
    /// (so a node that keeps failing is passed over); its TLS name is the
    /// node's hostname.
    #[must_use]
    pub fn discovery(options: DiscoveryOptions) -> Self {
        let options = Arc::new(options);
        let mut attempt = 0usize;
        Self::from_fn(move || {
            let options = Arc::clone(&options);
            let turn = attempt;
            attempt = attempt.wrapping_add(1);
            async move {
                let nodes = tokio::time::timeout(options.timeout, fetch(&options))
                    .await
                    .map_err(|_| {
                        // Not `Timeout`: that one means a request on an
                        // open connection, retried on the same connection.
                        ClientError::Discovery(format!(
                            "{} did not answer within {:?}",
                            options.url, options.timeout
                        ))
                    })??;
                pick(&nodes, options.transport, turn).ok_or_else(|| {
                    ClientError::Discovery(format!(
                        "no live node offers a {:?} endpoint",
                        options.transport
                    ))
                })
            }
        })
    }
}

/// The `turn`-th node (wrapping) that offers `transport`, as an endpoint.
fn pick(nodes: &NodeList, transport: Transport, turn: usize) -> Option<Endpoint> {
    let offered: Vec<(&Node, &str)> = nodes
        .nodes
        .iter()
        .filter_map(|n| {
            let e = &n.endpoints;
            let url = match transport {
                Transport::Tcp => e.tcp.as_deref(),
                Transport::Tls => e.tls.as_deref(),
                Transport::Ws => e.ws.as_deref(),
                Transport::Wss => e.wss.as_deref(),
            };
            url.map(|u| (n, u))
        })
        .collect();
    let (node, url) = offered.get(turn % offered.len().max(1))?;
    // WebSocket endpoints are URLs; the client dials their authority and
    // speaks its own configured path.
    let addr = match url.parse::<Uri>() {
        Ok(uri) if uri.scheme().is_some() => uri.authority()?.to_string(),
        _ => (*url).to_owned(),
    };
    Some(Endpoint {
        addr,
        tls_server_name: Some(node.hostname.clone()),
    })
}

async fn fetch(options: &DiscoveryOptions) -> Result<NodeList, ClientError> {
    let bad = |what: String| ClientError::Discovery(what);
    let base: Uri = options
        .url
        .parse()
        .map_err(|e| bad(format!("discovery URL {:?}: {e}", options.url)))?;
    let secure = match base.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad(format!("discovery URL {:?}: not http(s)", options.url))),
    };
    let authority = base
        .authority()
        .ok_or_else(|| bad(format!("discovery URL {:?}: no host", options.url)))?
        .clone();
    let port = authority
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut path = String::from("/v1/discovery");
    if let Some(region) = &options.region {
        path.push('?');
        path.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .append_pair("region", region)
                .finish(),
        );
    }
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| bad(e.to_string()))?;
    let tcp = TcpStream::connect((host, port)).await?;
    let body = if secure {
        let config = options
            .tls
            .clone()
            .ok_or_else(|| bad("an https discovery URL needs TLS trust".to_owned()))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| ClientError::InvalidServerName(host.to_owned()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        get(tls, request).await?
    } else {
        get(tcp, request).await?
    };
    serde_json::from_slice(&body).map_err(|e| bad(format!("discovery answer: {e}")))
}

/// One request on a fresh HTTP/1.1 connection; the body of a `200`.
async fn get<S>(stream: S, request: hyper::Request<Empty<Bytes>>) -> Result<Bytes, ClientError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let bad = |what: String| ClientError::Discovery(what);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| bad(format!("discovery answer: {e}")))?
        .to_bytes();
    conn.abort();
    if status != hyper::StatusCode::OK {
        return Err(bad(format!("discovery answered {status}")));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> NodeList {
        serde_json::from_str(
            r#"{"nodes":[
                {"node_id":"1","hostname":"a.example","region":"eu","endpoints":{"tcp":"a.example:7070","ws":"ws://a.example:7080/ws"}},
                {"node_id":"2","hostname":"b.example","region":"us","endpoints":{"tcp":"b.example:7070","wss":"wss://b.example:7443/ws"}}
            ]}"#,
        )
        .expect("parse")
    }

    #[test]
    fn attempts_take_the_offering_nodes_in_turn() {
        let n = nodes();
        let at = |t, turn| pick(&n, t, turn).map(|e| (e.addr, e.tls_server_name));
        let a = Some(("a.example:7070".to_owned(), Some("a.example".to_owned())));
        let b = Some(("b.example:7070".to_owned(), Some("b.example".to_owned())));
        assert_eq!(at(Transport::Tcp, 0), a);
        assert_eq!(at(Transport::Tcp, 1), b);
        assert_eq!(at(Transport::Tcp, 2), a);
        assert_eq!(
            at(Transport::Wss, 5),
            Some(("b.example:7443".to_owned(), Some("b.example".to_owned())))
        );
        assert_eq!(at(Transport::Tls, 0), None);
    }
}
