//! The node-to-node link (DESIGN §6): one persistent TCP connection per
//! pair of live nodes, over which a node tells the others at once what
//! they must act on (inbox entries to pull, caches to drop, users who just
//! connected). The change feed carries the same events later, so a lost
//! or late one only delays (`super::delivery`).
//!
//! Framing is the client protocol's: a 4-byte big-endian length, then a
//! protobuf message. The node with the lower id dials; the other accepts.
//! Both prove they hold the cluster's shared secret before anything else
//! is read: each sends a [`LinkHello`] with a fresh nonce, then a
//! [`LinkProof`], an HMAC-SHA256 over its role (dialer or acceptor), its
//! own hello and the other's, so a proof can be neither forged without the
//! secret, nor replayed, nor relayed between two nodes that both accepted
//! a stranger's connection. Every later frame carries a tag, an HMAC under
//! a key of that link and direction over the frame's number and bytes: a
//! frame that was injected, altered, replayed or reordered closes the
//! link. Until the handshake ends, frames are small and handshakes in
//! progress are capped, so strangers hold little of a node.
//! Outbound events wait in a bounded queue per link; when it is full they
//! are dropped and counted, never waited for.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use futures::{SinkExt as _, StreamExt as _};
use hanmadi_proto::{CodecError, FrameCodec};
use hanmadi_storage::chat::FeedEvent;
use hmac::{Hmac, Mac as _};
use prost::Message;
use sha2::Sha256;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::peers::Peers;
use crate::metrics::Metrics;

type HmacSha256 = Hmac<Sha256>;

/// Largest link frame: events stay well under it (`USERS_PER_EVENT`, and
/// the notifier's budget for messages).
pub(super) const MAX_LINK_FRAME: usize = 1 << 20;
/// Events waiting for one link; more are dropped (the feed has them).
const LINK_QUEUE: usize = 4096;
/// Bytes of events waiting for one link; more are dropped too, so a stalled
/// peer holds at most this much of this node's memory.
const LINK_QUEUE_BYTES: usize = 32 << 20;
/// Most users one event names, so that the event stays well under a link
/// frame (a user id takes at most 10 bytes).
pub(super) const USERS_PER_EVENT: usize = 16_384;
/// Longest a dial or a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two dials of a peer that cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// What a proof's HMAC covers first, so it serves no other purpose.
const PROOF_LABEL: &[u8] = b"hanmadi node link v2";
/// What a frame key's HMAC covers first.
const FRAME_KEY_LABEL: &[u8] = b"hanmadi node link v2 frames";
/// Largest frame before the handshake ends: a hello or a proof.
const HANDSHAKE_FRAME: usize = 256;
/// Handshakes of accepted connections in progress at once; a connection
/// past them is closed at once.
const MAX_HANDSHAKES: usize = 64;
/// Bytes of the tag after each frame.
const TAG_LEN: usize = 16;

/// The first frame each side sends.
#[derive(Clone, PartialEq, Message)]
pub struct LinkHello {
    /// The sender's node id.
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    /// The epoch of the sender's lease on that id.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// Fresh random bytes the other side's proof must cover.
    #[prost(bytes = "vec", tag = "3")]
    pub nonce: Vec<u8>,
}

/// The second frame: HMAC-SHA256, keyed with the shared secret, over
/// [`PROOF_LABEL`], the sender's role, its encoded hello and the
/// receiver's.
#[derive(Clone, PartialEq, Message)]
pub struct LinkProof {
    /// The HMAC.
    #[prost(bytes = "vec", tag = "1")]
    pub mac: Vec<u8>,
}

/// Every later frame: something the receiving node acts on.
#[derive(Clone, PartialEq, Message)]
pub struct LinkEvent {
    /// Inbox entries to pull and caches to drop, as in the change feed.
    #[prost(message, optional, tag = "1")]
    pub change: Option<FeedEvent>,
    /// The last inbox cursor the change's users' entries can have: a
    /// connection already past it pulls nothing. Empty: pull regardless.
    #[prost(bytes = "bytes", tag = "2")]
    pub until: Bytes,
    /// Users who connected to the sender or left it: presence cached for
    /// them is stale.
    #[prost(uint64, repeated, tag = "3")]
    pub present: Vec<u64>,
    /// Messages the sender committed, each for one user with the inbox
    /// entry its commit proved to come right before it: a connection whose
    /// last written entry is that one writes the message without reading
    /// its inbox. In each user's commit order.
    #[prost(message, repeated, tag = "4")]
    pub deliveries: Vec<LinkDelivery>,
}

