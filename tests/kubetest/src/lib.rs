//! A real Kubernetes control plane for tests, in one call.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok (which plays the kubelet for fake nodes) on free loopback
//! ports, with certificates made for this one control plane, and hands back a
//! [`kube::Client`]. Dropping it kills and reaps every process it started and removes
//! its directory, also when the test panics.
//!
//! [`RealCluster::start`] runs the same control plane with a real node (containerd,
//! kubelet, kube-proxy) in a private namespace, for pods that really run.
//!
//! The binaries come from `scripts/controlplane`, which builds them once from the Go
//! modules pinned in `tests/controlplane/go.mod` into a cache outside the clone. Set
//! `SB_CONTROLPLANE_BIN` to a directory holding them to skip that lookup.

mod certs;
mod error;
mod forward;
mod kubeconfig;
mod process;
mod realpods;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

pub use crate::error::Error;
pub use crate::forward::{Forward, NetNs};
pub use crate::kubeconfig::client_for;
use crate::kubeconfig::{http_get, write_kubeconfig};
use crate::process::{Proc, free_port};
pub use crate::realpods::{NODE_IP, RealCluster, RealOptions};
pub use crate::setup::{KWOK_NODE_ANNOTATION, binaries};
use crate::setup::{
    READY_TIMEOUT, apiserver_args, args, fake_node, next_seq, node_is_ready, wait_ready,
};

/// How many times [`ControlPlane::start_with`] tries when a port was taken.
const START_ATTEMPTS: u32 = 3;

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fake nodes managed by kwok (`kwok-node-0`, ...).
    pub nodes: usize,
    /// Directory for certificates, data and logs. `None`: a new temporary directory,
    /// removed on drop. `Some`: kept, for a human to read the logs.
    pub dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 1,
            dir: None,
        }
    }
}

/// A running control plane. Dropping it stops everything it started.
pub struct ControlPlane {
    // Declared first so the processes are dropped (killed) before `dir` is removed.
    procs: Vec<Proc>,
    dir: PathBuf,
    keep_dir: bool,
    bin: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    client: Client,
    nodes: Vec<String>,
    started_in: Duration,
}

