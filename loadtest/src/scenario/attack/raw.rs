//! Abuse below the client library, over raw sockets: `half-open`,
//! `slowloris`, `bad-frames`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, BytesMut};
use hanmadi_proto::pb::{client_frame, server_frame, ClientFrame};
use hanmadi_proto::{ClientCodec, ErrorCode, Hello, DEFAULT_MAX_FRAME};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{account_of, accounts, code_name, Attack, Tally, Target as Node};
use crate::cli::AttackArgs;
use crate::control::Control;

/// Wait after a connection that failed for another reason than the node's
/// reset.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Longest a `bad-frames` connection waits for the node's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `slowloris` sends one more header line.
const DRIP_EVERY: Duration = Duration::from_secs(1);

/// `half-open`: `--connections` TCP connections that send nothing; each
/// is reopened as soon as the node closes it.
pub(super) fn half_open(a: &AttackArgs, node: &Node, tally: &Arc<Tally>) -> Attack {
    let mut attack = Attack::default();
    for i in 0..a.common.connections {
        let (node, tally) = (node.clone(), Arc::clone(tally));
        attack.spawn(async move {
            loop {
                match node.connect(i, node.tcp).await {
                    Ok(mut stream) => {
                        tally.opened();
                        let answer = read_to_end(&mut stream, None).await;
                        tally.count(closing_code(&answer));
                        tally.closed(true);
                    }
                    Err(e) => refused(&tally, &e).await,
                }
            }
        });
    }
    attack
}

/// `slowloris`: `--connections` HTTP requests whose header lines arrive
/// one a second and never end; each is reopened when the node closes it.
pub(super) fn slowloris(a: &AttackArgs, node: &Node, tally: &Arc<Tally>) -> Attack {
    let mut attack = Attack::default();
    for i in 0..a.common.connections {
        let (node, tally) = (node.clone(), Arc::clone(tally));
        attack.spawn(async move {
            loop {
                match node.connect(i, node.http).await {
                    Ok(stream) => {
                        tally.opened();
                        let outcome = drip(stream).await;
                        tally.count(outcome);
                        tally.closed(true);
                    }
                    Err(e) => refused(&tally, &e).await,
                }
            }
        });
    }
    attack
}

/// One slow request: a line a second until the node answers or closes;
/// what it did.
async fn drip(stream: TcpStream) -> String {
    let (mut reader, mut writer) = stream.into_split();
    let head = b"POST /v1/users HTTP/1.1\r\nHost: hanmadi\r\nContent-Type: application/json\r\n";
    if writer.write_all(head).await.is_err() {
        return "write refused".into();
    }
    let mut tick = tokio::time::interval(DRIP_EVERY);
    tick.tick().await;
    let mut line = 0u64;
    let mut answer = [0u8; 64];
    loop {
        tokio::select! {
            read = reader.read(&mut answer) => {
                return match read {
                    Ok(0) | Err(_) => "close silent".into(),
                    Ok(n) => {
                        let status = String::from_utf8_lossy(&answer[..n]);
                        let status = status.lines().next().unwrap_or_default();
                        format!("answer {}", status.trim_start_matches("HTTP/1.1 "))
                    }
                };
            }
            _ = tick.tick() => {
                line += 1;
                if writer.write_all(format!("X-Slow-{line}: 1\r\n").as_bytes()).await.is_err() {
                    return "write refused".into();
                }
            }
        }
    }
}

/// The four ways `bad-frames` breaks the framing, in turn.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    /// A length prefix far above the frame limit, before `Hello`.
    OversizedFirst,
    /// A frame that is not protobuf, before `Hello`.
    MalformedFirst,
    /// The same after a valid `Hello`.
    OversizedAfterHello,
    /// The same after a valid `Hello`.
    MalformedAfterHello,
}

