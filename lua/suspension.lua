-- suspension.lua: parking an attempt until signals arrive:
-- ff_suspend_execution, ff_create_pending_waitpoint, ff_resume_execution,
-- ff_expire_suspension, ff_close_waitpoint. Tokens come from
-- waitpoint_token.lua, conditions from resume_condition.lua.

local NO_TIMEOUT_SCORE = 9999999999999

---------------------------------------------------------------------------
-- Transitions shared by resume, signal delivery and suspension timeouts
---------------------------------------------------------------------------

-- Move a suspended execution back to runnable on the same attempt: eligible
-- now, or after delay_ms (delayed set) with `delay_detail` as blocking detail.
-- K needs core, suspended, eligible, delayed. Returns the public state.
local function resume_suspended(K, core, eid, now, delay_ms, delay_detail)
  local eligibility, blocking, detail, public = "eligible_now", "waiting_for_worker", "", "waiting"
  if delay_ms > 0 then
    eligibility, blocking, detail, public = "not_eligible_until_time", "waiting_for_resume_delay", delay_detail,
      "delayed"
  end
  local fields = state_fields("runnable", "unowned", eligibility, blocking, detail, "none",
    "attempt_interrupted", public)
  put_cleared(fields, WAIT_FIELDS)
  hset(K.core, put(fields, "last_transition_at", tostring(now), "last_mutation_at", tostring(now)))
  redis.call("ZREM", K.suspended, eid)
  if delay_ms > 0 then
    redis.call("ZADD", K.delayed, now + delay_ms, eid)
  else
    redis.call("ZADD", K.eligible,
      eligible_score(tonumber(core.priority or "0"), tonumber(core.created_at or "0")), eid)
  end
  return public
end

-- HSET pairs closing a waitpoint hash / its condition hash.
local function waitpoint_closed_fields(now, reason, satisfied)
  local fields = {"state", "closed"}
  if satisfied then
    put(fields, "satisfied_at", tostring(now))
  end
  return put(fields, "closed_at", tostring(now), "close_reason", reason)
end

local function condition_closed_fields(now, reason)
  return {"closed", "1", "closed_at", tostring(now), "closed_reason", reason}
end

---------------------------------------------------------------------------
-- Functions
---------------------------------------------------------------------------

local SUSPEND_BLOCKING = {
  waiting_for_signal = "waiting_for_signal",
  waiting_for_approval = "waiting_for_approval",
  waiting_for_callback = "waiting_for_callback",
  waiting_for_tool_result = "waiting_for_tool_result",
  waiting_for_operator_review = "paused_by_operator",
  paused_by_policy = "paused_by_policy",
  paused_by_budget = "waiting_for_budget",
  step_boundary = "waiting_for_signal",
  manual_pause = "paused_by_operator",
}

