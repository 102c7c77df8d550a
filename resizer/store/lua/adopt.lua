--@include prelude
-- An id in `processing` without a lease: a worker took it and has not (yet) run the claim.
-- Give it one lease period; the claim, if it comes, replaces this deadline.
-- KEYS: task, processing, leases   ARGV: id, lease_ms
-- Returns 'adopted', 'dropped' (its task is gone) or 'skipped'.
local task, processing, leases, id = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
if not redis.call('LPOS', processing, id) then return 'skipped' end
if redis.call('ZSCORE', leases, id) then return 'skipped' end
if redis.call('EXISTS', task) == 0 then
  redis.call('LREM', processing, 0, id)
  return 'dropped'
end
redis.call('ZADD', leases, 'NX', now_ms() + tonumber(ARGV[2]), id)
return 'adopted'
