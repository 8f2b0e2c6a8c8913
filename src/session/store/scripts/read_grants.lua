local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, sid in ipairs(sids) do
  local key = ARGV[1] .. sid
  if redis.call('EXISTS', key) == 1 then
    local f = redis.call('HMGET', key, 'roles', 'permissions', 'expires_at', 'grant_mac')
    table.insert(out, sid)
    for i = 1, 4 do table.insert(out, f[i] or '') end
  end
end
return out
