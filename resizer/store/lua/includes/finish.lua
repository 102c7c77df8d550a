--@include prelude
-- The end of a queued task's work, DONE or FAILED: its lease and queue entries go, the content
-- no longer has work in flight, and long-polls are woken. The tasks that joined it read their
-- status from it (``leader``), so finishing them costs nothing here, however many they are.
-- `k`: task, processing, leases, content, stats, finished. Returns how many tasks finished.
local function finish(k, id)
  redis.call('LREM', k.processing, 0, id)
  redis.call('ZREM', k.leases, id)
  if redis.call('HGET', k.content, 'leader') == id then
    redis.call('HDEL', k.content, 'leader')
  end
  redis.call(PUBLISH, k.finished, id)
  return 1 + number(redis.call('HGET', k.task, 'joined'), 0)
end
