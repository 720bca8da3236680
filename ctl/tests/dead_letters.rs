//! `switchboard-ctl command`, `dead-letters list` and `dead-letters redrive`
//! against the real broker of `scripts/deps start`: a published command
//! arrives with its tag and key; dead letters are listed with their code and
//! reason, and re-driven to the commands topic without them, once; a
//! redrive that cannot publish loses none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Delivery, Producer, Record, Runtime};

async fn ctl(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchboard-ctl"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The broker of `scripts/deps start`, and the topics of a prefix of this
/// test process.
struct Broker {
    namesrv: String,
    prefix: String,
    commands: String,
    dead: String,
    rt: Runtime,
    admin: Admin,
}

async fn broker(name: &str) -> Broker {
    let namesrv = std::env::var("SB_TEST_ROCKETMQ_NAMESRV")
        .expect("SB_TEST_ROCKETMQ_NAMESRV is not set: run `eval \"$(scripts/deps start)\"` first");
    let prefix = format!("{name}-{}", std::process::id());
    let names = Names::new(&prefix);
    let rt = Runtime::new().unwrap();
    let admin = Admin::connect(&rt, &namesrv).await.unwrap();
    Broker {
        commands: names.commands_topic(),
        dead: names.commands_dead_letter_topic(),
        namesrv,
        prefix,
        rt,
        admin,
    }
}

/// `args` and the cluster's `--namesrv` and `--prefix`.
fn with_target(args: &[&str], namesrv: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    v.extend([
        "--namesrv".into(),
        namesrv.to_owned(),
        "--prefix".into(),
        prefix.to_owned(),
    ]);
    v
}

/// Two dead letters of `commands`, as a node writes them.
fn two_letters(commands: &str) -> Vec<Record> {
    let letter = |n: u32, code: &str| Record {
        tag: Some("activity.created".into()),
        keys: vec![format!("dead-{n}")],
        properties: vec![
            ("event_type".into(), "activity.created".into()),
            ("dead_letter_code".into(), code.into()),
            ("dead_letter_reason".into(), format!("reason {n}")),
            ("origin_msg_id".into(), format!("origin-{n}")),
            ("origin_topic".into(), commands.to_owned()),
            ("deliveries".into(), "1".into()),
        ],
        body: format!(r#"{{"activity_id":"a{n}"}}"#).into_bytes(),
    };
    vec![letter(1, "malformed_json"), letter(2, "retries_exhausted")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_published_and_dead_letters_listed_and_redriven_once() {
    let Broker {
        namesrv,
        prefix,
        commands,
        dead,
        rt,
        admin,
    } = broker("ctl-dlq").await;
    admin.ensure_topic(&commands, 4).await.unwrap();
    admin.ensure_topic(&dead, 1).await.unwrap();
    // What reaches the commands topic, read as the nodes would.
    let group = format!("{prefix}-reader");
    admin.ensure_group(&group, 0).await.unwrap();
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let kept = seen.clone();
    let reader = Consumer::start_blocking(
        &rt,
        ConsumerConfig {
            namesrv: namesrv.clone(),
            topic: commands.clone(),
            group: group.clone(),
            max_reconsume_times: None,
            in_order: true,
            batch: 32,
            credentials: None,
        },
        move |d: Delivery| {
            kept.lock().unwrap().push(d);
            Ok::<(), String>(())
        },
    )
    .await
    .unwrap();
    reader.wait_assigned(Duration::from_secs(30)).await.unwrap();
    let target = |args: &[&str]| with_target(args, &namesrv, &prefix);

    let out = ctl(target(&[
        "command",
        "--type",
        "group.members.add",
        "--body",
        r#"{"group_id":"g1","user_ids":["ana"]}"#,
        "--key",
        "cmd-1",
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Two dead letters, as a node writes them.
    let producer = Producer::start(&rt, &namesrv, &format!("{prefix}-node"))
        .await
        .unwrap();
    producer
        .send_batch(&dead, 0, &two_letters(&commands))
        .await
        .unwrap();

    let listed = lines(&ctl(target(&["dead-letters", "list", "--idle", "10s"])).await);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        listed[0]["properties"]["dead_letter_code"],
        "malformed_json"
    );
    assert_eq!(listed[1]["properties"]["dead_letter_reason"], "reason 2");

    let redriven = lines(&ctl(target(&["dead-letters", "redrive", "--idle", "10s"])).await);
    assert_eq!(redriven.len(), 2);
    // Once: a second redrive finds nothing new.
    assert!(lines(&ctl(target(&["dead-letters", "redrive", "--idle", "5s"])).await).is_empty());

    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let command = seen
        .iter()
        .find(|d| d.tag.as_deref() == Some("group.members.add"))
        .unwrap();
    assert_eq!(command.key.as_deref(), Some("cmd-1"));
    for d in seen
        .iter()
        .filter(|d| d.tag.as_deref() == Some("activity.created"))
    {
        assert_eq!(d.properties["event_type"], "activity.created");
        assert!(!d.properties.contains_key("dead_letter_code"), "{d:?}");
        assert!(d.key.as_deref().unwrap().starts_with("dead-"));
    }

    reader.shutdown().await;
    producer.shutdown().await;
    for g in [group, format!("{prefix}-ctl-redrive")] {
        admin.delete_group(&g).await.unwrap();
    }
    for t in [commands, dead] {
        admin.delete_topic(&t).await.unwrap();
    }
    admin.shutdown().await;
    rt.shutdown().await;
}

/// A redrive whose publishes fail (the commands topic is missing) loses no
/// dead letter: the group moves past a letter only once it is published, so the next
/// run re-drives them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_that_cannot_publish_leaves_the_letters_for_the_next_run() {
    let Broker {
        namesrv,
        prefix,
        commands,
        dead,
        rt,
        admin,
    } = broker("ctl-dlq-fail").await;
    admin.ensure_topic(&dead, 1).await.unwrap();
    let producer = Producer::start(&rt, &namesrv, &format!("{prefix}-node"))
        .await
        .unwrap();
    producer
        .send_batch(&dead, 0, &two_letters(&commands))
        .await
        .unwrap();
    let target = |args: &[&str]| with_target(args, &namesrv, &prefix);

    // No commands topic (the broker creates none by itself): nothing can be
    // published.
    let out = ctl(target(&["dead-letters", "redrive", "--idle", "10s"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot re-drive dead letter"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    admin.ensure_topic(&commands, 4).await.unwrap();
    let redriven = lines(&ctl(target(&["dead-letters", "redrive", "--idle", "10s"])).await);
    let keys: Vec<_> = redriven.iter().map(|l| l["keys"][0].clone()).collect();
    assert_eq!(keys, ["dead-1", "dead-2"], "{redriven:?}");

    producer.shutdown().await;
    admin
        .delete_group(&format!("{prefix}-ctl-redrive"))
        .await
        .unwrap();
    for t in [commands, dead] {
        admin.delete_topic(&t).await.unwrap();
    }
    admin.shutdown().await;
    rt.shutdown().await;
}