/// `bad-frames`: connection after connection, as fast as the node answers,
/// each breaking the framing in one of four ways ([`Breakage`]).
pub(super) async fn bad_frames(
    a: &AttackArgs,
    control: &Control,
    node: &Node,
    tally: &Arc<Tally>,
) -> anyhow::Result<Attack> {
    let users = accounts(a, control, "bad-frames").await?;
    let mut attack = Attack::default();
    for i in 0..a.common.connections {
        let (node, tally) = (node.clone(), Arc::clone(tally));
        let token = account_of(a, &users, i).token.clone();
        attack.spawn(async move {
            let kinds = [
                Breakage::OversizedFirst,
                Breakage::MalformedFirst,
                Breakage::OversizedAfterHello,
                Breakage::MalformedAfterHello,
            ];
            for n in 0.. {
                let kind = kinds[(n + i) % kinds.len()];
                match node.connect(i, node.tcp).await {
                    Ok(mut stream) => {
                        tally.opened();
                        let outcome = break_framing(&mut stream, kind, &token, i).await;
                        tally.count(format!("{kind:?}: {outcome}"));
                        tally.served.fetch_add(1, Ordering::Relaxed);
                        tally.closed(true);
                    }
                    Err(e) => refused(&tally, &e).await,
                }
            }
        });
    }
    Ok(attack)
}

/// Sends one broken frame (after a `Hello` when `kind` says so); the
/// code the node closed with.
async fn break_framing(stream: &mut TcpStream, kind: Breakage, token: &str, i: usize) -> String {
    let codec = ClientCodec::new(DEFAULT_MAX_FRAME);
    let mut out = BytesMut::new();
    if matches!(
        kind,
        Breakage::OversizedAfterHello | Breakage::MalformedAfterHello
    ) {
        let hello = ClientFrame {
            req_id: 1,
            kind: Some(client_frame::Kind::Hello(Hello {
                token: token.to_owned(),
                device_id: format!("attack-{i}"),
            })),
        };
        if codec.encode_message(&hello, &mut out).is_err() {
            return "encode".into();
        }
    }
    match kind {
        Breakage::OversizedFirst | Breakage::OversizedAfterHello => {
            out.put_u32(u32::MAX >> 1);
            out.put_bytes(0xab, 1024);
        }
        Breakage::MalformedFirst | Breakage::MalformedAfterHello => {
            out.put_u32(64);
            out.put_bytes(0xff, 64);
        }
    }
    if stream.write_all(&out).await.is_err() {
        return "write refused".into();
    }
    let answer = read_to_end(stream, Some(ANSWER_TIMEOUT)).await;
    closing_code(&answer)
}

/// Everything the node sends until it closes (or `timeout` passes).
async fn read_to_end(stream: &mut TcpStream, timeout: Option<Duration>) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(256);
    let read = async {
        loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) if buf.len() > 1 << 20 => return,
                Ok(_) => {}
            }
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, read).await.ok()?,
        None => read.await,
    }
    Some(buf)
}

/// The code of the last `Error` frame in what the node sent before it
/// closed: `close silent` when there was none, `no close` when it did not
/// close in time.
fn closing_code(answer: &Option<BytesMut>) -> String {
    let Some(bytes) = answer else {
        return "no close".into();
    };
    let codec = ClientCodec::new(DEFAULT_MAX_FRAME);
    let mut buf = bytes.clone();
    let mut code = None;
    while let Ok(Some(frame)) = codec.decode_message(&mut buf) {
        if let Some(server_frame::Kind::Error(e)) = frame.kind {
            code = Some(ErrorCode::try_from(e.code).map_or(format!("code {}", e.code), code_name));
        }
    }
    code.unwrap_or_else(|| "close silent".into())
}

/// Counts a connection the node would not take. A reset is the node
/// refusing the attacker, who tries again at once; other failures (out of
/// local ports, nothing listening) pause, so the tool does not spin on
/// its own trouble.
async fn refused(tally: &Tally, e: &std::io::Error) {
    tally.connect_failures.fetch_add(1, Ordering::Relaxed);
    tally.count(format!("connect {:?}", e.kind()));
    if e.kind() != std::io::ErrorKind::ConnectionReset {
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}
