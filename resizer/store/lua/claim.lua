--@include prelude
-- Turn an id a worker took (BLMOVE) into a leased claim: IN_PROGRESS, attempt counted, the
-- caller's token, a lease deadline; and hand back the original, which the worker reads next.
-- KEYS: task, processing, leases, claim_waits
-- ARGV: id, token, lease_ms, worker, partition tag, then the claim-wait histogram's bucket
--       bounds in ms, ascending
-- Returns {attempt, digest, original or false}, {attempt, digest, false, 1} when the original
-- is over 1 MiB (the worker reads it with a plain GET: through the script it would be copied
-- twice more while Redis serves no one else), or 0 when the id is not claimable (its task
-- expired or was deleted, or this is a stale second delivery): one copy of it is dropped.
local task, processing, leases = KEYS[1], KEYS[2], KEYS[3]
local id, token, tag = ARGV[1], ARGV[2], ARGV[5]
local clash = wrong_type(KEYS, '- - zset hash')
if clash then return clash end
local status, held, attempts, digest, created = unpack(
  redis.call('HMGET', task, 'status', 'token', 'attempts', 'digest', 'created_at'))

local blob = digest and tag .. ':blob:' .. digest
local function claimed(attempt)
  if redis.call('STRLEN', blob) > 1048576 then return {attempt, digest, false, 1} end
  return {attempt, digest, redis.call('GET', blob)}
end

-- Sent twice after a lost reply: the same claim, not a second attempt.
if status == 'IN_PROGRESS' and held == token then return claimed(number(attempts, 0)) end
if status ~= 'WAITING' then
  redis.call('LREM', processing, 1, id)
  if not status then redis.call('ZREM', leases, id) end
  return 0
end
clash = wrong_type({blob}, 'string')
if clash then return clash end
local now = now_ms()
local attempt = number(attempts, 0) + 1
redis.call('HSET', task, 'status', 'IN_PROGRESS', 'token', token, 'worker', ARGV[4],
           'updated_at', now, 'attempts', attempt)
redis.call('ZADD', leases, now + tonumber(ARGV[3]), id)
if attempt == 1 then
  -- How long tasks wait for a worker: the bucket of this one's wait, '+Inf' past the last.
  local waited, bucket = now - number(created, now), '+Inf'
  for i = 6, #ARGV do
    if waited <= tonumber(ARGV[i]) then bucket = ARGV[i]; break end
  end
  observe(KEYS[4], bucket, waited / 1000)
end
return claimed(attempt)
