-- waitpoint_token.lua: waitpoint HMAC tokens (mint, validate) and their
-- keystore: ff_rotate_waitpoint_hmac_secret, ff_list_waitpoint_hmac_kids.
-- Suspension (suspension.lua) mints tokens; signal delivery (signal.lua)
-- validates them.

---------------------------------------------------------------------------
-- Waitpoint HMAC tokens: "<kid>:<40 hex>", HMAC-SHA1 keyed by the kid's hex
-- secret over "<waitpoint_id>|<waitpoint_key>|<created_at_ms>".
---------------------------------------------------------------------------

local waitpoint_hmac = {}

-- Bytes of a hex string; nil unless it is even-length hex.
function waitpoint_hmac.bytes(hex)
  if type(hex) ~= "string" or #hex % 2 ~= 0 or string.find(hex, "[^0-9a-fA-F]") then
    return nil
  end
  return (string.gsub(hex, "..", function(pair)
    return string.char(tonumber(pair, 16))
  end))
end

local function xor_with(bytes, pad)
  local out = {}
  for i = 1, #bytes do
    out[i] = string.char(bit.bxor(string.byte(bytes, i), pad))
  end
  return table.concat(out)
end

-- RFC 2104 HMAC-SHA1 as lowercase hex; nil when the secret is not hex.
function waitpoint_hmac.digest(secret_hex, message)
  local key = waitpoint_hmac.bytes(secret_hex)
  if not key then
    return nil
  end
  if #key > 64 then
    key = waitpoint_hmac.bytes(redis.sha1hex(key))
  end
  key = key .. string.rep("\0", 64 - #key)
  local inner = redis.sha1hex(xor_with(key, 0x36) .. message)
  return redis.sha1hex(xor_with(key, 0x5c) .. waitpoint_hmac.bytes(inner))
end

function waitpoint_hmac.message(waitpoint_id, waitpoint_key, created_at)
  return waitpoint_id .. "|" .. waitpoint_key .. "|" .. tostring(created_at)
end

-- A token under the keystore's current kid, or nil plus the error code.
function waitpoint_hmac.mint(keystore_key, waitpoint_id, waitpoint_key, created_at)
  if not present(keystore_key) then
    return nil, "invalid_keys_missing_hmac"
  end
  local store = read_hash(keystore_key)
  local kid = store and store.current_kid
  local secret = kid and store["secret:" .. kid]
  if not secret then
    return nil, "hmac_secret_not_initialized"
  end
  local digest = waitpoint_hmac.digest(secret, waitpoint_hmac.message(waitpoint_id, waitpoint_key, created_at))
  if not digest then
    return nil, "invalid_secret"
  end
  return kid .. ":" .. digest
end

-- Compare two digests without an early exit on the first differing byte.
local function same_digest(expected, presented)
  if #expected ~= #presented then
    return false
  end
  local difference = 0
  for i = 1, #expected do
    difference = bit.bor(difference, bit.bxor(string.byte(expected, i), string.byte(presented, i)))
  end
  return difference == 0
end

-- Why a presented token does not authenticate a waitpoint; nil when it does.
-- Any kid with a secret validates while its expires_at is not in the past;
-- the current kid never expires.
function waitpoint_hmac.problem(keystore_key, token, waitpoint_id, waitpoint_key, created_at, now)
  if not present(keystore_key) then
    return "invalid_keys_missing_hmac"
  end
  if not present(token) then
    return "missing_token"
  end
  local colon = string.find(token, ":", 1, true)
  if not colon or colon < 2 or colon >= #token then
    return "invalid_token"
  end
  local kid, presented = string.sub(token, 1, colon - 1), string.sub(token, colon + 1)
  if #presented ~= 40 then
    return "invalid_token"
  end
  local store = read_hash(keystore_key)
  if not store or not store.current_kid then
    return "hmac_secret_not_initialized"
  end
  local secret = store["secret:" .. kid]
  if kid ~= store.current_kid and secret then
    local expires_at = tonumber(store["expires_at:" .. kid])
    if not expires_at or expires_at <= 0 or expires_at < now then
      return "token_expired"
    end
  end
  if not secret then
    return "invalid_token"
  end
  local expected = waitpoint_hmac.digest(secret, waitpoint_hmac.message(waitpoint_id, waitpoint_key, created_at))
  if not expected then
    return "invalid_secret"
  end
  if not same_digest(expected, presented) then
    return "invalid_token"
  end
  return nil
end

-- Check a delivered token against the waitpoint's mint-time binding. A
-- failure is stamped on exec_core; returns the error reply or nil.
function waitpoint_hmac.authenticate(core_key, keystore_key, token, waitpoint_id, waitpoint, now)
  local problem = waitpoint_hmac.problem(keystore_key, token, waitpoint_id, waitpoint.waitpoint_key or "",
    tonumber(waitpoint.created_at) or 0, now)
  if problem then
    redis.call("HSET", core_key, "last_hmac_validation_failed_at", tostring(now))
    return fail(problem)
  end
  return nil
end

---------------------------------------------------------------------------
-- Keystore functions
---------------------------------------------------------------------------

redis.register_function('ff_rotate_waitpoint_hmac_secret', function(keys, args)
  local keystore = keys[1]
  local new_kid, new_secret = args[1], args[2]
  if type(new_kid) ~= "string" or new_kid == "" or string.find(new_kid, ":", 1, true) then
    return fail("invalid_kid")
  end
  if type(new_secret) ~= "string" or new_secret == "" or not waitpoint_hmac.bytes(new_secret) then
    return fail("invalid_secret_hex")
  end
  local grace_ms = tonumber(args[3])
  if not grace_ms or grace_ms ~= grace_ms or grace_ms < 0 or grace_ms > 9007199254740991
      or grace_ms ~= math.floor(grace_ms) then
    return fail("invalid_grace_ms")
  end

  local now = server_now_ms()
  local store = read_hash(keystore) or {}
  local current_kid = store.current_kid
  if current_kid == new_kid then
    local stored = store["secret:" .. new_kid]
    if stored and stored ~= new_secret then
      return fail("rotation_conflict", new_kid)
    end
    if not stored then
      redis.call("HSET", keystore, "secret:" .. new_kid, new_secret) -- repair a torn write
    end
    return ok("noop", new_kid)
  end

  -- Forget kids whose grace ended (or never had a valid expiry).
  local expired = {}
  for field, value in pairs(store) do
    if string.sub(field, 1, 11) == "expires_at:" then
      local expires_at = tonumber(value)
      if not expires_at or expires_at <= 0 or expires_at < now then
        put(expired, field, "secret:" .. string.sub(field, 12))
      end
    end
  end
  if #expired > 0 then
    redis.call("HDEL", keystore, unpack(expired))
  end

  local fields = {}
  if current_kid then
    local grace_end = string.format("%.0f", now + grace_ms) -- a decimal integer even past 1e14
    put(fields, "previous_kid", current_kid, "previous_expires_at", grace_end,
      "expires_at:" .. current_kid, grace_end)
  end
  hset(keystore, put(fields, "current_kid", new_kid, "secret:" .. new_kid, new_secret))
  return ok("rotated", current_kid or "", new_kid, tostring(#expired / 2))
end)

redis.register_function('ff_list_waitpoint_hmac_kids', function(keys, args)
  local flat = redis.call("HGETALL", keys[1])
  local now = server_now_ms()
  local current_kid = ""
  local verifying = {}
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    if field == "current_kid" then
      current_kid = value
    elseif string.sub(field, 1, 11) == "expires_at:" then
      local expires_at = tonumber(value)
      if expires_at and expires_at > 0 and expires_at >= now then
        put(verifying, string.sub(field, 12), value)
      end
    end
  end
  return ok(current_kid, tostring(#verifying / 2), unpack(verifying))
end)
