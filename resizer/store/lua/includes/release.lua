--@include prelude
--@include finish
-- Take a task away from its worker: back to `waiting`, or FAILED when `fatal` or at the attempt
-- cap. `k`: task, processing, leases, waiting, content, blob, stats, failures, finished, and
-- wake (the channel idle workers listen on, '' for none) with the partition's tag.
-- `requeued_counter` names the statistic a re-queue counts under. Returns 'requeued'/'failed'.
local function release(k, id, reason, fatal, max_attempts, requeued_counter, failed_ttl, now)
  local token = redis.call('HGET', k.task, 'token')
  redis.call('HDEL', k.task, 'token')
  local attempts = number(redis.call('HGET', k.task, 'attempts'), 0)
  local outcome = 'requeued'
  if fatal or attempts >= max_attempts then
    outcome = 'failed'
    local message = reason
    if not fatal then
      message = 'gave up after ' .. attempts .. ' attempts (RESIZER_MAX_ATTEMPTS=' ..
                max_attempts .. '); last: ' .. reason
      count(k.stats, 'attempt_cap_failures')
    end
    redis.call('HSET', k.task, 'status', 'FAILED', 'error', message, 'updated_at', now)
    count(k.stats, 'failed', finish(k, id))
    redis.call('LPUSH', k.failures, id .. '\t' .. now .. '\t' .. message)
    redis.call('LTRIM', k.failures, 0, 99)
    -- Bytes that could not be resized are worth keeping only briefly: a task created for them
    -- later extends them again.
    cap(k.blob, failed_ttl)
    cap(k.content, failed_ttl)
  else
    redis.call('LREM', k.processing, 0, id)
    redis.call('ZREM', k.leases, id)
    count(k.stats, requeued_counter)
    redis.call('HSET', k.task, 'status', 'WAITING', 'updated_at', now)
    redis.call('LPUSH', k.waiting, id)
    if k.wake ~= '' then redis.call(PUBLISH, k.wake, k.tag) end
  end
  -- A worker's release sent twice (a lost reply) is recognised by its token.
  if token then redis.call('HSET', k.task, 'released', token .. ' ' .. outcome) end
  return outcome
end
