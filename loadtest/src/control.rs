//! The control plane, over the node's HTTP API: provisioning accounts and
//! groups, minting tokens, discovery, and the server's own counters.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The text whose HMAC under the node's secret is the admin token; the
/// server derives it the same way (`hanmadi admin-token` prints it).
const ADMIN_TOKEN_LABEL: &str = "hanmadi admin token v1";

/// Accounts per provisioning request: the server's batch limit.
const USERS_PER_BATCH: usize = 1000;

/// Provisioning requests in flight at once.
const PROVISION_CONCURRENCY: usize = 4;

/// How long test users' tokens last: any run ends long before.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The operator's admin token for `secret`.
pub fn admin_token(secret: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(ADMIN_TOKEN_LABEL.as_bytes());
    format!(
        "hma1.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// An HS256 JWT for `user_id`, as an application's backend would mint it.
pub fn mint_jwt(secret: &[u8], user_id: u64) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Claims {
        sub: String,
        exp: u64,
        iat: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: user_id.to_string(),
        exp: now + TOKEN_TTL.as_secs(),
        iat: now,
    };
    // RFC 7519 compact form: base64url header and claims, then the
    // HMAC-SHA256 of the two joined by a dot.
    let mut token = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    token.push('.');
    token.push_str(
        &URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).context("encoding JWT claims")?),
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    Ok(token)
}

/// A test account and its token.
#[derive(Debug, Clone)]
pub struct User {
    /// Its id.
    pub id: u64,
    /// A JWT for it.
    pub token: String,
}

/// One node as discovery lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    /// The name clients dial and check certificates against.
    pub hostname: String,
    /// Its socket endpoints.
    #[serde(default)]
    pub endpoints: NodeEndpoints,
}

/// A node's endpoints by transport.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeEndpoints {
    /// `host:port` for raw TCP.
    pub tcp: Option<String>,
    /// `host:port` for TLS.
    pub tls: Option<String>,
    /// `ws://host:port/ws`.
    pub ws: Option<String>,
    /// `wss://host:port/ws`.
    pub wss: Option<String>,
}

/// What the server says of its own process at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerUsage {
    /// Resident set size, bytes.
    pub rss_bytes: f64,
    /// CPU time used so far, seconds.
    pub cpu_seconds: f64,
}

/// The HTTP API of one node.
#[derive(Debug, Clone)]
pub struct Control {
    http: reqwest::Client,
    base: String,
    secret: Vec<u8>,
    admin: String,
}