/// One message for one user's connections (see [`LinkEvent::deliveries`]).
#[derive(Clone, PartialEq, Message)]
pub struct LinkDelivery {
    /// The recipient.
    #[prost(uint64, tag = "1")]
    pub user: u64,
    /// The new entry's inbox cursor.
    #[prost(bytes = "bytes", tag = "2")]
    pub cursor: Bytes,
    /// The entry right before it; empty: it is the inbox's first.
    #[prost(bytes = "bytes", tag = "3")]
    pub before: Bytes,
    /// The message, encoded (`hanmadi.v1.Message`).
    #[prost(bytes = "bytes", tag = "4")]
    pub message: Bytes,
}

/// What a node does with an event from a peer.
pub type EventHandler = Arc<dyn Fn(LinkEvent) + Send + Sync>;

/// Which end of a link a node is: the proofs and frame keys of the two
/// differ, so neither end's can stand for the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Dialer,
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"dialer",
            Role::Acceptor => b"acceptor",
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        }
    }
}

/// One direction of an authenticated link: its key and the number of the
/// next frame.
struct FrameTags {
    key: HmacSha256,
    next: u64,
}

impl FrameTags {
    /// The tag of `frame` as the next frame of this direction.
    fn tag(&self, frame: &[u8]) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(&self.next.to_be_bytes());
        mac.update(frame);
        mac
    }

    /// `frame` with the tag that goes after it.
    fn seal(&mut self, frame: Bytes) -> Sealed {
        let mac = self.tag(&frame).finalize().into_bytes();
        self.next += 1;
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&mac[..TAG_LEN]);
        Sealed { frame, tag }
    }

    /// The frame `sealed` carries, if its tag is the next one expected.
    fn open<'a>(&mut self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let body_len = sealed.len().checked_sub(TAG_LEN)?;
        let (frame, tag) = sealed.split_at(body_len);
        self.tag(frame).verify_truncated_left(tag).ok()?;
        self.next += 1;
        Some(frame)
    }
}

/// A link frame and the tag written right after it, in the same frame.
struct Sealed {
    frame: Bytes,
    tag: [u8; TAG_LEN],
}

/// The link's framing, the client protocol's: a sealed frame goes out
/// behind one prefix without being joined to its tag first (the frame of
/// a broadcast is shared by every link, each with its own tag).
struct LinkCodec(FrameCodec);

impl Decoder for LinkCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        self.0.decode_frame(src)
    }
}

impl Encoder<Bytes> for LinkCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.0.encode_payload(&frame, dst)
    }
}

impl Encoder<Sealed> for LinkCodec {
    type Error = CodecError;

    fn encode(&mut self, sealed: Sealed, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.0.encode_parts(&[&sealed.frame, &sealed.tag], dst)
    }
}

/// A link that passed its handshake: the socket, the peer's node id, and
/// the tags of each direction.
struct Authenticated {
    framed: Framed<TcpStream, LinkCodec>,
    node: u64,
    outbound: FrameTags,
    inbound: FrameTags,
}

struct Open {
    /// Tells one link from its successor to the same peer.
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// Bytes in `tx`.
    queued: Arc<AtomicUsize>,
}

