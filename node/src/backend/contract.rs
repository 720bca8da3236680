//! The promises of the backend traits as executable checks, run against
//! every implementation: the in-memory one in unit tests, Redis in
//! `node/tests/redis_backend.rs`. Each check uses ids made unique by `tag`, so
//! it can run on a shared, non-empty backend.
//!
//! Store checks expect limits: history 5, inbox 2, max group members 3.

use std::sync::Arc;

use super::{
    BackendError, Claim, CommandLog, ConnectionInfo, HistoryPage, HistoryQuery, MessageStore,
    Registry,
};
use crate::ids::{ConversationId, GroupId, MsgId, UserId};
use crate::model::ChatMessage;

fn u(tag: &str, s: &str) -> UserId {
    UserId::parse(&format!("{s}{tag}")).expect("valid test user")
}

/// A 1:1 message from `from` to `to`, its seq still to be assigned; its
/// content has quotes, a backslash, non-ASCII and a `"seq":0` to survive.
pub fn dm(id: u64, from: &UserId, to: &UserId, cid: Option<&str>) -> ChatMessage {
    ChatMessage {
        msg_id: MsgId(id),
        conversation: ConversationId::direct(from, to),
        seq: 0,
        from: from.clone(),
        to: Some(to.clone()),
        group: None,
        content: format!("m{id} \"quoted\" \\ ünïcode \"seq\":0"),
        format: Default::default(),
        recalled: false,
        status: None,
        ts: 1_795_441_148_453,
        client_msg_id: cid.map(str::to_owned),
        chat_id: None,
    }
}

fn ids(msgs: &[Arc<ChatMessage>]) -> Vec<u64> {
    msgs.iter().map(|m| m.msg_id.0).collect()
}

fn acked_ids(acked: &[crate::backend::Acked]) -> Vec<u64> {
    acked.iter().map(|a| a.msg.msg_id.0).collect()
}

/// Append assigns gap-free seqs, dedups on (sender, client_msg_id), and keeps
/// the message intact (content with quotes, backslashes, non-ASCII).
pub async fn append_and_dedup(s: &dyn MessageStore, tag: &str, base: u64) {
    let (a, b) = (u(tag, "a"), u(tag, "b"));
    let first = s
        .append(dm(base + 1, &a, &b, Some("x")), std::slice::from_ref(&b))
        .await
        .expect("append");
    let second = s
        .append(dm(base + 2, &a, &b, Some("y")), std::slice::from_ref(&b))
        .await
        .expect("append");
    assert_eq!((first.msg.seq, second.msg.seq), (1, 2));
    assert!(!first.duplicate);
    let mut expected = dm(base + 1, &a, &b, Some("x"));
    expected.seq = 1;
    assert_eq!(*first.msg, expected, "stored exactly");
    let again = s
        .append(dm(base + 3, &a, &b, Some("x")), std::slice::from_ref(&b))
        .await
        .expect("append");
    assert!(again.duplicate);
    assert_eq!(again.msg.msg_id, MsgId(base + 1));
    assert_eq!(again.msg.seq, 1);
    let other = s
        .append(dm(base + 4, &b, &a, Some("x")), std::slice::from_ref(&a))
        .await
        .expect("append");
    assert!(
        !other.duplicate,
        "another sender's client id is another message"
    );
    assert_eq!(other.msg.seq, 3);
    let inbox = s.inbox(&b, 10).await.expect("inbox");
    assert_eq!(ids(&inbox), [base + 1, base + 2]);
    assert_eq!(*inbox[0], expected);
}

