//! The reconnect helper finds its node through `GET /v1/discovery`, over
//! every transport, asking over HTTP and HTTPS.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::Transport;
use hanmadi_client::{
    DiscoveryOptions, Encoding, Endpoints, ReconnectOptions, ReconnectingClient, Target,
};
use hanmadi_gateway::ServerOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconnect_helper_connects_where_discovery_points() {
    let node = common::start(ServerOptions {
        // The name the node advertises, and its certificate's.
        hostname: Some("localhost".into()),
        ..ServerOptions::default()
    })
    .await;
    let http = node.server.http_addr().expect("http listener");
    let https = node.server.https_addr().expect("https listener");
    let trust = hanmadi_gateway::tls::client_config_trusting(&node.cert).expect("trust");
    let cases = [
        (Transport::Tcp, hanmadi_client::Transport::Tcp, false),
        (Transport::Tls, hanmadi_client::Transport::Tls, true),
        (
            Transport::Ws(Encoding::Binary),
            hanmadi_client::Transport::Ws,
            false,
        ),
        (
            Transport::Wss(Encoding::Json),
            hanmadi_client::Transport::Wss,
            true,
        ),
    ];
    for (i, (transport, kind, over_https)) in cases.into_iter().enumerate() {
        let (sender, reader) = (100 + 2 * i as u64, 101 + 2 * i as u64);
        node.user(sender).await;
        node.user(reader).await;
        let mut config = node.client_config(reader, "phone", transport);
        // Only discovery says where the node is.
        config.addr = "nowhere.invalid:1".into();
        let url = if over_https {
            format!("https://localhost:{}", https.port())
        } else {
            format!("http://{http}")
        };
        let endpoints = Endpoints::discovery(DiscoveryOptions {
            url,
            region: None,
            transport: kind,
            tls: Some(trust.clone()),
            timeout: Duration::from_secs(5),
        });
        let mut inbox = ReconnectingClient::start(
            config,
            ReconnectOptions {
                endpoints: Some(endpoints),
                ..ReconnectOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        let (alice, _d) = node.connect(sender, "laptop", Transport::Tcp).await;
        alice
            .send(Target::User(reader), format!("via {transport:?}"))
            .await
            .expect("send");
        let received = tokio::time::timeout(Duration::from_secs(10), inbox.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("no error");
        assert_eq!(received.message.body, format!("via {transport:?}"));
    }
}
