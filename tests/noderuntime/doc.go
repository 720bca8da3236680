// Module switchboard.dev/tests/noderuntime pins what a real test node runs
// besides kubelet: containerd v2.4.2 (daemon, ctr, runc shim) as tools, and
// the pod sandbox's pause program (./pause). containerd needs newer gRPC and
// OpenTelemetry modules than Kubernetes v1.37.2 pins, so it is a module of
// its own rather than a tool of tests/controlplane. Built by scripts/realpods.
package noderuntime