/// A recall swaps the history entry for the tombstone, empties the
/// recipients' inboxes of it and points the dedup key at it; it refuses
/// (false, nothing changed) a message already recalled or trimmed.
pub async fn recall(s: &dyn MessageStore, tag: &str, base: u64) {
    let (a, b) = (u(tag, "a"), u(tag, "b"));
    let to_b = std::slice::from_ref(&b);
    let first = s
        .append(dm(base + 1, &a, &b, Some("r")), to_b)
        .await
        .expect("append")
        .msg;
    s.append(dm(base + 2, &a, &b, None), to_b)
        .await
        .expect("append");
    let tombstone = ChatMessage {
        content: String::new(),
        recalled: true,
        status: None,
        ..ChatMessage::clone(&first)
    };
    assert!(
        s.recall(&first, &tombstone, to_b, Some(&a))
            .await
            .expect("recall")
    );
    let page = s
        .history(
            &first.conversation,
            HistoryQuery {
                before: None,
                after: None,
                limit: 10,
            },
        )
        .await
        .expect("history");
    assert_eq!(*page.messages[0], tombstone);
    assert!(!page.messages[1].recalled, "only that message");
    assert_eq!(ids(&s.inbox(&b, 10).await.expect("inbox")), [base + 2]);
    let found = s
        .find(&first.conversation, first.msg_id)
        .await
        .expect("find");
    assert_eq!(found.as_deref(), Some(&tombstone));
    assert!(
        !s.recall(&first, &tombstone, to_b, Some(&a))
            .await
            .expect("recall"),
        "already recalled"
    );
    let resend = s
        .append(dm(base + 3, &a, &b, Some("r")), to_b)
        .await
        .expect("append");
    assert!(resend.duplicate);
    assert_eq!(*resend.msg, tombstone, "a resend brings back no content");
    // A member who left the group since keeps nothing of it either.
    let (c, g) = (
        u(tag, "c"),
        GroupId::parse(&format!("g{tag}")).expect("valid group"),
    );
    let mut to_group = dm(base + 10, &a, &b, None);
    to_group.to = None;
    to_group.group = Some(g.clone());
    to_group.conversation = ConversationId::Group(g);
    let stored = s
        .append(to_group, &[b.clone(), c.clone()])
        .await
        .expect("append")
        .msg;
    let gone = ChatMessage {
        content: String::new(),
        recalled: true,
        ..ChatMessage::clone(&stored)
    };
    assert!(
        s.recall(&stored, &gone, to_b, Some(&a))
            .await
            .expect("recall")
    );
    assert!(
        !ids(&s.inbox(&c, 10).await.expect("inbox")).contains(&(base + 10)),
        "an ex-member's inbox still has a recalled message"
    );
    s.ack(&b, &[MsgId(base + 2)]).await.expect("ack");
    let second = s
        .find(&first.conversation, MsgId(base + 2))
        .await
        .expect("find")
        .expect("kept");
    for i in 4..=8 {
        s.append(dm(base + i, &a, &b, None), &[])
            .await
            .expect("append");
    }
    let gone = ChatMessage {
        content: String::new(),
        recalled: true,
        status: None,
        ..ChatMessage::clone(&second)
    };
    assert!(
        !s.recall(&second, &gone, to_b, None).await.expect("recall"),
        "trimmed from history"
    );
}

/// History pages report which 1:1 messages are still in their recipient's
/// inbox and every read watermark; a watermark only rises, and never past
/// the conversation's last seq.
pub async fn receipts(s: &dyn MessageStore, tag: &str, base: u64) {
    let (a, b) = (u(tag, "a"), u(tag, "b"));
    let to_b = std::slice::from_ref(&b);
    let conv = ConversationId::direct(&a, &b);
    let newest = HistoryQuery {
        before: None,
        after: None,
        limit: 10,
    };
    assert_eq!(
        s.mark_read(&conv, &b, 1, None).await.expect("read"),
        None,
        "nothing to read yet"
    );
    for i in 1..=2 {
        s.append(dm(base + i, &a, &b, None), to_b)
            .await
            .expect("append");
    }
    let page = s.history(&conv, newest).await.expect("history");
    assert!(page.read.is_empty());
    assert_eq!(page.undelivered, [MsgId(base + 1), MsgId(base + 2)].into());
    s.ack(&b, &[MsgId(base + 1)]).await.expect("ack");
    assert_eq!(
        s.mark_read(&conv, &b, 1, Some(MsgId(base + 1)))
            .await
            .expect("read"),
        Some(1)
    );
    assert_eq!(s.mark_read(&conv, &b, 1, None).await.expect("read"), None);
    let page = s.history(&conv, newest).await.expect("history");
    assert_eq!(page.read, [(b.clone(), 1)].into());
    assert_eq!(page.undelivered, [MsgId(base + 2)].into());
    assert_eq!(
        s.mark_read(&conv, &b, 99, None).await.expect("read"),
        Some(2),
        "clamped to the last seq"
    );
    assert_eq!(
        s.mark_read(&conv, &a, 1, None).await.expect("read"),
        Some(1)
    );
    let page = s.history(&conv, newest).await.expect("history");
    assert_eq!(page.read, [(a.clone(), 1), (b.clone(), 2)].into());
}

