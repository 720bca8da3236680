//! Groups, the command log and request answers on Redis (layout: [`super`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::{RedisStore, unavailable};
use crate::backend::redis_lua::{
    ADD_MEMBERS_SCRIPT, CREATE_GROUP_SCRIPT, DELETE_GROUP_SCRIPT, REMOVE_MEMBER_SCRIPT,
};
use crate::backend::{BackendError, BackendResult, Claim, CommandLog};
use crate::ids::{ConversationId, GroupId, UserId};
use crate::model::{Group, GroupProfile};

impl RedisStore {
    fn group_key(&self, what: &str, id: &GroupId) -> String {
        format!("{}{what}:{id}", self.keys.prefix())
    }

    /// The group with its members (sorted) and profile; `None` if missing.
    async fn read_group_now(&self, id: &GroupId) -> BackendResult<Option<Group>> {
        let mut conn = self.conn.clone();
        let (exists, members, profile): (bool, Vec<String>, HashMap<String, String>) =
            redis::pipe()
                .sismember(format!("{}groups", self.keys.prefix()), id.as_str())
                .smembers(self.group_key("group", id))
                .hgetall(self.group_key("groupinfo", id))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
        if !exists {
            return Ok(None);
        }
        let mut m: Vec<UserId> = members
            .iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect();
        m.sort();
        Ok(Some(Group {
            id: id.clone(),
            members: m,
            owner: profile.get("owner").and_then(|o| UserId::parse(o).ok()),
            title: profile.get("title").cloned(),
        }))
    }

    pub(super) async fn read_group(&self, id: &GroupId) -> BackendResult<Option<Group>> {
        self.read_group_now(id).await
    }

    async fn group_script(
        &self,
        src: &Script,
        id: &GroupId,
        users: &[UserId],
    ) -> BackendResult<String> {
        let k = &self.keys;
        let mut script = src.prepare_invoke();
        script
            .key(format!("{}groups", k.prefix()))
            .key(self.group_key("group", id))
            .arg(id.as_str())
            .arg(self.limits.max_group_members)
            .arg(self.outbox_pod());
        for u in users {
            script
                .key(format!("{}ugroups:{u}", k.prefix()))
                .arg(u.as_str());
        }
        if let Some(stream) = self.group_stream(id) {
            script.key(stream);
        }
        let mut conn = self.conn.clone();
        script.invoke_async(&mut conn).await.map_err(unavailable)
    }

    /// The outbox shard stream of a group's conversation, with an outbox.
    fn group_stream(&self, id: &GroupId) -> Option<String> {
        self.outbox.as_ref().map(|_| {
            crate::backend::outbox::stream_key(
                &self.keys,
                crate::backend::outbox::shard_of(&ConversationId::Group(id.clone())),
            )
        })
    }

    async fn existing_group(&self, id: &GroupId) -> BackendResult<Group> {
        self.read_group_now(id)
            .await?
            .ok_or_else(|| BackendError::NoSuchGroup(id.clone()))
    }

    pub(super) async fn create_group_now(
        &self,
        id: &GroupId,
        members: &[UserId],
    ) -> BackendResult<Group> {
        let set: BTreeSet<UserId> = members.iter().cloned().collect();
        let members: Vec<UserId> = set.into_iter().collect();
        match self
            .group_script(&CREATE_GROUP_SCRIPT, id, &members)
            .await?
            .as_str()
        {
            "exists" => Err(BackendError::GroupExists(id.clone())),
            "full" => Err(BackendError::GroupFull(
                id.clone(),
                self.limits.max_group_members,
            )),
            _ => Ok(Group::bare(id.clone(), members)),
        }
    }

    pub(super) async fn delete_group_now(&self, id: &GroupId) -> BackendResult<bool> {
        let mut conn = self.conn.clone();
        let deleted: i64 = DELETE_GROUP_SCRIPT
            .key(format!("{}groups", self.keys.prefix()))
            .key(self.group_key("group", id))
            .key(self.group_key("groupinfo", id))
            .arg(id.as_str())
            .arg(self.keys.prefix())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }

    pub(super) async fn add_members_now(
        &self,
        id: &GroupId,
        users: &[UserId],
    ) -> BackendResult<Group> {
        match self
            .group_script(&ADD_MEMBERS_SCRIPT, id, users)
            .await?
            .as_str()
        {
            "missing" => Err(BackendError::NoSuchGroup(id.clone())),
            "full" => Err(BackendError::GroupFull(
                id.clone(),
                self.limits.max_group_members,
            )),
            _ => self.existing_group(id).await,
        }
    }

