//! One reconcile of a ChatCluster: validate -> build -> topics -> apply -> remove what
//! scaled away -> status; and the finalizer's cleanup.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use switchboard_rocketmq::names::Names;
use tracing::{info, warn};

use super::apply::{Applied, apply, delete_orphans};
use super::topics::Layout;
use super::{Context, Error};
use crate::build::{self, Built, names, selector_string};
use crate::crd::{ChatCluster, ChatClusterStatus};
use crate::status::{self, Outcome};
use crate::validate::validate;
use crate::{FIELD_MANAGER, PAUSED_ANNOTATION, SKIP_CLEANUP_ANNOTATION};

/// Requeue of a cluster that is not settled yet (the owned-object watches usually come first).
const UNSETTLED: Duration = Duration::from_secs(15);
/// Requeue of a settled cluster: a periodic check of the broker's topics and the children.
const SETTLED: Duration = Duration::from_secs(300);

fn annotated(cc: &ChatCluster, key: &str) -> bool {
    cc.annotations().get(key).is_some_and(|v| v == "true")
}

fn layout(cc: &ChatCluster, prefix: &str) -> Layout {
    Layout {
        names: Names::new(prefix),
        queues: cc.spec.rocketmq.queues_per_topic,
        retry_max: cc.spec.rocketmq.retry_max_times,
    }
}

/// Ordinals whose topic the status records.
fn recorded_ordinals(cc: &ChatCluster, layout: &Layout) -> BTreeSet<u32> {
    cc.status
        .iter()
        .flat_map(|s| s.topics.iter())
        .filter_map(|t| layout.ordinal_of(t))
        .collect()
}

async fn event(ctx: &Context, cc: &ChatCluster, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    match ctx.recorder.publish(&ev, &cc.object_ref(&())).await {
        Ok(()) => ctx.metrics.wrote("event"),
        Err(e) => warn!(error = %e, "cannot publish event"),
    }
}

/// Writes `next` as the status unless it equals the current one.
async fn write_status(
    ctx: &Context,
    cc: &ChatCluster,
    next: ChatClusterStatus,
) -> Result<(), Error> {
    ctx.metrics.cluster(
        &cc.namespace().unwrap_or_default(),
        &cc.name_any(),
        next.phase.as_deref().unwrap_or_default(),
        cc.spec.replicas,
        next.ready_replicas,
    );
    if cc.status.as_ref() == Some(&next) {
        return Ok(());
    }
    let api: Api<ChatCluster> =
        Api::namespaced(ctx.client.clone(), &cc.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": ChatCluster::api_version(&()),
        "kind": ChatCluster::kind(&()),
        "status": next,
    });
    api.patch_status(
        &cc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    ctx.metrics.wrote("status");
    Ok(())
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn status_input<'a>(cc: &'a ChatCluster, outcome: Outcome) -> status::Input<'a> {
    status::Input {
        old: cc.status.as_ref(),
        generation: cc.metadata.generation,
        selector: selector_string(&cc.name_any()),
        topic_prefix: None,
        provisioned: None,
        outcome,
        now: now(),
    }
}

