local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
local revoked = {}
for _, sid in ipairs(sids) do
  if sid ~= ARGV[2] then
    local n = redis.call('DEL', ARGV[1] .. sid)
    redis.call('DEL', ARGV[1] .. sid .. ':used')
    redis.call('ZREM', KEYS[1], sid)
    if n > 0 then table.insert(revoked, sid) end
  end
end
if #revoked > 0 then redis.call('PUBLISH', ARGV[3], sessions_message(revoked)) end
return revoked
