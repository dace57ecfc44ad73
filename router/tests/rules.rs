//! The rules the HTTP API relies on, asked of the router itself: who may
//! see a group and change its members, which conversations exist, who may
//! mute what, which accounts may be shown, logged in against or blocked,
//! and whose devices a user sees. Each test fails if its rule is dropped.

#[allow(dead_code)]
mod common;

use common::{text, users};
use hanmadi_proto::{ConversationId, ErrorCode};
use hanmadi_router::{
    NewAccount, ProfileChange, Router, RouterConfig, RouterError, Target, MAX_PROVISION_BATCH,
};
use hanmadi_storage::chat::{PushPlatform, Role, MAX_PUSH_DEVICES};
use hanmadi_storage::sim::{SimKv, SimOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

struct Fixture {
    store: ChatStore<SimKv>,
    router: Router<SimKv>,
    _task: tokio::task::JoinHandle<()>,
}

/// A router over an in-memory store holding the accounts `ids`.
async fn fixture(ids: &[u64], config: RouterConfig) -> Fixture {
    let store = ChatStore::new(SimKv::new(SimOptions::healthy()), StoreConfig::default());
    users(&store, ids).await;
    let (router, task) = common::router_on(&store, config);
    Fixture {
        store,
        router,
        _task: task,
    }
}

/// Messages `reader` sees in a conversation.
async fn seen(f: &Fixture, reader: u64, conversation: ConversationId) -> usize {
    f.router
        .history(reader, conversation, 0, 500)
        .await
        .expect("history")
        .messages
        .len()
}

#[tokio::test]
async fn a_group_and_its_members_are_shown_to_members_only() {
    let f = fixture(&[1, 2, 3], RouterConfig::default()).await;
    let (group, _) = f
        .router
        .create_group(1, "g".into(), vec![2])
        .await
        .expect("create");
    let details = f.router.group_details(2, group).await.expect("member sees");
    assert_eq!(details.record.owner, 1);
    let mut members: Vec<(u64, Role)> = details
        .members
        .iter()
        .map(|(u, m)| (*u, m.role()))
        .collect();
    members.sort_unstable();
    assert_eq!(members, [(1, Role::Owner), (2, Role::Member)]);
    assert!(matches!(
        f.router.group_details(3, group).await,
        Err(RouterError::NotAMember)
    ));
    assert!(matches!(
        f.router.group_details(1, group + 1).await,
        Err(RouterError::NotFound("group"))
    ));
    let of_two = f.router.groups_of(2).await.expect("groups of 2");
    assert_eq!(of_two.len(), 1);
    assert!(f.router.groups_of(3).await.expect("groups of 3").is_empty());
}

#[tokio::test]
async fn groups_never_name_an_account_that_does_not_exist() {
    let f = fixture(
        &[1, 2, 3, 4, 5],
        RouterConfig {
            max_group_members: 3,
            ..RouterConfig::default()
        },
    )
    .await;
    assert!(matches!(
        f.router.create_group(1, "g".into(), vec![2, 99]).await,
        Err(RouterError::NotFound("user"))
    ));
    f.router.delete_user(5).await.expect("delete");
    assert!(matches!(
        f.router.create_group(1, "g".into(), vec![5]).await,
        Err(RouterError::NotFound("user"))
    ));
    assert!(matches!(
        f.router.create_group(1, "g".into(), vec![2, 3, 4, 1]).await,
        Err(RouterError::GroupFull { max: 3 })
    ));
    assert!(f.router.groups_of(1).await.expect("groups").is_empty());

    let (group, _) = f
        .router
        .create_group(1, "g".into(), vec![2])
        .await
        .expect("create");
    let before = seen(&f, 1, ConversationId::Group(group)).await;
    assert!(matches!(
        f.router.add_members(1, group, vec![99], Role::Member).await,
        Err(RouterError::NotFound("user"))
    ));
    assert!(matches!(
        f.router.add_members(1, group, vec![], Role::Member).await,
        Err(RouterError::InvalidArgument(_))
    ));
    // Permission first: a plain member learns nothing about accounts.
    assert!(matches!(
        f.router.add_members(2, group, vec![99], Role::Member).await,
        Err(RouterError::PermissionDenied)
    ));
    assert_eq!(seen(&f, 1, ConversationId::Group(group)).await, before);
    f.router
        .add_members(1, group, vec![3], Role::Member)
        .await
        .expect("a live account joins");
}

#[tokio::test]
async fn removing_a_member_tells_outsiders_nothing() {
    let f = fixture(&[1, 2, 3, 4], RouterConfig::default()).await;
    let (group, _) = f
        .router
        .create_group(1, "g".into(), vec![2, 3])
        .await
        .expect("create");
    let conversation = ConversationId::Group(group);
    // An outsider is refused alike whether the target is in or not.
    for target in [2, 77] {
        assert!(matches!(
            f.router.remove_member(4, group, target).await,
            Err(RouterError::NotAMember)
        ));
    }
    let before = seen(&f, 1, conversation).await;
    assert!(matches!(
        f.router.remove_member(1, group, 4).await,
        Err(RouterError::NotFound("member"))
    ));
    assert_eq!(
        seen(&f, 1, conversation).await,
        before,
        "removing a non-member announces nothing"
    );
    assert!(matches!(
        f.router.remove_member(2, group, 3).await,
        Err(RouterError::PermissionDenied)
    ));
    assert!(matches!(
        f.router.remove_member(1, group, 1).await,
        Err(RouterError::OwnerStays)
    ));
    assert!(matches!(
        f.router.remove_member(1, group + 1, 2).await,
        Err(RouterError::NotFound("group"))
    ));
    f.router.remove_member(2, group, 2).await.expect("leave");
    f.router.remove_member(1, group, 3).await.expect("remove");
    assert_eq!(seen(&f, 1, conversation).await, before + 2);
}

#[tokio::test]
async fn history_by_name_tells_a_missing_conversation_from_a_closed_one() {
    let f = fixture(&[1, 2, 3, 4], RouterConfig::default()).await;
    let (group, _) = f
        .router
        .create_group(1, "g".into(), vec![])
        .await
        .expect("create");
    let unknown = ConversationId::Group(group + 1);
    assert!(matches!(
        f.router.conversation_history(1, unknown, 0, 10).await,
        Err(RouterError::NotFound("group"))
    ));
    // A socket's `History` keeps its documented answer.
    assert!(matches!(
        f.router.history(1, unknown, 0, 10).await,
        Err(RouterError::NotAMember)
    ));
    assert!(matches!(
        f.router
            .conversation_history(4, ConversationId::Group(group), 0, 10)
            .await,
        Err(RouterError::NotAMember)
    ));
    let ghost = ConversationId::direct(1, 99);
    assert!(matches!(
        f.router.conversation_history(1, ghost, 0, 10).await,
        Err(RouterError::NotFound("user"))
    ));
    assert!(f
        .router
        .history(1, ghost, 0, 10)
        .await
        .expect("socket history")
        .messages
        .is_empty());
    let quiet = f
        .router
        .conversation_history(1, ConversationId::direct(1, 3), 0, 10)
        .await
        .expect("a conversation not yet started");
    assert!(quiet.messages.is_empty());
    f.router
        .send(1, text("m1", Target::User(2), "hi"))
        .await
        .expect("send");
    f.router.delete_user(2).await.expect("delete");
    let page = f
        .router
        .conversation_history(1, ConversationId::direct(1, 2), 0, 10)
        .await
        .expect("a deleted peer's messages stay readable");
    assert_eq!(page.messages.len(), 1);
}

#[tokio::test]
async fn mutes_need_a_live_peer_or_membership() {
    let f = fixture(&[1, 2, 3, 4], RouterConfig::default()).await;
    let (group, _) = f
        .router
        .create_group(1, "g".into(), vec![2])
        .await
        .expect("create");
    assert!(matches!(
        f.router
            .set_muted(1, ConversationId::direct(1, 99), true)
            .await,
        Err(RouterError::NotFound("user"))
    ));
    assert!(matches!(
        f.router
            .set_muted(1, ConversationId::direct(2, 3), true)
            .await,
        Err(RouterError::NotAMember)
    ));
    for g in [group, group + 1] {
        assert!(matches!(
            f.router.set_muted(4, ConversationId::Group(g), true).await,
            Err(RouterError::NotAMember)
        ));
    }
    assert!(f.store.muted(4).await.expect("mutes").is_empty());
    f.router
        .set_muted(1, ConversationId::direct(1, 1), true)
        .await
        .expect("one's own conversation");
    f.router
        .set_muted(2, ConversationId::Group(group), true)
        .await
        .expect("a member mutes");
    assert_eq!(
        f.store.muted(2).await.expect("mutes"),
        [ConversationId::Group(group)]
    );
}

#[tokio::test]
async fn accounts_are_shown_changed_and_logged_in_against_while_live() {
    let f = fixture(&[], RouterConfig::default()).await;
    let ann = f
        .router
        .create_account(NewAccount {
            username: "Ann".into(),
            display_name: "Ann A".into(),
            password_hash: "hash".into(),
        })
        .await
        .expect("sign up");
    let taken = f.router.check_username_free("ANN").await;
    assert!(matches!(taken, Err(RouterError::UsernameTaken)));
    let again = f
        .router
        .create_account(NewAccount {
            username: "ann".into(),
            display_name: String::new(),
            password_hash: "other".into(),
        })
        .await;
    match again {
        Err(e @ RouterError::UsernameTaken) => assert_eq!(e.code(), ErrorCode::AlreadyExists),
        other => panic!("a taken name signed up: {other:?}"),
    }
    assert_eq!(
        f.router.password_account("aNN").await.expect("log-in read"),
        Some((ann, "hash".to_owned()))
    );
    let (by_name, _) = f.router.account_by_name("ann").await.expect("by name");
    assert_eq!(by_name, ann);

    let changed = f
        .router
        .update_profile(
            ann,
            ProfileChange {
                status_text: Some("away".into()),
                ..ProfileChange::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(
        (changed.username.as_str(), changed.display_name.as_str()),
        ("Ann", "Ann A"),
        "absent fields and the username stay"
    );
    assert_eq!(changed.status_text, "away");

    // A username someone signed up for with a password is not handed to
    // provisioning, and the batch stores nothing.
    assert!(matches!(
        f.router
            .provision_accounts(vec![
                ("bob".into(), String::new()),
                ("ann".into(), String::new()),
            ])
            .await,
        Err(RouterError::UsernameTaken)
    ));
    assert!(
        matches!(
            f.router.account_by_name("bob").await,
            Err(RouterError::NotFound("user"))
        ),
        "nothing stored"
    );
    // Provisioned accounts have no password: no password log-in; a
    // repeated batch answers the same account.
    let provisioned = f
        .router
        .provision_accounts(vec![("bob".into(), String::new())])
        .await
        .expect("provision");
    assert!(provisioned[0].1, "bob is new");
    let again = f
        .router
        .provision_accounts(vec![("bob".into(), String::new())])
        .await
        .expect("provision again");
    assert_eq!(again[0], (provisioned[0].0, false), "bob keeps his account");
    assert_eq!(
        f.router.password_account("bob").await.expect("log-in read"),
        None
    );
    for batch in [0, MAX_PROVISION_BATCH + 1] {
        let accounts = (0..batch)
            .map(|i| (format!("p{i}"), String::new()))
            .collect();
        assert!(matches!(
            f.router.provision_accounts(accounts).await,
            Err(RouterError::InvalidArgument(_))
        ));
    }

    f.router.delete_user(ann).await.expect("delete");
    assert!(matches!(
        f.router.account(ann).await,
        Err(RouterError::NotFound("user"))
    ));
    assert!(matches!(
        f.router.account_by_name("ann").await,
        Err(RouterError::NotFound("user"))
    ));
    assert!(matches!(
        f.router.update_profile(ann, ProfileChange::default()).await,
        Err(RouterError::NotFound("user"))
    ));
    assert_eq!(
        f.router.password_account("ann").await.expect("log-in read"),
        None
    );
    assert!(matches!(
        f.router.account(12345).await,
        Err(RouterError::NotFound("user"))
    ));
}

#[tokio::test]
async fn only_another_live_account_can_be_blocked() {
    let f = fixture(&[1, 2], RouterConfig::default()).await;
    assert!(matches!(
        f.router.set_blocked(1, 1, true).await,
        Err(RouterError::InvalidArgument(_))
    ));
    assert!(matches!(
        f.router.set_blocked(1, 99, true).await,
        Err(RouterError::NotFound("user"))
    ));
    f.router
        .set_blocked(1, 99, false)
        .await
        .expect("unblocking needs no account");
    f.router.set_blocked(1, 2, true).await.expect("block");
    assert!(f.store.blocked_either(1, 2).await.expect("read"));
}

#[tokio::test]
async fn each_user_sees_and_changes_their_own_devices() {
    let f = fixture(&[1, 2], RouterConfig::default()).await;
    assert!(matches!(
        f.router
            .register_push(1, "", PushPlatform::Fcm, "token")
            .await,
        Err(RouterError::InvalidArgument(_))
    ));
    assert!(matches!(
        f.router.unregister_push(1, &"d".repeat(65)).await,
        Err(RouterError::InvalidArgument(_))
    ));
    for i in 0..MAX_PUSH_DEVICES {
        f.router
            .register_push(1, &format!("d{i}"), PushPlatform::Apns, "token")
            .await
            .expect("register");
    }
    assert!(matches!(
        f.router
            .register_push(1, "one-too-many", PushPlatform::Apns, "token")
            .await,
        Err(RouterError::InvalidArgument(_))
    ));
    f.router
        .register_push(2, "d0", PushPlatform::Fcm, "theirs")
        .await
        .expect("another user's device");
    f.router.unregister_push(1, "d0").await.expect("unregister");
    let mine = f.router.devices(1).await.expect("devices");
    assert_eq!(mine.len(), MAX_PUSH_DEVICES - 1);
    assert!(mine
        .iter()
        .all(|d| d.push.as_ref().is_some_and(|p| p.token == "token")));
    let theirs = f.router.devices(2).await.expect("devices");
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].device_id, "d0");
}

#[tokio::test]
async fn a_conversation_list_shows_a_users_own_newest_first() {
    let f = fixture(&[1, 2, 3], RouterConfig::default()).await;
    f.router
        .send(1, text("m1", Target::User(2), "hi"))
        .await
        .expect("send");
    let (group, _) = f
        .router
        .create_group(2, "team".into(), vec![1])
        .await
        .expect("create");
    let page = f.router.conversations(1, None, 0).await.expect("list");
    let listed: Vec<(ConversationId, Option<&str>)> = page
        .conversations
        .iter()
        .map(|c| (c.conversation, c.name.as_deref()))
        .collect();
    assert_eq!(
        listed,
        [
            (ConversationId::Group(group), Some("team")),
            (ConversationId::direct(1, 2), Some("user2")),
        ]
    );
    assert!(!page.has_more);
    let first = f.router.conversations(1, None, 1).await.expect("list");
    assert_eq!(first.conversations.len(), 1);
    assert!(first.has_more);
    let to_two = f.router.conversations(2, None, 0).await.expect("list");
    let direct = to_two
        .conversations
        .iter()
        .find(|c| c.conversation == ConversationId::direct(1, 2))
        .expect("2 has the direct conversation");
    assert_eq!(direct.unread, 1);
    assert!(direct.last_message.is_some());
    assert!(f
        .router
        .conversations(3, None, 0)
        .await
        .expect("list")
        .conversations
        .is_empty());
}
