//! Harness of the operator tests: a real control plane with the chart installed, the
//! operator binary on the host with the chart's ServiceAccount token (so the chart's
//! RBAC is what is tested), and the Redis and RocketMQ of `scripts/deps start`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::Api;
use serde_json::Value;
use switchboard_kubetest::ControlPlane;
use switchboard_operator::crd::ChatCluster;
use switchboard_rocketmq::names::{Names, prefix};
use switchboard_rocketmq::{Admin, Runtime};

/// Namespace the chart is installed into.
pub const SYSTEM_NS: &str = "switchboard-system";
/// Helm release (and so ServiceAccount, Lease) name.
pub const RELEASE: &str = "switchboard";

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `eval \"$(scripts/deps start)\"` first (scripts/test does)")
    })
}

pub fn redis_url() -> String {
    env("SB_TEST_REDIS_URL")
}

pub fn namesrv() -> String {
    env("SB_TEST_ROCKETMQ_NAMESRV")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A control plane with the chart installed.
pub struct Env {
    pub cp: ControlPlane,
    /// Kubeconfig with the chart's ServiceAccount token.
    pub sa_kubeconfig: PathBuf,
    pub rt: Runtime,
    pub admin: Admin,
}

impl Env {
    pub async fn start() -> Self {
        switchboard_operator::install_crypto_provider();
        let cp = ControlPlane::start().await.expect("control plane starts");
        let chart = workspace().join("charts/switchboard");
        run(cp.helm().args(["lint", "--strict"]).arg(&chart));
        run(cp.helm().args(["install", RELEASE]).arg(&chart).args([
            "--namespace",
            SYSTEM_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "60s",
        ]));
        let token = run(cp.kubectl().args([
            "create",
            "token",
            RELEASE,
            "-n",
            SYSTEM_NS,
            "--duration",
            "2h",
        ]));
        let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
        let sa_kubeconfig = cp.dir().join("operator-sa.kubeconfig");
        write_token_kubeconfig(&sa_kubeconfig, cp.server(), &cp.ca_pem().unwrap(), &token);
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        Self {
            cp,
            sa_kubeconfig,
            rt,
            admin,
        }
    }

    /// Starts the operator binary as the chart's ServiceAccount.
    pub fn operator(&self, identity: &str) -> Operator {
        self.operator_with(identity, &[])
    }

    /// [`Env::operator`] with more environment variables.
    pub fn operator_with(&self, identity: &str, extra: &[(&str, &str)]) -> Operator {
        Operator::spawn(&self.sa_kubeconfig, self.cp.dir(), identity, extra)
    }

    /// `kubectl` as cluster admin; panics with its stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        String::from_utf8(run(self.cp.kubectl().args(args)).stdout).unwrap()
    }

    /// `kubectl` with `stdin`; returns the output whatever the exit status.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cp
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn clusters(&self, ns: &str) -> Api<ChatCluster> {
        Api::namespaced(self.cp.client(), ns)
    }

    /// Creates the JWT Secret the example refers to (with the e2e harness's secret, so its
    /// clients' tokens are accepted).
    pub fn jwt_secret(&self, ns: &str) {
        self.kubectl(&[
            "create",
            "secret",
            "generic",
            "chat-jwt",
            "-n",
            ns,
            &format!("--from-literal=secret={}", switchboard_e2e::SECRET),
        ]);
    }

    /// `examples/chatcluster.yaml` pointed at the test's Redis and RocketMQ, with `name`.
    pub fn example(&self, name: &str) -> String {
        std::fs::read_to_string(workspace().join("examples/chatcluster.yaml"))
            .unwrap()
            .replace("redis://redis.default.svc:6379/0", &redis_url())
            .replace("rocketmq-namesrv.default.svc:9876", &namesrv())
            .replace("name: chat\n", &format!("name: {name}\n"))
    }

    pub fn apply(&self, ns: &str, yaml: &str) {
        let out = self.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the ChatCluster's status satisfies `ok`; returns it.
    pub async fn wait_status(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&ChatCluster) -> bool,
    ) -> ChatCluster {
        let api = self.clusters(ns);
        wait_until(what, timeout, || {
            let api = api.clone();
            let ok = &ok;
            async move { api.get_opt(name).await.ok().flatten().filter(|c| ok(c)) }
        })
        .await
    }

    /// Waits until the ChatCluster `ns/name` no longer exists.
    pub async fn wait_gone(&self, ns: &str, name: &str, timeout: Duration) {
        let api = self.clusters(ns);
        wait_until(&format!("ChatCluster {name} to be gone"), timeout, || {
            let api = api.clone();
            async move {
                api.get_opt(name)
                    .await
                    .ok()
                    .and_then(|o| o.is_none().then_some(()))
            }
        })
        .await;
    }

    /// Names of `ns/name`'s topics and groups.
    pub fn names(ns: &str, name: &str) -> Names {
        Names::new(prefix(ns, name))
    }
}

pub fn phase(cc: &ChatCluster) -> &str {
    cc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn condition<'a>(
    cc: &'a ChatCluster,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    cc.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

pub fn is_ready(cc: &ChatCluster, replicas: i32) -> bool {
    let st = cc.status.clone().unwrap_or_default();
    phase(cc) == "Ready"
        && st.ready_replicas == replicas
        && st.observed_generation == cc.metadata.generation
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_token_kubeconfig(path: &Path, server: &str, ca_pem: &str, token: &str) {
    use base64::Engine as _;
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: operator\n  context:\n    cluster: test\n    user: operator\ncurrent-context: operator\n",
        ca = base64::engine::general_purpose::STANDARD.encode(ca_pem),
    );
    std::fs::write(path, yaml).unwrap();
}

/// The operator binary, running on the host.
pub struct Operator {
    child: Child,
    pub listen: SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    pub fn spawn(kubeconfig: &Path, dir: &Path, identity: &str, extra: &[(&str, &str)]) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("SB_OPERATOR_LISTEN", listen.to_string())
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", SYSTEM_NS)
            .env("SB_LEASE_NAME", RELEASE)
            .env("SB_NODE_IMAGE", "ghcr.io/switchboard-dev/switchboard-node:test")
            .env("SB_CLEANUP_TIMEOUT", "10m")
            .env("RUST_LOG", "info,switchboard_operator=debug,kube=warn,rocketmq=warn,rocketmq_client_rust=warn,rocketmq_remoting=warn")
            .envs(extra.iter().copied())
            .arg("run")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("operator binary starts");
        Self { child, listen, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn metrics(&self) -> String {
        match switchboard_e2e::http_get(self.listen, "/metrics").await {
            (200, Value::String(s)) => s,
            (200, v) => v.to_string(),
            _ => String::new(),
        }
    }

    /// Sum of every series of the metric `name` (`name` or `name{...}`).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "operator did not stop after SIGTERM:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Resident memory, from /proc.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
