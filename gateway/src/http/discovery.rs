//! `GET /v1/discovery`: live chat nodes ranked for a client (DESIGN §6).
//!
//! This node is described from live state (its registry's connection count,
//! its drain token); other nodes from their registrations in storage, while
//! their lease holds. Draining nodes are never listed.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::State;
use axum::Json;
use hanmadi_storage::chat::NodeRecord;
use hanmadi_storage::kv::Kv;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::extract::{ApiQuery, Id};
use super::{now_ms, HttpState};

/// What this node advertises about itself; built at start from its
/// configuration and bound listeners.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node's number (its message ids' node bits).
    pub node_id: u64,
    /// Its host name, which is also its TLS name.
    pub hostname: String,
    /// Its region, for ranking.
    pub region: String,
    /// Where clients reach it.
    pub endpoints: Endpoints,
    /// The connections it is meant to hold: its capacity for ranking.
    pub max_connections: u64,
    /// Where its node-to-node link listens (`host:port`; empty: nowhere).
    pub link: String,
}

impl NodeInfo {
    /// This node's registration as discovery on other nodes reads it.
    #[must_use]
    pub fn record(&self, connections: u64, draining: bool) -> NodeRecord {
        let e = &self.endpoints;
        let endpoints = [
            ("tcp", &e.tcp),
            ("tls", &e.tls),
            ("ws", &e.ws),
            ("wss", &e.wss),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v.clone()?)))
        .collect();
        NodeRecord {
            hostname: self.hostname.clone(),
            region: self.region.clone(),
            endpoints,
            max_connections: self.max_connections,
            current_connections: connections,
            draining,
            link: self.link.clone(),
            ..NodeRecord::default()
        }
    }
}

/// A node's addresses by transport; only listening ones are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Endpoints {
    /// Raw TCP, `host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// TCP with TLS, `host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// WebSocket, `ws://host:port/ws`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws: Option<String>,
    /// WebSocket over TLS, `wss://host:port/ws`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wss: Option<String>,
}

impl Endpoints {
    /// The endpoints of listeners bound at these addresses, advertised
    /// under `host`: clients dial `host` (and check TLS certificates
    /// against it), on the port each listener actually got.
    pub fn bound(
        host: &str,
        tcp: Option<SocketAddr>,
        tls: Option<SocketAddr>,
        http: Option<SocketAddr>,
        https: Option<SocketAddr>,
    ) -> Self {
        let at = |a: SocketAddr| {
            if host.contains(':') {
                format!("[{host}]:{}", a.port())
            } else {
                format!("{host}:{}", a.port())
            }
        };
        Self {
            tcp: tcp.map(at),
            tls: tls.map(at),
            ws: http.map(|a| format!("ws://{}/ws", at(a))),
            wss: https.map(|a| format!("wss://{}/ws", at(a))),
        }
    }

    fn from_record(map: &HashMap<String, String>) -> Self {
        let get = |k: &str| map.get(k).filter(|v| !v.is_empty()).cloned();
        Self {
            tcp: get("tcp"),
            tls: get("tls"),
            ws: get("ws"),
            wss: get("wss"),
        }
    }
}

/// `?region=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiscoveryQuery {
    /// The client's region: nodes there rank first.
    #[serde(default)]
    region: Option<String>,
}

/// A node a client may connect to.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    /// The node's id.
    node_id: Id,
    /// Its host name (its TLS name).
    hostname: String,
    /// Its region.
    region: String,
    /// Where to reach it.
    endpoints: Endpoints,
    /// Its capacity.
    max_connections: u64,
    /// Connections it holds now.
    connections: u64,
    /// Always false: draining nodes are not listed.
    draining: bool,
}

impl NodeView {
    fn free(&self) -> u64 {
        self.max_connections.saturating_sub(self.connections)
    }
}

/// `GET /v1/discovery`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Same region first, then most free capacity.
    nodes: Vec<NodeView>,
}

fn registered(node_id: u64, r: NodeRecord) -> NodeView {
    NodeView {
        node_id: Id(node_id),
        endpoints: Endpoints::from_record(&r.endpoints),
        hostname: r.hostname,
        region: r.region,
        max_connections: r.max_connections,
        connections: r.current_connections,
        draining: r.draining,
    }
}

/// Live chat nodes, best first for a client in `region`.
#[utoipa::path(get, path = "/v1/discovery", tag = "operations", params(DiscoveryQuery),
    responses((status = 200, description = "Live, non-draining nodes, best first", body = NodeList)))]
pub(super) async fn discovery<K: Kv>(
    State(state): State<HttpState<K>>,
    ApiQuery(query): ApiQuery<DiscoveryQuery>,
) -> Result<Json<NodeList>, ApiError> {
    let me = &state.node;
    let mut nodes = Vec::new();
    if !state.ctx.shutdown.is_cancelled() {
        nodes.push(NodeView {
            node_id: Id(me.node_id),
            hostname: me.hostname.clone(),
            region: me.region.clone(),
            endpoints: me.endpoints.clone(),
            max_connections: me.max_connections,
            connections: state.ctx.registry.connections() as u64,
            draining: false,
        });
    }
    // Other nodes are a bonus: this one can always answer for itself.
    match state.ctx.router.store().nodes().await {
        Ok(registrations) => {
            let now = now_ms();
            nodes.extend(
                registrations
                    .into_iter()
                    .filter(|(id, r)| *id != me.node_id && !r.draining && r.lease_expires_at > now)
                    .map(|(id, r)| registered(id, r)),
            );
        }
        Err(e) => tracing::warn!(error = %e, "discovery could not read node registrations"),
    }
    let region = query.region.unwrap_or_default();
    nodes.sort_by_key(|n| (region.is_empty() || n.region != region, Reverse(n.free())));
    Ok(Json(NodeList { nodes }))
}
