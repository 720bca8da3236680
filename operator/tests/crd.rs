//! The committed CRD files are what the operator generates (`scripts/gen-crd`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn committed_crds_are_fresh() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "crds/chatcluster.yaml",
        "charts/switchboard/crds/chatcluster.yaml",
    ] {
        let committed = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        assert!(
            committed == generated,
            "{file} is stale: run scripts/gen-crd and commit the result"
        );
    }
}
