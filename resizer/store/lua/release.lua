--@include release
-- A worker gives its task back: a permanent failure (fatal) or a transient one (retry).
-- KEYS: task, processing, leases, waiting, content, blob, stats, failures, finished
-- ARGV: id, token, reason, fatal (1/0), max_attempts, failed_ttl_ms, wake channel, partition tag
-- Returns 'requeued', 'failed', or 'stale' when the claim is not current.
local k = {task = KEYS[1], processing = KEYS[2], leases = KEYS[3], waiting = KEYS[4],
           content = KEYS[5], blob = KEYS[6], stats = KEYS[7], failures = KEYS[8],
           finished = KEYS[9], wake = ARGV[7], tag = ARGV[8]}
local id, token = ARGV[1], ARGV[2]
local clash = wrong_type(KEYS, '- list zset list hash - hash list -')
if clash then return clash end
clash = publish_denied(KEYS[9], ARGV[7])
if clash then return clash end
local held, released = unpack(redis.call('HMGET', k.task, 'token', 'released'))
if held ~= token then
  -- Sent twice after a lost reply: answer what the first run did.
  if released and string.sub(released, 1, #token + 1) == token .. ' ' then
    return string.sub(released, #token + 2)
  end
  return 'stale'
end
return release(k, id, ARGV[3], ARGV[4] == '1', tonumber(ARGV[5]), 'retried',
               tonumber(ARGV[6]), now_ms())