-- {1, status, suspension_id, waitpoint_id, waitpoint_key, token, "<E>", (id, key, token)*}
local function suspension_reply(status, suspension_id, waitpoint, extras)
  local out = {1, status, suspension_id, waitpoint.id, waitpoint.key, waitpoint.token, tostring(#extras)}
  for _, extra in ipairs(extras) do
    put(out, extra.id, extra.key, extra.token)
  end
  return out
end

-- A stored suspend outcome ("<status>\t<suspension_id>\t<wp id>\t<wp key>\t<token>\t<E>[\t...]"),
-- split on single tabs keeping empty fields, as the reply; nil when malformed.
local function replay_suspend_outcome(stored)
  local parts = {}
  local from = 1
  while true do
    local tab = string.find(stored, "\t", from, true)
    parts[#parts + 1] = string.sub(stored, from, tab and tab - 1 or #stored)
    if not tab then
      break
    end
    from = tab + 1
  end
  if #parts < 5 then
    return nil
  end
  local extras = {}
  for i = 1, tonumber(parts[6] or "0") or 0 do
    local at = 6 + (i - 1) * 3
    extras[i] = {id = parts[at + 1] or "", key = parts[at + 2] or "", token = parts[at + 3] or ""}
  end
  local status = parts[1] == "ALREADY_SATISFIED" and "ALREADY_SATISFIED" or "OK"
  return suspension_reply(status, parts[2], {id = parts[3], key = parts[4], token = parts[5]}, extras)
end

local function suspend_outcome_text(status, suspension_id, waitpoint, extras)
  local pieces = {status, suspension_id, waitpoint.id, waitpoint.key, waitpoint.token, tostring(#extras)}
  for _, extra in ipairs(extras) do
    put(pieces, extra.id, extra.key, extra.token)
  end
  return table.concat(pieces, "\t")
end

-- A fresh, active waitpoint hash.
local function write_active_waitpoint(key, waitpoint, A, now)
  redis.call("HSET", key,
    "waitpoint_id", waitpoint.id,
    "execution_id", A.execution_id,
    "attempt_index", A.attempt_index,
    "suspension_id", A.suspension_id,
    "waitpoint_key", waitpoint.key,
    "waitpoint_token", waitpoint.token,
    "state", "active",
    "created_at", tostring(now),
    "activated_at", tostring(now),
    "expires_at", present(A.timeout_at) and A.timeout_at or "",
    "signal_count", "0",
    "matched_signal_count", "0",
    "last_signal_at", "")
end

-- Keys and arguments of ff_suspend_execution as a request {K, A, primary,
-- extras}; nil and the error reply when they are malformed.
local function suspend_request(keys, args)
  local K = {core = keys[1], attempt = keys[2], lease_current = keys[3], lease_history = keys[4],
    lease_expiry = keys[5], worker_leases = keys[6], suspension_current = keys[7], waitpoint = keys[8],
    waitpoint_signals = keys[9], suspension_timeout = keys[10], pending_waitpoint_expiry = keys[11],
    active = keys[12], suspended = keys[13], waitpoints = keys[14], condition = keys[15],
    attempt_timeout = keys[16], keystore = keys[17], dedup = keys[18]}
  local bad = bad_optional_number(args[11], "timeout_at")
    or bad_optional_number(args[17], "lease_history_maxlen")
    or bad_optional_number(args[19], "dedup_ttl_ms")
  if bad then return nil, bad end
  local extra_count = 0
  if present(args[20]) then
    local bad_count
    extra_count, bad_count = need_integer(args[20], "num_extra_waitpoints")
    if bad_count then return nil, bad_count end
  end
  local A = {execution_id = args[1], attempt_index = args[2], attempt_id = args[3] or "",
    lease_id = args[4] or "", lease_epoch = args[5] or "", suspension_id = args[6],
    reason_code = args[9], requested_by = args[10], timeout_at = args[11] or "",
    resume_condition_json = args[12], resume_policy_json = args[13],
    continuation_pointer = args[14] or "", use_pending = args[15] == "1",
    timeout_behavior = args[16] or "fail", idempotency_key = args[18] or "",
    dedup_ttl_ms = tonumber(args[19] or "0") or 0}

  local extras = {}
  for i = 1, extra_count do
    local id, key = args[20 + 2 * i - 1], args[20 + 2 * i]
    if not present(id) or not present(key) then
      return nil, fail("additional_waitpoint_binding_malformed")
    end
    local base = 18 + (i - 1) * 3
    extras[i] = {id = id, key = key, token = "", hash = keys[base + 1], condition = keys[base + 3]}
  end
  return {K = K, A = A, primary = {id = args[7], key = args[8], token = ""}, extras = extras}
end

-- An open suspension blocks a new one (the error reply); a closed one is
-- archived to make room.
local function make_room_for_suspension(K)
  if redis.call("EXISTS", K.suspension_current) == 0 then
    return nil
  end
  if not present(redis.call("HGET", K.suspension_current, "closed_at")) then
    return fail("already_suspended")
  end
  local old_waitpoint = redis.call("HGET", K.suspension_current, "waitpoint_id")
  if present(old_waitpoint) then
    redis.call("SADD", K.waitpoints, old_waitpoint)
  end
  redis.call("DEL", K.suspension_current)
  return nil
end

-- A suspend's outcome under its idempotency key, for a replay to answer.
local function remember_suspend(K, A, status, primary, extras)
  redis.call("HSET", K.dedup, "outcome", suspend_outcome_text(status, A.suspension_id, primary, extras))
  if A.dedup_ttl_ms > 0 then
    redis.call("PEXPIRE", K.dedup, A.dedup_ttl_ms)
  end
end

-- Activate the pending waitpoint the attempt created earlier and count the
-- signals it buffered. Answers the waitpoint and whether those signals
-- already meet the condition (then nothing is suspended); nil and the error
-- reply when the waitpoint cannot be used.
local function activate_pending_waitpoint(K, A, condition, now)
  local pending = read_hash(K.waitpoint)
  if not pending then return nil, fail("waitpoint_not_found") end
  if pending.state ~= "pending" then return nil, fail("waitpoint_not_pending") end
  if pending.execution_id ~= A.execution_id or tostring(pending.attempt_index) ~= A.attempt_index then
    return nil, fail("invalid_waitpoint_for_execution")
  end
  if present(pending.expires_at) and tonumber(pending.expires_at) <= now then
    return nil, fail("pending_waitpoint_expired")
  end
  if not present(pending.waitpoint_token) then return nil, fail("waitpoint_not_token_bound") end
  local primary = {id = pending.waitpoint_id, key = pending.waitpoint_key, token = pending.waitpoint_token}

  redis.call("HSET", K.waitpoint,
    "suspension_id", A.suspension_id,
    "state", "active",
    "activated_at", tostring(now),
    "expires_at", present(A.timeout_at) and A.timeout_at or "")
  redis.call("ZREM", K.pending_waitpoint_expiry, primary.id)

  local buffered = redis.call("XRANGE", K.waitpoint_signals, "-", "+")
  for _, entry in ipairs(buffered) do
    local fields = {}
    for i = 1, #entry[2], 2 do
      fields[entry[2][i]] = entry[2][i + 1]
    end
    resume_condition.match(condition, fields.signal_name, fields.signal_id)
  end
  local satisfied = #buffered > 0 and not condition.composite and resume_condition.met(condition.match_mode,
    condition.satisfied_count, condition.minimum_signal_count, #condition.matchers)
  if satisfied then
    hset(K.waitpoint, waitpoint_closed_fields(now, "resumed", true))
  end
  resume_condition.write(K.condition, condition, now)
  return primary, nil, satisfied
end

-- Mint the tokens of fresh waitpoints (the primary and the extras) and write
-- them with their conditions; the error reply when a token cannot be minted.
local function open_waitpoints(K, A, primary, extras, condition, now)
  local token, code = waitpoint_hmac.mint(K.keystore, primary.id, primary.key, now)
  if not token then return fail(code) end
  primary.token = token
  write_active_waitpoint(K.waitpoint, primary, A, now)
  resume_condition.write(K.condition, condition, now)
  for _, extra in ipairs(extras) do
    local extra_token, extra_code = waitpoint_hmac.mint(K.keystore, extra.id, extra.key, now)
    if not extra_token then return fail(extra_code) end
    extra.token = extra_token
    write_active_waitpoint(extra.hash, extra, A, now)
    resume_condition.write(extra.condition, resume_condition.parse(A.resume_condition_json), now)
    redis.call("SADD", K.waitpoints, extra.id)
  end
  return nil
end

-- The execution gives up its lease: suspended, its attempt interrupted.
local function park_suspended(K, A, core, primary, now)
  local fields = state_fields("suspended", "unowned", "not_applicable",
    SUSPEND_BLOCKING[A.reason_code] or "waiting_for_signal",
    "suspended: waitpoint " .. primary.id .. " awaiting " .. A.reason_code,
    "none", "attempt_interrupted", "suspended")
  put_cleared(fields, LEASE_OWNER_FIELDS)
  put_cleared(fields, LEASE_TIMING_FIELDS)
  hset(K.core, put(fields,
    "current_suspension_id", A.suspension_id,
    "current_waitpoint_id", primary.id,
    "last_transition_at", tostring(now),
    "last_mutation_at", tostring(now)))
  redis.call("HSET", K.attempt,
    "attempt_state", "suspended",
    "suspended_at", tostring(now),
    "suspension_id", A.suspension_id)
  unindex_lease(K, A.execution_id)
  add_released(K.lease_history, core, core.current_attempt_id or "", "suspend", now)
end

-- The suspension record, a composite condition's member map, and the
-- suspended / timeout indexes.
local function write_suspension(K, A, primary, extras, condition, now)
  local extra_pairs = {}
  for i, extra in ipairs(extras) do
    extra_pairs[i] = {waitpoint_id = extra.id, waitpoint_key = extra.key}
  end
  redis.call("HSET", K.suspension_current,
    "suspension_id", A.suspension_id,
    "execution_id", A.execution_id,
    "attempt_index", A.attempt_index,
    "waitpoint_id", primary.id,
    "waitpoint_key", primary.key,
    "additional_waitpoints_json", #extras > 0 and cjson.encode(extra_pairs) or "[]",
    "reason_code", A.reason_code,
    "requested_by", A.requested_by,
    "created_at", tostring(now),
    "timeout_at", A.timeout_at,
    "timeout_behavior", A.timeout_behavior,
    "resume_condition_json", A.resume_condition_json,
    "resume_policy_json", A.resume_policy_json,
    "continuation_metadata_pointer", A.continuation_pointer,
    "buffered_signal_summary_json", '{"total_count":0,"matched_count":0,"signal_names":[]}',
    "last_signal_at", "",
    "satisfied_at", "",
    "closed_at", "",
    "close_reason", "")
  if condition.composite then
    local waitpoint_keys = {primary.key}
    for _, extra in ipairs(extras) do
      waitpoint_keys[#waitpoint_keys + 1] = extra.key
    end
    resume_condition.seed_member_map(K.suspension_current .. ":member_map",
      cjson.decode(A.resume_condition_json).tree, waitpoint_keys)
  end

  redis.call("ZADD", K.suspended, present(A.timeout_at) and tonumber(A.timeout_at) or NO_TIMEOUT_SCORE,
    A.execution_id)
  if present(A.timeout_at) then
    redis.call("ZADD", K.suspension_timeout, tonumber(A.timeout_at), A.execution_id)
  end
end

redis.register_function('ff_suspend_execution', function(keys, args)
  local request, malformed = suspend_request(keys, args)
  if not request then return malformed end
  local K, A, primary, extras = request.K, request.A, request.primary, request.extras

  local now = server_now_ms()
  local deduping = A.idempotency_key ~= "" and present(K.dedup)
  if deduping then
    local stored = redis.call("HGET", K.dedup, "outcome")
    local replay = stored and replay_suspend_outcome(stored)
    if replay then return replay end
  end

  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  local denied = authorize_holder(core, A, now, K.core, K.lease_history)
  if denied then return denied end
  if tostring(core.current_attempt_index) ~= A.attempt_index then
    return fail("invalid_lease_for_suspend")
  end
  local bad_condition = resume_condition.problem(A.resume_condition_json)
  if bad_condition then return bad_condition end
  local blocked = make_room_for_suspension(K)
  if blocked then return blocked end

  local condition = resume_condition.parse(A.resume_condition_json)
  if A.use_pending then
    local unusable, satisfied
    primary, unusable, satisfied = activate_pending_waitpoint(K, A, condition, now)
    if unusable then return unusable end
    if satisfied then  -- buffered signals met the condition: the attempt keeps its lease and runs on
      if deduping then
        remember_suspend(K, A, "ALREADY_SATISFIED", primary, {})
      end
      return suspension_reply("ALREADY_SATISFIED", A.suspension_id, primary, {})
    end
    if #extras > 0 then
      return fail("use_pending_with_extras_unsupported")
    end
  else
    local unminted = open_waitpoints(K, A, primary, extras, condition, now)
    if unminted then return unminted end
  end
  redis.call("SADD", K.waitpoints, primary.id)

  park_suspended(K, A, core, primary, now)
  write_suspension(K, A, primary, extras, condition, now)
  if deduping then
    remember_suspend(K, A, "OK", primary, extras)
  end
  return suspension_reply("OK", A.suspension_id, primary, extras)
end)

redis.register_function('ff_create_pending_waitpoint', function(keys, args)
  local K = {core = keys[1], waitpoint = keys[2], pending_waitpoint_expiry = keys[3], keystore = keys[4]}
  local expires_at, bad = need_number(args[5], "expires_at")
  if bad then return bad end
  local A = {execution_id = args[1], attempt_index = args[2], waitpoint_id = args[3],
    waitpoint_key = args[4], expires_at = args[5]}

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "active" then return not_active(core) end
  if core.ownership_state ~= "leased" then return fail("no_active_lease") end
  if tostring(core.current_attempt_index) ~= A.attempt_index then return fail("stale_lease") end
  local state = redis.call("HGET", K.waitpoint, "state")
  if state == "pending" or state == "active" then return fail("waitpoint_already_exists") end

  local token, code = waitpoint_hmac.mint(K.keystore, A.waitpoint_id, A.waitpoint_key, now)
  if not token then return fail(code) end
  redis.call("HSET", K.waitpoint,
    "waitpoint_id", A.waitpoint_id,
    "execution_id", A.execution_id,
    "attempt_index", A.attempt_index,
    "suspension_id", "",
    "waitpoint_key", A.waitpoint_key,
    "waitpoint_token", token,
    "state", "pending",
    "created_at", tostring(now),
    "activated_at", "",
    "satisfied_at", "",
    "closed_at", "",
    "expires_at", A.expires_at,
    "close_reason", "",
    "signal_count", "0",
    "matched_signal_count", "0",
    "last_signal_at", "")
  redis.call("ZADD", K.pending_waitpoint_expiry, expires_at, A.waitpoint_id)
  return ok(A.waitpoint_id, A.waitpoint_key, token)
end)

-- The open suspension record, or nil plus execution_not_suspended.
local function open_suspension(key)
  local suspension = read_hash(key)
  if not suspension or not present(suspension.suspension_id) or present(suspension.closed_at) then
    return nil, fail("execution_not_suspended")
  end
  return suspension
end

redis.register_function('ff_resume_execution', function(keys, args)
  local K = {core = keys[1], suspension_current = keys[2], waitpoint = keys[3],
    suspension_timeout = keys[5], eligible = keys[6], delayed = keys[7], suspended = keys[8]}
  local delay_ms, bad = need_number(args[3] or "0", "resume_delay_ms")
  if bad then return bad end
  local eid = args[1]

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "suspended" then return fail("execution_not_suspended") end
  local suspension, not_open = open_suspension(K.suspension_current)
  if not suspension then return not_open end

  local public = resume_suspended(K, core, eid, now, delay_ms, "resume delay " .. tostring(delay_ms) .. "ms")
  local closed = waitpoint_closed_fields(now, "resumed", true)
  hset(K.waitpoint, closed)
  redis.call("HSET", K.suspension_current,
    "satisfied_at", tostring(now), "closed_at", tostring(now), "close_reason", "resumed")
  redis.call("ZREM", K.suspension_timeout, eid)
  drop_composite_state(K.suspension_current)
  close_extra_waitpoints(K.suspension_current, suspension.additional_waitpoints_json, closed,
    condition_closed_fields(now, "resumed"))
  return ok(public)
end)

local TIMEOUT_OUTCOMES = {
  cancel = {outcome = "cancelled", attempt_state = "ended_cancelled", close_reason = "timed_out_cancel"},
  expire = {outcome = "expired", attempt_state = "ended_failure", close_reason = "timed_out_expire"},
}
local TIMEOUT_FAILS = {outcome = "failed", attempt_state = "ended_failure", close_reason = "timed_out_fail"}

redis.register_function('ff_expire_suspension', function(keys, args)
  local K = {core = keys[1], suspension_current = keys[2], waitpoint = keys[3], condition = keys[4],
    attempt = keys[5], stream_meta = keys[6], suspension_timeout = keys[7], suspended = keys[8],
    terminal = keys[9], eligible = keys[10], delayed = keys[11]}
  local eid = args[1]

  local now = server_now_ms()
  local core = read_hash(K.core)
  local cleaned
  if not core then
    cleaned = "not_found_cleaned"
  elseif core.lifecycle_phase ~= "suspended" then
    cleaned = "not_suspended_cleaned"
  end
  local suspension = not cleaned and open_suspension(K.suspension_current)
  if not cleaned and not suspension then
    cleaned = "no_active_suspension_cleaned"
  end
  if cleaned then
    redis.call("ZREM", K.suspension_timeout, eid)
    return ok(cleaned)
  end

  -- A suspension without a timeout (empty or 0) is never due.
  local timeout_at = tonumber(suspension.timeout_at or "0") or 0
  if timeout_at == 0 or timeout_at > now then
    return ok("not_yet_due")
  end

  local behavior = suspension.timeout_behavior or "fail"
  if behavior == "escalate" then
    local fields = state_fields("suspended", "unowned", "not_applicable", "paused_by_operator",
      "suspension escalated: timeout at " .. tostring(timeout_at), "none",
      core.attempt_state or "attempt_interrupted", "suspended")
    hset(K.core, put(fields, "last_mutation_at", tostring(now)))
    redis.call("HSET", K.suspension_current,
      "reason_code", "waiting_for_operator_review", "timeout_at", "", "timeout_behavior", "")
    redis.call("ZREM", K.suspension_timeout, eid)
    return ok("escalate", "suspended")
  end

  local result
  local close_reason
  if behavior == "auto_resume" or behavior == "auto_resume_with_timeout_signal" then
    close_reason = "timed_out_auto_resume"
    resume_suspended(K, core, eid, now, 0)
    result = ok("auto_resume", "waiting")
  else
    local ending = TIMEOUT_OUTCOMES[behavior] or TIMEOUT_FAILS
    close_reason = ending.close_reason
    local failure_reason = "suspension_timeout:" .. behavior
    enter_terminal(K.core, core, eid, now, {
      outcome = ending.outcome, attempt_state = "attempt_terminal", public_state = ending.outcome,
      fields = {"failure_reason", failure_reason},
      cleared = {WAIT_FIELDS},
      -- the attempt ends here, after exec_core's write, as it always has
      unindex = function()
        if present(core.current_attempt_index) then
          redis.call("HSET", K.attempt,
            "attempt_state", ending.attempt_state,
            "ended_at", tostring(now),
            "failure_reason", failure_reason,
            "suspended_at", "",
            "suspension_id", "")
        end
        close_stream_meta(K.stream_meta, now, "suspension_timeout")
        redis.call("ZREM", K.suspended, eid)
      end,
      terminal_key = K.terminal, notify = true,
    })
    result = ok(behavior, ending.outcome)
  end

  local waitpoint_closed = waitpoint_closed_fields(now, close_reason, false)
  local condition_closed = condition_closed_fields(now, close_reason)
  hset(K.waitpoint, waitpoint_closed)
  hset(K.condition, condition_closed)
  redis.call("HSET", K.suspension_current, "closed_at", tostring(now), "close_reason", close_reason)
  redis.call("ZREM", K.suspension_timeout, eid)
  drop_composite_state(K.suspension_current)
  close_extra_waitpoints(K.suspension_current, suspension.additional_waitpoints_json, waitpoint_closed,
    condition_closed)
  return result
end)

redis.register_function('ff_close_waitpoint', function(keys, args)
  local waitpoint_key, pending_expiry_key = keys[2], keys[3]
  local waitpoint_id, reason = args[1], args[2] or "proactive_close"
  local now = server_now_ms()
  local state = redis.call("HGET", waitpoint_key, "state")
  if redis.call("EXISTS", waitpoint_key) == 0 then return fail("waitpoint_not_found") end
  if state == "closed" or state == "expired" then return ok("already_closed") end
  if state ~= "pending" and state ~= "active" then return fail("waitpoint_not_open") end
  hset(waitpoint_key, waitpoint_closed_fields(now, reason, false))
  redis.call("ZREM", pending_expiry_key, waitpoint_id)
  return ok()
end)