/// Inbox entries stay until acked, in insertion order; acks are idempotent.
/// A direct message to a full inbox (limit 2) is refused and not stored.
pub async fn inbox_ack_and_limit(s: &dyn MessageStore, tag: &str, base: u64) {
    let (a, b) = (u(tag, "a"), u(tag, "b"));
    let to_b = std::slice::from_ref(&b);
    s.append(dm(base + 1, &a, &b, None), to_b)
        .await
        .expect("append");
    s.append(dm(base + 2, &a, &b, None), to_b)
        .await
        .expect("append");
    let err = s
        .append(dm(base + 3, &a, &b, None), to_b)
        .await
        .expect_err("inbox full");
    assert_eq!(err, BackendError::InboxFull(b.clone()));
    let acked = s
        .ack(&b, &[MsgId(base + 1), MsgId(base + 99)])
        .await
        .expect("ack");
    assert_eq!(acked_ids(&acked), [base + 1]);
    assert!(s.ack(&b, &[MsgId(base + 1)]).await.expect("ack").is_empty());
    let next = s
        .append(dm(base + 4, &a, &b, None), to_b)
        .await
        .expect("append");
    assert_eq!(next.msg.seq, 3, "the refused message took no seq");
    assert_eq!(
        ids(&s.inbox(&b, 10).await.expect("inbox")),
        [base + 2, base + 4]
    );
    assert_eq!(ids(&s.inbox(&b, 1).await.expect("inbox")), [base + 2]);
    s.ack(&b, &[MsgId(base + 2), MsgId(base + 4)])
        .await
        .expect("ack");
    assert!(s.inbox(&b, 10).await.expect("inbox").is_empty());
}

/// History keeps the newest 5 and pages before/after/newest.
pub async fn history_pages(s: &dyn MessageStore, tag: &str, base: u64) {
    let (a, b) = (u(tag, "a"), u(tag, "b"));
    for i in 1..=8 {
        s.append(dm(base + i, &a, &b, None), &[])
            .await
            .expect("append");
    }
    let c = ConversationId::direct(&a, &b);
    let seqs = |p: &HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let q = |before, after, limit| HistoryQuery {
        before,
        after,
        limit,
    };
    let newest = s.history(&c, q(None, None, 3)).await.expect("history");
    assert_eq!((seqs(&newest), newest.has_more), (vec![6, 7, 8], true));
    let before = s.history(&c, q(Some(6), None, 3)).await.expect("history");
    assert_eq!((seqs(&before), before.has_more), (vec![4, 5], false));
    let after = s.history(&c, q(None, Some(1), 2)).await.expect("history");
    assert_eq!((seqs(&after), after.has_more), (vec![4, 5], true));
    let tail = s.history(&c, q(None, Some(6), 10)).await.expect("history");
    assert_eq!((seqs(&tail), tail.has_more), (vec![7, 8], false));
    let none = s.history(&c, q(None, Some(8), 10)).await.expect("history");
    assert!(none.messages.is_empty() && !none.has_more);
    let early = s.history(&c, q(Some(2), None, 10)).await.expect("history");
    assert!(early.messages.is_empty() && !early.has_more);
    let empty = s
        .history(
            &ConversationId::direct(&a, &u(tag, "nobody")),
            q(None, None, 10),
        )
        .await
        .expect("history");
    assert!(empty.messages.is_empty() && !empty.has_more);
    let found = s
        .find(&c, MsgId(base + 7))
        .await
        .expect("find")
        .expect("message 7 is retained");
    assert_eq!(found.seq, 7);
    assert!(
        s.find(&c, MsgId(base + 1)).await.expect("find").is_none(),
        "trimmed"
    );
}

