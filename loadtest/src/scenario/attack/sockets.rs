//! Abuse over authenticated connections, through the client library:
//! `sync-loop`, `receipts`, `self-dm`.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, FuturesUnordered, StreamExt as _};
use hanmadi_client::{Client, ConversationId, Deliveries, Event, Target};
use hanmadi_proto::prost::Message as _;

use super::{account_of, accounts, code_name, error_name, Attack, Tally, Target as Node};
use crate::cli::AttackArgs;
use crate::control::{Control, User};
use crate::scenario::prefix;

/// Sends one connection keeps waiting for their ack while filling an inbox
/// or flooding one.
const SENDS_IN_FLIGHT: usize = 32;

/// Wait after a refused connection before the next attempt, so that the
/// tool does not spin while the node refuses it.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// `sync-loop`: accounts of `--per-account` connections each, their
/// inboxes filled with `--fill` messages of `--body-size` bytes; every
/// connection pages through its inbox with `Sync` from the start, again
/// and again, without waiting between pages.
pub(super) async fn sync_loop(
    a: &AttackArgs,
    control: &Control,
    node: &Node,
    tally: &Arc<Tally>,
) -> anyhow::Result<Attack> {
    let users = accounts(a, control, "sync").await?;
    fill_inboxes(a, node, &users).await?;
    let mut attack = Attack::default();
    for i in 0..a.common.connections {
        let user = account_of(a, &users, i).clone();
        let tally_ = Arc::clone(tally);
        keep_open(&mut attack, node, tally, i, user, move |client| {
            let tally = Arc::clone(&tally_);
            async move {
                let mut after = Bytes::new();
                loop {
                    match client.sync(&after, 500).await {
                        Ok(batch) => {
                            tally.served.fetch_add(1, Ordering::Relaxed);
                            tally
                                .served_bytes
                                .fetch_add(batch.encoded_len() as u64, Ordering::Relaxed);
                            after = if batch.has_more {
                                batch.next
                            } else {
                                Bytes::new()
                            };
                        }
                        Err(_) if client.is_closed() => return,
                        Err(e) => tally.count(error_name(&e)),
                    }
                }
            }
        });
    }
    Ok(attack)
}

/// `receipts`: every connection sends itself one message, then `Ack`s its
/// cursor and marks it `Read`, over and over, as fast as the socket takes
/// the frames (neither is answered unless refused).
pub(super) async fn receipts(
    a: &AttackArgs,
    control: &Control,
    node: &Node,
    tally: &Arc<Tally>,
) -> anyhow::Result<Attack> {
    let users = accounts(a, control, "receipts").await?;
    let mut attack = Attack::default();
    for i in 0..a.common.connections {
        let user = account_of(a, &users, i).clone();
        let tally_ = Arc::clone(tally);
        keep_open(&mut attack, node, tally, i, user.clone(), move |client| {
            let tally = Arc::clone(&tally_);
            async move {
                let Ok(ack) = client.send(Target::User(user.id), "receipt").await else {
                    return client.closed().await;
                };
                let Ok(batch) = client.sync(&[], 1).await else {
                    return client.closed().await;
                };
                let conversation = ConversationId::direct(user.id, user.id);
                loop {
                    let sent = client.ack(&batch.next).await.is_ok()
                        && client.read(conversation, ack.message_id).await.is_ok();
                    if !sent {
                        return;
                    }
                    tally.served.fetch_add(2, Ordering::Relaxed);
                }
            }
        });
    }
    Ok(attack)
}