impl ControlPlane {
    /// Starts a control plane with one kwok node.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(Options::default()).await
    }

    /// Starts a control plane. The ports are picked free just before each process
    /// binds them; when another process takes one in between (CI runs several
    /// control planes and brokers at once), that start is thrown away and retried
    /// with new ports, at most [`START_ATTEMPTS`] times.
    pub async fn start_with(options: Options) -> Result<Self, Error> {
        let mut attempt = 1;
        loop {
            match Self::start_once(options.clone()).await {
                Err(e) if e.is_port_clash() && attempt < START_ATTEMPTS => {
                    eprintln!("control plane start {attempt}: a port was taken, retrying: {e}");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(options: Options) -> Result<Self, Error> {
        let began = Instant::now();
        let bin = binaries()?;
        let (dir, keep_dir) = match options.dir {
            Some(dir) => (dir, true),
            None => {
                let seq = next_seq();
                let dir = std::env::temp_dir().join(format!(
                    "sb-kube-{}-{seq}-{}",
                    std::process::id(),
                    began.elapsed().as_nanos() % 1_000_000
                ));
                (dir, false)
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(dir.clone(), e))?;
        let mut starting = Starting {
            procs: Vec::new(),
            dir: dir.clone(),
            keep_dir,
        };

        let certs = certs::generate(&dir.join("pki"))?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Proc::spawn(
            "etcd",
            &bin.join("etcd"),
            &args(&[
                "--name=sb",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=sb={peer_url}"),
                // Test data is thrown away: skip fsync, it is most of etcd's latency.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]),
            &dir,
        )?;
        starting.procs.push(etcd);

        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let apiserver = Proc::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &apiserver_args(&certs, &etcd_url, api_port, &dir),
            &dir,
        )?;
        starting.procs.push(apiserver);

        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &certs)?;
        let client = client_for(&kubeconfig).await?;
        wait_ready(&mut starting.procs, "kube-apiserver /readyz", || {
            let client = client.clone();
            async move {
                let req = http_get("/readyz")?;
                Ok(client.request_text(req).await.is_ok_and(|t| t == "ok"))
            }
        })
        .await?;

        let kubeconfig_arg = format!("--kubeconfig={}", kubeconfig.display());
        let controller_manager = Proc::spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &args(&[
                &kubeconfig_arg,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", free_port()?),
                &format!(
                    "--service-account-private-key-file={}",
                    certs.service_account_key.display()
                ),
                &format!("--root-ca-file={}", certs.ca_cert.display()),
                "--controllers=*",
                // Pods of deleted nodes, GC and StatefulSets react in test time.
                "--concurrent-gc-syncs=5",
                "--v=1",
            ]),
            &dir,
        )?;
        starting.procs.push(controller_manager);

        let scheduler = Proc::spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &args(&[
                &kubeconfig_arg,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", free_port()?),
                "--v=1",
            ]),
            &dir,
        )?;
        starting.procs.push(scheduler);

        let kwok = Proc::spawn(
            "kwok",
            &bin.join("kwok"),
            &args(&[
                &kubeconfig_arg,
                &format!("--config={}", bin.join("kwok-stages.yaml").display()),
                "--manage-all-nodes=false",
                &format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
            ]),
            &dir,
        )?;
        starting.procs.push(kwok);

        let nodes = (0..options.nodes.max(1))
            .map(|i| format!("kwok-node-{i}"))
            .collect::<Vec<_>>();
        let node_api: Api<Node> = Api::all(client.clone());
        for name in &nodes {
            node_api
                .create(&PostParams::default(), &fake_node(name))
                .await?;
        }
        wait_ready(&mut starting.procs, "kwok nodes Ready", || {
            let node_api = node_api.clone();
            let nodes = nodes.clone();
            async move {
                for name in &nodes {
                    let node = node_api.get(name).await?;
                    if !node_is_ready(&node) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        })
        .await?;
        // The controller-manager is working once it has made the default namespace's
        // service account; pods cannot be admitted before that.
        let sa_api: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        wait_ready(&mut starting.procs, "default service account", || {
            let sa_api = sa_api.clone();
            async move { Ok(sa_api.get_opt("default").await?.is_some()) }
        })
        .await?;

        let procs = std::mem::take(&mut starting.procs);
        starting.keep_dir = true; // ownership moves to the ControlPlane
        Ok(Self {
            procs,
            dir,
            keep_dir,
            bin,
            kubeconfig,
            server,
            client,
            nodes,
            started_in: began.elapsed(),
        })
    }

    /// A client authenticated as a cluster admin (group `system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Path of an admin kubeconfig with the certificates inlined.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> Result<String, Error> {
        let path = self.dir.join("pki").join("ca.crt");
        std::fs::read_to_string(&path).map_err(|e| Error::Io(path, e))
    }

    /// The control plane's directory (certificates, data, one log per process).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory of the binaries (kubectl, helm, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Names of the kwok nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// How long [`ControlPlane::start_with`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// PIDs of the processes this control plane runs.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// `kubectl` with this control plane's admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kube-cache"));
        cmd
    }

    /// `helm` with this control plane's admin kubeconfig and its own cache and config
    /// directories (nothing is written to `$HOME`).
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("helm"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }

    /// Creates a namespace of its own for one test (`<prefix>-<n>`) and waits until
    /// its default service account exists, so pods can be admitted at once.
    pub async fn namespace(&self, prefix: &str) -> Result<String, Error> {
        let seq = next_seq();
        let name = format!("{prefix}-{seq}");
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name },
        }))
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        api.create(&PostParams::default(), &ns).await?;
        let sa_api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        let deadline = Instant::now() + READY_TIMEOUT;
        while sa_api.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("service account default in {name}"),
                    after: READY_TIMEOUT,
                    log: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(name)
    }

    /// The last lines of one component's log (`"kube-apiserver"`, `"kwok"`, ...).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .field("pids", &self.pids())
            .finish_non_exhaustive()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Stop the clients of the apiserver first, etcd last.
        while let Some(proc) = self.procs.pop() {
            drop(proc);
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Owns the processes while starting, so an error part-way stops what already runs.
struct Starting {
    procs: Vec<Proc>,
    dir: PathBuf,
    keep_dir: bool,
}

impl Drop for Starting {
    fn drop(&mut self) {
        while let Some(proc) = self.procs.pop() {
            drop(proc);
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
