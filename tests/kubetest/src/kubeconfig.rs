//! The admin kubeconfig of a control plane, and clients made from one.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::certs::Certs;
use crate::error::Error;

pub(crate) fn write_kubeconfig(path: &Path, server: &str, certs: &Certs) -> Result<(), Error> {
    // JSON is YAML: kubectl, helm and kube-rs all read this file.
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "switchboard-test",
            "cluster": {
                "server": server,
                "certificate-authority-data": b64(&certs.ca_pem),
            },
        }],
        "users": [{
            "name": "switchboard-test-admin",
            "user": {
                "client-certificate-data": b64(&certs.admin_cert_pem),
                "client-key-data": b64(&certs.admin_key_pem),
            },
        }],
        "contexts": [{
            "name": "switchboard-test",
            "context": {
                "cluster": "switchboard-test",
                "user": "switchboard-test-admin",
                "namespace": "default",
            },
        }],
        "current-context": "switchboard-test",
    });
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::Io(path.to_path_buf(), e))
}

/// Standard base64, as kubeconfig `*-data` fields want it.
fn b64(pem: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client, Error> {
    // A crate that links this one may enable both of rustls's providers (aws-lc-rs via
    // another dependency): pick one, as the node and the operator do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(Client::try_from(config)?)
}

pub(crate) fn http_get(path: &str) -> Result<http::Request<Vec<u8>>, Error> {
    http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Error::Kubeconfig(e.to_string()))
}
