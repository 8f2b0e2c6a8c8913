redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
local revoked = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('DEL', ARGV[1] .. sid) > 0 then table.insert(revoked, sid) end
  redis.call('DEL', ARGV[1] .. sid .. ':used')
end
redis.call('DEL', KEYS[1])
if #revoked > 0 then redis.call('PUBLISH', ARGV[3], sessions_message(revoked)) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return revoked
