//! The card on real pods: a real-pod cluster (`switchboard_kubetest::RealCluster`) with
//! Redis and RocketMQ inside its namespace, the images built from the project's
//! Dockerfiles, the chart installed with `helm install` and ChatClusters applied with
//! `kubectl apply`, all as a user would. Clients reach pods and the client Service
//! through forwarders from host loopback ports.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_kubetest::{Forward, RealCluster, RealOptions};

use crate::{ADMIN_TOKEN, SECRET};

/// `helm install` of the chart with its defaults, waiting for the operator.
pub const INSTALL: &[&str] = &[
    "install",
    "switchboard",
    "charts/switchboard",
    "--namespace",
    SYSTEM_NS,
    "--create-namespace",
    "--wait",
    "--timeout",
    "180s",
];

/// The chart's release namespace.
pub const SYSTEM_NS: &str = "switchboard-system";
/// The namespace of the test's ChatClusters.
pub const CHAT_NS: &str = "chat";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The image archives: `$SB_REALPODS_IMAGES`, else built here by
/// `scripts/realpods images` from the release binaries.
pub fn images() -> PathBuf {
    if let Some(dir) = std::env::var_os("SB_REALPODS_IMAGES") {
        return PathBuf::from(dir);
    }
    let dir = repo().join("target/realpods-images");
    let out = Command::new("bash")
        .arg(repo().join("scripts/realpods"))
        .arg("images")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/realpods images failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Runs a command, panics with its output when it fails, returns stdout.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> String {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 200 ms until it gives a value; panics after `within`.
pub async fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not after {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real-pod cluster with the chart installed.
pub struct Card {
    pub rc: RealCluster,
    forwards: Mutex<HashMap<SocketAddr, Forward>>,
    /// How long `helm install --wait` took.
    pub install_took: Duration,
}

impl Card {
    /// Starts the cluster with Redis and RocketMQ inside, installs the chart with its
    /// defaults (the operator from its image), creates the chat namespace with the JWT
    /// and admin token Secrets.
    pub async fn start() -> Self {
        let images = images();
        let rc = RealCluster::start(RealOptions {
            deps: true,
            images: Some(images),
        })
        .await
        .unwrap();
        eprintln!("real-pod cluster up in {:?}", rc.started_in());
        let t = Instant::now();
        let mut card = Self {
            rc,
            forwards: Mutex::new(HashMap::new()),
            install_took: Duration::ZERO,
        };
        card.helm(INSTALL);
        card.install_took = t.elapsed();
        eprintln!("helm install --wait: {:?}", card.install_took);
        card.kubectl(&["create", "namespace", CHAT_NS]);
        card.kubectl(&[
            "-n",
            CHAT_NS,
            "create",
            "secret",
            "generic",
            "chat-jwt",
            &format!("--from-literal=secret={SECRET}"),
        ]);
        card.kubectl(&[
            "-n",
            CHAT_NS,
            "create",
            "secret",
            "generic",
            "chat-admin",
            &format!("--from-literal=token={ADMIN_TOKEN}"),
        ]);
        card
    }

    /// `helm ARGS` from the repository root (the chart is `charts/switchboard`).
    pub fn helm(&self, args: &[&str]) -> String {
        let mut cmd = self.rc.helm();
        cmd.current_dir(repo()).args(args);
        run(cmd, None)
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut cmd = self.rc.kubectl();
        cmd.args(args);
        run(cmd, None)
    }

    /// `kubectl get -o json`, parsed; `None` when it fails (e.g. not found).
    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut cmd = self.rc.kubectl();
        cmd.arg("get").args(args).args(["-o", "json"]);
        let out = cmd.output().ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The operator pods' last log lines and the Lease, for a failure message.
    pub fn operator_state(&self) -> String {
        let mut cmd = self.rc.kubectl();
        cmd.args([
            "-n",
            SYSTEM_NS,
            "logs",
            "-l",
            "app.kubernetes.io/name=switchboard-operator",
            "--tail",
            "40",
            "--prefix",
        ]);
        let logs = cmd
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let lease = self.get_json(&["-n", SYSTEM_NS, "lease", "switchboard"]);
        format!("lease: {lease:?}\noperator logs:\n{logs}")
    }

    /// The pod holding the operator's Lease once `check` accepts it; panics
    /// after `within` with the operator's logs and the Lease.
    pub async fn lease_holder(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let holder = self
                .get_json(&["-n", SYSTEM_NS, "lease", "switchboard"])
                .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned));
            if let Some(h) = holder.filter(|h| check(h)) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {within:?}\n{}",
                self.operator_state()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn apply(&self, yaml: &str) {
        let mut cmd = self.rc.kubectl();
        cmd.args(["apply", "-f", "-"]);
        run(cmd, Some(yaml));
    }

    /// A ChatCluster on the namespace's Redis and RocketMQ, JWT sign-in, admin API on.
    pub fn chat_cluster(&self, name: &str, replicas: u32) -> String {
        let redis = self.rc.dep("SB_TEST_REDIS_URL").expect("deps");
        let namesrv = self.rc.dep("SB_TEST_ROCKETMQ_NAMESRV").expect("deps");
        format!(
            "apiVersion: switchboard.dev/v1alpha1
kind: ChatCluster
metadata: {{name: {name}, namespace: {CHAT_NS}}}
spec:
  replicas: {replicas}
  redis: {{url: \"{redis}/0\"}}
  rocketmq: {{nameServer: \"{namesrv}\", queuesPerTopic: 4}}
  auth:
    jwtSecretRef: {{name: chat-jwt, key: secret}}
    adminTokenSecretRef: {{name: chat-admin, key: token}}
  drainTimeout: 5s
  terminationGracePeriodSeconds: 25
"
        )
    }

    /// Waits until the ChatCluster is `Ready` with `n` ready pods, each Ready; returns
    /// the pods (name, IP), sorted by name.
    pub async fn wait_ready(
        &self,
        name: &str,
        n: usize,
        within: Duration,
    ) -> Vec<(String, String)> {
        wait_for(
            &format!("ChatCluster {name} Ready with {n} pods"),
            within,
            || {
                let cc = self.get_json(&["-n", CHAT_NS, "chatcluster", name])?;
                let status = &cc["status"];
                let ready = status["phase"] == "Ready"
                    && status["readyReplicas"].as_u64() == Some(n as u64)
                    && status["observedGeneration"] == cc["metadata"]["generation"];
                if !ready {
                    return None;
                }
                let pods = self.pods(name);
                (pods.len() == n).then_some(pods)
            },
        )
        .await
    }

    /// The cluster's Ready pods (name, IP), sorted by name; terminating pods excluded.
    pub fn pods(&self, name: &str) -> Vec<(String, String)> {
        let Some(list) = self.get_json(&[
            "-n",
            CHAT_NS,
            "pods",
            "-l",
            &format!("app.kubernetes.io/instance={name}"),
        ]) else {
            return Vec::new();
        };
        let mut pods: Vec<(String, String)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_owned(),
                    p["status"]["podIP"].as_str()?.to_owned(),
                ))
            })
            .collect();
        pods.sort();
        pods
    }

    /// A host address forwarding to `ip:port` inside the namespace.
    pub async fn reach(&self, ip: &str, port: u16) -> SocketAddr {
        let target: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        if let Some(f) = self.forwards.lock().unwrap().get(&target) {
            return f.addr;
        }
        let f = self.rc.forward(target).await.unwrap();
        let addr = f.addr;
        self.forwards.lock().unwrap().insert(target, f);
        addr
    }

    /// The client Service of a ChatCluster, reached from the host, once it
    /// answers: kube-proxy programs a new Service's rules a moment after the
    /// Service exists, and until then the forwarder's inner connect fails.
    pub async fn service(&self, name: &str) -> SocketAddr {
        let svc = self
            .get_json(&["-n", CHAT_NS, "service", name])
            .expect("client Service");
        let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();
        let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap() as u16;
        let addr = self.reach(&ip, port).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::http_get(addr, "/healthz").await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "the Service {name} ({ip}:{port}) never answered /healthz"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        addr
    }
}
