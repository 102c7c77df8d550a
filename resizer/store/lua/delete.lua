--@include prelude
-- Delete a task; release its stored images when no other task was created for them.
-- KEYS: task   ARGV: id, partition tag
-- Returns 1 if the task existed, else 0.
local task, id, tag = KEYS[1], ARGV[1], ARGV[2]
local status, digest, joined, deleted, leader = unpack(
  redis.call('HMGET', task, 'status', 'digest', 'joined', 'deleted', 'leader'))
if not status or deleted then return 0 end
local content, blob = tag .. ':content:' .. digest, tag .. ':blob:' .. digest
local leader_task = leader and tag .. ':task:' .. leader
local clash = wrong_type({content, leader_task}, 'hash hash')
if clash then return clash end
if leader and redis.call('EXISTS', leader_task) == 1 then
  redis.call('HINCRBY', leader_task, 'joined', -1)
end
local in_flight = status == 'WAITING' or status == 'IN_PROGRESS'
if redis.call('HGET', content, 'leader') == id and in_flight and number(joined, 0) > 0 then
  -- Others joined this task's work: it stays in the queue for them, hidden from clients.
  redis.call('HSET', task, 'deleted', 1)
else
  -- A queued id whose task is gone is dropped by the worker that takes it, and a worker that
  -- holds it finds its claim gone: no list needs searching here.
  redis.call('DEL', task)
  if redis.call('HGET', content, 'leader') == id then redis.call('HDEL', content, 'leader') end
end
if redis.call('HINCRBY', content, 'refs', -1) <= 0 then
  redis.call('DEL', content, blob)
end
return 1
