//! The reading side of the seam checks in `e2e.rs`, `cluster.rs` and
//! `cluster_fdb.rs`: a reconnecting reader whose connection is closed at
//! intervals while it reads, so every stretch of its inbox comes over a
//! different connection.

use std::time::Duration;

use bytes::Bytes;
use hanmadi_client::ReconnectingClient;

/// The next message `inbox` hands its user, as `(message id, cursor)`.
/// Fails the test past `within`, or when the stream ends or fails.
pub async fn next_entry(inbox: &mut ReconnectingClient, within: Duration) -> (u64, Bytes) {
    let r = tokio::time::timeout(within, inbox.next())
        .await
        .unwrap_or_else(|_| panic!("no progress within {within:?}"))
        .expect("stream open")
        .expect("no final error");
    (r.message.message_id, r.cursor)
}

/// Reads `total` messages from `inbox` as `(message id, cursor)`, closing
/// its connection `moves` times at even intervals; a close waits for the
/// next message when the reader is between connections. Fails the test
/// if a message takes over 20 s or the moves do not all happen.
pub async fn read_while_moving(
    inbox: &mut ReconnectingClient,
    total: usize,
    moves: usize,
) -> Vec<(u64, Bytes)> {
    let every = total / (moves + 1);
    let mut received = Vec::with_capacity(total);
    let mut moved = 0;
    while received.len() < total {
        received.push(next_entry(inbox, Duration::from_secs(20)).await);
        if moved < moves && received.len() >= (moved + 1) * every {
            if let Some(c) = inbox.client() {
                c.close().await;
                moved += 1;
            }
        }
    }
    assert_eq!(moved, moves, "moved only {moved} times");
    received
}
