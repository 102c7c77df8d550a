--@include prelude
-- The ids whose lease deadline has passed, on the Redis clock.
-- KEYS: leases   ARGV: limit
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
