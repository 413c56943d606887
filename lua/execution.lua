-- execution.lua: the execution record from creation to its end: create,
-- claim, complete, fail (engine retry policy), cancel, delay, wait for
-- children, reclaim, expire, and tags.

-- Validate policy_json's routing requirements. Returns the sorted required
-- capability CSV (nil when none), or nil plus the error reply.
local function required_capabilities_of(policy_json)
  if not present(policy_json) or policy_json == "{}" then
    return nil
  end
  local decoded, policy = pcall(cjson.decode, policy_json)
  if not decoded then
    return nil, fail("invalid_policy_json", "malformed")
  end
  if type(policy) ~= "table" or policy.routing_requirements == nil then
    return nil
  end
  if type(policy.routing_requirements) ~= "table" then
    return nil, fail("invalid_policy_json", "routing_requirements:not_object")
  end
  local caps = policy.routing_requirements.required_capabilities
  if caps == nil then
    return nil
  end
  if type(caps) ~= "table" then
    return nil, fail("invalid_capabilities", "required:not_array")
  end
  local tokens = {}
  for _, token in ipairs(caps) do
    if type(token) ~= "string" then
      return nil, fail("invalid_capabilities", "required:non_string_token")
    end
    if #token == 0 then
      return nil, fail("invalid_capabilities", "required:empty_token")
    end
    if string.find(token, ",", 1, true) then
      return nil, fail("invalid_capabilities", "required:comma_in_token")
    end
    for i = 1, #token do
      local byte = token:byte(i)
      if byte <= 0x20 or byte == 0x7F then
        return nil, fail("invalid_capabilities", "required:control_or_whitespace")
      end
    end
    tokens[#tokens + 1] = token
  end
  if #tokens > CAPS_MAX_TOKENS then
    return nil, fail("invalid_capabilities", "required:too_many_tokens")
  end
  if #tokens == 0 then
    return nil
  end
  table.sort(tokens)
  local csv = table.concat(tokens, ",")
  if #csv > CAPS_MAX_BYTES then
    return nil, fail("invalid_capabilities", "required:too_many_bytes")
  end
  return csv
end

local function is_idempotency_key(key)
  return key ~= "" and not string.find(key, "ff:noop:", 1, true)
end

redis.register_function('ff_create_execution', function(keys, args)
  local K = {core = keys[1], payload = keys[2], policy = keys[3], tags = keys[4],
    schedule = keys[5], idempotency = keys[6], execution_deadline = keys[7],
    all_executions = keys[8]}
  local priority, bad = need_number(args[5], "priority")
  if bad then return bad end
  local bad_arg = bad_optional_number(args[9], "delay_until")
    or bad_optional_number(args[12], "execution_deadline_at")
  if bad_arg then return bad_arg end
  local dedup_ttl_ms = 0
  if present(args[10]) then
    local bad_ttl
    dedup_ttl_ms, bad_ttl = need_integer(args[10], "dedup_ttl_ms")
    if bad_ttl then return bad_ttl end
  end
  local A = {
    execution_id = args[1], namespace = args[2], lane_id = args[3],
    execution_kind = args[4], creator_identity = args[6], policy_json = args[7],
    input_payload = args[8], delay_until = args[9], tags_json = args[11],
    execution_deadline_at = args[12], partition_id = args[13],
  }

  local now = server_now_ms()
  priority = clamp_priority(priority)

  if is_idempotency_key(K.idempotency) then
    local existing = redis.call("GET", K.idempotency)
    if existing then
      return reply("DUPLICATE", existing)
    end
  end
  if redis.call("EXISTS", K.core) == 1 then
    return reply("DUPLICATE", A.execution_id)
  end
  local required_csv, bad_policy = required_capabilities_of(A.policy_json)
  if bad_policy then return bad_policy end

  local delayed = present(A.delay_until) and tonumber(A.delay_until) > now
  local eligibility, blocking, detail, public = "eligible_now", "waiting_for_worker", "", "waiting"
  if delayed then
    eligibility, blocking, detail, public = "not_eligible_until_time", "waiting_for_delay",
      "delayed until " .. A.delay_until, "delayed"
  end

  redis.call("HSET", K.core,
    "execution_id", A.execution_id,
    "namespace", A.namespace,
    "lane_id", A.lane_id,
    "execution_kind", A.execution_kind,
    "partition_id", A.partition_id,
    "priority", priority,
    "creator_identity", A.creator_identity,
    "lifecycle_phase", "runnable",
    "ownership_state", "unowned",
    "eligibility_state", eligibility,
    "blocking_reason", blocking,
    "blocking_detail", detail,
    "terminal_outcome", "none",
    "attempt_state", "pending_first_attempt",
    "public_state", public,
    "total_attempt_count", "0",
    "current_attempt_index", "",
    "current_attempt_id", "",
    "current_lease_id", "",
    "current_lease_epoch", "0",
    "current_worker_id", "",
    "current_worker_instance_id", "",
    "current_lane", A.lane_id,
    "retry_count", "0",
    "replay_count", "0",
    "lease_reclaim_count", "0",
    "created_at", now,
    "started_at", "",
    "completed_at", "",
    "last_transition_at", now,
    "last_mutation_at", now,
    "lease_acquired_at", "",
    "lease_expires_at", "",
    "lease_last_renewed_at", "",
    "lease_renewal_deadline", "",
    "lease_expired_at", "",
    "lease_revoked_at", "",
    "lease_revoke_reason", "",
    "delay_until", delayed and A.delay_until or "",
    "current_suspension_id", "",
    "current_waitpoint_id", "",
    "pending_retry_reason", "",
    "pending_replay_reason", "",
    "pending_replay_requested_by", "",
    "pending_previous_attempt_index", "",
    "progress_pct", "",
    "progress_message", "",
    "progress_updated_at", "",
    "flow_id", "")

  if present(A.input_payload) then
    redis.call("SET", K.payload, A.input_payload)
  end
  if present(A.policy_json) then
    redis.call("SET", K.policy, A.policy_json)
  end
  if required_csv then
    redis.call("HSET", K.core, "required_capabilities", required_csv)
  end
  -- Tags that do not decode to an object are ignored, as FlowFabric does.
  if present(A.tags_json) and A.tags_json ~= "{}" then
    local decoded, tags = pcall(cjson.decode, A.tags_json)
    if decoded and type(tags) == "table" then
      local flat = {}
      for k, v in pairs(tags) do
        put(flat, k, tostring(v))
      end
      if #flat > 0 then
        hset(K.tags, flat)
      end
    end
  end

  if delayed then
    redis.call("ZADD", K.schedule, tonumber(A.delay_until), A.execution_id)
  else
    redis.call("ZADD", K.schedule, eligible_score(priority, now), A.execution_id)
  end
  redis.call("SADD", K.all_executions, A.execution_id)
  if present(A.execution_deadline_at) then
    redis.call("ZADD", K.execution_deadline, tonumber(A.execution_deadline_at), A.execution_id)
  end
  if dedup_ttl_ms > 0 and is_idempotency_key(K.idempotency) then
    redis.call("SET", K.idempotency, A.execution_id, "PX", dedup_ttl_ms)
  end
  return ok(A.execution_id, public)
end)

redis.register_function('ff_claim_execution', function(keys, args)
  local K = {core = keys[1], claim_grant = keys[2], eligible = keys[3], lease_expiry = keys[4],
    worker_leases = keys[5], attempts = keys[9], lease_current = keys[10],
    lease_history = keys[11], active = keys[12], attempt_timeout = keys[13],
    execution_deadline = keys[14]}
  local ttl, bad = need_number(args[7], "lease_ttl_ms")
  if bad then return bad end
  local renew_before, bad_renew = need_number(args[8], "renew_before_ms")
  if bad_renew then return bad_renew end
  local bad_arg = bad_policy_object(args[10], "attempt_policy_json")
    or bad_optional_number(args[11], "attempt_timeout_ms")
    or bad_optional_number(args[12], "execution_deadline_at")
  if bad_arg then return bad_arg end
  local A = {
    execution_id = args[1], worker_id = args[2], worker_instance_id = args[3], lane = args[4],
    lease_id = args[6], lease_ttl_ms = ttl, attempt_id = args[9],
    attempt_policy_json = args[10], attempt_timeout_ms = args[11],
    execution_deadline_at = args[12],
  }

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "runnable" then return fail("execution_not_leaseable") end
  if core.ownership_state ~= "unowned" then return fail("lease_conflict") end
  if core.eligibility_state ~= "eligible_now" then return fail("execution_not_leaseable") end
  if core.terminal_outcome ~= "none" then return fail("execution_not_leaseable") end
  if core.attempt_state == "running_attempt" then return fail("active_attempt_exists") end
  if core.attempt_state == "attempt_interrupted" then return fail("use_claim_resumed_execution") end

  local grant = read_hash(K.claim_grant)
  if not grant or grant.worker_id ~= A.worker_id then return fail("invalid_claim_grant") end
  if present(grant.grant_expires_at) and tonumber(grant.grant_expires_at) < now then
    return fail("claim_grant_expired")
  end
  redis.call("DEL", K.claim_grant)

  local L, index, attempt_type = claim_fresh(K, A, core, now, renew_before, nil)
  return ok(L.lease_id, tostring(L.epoch), tostring(L.expires_at), A.attempt_id,
    tostring(index), attempt_type)
end)

-- The indexes a lease holder's execution leaves when it ends (complete, fail):
-- its lease's, then the execution deadline.
local function unindex_holder(K, eid)
  unindex_lease(K, eid)
  redis.call("ZREM", K.execution_deadline, eid)
end

redis.register_function('ff_complete_execution', function(keys, args)
  local K = {core = keys[1], attempt = keys[2], lease_expiry = keys[3], worker_leases = keys[4],
    terminal = keys[5], lease_current = keys[6], lease_history = keys[7], active = keys[8],
    stream_meta = keys[9], result = keys[10], attempt_timeout = keys[11],
    execution_deadline = keys[12]}
  local A = {execution_id = args[1], lease_id = args[2] or "", lease_epoch = args[3] or "",
    attempt_id = args[4] or "", result_payload = args[5] or "", source = args[6] or ""}

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  local denied = authorize_holder(core, A, now, K.core, K.lease_history)
  if denied then return denied end

  redis.call("HSET", K.attempt, "attempt_state", "ended_success", "ended_at", tostring(now))
  close_stream_meta(K.stream_meta, now, "attempt_success")
  if A.result_payload ~= "" then
    redis.call("SET", K.result, A.result_payload)
  end
  enter_terminal(K.core, core, A.execution_id, now, {
    outcome = "success", attempt_state = "attempt_terminal", public_state = "completed",
    cleared = {LEASE_OWNER_FIELDS, LEASE_TIMING_FIELDS, LEASE_MARKER_FIELDS},
    unindex = function() unindex_holder(K, A.execution_id) end,
    terminal_key = K.terminal, history_key = K.lease_history, released = "completed", notify = true,
  })
  return ok("completed")
end)

-- Close the open suspension of an execution and its waitpoints (cancel path).
local function close_suspension(K, now, reason)
  local waitpoint_close = {"state", "closed", "closed_at", tostring(now), "close_reason", reason}
  local condition_close = {"closed", "1", "closed_at", tostring(now), "closed_reason", reason}
  if redis.call("EXISTS", K.suspension_current) == 1 then
    redis.call("HSET", K.suspension_current, "closed_at", tostring(now), "close_reason", reason)
  end
  if redis.call("EXISTS", K.waitpoint) == 1 then
    hset(K.waitpoint, waitpoint_close)
  end
  if redis.call("EXISTS", K.waitpoint_condition) == 1 then
    hset(K.waitpoint_condition, condition_close)
  end
  drop_composite_state(K.suspension_current)
  close_extra_waitpoints(K.suspension_current,
    redis.call("HGET", K.suspension_current, "additional_waitpoints_json"),
    waitpoint_close, condition_close)
end

redis.register_function('ff_cancel_execution', function(keys, args)
  local K = {core = keys[1], attempt = keys[2], stream_meta = keys[3], lease_current = keys[4],
    lease_history = keys[5], lease_expiry = keys[6], worker_leases = keys[7],
    suspension_current = keys[8], waitpoint = keys[9], waitpoint_condition = keys[10],
    suspension_timeout = keys[11], terminal = keys[12], attempt_timeout = keys[13],
    execution_deadline = keys[14], eligible = keys[15], delayed = keys[16],
    blocked_dependencies = keys[17], blocked_budget = keys[18], blocked_quota = keys[19],
    blocked_route = keys[20], blocked_operator = keys[21]}
  local A = {execution_id = args[1], reason = args[2], source = args[3] or "",
    lease_id = args[4] or "", lease_epoch = args[5] or ""}

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  local tag, lane = hash_tag(K.core), core.lane_id or "default"
  K.active = lane_index_key(tag, lane, "active")
  K.suspended = lane_index_key(tag, lane, "suspended")

  local phase = core.lifecycle_phase
  if phase == "terminal" then return not_active(core, "terminal") end
  if phase == "active" and A.source ~= "operator_override" then
    if core.ownership_state == "lease_revoked" then return fail("lease_revoked") end
    if present(A.lease_id) and (core.current_lease_id ~= A.lease_id
        or core.current_lease_epoch ~= A.lease_epoch) then
      return fail("stale_lease")
    end
  end

  if phase == "active" or phase == "suspended" then
    if present(core.current_attempt_index) then
      redis.call("HSET", K.attempt,
        "attempt_state", "ended_cancelled",
        "ended_at", tostring(now),
        "failure_reason", "cancelled: " .. A.reason)
    end
    close_stream_meta(K.stream_meta, now, "attempt_cancelled")
  end
  if phase == "active" then
    redis.call("DEL", K.lease_current)
    add_released(K.lease_history, core, nil, "cancelled", now)
  elseif phase == "suspended" then
    close_suspension(K, now, "cancelled")
  end

  local attempt_state = present(core.current_attempt_index) and "attempt_terminal"
    or (core.attempt_state or "none")
  enter_terminal(K.core, core, A.execution_id, now, {
    outcome = "cancelled", attempt_state = attempt_state, public_state = "cancelled",
    fields = {"cancellation_reason", A.reason, "cancelled_by", A.source ~= "" and A.source or A.execution_id},
    cleared = {LEASE_OWNER_FIELDS, LEASE_TIMING_FIELDS, WAIT_FIELDS},
    unindex = function()
      for _, index_key in ipairs({K.eligible, K.delayed, K.active, K.suspended,
          K.blocked_dependencies, K.blocked_budget, K.blocked_quota, K.blocked_route,
          K.blocked_operator, K.lease_expiry, K.suspension_timeout, K.attempt_timeout,
          K.execution_deadline}) do
        redis.call("ZREM", index_key, A.execution_id)
      end
      redis.call("SREM", K.worker_leases, A.execution_id)
    end,
    terminal_key = K.terminal, notify = A.source ~= "flow_cascade",
  })
  return ok("cancelled", phase)
end)

-- Shared body of ff_delay_execution and ff_move_to_waiting_children: release
-- the lease and park the still-open attempt as interrupted.
local function interrupt_attempt(K, A, core, now, state, extra_core_fields, suspension_id)
  local fields = put(state, unpack(extra_core_fields))
  put_cleared(fields, LEASE_OWNER_FIELDS)
  put_cleared(fields, LEASE_TIMING_FIELDS)
  hset(K.core, put(fields, "last_transition_at", tostring(now), "last_mutation_at", tostring(now)))
  redis.call("HSET", K.attempt,
    "attempt_state", "suspended",
    "suspended_at", tostring(now),
    "suspension_id", suspension_id)
  unindex_lease(K, A.execution_id)
  add_released(K.lease_history, core, core.current_attempt_id or "", suspension_id, now)
end

local function holder_keys(keys)
  return {core = keys[1], attempt = keys[2], lease_current = keys[3], lease_history = keys[4],
    lease_expiry = keys[5], worker_leases = keys[6], active = keys[7], parking = keys[8],
    attempt_timeout = keys[9]}
end

redis.register_function('ff_delay_execution', function(keys, args)
  local K = holder_keys(keys)
  local delay_until, bad = need_number(args[5], "delay_until")
  if bad then return bad end
  local A = {execution_id = args[1], lease_id = args[2] or "", lease_epoch = args[3] or "",
    attempt_id = args[4] or "", delay_until = args[5], source = args[6] or ""}

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  local denied = authorize_holder(core, A, now, K.core, K.lease_history)
  if denied then return denied end

  interrupt_attempt(K, A, core, now,
    state_fields("runnable", "unowned", "not_eligible_until_time", "waiting_for_delay",
      "delayed until " .. A.delay_until, "none", "attempt_interrupted", "delayed"),
    {"delay_until", A.delay_until}, "worker_delay")
  redis.call("ZADD", K.parking, delay_until, A.execution_id)
  return ok(A.delay_until)
end)

redis.register_function('ff_move_to_waiting_children', function(keys, args)
  local K = holder_keys(keys)
  local A = {execution_id = args[1], lease_id = args[2] or "", lease_epoch = args[3] or "",
    attempt_id = args[4] or "", source = args[5] or ""}

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  local denied = authorize_holder(core, A, now, K.core, K.lease_history)
  if denied then return denied end

  interrupt_attempt(K, A, core, now,
    state_fields("runnable", "unowned", "blocked_by_dependencies", "waiting_for_children",
      "waiting for child executions to complete", "none", "attempt_interrupted",
      "waiting_children"),
    {}, "waiting_children")
  redis.call("ZADD", K.parking, tonumber(core.created_at or "0"), A.execution_id)
  return ok()
end)

-- The decoded retry policy, or nil plus invalid_input for shapes that cannot
-- be evaluated (FlowFabric's library raises a script error for these).
local function decode_retry_policy(json)
  if not present(json) then
    return nil
  end
  local decoded, policy = pcall(cjson.decode, json)
  if not decoded or type(policy) ~= "table" then
    return nil
  end
  if tonumber(policy.max_retries or "0") == nil then
    return nil, fail("invalid_input", "retry_policy.max_retries must be a number")
  end
  local backoff_type = type(policy.backoff or {})
  if backoff_type == "number" or backoff_type == "boolean" or backoff_type == "userdata" then
    return nil, fail("invalid_input", "retry_policy.backoff must be an object")
  end
  return policy
end

-- Backoff before retry number `retry_count` (0-based), per the policy's backoff.
local function retry_backoff_ms(policy, retry_count)
  local backoff = policy.backoff or {}
  if backoff.type == "exponential" then
    local initial = tonumber(backoff.initial_delay_ms) or 1000
    local max_delay = tonumber(backoff.max_delay_ms) or 60000
    local multiplier = tonumber(backoff.multiplier) or 2
    return math.min(initial * (multiplier ^ retry_count), max_delay)
  elseif backoff.type == "fixed" then
    return tonumber(backoff.delay_ms) or 1000
  end
  return 1000
end

redis.register_function('ff_fail_execution', function(keys, args)
  local K = {core = keys[1], attempt = keys[2], lease_expiry = keys[3], worker_leases = keys[4],
    terminal = keys[5], delayed = keys[6], lease_current = keys[7], lease_history = keys[8],
    active = keys[9], stream_meta = keys[10], attempt_timeout = keys[11],
    execution_deadline = keys[12]}
  local A = {execution_id = args[1], lease_id = args[2] or "", lease_epoch = args[3] or "",
    attempt_id = args[4] or "", failure_reason = args[5] or "",
    failure_category = args[6] or "", source = args[8] or ""}
  local policy, bad = decode_retry_policy(args[7])
  if bad then return bad end

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  local denied = authorize_holder(core, A, now, K.core, K.lease_history)
  if denied then return denied end

  redis.call("HSET", K.attempt,
    "attempt_state", "ended_failure",
    "ended_at", tostring(now),
    "failure_reason", A.failure_reason,
    "failure_category", A.failure_category)
  close_stream_meta(K.stream_meta, now, "attempt_failure")

  local retry_count = tonumber(core.retry_count or "0")
  if policy and retry_count < tonumber(policy.max_retries or "0") then
    local delay_until = now + retry_backoff_ms(policy, retry_count)
    local attempt_index = core.current_attempt_index or "0"
    local fields = state_fields("runnable", "unowned", "not_eligible_until_time",
      "waiting_for_retry_backoff",
      "retry backoff until " .. tostring(delay_until) .. " (attempt " .. attempt_index
        .. " failed: " .. A.failure_reason .. ")",
      "none", "pending_retry_attempt", "delayed")
    put(fields,
      "pending_retry_reason", A.failure_reason,
      "pending_previous_attempt_index", attempt_index,
      "retry_count", tostring(retry_count + 1),
      "current_attempt_id", "")
    put_cleared(fields, LEASE_OWNER_FIELDS)
    put_cleared(fields, LEASE_TIMING_FIELDS)
    hset(K.core, put(fields,
      "delay_until", tostring(delay_until),
      "failure_reason", A.failure_reason,
      "last_transition_at", tostring(now),
      "last_mutation_at", tostring(now)))
    unindex_lease(K, A.execution_id)
    redis.call("ZADD", K.delayed, delay_until, A.execution_id)
    add_released(K.lease_history, core, nil, "failed_retry_scheduled", now)
    return ok("retry_scheduled", tostring(delay_until))
  end

  enter_terminal(K.core, core, A.execution_id, now, {
    outcome = "failed", attempt_state = "attempt_terminal", public_state = "failed",
    fields = {"failure_reason", A.failure_reason},
    cleared = {LEASE_OWNER_FIELDS, LEASE_TIMING_FIELDS},
    unindex = function() unindex_holder(K, A.execution_id) end,
    terminal_key = K.terminal, history_key = K.lease_history, released = "failed_terminal", notify = true,
  })
  return ok("terminal_failed")
end)

redis.register_function('ff_reclaim_execution', function(keys, args)
  local K = {core = keys[1], claim_grant = keys[2], old_attempt = keys[3],
    old_stream_meta = keys[4], attempts = keys[7], lease_current = keys[8],
    lease_history = keys[9], lease_expiry = keys[10], worker_leases = keys[11],
    active = keys[12], attempt_timeout = keys[13], execution_deadline = keys[14]}
  local ttl, bad = need_number(args[6], "lease_ttl_ms")
  if bad then return bad end
  local default_cap, bad_cap = need_number(args[9] or "100", "default_max_reclaim_count")
  if bad_cap then return bad_cap end
  local A = {execution_id = args[1], worker_id = args[2], worker_instance_id = args[3],
    lane = args[4], lease_id = args[5], lease_ttl_ms = ttl, attempt_id = args[7]}
  local eid = A.execution_id

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  local ownership = core.ownership_state
  if core.lifecycle_phase ~= "active"
      or (ownership ~= "lease_expired_reclaimable" and ownership ~= "lease_revoked") then
    return fail("execution_not_reclaimable")
  end

  local cap = default_cap
  local policy = stored_policy(K.core)
  if policy and policy.max_reclaim_count ~= nil then
    cap = tonumber(policy.max_reclaim_count)
    if cap == nil then
      return fail("invalid_policy_json", "max_reclaim_count:not_a_number")
    end
  end
  local tag = hash_tag(K.core)
  local reclaim_count = tonumber(core.lease_reclaim_count or "0")
  local old_worker = core.current_worker_instance_id or ""

  if reclaim_count >= cap then
    enter_terminal(K.core, core, eid, now, {
      outcome = "failed", attempt_state = "attempt_terminal", public_state = "failed",
      fields = {"failure_reason", "max_reclaims_exceeded"},
      cleared = {LEASE_OWNER_FIELDS},
      unindex = function()
        redis.call("DEL", K.lease_current)
        redis.call("ZREM", K.lease_expiry, eid)
        redis.call("SREM", K.worker_leases, eid)
        if old_worker ~= "" then
          redis.call("SREM", worker_leases_key(tag, old_worker), eid)
        end
        redis.call("ZREM", K.active, eid)
        redis.call("ZREM", K.attempt_timeout, eid)
        redis.call("ZREM", K.execution_deadline, eid)
      end,
      terminal_key = lane_index_key(tag, core.lane_id or core.current_lane or "default", "terminal"),
    })
    return fail("max_retries_exhausted", tostring(cap))
  end

  local grant = read_hash(K.claim_grant)
  if not grant or grant.worker_id ~= A.worker_id then return fail("invalid_claim_grant") end
  redis.call("DEL", K.claim_grant)

  local reclaim_reason = "lease_" .. (ownership or "expired")
  local old_index = core.current_attempt_index or "0"
  redis.call("HSET", K.old_attempt,
    "attempt_state", "interrupted_reclaimed",
    "ended_at", tostring(now),
    "failure_reason", reclaim_reason)
  close_stream_meta(K.old_stream_meta, now, "reclaimed")

  local index = tonumber(core.total_attempt_count or "0")
  local L = new_lease(A, tonumber(core.current_lease_epoch or "0") + 1, now)
  open_attempt(tag, eid, index, "reclaim", A.attempt_id, L, K.attempts,
    {"reclaim_reason", reclaim_reason, "previous_attempt_index", old_index}, nil)
  write_lease_record(K.lease_current, L, eid, A.attempt_id)

  local fields = put(leased_core_fields(L),
    "current_attempt_index", tostring(index),
    "total_attempt_count", tostring(index + 1),
    "current_attempt_id", A.attempt_id)
  put_cleared(fields, LEASE_MARKER_FIELDS)
  hset(K.core, put(fields,
    "lease_reclaim_count", tostring(reclaim_count + 1),
    "last_transition_at", tostring(now),
    "last_mutation_at", tostring(now)))

  if old_worker ~= "" and old_worker ~= A.worker_instance_id then
    redis.call("SREM", worker_leases_key(tag, old_worker), eid)
  end
  index_lease(K, eid, L)
  add_history(K.lease_history, "event", "reclaimed",
    "old_lease_epoch", core.current_lease_epoch or "",
    "new_lease_id", A.lease_id,
    "new_lease_epoch", tostring(L.epoch),
    "new_attempt_id", A.attempt_id,
    "new_attempt_index", tostring(index),
    "worker_id", A.worker_id,
    "ts", tostring(now))
  return ok(A.lease_id, tostring(L.epoch), tostring(L.expires_at), A.attempt_id,
    tostring(index), "reclaim")
end)

-- Lane index suffix holding a runnable execution, by eligibility_state.
local RUNNABLE_INDEX = {
  eligible_now = "eligible",
  not_eligible_until_time = "delayed",
  blocked_by_dependencies = "blocked:dependencies",
  blocked_by_budget = "blocked:budget",
  blocked_by_quota = "blocked:quota",
  blocked_by_route = "blocked:route",
  blocked_by_operator = "blocked:operator",
}

redis.register_function('ff_expire_execution', function(keys, args)
  local K = {core = keys[1], attempt = keys[2], stream_meta = keys[3], lease_current = keys[4],
    lease_history = keys[5], lease_expiry = keys[6], worker_leases = keys[7], active = keys[8],
    terminal = keys[9], attempt_timeout = keys[10], execution_deadline = keys[11],
    suspended = keys[12], suspension_timeout = keys[13], suspension_current = keys[14]}
  local eid = args[1]
  local reason = args[2] or "attempt_timeout"

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core or core.lifecycle_phase == "terminal" then
    redis.call("ZREM", K.attempt_timeout, eid)
    redis.call("ZREM", K.execution_deadline, eid)
    return ok(core and "already_terminal" or "not_found_cleaned")
  end

  local phase = core.lifecycle_phase
  local tag = hash_tag(K.core)
  if phase == "active" or phase == "suspended" then
    if present(core.current_attempt_index) then
      redis.call("HSET", K.attempt,
        "attempt_state", "ended_failure",
        "ended_at", tostring(now),
        "failure_reason", reason)
    end
  end
  if phase == "active" then
    close_stream_meta(K.stream_meta, now, "expired")
    redis.call("DEL", K.lease_current)
    redis.call("ZREM", K.lease_expiry, eid)
    redis.call("SREM", K.worker_leases, eid)
    if present(core.current_worker_instance_id) then
      redis.call("SREM", worker_leases_key(tag, core.current_worker_instance_id), eid)
    end
    redis.call("ZREM", K.active, eid)
    add_released(K.lease_history, core, nil, "expired:" .. reason, now)
  elseif phase == "suspended" then
    if redis.call("EXISTS", K.suspension_current) == 1 then
      redis.call("HSET", K.suspension_current,
        "closed_at", tostring(now), "close_reason", "expired:" .. reason)
    end
    close_stream_meta(K.stream_meta, now, "expired")
    redis.call("ZREM", K.suspended, eid)
    redis.call("ZREM", K.suspension_timeout, eid)
  elseif phase == "runnable" then
    local lane = core.lane_id or core.current_lane or "default"
    local suffix = RUNNABLE_INDEX[core.eligibility_state or ""]
    if suffix then
      redis.call("ZREM", lane_index_key(tag, lane, suffix), eid)
    else
      for _, any_suffix in pairs(RUNNABLE_INDEX) do
        redis.call("ZREM", lane_index_key(tag, lane, any_suffix), eid)
      end
    end
  end

  local attempt_state = present(core.current_attempt_index) and "attempt_terminal"
    or (core.attempt_state or "none")
  enter_terminal(K.core, core, eid, now, {
    outcome = "expired", attempt_state = attempt_state, public_state = "expired",
    fields = {"failure_reason", reason},
    cleared = {LEASE_OWNER_FIELDS, {"lease_expires_at"}, WAIT_FIELDS},
    unindex = function()
      redis.call("ZREM", K.attempt_timeout, eid)
      redis.call("ZREM", K.execution_deadline, eid)
    end,
    terminal_key = K.terminal, notify = true,
  })
  return ok("expired", phase)
end)

redis.register_function('ff_set_execution_tags', function(keys, args)
  local core_key, tags_key = keys[1], keys[2]
  local n = #args
  if n == 0 or n % 2 ~= 0 then
    return fail("invalid_input", "tags must be non-empty even-length key/value pairs")
  end
  if redis.call("EXISTS", core_key) == 0 then
    return fail("execution_not_found")
  end
  for i = 1, n, 2 do
    if not string.find(args[i], "^[a-z][a-z0-9_]*%.[^.]") then
      return fail("invalid_tag_key", args[i])
    end
  end
  redis.call("HSET", tags_key, unpack(args))
  redis.call("HSET", core_key, "last_mutation_at", tostring(server_now_ms()))
  return ok(tostring(n / 2))
end)
