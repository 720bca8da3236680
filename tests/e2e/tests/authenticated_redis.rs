//! Redis with a password and over TLS (`rediss://`, a private CA), as
//! production runs it: release nodes serve across pods on it, refuse to
//! start without the CA or with a wrong password, and never print the
//! password, in their logs (debug level), error messages or metrics.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use switchboard_e2e::{Cluster, OwnRedis, node_bin, wait_ready};

const PASSWORD: &str = "redis-pw-7f3a9c1e5b";

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn certificates(dir: &Path) {
    let sh = format!(
        "set -e; cd {dir}; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null; \
         printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext; \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out server.pem 2>/dev/null",
        dir = dir.display()
    );
    let st = Command::new("bash").args(["-c", &sh]).status().unwrap();
    assert!(st.success(), "openssl failed");
}

/// Runs the node once with `env` and returns (exit ok, everything it printed).
fn run_once(env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(node_bin())
        .env_clear()
        .env("SB_LISTEN", "127.0.0.1:0")
        .env("SB_LOG", "debug")
        .env("POD_NAME", "sb-0")
        .env("SB_JWT_SECRET", switchboard_e2e::SECRET)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serve_on_redis_with_a_password_over_tls_and_never_print_it() {
    let dir = std::env::temp_dir().join(format!("sb-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let file = |f: &str| dir.join(f).display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    // TLS only (the plain port off), clients not asked for certificates.
    let redis = OwnRedis::start_with(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        PASSWORD,
    ])
    .await;
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", redis.port);

    let mut c = Cluster::new("tls", "1s");
    c.use_redis(&url);
    c.set_env("SB_REDIS_CA_FILE", &ca);
    c.set_env("SB_LOG", "debug");
    c.provision(2).await;
    c.pods.push(c.spawn(0));
    c.pods.push(c.spawn(1));
    for p in &c.pods {
        wait_ready(p).await;
    }
    // Across pods: presence, routing and the message itself go through Redis.
    let mut ana = c.pod(0).connect("ana").await;
    let mut ben = c.pod(1).connect("ben").await;
    let sent = ana.say("ben", "t1", "over tls").await;
    let got = ben.expect("message").await;
    assert_eq!(
        (got["msg_id"].clone(), got["content"].as_str()),
        (sent["msg_id"].clone(), Some("over tls"))
    );
    let (_, presence) = c.pod(1).get("/api/v1/presence/ana").await;
    assert_eq!(presence["pods"][0], "sb-0", "{presence}");

    for p in &c.pods {
        let (_, metrics) = p.get("/metrics").await;
        assert!(
            !metrics.to_string().contains(PASSWORD),
            "{} metrics",
            p.name
        );
        let log = p.log().join("\n");
        assert!(log.contains("DEBUG"), "the log is at debug level");
        assert!(
            !log.contains(PASSWORD),
            "{} printed the password:\n{log}",
            p.name
        );
    }

    // Without the CA the server is not trusted; with a wrong password the
    // node is refused: both stop at start with a clear error, no password.
    let port = redis.port.to_string();
    let cases = [
        ("no CA", url.clone(), None, "cannot connect to Redis"),
        (
            "wrong password",
            format!("rediss://:not-{PASSWORD}@127.0.0.1:{port}"),
            Some(ca.as_str()),
            "cannot connect to Redis",
        ),
        (
            "plain text to a TLS port",
            format!("redis://:{PASSWORD}@127.0.0.1:{port}"),
            None,
            "cannot connect to Redis",
        ),
    ];
    for (what, url, ca, expect) in cases {
        let mut env = vec![("SB_REDIS_URL", url.as_str())];
        if let Some(ca) = ca {
            env.push(("SB_REDIS_CA_FILE", ca));
        }
        let (ok, out) = run_once(&env);
        assert!(!ok, "{what}: the node started");
        assert!(out.contains(expect), "{what}: {out}");
        assert!(
            !out.contains(PASSWORD),
            "{what}: the password was printed:\n{out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
