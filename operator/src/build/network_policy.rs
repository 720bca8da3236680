//! The NetworkPolicy of the chat nodes: clients in on the node port; Redis, RocketMQ and DNS
//! out. Built only when `spec.networkPolicy.enabled`.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, meta, names, selector_labels};
use crate::crd::ChatCluster;
use crate::validate::Resolved;

fn port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        ..NetworkPolicyPort::default()
    }
}

pub(super) fn network_policy(cc: &ChatCluster, r: &Resolved) -> Option<NetworkPolicy> {
    let n = &cc.spec.network_policy;
    n.enabled.then(|| NetworkPolicy {
        metadata: meta(cc, r, names::network_policy(&r.name), "chat-node"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&r.name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                // No `from`: anyone may connect to the node port.
                from: (!n.clients.is_empty()).then(|| n.clients.clone()),
                ports: Some(vec![port("TCP", HTTP_PORT)]),
            }]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    to: Some(n.backends.clone()),
                    ports: None,
                },
                // DNS, wherever the cluster runs it.
                NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
                },
            ]),
        }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyPeer};

    use super::*;
    use crate::validate::{tests::sample, validate};

    #[test]
    fn off_by_default_and_built_from_the_spec_when_on() {
        let cc = sample();
        assert!(network_policy(&cc, &validate(&cc, "n").unwrap()).is_none());
        let mut cc = sample();
        cc.spec.network_policy.enabled = true;
        cc.spec.network_policy.backends = vec![NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.0.0.0/24".into(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        }];
        let np = network_policy(&cc, &validate(&cc, "n").unwrap()).unwrap();
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            selector_labels("chat")
        );
        let ingress = &spec.ingress.unwrap()[0];
        assert!(ingress.from.is_none(), "no clients listed: anyone");
        assert_eq!(
            ingress.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(HTTP_PORT))
        );
        let egress = spec.egress.unwrap();
        assert_eq!(
            egress[0].to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            "10.0.0.0/24"
        );
        assert_eq!(egress[1].ports.as_ref().unwrap().len(), 2);
    }
}
