//! Child processes of a control plane: started with their output in a log file, and
//! killed (then reaped) when dropped, so a panicking test leaves nothing behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::Error;

#[derive(Debug)]
pub(crate) struct Proc {
    pub name: &'static str,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn spawn(
        name: &'static str,
        bin: &Path,
        args: &[String],
        dir: &Path,
    ) -> Result<Self, Error> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| Error::Io(log.clone(), e))?;
        let err = out.try_clone().map_err(|e| Error::Io(log.clone(), e))?;
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Spawn(bin.to_path_buf(), e))?;
        Ok(Self { name, log, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the end of the log when the process has exited.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name,
                status: status.to_string(),
                log: tail(&self.log, 30),
            }),
            Err(e) => Err(Error::Io(self.log.clone(), e)),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL: the control plane's state is thrown away with its directory, so
        // there is nothing a graceful stop would save, and it never hangs.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log file (best effort: a diagnostic for errors).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A port that was free on 127.0.0.1 a moment ago. The window between this and the
/// server binding it is tiny, and a clash shows up as a clear start-up error.
pub(crate) fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Io(PathBuf::from("127.0.0.1:0"), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Io(PathBuf::from("127.0.0.1:0"), e))?
        .port();
    Ok(port)
}
