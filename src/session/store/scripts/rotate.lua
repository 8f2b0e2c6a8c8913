if redis.call('EXISTS', KEYS[4]) == 1 then return {'invalid'} end
local f = redis.call('HMGET', KEYS[1], 'refresh_hash', 'prev_hash', 'rotated_at', 'succ_sealed',
  'succ_jti', 'expires_at', 'roles', 'permissions', 'token_mac', 'grant_mac', 'rotation_mac',
  'amr', 'auth_time', 'idp', 'auth_mac')
-- The authentication fields and their MAC, appended to every answer that hands out tokens.
local auth = {f[12] or '', f[13] or '', f[14] or '', f[15] or ''}
local function with_auth(reply)
  for _, v in ipairs(auth) do table.insert(reply, v) end
  return reply
end
if not f[1] then return {'invalid'} end
local now = tonumber(ARGV[3])
local function revoke()
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('ZREM', KEYS[2], ARGV[8])
  redis.call('PUBLISH', ARGV[7], sessions_message({ARGV[8]}))
end
if f[1] == ARGV[1] then
  local sealed = f[9] and (f[9] == ARGV[10] or (ARGV[11] ~= '' and f[9] == ARGV[11]))
  local exp = tonumber(f[6])
  if not sealed or not exp then
    revoke()
    return {'unsealed'}
  end
  redis.call('HSET', KEYS[1], 'refresh_hash', ARGV[2], 'prev_hash', ARGV[1], 'rotated_at', ARGV[3],
    'succ_sealed', ARGV[5], 'succ_jti', ARGV[6], 'last_seen_at', ARGV[3],
    'token_mac', ARGV[12], 'rotation_mac', ARGV[13])
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('EXPIREAT', KEYS[3], exp)
  local idle = tonumber(ARGV[9])
  if idle > 0 then redis.call('EXPIREAT', KEYS[1], math.min(exp, now + idle)) end
  return with_auth({'rotated', f[6], f[7] or '', f[8] or '', f[10] or ''})
end
local rotated_at = tonumber(f[3])
if f[2] == ARGV[1] and rotated_at and now - rotated_at <= tonumber(ARGV[4]) then
  return with_auth({'replayed', f[6] or '', f[7] or '', f[3], f[4] or '', f[5] or '', f[8] or '',
    f[10] or '', f[11] or ''})
end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  revoke()
  return {'reused'}
end
return {'invalid'}
