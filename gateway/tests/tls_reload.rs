//! The real `hanmadi` binary reloads its TLS certificate on SIGHUP: new
//! connections get the new certificate, connections made before keep
//! working.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hanmadi_client::{Client, ClientConfig, TlsOptions};
use hanmadi_gateway::auth::TokenIssuer;
use hanmadi_gateway::tls::{client_config_trusting, generate_self_signed};
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::chat::UserRecord;
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

const SECRET: &str = "tls-reload-test-secret-0123456789abcdef";

/// The node, killed when dropped so a failed assertion leaves no process.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

    let mut child = Command::new(env!("CARGO_BIN_EXE_hanmadi"))
        .args(["serve", "--tls", "127.0.0.1:0"])
        .args(["--tcp", "off", "--http", "off", "--https", "off"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["--secret", SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hanmadi");
    let stdout = child.stdout.take().expect("stdout");
    let node = Node(child);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("hanmadi did not print {what}"))
    };
    let addr = loop {
        if let Some(addr) = next_line("its TLS listener").strip_prefix("listening tls ") {
            break addr.to_owned();
        }
    };

    let (before, _deliveries) = Client::connect(config_trusting(&addr, &first))
        .await
        .expect("connect with the first certificate");
    before.ping().await.expect("ping before the reload");

    let second = install_new_certificate(dir.path(), "second", &cert, &key);
    let status = Command::new("kill")
        .args(["-HUP", &node.0.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    while next_line("the reload") != "reloaded tls certificate" {}

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
