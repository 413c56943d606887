-- scheduling.lua: getting work to workers: claim and reclaim grants, the
-- operator grant-and-claim, priority changes, delayed promotion, progress
-- updates and the worker registry.

-- Fields of a grant request shared by the claim and reclaim grant functions.
local function grant_request(args)
  return {
    execution_id = args[1],
    worker_id = args[2],
    worker_instance_id = args[3],
    lane_id = args[4],
    capability_hash = args[5] or "",
    route_snapshot_json = args[7] or "",
    admission_summary = args[8] or "",
    worker_capabilities_csv = args[9] or "",
  }
end

-- Issue the grant after its state checks passed; answers with its expiry.
local function issue_grant(grant_key, core_key, core, A, ttl, now)
  local mismatch = check_capabilities(core_key, core, A.worker_capabilities_csv, now)
  if mismatch then
    return nil, mismatch
  end
  local expires_at = now + ttl
  write_grant(grant_key, A, A.lane_id, A.route_snapshot_json, A.admission_summary, now, expires_at)
  redis.call("PEXPIREAT", grant_key, expires_at)
  return expires_at
end

redis.register_function('ff_issue_claim_grant', function(keys, args)
  local core_key, grant_key, eligible_key = keys[1], keys[2], keys[3]
  local A = grant_request(args)
  local ttl, bad = need_integer(args[6], "grant_ttl_ms")
  if bad then return bad end

  local now = server_now_ms()
  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "runnable" or core.eligibility_state ~= "eligible_now" then
    return fail("execution_not_eligible")
  end
  if redis.call("EXISTS", grant_key) == 1 then return fail("grant_already_exists") end
  if not redis.call("ZSCORE", eligible_key, A.execution_id) then
    return fail("execution_not_in_eligible_set")
  end
  local _, denied = issue_grant(grant_key, core_key, core, A, ttl, now)
  if denied then return denied end
  return ok(A.execution_id)
end)

redis.register_function('ff_issue_reclaim_grant', function(keys, args)
  local core_key, grant_key = keys[1], keys[2]
  local A = grant_request(args)
  local ttl, bad = need_integer(args[6], "grant_ttl_ms")
  if bad then return bad end

  local now = server_now_ms()
  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "active" or (core.ownership_state ~= "lease_expired_reclaimable"
      and core.ownership_state ~= "lease_revoked") then
    return fail("execution_not_reclaimable")
  end
  if redis.call("EXISTS", grant_key) == 1 then return fail("grant_already_exists") end
  local expires_at, denied = issue_grant(grant_key, core_key, core, A, ttl, now)
  if denied then return denied end
  return ok(A.execution_id, tostring(expires_at))
end)

redis.register_function('ff_issue_grant_and_claim', function(keys, args)
  local K = {core = keys[1], claim_grant = keys[2], eligible = keys[3], lease_expiry = keys[4],
    worker_leases = keys[5], attempts = keys[6], lease_current = keys[7],
    lease_history = keys[8], active = keys[9], attempt_timeout = keys[10],
    execution_deadline = keys[11]}
  local ttl, bad = need_integer(args[7], "lease_ttl_ms")
  if bad then return bad end
  local bad_arg = bad_policy_object(args[9], "attempt_policy_json")
    or bad_optional_number(args[10], "attempt_timeout_ms")
    or bad_optional_number(args[11], "execution_deadline_at")
  if bad_arg then return bad_arg end
  local A = {execution_id = args[1], worker_id = args[2], worker_instance_id = args[3],
    lane = args[4], capability_hash = args[5] or "", lease_id = args[6], lease_ttl_ms = ttl,
    attempt_id = args[8], attempt_policy_json = args[9] or "",
    attempt_timeout_ms = args[10] or "", execution_deadline_at = args[11] or ""}

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "runnable" then return fail("execution_not_eligible") end
  if core.ownership_state ~= "unowned" then return fail("lease_conflict") end
  if core.terminal_outcome ~= "none" then return fail("execution_not_eligible") end
  if core.attempt_state == "running_attempt" then return fail("active_attempt_exists") end
  if redis.call("EXISTS", K.claim_grant) == 1 then return fail("grant_already_exists") end

  write_grant(K.claim_grant, A, A.lane, "", "", now, now + ttl)
  redis.call("PEXPIRE", K.claim_grant, ttl)

  if core.attempt_state == "attempt_interrupted" then
    redis.call("DEL", K.claim_grant)
    local attempt = attempt_key(hash_tag(K.core), A.execution_id, core.current_attempt_index)
    local L = claim_resumed(K, A, core, now, attempt, "issue_grant_and_claim_resumed")
    return ok(L.lease_id, tostring(L.epoch), tostring(core.current_attempt_index))
  end
  if not redis.call("ZSCORE", K.eligible, A.execution_id) then
    redis.call("DEL", K.claim_grant)
    return fail("execution_not_in_eligible_set")
  end
  if core.eligibility_state ~= "eligible_now" then
    redis.call("DEL", K.claim_grant)
    return fail("execution_not_eligible")
  end
  redis.call("DEL", K.claim_grant)
  local L, index = claim_fresh(K, A, core, now, nil, "issue_grant_and_claim")
  return ok(L.lease_id, tostring(L.epoch), tostring(index))
end)

