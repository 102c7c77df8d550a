--@include release
-- Re-queue (or FAIL at the attempt cap) a task whose lease expired. Expiry is re-checked here,
-- so recoveries may race each other and live workers: a renewed lease, or a task another
-- recovery already handled, is left alone. That also makes a second run harmless.
-- KEYS: task, processing, leases, waiting, stats, failures, finished
-- ARGV: id, max_attempts, failed_ttl_ms, partition tag, wake channel
-- Returns 'requeued', 'failed', 'dropped' (its task is gone or finished) or 'skipped'.
local task, processing, leases = KEYS[1], KEYS[2], KEYS[3]
local id, tag = ARGV[1], ARGV[4]
local clash = wrong_type(KEYS, '- list - list hash list -')
if clash then return clash end
clash = publish_denied(KEYS[7], ARGV[5])
if clash then return clash end
local now = now_ms()
local deadline = redis.call('ZSCORE', leases, id)
if not deadline or tonumber(deadline) > now then return 'skipped' end
local status, digest = unpack(redis.call('HMGET', task, 'status', 'digest'))
if not status or status == 'DONE' or status == 'FAILED' then
  redis.call('ZREM', leases, id)
  redis.call('LREM', processing, 0, id)
  return 'dropped'
end
clash = wrong_type({tag .. ':content:' .. digest}, 'hash')
if clash then return clash end
local k = {task = task, processing = processing, leases = leases, waiting = KEYS[4],
           content = tag .. ':content:' .. digest, blob = tag .. ':blob:' .. digest,
           stats = KEYS[5], failures = KEYS[6], finished = KEYS[7], wake = ARGV[5], tag = tag}
return release(k, id, 'the worker stopped renewing its lease (crashed, killed or stalled)',
               false, tonumber(ARGV[2]), 'recovered', tonumber(ARGV[3]), now)
