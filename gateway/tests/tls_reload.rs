//! The real `hanmadi` binary reloads its TLS certificate on SIGHUP: new
//! connections get the new certificate, connections made before keep
//! working.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod binary;

use binary::Serve;
use hanmadi_client::{Client, ClientConfig, TlsOptions};
use hanmadi_gateway::auth::TokenIssuer;
use hanmadi_gateway::tls::{client_config_trusting, generate_self_signed};
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::chat::UserRecord;
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

const SECRET: &str = "tls-reload-test-secret-0123456789abcdef";

/// Creates user 1 before the node starts.
async fn seed(data: &Path) {
    let backend = FjallBackend::open(&data.join("store"), FjallOptions::default()).expect("open");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    let store = ChatStore::new(kv, StoreConfig::default());
    let user = UserRecord {
        username: "alice".into(),
        ..UserRecord::default()
    };
    store.create_user(1, &user).await.expect("user");
}

/// A new self-signed certificate for `localhost`, installed at `cert` and
/// `key` by rename, as an operator's renewal would.
fn install_new_certificate(dir: &Path, name: &str, cert: &Path, key: &Path) -> std::path::PathBuf {
    let new_cert = dir.join(format!("{name}-cert.pem"));
    let new_key = dir.join(format!("{name}-key.pem"));
    generate_self_signed(&["localhost".into()], &new_cert, &new_key).expect("certificate");
    let staged_cert = dir.join("staged-cert.pem");
    let staged_key = dir.join("staged-key.pem");
    std::fs::copy(&new_cert, &staged_cert).expect("stage cert");
    std::fs::copy(&new_key, &staged_key).expect("stage key");
    std::fs::rename(&staged_cert, cert).expect("install cert");
    std::fs::rename(&staged_key, key).expect("install key");
    new_cert
}

fn config_trusting(addr: &str, trusted: &Path) -> ClientConfig {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let token = TokenIssuer::new(SECRET.as_bytes()).issue(1, now, Duration::from_secs(600));
    ClientConfig::new(addr, token, "reload").with_tls(TlsOptions {
        server_name: "localhost".into(),
        config: client_config_trusting(trusted).expect("trust"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    seed(&data).await;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let first = install_new_certificate(dir.path(), "first", &cert, &key);

    let (cert_arg, key_arg) = (cert.to_str().expect("path"), key.to_str().expect("path"));
    let node = Serve::start(
        &data,
        &[
            "--tls",
            "127.0.0.1:0",
            "--tcp",
            "off",
            "--http",
            "off",
            "--https",
            "off",
            "--cert",
            cert_arg,
            "--key",
            key_arg,
            "--secret",
            SECRET,
        ],
    );
    let addr = node.listening("tls");

    let (before, _deliveries) = Client::connect(config_trusting(&addr, &first))
        .await
        .expect("connect with the first certificate");
    before.ping().await.expect("ping before the reload");

    let second = install_new_certificate(dir.path(), "second", &cert, &key);
    let status = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    assert_eq!(node.line_after("reloaded tls certificate"), "");

    // New connections see the new certificate, and only it.
    let (after, _after_deliveries) = Client::connect(config_trusting(&addr, &second))
        .await
        .expect("connect with the second certificate");
    after.ping().await.expect("ping on a new connection");
    assert!(
        Client::connect(config_trusting(&addr, &first))
            .await
            .is_err(),
        "a new connection was still offered the first certificate"
    );
    // The connection made before the reload still works.
    before.ping().await.expect("ping after the reload");
}
