//! Group changes and who hears of them: every change made through here (the
//! admin API, commands from backends) is told to the members online as a
//! `group` frame, on whichever pod their devices are.

use std::collections::BTreeMap;

use crate::backend::{BackendError, BackendResult, MessageStore};
use crate::ids::{GroupId, UserId};
use crate::metrics::Metrics;
use crate::model::{Group, GroupProfile};
use crate::protocol::ServerFrame;
use crate::protocol::server::GroupChange;
use crate::router::Router;

/// The groups of `user`, and the owner and title of those that have one
/// (for `welcome`). A failed lookup is counted and leaves that part empty
/// (the profiles alone, when only they failed).
pub async fn for_welcome(
    store: &dyn MessageStore,
    metrics: &Metrics,
    user: &UserId,
) -> (Vec<GroupId>, BTreeMap<GroupId, GroupProfile>) {
    let groups = match store.groups_of(user).await {
        Ok(g) => g,
        Err(e) => {
            metrics.backend_failed("groups_of", &e);
            return Default::default();
        }
    };
    match store.group_profiles(&groups).await {
        Ok(p) => (groups, p.into_iter().collect()),
        Err(e) => {
            metrics.backend_failed("group_profiles", &e);
            (groups, BTreeMap::new())
        }
    }
}

/// Changes groups and tells their members.
#[derive(Debug, Clone, Copy)]
pub struct Groups<'a> {
    pub store: &'a dyn MessageStore,
    pub router: &'a Router,
}

impl<'a> Groups<'a> {
    /// Creates the group with an owner and title (either may be absent);
    /// `GroupExists` if it exists.
    pub async fn create(
        &self,
        id: &GroupId,
        members: &[UserId],
        profile: &GroupProfile,
    ) -> BackendResult<Group> {
        let mut group = self.store.create_group(id, members).await?;
        if *profile != GroupProfile::default() {
            group = self.store.set_group_profile(id, profile).await?;
        }
        self.tell(&group, GroupChange::Created, Vec::new(), &[])
            .await;
        Ok(group)
    }

    /// Adds members (those already in stay).
    pub async fn add(&self, id: &GroupId, users: &[UserId]) -> BackendResult<Group> {
        let group = self.store.add_members(id, users).await?;
        self.tell(&group, GroupChange::Added, users.to_vec(), &[])
            .await;
        Ok(group)
    }

    /// Removes a member (not one: no change, still told).
    pub async fn remove(&self, id: &GroupId, user: &UserId) -> BackendResult<Group> {
        let group = self.store.remove_member(id, user).await?;
        let gone = std::slice::from_ref(user);
        self.tell(&group, GroupChange::Removed, gone.to_vec(), gone)
            .await;
        Ok(group)
    }

    /// Replaces the owner and title.
    pub async fn update(&self, id: &GroupId, profile: &GroupProfile) -> BackendResult<Group> {
        let group = self.store.set_group_profile(id, profile).await?;
        self.tell(&group, GroupChange::Updated, Vec::new(), &[])
            .await;
        Ok(group)
    }

    /// Deletes the group; false if there was none.
    pub async fn delete(&self, id: &GroupId) -> BackendResult<bool> {
        let Some(before) = self.store.group(id).await? else {
            return Ok(false);
        };
        if !self.store.delete_group(id).await? {
            return Ok(false);
        }
        let gone = Group::bare(id.clone(), Vec::new());
        self.tell(&gone, GroupChange::Deleted, Vec::new(), &before.members)
            .await;
        Ok(true)
    }

    /// The group of `id`, or `NoSuchGroup`.
    pub async fn get(&self, id: &GroupId) -> BackendResult<Group> {
        self.store
            .group(id)
            .await?
            .ok_or_else(|| BackendError::NoSuchGroup(id.clone()))
    }

    async fn tell(&self, group: &Group, change: GroupChange, users: Vec<UserId>, also: &[UserId]) {
        let mut to = group.members.clone();
        to.extend(also.iter().filter(|u| !group.members.contains(u)).cloned());
        let frame = ServerFrame::Group {
            group: group.id.clone(),
            change,
            users,
            members: group.members.clone(),
            owner: group.owner.clone(),
            title: group.title.clone(),
        };
        self.router.route(&to, frame, None, None).await;
    }
}