impl Open {
    /// Queues `frame` if the link has room for it, in events and in bytes.
    fn push(&self, frame: Bytes) -> bool {
        let len = frame.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > LINK_QUEUE_BYTES
            || self.tx.try_send(frame).is_err()
        {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// This node's links to its peers.
pub struct Links {
    me: u64,
    epoch: u64,
    mac: HmacSha256,
    peers: Arc<Peers>,
    open: DashMap<u64, Open>,
    dialing: DashMap<u64, ()>,
    next_id: AtomicU64,
    /// Handshakes of accepted connections in progress.
    handshakes: Arc<Semaphore>,
    muted: AtomicBool,
    metrics: Arc<Metrics>,
    handler: OnceLock<EventHandler>,
    on_change: OnceLock<Arc<dyn Fn() + Send + Sync>>,
    /// Counts links opened and closed, for [`Links::wait_open`].
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The HMAC state is the secret: never let it reach a log.
        f.debug_struct("Links")
            .field("me", &self.me)
            .field("open", &self.open.len())
            .finish_non_exhaustive()
    }
}

impl Links {
    /// Links of the node holding `node_id` under `epoch`, authenticated
    /// with the cluster's `secret`, to the nodes `peers` lists.
    pub fn new(
        node_id: u64,
        epoch: u64,
        secret: &[u8],
        peers: Arc<Peers>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            me: node_id,
            epoch,
            mac: HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length"),
            peers,
            open: DashMap::new(),
            dialing: DashMap::new(),
            next_id: AtomicU64::new(1),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            muted: AtomicBool::new(false),
            metrics,
            handler: OnceLock::new(),
            on_change: OnceLock::new(),
            changes: watch::Sender::new(0),
        }
    }

    /// Calls `f` whenever a link opens or closes: events sent while the
    /// peer was unreachable are lost, so what they would have changed is
    /// stale.
    pub fn on_change(&self, f: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.on_change.set(f);
    }

    fn changed(&self) {
        if let Some(f) = self.on_change.get() {
            f();
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Waits until the ids of the nodes with an open link (sorted, as
    /// [`Links::open_to`] gives them) satisfy `done`.
    pub async fn wait_open(&self, done: impl Fn(&[u64]) -> bool) {
        // Subscribed before the check: a change after it wakes the wait.
        let mut changes = self.changes.subscribe();
        while !done(&self.open_to()) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Sends `event` to `node` if a link to it is open and has room;
    /// otherwise drops it (the change feed carries it too).
    pub fn send(&self, node: u64, event: &LinkEvent) {
        self.send_encoded(node, Bytes::from(event.encode_to_vec()));
    }

    /// Sends `event` to every peer with an open link.
    pub fn broadcast(&self, event: &LinkEvent) {
        let frame = Bytes::from(event.encode_to_vec());
        let nodes: Vec<u64> = self.open.iter().map(|e| *e.key()).collect();
        for node in nodes {
            self.send_encoded(node, frame.clone());
        }
    }

    fn send_encoded(&self, node: u64, frame: Bytes) {
        let queued = !self.muted.load(Ordering::Relaxed)
            && self.open.get(&node).is_some_and(|o| o.push(frame));
        let m = &self.metrics;
        let counter = if queued {
            &m.cluster_events_sent
        } else {
            &m.cluster_events_dropped
        };
        counter.inc();
    }

    /// Drops every outbound event while `muted` (for proving that delivery
    /// does not rest on the link).
    pub fn set_muted(&self, muted: bool) {
        self.muted.store(muted, Ordering::Relaxed);
    }

    /// Events queued to a link so far, and events dropped (no open link,
    /// a full queue, or muted).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.metrics.cluster_events_sent.get(),
            self.metrics.cluster_events_dropped.get(),
        )
    }

    /// Node ids with an open link.
    pub fn open_to(&self) -> Vec<u64> {
        let mut nodes: Vec<u64> = self.open.iter().map(|e| *e.key()).collect();
        nodes.sort_unstable();
        nodes
    }

    /// Accepts links on `listener` and dials every live peer with a higher
    /// id, re-checking the peer table every `refresh` and when it changes,
    /// until `shutdown`.
    /// Events from peers go to `handler`.
    pub fn spawn(
        self: &Arc<Self>,
        listener: Option<TcpListener>,
        handler: EventHandler,
        refresh: Duration,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let _ = self.handler.set(handler);
        if let Some(listener) = listener {
            let (links, tracker2, shutdown) = (Arc::clone(self), tracker.clone(), shutdown.clone());
            tracker.spawn(async move { links.accept_loop(listener, tracker2, shutdown).await });
        }
        let (links, tracker2) = (Arc::clone(self), tracker.clone());
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = links.peers.changed() => {}
                    () = shutdown.cancelled() => return,
                }
                for (&node, _) in links.peers.snapshot().iter() {
                    if node > links.me && links.dialing.insert(node, ()).is_none() {
                        let (l, s) = (Arc::clone(&links), shutdown.clone());
                        tracker2.spawn(async move { l.dial_loop(node, s).await });
                    }
                }
            }
        });
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "link accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let Ok(permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
                self.metrics.cluster_links_refused.inc();
                tracing::warn!("refused a node link: too many handshakes in progress");
                continue;
            };
            let (links, shutdown) = (Arc::clone(&self), shutdown.clone());
            tracker.spawn(async move {
                let authenticated = links.handshake(stream, Role::Acceptor, None).await;
                drop(permit);
                match authenticated {
                    Ok(link) => links.run(link, shutdown).await,
                    Err(e) => tracing::warn!(error = %e, "refused a node link"),
                }
            });
        }
    }

    /// Keeps a link to `node` open while it is a live peer, dialing again
    /// with backoff after each failure or close.
    async fn dial_loop(self: Arc<Self>, node: u64, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            let Some(peer) = self.peers.snapshot().get(&node).cloned() else {
                break;
            };
            let dialed = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&peer.link))
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let outcome = match dialed {
                Ok(stream) => self.handshake(stream, Role::Dialer, Some(node)).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(link) => {
                    backoff = Duration::from_millis(50);
                    Arc::clone(&self).run(link, shutdown.clone()).await;
                }
                Err(e) => tracing::debug!(node, link = %peer.link, error = %e, "node link failed"),
            }
            let pause = backoff.mul_f64(0.5 + rand::random::<f64>());
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.dialing.remove(&node);
    }

    /// The secret's HMAC over `label`, then each part with its length.
    fn keyed(&self, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(label);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// What the end in `role` that sent `hello` proves to the end that
    /// sent `theirs`.
    fn proof(&self, role: Role, hello: &[u8], theirs: &[u8]) -> HmacSha256 {
        self.keyed(PROOF_LABEL, &[role.label(), hello, theirs])
    }

    /// The tags of the frames the end in `role` sends on the link of these
    /// hellos.
    fn frame_tags(&self, role: Role, dialer: &[u8], acceptor: &[u8]) -> FrameTags {
        let key = self
            .keyed(FRAME_KEY_LABEL, &[role.label(), dialer, acceptor])
            .finalize()
            .into_bytes();
        FrameTags {
            key: HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length"),
            next: 0,
        }
    }

    /// Both sides prove they hold the secret; returns the link with the
    /// peer's node id, which must be `expect` when given.
    async fn handshake(
        &self,
        stream: TcpStream,
        role: Role,
        expect: Option<u64>,
    ) -> Result<Authenticated, String> {
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, LinkCodec(FrameCodec::new(HANDSHAKE_FRAME)));
        let exchange = async {
            let nonce: [u8; 32] = rand::random();
            let hello = LinkHello {
                node_id: self.me,
                epoch: self.epoch,
                nonce: nonce.to_vec(),
            }
            .encode_to_vec();
            framed
                .send(Bytes::from(hello.clone()))
                .await
                .map_err(|e| e.to_string())?;
            let theirs = next_frame(&mut framed).await?;
            let peer = LinkHello::decode(theirs.as_ref()).map_err(|e| e.to_string())?;
            if peer.nonce.len() < 16 {
                return Err("short nonce".to_owned());
            }
            let mac = self
                .proof(role, &hello, &theirs)
                .finalize()
                .into_bytes()
                .to_vec();
            framed
                .send(Bytes::from(LinkProof { mac }.encode_to_vec()))
                .await
                .map_err(|e| e.to_string())?;
            let proof = LinkProof::decode(next_frame(&mut framed).await?.as_ref())
                .map_err(|e| e.to_string())?;
            self.proof(role.other(), &theirs, &hello)
                .verify_slice(&proof.mac)
                .map_err(|_| "the peer does not hold the cluster's secret".to_owned())?;
            if peer.node_id == self.me || expect.is_some_and(|n| n != peer.node_id) {
                return Err(format!("unexpected peer node {}", peer.node_id));
            }
            let (dialer, acceptor) = match role {
                Role::Dialer => (&hello[..], &theirs[..]),
                Role::Acceptor => (&theirs[..], &hello[..]),
            };
            Ok((
                peer.node_id,
                self.frame_tags(role, dialer, acceptor),
                self.frame_tags(role.other(), dialer, acceptor),
            ))
        };
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
            .await
            .map_err(|_| "handshake timed out".to_owned())
            .and_then(|r| r);
        if outcome.is_err() && role == Role::Acceptor {
            // Counted before the socket closes, so whoever sees the close
            // sees the count.
            self.metrics.cluster_links_refused.inc();
        }
        let (node, outbound, inbound) = outcome?;
        *framed.codec_mut() = LinkCodec(FrameCodec::new(MAX_LINK_FRAME + TAG_LEN));
        Ok(Authenticated {
            framed,
            node,
            outbound,
            inbound,
        })
    }

    /// Serves an authenticated link until it fails, `shutdown`, or a newer
    /// link to the same peer replaces it.
    async fn run(self: Arc<Self>, link: Authenticated, shutdown: CancellationToken) {
        let Authenticated {
            framed,
            node,
            mut outbound,
            mut inbound,
        } = link;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let open = Open {
            id,
            tx,
            queued: Arc::clone(&queued),
        };
        if self.open.insert(node, open).is_none() {
            self.metrics.cluster_links.inc();
        }
        self.changed();
        tracing::info!(node, "node link up");
        let (mut sink, mut stream) = framed.split();
        let handler = self.handler.get().cloned();
        let write = async {
            let mut batch = Vec::with_capacity(64);
            while rx.recv_many(&mut batch, 64).await > 0 {
                for frame in batch.drain(..) {
                    // Counted until the socket's buffer has taken it, so
                    // that frames held here while the peer stalls count too.
                    let len = frame.len();
                    sink.feed(outbound.seal(frame)).await?;
                    queued.fetch_sub(len, Ordering::Relaxed);
                }
                sink.flush().await?;
            }
            Ok::<(), hanmadi_proto::CodecError>(())
        };
        let read = async {
            while let Some(frame) = stream.next().await {
                let frame = frame?;
                let Some(event) = inbound.open(&frame) else {
                    return Err(hanmadi_proto::CodecError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "a frame whose tag does not hold",
                    )));
                };
                let event = LinkEvent::decode(event)?;
                if let Some(handler) = &handler {
                    handler(event);
                }
            }
            Ok::<(), hanmadi_proto::CodecError>(())
        };
        let ended = tokio::select! {
            r = write => r,
            r = read => r,
            () = shutdown.cancelled() => Ok(()),
        };
        if self.open.remove_if(&node, |_, o| o.id == id).is_some() {
            self.metrics.cluster_links.dec();
        }
        self.changed();
        match ended {
            Ok(()) => tracing::info!(node, "node link closed"),
            Err(e) => tracing::info!(node, error = %e, "node link failed"),
        }
    }
}

