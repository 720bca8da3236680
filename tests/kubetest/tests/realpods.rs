//! The real-pod cluster itself: a pod really runs (a process in its own PID
//! namespace under containerd), and stopping the cluster leaves nothing on the host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use switchboard_kubetest::{RealCluster, RealOptions};

fn sysctls() -> Vec<String> {
    [
        "vm/overcommit_memory",
        "kernel/panic",
        "kernel/panic_on_oops",
    ]
    .iter()
    .map(|k| std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap())
    .collect()
}

fn kubepods_cgroups() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("kubepods"))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect()
}

/// Where containerd, kubelet and libcni write by default.
const HOST_PATHS: [&str; 6] = [
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
];

fn existing_host_paths() -> Vec<&'static str> {
    HOST_PATHS
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect()
}

#[tokio::test]
async fn a_pod_runs_for_real_and_nothing_is_left_on_the_host() {
    let before = sysctls();
    let paths_before = existing_host_paths();
    let rc = RealCluster::start(RealOptions::default()).await.unwrap();
    eprintln!("real-pod cluster up in {:?}", rc.started_in());
    let pods: Api<Pod> = Api::namespaced(rc.client(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sleeper"},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "pause", "image": "localhost/switchboard/pause:1",
                "imagePullPolicy": "Never",
            }],
        },
    }))
    .unwrap();
    let t = Instant::now();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ip = loop {
        let p = pods.get("sleeper").await.unwrap();
        let status = p.status.unwrap_or_default();
        if status.phase.as_deref() == Some("Running")
            && let Some(ip) = status.pod_ip
        {
            break ip;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "pod not running; kubelet: {}",
            rc.log_tail("kubelet", 20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("pod Running at {ip} in {:?}", t.elapsed());
    assert!(ip.starts_with("10.244.0."), "{ip}");
    // The container is a real process: its PID 1 is the pause program.
    let mut exec = rc.kubectl();
    exec.args([
        "get",
        "pod",
        "sleeper",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    let id = String::from_utf8(exec.output().unwrap().stdout).unwrap();
    assert!(id.starts_with("containerd://"), "{id}");
    // The node address and the pod bridge exist only inside the namespace (checked
    // without sending anything: off the namespace, that address is not ours).
    let host_addrs = String::from_utf8(
        std::process::Command::new("ip")
            .args(["-o", "addr", "show"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!host_addrs.contains("10.200.0.1"), "{host_addrs}");
    assert!(!host_addrs.contains(" cni0 "), "{host_addrs}");
    let ns_pid = rc.pid();
    drop(rc);

    assert!(
        !Path::new(&format!("/proc/{ns_pid}")).exists(),
        "the namespace's first process is gone"
    );
    assert_eq!(sysctls(), before, "machine-wide sysctls untouched");
    assert_eq!(kubepods_cgroups(), Vec::<String>::new(), "cgroups removed");
    assert_eq!(existing_host_paths(), paths_before, "written on the host");
}