/// Groups: create, conflict, limit, membership index, remove, delete; a group
/// message goes to every inbox that has room and skips full ones.
pub async fn groups(s: &dyn MessageStore, tag: &str, base: u64) {
    let g = GroupId::parse(&format!("g{tag}")).expect("group id");
    let (a, b, c, d) = (u(tag, "a"), u(tag, "b"), u(tag, "c"), u(tag, "d"));
    let made = s
        .create_group(&g, &[b.clone(), a.clone(), a.clone()])
        .await
        .expect("create");
    assert_eq!(made.members, vec![a.clone(), b.clone()]);
    assert!(matches!(
        s.create_group(&g, &[]).await,
        Err(BackendError::GroupExists(_))
    ));
    s.add_members(&g, std::slice::from_ref(&c))
        .await
        .expect("add");
    assert!(matches!(
        s.add_members(&g, std::slice::from_ref(&d)).await,
        Err(BackendError::GroupFull(..))
    ));
    assert_eq!(s.groups_of(&c).await.expect("groups_of"), vec![g.clone()]);

    // Fill b's inbox (limit 2) with direct messages first.
    for i in 1..=2 {
        s.append(dm(base + i, &a, &b, None), std::slice::from_ref(&b))
            .await
            .expect("append");
    }
    let msg = ChatMessage {
        msg_id: MsgId(base + 10),
        conversation: ConversationId::Group(g.clone()),
        seq: 0,
        from: a.clone(),
        to: None,
        group: Some(g.clone()),
        content: "to the group".into(),
        format: Default::default(),
        recalled: false,
        status: None,
        ts: 1,
        client_msg_id: None,
        chat_id: None,
    };
    let out = s
        .append(msg, &[b.clone(), c.clone()])
        .await
        .expect("group append");
    assert_eq!(out.inbox_skipped, vec![b.clone()]);
    assert_eq!(ids(&s.inbox(&c, 10).await.expect("inbox")), [base + 10]);
    assert_eq!(
        acked_ids(&s.ack(&c, &[MsgId(base + 10)]).await.expect("ack")),
        [base + 10]
    );

    // Owner and title: set, read back, cleared, and gone with the group.
    let profile = crate::model::GroupProfile {
        owner: Some(a.clone()),
        title: Some("周末 \"hike\"".into()),
    };
    let set = s.set_group_profile(&g, &profile).await.expect("profile");
    assert_eq!(
        (set.owner.as_ref(), set.title.as_deref()),
        (Some(&a), Some("周末 \"hike\""))
    );
    let read = s.group(&g).await.expect("group").expect("exists");
    assert_eq!(
        (read.owner, read.title),
        (profile.owner.clone(), profile.title.clone())
    );
    let nope = GroupId::parse(&format!("{tag}-none")).expect("id");
    assert_eq!(
        s.group_profiles(&[nope, g.clone()])
            .await
            .expect("profiles"),
        vec![(g.clone(), profile.clone())]
    );
    assert!(matches!(
        s.set_group_profile(&GroupId::parse("nope-nope").expect("id"), &profile)
            .await,
        Err(BackendError::NoSuchGroup(_))
    ));

    let after = s.remove_member(&g, &a).await.expect("remove");
    assert_eq!(after.members, vec![b.clone(), c.clone()]);
    assert!(s.groups_of(&a).await.expect("groups_of").is_empty());
    assert!(matches!(
        s.remove_member(&GroupId::parse("nope-nope").expect("id"), &a)
            .await,
        Err(BackendError::NoSuchGroup(_))
    ));
    assert!(s.delete_group(&g).await.expect("delete"));
    assert!(!s.delete_group(&g).await.expect("delete again"));
    assert!(s.group(&g).await.expect("group").is_none());
    // Created again: no profile left over.
    let again = s.create_group(&g, &[]).await.expect("create again");
    assert_eq!((again.owner, again.title), (None, None));
    assert!(s.delete_group(&g).await.expect("delete"));
    assert!(s.groups_of(&b).await.expect("groups_of").is_empty());
}

