//! The client Service and the headless Service of the chat nodes.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, meta, names, selector_labels};
use crate::crd::ChatCluster;
use crate::validate::Resolved;

/// The Service clients connect to (WebSocket and HTTP).
pub(super) fn client(cc: &ChatCluster, r: &Resolved) -> Service {
    let s = &cc.spec.service;
    let mut metadata = meta(cc, r, names::client_service(&r.name), "client");
    if !s.annotations.is_empty() {
        metadata.annotations = Some(s.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(s.type_.as_str().to_owned()),
            selector: Some(selector_labels(&r.name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: s.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The headless Service: a stable DNS name per pod (`<pod>.<name>-nodes`), also for pods
/// that are not ready yet.
pub(super) fn headless(cc: &ChatCluster, r: &Resolved) -> Service {
    Service {
        metadata: meta(cc, r, names::headless_service(&r.name), "chat-node"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&r.name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::crd::ServiceType;
    use crate::validate::{tests::sample, validate};

    #[test]
    fn client_service_takes_type_port_and_annotations() {
        let mut cc = sample();
        cc.spec.service.type_ = ServiceType::LoadBalancer;
        cc.spec.service.port = 443;
        cc.spec
            .service
            .annotations
            .insert("lb".into(), "internal".into());
        let svc = client(&cc, &validate(&cc, "n").unwrap());
        assert_eq!(svc.metadata.annotations.unwrap()["lb"], "internal");
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.ports.unwrap()[0].port, 443);
    }

    #[test]
    fn headless_service_publishes_every_pod() {
        let cc = sample();
        let spec = headless(&cc, &validate(&cc, "n").unwrap()).spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
    }
}
