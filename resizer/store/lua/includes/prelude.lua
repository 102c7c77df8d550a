-- What every script shares: the Redis clock and TTL helpers. Functions only, no state.

-- Milliseconds on the Redis clock, so hosts with skewed clocks agree on leases. Redis >= 5
-- replicates a script's effects, not the script, so reading TIME is safe.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Make `key` live at least `ttl` ms from now; never shorten it.
local function keep(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', key, ttl) end
end

-- Make `key` live at most `ttl` ms from now; never lengthen it.
local function cap(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or left > ttl then redis.call('PEXPIRE', key, ttl) end
end

-- A number a task's record keeps (its attempts, its creation time). One that is not a number
-- (a hand edit, another program's write) reads as `default`: failing the script instead would
-- fail it for this task on every try, the attempt cap included, and stop each worker that took it.
local function number(value, default)
  local n = tonumber(value)
  if n then return math.floor(n) end
  return default
end

-- Add `n` to `name` in a statistics hash (HINCRBYFLOAT with `float`). A counter edited into
-- something that is not a number (by hand) starts again from `n`: failing instead would fail
-- the script after its writes, for every task. (A pcall: no command more while all is well.)
local function count(stats, name, n, float)
  n = n or 1
  local added = redis.pcall(float and 'HINCRBYFLOAT' or 'HINCRBY', stats, name, n)
  if type(added) == 'table' and added.err then redis.call('HSET', stats, name, n) end
end

-- One observation of a histogram kept in a hash: its bucket's count, the count and the sum.
local function observe(histogram, bucket, value)
  count(histogram, bucket)
  count(histogram, 'count')
  count(histogram, 'sum', value, true)
end

-- Another program's key under one of resizer's names, of another type, fails the first command
-- meant for our type, and Redis keeps what the script wrote before it. So before its first
-- write a script checks the keys it has not yet touched with a command of their type, and
-- refuses with nothing written. `kinds` gives the type of each of `keys` in order, '-' for one
-- not to check ('- list zset'); a key given as false is skipped. Returns the error reply to
-- return, or nil. (A TYPE costs a script call ~3 us: keys read first need none.)
local function wrong_type(keys, kinds)
  local i = 0
  for kind in string.gmatch(kinds, '%S+') do
    i = i + 1
    if kind ~= '-' and keys[i] then
      local found = redis.call('TYPE', keys[i])['ok']
      if found ~= 'none' and found ~= kind then
        return redis.error_reply('WRONGTYPE ' .. keys[i] .. ' holds a ' .. found ..
                                 ' where resizer keeps a ' .. kind)
      end
    end
  end
end

-- A Redis >= 7 ACL can deny resizer's user a channel (a user made there has none unless given
-- them), and a script's PUBLISH fails then, after its writes. So a script that may announce on
-- `...` (channel names, '' for none) checks first. Returns the error reply to return, or nil.
local function publish_denied(...)
  if not redis.acl_check_cmd then return nil end  -- Redis < 7: no such check, nor its default
  for _, channel in ipairs({...}) do
    if channel ~= '' and not redis.acl_check_cmd(PUBLISH, channel, '') then
      return redis.error_reply("NOPERM resizer's Redis user may not publish to " .. channel)
    end
  end
end
