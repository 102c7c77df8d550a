--@include prelude
-- Store a task and its original (once per content), and queue it, join the task in flight for
-- the same bytes, or finish it at once when they were resized before.
-- KEYS: task, blob, content, waiting, stats
-- ARGV: id, ttl_ms, format, width, height, image bytes (empty when a SET in the same MULTI
--       wrote them: see Store.create_task), digest, partition tag, wake channel, original_ttl_ms
-- Returns {created_at, outcome}: 'queued', 'joined' or 'done'.
local task, blob, content, waiting, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, ttl, tag, wake = ARGV[1], tonumber(ARGV[2]), ARGV[8], ARGV[9]
local clash = wrong_type(KEYS, '- string - list hash')
if clash then return clash end
clash = publish_denied(wake)
if clash then return clash end

-- Sent twice after a lost reply: the first run stands; answer what it did.
local existing = redis.call('HMGET', task, 'created_at', 'status', 'leader')
if existing[1] then
  local outcome = 'queued'
  if existing[2] == 'DONE' then outcome = 'done' elseif existing[3] then outcome = 'joined' end
  return {tonumber(existing[1]), outcome}
end

local result_format, leader = unpack(redis.call('HMGET', content, 'format', 'leader'))
local leader_task = leader and tag .. ':task:' .. leader
clash = wrong_type({leader_task}, 'hash')
if clash then return clash end

local now = now_ms()
-- Bytes resized before: this task is DONE now, and an original is kept that long after DONE.
local blob_ttl = ttl
if result_format then blob_ttl = math.min(ttl, tonumber(ARGV[10])) end
if redis.call('EXISTS', blob) == 1 then
  keep(blob, blob_ttl)
else
  redis.call('SET', blob, ARGV[6], 'PX', blob_ttl)
end
redis.call('HSET', task, 'status', 'WAITING', 'created_at', now, 'updated_at', now,
           'attempts', 0, 'format', ARGV[3], 'width', ARGV[4], 'height', ARGV[5],
           'digest', ARGV[7])
redis.call('PEXPIRE', task, ttl)
redis.call('HINCRBY', content, 'refs', 1)
keep(content, ttl)
count(stats, 'created')

if result_format then
  redis.call('HSET', task, 'status', 'DONE', 'result_format', result_format)
  count(stats, 'deduplicated')
  count(stats, 'done')
  return {now, 'done'}
end

if leader then
  local status = redis.call('HGET', leader_task, 'status')
  if status == 'WAITING' or status == 'IN_PROGRESS' then
    -- Joining is O(1): this task reads its status from the leader, which must outlive it.
    redis.call('HSET', task, 'leader', leader)
    redis.call('HINCRBY', leader_task, 'joined', 1)
    keep(leader_task, ttl)
    count(stats, 'deduplicated')
    return {now, 'joined'}
  end
end

redis.call('HSET', content, 'leader', id)
redis.call('LPUSH', waiting, id)
if wake ~= '' then redis.call(PUBLISH, wake, tag) end
return {now, 'queued'}
