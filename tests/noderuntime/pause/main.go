// Command pause is the pod sandbox image's only process: it keeps the pod's
// namespaces alive, reaps orphaned children when it is the pod's PID 1, and
// exits cleanly on SIGTERM or SIGINT. Built static (CGO_ENABLED=0) by
// scripts/realpods into a one-file image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		reap()
	}
}

// reap collects every exited child without blocking.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
