-- signal.lua: signals and the resume path. ff_deliver_signal authenticates a
-- signal (waitpoint HMAC), records it and evaluates the resume condition;
-- ff_buffer_signal_for_pending_waitpoint records one for a waitpoint that is
-- not active yet. ff_claim_resumed_execution claims an execution whose attempt
-- was interrupted (self-delayed, resumed by a signal, or requeued after a
-- reclaim) and continues that same attempt.

-- Parse the 18 ARGV shared by deliver and buffer (numeric ones checked first;
-- an empty dedup_ttl_ms disables dedup). Returns the argument table, or nil
-- plus the invalid_input reply.
local function signal_args(args, check_resume_delay)
  local bad = bad_optional_number(args[14], "dedup_ttl_ms")
  local checked = {{16, "signal_maxlen"}, {17, "max_signals_per_execution"}}
  if check_resume_delay then
    checked[#checked + 1] = {15, "resume_delay_ms"}
  end
  for _, slot in ipairs(checked) do
    if not bad and args[slot[1]] ~= nil then
      local _
      _, bad = need_number(args[slot[1]], slot[2])
    end
  end
  if bad then return nil, bad end
  return {
    signal_id = args[1], execution_id = args[2], waitpoint_id = args[3], signal_name = args[4],
    signal_category = args[5], source_type = args[6], source_identity = args[7],
    payload = args[8] or "", payload_encoding = args[9] or "json", idempotency_key = args[10] or "",
    correlation_id = args[11] or "", target_scope = args[12] or "waitpoint", created_at = args[13] or "",
    dedup_ttl_ms = tonumber(args[14] or "86400000") or 0, resume_delay_ms = tonumber(args[15] or "0"),
    signal_maxlen = tonumber(args[16] or "1000"), max_signals = tonumber(args[17] or "10000"),
    token = args[18] or "",
  }
end

-- ff_celery deviation: a waitpoint takes at most this many signals and this many
-- payload bytes (kept payloads only), so one token cannot fill the server.
local MAX_SIGNALS_PER_WAITPOINT = 1000
local MAX_SIGNAL_BYTES_PER_WAITPOINT = 4 * 1024 * 1024

-- The per-execution and per-waitpoint signal caps, then idempotency: an error or
-- DUPLICATE reply to return, or nil to go on recording the signal.
local function admit_signal(K, A, waitpoint)
  if A.max_signals > 0 and redis.call("ZCARD", K.execution_signals) >= A.max_signals then
    return fail("signal_limit_exceeded")
  end
  if tonumber(waitpoint.ffc_signals or "0") >= MAX_SIGNALS_PER_WAITPOINT
      or tonumber(waitpoint.ffc_signal_bytes or "0") + #A.payload > MAX_SIGNAL_BYTES_PER_WAITPOINT then
    return fail("signal_limit_exceeded")
  end
  if A.idempotency_key ~= "" and A.dedup_ttl_ms > 0 then
    local first = redis.call("GET", K.dedup)
    if first then
      return reply("DUPLICATE", first)
    end
    redis.call("SET", K.dedup, A.signal_id, "PX", A.dedup_ttl_ms, "NX")
  end
  return nil
end

-- Write the signal hash, its payload, the waitpoint's signal log entry and the
-- execution's signal index, and count it against the waitpoint's caps.
local function record_signal(K, A, now, effect)
  redis.call("HINCRBY", K.waitpoint, "ffc_signals", 1)
  redis.call("HINCRBY", K.waitpoint, "ffc_signal_bytes", #A.payload)
  local fields = {
    "signal_id", A.signal_id,
    "target_execution_id", A.execution_id,
    "target_waitpoint_id", A.waitpoint_id,
    "target_scope", A.target_scope,
    "signal_name", A.signal_name,
    "signal_category", A.signal_category,
    "source_type", A.source_type,
    "source_identity", A.source_identity,
    "correlation_id", A.correlation_id,
    "idempotency_key", A.idempotency_key,
    "created_at", A.created_at ~= "" and A.created_at or tostring(now),
    "accepted_at", tostring(now),
    "matched_waitpoint_id", A.waitpoint_id,
    "payload_encoding", A.payload_encoding,
  }
  if effect then
    put(fields, "observed_effect", effect)
  end
  hset(K.signal, fields)
  if A.payload ~= "" then
    redis.call("SET", K.signal_payload, A.payload)
  end
  redis.call("XADD", K.waitpoint_signals, "MAXLEN", "~", tostring(A.signal_maxlen), "*",
    "signal_id", A.signal_id,
    "signal_name", A.signal_name,
    "signal_category", A.signal_category,
    "source_type", A.source_type,
    "source_identity", A.source_identity,
    "matched", "0",
    "accepted_at", tostring(now))
  redis.call("ZADD", K.execution_signals, now, A.signal_id)
end

-- Evaluate a signal against a matcher-list condition hash. Returns the effect
-- and whether the condition is now satisfied.
local function match_condition_hash(condition_key, condition, signal_name, signal_id)
  local total = tonumber(condition.total_matchers or "0")
  for i = 0, total - 1 do
    local prefix = "matcher:" .. i .. ":"
    local name = condition[prefix .. "name"] or ""
    if condition[prefix .. "satisfied"] == "0" and (name == "" or name == signal_name) then
      local count = tonumber(condition.satisfied_count or "0") + 1
      redis.call("HSET", condition_key, prefix .. "satisfied", "1", prefix .. "signal_id", signal_id)
      redis.call("HSET", condition_key, "satisfied_count", tostring(count))
      if resume_condition.met(condition.match_mode or "any", count,
          tonumber(condition.minimum_signal_count or "1"), total) then
        return "resume_condition_satisfied", true
      end
      return "appended_to_waitpoint", false
    end
  end
  return "no_op", false
end

redis.register_function('ff_deliver_signal', function(keys, args)
  local K = {core = keys[1], condition = keys[2], waitpoint_signals = keys[3], execution_signals = keys[4],
    signal = keys[5], signal_payload = keys[6], dedup = keys[7], waitpoint = keys[8],
    suspension_current = keys[9], eligible = keys[10], suspended = keys[11], delayed = keys[12],
    suspension_timeout = keys[13], keystore = keys[14], delivery_feed = keys[15]}
  local A, bad = signal_args(args, true)
  if not A then return bad end

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  -- Authenticate before revealing anything about the execution or waitpoint.
  -- A waitpoint of another execution is answered as an unknown one (ff_celery deviation: its
  -- token must not open this execution).
  local waitpoint = read_hash(K.waitpoint)
  if not waitpoint or not waitpoint.created_at or waitpoint.execution_id ~= A.execution_id then
    return fail("invalid_token")
  end
  local denied = waitpoint_hmac.authenticate(K.core, K.keystore, A.token, A.waitpoint_id, waitpoint, now)
  if denied then return denied end

  local phase = core.lifecycle_phase
  if phase == "terminal" then return fail("target_not_signalable") end
  if phase == "active" or phase == "runnable" or phase == "submitted" then
    if waitpoint.state == "pending" then return fail("waitpoint_pending_use_buffer_script") end
    if waitpoint.state ~= "active" then return fail("target_not_signalable") end
  end
  local condition = read_hash(K.condition)
  if not condition then return fail("waitpoint_not_found") end
  if condition.closed == "1" then return fail("waitpoint_closed") end
  local refused = admit_signal(K, A, waitpoint)
  if refused then return refused end
  record_signal(K, A, now)

  local effect, satisfied, satisfiers_json
  local composite = condition.composite == "1"
  if composite then
    local suspension = read_hash(K.suspension_current) or {}
    local tree = present(condition.tree_json) and cjson.decode(condition.tree_json) or nil
    effect, satisfiers_json = resume_condition.deliver_composite(tree, K.suspension_current, A.waitpoint_id,
      waitpoint.waitpoint_key or suspension.waitpoint_key or "", A)
    satisfied = effect == "resume_condition_satisfied"
  else
    effect, satisfied = match_condition_hash(K.condition, condition, A.signal_name, A.signal_id)
  end
  local matched = effect ~= "no_op" and effect ~= "signal_ignored_not_in_condition"
    and effect ~= "signal_ignored_matcher_failed"
  if not matched and A.payload ~= "" then
    -- ff_celery deviation: a signal the wait cannot use keeps no payload
    redis.call("DEL", K.signal_payload)
    redis.call("HINCRBY", K.waitpoint, "ffc_signal_bytes", -#A.payload)
  end

  if satisfied then
    if phase == "suspended" then
      resume_suspended(K, core, A.execution_id, now, A.resume_delay_ms,
        "resume delay " .. A.resume_delay_ms .. "ms after signal " .. A.signal_name)
    end
    local closed = condition_closed_fields(now, "satisfied")
    hset(K.condition, closed)
    local waitpoint_closed = waitpoint_closed_fields(now, "resumed", true)
    hset(K.waitpoint, waitpoint_closed)
    if redis.call("EXISTS", K.suspension_current) == 1 then
      local fields = {"satisfied_at", tostring(now), "closed_at", tostring(now), "close_reason", "resumed"}
      if composite then
        put(fields, "closer_signal_id", A.signal_id, "all_satisfier_signals", satisfiers_json)
      end
      hset(K.suspension_current, fields)
    end
    redis.call("ZREM", K.suspension_timeout, A.execution_id)
    if composite then
      drop_composite_state(K.suspension_current)
      close_extra_waitpoints(K.suspension_current,
        redis.call("HGET", K.suspension_current, "additional_waitpoints_json"), waitpoint_closed, closed)
    end
  end

  redis.call("HSET", K.signal, "observed_effect", effect)
  redis.call("HINCRBY", K.waitpoint, "signal_count", 1)
  if matched then
    redis.call("HINCRBY", K.waitpoint, "matched_signal_count", 1)
  end
  redis.call("HSET", K.waitpoint, "last_signal_at", tostring(now))
  if redis.call("EXISTS", K.suspension_current) == 1 and not (composite and satisfied) then
    redis.call("HSET", K.suspension_current, "last_signal_at", tostring(now))
  end
  redis.call("XADD", K.delivery_feed, "MAXLEN", "~", "1000", "*",
    "signal_id", A.signal_id,
    "execution_id", A.execution_id,
    "waitpoint_id", A.waitpoint_id,
    "source_identity", A.source_identity,
    "effect", effect,
    "delivered_at_ms", tostring(now))
  return ok(A.signal_id, effect)
end)

redis.register_function('ff_buffer_signal_for_pending_waitpoint', function(keys, args)
  local K = {core = keys[1], condition = keys[2], waitpoint_signals = keys[3], execution_signals = keys[4],
    signal = keys[5], signal_payload = keys[6], dedup = keys[7], waitpoint = keys[8], keystore = keys[9]}
  local A, bad = signal_args(args, false)
  if not A then return bad end

  local now = server_now_ms()
  if redis.call("EXISTS", K.core) == 0 then return fail("execution_not_found") end
  local waitpoint = read_hash(K.waitpoint)
  if not waitpoint or not waitpoint.created_at or waitpoint.execution_id ~= A.execution_id then
    return fail("waitpoint_not_found")  -- another execution's waitpoint: as unknown (see deliver)
  end
  local denied = waitpoint_hmac.authenticate(K.core, K.keystore, A.token, A.waitpoint_id, waitpoint, now)
  if denied then return denied end
  if waitpoint.state == "closed" or waitpoint.state == "expired" then return fail("waitpoint_closed") end
  local refused = admit_signal(K, A, waitpoint)
  if refused then return refused end
  record_signal(K, A, now, "buffered_for_pending_waitpoint")
  return ok(A.signal_id, "buffered_for_pending_waitpoint")
end)

redis.register_function('ff_claim_resumed_execution', function(keys, args)
  local K = {core = keys[1], claim_grant = keys[2], eligible = keys[3], lease_expiry = keys[4],
    worker_leases = keys[5], attempt = keys[6], lease_current = keys[7],
    lease_history = keys[8], active = keys[9], attempt_timeout = keys[10]}
  local ttl, bad = need_number(args[7], "lease_ttl_ms")
  if bad then return bad end
  local bad_timeout = bad_optional_number(args[8], "remaining_attempt_timeout_ms")
  if bad_timeout then return bad_timeout end
  local A = {execution_id = args[1], worker_id = args[2], worker_instance_id = args[3],
    lane = args[4], lease_id = args[6], lease_ttl_ms = ttl}
  local remaining_timeout_ms = tonumber(args[8] or "")

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "runnable" then return fail("execution_not_leaseable") end
  if core.attempt_state ~= "attempt_interrupted" then return fail("not_a_resumed_execution") end
  local grant = read_hash(K.claim_grant)
  if not grant or grant.worker_id ~= A.worker_id then return fail("invalid_claim_grant") end
  redis.call("DEL", K.claim_grant)
  if present(grant.grant_expires_at) and tonumber(grant.grant_expires_at) < now then
    return fail("claim_grant_expired")
  end

  local L = claim_resumed(K, A, core, now, K.attempt, "claim_resumed")
  if remaining_timeout_ms and remaining_timeout_ms > 0 then
    redis.call("ZADD", K.attempt_timeout, now + remaining_timeout_ms, A.execution_id)
  end
  return ok(L.lease_id, tostring(L.epoch), tostring(L.expires_at), core.current_attempt_id,
    core.current_attempt_index, "resumed")
end)
