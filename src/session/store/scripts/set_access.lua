local n = 0
for i = 6, #ARGV, 2 do
  local key = ARGV[1] .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'roles', ARGV[2], 'permissions', ARGV[3], 'grant_mac', ARGV[i + 1])
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return n
