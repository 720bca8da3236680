//! The offline manifest check (`scripts/check-manifests`): rendered charts pass, and a
//! broken manifest is caught without any cluster.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check-manifests")
}

#[test]
fn every_chart_renders_to_valid_manifests() {
    let out = Command::new("bash").arg(script()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("tests/kubetest/fixtures/demo-chart"),
        "{stderr}"
    );
}

#[test]
fn a_misspelt_field_and_a_wrong_type_are_rejected() {
    let dir = std::env::temp_dir().join(format!("sb-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  replica: 2\n\
         \x20 selector: {matchLabels: {app: bad}}\n  template:\n    metadata: {labels: {app: bad}}\n\
         \x20   spec: {containers: [{name: c, image: x}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports: [{port: \"eighty\"}]\n",
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(script())
        .arg(&bad)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success(), "must fail: {text}");
    assert!(text.contains("replica"), "names the unknown field: {text}");
    assert!(text.contains("eighty"), "names the wrong type: {text}");
}