/// The reconcile of a live ChatCluster.
pub(super) async fn apply_cluster(cc: Arc<ChatCluster>, ctx: &Context) -> Result<Action, Error> {
    if annotated(&cc, PAUSED_ANNOTATION) {
        write_status(ctx, &cc, status::next(status_input(&cc, Outcome::Paused))).await?;
        return Ok(Action::await_change());
    }
    let resolved = match validate(&cc, &ctx.args.node_image) {
        Ok(r) => r,
        Err(invalid) => {
            let next = status::next(status_input(&cc, Outcome::Invalid(invalid.to_string())));
            if cc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Invalid") {
                event(
                    ctx,
                    &cc,
                    EventType::Warning,
                    "InvalidSpec",
                    invalid.to_string(),
                )
                .await;
            }
            write_status(ctx, &cc, next).await?;
            // Permanent until the spec changes.
            return Ok(Action::await_change());
        }
    };
    let ns = resolved.namespace.clone();
    let name = resolved.name.clone();
    let uid = cc.uid().unwrap_or_default();
    let namesrv = cc.spec.rocketmq.name_server.clone();
    let layout = layout(&cc, &resolved.topic_prefix);
    let desired = u32::try_from(cc.spec.replicas).unwrap_or(0);

    // 1. Topics and groups of every ordinal the StatefulSet may run, before it may run them.
    let settings_changed = cc.status.as_ref().is_some_and(|s| {
        s.queues_per_topic.is_some_and(|q| q != layout.queues)
            || s.retry_max_times.is_some_and(|r| r != layout.retry_max)
    });
    match ctx
        .brokers
        .ensure(
            &namesrv,
            &layout,
            0..desired,
            settings_changed,
            &ctx.metrics,
        )
        .await
    {
        Ok(0) => {}
        Ok(n) => {
            event(
                ctx,
                &cc,
                EventType::Normal,
                "TopicsCreated",
                format!("created or updated {n} RocketMQ topics and groups"),
            )
            .await;
        }
        Err(e) => {
            let mut input = status_input(&cc, Outcome::BrokerFailed(e.to_string()));
            input.topic_prefix = Some(resolved.topic_prefix.clone());
            let failing_before =
                cc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Degraded");
            if !failing_before {
                event(ctx, &cc, EventType::Warning, "RocketMQError", e.to_string()).await;
            }
            write_status(ctx, &cc, status::next(input)).await?;
            return Err(e);
        }
    }

    // The status records the new topics before the StatefulSet may run their pods (a
    // reader of the status never sees a pod whose topic it does not list).
    let recorded = recorded_ordinals(&cc, &layout);
    if (0..desired).any(|o| !recorded.contains(&o)) {
        let ordinals: BTreeSet<u32> = (0..desired).chain(recorded).collect();
        let provisioned = status::Provisioned {
            topics: layout.topics(ordinals.iter().copied()),
            groups: layout.groups(ordinals.iter().copied()),
            queues_per_topic: layout.queues,
            retry_max_times: layout.retry_max,
        };
        write_status(ctx, &cc, status::recorded(cc.status.as_ref(), provisioned)).await?;
    }

    // 2. The Kubernetes objects, in a fixed order. No `..`: an object nobody applies
    //    does not compile.
    let Built {
        config_map,
        headless_service,
        client_service,
        stateful_set,
        pdb,
        network_policy,
    } = build::build(&cc, &resolved);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let stss: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    let nps: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let mut changed = Vec::new();
    let mut note = |what: String, a: Applied| {
        if a == Applied::Patched {
            changed.push(what);
        }
    };
    note(
        format!("ConfigMap {}", names::config_map(&name)),
        apply(&cms, &config_map, &ctx.metrics).await?.1,
    );
    note(
        format!("Service {}", names::headless_service(&name)),
        apply(&svcs, &headless_service, &ctx.metrics).await?.1,
    );
    note(
        format!("Service {}", names::client_service(&name)),
        apply(&svcs, &client_service, &ctx.metrics).await?.1,
    );
    let (sts, a) = apply(&stss, &stateful_set, &ctx.metrics).await?;
    note(
        format!(
            "StatefulSet {} ({} replicas)",
            names::stateful_set(&name),
            desired
        ),
        a,
    );
    if let Some(pdb) = &pdb {
        note(
            format!("PodDisruptionBudget {}", names::pdb(&name)),
            apply(&pdbs, pdb, &ctx.metrics).await?.1,
        );
    }

    if let Some(np) = &network_policy {
        note(
            format!("NetworkPolicy {}", names::network_policy(&name)),
            apply(&nps, np, &ctx.metrics).await?.1,
        );
    }

    // Orphans: objects of the cluster that the current spec does not build.
    let selector = build::owned_selector(&name);
    let (cm_name, headless_name, client_name) = (
        names::config_map(&name),
        names::headless_service(&name),
        names::client_service(&name),
    );
    let sts_name = names::stateful_set(&name);
    let pdb_name = names::pdb(&name);
    let keep_pdb: &[&str] = if pdb.is_some() { &[&pdb_name] } else { &[] };
    let np_name = names::network_policy(&name);
    let keep_np: &[&str] = if network_policy.is_some() {
        &[&np_name]
    } else {
        &[]
    };
    let mut orphans = delete_orphans(&cms, &selector, &[&cm_name], &uid, &ctx.metrics).await?;
    orphans.extend(
        delete_orphans(
            &svcs,
            &selector,
            &[&headless_name, &client_name],
            &uid,
            &ctx.metrics,
        )
        .await?,
    );
    orphans.extend(delete_orphans(&stss, &selector, &[&sts_name], &uid, &ctx.metrics).await?);
    orphans.extend(delete_orphans(&pdbs, &selector, keep_pdb, &uid, &ctx.metrics).await?);
    orphans.extend(delete_orphans(&nps, &selector, keep_np, &uid, &ctx.metrics).await?);
    if !orphans.is_empty() {
        changed.push(format!("deleted {}", orphans.join(", ")));
    }
    if !changed.is_empty() {
        event(ctx, &cc, EventType::Normal, "Applied", changed.join(", ")).await;
    }

    // 3. Topics of ordinals scaled away, once their pod is gone.
    let pods = super::pods::list(ctx, &ns, &name).await?;
    let running = &pods.ordinals;
    let beyond: BTreeSet<u32> = recorded_ordinals(&cc, &layout)
        .into_iter()
        .chain(running.iter().copied())
        .filter(|o| *o >= desired)
        .collect();
    let pending: Vec<u32> = beyond
        .iter()
        .copied()
        .filter(|o| running.contains(o))
        .collect();
    let gone: Vec<u32> = beyond
        .iter()
        .copied()
        .filter(|o| !running.contains(o))
        .collect();
    if !gone.is_empty() {
        let topics = gone.iter().map(|o| layout.names.node_topic(*o)).collect();
        let groups = gone.iter().map(|o| layout.names.node_group(*o)).collect();
        let n = ctx
            .brokers
            .delete(&namesrv, &topics, &groups, &ctx.metrics)
            .await?;
        info!(cluster = %format!("{ns}/{name}"), ordinals = ?gone, "removed topics of scaled-away nodes");
        if n > 0 {
            event(
                ctx,
                &cc,
                EventType::Normal,
                "TopicsDeleted",
                format!("deleted the topics and groups of nodes {gone:?}"),
            )
            .await;
        }
    }

    // 4. Status from what was applied.
    let kept: Vec<u32> = (0..desired).chain(pending.iter().copied()).collect();
    let sts_status = sts.status.clone().unwrap_or_default();
    let applied = status::Applied {
        desired: cc.spec.replicas,
        replicas: sts_status.replicas,
        ready: sts_status.ready_replicas.unwrap_or(0),
        updated: sts_status.updated_replicas.unwrap_or(0),
        rolled_out: sts_status.observed_generation >= sts.metadata.generation,
        pending_removal: pending,
        failing: pods.failing,
    };
    let mut input = status_input(&cc, Outcome::Applied(applied));
    input.topic_prefix = Some(resolved.topic_prefix.clone());
    input.provisioned = Some(status::Provisioned {
        topics: layout.topics(kept.iter().copied()),
        groups: layout.groups(kept.iter().copied()),
        queues_per_topic: layout.queues,
        retry_max_times: layout.retry_max,
    });
    let next = status::next(input);
    let settled = next.phase.as_deref() == Some("Ready")
        && status::condition(&next, status::types::PROGRESSING)
            .is_some_and(|c| c.status == "False");
    write_status(ctx, &cc, next).await?;
    Ok(Action::requeue(if settled { SETTLED } else { UNSETTLED }))
}

