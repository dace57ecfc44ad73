//! `ReconnectingClient` against a small fake chat server with a real inbox:
//! sync paging, live pushes (with deliberate overlap), connections killed
//! mid-stream, a send whose answer is lost, and the ways the helper gives
//! up.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{config, cursor, deliver, error, welcome, within, Listener, Peer, Refused};
use hanmadi_client::{
    ClientError, Endpoints, ErrorAction, ErrorCode, ReconnectOptions, ReconnectingClient, Target,
};
use hanmadi_proto::{client_frame, pb, server_frame, ConversationId};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the fake server knows; tests wait on changes to it.
#[derive(Default)]
struct State {
    /// The user's inbox; entry `i` has cursor `i + 1`.
    entries: Vec<pb::Deliver>,
    /// Live connections, by connection number.
    live: HashMap<u64, mpsc::UnboundedSender<Command>>,
    next_connection: u64,
    hellos: usize,
    /// Refuse every `Hello` with `TOKEN_INVALID`.
    reject_tokens: bool,
    /// Answer every `Sync` after a non-empty cursor with `CURSOR_EXPIRED`.
    expire_cursors: bool,
    /// Answer every `Sync` with the next entry not yet answered, a `next`
    /// fixed at entry 4's cursor, and more to come: a broken server whose
    /// second page no longer moves the sync on.
    stall_at_entry_4: bool,
    /// Entries answered so far in that mode.
    stall_answered: usize,
    /// On connect, push the newest this-many entries live although the
    /// client will sync them too, as a server catching up may.
    overlap: usize,
    /// Close the connection instead of answering this many more `Send`s.
    lose_sends: usize,
    /// Every `client_msg_id` received, in order, answered or not.
    sends: Vec<Bytes>,
    /// Exactly-once: `client_msg_id` → message id.
    stored: HashMap<Bytes, u64>,
    /// Every `Ack` cursor received.
    acks: Vec<Bytes>,
}

enum Command {
    Deliver(pb::Deliver),
    /// Close, first sending an `Error` with this code if any.
    Kill(Option<ErrorCode>),
}

struct FakeChat {
    addr: String,
    state: watch::Sender<State>,
    accepting: JoinHandle<()>,
}