/// `self-dm`: one account's connections send it messages of `--body-size`
/// bytes, each keeping [`SENDS_IN_FLIGHT`] unacknowledged.
pub(super) async fn self_dm(
    a: &AttackArgs,
    control: &Control,
    node: &Node,
    tally: &Arc<Tally>,
) -> anyhow::Result<Attack> {
    let user = control
        .provision(&prefix(&a.common, "attack-self-dm"), 1)
        .await?
        .remove(0);
    let body = body(a);
    let mut attack = Attack::default();
    for i in 0..a.common.connections {
        let (tally_, body) = (Arc::clone(tally), body.clone());
        keep_open(&mut attack, node, tally, i, user.clone(), move |client| {
            let (tally, body) = (Arc::clone(&tally_), body.clone());
            let me = client.user_id();
            async move {
                let mut in_flight = FuturesUnordered::new();
                loop {
                    while in_flight.len() < SENDS_IN_FLIGHT {
                        let (client, body) = (client.clone(), body.clone());
                        in_flight.push(async move { client.send(Target::User(me), body).await });
                    }
                    match in_flight.next().await {
                        Some(Ok(_)) => {
                            tally.served.fetch_add(1, Ordering::Relaxed);
                            tally
                                .served_bytes
                                .fetch_add(body.len() as u64, Ordering::Relaxed);
                        }
                        Some(Err(_)) if client.is_closed() => return,
                        Some(Err(e)) => tally.count(error_name(&e)),
                        None => {}
                    }
                }
            }
        });
    }
    Ok(attack)
}

/// The body attacking messages carry.
fn body(a: &AttackArgs) -> String {
    "x".repeat(a.common.body_size.max(1))
}

/// Sends `--fill` messages from each account to itself, honouring the
/// node's rate limit, before the attack starts.
async fn fill_inboxes(a: &AttackArgs, node: &Node, users: &[User]) -> anyhow::Result<()> {
    let body = body(a);
    let filled: Vec<anyhow::Result<()>> = stream::iter(users.iter().enumerate())
        .map(|(i, user)| {
            let body = body.clone();
            async move {
                let (client, _deliveries) =
                    node.client(i, &user.token, format!("fill-{i}")).await?;
                let mut sent = 0;
                while sent < a.fill {
                    let burst: Vec<_> = (sent..a.fill.min(sent + SENDS_IN_FLIGHT))
                        .map(|_| client.send(Target::User(user.id), body.clone()))
                        .collect();
                    for result in futures::future::join_all(burst).await {
                        match result {
                            Ok(_) => sent += 1,
                            Err(e) => match e.retry_after() {
                                Some(wait) => tokio::time::sleep(wait).await,
                                None => return Err(e.into()),
                            },
                        }
                    }
                }
                client.close().await;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    filled.into_iter().collect()
}

/// Keeps connection `i` of `user` open: `abuse` runs on it until the
/// connection ends, and then a new one is opened. Refusals and the reason
/// each connection closed are tallied.
fn keep_open<F, Fut>(
    attack: &mut Attack,
    node: &Node,
    tally: &Arc<Tally>,
    i: usize,
    user: User,
    abuse: F,
) where
    F: Fn(Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (node, tally) = (node.clone(), Arc::clone(tally));
    attack.spawn(async move {
        loop {
            match node.client(i, &user.token, format!("attack-{i}")).await {
                Ok((client, deliveries)) => {
                    tally.opened();
                    let watcher = tokio::spawn(watch(deliveries, Arc::clone(&tally)));
                    abuse(client.clone()).await;
                    client.close().await;
                    let _ = watcher.await;
                    tally.closed(true);
                }
                Err(e) => {
                    tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tally.count(format!("hello {}", error_name(&e)));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    });
}

/// Drains a connection's events, counting refusals and why it closed.
async fn watch(mut deliveries: Deliveries, tally: Arc<Tally>) {
    while let Some(event) = deliveries.recv().await {
        match event {
            Event::Deliver { .. } => {}
            Event::Refused { error, .. } => tally.count(match error.error_code() {
                Some(code) => code_name(code),
                None => format!("code {}", error.code),
            }),
            Event::Closed { error } => {
                tally.closed_with(error.as_ref());
                return;
            }
        }
    }
}
