//! The PodDisruptionBudget of the chat nodes.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{meta, names, selector_labels};
use crate::crd::ChatCluster;
use crate::validate::Resolved;

pub(super) fn pdb(cc: &ChatCluster, r: &Resolved) -> Option<PodDisruptionBudget> {
    let p = &cc.spec.pod_disruption_budget;
    p.enabled.then(|| PodDisruptionBudget {
        metadata: meta(cc, r, names::pdb(&r.name), "chat-node"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(p.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&r.name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}
