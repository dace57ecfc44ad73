//! A real child process runs the router under concurrent senders and is
//! killed with SIGKILL; after a restart every acknowledged message is stored
//! exactly once, with the id its ack named.
//!
//! The child is this test binary, re-run with `--ignored --exact
//! router_child` and the data directory in `HANMADI_ROUTER_CRASH_DIR`.

#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{child, child_command, open_store, text, users};
use hanmadi_proto::pb;
use hanmadi_proto::prost::Message as _;
use hanmadi_proto::ConversationId;
use hanmadi_router::{LocalPresence, NoDelivery, Router, RouterConfig, Target};

const USERS: u64 = 8;
const ACKS_BEFORE_KILL: usize = 2000;
/// Where the parent tells the child its data directory.
const DIR_VAR: &str = "HANMADI_ROUTER_CRASH_DIR";

#[test]
#[ignore = "run by kill_9_keeps_every_acknowledged_send as a child process"]
fn router_child() {
    let Some((dir, rt)) = child(DIR_VAR) else {
        return;
    };
    rt.block_on(async move {
        let store = open_store(&dir);
        let ids: Vec<u64> = (1..=USERS).collect();
        users(&store, &ids).await;
        let (router, _task) = Router::start(
            store,
            Arc::new(LocalPresence::new()),
            Arc::new(NoDelivery),
            RouterConfig::default(),
        );
        let router = Arc::new(router);
        let (group, _) = router
            .create_group(1, "crash".into(), ids[1..].to_vec())
            .await
            .expect("group");
        println!("GROUP {group}");
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for sender in 1..=USERS {
            let (router, out) = (Arc::clone(&router), Arc::clone(&out));
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let to = if i % 3 == 0 {
                        Target::Group(group)
                    } else {
                        Target::User(1 + (sender + i) % USERS)
                    };
                    let cmid = format!("s{sender}-{i}");
                    let ack = router
                        .send(sender, text(&cmid, to, "crash"))
                        .await
                        .expect("send");
                    let mut o = out.lock().expect("stdout");
                    writeln!(o, "ACK {sender} {cmid} {}", ack.message_id).expect("write");
                    o.flush().expect("flush");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_every_acknowledged_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = child_command("router_child", DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut group = 0u64;
    let mut acked: Vec<(u64, String, u64)> = Vec::new();
    let mut parse = |line: &str, acked: &mut Vec<(u64, String, u64)>| {
        // libtest's "test router_child ... " may share the first line.
        let start = ["GROUP ", "ACK "]
            .iter()
            .filter_map(|tag| line.find(tag))
            .min()
            .unwrap_or(line.len());
        let parts: Vec<&str> = line[start..].split_whitespace().collect();
        match parts.as_slice() {
            ["GROUP", g] => group = g.parse().expect("group id"),
            ["ACK", s, c, id] => acked.push((
                s.parse().expect("sender"),
                (*c).to_owned(),
                id.parse().expect("id"),
            )),
            _ => {}
        }
    };
    let mut line = String::new();
    while acked.len() < ACKS_BEFORE_KILL {
        line.clear();
        let n = reader.read_line(&mut line).expect("read child");
        assert!(n > 0, "child exited after {} acks", acked.len());
        assert!(Instant::now() < deadline, "child too slow");
        parse(&line, &mut acked);
    }
    child.kill().expect("SIGKILL");
    for l in reader.lines() {
        let Ok(l) = l else { break };
        parse(&l, &mut acked);
    }
    child.wait().expect("reap");
    assert_ne!(group, 0);

    let store = open_store(dir.path());
    let mut convs = vec![ConversationId::Group(group)];
    for a in 1..=USERS {
        for b in a..=USERS {
            convs.push(ConversationId::direct(a, b));
        }
    }
    let mut stored: HashMap<(u64, Vec<u8>), Vec<u64>> = HashMap::new();
    for c in convs {
        let mut before = 0;
        loop {
            let page = store.history(c, None, before, 1000).await.expect("history");
            for m in &page.messages {
                let m = pb::Message::decode(m.as_ref()).expect("decode");
                before = m.message_id;
                stored
                    .entry((m.sender, m.client_msg_id.to_vec()))
                    .or_default()
                    .push(m.message_id);
            }
            if !page.has_more {
                break;
            }
        }
    }
    for (sender, cmid, id) in &acked {
        let copies = stored
            .get(&(*sender, cmid.as_bytes().to_vec()))
            .unwrap_or_else(|| panic!("acknowledged {cmid} lost"));
        assert_eq!(copies, &vec![*id], "{cmid}: stored once, with its acked id");
    }
}
