-- lease.lua: the lease lifecycle. Shared steps for acquiring a lease (fresh
-- claim, resumed claim, reclaim) and releasing one, plus ff_renew_lease,
-- ff_mark_lease_expired_if_due and ff_revoke_lease.

-- Identity and timing of a lease being granted now. renew_before_ms defaults
-- to two thirds of the TTL, as every path but ff_claim_execution computes it.
local function new_lease(A, epoch, now, renew_before_ms)
  return {
    lease_id = A.lease_id,
    epoch = epoch,
    worker_id = A.worker_id,
    worker_instance_id = A.worker_instance_id,
    lane = A.lane,
    now = now,
    expires_at = now + A.lease_ttl_ms,
    renewal_deadline = now + (renew_before_ms or math.floor(A.lease_ttl_ms * 2 / 3)),
  }
end

local function write_lease_record(lease_key, L, eid, attempt_id)
  redis.call("DEL", lease_key)
  redis.call("HSET", lease_key,
    "lease_id", L.lease_id,
    "lease_epoch", tostring(L.epoch),
    "execution_id", eid,
    "attempt_id", attempt_id,
    "worker_id", L.worker_id,
    "worker_instance_id", L.worker_instance_id,
    "acquired_at", tostring(L.now),
    "expires_at", tostring(L.expires_at),
    "last_renewed_at", tostring(L.now),
    "renewal_deadline", tostring(L.renewal_deadline))
end

-- exec_core fields every lease acquisition writes.
local function leased_core_fields(L)
  local fields = state_fields("active", "leased", "not_applicable", "none", "", "none",
    "running_attempt", "active")
  return put(fields,
    "current_lease_id", L.lease_id,
    "current_lease_epoch", tostring(L.epoch),
    "current_worker_id", L.worker_id,
    "current_worker_instance_id", L.worker_instance_id,
    "current_lane", L.lane,
    "lease_acquired_at", tostring(L.now),
    "lease_expires_at", tostring(L.expires_at),
    "lease_last_renewed_at", tostring(L.now),
    "lease_renewal_deadline", tostring(L.renewal_deadline))
end

-- Index entries of a held lease: expiry, the worker's lease set, lane active.
local function index_lease(K, eid, L)
  redis.call("ZADD", K.lease_expiry, L.expires_at, eid)
  redis.call("SADD", K.worker_leases, eid)
  redis.call("ZADD", K.active, L.expires_at, eid)
end

-- Remove a released lease's record and index entries.
local function unindex_lease(K, eid)
  redis.call("DEL", K.lease_current)
  redis.call("ZREM", K.lease_expiry, eid)
  redis.call("SREM", K.worker_leases, eid)
  redis.call("ZREM", K.active, eid)
  redis.call("ZREM", K.attempt_timeout, eid)
end

-- Type and lineage fields of the next fresh attempt, from exec_core's pending state.
local function next_attempt_lineage(core)
  if core.attempt_state == "pending_retry_attempt" then
    return "retry", {
      "retry_reason", core.pending_retry_reason or "",
      "previous_attempt_index", core.pending_previous_attempt_index or "",
    }
  elseif core.attempt_state == "pending_replay_attempt" then
    return "replay", {
      "replay_reason", core.pending_replay_reason or "",
      "replay_requested_by", core.pending_replay_requested_by or "",
      "replayed_from_attempt_index", core.pending_previous_attempt_index or "",
    }
  end
  return "initial", {}
end

