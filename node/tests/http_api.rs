//! The HTTP side: health, readiness, metrics, presence, stats, the groups
//! admin API, the seed aliases and the admin token.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::{Server, http_text};

#[tokio::test]
async fn health_readiness_metrics_and_page() {
    let s = Server::start().await;
    assert_eq!(
        http_text(s.addr, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
    assert_eq!(http_text(s.addr, "GET", "/readyz", None, None).await.0, 200);
    let (st, page) = http_text(s.addr, "GET", "/", None, None).await;
    assert_eq!(st, 200);
    assert!(
        page.contains("<html") || page.contains("<!doctype html"),
        "{page}"
    );
    let (st, h) = s.http("GET", "/api/chat/health", None, None).await;
    assert_eq!((st, h["status"].as_str()), (200, Some("UP")));

    let mut a = s.connect("mia").await;
    a.say("max", "m1", "hi").await;
    let mut b = s.connect("max").await;
    b.expect("message").await;
    let (st, m) = http_text(s.addr, "GET", "/metrics", None, None).await;
    assert_eq!(st, 200);
    for needle in [
        "switchboard_connections 2",
        r#"switchboard_frames_in_total{frame="send"} 1"#,
        r#"switchboard_frames_out_total{frame="message"} 1"#,
        r#"switchboard_frames_out_total{frame="welcome"} 2"#,
        // max was offline: the message came from the inbox.
        "switchboard_inbox_replayed_messages_count 2",
        "switchboard_inbox_replayed_messages_sum 1",
        "switchboard_messages_stored_total 1",
        "switchboard_users_online 2",
        "switchboard_draining 0",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    let (st, e) = s.http("GET", "/no/such/thing", None, None).await;
    assert_eq!((st, e["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn presence_and_stats_endpoints() {
    let s = Server::start().await;
    let _a1 = s.connect("ola").await;
    let _a2 = s.connect("ola").await;
    let _b = s.connect("pat").await;
    let (st, p) = s.http("GET", "/api/v1/presence/ola", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        (p["online"].as_bool(), p["devices"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(p["pods"], json!(["standalone"]));
    let (_, seed) = s
        .http("GET", "/api/chat/online/status/ola", None, None)
        .await;
    assert_eq!(seed, p);
    let (_, never) = s.http("GET", "/api/v1/presence/nobody", None, None).await;
    assert_eq!(
        (never["online"].as_bool(), never["last_seen"].is_null()),
        (Some(false), true)
    );
    let (st, bad) = s.http("GET", "/api/v1/presence/a:b", None, None).await;
    assert_eq!((st, bad["code"].as_str()), (400, Some("invalid_field")));

    let (_, stats) = s.http("GET", "/api/v1/stats", None, None).await;
    assert_eq!(
        (
            stats["online_users"].as_u64(),
            stats["connections"].as_u64()
        ),
        (Some(2), Some(3))
    );
    let (_, seed_stats) = s.http("GET", "/api/chat/online/stats", None, None).await;
    assert_eq!(seed_stats, stats);
    let (_, online) = s.http("GET", "/api/v1/online", None, None).await;
    assert_eq!(online["users"], json!(["ola", "pat"]));
}

#[tokio::test]
async fn groups_admin_api_errors() {
    let s = Server::with(|c| c.max_group_members = 3).await;
    let (st, g) = s
        .http(
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "g1", "members": ["a", "b"]})),
            None,
        )
        .await;
    assert_eq!((st, g["members"].clone()), (201, json!(["a", "b"])));
    let (st, e) = s
        .http("POST", "/api/v1/groups", Some(json!({"id": "g1"})), None)
        .await;
    assert_eq!((st, e["code"].as_str()), (409, Some("conflict")));
    let (st, e) = s
        .http(
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "bad id"})),
            None,
        )
        .await;
    assert_eq!((st, e["code"].as_str()), (400, Some("invalid_field")));
    let (st, e) = s
        .http("POST", "/api/v1/groups", Some(json!({"members": []})), None)
        .await;
    assert_eq!((st, e["code"].as_str()), (400, Some("invalid_field")));
    let (st, e) = s
        .http(
            "POST",
            "/api/v1/groups/g1/members",
            Some(json!({"users": ["c", "d"]})),
            None,
        )
        .await;
    assert_eq!((st, e["code"].as_str()), (422, Some("invalid_field")));
    let (st, e) = s
        .http(
            "POST",
            "/api/v1/groups/zz/members",
            Some(json!({"users": ["c"]})),
            None,
        )
        .await;
    assert_eq!((st, e["code"].as_str()), (404, Some("not_found")));
    let (st, g) = s.http("GET", "/api/v1/groups/g1", None, None).await;
    assert_eq!((st, g["id"].as_str()), (200, Some("g1")));
    assert_eq!(
        s.http("DELETE", "/api/v1/groups/g1", None, None).await.0,
        204
    );
    assert_eq!(
        s.http("DELETE", "/api/v1/groups/g1", None, None).await.0,
        404
    );
    assert_eq!(s.http("GET", "/api/v1/groups/g1", None, None).await.0, 404);
}

#[tokio::test]
async fn admin_token_protects_admin_and_presence_endpoints() {
    let s = Server::with(|c| c.admin_token = Some("s3cret-admin".into())).await;
    for path in [
        "/api/v1/presence/x",
        "/api/v1/stats",
        "/api/v1/online",
        "/api/chat/online/stats",
        "/api/chat/online/status/x",
    ] {
        let (st, e) = s.http("GET", path, None, None).await;
        assert_eq!(
            (st, e["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        let (st, e) = s.http("GET", path, None, Some("wrong")).await;
        assert_eq!((st, e["code"].as_str()), (403, Some("forbidden")), "{path}");
        assert_eq!(
            s.http("GET", path, None, Some("s3cret-admin")).await.0,
            200,
            "{path}"
        );
    }
    let (st, _) = s
        .http("POST", "/api/v1/groups", Some(json!({"id": "g"})), None)
        .await;
    assert_eq!(st, 401);
    let (st, _) = s
        .http(
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "g"})),
            Some("s3cret-admin"),
        )
        .await;
    assert_eq!(st, 201);
    // Health stays open for probes.
    assert_eq!(s.http("GET", "/api/chat/health", None, None).await.0, 200);
    assert_eq!(
        http_text(s.addr, "GET", "/healthz", None, None).await.0,
        200
    );
}

/// Every admin route, as (method, path, body).
fn admin_routes() -> Vec<(&'static str, &'static str, Option<serde_json::Value>)> {
    vec![
        ("GET", "/api/v1/presence/x", None),
        ("GET", "/api/v1/online", None),
        ("GET", "/api/v1/stats", None),
        (
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "g", "members": ["x"]})),
        ),
        ("GET", "/api/v1/groups/g", None),
        ("DELETE", "/api/v1/groups/g", None),
        (
            "POST",
            "/api/v1/groups/g/members",
            Some(json!({"users": ["y"]})),
        ),
        ("DELETE", "/api/v1/groups/g/members/x", None),
        ("GET", "/api/chat/online/status/x", None),
        ("GET", "/api/chat/online/stats", None),
    ]
}

