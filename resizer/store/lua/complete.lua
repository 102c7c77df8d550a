--@include prelude
--@include finish
-- Store every size and mark the task DONE (the tasks that joined it with it), in one step, only
-- for the holder of the current token. The processing time goes into the shared histogram.
-- The original is kept `original_ttl_ms` more at most (RESIZER_ORIGINAL_TTL_SECONDS); the
-- thumbnails live as long as the task.
-- KEYS: task, processing, leases, content, stats, durations, finished, blob
-- ARGV: id, token, result_format, histogram bucket, seconds, original_ttl_ms,
--       size, image, size, image...
-- Returns 1 if done (or already done by this claim), 0 if the claim is not current.
local k = {task = KEYS[1], processing = KEYS[2], leases = KEYS[3], content = KEYS[4],
           stats = KEYS[5], finished = KEYS[7]}
local id, token = ARGV[1], ARGV[2]
local clash = wrong_type(KEYS, '- list zset - hash hash - -')
if clash then return clash end
clash = publish_denied(KEYS[7])
if clash then return clash end
local status, held = unpack(redis.call('HMGET', k.task, 'status', 'token'))
if held ~= token then return 0 end
-- The token stays on a DONE task so that this script, sent twice after a lost reply, says so.
if status == 'DONE' then return 1 end

redis.call('HSET', k.content, 'format', ARGV[3], unpack(ARGV, 7))
cap(KEYS[8], tonumber(ARGV[6]))
redis.call('HSET', k.task, 'status', 'DONE', 'result_format', ARGV[3],
           'updated_at', now_ms())
count(k.stats, 'done', finish(k, id))
observe(KEYS[6], ARGV[4], ARGV[5])
return 1
