//! A set of dependencies of one test's own: `scripts/deps start` with options of the
//! test's choosing (a broker with ACL), beside the shared set, stopped on drop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// Redis, a name server and a broker that only this test uses.
pub struct OwnDeps {
    env: HashMap<String, String>,
}

impl OwnDeps {
    /// Runs `scripts/deps start ARGS` (the shared set's `SB_DEPS_DIR` hidden from it).
    pub fn start(args: &[&str]) -> Self {
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .args(args)
            .env_remove("SB_DEPS_DIR")
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/deps: {e}"));
        assert!(
            out.status.success(),
            "scripts/deps start {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { env }
    }

    /// Runs `scripts/deps ARGS` on this set (e.g. `add-user`); panics when it fails.
    pub fn run(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .env("SB_DEPS_DIR", self.get("SB_DEPS_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/deps: {e}"));
        assert!(
            out.status.success(),
            "scripts/deps {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One of the variables `start` exported (`SB_TEST_ROCKETMQ_NAMESRV`, ...).
    pub fn get(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("scripts/deps start exported no {name}"))
    }
}

impl Drop for OwnDeps {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("SB_DEPS_DIR", self.get("SB_DEPS_DIR"))
            .status();
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/deps")
}
