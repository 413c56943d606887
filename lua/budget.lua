-- budget.lua: budgets on their {b:M} partition: definitions with per-dimension
-- hard and soft limits, usage reports and attributed spend (check, then
-- increment, with dedup), releasing an execution's spend, periodic resets.
-- The admission block and unblock of an execution ({fp:N}) live here too,
-- as in FlowFabric's library.

-- A value HINCRBY takes as an increment: "0", or an optional minus sign and
-- up to 18 digits without a leading zero.
local function is_increment(value)
  local digits = string.match(value, "^-?([1-9]%d*)$")
  return value == "0" or (digits ~= nil and #digits <= 18)
end

-- The check-then-increment shared by ff_report_usage_and_check and
-- ff_record_spend. `charges` lists {dimension, delta-as-sent}; `ledger`, when
-- the spend is attributed, holds the execution's by_exec hash, the index and its id.
local function charge(K, charges, now_ms, dedup_key, ledger)
  if dedup_key ~= "" and redis.call("GET", dedup_key) then
    return reply("ALREADY_APPLIED")
  end

  -- Nothing is incremented unless every dimension stays within its hard limit.
  for _, c in ipairs(charges) do
    local dim = c[1]
    local delta, bad = need_number(c[2], "delta for " .. dim)
    if bad then return bad end
    local current = tonumber(redis.call("HGET", K.usage, dim) or "0")
    local hard = redis.call("HGET", K.limits, "hard:" .. dim)
    if present(hard) then
      local limit = tonumber(hard)
      if limit == nil then
        return fail("invalid_input", "hard:" .. dim .. " must be a number, got: " .. hard)
      end
      if limit > 0 and current + delta > limit then
        redis.call("HINCRBY", K.definition, "breach_count", 1)
        redis.call("HSET", K.definition,
          "last_breach_at", now_ms,
          "last_breach_dim", dim,
          "last_updated_at", now_ms)
        return reply("HARD_BREACH", dim, tostring(current), tostring(hard))
      end
    end
  end
  for _, c in ipairs(charges) do
    if not is_increment(c[2]) then
      return fail("invalid_input", "delta for " .. c[1] .. " must be an integer, got: " .. c[2])
    end
    local soft = redis.call("HGET", K.limits, "soft:" .. c[1])
    if present(soft) and tonumber(soft) == nil then
      return fail("invalid_input", "soft:" .. c[1] .. " must be a number, got: " .. soft)
    end
  end

  -- The first dimension (in ARGV order) left above its soft limit is reported.
  local soft_breach
  for _, c in ipairs(charges) do
    local dim = c[1]
    local total = redis.call("HINCRBY", K.usage, dim, c[2])
    if ledger then
      redis.call("HINCRBY", ledger.key, dim, c[2])
    end
    local soft = tonumber(redis.call("HGET", K.limits, "soft:" .. dim) or "")
    if not soft_breach and soft and soft > 0 and total > soft then
      soft_breach = dim
    end
  end
  if ledger then
    redis.call("SADD", ledger.index, ledger.execution_id)
  end
  redis.call("HSET", K.definition, "last_updated_at", now_ms)
  if dedup_key ~= "" then
    redis.call("SET", dedup_key, "1", "PX", 86400000)
  end
  if soft_breach then
    redis.call("HINCRBY", K.definition, "soft_breach_count", 1)
    local soft = tonumber(redis.call("HGET", K.limits, "soft:" .. soft_breach) or "0")
    local current = tonumber(redis.call("HGET", K.usage, soft_breach) or "0")
    return reply("SOFT_BREACH", soft_breach, tostring(current), tostring(soft))
  end
  return reply("OK")
end

-- A dimension or pair count: a whole number >= 0, or nil plus the reply.
local function need_count(value, name)
  local n, bad = need_integer(value, name)
  if n ~= nil and n < 0 then
    return nil, fail("invalid_input", name .. " must not be negative, got: " .. value)
  end
  return n, bad
end

redis.register_function('ff_create_budget', function(keys, args)
  local K = {definition = keys[1], limits = keys[2], usage = keys[3], resets = keys[4],
    policies = keys[5]}
  local budget_id = args[1]
  if budget_id == nil then
    return fail("invalid_input", "budget_id must be given")
  end

  -- the index is maintained even on replay, healing budgets created before it existed
  redis.call("SADD", K.policies, budget_id)
  if redis.call("EXISTS", K.definition) == 1 then
    return reply("ALREADY_SATISFIED", budget_id)
  end
  local dims, bad = need_number(args[9], "dim_count")
  if bad then return bad end
  -- a count below 1 writes no limits; a larger one needs whole 3 x count limit arguments
  local bad_arg
  if dims >= 1 then
    bad_arg = select(2, need_integer(args[9], "dim_count")) or argv_shortfall(args, 9 + 3 * dims)
  end
  local interval, bad_interval = need_number(args[7], "reset_interval_ms")
  bad_arg = bad_arg or bad_interval
  if bad_arg then return bad_arg end
  local now_ms = args[8]
  if interval > 0 then
    local _, bad_now = need_number(now_ms, "now_ms")
    if bad_now then return bad_now end
  end

  redis.call("HSET", K.definition,
    "budget_id", budget_id,
    "scope_type", args[2],
    "scope_id", args[3],
    "enforcement_mode", args[4],
    "on_hard_limit", args[5],
    "on_soft_limit", args[6],
    "reset_interval_ms", args[7],
    "breach_count", "0",
    "soft_breach_count", "0",
    "created_at", now_ms,
    "last_updated_at", now_ms)
  for i = 1, dims do
    local dim = args[9 + i]
    redis.call("HSET", K.limits,
      "hard:" .. dim, args[9 + dims + i],
      "soft:" .. dim, args[9 + 2 * dims + i])
  end
  if interval > 0 then
    local next_reset_at = tostring(tonumber(now_ms) + interval)
    redis.call("HSET", K.definition, "next_reset_at", next_reset_at)
    redis.call("ZADD", K.resets, tonumber(next_reset_at), budget_id)
  end
  return ok(budget_id)
end)

redis.register_function('ff_report_usage_and_check', function(keys, args)
  local K = {usage = keys[1], limits = keys[2], definition = keys[3]}
  local dims, bad = need_number(args[1], "dim_count")
  if bad then return bad end
  local _, bad_count = need_count(args[1], "dim_count")
  local bad_arg = bad_count or argv_shortfall(args, 2 * dims + 2)
  if bad_arg then return bad_arg end

  local charges = {}
  for i = 1, dims do
    charges[i] = {args[1 + i], args[1 + dims + i]}
  end
  return charge(K, charges, args[2 * dims + 2], args[2 * dims + 3] or "")
end)

redis.register_function('ff_record_spend', function(keys, args)
  local K = {usage = keys[1], limits = keys[2], definition = keys[3]}
  local pairs_sent, bad = need_number(args[1], "pair_count")
  if bad then return bad end
  local _, bad_count = need_count(args[1], "pair_count")
  local bad_arg = bad_count or argv_shortfall(args, 2 * pairs_sent + 2)
  if bad_arg then return bad_arg end

  local charges = {}
  for i = 1, pairs_sent do
    charges[i] = {args[2 * i], args[2 * i + 1]}
  end
  local execution_id = args[4 + 2 * pairs_sent] or ""
  local ledger
  if execution_id ~= "" then
    ledger = {key = keys[4], index = keys[5], execution_id = execution_id}
  end
  return charge(K, charges, args[2 * pairs_sent + 2], args[2 * pairs_sent + 3] or "", ledger)
end)

redis.register_function('ff_release_budget', function(keys, args)
  local usage_key, ledger_key, index_key = keys[1], keys[2], keys[3]
  local execution_id = args[2]
  if execution_id == nil then
    return fail("invalid_input", "execution_id must be given")
  end

  local ledger = redis.call("HGETALL", ledger_key)
  if #ledger == 0 then
    return ok("noop")
  end
  -- usage never goes below zero: a reset may have cleared it since the spend
  for i = 1, #ledger, 2 do
    local dim, delta = ledger[i], tonumber(ledger[i + 1]) or 0
    if delta > 0 then
      local left = tonumber(redis.call("HGET", usage_key, dim) or "0") - delta
      redis.call("HSET", usage_key, dim, tostring(math.max(left, 0)))
    end
  end
  redis.call("DEL", ledger_key)
  redis.call("SREM", index_key, execution_id)
  return ok("released")
end)

redis.register_function('ff_reset_budget', function(keys, args)
  local def_key, usage_key, resets_key = keys[1], keys[2], keys[3]
  local budget_id, now_ms = args[1], args[2]
  local interval = tonumber(redis.call("HGET", def_key, "reset_interval_ms") or "0") or 0
  local bad = argv_shortfall(args, 2)
  if not bad and interval > 0 then
    bad = select(2, need_number(now_ms, "now_ms"))
  end
  if bad then return bad end

  local zeroed = {}
  for _, field in ipairs(redis.call("HKEYS", usage_key)) do
    put(zeroed, field, "0")
  end
  if #zeroed > 0 then
    hset(usage_key, zeroed)
  end
  redis.call("HINCRBY", def_key, "reset_count", 1)
  redis.call("HSET", def_key,
    "last_reset_at", now_ms,
    "last_updated_at", now_ms,
    "last_breach_at", "",
    "last_breach_dim", "")

  local next_reset_at = "0"
  if interval > 0 then
    next_reset_at = tostring(tonumber(now_ms) + interval)
    redis.call("HSET", def_key, "next_reset_at", next_reset_at)
    redis.call("ZADD", resets_key, tonumber(next_reset_at), budget_id)
  else
    redis.call("ZREM", resets_key, budget_id)
  end
  return ok(next_reset_at)
end)

redis.register_function('ff_block_execution_for_admission', function(keys, args)
  local core_key, eligible_key, blocked_key = keys[1], keys[2], keys[3]
  local eid, reason, detail, now_ms = args[1], args[2], args[3] or "", args[4]

  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase == "terminal" then return not_active(core, "terminal") end
  if core.lifecycle_phase ~= "runnable" then return fail("execution_not_eligible") end
  local eligibility = ({
    waiting_for_budget = "blocked_by_budget",
    waiting_for_quota = "blocked_by_quota",
    waiting_for_capable_worker = "blocked_by_route",
    paused_by_operator = "blocked_by_operator",
    paused_by_policy = "blocked_by_lane_state",
  })[reason or ""]
  if not eligibility then return fail("invalid_blocking_reason") end
  local blocked_at, bad = need_number(now_ms, "now_ms")
  if bad then return bad end

  hset(core_key, put(state_fields("runnable", "unowned", eligibility, reason, detail, "none",
    core.attempt_state or "pending_first_attempt", "rate_limited"),
    "last_transition_at", now_ms, "last_mutation_at", now_ms))
  redis.call("ZREM", eligible_key, eid)
  redis.call("ZADD", blocked_key, blocked_at, eid)
  return ok("blocked")
end)

redis.register_function('ff_unblock_execution', function(keys, args)
  local core_key, blocked_key, eligible_key = keys[1], keys[2], keys[3]
  local eid, now_ms, expected_reason = args[1], args[2], args[3] or ""

  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  local state = core.eligibility_state
  if core.lifecycle_phase ~= "runnable"
      or (state ~= "blocked_by_budget" and state ~= "blocked_by_quota"
        and state ~= "blocked_by_route" and state ~= "blocked_by_operator")
      or (expected_reason ~= "" and core.blocking_reason ~= expected_reason) then
    return fail("execution_not_eligible")
  end
  local bad = argv_shortfall(args, 2)
  if bad then return bad end

  hset(core_key, put(state_fields("runnable", "unowned", "eligible_now", "waiting_for_worker", "",
    "none", core.attempt_state or "pending_first_attempt", "waiting"),
    "last_transition_at", now_ms, "last_mutation_at", now_ms))
  redis.call("ZREM", blocked_key, eid)
  redis.call("ZADD", eligible_key,
    eligible_score(tonumber(core.priority or "0") or 0, tonumber(core.created_at or "0") or 0), eid)
  return ok("unblocked")
end)
