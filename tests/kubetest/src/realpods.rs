//! A Kubernetes cluster with a real node, in one call: [`RealCluster::start`].
//!
//! `scripts/realpods up` runs the control plane, containerd, kubelet and kube-proxy
//! (and, when asked, Redis and RocketMQ) inside a private network + PID + mount
//! namespace; pods run for real from images imported into containerd. The test
//! process stays on the host and reaches the apiserver, pods and Services through
//! [`Forward`]s. Dropping the cluster runs `scripts/realpods down`, which stops
//! everything and removes the cgroups kubelet made.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Client;

use crate::error::Error;
use crate::forward::{Forward, NetNs};
use crate::kubeconfig::client_for;

/// The node's address inside the namespace (apiserver, Redis, RocketMQ listen there).
pub const NODE_IP: &str = "10.200.0.1";
/// The apiserver inside the namespace.
const APISERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 6443);
/// A free port on the host's loopback.
const ANY_LOOPBACK_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// What to start besides the cluster.
#[derive(Debug, Clone, Default)]
pub struct RealOptions {
    /// Redis and RocketMQ inside the namespace, on [`NODE_IP`] (see [`RealCluster::dep`]).
    pub deps: bool,
    /// A directory of OCI archives (`*.tar`) to import into containerd.
    pub images: Option<PathBuf>,
}

/// A running real-pod cluster.
pub struct RealCluster {
    dir: PathBuf,
    bin: PathBuf,
    ns: NetNs,
    pid: u32,
    kubeconfig: PathBuf,
    client: Client,
    env: BTreeMap<String, String>,
    started_in: Duration,
    _apiserver: Forward,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/realpods")
}

fn run_script(args: &[&str]) -> Result<String, Error> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .map_err(|e| Error::Spawn(script(), e))?;
    if !out.status.success() {
        return Err(Error::Binaries(format!(
            "scripts/realpods {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl RealCluster {
    /// Builds what is missing (cached), starts the cluster and waits for the node to
    /// be Ready. Needs root.
    pub async fn start(options: RealOptions) -> Result<Self, Error> {
        let began = Instant::now();
        let bin = crate::setup::binaries()?;
        run_script(&["build"])?;
        let dir = std::env::temp_dir().join(format!(
            "switchboard-realpods-{}-{}",
            std::process::id(),
            crate::setup::next_seq()
        ));
        let dir_s = dir.to_string_lossy().into_owned();
        let mut args = vec!["up", dir_s.as_str()];
        if options.deps {
            args.push("--deps");
        }
        let images = options
            .images
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(images) = &images {
            args.extend(["--images", images.as_str()]);
        }
        let out = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            move || run_script(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .map_err(|e| Error::Binaries(e.to_string()))??;
        let env: BTreeMap<String, String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let down = Down(dir.clone());
        let pid: u32 = env
            .get("SB_REALPODS_PID")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Error::Binaries(format!("no SB_REALPODS_PID in: {out}")))?;
        let ns = NetNs::of(pid).map_err(|e| Error::Io(dir.join("ns"), e))?;
        let apiserver = Forward::start(ns.clone(), ANY_LOOPBACK_PORT, APISERVER)
            .await
            .map_err(|e| Error::Io(dir.clone(), e))?;
        // The same credentials as inside, through the forwarder (the apiserver's
        // certificate names 127.0.0.1).
        let inside = std::fs::read_to_string(dir.join("kubeconfig"))
            .map_err(|e| Error::Io(dir.join("kubeconfig"), e))?;
        let kubeconfig = dir.join("host-kubeconfig");
        std::fs::write(
            &kubeconfig,
            inside.replace(
                &format!("https://{NODE_IP}:6443"),
                &format!("https://{}", apiserver.addr),
            ),
        )
        .map_err(|e| Error::Io(kubeconfig.clone(), e))?;
        let client = client_for(&kubeconfig).await?;
        std::mem::forget(down);
        Ok(Self {
            dir,
            bin,
            ns,
            pid,
            kubeconfig,
            client,
            env,
            started_in: began.elapsed(),
            _apiserver: apiserver,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The host-side kubeconfig (through the apiserver forwarder).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PID (on the host) of the namespace's first process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// An export of `scripts/realpods up`, e.g. `SB_TEST_REDIS_URL` (addresses that
    /// exist inside the namespace only).
    pub fn dep(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// Forwards a free host port to `target` inside the namespace.
    pub async fn forward(&self, target: SocketAddr) -> Result<Forward, Error> {
        Forward::start(self.ns.clone(), ANY_LOOPBACK_PORT, target)
            .await
            .map_err(|e| Error::Io(self.dir.clone(), e))
    }

    /// `kubectl` on the host with this cluster's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kube-cache"));
        cmd
    }

    /// `helm` on the host with this cluster's kubeconfig and private helm directories.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("helm"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }

    /// The last lines of a component's log (`kubelet`, `containerd`, `deps`, ...).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("run/logs/{name}.log")))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl std::fmt::Debug for RealCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealCluster")
            .field("dir", &self.dir)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Stops the cluster (used while starting, too).
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let dir = self.0.to_string_lossy().into_owned();
        let _ = run_script(&["down", &dir]);
        if std::env::var_os("SB_KEEP_REALPODS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        drop(Down(self.dir.clone()));
    }
}