    pub(super) async fn remove_member_now(
        &self,
        id: &GroupId,
        user: &UserId,
    ) -> BackendResult<Group> {
        let mut conn = self.conn.clone();
        let mut inv = REMOVE_MEMBER_SCRIPT.prepare_invoke();
        inv.key(format!("{}groups", self.keys.prefix()))
            .key(self.group_key("group", id))
            .key(format!("{}ugroups:{user}", self.keys.prefix()))
            .arg(id.as_str())
            .arg(user.as_str())
            .arg(self.outbox_pod());
        if let Some(stream) = self.group_stream(id) {
            inv.key(stream);
        }
        let r: String = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        if r == "missing" {
            return Err(BackendError::NoSuchGroup(id.clone()));
        }
        self.existing_group(id).await
    }

    /// Writes the profile only while the group exists (one script), so a
    /// delete racing it leaves no orphaned profile.
    pub(super) async fn set_group_profile_now(
        &self,
        id: &GroupId,
        profile: &GroupProfile,
    ) -> BackendResult<Group> {
        let mut conn = self.conn.clone();
        let set: i64 = SET_PROFILE_SCRIPT
            .key(format!("{}groups", self.keys.prefix()))
            .key(self.group_key("groupinfo", id))
            .arg(id.as_str())
            .arg(profile.owner.as_ref().map_or("", |o| o.as_str()))
            .arg(profile.title.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if set == 0 {
            return Err(BackendError::NoSuchGroup(id.clone()));
        }
        self.existing_group(id).await
    }

    pub(super) async fn groups_of_now(&self, user: &UserId) -> BackendResult<Vec<GroupId>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .smembers(format!("{}ugroups:{user}", self.keys.prefix()))
            .await
            .map_err(unavailable)?;
        let mut g: Vec<GroupId> = ids.iter().filter_map(|g| GroupId::parse(g).ok()).collect();
        g.sort();
        Ok(g)
    }

    pub(super) async fn group_profiles_now(
        &self,
        ids: &[GroupId],
    ) -> BackendResult<Vec<(GroupId, GroupProfile)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.group_key("groupinfo", id));
        }
        let mut conn = self.conn.clone();
        let found: Vec<HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut profiles: Vec<(GroupId, GroupProfile)> = ids
            .iter()
            .zip(found)
            .map(|(id, info)| {
                let profile = GroupProfile {
                    owner: info.get("owner").and_then(|o| UserId::parse(o).ok()),
                    title: info.get("title").cloned(),
                };
                (id.clone(), profile)
            })
            .filter(|(_, p)| *p != GroupProfile::default())
            .collect();
        profiles.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(profiles)
    }
}

/// KEYS: groups, groupinfo:<g>   ARGV: group id, owner ('' = none), title ('' = none)
static SET_PROFILE_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'owner', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'title', ARGV[3]) end
return 1
"#,
    )
});

/// The value of an applied command's key (a claim holds its token).
const APPLIED: &str = "applied";

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// KEYS: cmd:<id>   ARGV: token, ttl ms. Returns `claimed`, or what holds it.
static CLAIM_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'claimed' end
return redis.call('GET', KEYS[1]) or 'busy'
"#,
    )
});

/// KEYS: cmd:<id>   ARGV: token. Deletes the key only while the token holds it.
static RELEASE_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

#[async_trait]
impl CommandLog for RedisStore {
    async fn claim(&self, id: &str, token: &str, ttl: Duration) -> BackendResult<Claim> {
        let mut conn = self.conn.clone();
        let held: String = CLAIM_SCRIPT
            .key(format!("{}cmd:{id}", self.keys.prefix()))
            .arg(token)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match held.as_str() {
            "claimed" => Claim::Claimed,
            // "1": what the first release of the command log stored.
            APPLIED | "1" => Claim::Applied,
            _ => Claim::Busy,
        })
    }

    async fn release(&self, id: &str, token: &str) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = RELEASE_SCRIPT
            .key(format!("{}cmd:{id}", self.keys.prefix()))
            .arg(token)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn mark_applied(&self, id: &str, ttl: Duration) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        conn.pset_ex(
            format!("{}cmd:{id}", self.keys.prefix()),
            APPLIED,
            millis(ttl),
        )
        .await
        .map_err(unavailable)
    }

    async fn reply(&self, id: &str) -> BackendResult<Option<String>> {
        let mut conn = self.conn.clone();
        conn.get(format!("{}reply:{id}", self.keys.prefix()))
            .await
            .map_err(unavailable)
    }

    async fn keep_reply(&self, id: &str, answer: &str, ttl: Duration) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        conn.pset_ex(
            format!("{}reply:{id}", self.keys.prefix()),
            answer,
            millis(ttl),
        )
        .await
        .map_err(unavailable)
    }
}
