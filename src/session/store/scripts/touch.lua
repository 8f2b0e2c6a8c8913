local exp = redis.call('HGET', KEYS[1], 'expires_at')
if not exp then return 0 end
redis.call('HSET', KEYS[1], 'last_seen_at', ARGV[1])
local idle = tonumber(ARGV[2])
if idle > 0 then
  redis.call('EXPIREAT', KEYS[1], math.min(tonumber(exp), tonumber(ARGV[1]) + idle))
end
return 1
