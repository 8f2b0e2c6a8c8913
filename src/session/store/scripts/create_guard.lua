if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', ARGV[1] .. ARGV[2])
  redis.call('ZREM', KEYS[1], ARGV[2])
  return {'cut_off'}
end
local max = tonumber(ARGV[3])
if max == 0 then return {'stored'} end
local others = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if sid ~= ARGV[2] then
    local c = redis.call('HGET', ARGV[1] .. sid, 'created_at')
    if c then table.insert(others, {tonumber(c), sid}) else redis.call('ZREM', KEYS[1], sid) end
  end
end
local reply = {'stored'}
local excess = #others + 1 - max
if excess <= 0 then return reply end
table.sort(others, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
for i = 1, excess do
  local sid = others[i][2]
  redis.call('DEL', ARGV[1] .. sid, ARGV[1] .. sid .. ':used')
  redis.call('ZREM', KEYS[1], sid)
  table.insert(reply, sid)
end
redis.call('PUBLISH', ARGV[4], sessions_message(reply, 2))
return reply