impl FakeChat {
    async fn start() -> Self {
        let listener = Listener::bind().await;
        let addr = listener.addr.clone();
        let state = watch::Sender::new(State::default());
        let accepting = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let peer = listener.accept().await;
                    tokio::spawn(serve(peer, state.clone()));
                }
            }
        });
        Self {
            addr,
            state,
            accepting,
        }
    }

    /// Commits `n` entries and pushes them to every live connection, under
    /// one update so no connection registers between the two.
    fn commit(&self, n: usize) {
        self.state.send_modify(|state| {
            for _ in 0..n {
                let entry = deliver(state.entries.len());
                for connection in state.live.values() {
                    let _ = connection.send(Command::Deliver(entry.clone()));
                }
                state.entries.push(entry);
            }
        });
    }

    fn kill_all(&self, code: Option<ErrorCode>) {
        self.state.send_modify(|state| {
            for (_, connection) in state.live.drain() {
                let _ = connection.send(Command::Kill(code));
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        self.state.send_modify(change);
    }

    fn read<T>(&self, look: impl FnOnce(&State) -> T) -> T {
        look(&self.state.borrow())
    }

    async fn wait_until(&self, condition: impl FnMut(&State) -> bool) {
        within(self.state.subscribe().wait_for(condition))
            .await
            .expect("server state alive");
    }

    /// Starts a reconnecting client against this server.
    async fn client(&self, options: ReconnectOptions) -> ReconnectingClient {
        within(ReconnectingClient::start(config(&self.addr), options))
            .await
            .expect("starts")
    }

    /// Stops accepting connections: later attempts are refused.
    async fn stop_listening(&self) {
        self.accepting.abort();
        while !self.accepting.is_finished() {
            tokio::task::yield_now().await;
        }
    }
}

/// One connection of the fake server.
async fn serve(mut peer: Peer<TcpStream>, state: watch::Sender<State>) {
    let Some(hello) = peer.recv().await else {
        return;
    };
    state.send_modify(|state| state.hellos += 1);
    if state.borrow().reject_tokens {
        peer.send(hello.req_id, error(ErrorCode::TokenInvalid, "revoked"))
            .await;
        return;
    }
    let (commands, mut inbox) = mpsc::unbounded_channel();
    let mut id = 0;
    state.send_modify(|state| {
        id = state.next_connection;
        state.next_connection += 1;
        let from = state.entries.len().saturating_sub(state.overlap);
        for entry in &state.entries[from..] {
            let _ = commands.send(Command::Deliver(entry.clone()));
        }
        state.live.insert(id, commands);
    });
    peer.send(hello.req_id, server_frame::Kind::Welcome(welcome(42, 0)))
        .await;
    loop {
        tokio::select! {
            frame = peer.recv() => {
                let Some(frame) = frame else { break };
                let Some(kind) = frame.kind else { continue };
                match answer(&state, kind) {
                    Answer::Reply(reply) => peer.send(frame.req_id, reply).await,
                    Answer::Nothing => {}
                    Answer::HangUp => break,
                }
            }
            command = inbox.recv() => match command {
                Some(Command::Deliver(entry)) => peer.send(0, server_frame::Kind::Deliver(entry)).await,
                Some(Command::Kill(code)) => {
                    if let Some(code) = code {
                        peer.send(0, error(code, "go away")).await;
                    }
                    break;
                }
                None => break,
            },
        }
    }
    state.send_modify(|state| {
        state.live.remove(&id);
    });
}

enum Answer {
    Reply(server_frame::Kind),
    Nothing,
    HangUp,
}

fn answer(state: &watch::Sender<State>, kind: client_frame::Kind) -> Answer {
    let mut answer = Answer::Nothing;
    state.send_modify(|state| {
        answer = match kind {
            client_frame::Kind::Sync(sync) => {
                if state.expire_cursors && !sync.after.is_empty() {
                    Answer::Reply(error(ErrorCode::CursorExpired, "trimmed"))
                } else if state.stall_at_entry_4 {
                    let entry = state.entries[state.stall_answered].clone();
                    state.stall_answered += 1;
                    Answer::Reply(server_frame::Kind::SyncBatch(pb::SyncBatch {
                        messages: vec![entry],
                        next: cursor(4),
                        has_more: true,
                    }))
                } else {
                    let start = state
                        .entries
                        .iter()
                        .position(|entry| entry.cursor > sync.after)
                        .unwrap_or(state.entries.len());
                    let end = (start + sync.limit.max(1) as usize).min(state.entries.len());
                    let messages = state.entries[start..end].to_vec();
                    let next = messages
                        .last()
                        .map_or_else(|| sync.after.clone(), |entry| entry.cursor.clone());
                    Answer::Reply(server_frame::Kind::SyncBatch(pb::SyncBatch {
                        messages,
                        next,
                        has_more: end < state.entries.len(),
                    }))
                }
            }
            client_frame::Kind::Send(send) => {
                state.sends.push(send.client_msg_id.clone());
                if state.lose_sends > 0 {
                    state.lose_sends -= 1;
                    Answer::HangUp
                } else {
                    let next_id = 9000 + state.stored.len() as u64;
                    let message_id = *state
                        .stored
                        .entry(send.client_msg_id.clone())
                        .or_insert(next_id);
                    Answer::Reply(server_frame::Kind::SendAck(pb::SendAck {
                        client_msg_id: send.client_msg_id,
                        conversation: Some(ConversationId::group(1).to_proto()),
                        message_id,
                        sent_at: 1,
                    }))
                }
            }
            client_frame::Kind::Ack(ack) => {
                state.acks.push(ack.cursor);
                Answer::Nothing
            }
            client_frame::Kind::Ping(_) => Answer::Reply(server_frame::Kind::Pong(pb::Pong {})),
            other => panic!("the fake server does not expect {other:?}"),
        };
    });
    answer
}

fn fast_options() -> ReconnectOptions {
    ReconnectOptions {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        sync_limit: 2,
        ..ReconnectOptions::default()
    }
}

/// The helper's final error, after which the stream must end.
async fn final_error(client: &mut ReconnectingClient) -> ClientError {
    let error = within(client.next())
        .await
        .expect("an item")
        .expect_err("the helper gave up");
    assert!(within(client.next()).await.is_none());
    error
}

/// The ids of the next `n` messages, which must come without error.
async fn take(client: &mut ReconnectingClient, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let received = within(client.next())
            .await
            .expect("stream still open")
            .expect("no error");
        ids.push(received.message.message_id);
    }
    ids
}

fn ids(range: std::ops::Range<u64>) -> Vec<u64> {
    range.map(|i| 1000 + i).collect()
}

#[tokio::test]
async fn the_inbox_survives_reconnects_without_gap_duplicate_or_reorder() {
    let chat = FakeChat::start().await;
    chat.update(|state| state.overlap = 2);
    chat.commit(3);
    let mut client = chat.client(fast_options()).await;

    // Synced in pages of two, with the newest two also pushed live.
    assert_eq!(take(&mut client, 3).await, ids(0..3));
    chat.commit(2);
    assert_eq!(take(&mut client, 2).await, ids(3..5));

    // Killed as a slow consumer; more commits land around the reconnect.
    chat.kill_all(Some(ErrorCode::SlowConsumer));
    chat.commit(3);
    assert_eq!(take(&mut client, 3).await, ids(5..8));
    chat.commit(2);
    assert_eq!(take(&mut client, 2).await, ids(8..10));

    // Dropped without a word this time.
    chat.kill_all(None);
    chat.commit(1);
    assert_eq!(take(&mut client, 1).await, ids(10..11));
    assert_eq!(client.last_cursor(), &cursor(10));
    assert_eq!(chat.read(|state| state.hellos), 3);

    // Nothing extra is queued: the next message is the next entry.
    chat.commit(1);
    assert_eq!(take(&mut client, 1).await, ids(11..12));

    within(client.ack()).await.expect("ack sent");
    chat.wait_until(|state| state.acks.last() == Some(&cursor(11)))
        .await;
    within(client.close()).await;
    chat.wait_until(|state| state.live.is_empty()).await;
}

#[tokio::test]
async fn resumes_after_a_stored_cursor() {
    let chat = FakeChat::start().await;
    chat.commit(6);
    let options = ReconnectOptions {
        start_cursor: cursor(3),
        ..fast_options()
    };
    let mut client = chat.client(options).await;
    assert_eq!(client.last_cursor(), &cursor(3));
    assert_eq!(take(&mut client, 2).await, ids(4..6));
}

#[tokio::test]
async fn a_send_whose_answer_was_lost_is_resent_with_the_same_id() {
    let chat = FakeChat::start().await;
    chat.update(|state| state.lose_sends = 1);
    let client = chat.client(fast_options()).await;
    let handle = client.handle();
    let ack = within(handle.send(Target::Group(1), "hello"))
        .await
        .expect("acknowledged after a reconnect");
    let sends = chat.read(|state| state.sends.clone());
    assert_eq!(sends.len(), 2, "sent, lost, sent again");
    assert_eq!(sends[0], sends[1], "one client_msg_id for both");
    assert_eq!(ack.client_msg_id, sends[0]);
    assert_eq!(chat.read(|state| state.stored.len()), 1);
    assert_eq!(chat.read(|state| state.hellos), 2);
}

#[tokio::test]
async fn a_give_up_error_while_reconnecting_ends_the_stream() {
    let chat = FakeChat::start().await;
    let mut client = chat.client(fast_options()).await;
    chat.update(|state| state.reject_tokens = true);
    chat.kill_all(Some(ErrorCode::ServerDraining));

    let error = final_error(&mut client).await;
    assert_eq!(
        error.server_error().and_then(|e| e.error_code()),
        Some(ErrorCode::TokenInvalid)
    );
    assert_eq!(error.action(), ErrorAction::GiveUp);

    let sent = within(client.send(Target::User(7), "anyone?")).await;
    let error = sent.expect_err("the helper has stopped");
    assert!(
        matches!(error, ClientError::Closed { cause: Some(_) }),
        "{error:?}"
    );
    assert_eq!(error.action(), ErrorAction::GiveUp);
}

/// A sync whose `next` stops moving ends the helper with a protocol
/// error, but what its pages brought first is handed out: the helper's
/// position already counts it, and a restart from that position would
/// never see it again.
#[tokio::test]
async fn a_stalled_sync_hands_out_what_it_brought_before_ending() {
    let chat = FakeChat::start().await;
    chat.update(|state| state.stall_at_entry_4 = true);
    chat.commit(6);
    let mut client = chat.client(fast_options()).await;
    // Page one: entry 0, next skipping ahead to entry 4; page two: entry
    // 1, next still at entry 4.
    assert_eq!(take(&mut client, 2).await, ids(0..2));
    let error = final_error(&mut client).await;
    assert!(matches!(error, ClientError::Protocol(_)), "{error:?}");
    assert_eq!(client.last_cursor(), &cursor(1));
}

#[tokio::test]
async fn an_expired_cursor_ends_the_stream() {
    let chat = FakeChat::start().await;
    chat.update(|state| state.expire_cursors = true);
    let options = ReconnectOptions {
        start_cursor: cursor(0),
        ..fast_options()
    };
    let mut client = chat.client(options).await;
    let error = final_error(&mut client).await;
    assert_eq!(
        error.server_error().and_then(|e| e.error_code()),
        Some(ErrorCode::CursorExpired)
    );
}

#[tokio::test]
async fn gives_up_after_the_allowed_attempts() {
    let chat = FakeChat::start().await;
    let options = ReconnectOptions {
        max_attempts: Some(3),
        ..fast_options()
    };
    let mut client = chat.client(options).await;
    chat.stop_listening().await;
    chat.kill_all(None);
    let error = final_error(&mut client).await;
    assert!(matches!(error, ClientError::Io(_)), "{error:?}");
    assert_eq!(chat.read(|state| state.hellos), 1);
}

#[tokio::test]
async fn the_first_attempt_is_not_retried() {
    let refused = Refused::bind();
    let started = within(ReconnectingClient::start(
        config(&refused.addr),
        fast_options(),
    ))
    .await;
    assert!(matches!(started, Err(ClientError::Io(_))), "{started:?}");
}

#[tokio::test]
async fn endpoints_are_taken_in_turn() {
    let down = Refused::bind();
    let down_addr = down.addr.clone();
    let chat = FakeChat::start().await;
    chat.commit(1);
    let options = ReconnectOptions {
        endpoints: Some(Endpoints::list([chat.addr.clone(), down_addr])),
        ..fast_options()
    };
    let mut client = within(ReconnectingClient::start(config("unused:1"), options))
        .await
        .expect("the first endpoint is up");
    assert_eq!(take(&mut client, 1).await, ids(0..1));
    // The next attempt goes to the dead endpoint, the one after that back
    // to the live one.
    chat.kill_all(None);
    chat.commit(1);
    assert_eq!(take(&mut client, 1).await, ids(1..2));
    assert_eq!(chat.read(|state| state.hellos), 2);
}
