//! TCP forwarding from the host into a private network namespace.
//!
//! Pods, Services and the real-pod control plane have addresses only inside the
//! namespace that `scripts/realpods` creates. A [`Forward`] listens on a free
//! `127.0.0.1` port of the host and, for each connection, opens one to the target
//! from inside the namespace: a short-lived thread enters the namespace's network
//! (`setns`), connects, and hands the socket back (a socket stays in the namespace
//! it was made in). Then bytes are copied both ways. Nothing is routed between the
//! host and the namespace; only these sockets cross.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The network namespace of a process, kept open.
#[derive(Debug, Clone)]
pub struct NetNs(Arc<File>);

impl NetNs {
    /// The network namespace of process `pid` (needs root).
    pub fn of(pid: u32) -> io::Result<Self> {
        Ok(Self(Arc::new(File::open(format!("/proc/{pid}/ns/net"))?)))
    }

    /// Connects to `target` from inside the namespace.
    pub async fn connect(&self, target: SocketAddr) -> io::Result<TcpStream> {
        let ns = self.0.clone();
        let std_stream = tokio::task::spawn_blocking(move || -> io::Result<StdTcpStream> {
            // A thread of its own: setns changes only the calling thread, and this
            // one ends right after, so no pooled thread is left in the namespace.
            std::thread::spawn(move || {
                enter_net_namespace(&ns)?;
                let s = StdTcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .join()
            .map_err(|_| io::Error::other("the connecting thread panicked"))?
        })
        .await
        .map_err(io::Error::other)??;
        TcpStream::from_std(std_stream)
    }
}

/// Moves the calling thread into the network namespace `ns` refers to.
// The one FFI call of the crate: std has no setns.
#[allow(unsafe_code)]
fn enter_net_namespace(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open /proc/<pid>/ns/net file for the duration of the call;
    // setns only changes the calling thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A host port forwarding to one address inside a namespace; stops when dropped.
#[derive(Debug)]
pub struct Forward {
    /// Where to connect on the host (`127.0.0.1:<free port>`).
    pub addr: SocketAddr,
    /// The address inside the namespace.
    pub target: SocketAddr,
    task: JoinHandle<()>,
}

/// The runtime forwards run on: a thread of its own, so that a test blocking its own
/// runtime (a `kubectl` run with `std::process::Command`, whose apiserver connection
/// goes through a forward) cannot stall the forward it waits on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("forward")
            .enable_all()
            .build()
            .expect("the forwarding runtime")
    })
}

impl Forward {
    /// Listens on `listen` (use port 0 for a free one) and forwards to `target`.
    pub async fn start(ns: NetNs, listen: SocketAddr, target: SocketAddr) -> io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let task = runtime().spawn(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else {
                return;
            };
            loop {
                let Ok((mut outside, _)) = listener.accept().await else {
                    continue;
                };
                let ns = ns.clone();
                tokio::spawn(async move {
                    // A refused or unreachable target closes the client's connection,
                    // as a refused connection would.
                    if let Ok(mut inside) = ns.connect(target).await {
                        let _ = outside.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                    }
                });
            }
        });
        Ok(Self { addr, target, task })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_dead_target_closes_the_client() {
        // This process's own namespace stands in for the pods' one.
        let ns = NetNs::of(std::process::id()).unwrap();
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let fwd = Forward::start(ns.clone(), "127.0.0.1:0".parse().unwrap(), target)
            .await
            .unwrap();
        assert_ne!(fwd.addr, target);
        let mut c = TcpStream::connect(fwd.addr).await.unwrap();
        c.write_all(b"ping through the namespace").await.unwrap();
        let mut buf = [0u8; 26];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping through the namespace");

        // Nothing listens at the target: the forwarded connection is closed.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = free.local_addr().unwrap();
        drop(free);
        let fwd = Forward::start(ns, "127.0.0.1:0".parse().unwrap(), dead)
            .await
            .unwrap();
        let mut c = TcpStream::connect(fwd.addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