redis.register_function('ff_change_priority', function(keys, args)
  local core_key, eligible_key = keys[1], keys[2]
  local priority, bad = need_number(args[2], "new_priority")
  if bad then return bad end
  local eid = args[1]

  local now = server_now_ms()
  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "runnable" or core.eligibility_state ~= "eligible_now" then
    return fail("execution_not_eligible")
  end
  local old_priority = tonumber(core.priority or "0")
  priority = clamp_priority(priority)
  redis.call("HSET", core_key, "priority", tostring(priority), "last_mutation_at", tostring(now))
  redis.call("ZADD", eligible_key, eligible_score(priority, tonumber(core.created_at or "0")), eid)
  return ok(tostring(old_priority), tostring(priority))
end)

redis.register_function('ff_promote_delayed', function(keys, args)
  local core_key, delayed_key, eligible_key = keys[1], keys[2], keys[3]
  local now, bad = need_number(args[2], "now_ms")
  if bad then return bad end
  local eid = args[1]

  local core = read_hash(core_key)
  local cleaned
  if not core then
    cleaned = "not_found_cleaned"
  elseif core.lifecycle_phase ~= "runnable" then
    cleaned = "not_runnable_cleaned"
  elseif core.eligibility_state ~= "not_eligible_until_time" then
    cleaned = "not_delayed_cleaned"
  end
  if cleaned then
    redis.call("ZREM", delayed_key, eid)
    return ok(cleaned)
  end
  -- A resume delay parks the execution without writing delay_until (FlowFabric's
  -- library then fails here); its delayed-set score is the due time.
  local due = tonumber(core.delay_until or "0") or tonumber(redis.call("ZSCORE", delayed_key, eid) or "0") or 0
  if due > now then
    return ok("not_yet_due")
  end

  redis.call("HSET", core_key,
    "lifecycle_phase", "runnable",
    "ownership_state", "unowned",
    "eligibility_state", "eligible_now",
    "blocking_reason", "waiting_for_worker",
    "blocking_detail", "",
    "terminal_outcome", "none",
    "public_state", "waiting",
    "delay_until", "",
    "last_transition_at", tostring(now),
    "last_mutation_at", tostring(now))
  redis.call("ZREM", delayed_key, eid)
  redis.call("ZADD", eligible_key,
    eligible_score(tonumber(core.priority or "0"), tonumber(core.created_at or "0")), eid)
  return ok("promoted")
end)

redis.register_function('ff_update_progress', function(keys, args)
  local core_key = keys[1]
  local lease_id, lease_epoch = args[2], args[3]
  local pct, message = args[4] or "", args[5] or ""

  local now = server_now_ms()
  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "active" then return not_active(core) end
  if core.ownership_state == "lease_revoked" then return fail("lease_revoked") end
  if tonumber(core.lease_expires_at or "0") <= now then return fail("lease_expired") end
  if core.current_lease_id ~= lease_id or core.current_lease_epoch ~= lease_epoch then
    return fail("stale_lease")
  end

  local fields = {"last_mutation_at", tostring(now), "progress_updated_at", tostring(now)}
  if present(pct) then
    put(fields, "progress_pct", pct)
  end
  if present(message) then
    put(fields, "progress_message", message)
  end
  hset(core_key, fields)
  return ok()
end)

redis.register_function('ff_register_worker', function(keys, args)
  local alive_key, caps_key, index_key = keys[1], keys[2], keys[3]
  local ttl, bad = need_integer(args[5], "ttl_ms")
  if bad then return bad end
  if ttl <= 0 then
    return fail("invalid_input", "ttl_ms must be positive, got: " .. args[5])
  end
  local now, bad_now = need_number(args[6], "now_ms")
  if bad_now then return bad_now end

  local was_alive = redis.call("EXISTS", alive_key) == 1
  redis.call("SET", alive_key, "1", "PX", tostring(ttl))
  redis.call("HSET", caps_key,
    "worker_id", args[2],
    "lanes_csv", args[3] or "",
    "caps_csv", args[4] or "",
    "ttl_ms", tostring(ttl),
    "registered_at_ms", tostring(now),
    "last_heartbeat_ms", tostring(now))
  redis.call("PEXPIRE", caps_key, tostring(ttl))
  redis.call("SADD", index_key, args[1])
  return ok(was_alive and "refreshed" or "registered")
end)

redis.register_function('ff_heartbeat_worker', function(keys, args)
  local alive_key, caps_key = keys[1], keys[2]
  local now, bad = need_number(args[1], "now_ms")
  if bad then return bad end

  local ttl = tonumber(redis.call("HGET", caps_key, "ttl_ms") or nil)
  if not ttl or redis.call("PEXPIRE", alive_key, tostring(ttl)) == 0 then
    return ok("not_registered")
  end
  redis.call("PEXPIRE", caps_key, tostring(ttl))
  redis.call("HSET", caps_key, "last_heartbeat_ms", tostring(now))
  return ok("refreshed", tostring(ttl))
end)
