//! The Lua scripts of the Redis backends ([`super::redis`]): every update
//! that touches several keys is one script, which Redis runs atomically.

use std::sync::LazyLock;

use redis::Script;

const REGISTER: &str = r#"
-- KEYS: conns:<user>, podconns:<pod>, online, lastseen, pod:<pod>[, outbox presence stream]
-- ARGV: conn id, pod, user, now ms, presence ttl ms
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
-- Keep the pod's connection count current between heartbeats (only while
-- the pod key lives: recreating an expired one would resurrect a dead pod).
if added == 1 and redis.call('EXISTS', KEYS[5]) == 1 then redis.call('HINCRBY', KEYS[5], 'conns', 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[3] .. ' ' .. ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
if added == 1 and redis.call('HLEN', KEYS[1]) == 1 then
  if KEYS[6] then
    redis.call('XADD', KEYS[6], '*', 'k', 'join', 'm', ARGV[3], 'off', ARGV[4], 'pod', ARGV[2])
  end
  return 1
end
return 0
"#;

const UNREGISTER: &str = r#"
-- KEYS: conns:<user>, podconns:<pod>, online, lastseen, pod:<pod>[, outbox presence stream]
-- ARGV: conn id, user, now ms, pod
redis.call('SREM', KEYS[2], ARGV[2] .. ' ' .. ARGV[1])
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 0 then return 0 end
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('HINCRBY', KEYS[5], 'conns', -1) end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[2])
  if KEYS[6] then
    redis.call('XADD', KEYS[6], '*', 'k', 'leave', 'm', ARGV[2], 'off', ARGV[3], 'pod', ARGV[4])
  end
  return 1
end
return 0
"#;

/// Removes every entry of one pod. Returns the users that went offline.
const FORGET_POD: &str = r#"
-- KEYS: podconns:<pod>, online, lastseen, pods, pod:<pod>[, outbox presence stream]
-- ARGV: key prefix, now ms, pod
local offline = {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local sp = string.find(member, ' ', 1, true)
  local user = string.sub(member, 1, sp - 1)
  local conn = string.sub(member, sp + 1)
  local ck = ARGV[1] .. 'conns:' .. user
  if redis.call('HDEL', ck, conn) == 1 then
    redis.call('HSET', KEYS[3], user, ARGV[2])
    if redis.call('HLEN', ck) == 0 then
      redis.call('ZREM', KEYS[2], user)
      table.insert(offline, user)
      if KEYS[6] then
        redis.call('XADD', KEYS[6], '*', 'k', 'leave', 'm', user, 'off', ARGV[2], 'pod', ARGV[3])
      end
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[5])
redis.call('SREM', KEYS[4], ARGV[3])
return offline
"#;

/// The atomic append: dedup check, seq, history, inboxes, dedup key.
///
/// The message arrives serialized with `"seq":0`; the script splices in the
/// real seq. That literal can only occur once as JSON structure (inside a
/// JSON string its quotes would be escaped), and `seq` is serialized before
/// any user-controlled field.
const APPEND: &str = r#"
-- KEYS: seq, hist, order, msg:<id>, dedup (or the order key again when none), inbox:<r1>...,
--       then with an outbox: its shard stream, the 1:1 recipient's conns (or the stream again)
-- ARGV: json, has_dedup (0/1), dedup ttl ms, history limit, inbox limit, is_group (0/1), msg id,
--       outbox shard limit (0 = no outbox), pod, sender
if ARGV[2] == '1' then
  local prev = redis.call('GET', KEYS[5])
  if prev then return {'dup', prev} end