#[tokio::test]
async fn without_dev_mode_and_without_a_token_the_admin_api_is_off() {
    let s = Server::with(|c| {
        c.jwt_secret = Some("0123456789abcdef0123".into());
        c.dev_auth = Some(false);
    })
    .await;
    for (method, path, body) in admin_routes() {
        for token in [None, Some("anything")] {
            let (st, e) = s.http(method, path, body.clone(), token).await;
            assert_eq!(
                (st, e["code"].as_str()),
                (403, Some("admin_disabled")),
                "{method} {path} with {token:?}"
            );
        }
    }
    // Nothing was created behind the refusal.
    let g = switchboard_node::ids::GroupId::parse("g").unwrap();
    assert!(s.node.backends().store.group(&g).await.unwrap().is_none());
    // Probes and metrics stay open.
    assert_eq!(http_text(s.addr, "GET", "/readyz", None, None).await.0, 200);
    assert_eq!(
        http_text(s.addr, "GET", "/metrics", None, None).await.0,
        200
    );
}

#[tokio::test]
async fn dev_mode_opens_the_admin_api_only_without_a_token() {
    let s = Server::start().await;
    assert!(s.node.auth.dev_mode());
    let (st, _) = s
        .http("POST", "/api/v1/groups", Some(json!({"id": "dev-g"})), None)
        .await;
    assert_eq!(st, 201);
    let s = Server::with(|c| c.admin_token = Some("dev-admin-token".into())).await;
    assert!(s.node.auth.dev_mode());
    let (st, e) = s.http("GET", "/api/v1/online", None, None).await;
    assert_eq!((st, e["code"].as_str()), (401, Some("unauthorized")));
}
