-- The number of partitions tasks are created in, as the highest any process announced: every
-- worker and recovery serves that many, whatever its own RESIZER_PARTITIONS says.
-- KEYS: the partitions key   ARGV: this process's partition count
-- Returns the highest count announced so far (this one included).
-- A count that is not a number (a hand edit) would fail every create, take and recovery pass
-- that announces: it counts as none, and this process's count replaces it.
local known = tonumber(redis.call('GET', KEYS[1])) or 0
local mine = tonumber(ARGV[1])
if mine > known then
  redis.call('SET', KEYS[1], mine)
  return mine
end
return known