/// The finalizer: stop the nodes, then delete every topic and group of the cluster.
pub(super) async fn cleanup_cluster(cc: Arc<ChatCluster>, ctx: &Context) -> Result<Action, Error> {
    let ns = cc.namespace().ok_or(Error::NoNamespace)?;
    let name = cc.name_any();
    ctx.metrics.forget_cluster(&ns, &name);
    if annotated(&cc, SKIP_CLEANUP_ANNOTATION) {
        event(ctx, &cc, EventType::Warning, "TopicsLeftBehind", format!("{SKIP_CLEANUP_ANNOTATION} is set: the cluster's RocketMQ topics and groups are not deleted")).await;
        return Ok(Action::await_change());
    }
    let prefix = cc
        .status
        .as_ref()
        .and_then(|s| s.topic_prefix.clone())
        .unwrap_or_else(|| switchboard_rocketmq::names::prefix(&ns, &name));
    let layout = layout(&cc, &prefix);
    let result = async {
        let stss: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        // Stop the nodes first: nothing of the StatefulSet is kept.
        delete_orphans(
            &stss,
            &build::owned_selector(&name),
            &[],
            &cc.uid().unwrap_or_default(),
            &ctx.metrics,
        )
        .await?;
        let running = super::pods::list(ctx, &ns, &name).await?.ordinals;
        if !running.is_empty() {
            return Err(Error::PodsRemain(
                running.iter().map(|o| format!("{name}-{o}")).collect(),
            ));
        }
        let desired = u32::try_from(cc.spec.replicas).unwrap_or(0);
        let ordinals: BTreeSet<u32> = (0..desired)
            .chain(recorded_ordinals(&cc, &layout))
            .collect();
        let mut topics: BTreeSet<String> = layout
            .topics(ordinals.iter().copied())
            .into_iter()
            .collect();
        let mut groups: BTreeSet<String> = layout
            .groups(ordinals.iter().copied())
            .into_iter()
            .collect();
        if let Some(s) = &cc.status {
            topics.extend(s.topics.iter().cloned());
            groups.extend(s.groups.iter().cloned());
        }
        ctx.brokers
            .delete(
                &cc.spec.rocketmq.name_server,
                &topics,
                &groups,
                &ctx.metrics,
            )
            .await
    }
    .await;
    match result {
        Ok(n) => {
            event(
                ctx,
                &cc,
                EventType::Normal,
                "TopicsDeleted",
                format!("deleted {n} RocketMQ topics and groups"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) if deleting_for(&cc) > ctx.args.cleanup_timeout => {
            event(ctx, &cc, EventType::Warning, "TopicsLeftBehind", format!("gave up after {:?}: {e}; delete the cluster's topics (prefix {prefix}) by hand", ctx.args.cleanup_timeout)).await;
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}

/// How long the ChatCluster has been marked for deletion.
fn deleting_for(cc: &ChatCluster) -> Duration {
    cc.metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| Timestamp::now().duration_since(t.0).try_into().ok())
        .unwrap_or_default()
}
