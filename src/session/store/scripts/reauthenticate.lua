-- Only a session that exists gets the new authentication (never a partial record).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'amr', ARGV[1], 'auth_time', ARGV[2], 'idp', ARGV[3],
  'auth_mac', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
