//! Certificates for one test control plane: a throwaway CA, the apiserver's serving
//! certificate, an admin client certificate and the service-account signing key.
//! All live in the control plane's own directory and die with it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::Error;

/// Paths of the PEM files written by [`generate`].
#[derive(Debug, Clone)]
pub(crate) struct Certs {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// Signs service-account tokens (apiserver, controller-manager).
    pub service_account_key: PathBuf,
    /// Verifies them (apiserver).
    pub service_account_pub: PathBuf,
    /// PEM strings, inlined into the kubeconfig so it stands alone.
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

fn cert_error(e: rcgen::Error) -> Error {
    Error::Certs(e.to_string())
}

/// Writes every certificate and key the control plane needs into `dir`.
pub(crate) fn generate(dir: &Path) -> Result<Certs, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.to_path_buf(), e))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "switchboard-test-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(cert_error)?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(cert_error)?;

    // The names a client inside or outside the cluster may use for the apiserver.
    let mut serving_params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "10.96.0.1".to_owned(),
    ])
    .map_err(cert_error)?;
    serving_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate().map_err(cert_error)?;
    let serving = serving_params
        .signed_by(&serving_key, &ca)
        .map_err(cert_error)?;

    // system:masters is bound to cluster-admin by the apiserver's bootstrap policy.
    let mut admin_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    admin_params
        .distinguished_name
        .push(DnType::CommonName, "switchboard-test-admin");
    admin_params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate().map_err(cert_error)?;
    let admin = admin_params
        .signed_by(&admin_key, &ca)
        .map_err(cert_error)?;

    let sa_key = KeyPair::generate().map_err(cert_error)?;

    let write = |name: &str, pem: &str| -> Result<PathBuf, Error> {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|e| Error::Io(path.clone(), e))?;
        Ok(path)
    };
    let ca_pem = ca.pem();
    let admin_cert_pem = admin.pem();
    let admin_key_pem = admin_key.serialize_pem();
    Ok(Certs {
        ca_cert: write("ca.crt", &ca_pem)?,
        serving_cert: write("apiserver.crt", &serving.pem())?,
        serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
        service_account_key: write("service-account.key", &sa_key.serialize_pem())?,
        service_account_pub: write("service-account.pub", &sa_key.public_key_pem())?,
        ca_pem,
        admin_cert_pem,
        admin_key_pem,
    })
}