impl Control {
    /// A control plane for the node at `base` (`http://HOST:PORT`).
    pub fn new(base: &str, secret: &str, admin: Option<&str>) -> anyhow::Result<Self> {
        if !base.starts_with("http://") {
            bail!("--http must be an http:// URL, not {base:?}");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build()
            .context("building the HTTP client")?;
        let secret = secret.as_bytes().to_vec();
        let admin = admin.map_or_else(|| admin_token(&secret), str::to_owned);
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            secret,
            admin,
        })
    }

    /// The shared HTTP client (one connection pool for the whole run).
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Checks the node answers at all, so an absent server is one clear
    /// error rather than thousands of failed connections.
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(self.url("/healthz"))
            .send()
            .await
            .with_context(|| format!("no Hanmadi node answers at {}", self.base))?;
        if !response.status().is_success() {
            bail!("{} answers /healthz with {}", self.base, response.status());
        }
        Ok(())
    }

    /// Makes sure `count` accounts named `{prefix}-{i}` exist and returns
    /// them with tokens, through `POST /v1/admin/users:batch`.
    pub async fn provision(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<User>> {
        #[derive(Serialize)]
        struct Batch {
            users: Vec<NewUser>,
        }
        #[derive(Serialize)]
        struct NewUser {
            username: String,
        }
        #[derive(Deserialize)]
        struct Answer {
            users: Vec<Provisioned>,
        }
        #[derive(Deserialize)]
        struct Provisioned {
            user_id: String,
        }
        let chunks: Vec<std::ops::Range<usize>> = (0..count)
            .step_by(USERS_PER_BATCH)
            .map(|start| start..(start + USERS_PER_BATCH).min(count))
            .collect();
        let batches: Vec<Vec<u64>> = stream::iter(chunks)
            .map(|range| async move {
                let batch = Batch {
                    users: range
                        .map(|i| NewUser {
                            username: format!("{prefix}-{i}"),
                        })
                        .collect(),
                };
                let response = self
                    .http
                    .post(self.url("/v1/admin/users:batch"))
                    .bearer_auth(&self.admin)
                    .json(&batch)
                    .send()
                    .await
                    .context("provisioning accounts")?;
                let answer: Answer = json_or_error(response, "provisioning accounts").await?;
                answer
                    .users
                    .into_iter()
                    .map(|u| u.user_id.parse::<u64>().context("a user id"))
                    .collect::<anyhow::Result<Vec<u64>>>()
            })
            .buffered(PROVISION_CONCURRENCY)
            .try_collect()
            .await?;
        batches
            .into_iter()
            .flatten()
            .map(|id| {
                Ok(User {
                    id,
                    token: mint_jwt(&self.secret, id)?,
                })
            })
            .collect()
    }

    /// Creates a group owned by `owner` with `members`; its id.
    pub async fn create_group(
        &self,
        owner: &User,
        name: &str,
        members: &[u64],
    ) -> anyhow::Result<u64> {
        #[derive(Serialize)]
        struct NewGroup<'a> {
            name: &'a str,
            members: Vec<String>,
        }
        #[derive(Deserialize)]
        struct Created {
            group_id: String,
        }
        let response = self
            .http
            .post(self.url("/v1/groups"))
            .bearer_auth(&owner.token)
            .json(&NewGroup {
                name,
                members: members.iter().map(u64::to_string).collect(),
            })
            .send()
            .await
            .context("creating a group")?;
        let created: Created = json_or_error(response, "creating a group").await?;
        created.group_id.parse().context("a group id")
    }

    /// The live nodes, as `GET /v1/discovery` ranks them.
    pub async fn discover(&self) -> anyhow::Result<Vec<Node>> {
        #[derive(Deserialize)]
        struct Nodes {
            nodes: Vec<Node>,
        }
        let response = self
            .http
            .get(self.url("/v1/discovery"))
            .send()
            .await
            .context("asking for discovery")?;
        let nodes: Nodes = json_or_error(response, "discovery").await?;
        if nodes.nodes.is_empty() {
            bail!("discovery at {} lists no live node", self.base);
        }
        Ok(nodes.nodes)
    }

    /// The server's memory and CPU, from `/proc/PID` when `pid` is given,
    /// else from its `/metrics`.
    pub async fn usage(&self, pid: Option<u32>) -> anyhow::Result<ServerUsage> {
        if let Some(pid) = pid {
            return proc_usage(pid);
        }
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .context("reading /metrics")?
            .text()
            .await
            .context("reading /metrics")?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .ok_or_else(|| anyhow!("/metrics has no {name}"))
        };
        Ok(ServerUsage {
            rss_bytes: value("hanmadi_process_resident_memory_bytes ")?,
            cpu_seconds: value("hanmadi_process_cpu_seconds ")?,
        })
    }
}

/// Memory and CPU of process `pid` from `/proc` (Linux reports CPU in
/// ticks of 1/100 s and memory in 4 KiB pages).
pub fn proc_usage(pid: u32) -> anyhow::Result<ServerUsage> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .with_context(|| format!("no process {pid}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    let rss_pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("unreadable /proc/{pid}/statm"))?;
    let after_name = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 1..))
        .ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<f64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    if fields.len() != 2 {
        bail!("unreadable /proc/{pid}/stat");
    }
    Ok(ServerUsage {
        rss_bytes: rss_pages * 4096.0,
        cpu_seconds: (fields[0] + fields[1]) / 100.0,
    })
}

/// The body as JSON, or the API's error as an error that says what the
/// server refused and why.
async fn json_or_error<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> anyhow::Result<T> {
    let status = response.status();
    if status.is_success() {
        return response
            .json()
            .await
            .with_context(|| format!("{what}: an unreadable answer"));
    }
    let body = response.text().await.unwrap_or_default();
    let hint = match status.as_u16() {
        401 | 403 => " (is --secret the node's secret?)",
        404 => " (is this a Hanmadi node with the admin API?)",
        _ => "",
    };
    bail!(
        "{what}: the server answered {status}{hint}: {}",
        body.trim()
    )
}