end
local outbox = tonumber(ARGV[8]) > 0
local ninbox = #KEYS - 5
if outbox then
  ninbox = ninbox - 2
  if redis.call('XLEN', KEYS[#KEYS - 1]) >= tonumber(ARGV[8]) then return {'outbox'} end
end
local limit = tonumber(ARGV[5])
if ARGV[6] == '0' then
  for i = 1, ninbox do
    if redis.call('ZCARD', KEYS[5 + i]) >= limit then return {'full', tostring(i)} end
  end
end
local seq = redis.call('INCR', KEYS[1])
local at = string.find(ARGV[1], '"seq":0', 1, true)
local json = string.sub(ARGV[1], 1, at - 1) .. '"seq":' .. seq .. string.sub(ARGV[1], at + 7)
redis.call('RPUSH', KEYS[2], json)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
local reply = {'ok', json}
local refs = 0
for i = 1, ninbox do
  if redis.call('ZCARD', KEYS[5 + i]) >= limit then
    table.insert(reply, tostring(i))
  else
    local order = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[5 + i], order, ARGV[7])
    refs = refs + 1
  end
end
if refs > 0 then
  redis.call('HSET', KEYS[4], 'b', json, 'r', refs, 'f', ARGV[10])
  -- A 1:1 message remembers its outbox shard: its ack is recorded there, after it.
  if outbox and ARGV[6] == '0' then redis.call('HSET', KEYS[4], 's', KEYS[#KEYS - 1]) end
end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[5], json, 'PX', ARGV[3])
end
if outbox then
  local off = '0'
  if ARGV[6] == '0' and redis.call('EXISTS', KEYS[#KEYS]) == 0 then off = '1' end
  redis.call('XADD', KEYS[#KEYS - 1], '*', 'k', 'msg', 'm', json, 'off', off, 'pod', ARGV[9])
end
return reply
"#;

/// A page of history, with the conversation's read watermarks and, for a
/// direct conversation, which of the page's messages are still in an inbox
/// (not acked: the sender's own inbox never holds its message, so looking
/// in both sides' inboxes finds the recipient's entry).
const HISTORY: &str = r#"
-- KEYS: seq, hist, read:<conv>[, inbox:<a>, inbox:<b> for a direct conversation]
-- ARGV: before ('' = none), after ('' = none), limit
-- Reply: more, n, n messages, then (direct) the ids of the page's undelivered
-- messages, '', then the read watermarks as user, seq pairs.
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local len = redis.call('LLEN', KEYS[2])
local first = last - len + 1
local limit = tonumber(ARGV[3])
local lo, hi, more
if ARGV[2] ~= '' then
  lo = math.min(math.max(tonumber(ARGV[2]) + 1, first) - first, len)
  hi = math.min(lo + limit, len)
  more = hi < len
else
  local e = len
  if ARGV[1] ~= '' then e = math.min(math.max(tonumber(ARGV[1]) - first, 0), len) end
  lo = math.max(e - limit, 0)
  hi = e
  more = lo > 0
end
local msgs = {}
if hi > lo then msgs = redis.call('LRANGE', KEYS[2], lo, hi - 1) end
local out = {more and '1' or '0', tostring(#msgs)}
for _, m in ipairs(msgs) do table.insert(out, m) end
if KEYS[5] then
  for _, m in ipairs(msgs) do
    local id = string.match(m, '^{"msg_id":"(%d+)"')
    if id and (redis.call('ZSCORE', KEYS[4], id) or redis.call('ZSCORE', KEYS[5], id)) then
      table.insert(out, id)
    end
  end
end
table.insert(out, '')
for _, v in ipairs(redis.call('HGETALL', KEYS[3])) do table.insert(out, v) end
return out
"#;

/// Raises a read watermark (never lowers it, never past the last seq) and,
/// with the outbox on, records the read there when it rose.
const MARK_READ: &str = r#"
-- KEYS: seq, read:<conv>, outbox stream (or read again)
-- ARGV: user, seq, outbox on (0/1), entry JSON (without the seq), pod
local seq = math.min(tonumber(ARGV[2]), tonumber(redis.call('GET', KEYS[1]) or '0'))
local mark = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if seq <= mark then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], seq)
if ARGV[3] == '1' then
  local m = string.sub(ARGV[4], 1, -2) .. ',"seq":' .. seq .. '}'
  redis.call('XADD', KEYS[3], '*', 'k', 'read', 'm', m, 'off', ARGV[1], 'pod', ARGV[5])
end
return seq
"#;

const INBOX: &str = r#"
-- KEYS: inbox:<user>   ARGV: key prefix, limit
-- An entry whose body is gone (the message was recalled while this user was
-- not among its recipients any more) is dropped on the way.
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  local b = redis.call('HGET', ARGV[1] .. 'msg:' .. id, 'b')
  if b then table.insert(out, b) else redis.call('ZREM', KEYS[1], id) end
end
return out
"#;

/// Replaces a message by its tombstone, atomically with everything a recall
/// changes. The history entry is found by position (seq - first retained
/// seq) and must still start with the message's id and not be a tombstone:
/// both are JSON structure that user content cannot forge (its quotes would
/// be escaped), and `msg_id` is the first field serialized.
const RECALL: &str = r#"
-- KEYS: seq, hist, msg:<id>, dedup (or hist again), outbox stream (or hist again), inbox:<r>...
-- ARGV: seq, msg id, tombstone JSON, has_dedup (0/1), outbox shard limit (0 = no outbox),
--       recalled by ('' = an admin), pod
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local len = redis.call('LLEN', KEYS[2])
local idx = tonumber(ARGV[1]) - (last - len + 1)
if idx < 0 or idx >= len then return 'gone' end
local cur = redis.call('LINDEX', KEYS[2], idx)
local head = '{"msg_id":"' .. ARGV[2] .. '"'
if string.sub(cur, 1, #head) ~= head then return 'gone' end
if string.find(cur, '"recalled":true', 1, true) then return 'gone' end
local outbox = tonumber(ARGV[5]) > 0
if outbox and redis.call('XLEN', KEYS[5]) >= tonumber(ARGV[5]) then return 'outbox' end
redis.call('LSET', KEYS[2], idx, ARGV[3])
for i = 6, #KEYS do redis.call('ZREM', KEYS[i], ARGV[2]) end
redis.call('DEL', KEYS[3])
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('SET', KEYS[4], ARGV[3], 'KEEPTTL')
end
if outbox then
  redis.call('XADD', KEYS[5], '*', 'k', 'recall', 'm', ARGV[3], 'off', ARGV[6], 'pod', ARGV[7])
end
return 'ok'
"#;

const ACK: &str = r#"
-- KEYS: inbox:<user>   ARGV: key prefix, pod ('' = no event outbox), msg ids...
-- Reply, per acked message: its body, the number of its sender's pods and the
-- pods ('-' instead when the entry does not name its sender).
local out = {}
for i = 3, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local mk = ARGV[1] .. 'msg:' .. ARGV[i]
    local h = redis.call('HMGET', mk, 'b', 's', 'f')
    local b, s, f = h[1], h[2], h[3]
    if b then
      table.insert(out, b)
      if f then
        local pods = redis.call('HVALS', ARGV[1] .. 'conns:' .. f)
        table.insert(out, tostring(#pods))
        for _, p in ipairs(pods) do table.insert(out, p) end
      else
        table.insert(out, '-')
      end
    end
    if b and s and ARGV[2] ~= '' then redis.call('XADD', s, '*', 'k', 'ack', 'm', b, 'off', '0', 'pod', ARGV[2]) end
    if redis.call('HINCRBY', mk, 'r', -1) <= 0 then redis.call('DEL', mk) end
  end
end
return out
"#;

/// Records a membership change in the event outbox (the group
/// conversation's shard, so it is ordered with the group's messages).
/// Shared by the group scripts; `stream` nil = no outbox.
const GROUP_EVENT: &str = r#"
local function group_event(stream, action, group, users, pod)
  if stream and (action == 'created' or #users > 0) then
    local m = cjson.encode({action = action, group = group, users = users})
    redis.call('XADD', stream, '*', 'k', 'group', 'm', m, 'off', '', 'pod', pod)
  end
end
"#;

const CREATE_GROUP: &str = r#"
-- KEYS: groups, group:<g>, ugroups:<m>...[, outbox stream]
-- ARGV: group id, max members, pod ('' = no outbox), members...
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 'exists' end
if #ARGV - 3 > tonumber(ARGV[2]) then return 'full' end
redis.call('SADD', KEYS[1], ARGV[1])
local users = {}
for i = 4, #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
  redis.call('SADD', KEYS[i - 1], ARGV[1])
  table.insert(users, ARGV[i])
end
if ARGV[3] ~= '' then group_event(KEYS[#KEYS], 'created', ARGV[1], users, ARGV[3]) end
return 'ok'
"#;

const ADD_MEMBERS: &str = r#"
-- KEYS: groups, group:<g>, ugroups:<m>...[, outbox stream]
-- ARGV: group id, max members, pod ('' = no outbox), members...
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 'missing' end
local new = {}
for i = 4, #ARGV do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then table.insert(new, ARGV[i]) end
end
if redis.call('SCARD', KEYS[2]) + #new > tonumber(ARGV[2]) then return 'full' end
for i = 4, #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
  redis.call('SADD', KEYS[i - 1], ARGV[1])
end
if ARGV[3] ~= '' then group_event(KEYS[#KEYS], 'added', ARGV[1], new, ARGV[3]) end
return 'ok'
"#;

const REMOVE_MEMBER: &str = r#"
-- KEYS: groups, group:<g>, ugroups:<user>[, outbox stream]
-- ARGV: group id, user, pod ('' = no outbox)
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 'missing' end
local removed = {}
if redis.call('SREM', KEYS[2], ARGV[2]) == 1 then table.insert(removed, ARGV[2]) end
redis.call('SREM', KEYS[3], ARGV[1])
if ARGV[3] ~= '' then group_event(KEYS[4], 'removed', ARGV[1], removed, ARGV[3]) end
return 'ok'
"#;

const DELETE_GROUP: &str = r#"
-- KEYS: groups, group:<g>, groupinfo:<g>   ARGV: group id, key prefix
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('SREM', ARGV[2] .. 'ugroups:' .. m, ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"#;

pub(super) static REGISTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REGISTER));
pub(super) static UNREGISTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(UNREGISTER));
pub(super) static FORGET_POD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FORGET_POD));
pub(super) static APPEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND));
pub(super) static MARK_READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MARK_READ));
pub(super) static HISTORY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(HISTORY));
pub(super) static INBOX_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(INBOX));
pub(super) static RECALL_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECALL));
pub(super) static ACK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACK));
pub(super) static CREATE_GROUP_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{GROUP_EVENT}{CREATE_GROUP}")));
pub(super) static ADD_MEMBERS_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{GROUP_EVENT}{ADD_MEMBERS}")));
pub(super) static REMOVE_MEMBER_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{GROUP_EVENT}{REMOVE_MEMBER}")));
pub(super) static DELETE_GROUP_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(DELETE_GROUP));