-- Create attempt `index`: its hash, attempts entry, usage hash and optional policy.
local function open_attempt(tag, eid, index, attempt_type, attempt_id, L, attempts_key, lineage, policy_json)
  local key = attempt_key(tag, eid, index)
  local fields = {
    "attempt_id", attempt_id,
    "execution_id", eid,
    "attempt_index", tostring(index),
    "attempt_type", attempt_type,
    "attempt_state", "started",
    "created_at", tostring(L.now),
    "started_at", tostring(L.now),
    "lease_id", L.lease_id,
    "lease_epoch", tostring(L.epoch),
    "worker_id", L.worker_id,
    "worker_instance_id", L.worker_instance_id,
  }
  for _, v in ipairs(lineage) do
    fields[#fields + 1] = v
  end
  hset(key, fields)
  redis.call("ZADD", attempts_key, L.now, tostring(index))
  redis.call("HSET", key .. ":usage", "last_usage_report_seq", "0")
  if present(policy_json) then
    local flat = flatten_policy(policy_json)
    if #flat > 0 then
      hset(key .. ":policy", flat)
    end
  end
end

-- Claim a runnable execution into a new attempt (ff_claim_execution and the
-- fresh path of ff_issue_grant_and_claim). Returns the lease, attempt index
-- and attempt type. `reason` tags the history event when given.
local function claim_fresh(K, A, core, now, renew_before_ms, reason)
  local eid = A.execution_id
  local tag = hash_tag(K.core)
  local index = tonumber(core.total_attempt_count or "0")
  local L = new_lease(A, tonumber(core.current_lease_epoch or "0") + 1, now, renew_before_ms)
  local attempt_type, lineage = next_attempt_lineage(core)

  open_attempt(tag, eid, index, attempt_type, A.attempt_id, L, K.attempts, lineage, A.attempt_policy_json)
  write_lease_record(K.lease_current, L, eid, A.attempt_id)

  local fields = put(leased_core_fields(L),
    "current_attempt_index", tostring(index),
    "total_attempt_count", tostring(index + 1),
    "current_attempt_id", A.attempt_id,
    "started_at", present(core.started_at) and core.started_at or tostring(now))
  put_cleared(fields, {"pending_retry_reason", "pending_replay_reason",
    "pending_replay_requested_by", "pending_previous_attempt_index"})
  hset(K.core, put(fields, "last_transition_at", tostring(now), "last_mutation_at", tostring(now)))

  redis.call("ZREM", K.eligible, eid)
  index_lease(K, eid, L)
  if present(A.attempt_timeout_ms) and A.attempt_timeout_ms ~= "0" then
    redis.call("ZADD", K.attempt_timeout, now + tonumber(A.attempt_timeout_ms), eid)
  end
  if present(A.execution_deadline_at) and A.execution_deadline_at ~= "0" then
    redis.call("ZADD", K.execution_deadline, tonumber(A.execution_deadline_at), eid)
  end

  local event = {"event", "acquired",
    "lease_id", L.lease_id,
    "lease_epoch", tostring(L.epoch),
    "attempt_id", A.attempt_id,
    "attempt_index", tostring(index),
    "worker_id", A.worker_id}
  if reason then
    put(event, "reason", reason)
  end
  add_history(K.lease_history, unpack(put(event, "ts", tostring(now))))
  return L, index, attempt_type
end

-- Resume an interrupted attempt under a new lease (ff_claim_resumed_execution
-- and the resumed path of ff_issue_grant_and_claim). Returns the lease.
local function claim_resumed(K, A, core, now, attempt_hash_key, reason)
  local eid = A.execution_id
  local L = new_lease(A, tonumber(core.current_lease_epoch or "0") + 1, now)
  local attempt_id = core.current_attempt_id

  redis.call("HSET", attempt_hash_key,
    "attempt_state", "started",
    "resumed_at", tostring(now),
    "lease_id", L.lease_id,
    "lease_epoch", tostring(L.epoch),
    "worker_id", L.worker_id,
    "worker_instance_id", L.worker_instance_id,
    "suspended_at", "",
    "suspension_id", "")
  write_lease_record(K.lease_current, L, eid, attempt_id)

  local fields = put_cleared(leased_core_fields(L), LEASE_MARKER_FIELDS)
  hset(K.core, put(fields, "last_transition_at", tostring(now), "last_mutation_at", tostring(now)))

  redis.call("ZREM", K.eligible, eid)
  index_lease(K, eid, L)
  add_history(K.lease_history, "event", "acquired",
    "lease_id", L.lease_id,
    "lease_epoch", tostring(L.epoch),
    "attempt_index", core.current_attempt_index,
    "attempt_id", attempt_id,
    "worker_id", L.worker_id,
    "reason", reason,
    "ts", tostring(now))
  return L
end

redis.register_function('ff_renew_lease', function(keys, args)
  local K = {core = keys[1], lease_current = keys[2], lease_history = keys[3], lease_expiry = keys[4]}
  local ttl, bad = need_integer(args[6], "lease_ttl_ms")
  if bad then return bad end
  local grace, bad_grace = need_integer(args[7], "lease_history_grace_ms")
  if bad_grace then return bad_grace end
  local eid, attempt_index = args[1], args[2]
  local attempt_id, lease_id, lease_epoch = args[3] or "", args[4] or "", args[5] or ""

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end

  local fence, bad_fence = resolve_fence(core, lease_id, lease_epoch, attempt_id, "")
  if not fence then return bad_fence end
  if core.lifecycle_phase ~= "active" then return not_active(core) end
  if core.ownership_state == "lease_revoked" or present(core.lease_revoked_at) then
    return fail("lease_revoked")
  end
  if tonumber(core.lease_expires_at or "0") <= now then
    mark_lease_expired(K.core, K.lease_history, core, now)
    return fail("lease_expired")
  end
  if tostring(core.current_attempt_index) ~= attempt_index
      or core.current_attempt_id ~= attempt_id
      or core.current_lease_id ~= lease_id
      or tostring(core.current_lease_epoch) ~= lease_epoch then
    return fail("stale_lease")
  end

  local expires_at = now + ttl
  local renewal_deadline = now + math.floor(ttl * 2 / 3)
  redis.call("HSET", K.core,
    "lease_last_renewed_at", tostring(now),
    "lease_renewal_deadline", tostring(renewal_deadline),
    "lease_expires_at", tostring(expires_at),
    "last_mutation_at", tostring(now))
  redis.call("HSET", K.lease_current,
    "last_renewed_at", tostring(now),
    "renewal_deadline", tostring(renewal_deadline),
    "expires_at", tostring(expires_at))
  redis.call("PEXPIREAT", K.lease_current, expires_at + grace)
  redis.call("ZADD", K.lease_expiry, expires_at, eid)
  return ok(tostring(expires_at))
end)

redis.register_function('ff_mark_lease_expired_if_due', function(keys, args)
  local core_key, expiry_key, history_key = keys[1], keys[3], keys[4]
  local eid = args[1]
  local now = server_now_ms()
  local core = read_hash(core_key)

  local settled
  if not core then
    settled = "execution_not_found"
  elseif core.lifecycle_phase ~= "active" then
    settled = "not_active"
  elseif core.ownership_state == "lease_expired_reclaimable" then
    return reply("ALREADY_SATISFIED", "already_expired")
  elseif core.ownership_state == "lease_revoked" then
    return reply("ALREADY_SATISFIED", "already_revoked")
  elseif core.ownership_state == "unowned" then
    settled = "unowned"
  end
  if settled then
    redis.call("ZREM", expiry_key, eid)
    return reply("ALREADY_SATISFIED", settled)
  end

  if tonumber(core.lease_expires_at or "0") > now then
    return reply("ALREADY_SATISFIED", "not_yet_expired")
  end
  mark_lease_expired(core_key, history_key, core, now)
  return ok("marked_expired")
end)

redis.register_function('ff_revoke_lease', function(keys, args)
  local K = {core = keys[1], lease_current = keys[2], lease_history = keys[3],
    lease_expiry = keys[4], worker_leases = keys[5]}
  local eid, expected_lease_id = args[1], args[2]
  local reason = args[3] or "operator"

  local now = server_now_ms()
  local core = read_hash(K.core)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "active" then return not_active(core) end
  if core.ownership_state == "lease_revoked" then
    return reply("ALREADY_SATISFIED", "already_revoked")
  elseif core.ownership_state == "lease_expired_reclaimable" then
    return reply("ALREADY_SATISFIED", "already_expired")
  elseif core.ownership_state ~= "leased" then
    return fail("no_active_lease")
  end
  if present(expected_lease_id) and core.current_lease_id ~= expected_lease_id then
    return fail("stale_lease",
      "expected " .. expected_lease_id .. " but current is " .. (core.current_lease_id or ""))
  end

  local fields = state_fields("active", "lease_revoked", core.eligibility_state or "not_applicable",
    "waiting_for_worker", "lease revoked: " .. reason, "none", "attempt_interrupted", "active")
  hset(K.core, put(fields,
    "lease_revoked_at", tostring(now),
    "lease_revoke_reason", reason,
    "last_mutation_at", tostring(now)))
  redis.call("DEL", K.lease_current)
  redis.call("ZREM", K.lease_expiry, eid)
  redis.call("SREM", K.worker_leases, eid)

  local lease_id, lease_epoch = core.current_lease_id or "", core.current_lease_epoch or ""
  add_history(K.lease_history, "event", "revoked",
    "lease_id", lease_id,
    "lease_epoch", lease_epoch,
    "attempt_index", core.current_attempt_index or "",
    "attempt_id", core.current_attempt_id or "",
    "worker_id", core.current_worker_id or "",
    "worker_instance_id", core.current_worker_instance_id or "",
    "reason", reason,
    "ts", tostring(now))
  return ok("revoked", lease_id, lease_epoch)
end)
