--@include prelude
-- Extend the lease of the current claim. Running it twice only sets the same deadline again.
-- KEYS: task, leases   ARGV: id, token, lease_ms   Returns 1 if renewed, 0 if the lease is lost.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