async fn next_frame(framed: &mut Framed<TcpStream, LinkCodec>) -> Result<Bytes, String> {
    match framed.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("closed during the handshake".to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use hmac::Mac as _;

    use super::{FrameTags, HmacSha256, Role, TAG_LEN};

    fn tags(role: Role) -> FrameTags {
        let mut mac = HmacSha256::new_from_slice(b"secret").unwrap();
        mac.update(role.label());
        FrameTags {
            key: HmacSha256::new_from_slice(&mac.finalize().into_bytes()).unwrap(),
            next: 0,
        }
    }

    /// What `out` puts on the wire for `frame`: the frame, then its tag.
    fn sealed(out: &mut FrameTags, frame: &'static [u8]) -> Vec<u8> {
        let s = out.seal(Bytes::from_static(frame));
        [&s.frame[..], &s.tag].concat()
    }

    #[test]
    fn a_frame_opens_once_in_order_unaltered_and_only_in_its_direction() {
        let mut out = tags(Role::Dialer);
        let first = sealed(&mut out, b"first");
        let second = sealed(&mut out, b"second");
        assert_eq!(first.len(), 5 + TAG_LEN);

        // Reordered: frame 0 is expected first.
        assert_eq!(tags(Role::Dialer).open(&second), None);
        // Altered.
        let mut altered = first.to_vec();
        altered[0] ^= 1;
        assert_eq!(tags(Role::Dialer).open(&altered), None);
        // Too short to hold a tag.
        assert_eq!(tags(Role::Dialer).open(&first[..TAG_LEN - 1]), None);
        // Under the other direction's key.
        assert_eq!(tags(Role::Acceptor).open(&first), None);

        let mut inbound = tags(Role::Dialer);
        assert_eq!(inbound.open(&first), Some(&b"first"[..]));
        // Replayed: frame 1 is expected now.
        assert_eq!(inbound.open(&first), None);
        assert_eq!(inbound.open(&second), Some(&b"second"[..]));
    }
}