/// One claim at a time per command id; released, it can be claimed again;
/// applied, it stays applied; request answers are kept.
pub async fn command_log(l: &dyn CommandLog, tag: &str) {
    use std::time::Duration;
    let id = format!("cmd-{tag}");
    let ttl = Duration::from_secs(60);
    assert_eq!(
        l.claim(&id, "t1", ttl).await.expect("claim"),
        Claim::Claimed
    );
    assert_eq!(l.claim(&id, "t2", ttl).await.expect("claim"), Claim::Busy);
    l.release(&id, "t2")
        .await
        .expect("release by another: no effect");
    assert_eq!(l.claim(&id, "t2", ttl).await.expect("claim"), Claim::Busy);
    l.release(&id, "t1").await.expect("release");
    assert_eq!(
        l.claim(&id, "t2", ttl).await.expect("claim"),
        Claim::Claimed
    );
    l.mark_applied(&id, ttl).await.expect("mark");
    assert_eq!(
        l.claim(&id, "t3", ttl).await.expect("claim"),
        Claim::Applied
    );
    l.release(&id, "t2")
        .await
        .expect("release after the mark: no effect");
    assert_eq!(
        l.claim(&id, "t3", ttl).await.expect("claim"),
        Claim::Applied
    );
    // A claim of a node that died expires.
    let short = format!("short-{tag}");
    let brief = Duration::from_millis(50);
    assert_eq!(
        l.claim(&short, "t1", brief).await.expect("claim"),
        Claim::Claimed
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        l.claim(&short, "t2", ttl).await.expect("claim"),
        Claim::Claimed
    );

    let req = format!("req-{tag}");
    assert_eq!(l.reply(&req).await.expect("reply"), None);
    l.keep_reply(&req, "{\"success\":true}", ttl)
        .await
        .expect("keep");
    assert_eq!(
        l.reply(&req).await.expect("reply").as_deref(),
        Some("{\"success\":true}")
    );
}

/// Devices, presence, stats deltas, and forgetting a dead pod.
pub async fn registry(r: &dyn Registry, tag: &str) {
    let a = u(tag, "a");
    let c = |id: &str, pod: &str| ConnectionInfo {
        conn_id: format!("{pod}#{id}{tag}"),
        user: a.clone(),
        pod: format!("{pod}{tag}"),
    };
    let before = r.stats().await.expect("stats");
    assert!(
        r.register(&c("1", "p0")).await.expect("register"),
        "first device"
    );
    assert!(!r.register(&c("1", "p1")).await.expect("register"));
    let p = r.presence(&a).await.expect("presence");
    assert_eq!((p.online, p.devices), (true, 2));
    assert_eq!(p.pods, vec![format!("p0{tag}"), format!("p1{tag}")]);
    let mut conns = r.connections(&a).await.expect("connections");
    conns.sort();
    assert_eq!(conns.len(), 2);
    // Pods of several users at once, in their order; an unknown user has none.
    let nobody = u(tag, "nobody");
    let mut pods = r
        .pods_of(&[nobody.clone(), a.clone(), nobody.clone()])
        .await
        .expect("pods_of");
    pods[1].sort();
    assert_eq!(
        pods,
        vec![vec![], vec![format!("p0{tag}"), format!("p1{tag}")], vec![]]
    );
    assert_eq!(
        r.pods_of(std::slice::from_ref(&a))
            .await
            .expect("pods_of one")
            .len(),
        1
    );
    assert_eq!(
        r.stats().await.expect("stats").online_users,
        before.online_users + 1
    );
    assert!(r.online_users(1000).await.expect("online").contains(&a));
    assert!(!r.unregister(&c("1", "p0")).await.expect("unregister"));
    assert!(
        !r.unregister(&c("1", "p0")).await.expect("unregister twice"),
        "idempotent"
    );
    // p1 dies: forgetting it takes the user offline.
    let gone = r.forget_pod(&format!("p1{tag}")).await.expect("forget");
    assert_eq!(gone, vec![a.clone()]);
    let p = r.presence(&a).await.expect("presence");
    assert!(!p.online && p.last_seen.is_some());
    assert_eq!(
        r.stats().await.expect("stats").online_users,
        before.online_users
    );
    assert!(r.register(&c("2", "p0")).await.expect("register"));
    assert!(
        r.unregister(&c("2", "p0")).await.expect("unregister"),
        "last device"
    );
}
