--@include prelude
-- What a recovery pass acts on in one partition, read in one step: the ids whose lease deadline
-- has passed (on the Redis clock), the ids taken but never leased, and how many ids wait.
-- KEYS: leases, processing, waiting   ARGV: limit
-- Returns {expired ids (at most limit), unleased ids, waiting length}.
local leases, processing = KEYS[1], KEYS[2]
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms(), 'LIMIT', 0,
                           tonumber(ARGV[1]))
-- `processing` holds one id per busy worker at most: reading it whole is cheap.
local unleased = {}
for _, id in ipairs(redis.call('LRANGE', processing, 0, -1)) do
  if not redis.call('ZSCORE', leases, id) then unleased[#unleased + 1] = id end
end
return {expired, unleased, redis.call('LLEN', KEYS[3])}
