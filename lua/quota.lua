-- quota.lua: quota policies on their {q:K} partition: a sliding-window rate
-- limit and a concurrency cap checked (and recorded) at admission, and the
-- release of an admission whose claim grant could not be issued.
-- ff_check_admission_and_record answers bare arrays, without the leading 1/0.

-- Inputs FlowFabric only trips over after it has trimmed the window: a jitter
-- that is not a number when the rate limit is hit, or, when the execution is
-- admitted, no execution id or a window that is not whole milliseconds.
-- Answers the invalid_input reply for those, from reads only; nil otherwise.
local function admission_misfit(K, args, A)
  local live = redis.call("ZCARD", K.window) - redis.call("ZCOUNT", K.window, "-inf", A.now - A.window_ms)
  if A.rate_limit > 0 and live >= A.rate_limit then
    return select(2, need_number(args[6] or "0", "jitter_ms"))
  end
  if A.concurrency_cap > 0 and tonumber(redis.call("GET", K.concurrency) or "0") >= A.concurrency_cap then
    return nil
  end
  if args[5] == nil then
    return fail("invalid_input", "execution_id must be given")
  end
  if A.window_ms > 0 and A.window_ms % 1 ~= 0 then
    return fail("invalid_input", "window_seconds must give whole milliseconds, got: " .. args[2])
  end
end

redis.register_function('ff_create_quota_policy', function(keys, args)
  local def_key, concurrency_key, policies_key = keys[1], keys[3], keys[5]
  local quota_policy_id = args[1]

  if redis.call("EXISTS", def_key) == 1 then
    return reply("ALREADY_SATISFIED", quota_policy_id)
  end
  local bad = argv_shortfall(args, 5)
  if bad then return bad end
  redis.call("HSET", def_key,
    "quota_policy_id", quota_policy_id,
    "requests_per_window_seconds", args[2],
    "max_requests_per_window", args[3],
    "active_concurrency_cap", args[4],
    "created_at", args[5])
  redis.call("SET", concurrency_key, "0")
  redis.call("SADD", policies_key, quota_policy_id)
  return ok(quota_policy_id)
end)

redis.register_function('ff_check_admission_and_record', function(keys, args)
  local K = {window = keys[1], concurrency = keys[2], guard = keys[4], admitted = keys[5]}
  local A = {}
  for i, name in ipairs({"now", "window_seconds", "rate_limit", "concurrency_cap"}) do
    local n, bad = need_number(args[i], name == "now" and "now_ms" or name)
    if bad then return bad end
    A[name] = n
  end
  A.window_ms = A.window_seconds * 1000
  local execution_id, jitter_ms = args[5], tonumber(args[6] or "0")

  if redis.call("EXISTS", K.guard) == 1 then
    return {"ALREADY_ADMITTED"}
  end
  if jitter_ms == nil or execution_id == nil or A.window_ms % 1 ~= 0 then
    local misfit = admission_misfit(K, args, A)
    if misfit then return misfit end
  end

  redis.call("ZREMRANGEBYSCORE", K.window, "-inf", A.now - A.window_ms)
  if A.rate_limit > 0 and redis.call("ZCARD", K.window) >= A.rate_limit then
    local oldest = redis.call("ZRANGE", K.window, 0, 0, "WITHSCORES")
    local retry_after_ms = 0
    if #oldest >= 2 then
      retry_after_ms = math.max(tonumber(oldest[2]) + A.window_ms - A.now, 0)
    end
    local jitter = 0
    if jitter_ms > 0 then
      jitter = math.random(0, jitter_ms)
    end
    return {"RATE_EXCEEDED", tostring(retry_after_ms + jitter)}
  end
  if A.concurrency_cap > 0
      and tonumber(redis.call("GET", K.concurrency) or "0") >= A.concurrency_cap then
    return {"CONCURRENCY_EXCEEDED"}
  end

  redis.call("ZADD", K.window, A.now, execution_id)
  if A.window_ms > 0 then
    -- the guard makes a retried admission within the window a no-op
    redis.call("SET", K.guard, "1", "PX", A.window_ms, "NX")
  end
  if A.concurrency_cap > 0 then
    redis.call("INCR", K.concurrency)
  end
  redis.call("SADD", K.admitted, execution_id)
  return {"ADMITTED"}
end)

redis.register_function('ff_release_admission', function(keys, args)
  local guard_key, admitted_key, concurrency_key = keys[1], keys[2], keys[3]
  local bad = argv_shortfall(args, 1)
  if bad then return bad end

  redis.call("DEL", guard_key)
  redis.call("SREM", admitted_key, args[1])
  if tonumber(redis.call("GET", concurrency_key) or "0") > 0 then
    redis.call("DECR", concurrency_key)
  end
  return ok("released")
end)
