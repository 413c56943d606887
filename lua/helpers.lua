-- helpers.lua: library-local helpers shared by every registered function:
-- reply envelopes, argument parsing, server time, key templates, exec_core
-- state tuples, fencing, lease-history writes and the terminal transition.
-- Nothing here is FCALL-able.

local CAPS_MAX_BYTES = 4096
local CAPS_MAX_TOKENS = 256
local HISTORY_MAXLEN = 1000
local PRIORITY_MIN, PRIORITY_MAX = 0, 9000
local PRIORITY_WEIGHT = 1000000000000

---------------------------------------------------------------------------
-- Replies: {1, status, fields...} on success, {0, code, details...} on error.
---------------------------------------------------------------------------

local function ok(...)
  return {1, "OK", ...}
end

local function reply(status, ...)
  return {1, status, ...}
end

local function fail(code, ...)
  return {0, code, ...}
end

-- tonumber, but only for finite numbers (Lua's tonumber also accepts "nan" and "inf").
local function finite_number(value)
  local n = tonumber(value)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then
    return nil
  end
  return n
end

-- A required numeric argument: the number, or nil plus the invalid_input reply.
local function need_number(value, name)
  local n = finite_number(value)
  if n == nil then
    return nil, fail("invalid_input", name .. " must be a number, got: " .. tostring(value))
  end
  return n
end

-- A required whole number (it becomes a key expiry): the number, or nil plus the reply.
local function need_integer(value, name)
  local n, bad = need_number(value, name)
  if n ~= nil and n ~= math.floor(n) then
    return nil, fail("invalid_input", name .. " must be an integer, got: " .. tostring(value))
  end
  return n, bad
end

-- invalid_input when fewer than `needed` ARGV were sent (FlowFabric would fail
-- part-way on the missing ones).
local function argv_shortfall(args, needed)
  if #args < needed then
    return fail("invalid_input", "expected at least " .. needed .. " arguments, got: " .. #args)
  end
end

-- An optional numeric argument (empty means absent): the reply on bad input.
local function bad_optional_number(value, name)
  if value ~= nil and value ~= "" and finite_number(value) == nil then
    return fail("invalid_input", name .. " must be a number, got: " .. tostring(value))
  end
end

-- An optional JSON-object argument: the reply when it is not one.
local function bad_policy_object(value, name)
  if value == nil or value == "" then
    return nil
  end
  local decoded, object = pcall(cjson.decode, value)
  if not decoded or type(object) ~= "table" then
    return fail("invalid_input", name .. " must be a JSON object")
  end
end

local function server_now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Valkey hashes store "" for cleared fields and HGET answers false for absent ones.
local function present(value)
  return value ~= nil and value ~= false and value ~= ""
end

-- HGETALL as a table, or nil when the key does not exist.
local function read_hash(key)
  local flat = redis.call("HGETALL", key)
  if #flat == 0 then
    return nil
  end
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

-- Append field/value pairs to a list and return it.
local function put(list, ...)
  for i = 1, select("#", ...) do
    list[#list + 1] = select(i, ...)
  end
  return list
end

-- Append `field, ""` for every field name in `names`.
local function put_cleared(list, names)
  for _, name in ipairs(names) do
    list[#list + 1] = name
    list[#list + 1] = ""
  end
  return list
end

local function hset(key, fields)
  redis.call("HSET", key, unpack(fields))
end

---------------------------------------------------------------------------
-- Key templates that Lua builds itself. Every key of one call shares the
-- execution's {fp:N} tag, which is the first brace group of any of them.
---------------------------------------------------------------------------

local function hash_tag(key)
  return string.match(key, "(%b{})")
end

-- The execution id embedded in ff:exec:{fp:N}:<eid>:core.
local function eid_of_core_key(core_key)
  return string.match(core_key, "^ff:exec:%b{}:(.*):core$")
end

local function lane_index_key(tag, lane, suffix)
  return "ff:idx:" .. tag .. ":lane:" .. lane .. ":" .. suffix
end

local function attempt_key(tag, eid, attempt_index)
  return "ff:attempt:" .. tag .. ":" .. eid .. ":" .. tostring(attempt_index)
end

local function worker_leases_key(tag, worker_instance_id)
  return "ff:idx:" .. tag .. ":worker:" .. worker_instance_id .. ":leases"
end

local function stream_meta_key(tag, eid, attempt_index)
  return "ff:stream:" .. tag .. ":" .. eid .. ":" .. tostring(attempt_index) .. ":meta"
end

local function waitpoint_key_of(tag, waitpoint_id)
  return "ff:wp:" .. tag .. ":" .. waitpoint_id
end

---------------------------------------------------------------------------
-- exec_core state
---------------------------------------------------------------------------

-- lease fields released by every lease-ending transition
local LEASE_OWNER_FIELDS = {"current_lease_id", "current_worker_id", "current_worker_instance_id"}
local LEASE_TIMING_FIELDS = {"lease_expires_at", "lease_last_renewed_at", "lease_renewal_deadline"}
local LEASE_MARKER_FIELDS = {"lease_expired_at", "lease_revoked_at", "lease_revoke_reason"}
local WAIT_FIELDS = {"current_suspension_id", "current_waitpoint_id"}

-- The seven state dimensions plus blocking_detail, as HSET pairs.
local function state_fields(phase, ownership, eligibility, blocking, detail, outcome, attempt, public)
  return {
    "lifecycle_phase", phase,
    "ownership_state", ownership,
    "eligibility_state", eligibility,
    "blocking_reason", blocking,
    "blocking_detail", detail,
    "terminal_outcome", outcome,
    "attempt_state", attempt,
    "public_state", public,
  }
end

-- Eligible-set score: higher priority first, then FIFO by creation time.
local function eligible_score(priority, created_at)
  return 0 - (priority * PRIORITY_WEIGHT) + created_at
end

local function clamp_priority(priority)
  if priority < PRIORITY_MIN then
    return PRIORITY_MIN
  end
  if priority > PRIORITY_MAX then
    return PRIORITY_MAX
  end
  return priority
end

-- execution_not_active with the four reconciliation slots (outcome, epoch, phase, attempt).
local function not_active(core, phase)
  return fail("execution_not_active",
    core.terminal_outcome or "",
    core.current_lease_epoch or "",
    phase or core.lifecycle_phase or "",
    core.current_attempt_id or "")
end

local function publish_completion(core, eid, outcome)
  if present(core.flow_id) then
    redis.call("PUBLISH", "ff:dag:completions", cjson.encode({
      execution_id = eid, flow_id = core.flow_id, outcome = outcome,
    }))
  end
end

---------------------------------------------------------------------------
-- Suspension records
---------------------------------------------------------------------------

-- Drop a suspension's composite-condition state (satisfier tokens, member map).
local function drop_composite_state(suspension_key)
  redis.call("DEL", suspension_key .. ":satisfied_set", suspension_key .. ":satisfied_set:signals",
    suspension_key .. ":member_map")
end

-- Apply HSET pairs to the extra waitpoints (and their conditions) of a
-- multi-waitpoint suspension, listed in its additional_waitpoints_json.
local function close_extra_waitpoints(suspension_key, extras_json, waitpoint_fields, condition_fields)
  if not present(extras_json) or extras_json == "[]" then
    return
  end
  local decoded, extras = pcall(cjson.decode, extras_json)
  if not decoded or type(extras) ~= "table" then
    return
  end
  local tag = hash_tag(suspension_key)
  for _, entry in ipairs(extras) do
    local waitpoint_id = type(entry) == "table" and entry.waitpoint_id
    if type(waitpoint_id) == "string" and waitpoint_id ~= "" then
      local waitpoint = waitpoint_key_of(tag, waitpoint_id)
      if redis.call("EXISTS", waitpoint) == 1 then
        hset(waitpoint, waitpoint_fields)
      end
      if redis.call("EXISTS", waitpoint .. ":condition") == 1 then
        hset(waitpoint .. ":condition", condition_fields)
      end
    end
  end
end

---------------------------------------------------------------------------
-- Lease history and fencing
---------------------------------------------------------------------------

local function add_history(history_key, ...)
  redis.call("XADD", history_key, "MAXLEN", "~", HISTORY_MAXLEN, "*", ...)
end

-- Lease-history "released" event; attempt_id is included only when given.
local function add_released(history_key, core, attempt_id, reason, now)
  local fields = {"event", "released",
    "lease_id", core.current_lease_id or "",
    "lease_epoch", core.current_lease_epoch or "",
    "attempt_index", core.current_attempt_index or ""}
  if attempt_id then
    put(fields, "attempt_id", attempt_id)
  end
  add_history(history_key, unpack(put(fields, "reason", reason, "ts", tostring(now))))
end

-- Close an attempt's output stream metadata if the stream was ever opened.
local function close_stream_meta(meta_key, now, reason)
  if redis.call("EXISTS", meta_key) == 1 then
    redis.call("HSET", meta_key, "closed_at", tostring(now), "closed_reason", reason)
  end
end

-- Transition an active, leased execution to lease_expired_reclaimable (idempotent).
local function mark_lease_expired(core_key, history_key, core, now)
  if core.ownership_state == "lease_expired_reclaimable" then
    return
  end
  local fields = state_fields(core.lifecycle_phase or "active", "lease_expired_reclaimable",
    core.eligibility_state or "not_applicable", "waiting_for_worker",
    "lease expired, awaiting reclaim", core.terminal_outcome or "none",
    "attempt_interrupted", "active")
  hset(core_key, put(fields, "lease_expired_at", now, "last_mutation_at", now))
  add_history(history_key, "event", "expired",
    "lease_id", core.current_lease_id or "",
    "lease_epoch", core.current_lease_epoch or "",
    "attempt_index", core.current_attempt_index or "",
    "attempt_id", core.current_attempt_id or "",
    "worker_id", core.current_worker_id or "",
    "worker_instance_id", core.current_worker_instance_id or "",
    "ts", now)
  local attempt_index = core.current_attempt_index
  local eid = eid_of_core_key(core_key)
  if present(attempt_index) and eid then
    local meta_key = stream_meta_key(hash_tag(core_key), eid, attempt_index)
    if redis.call("EXISTS", meta_key) == 1
        and not present(redis.call("HGET", meta_key, "closed_at")) then
      redis.call("HSET", meta_key, "closed_at", tostring(now), "closed_reason", "lease_expired")
    end
  end
end

-- The fence of a lease-holder operation (complete, fail, delay, ...).
-- All three parts given: use them. None given: only operator_override may
-- proceed, fenced by the current lease. Some given: partial_fence_triple.
-- Returns the fence table, or nil plus the error reply.
local function resolve_fence(core, lease_id, lease_epoch, attempt_id, source)
  local given = (present(lease_id) and 1 or 0) + (present(lease_epoch) and 1 or 0)
    + (present(attempt_id) and 1 or 0)
  if given == 3 then
    return {lease_id = lease_id, lease_epoch = lease_epoch, attempt_id = attempt_id}
  end
  if given > 0 then
    return nil, fail("partial_fence_triple")
  end
  if source ~= "operator_override" then
    return nil, fail("fence_required")
  end
  return {
    lease_id = core.current_lease_id or "",
    lease_epoch = core.current_lease_epoch or "",
    attempt_id = core.current_attempt_id or "",
  }
end

-- Validate a fence against the live lease. An expired lease is marked expired
-- (when history_key is given) before lease_expired is returned. nil means valid.
local function check_lease(core, fence, now, core_key, history_key)
  if core.lifecycle_phase ~= "active" then
    return not_active(core)
  end
  if core.ownership_state == "lease_revoked" then
    return fail("lease_revoked")
  end
  if tonumber(core.lease_expires_at or "0") <= now then
    if history_key then
      mark_lease_expired(core_key, history_key, core, now)
    end
    return fail("lease_expired")
  end
  if core.current_lease_id ~= fence.lease_id
      or core.current_lease_epoch ~= fence.lease_epoch
      or core.current_attempt_id ~= fence.attempt_id then
    return fail("stale_lease")
  end
  return nil
end

-- Fence resolution plus lease validation for lease-holder operations.
-- Returns nil when the caller may proceed, else the error reply.
local function authorize_holder(core, A, now, core_key, history_key)
  local fence, bad = resolve_fence(core, A.lease_id, A.lease_epoch, A.attempt_id, A.source)
  if not fence then
    return bad
  end
  return check_lease(core, fence, now, core_key, history_key)
end

---------------------------------------------------------------------------
-- The terminal transition
---------------------------------------------------------------------------

-- End an execution: every function that makes one terminal (complete, fail, cancel,
-- expire, reclaim past its cap, a suspension's timeout, a skipped flow child) goes through
-- here, in this order:
--  1. exec_core (core_key) gets the terminal state for E.outcome, E.attempt_state and
--     E.public_state, then E.fields (the caller's extra pairs, e.g. failure_reason, or nil),
--     completed_at, "" for every field of the name lists in E.cleared (which lease fields
--     each caller clears differs: spec errata E2), and the transition stamps;
--  2. E.unindex(): the caller's removals from the indexes the execution leaves, in its order;
--  3. the execution joins E.terminal_key, its lane's terminal set, scored `now`;
--  4. when E.released gives a reason: a lease-history 'released' record on E.history_key
--     for the lease in `core` (exec_core as read before the transition);
--  5. when E.notify is set: its completion on ff:dag:completions (flow members only).
-- `now` is server ms, a number or (ff_resolve_dependency's skip) the ARGV string.
-- What each caller passes (outcome; E.fields; E.cleared; E.released; E.notify):
--   ff_complete_execution: success; -; owner, timing, markers; 'completed'; yes
--   ff_fail_execution (no retry left): failed; failure_reason; owner, timing; 'failed_terminal'; yes
--   ff_cancel_execution: cancelled; cancellation_reason, cancelled_by; owner, timing, wait; - (its
--     record is written earlier, when active); unless the source is flow_cascade
--   ff_reclaim_execution past its cap: failed; failure_reason; owner; -; no
--   ff_expire_execution: expired; failure_reason; owner, lease_expires_at, wait; - (written
--     earlier, when active); yes
--   ff_expire_suspension (fail/cancel/expire): its outcome; failure_reason; wait; -; yes (its
--     E.unindex also ends the attempt)
--   skip_child (flow.lua): skipped; -; nothing; -; when exec_core names its execution_id
local function enter_terminal(core_key, core, eid, now, E)
  local fields = state_fields("terminal", "unowned", "not_applicable", "none", "", E.outcome,
    E.attempt_state, E.public_state)
  put(fields, unpack(E.fields or {}))
  put(fields, "completed_at", tostring(now))
  for _, names in ipairs(E.cleared) do
    put_cleared(fields, names)
  end
  hset(core_key, put(fields, "last_transition_at", tostring(now), "last_mutation_at", tostring(now)))
  E.unindex()
  redis.call("ZADD", E.terminal_key, tonumber(now), eid)
  if E.released then
    add_released(E.history_key, core, nil, E.released, now)
  end
  if E.notify then
    publish_completion(core, eid, E.outcome)
  end
end

---------------------------------------------------------------------------
-- Capabilities (routing requirements)
---------------------------------------------------------------------------

-- Parse a capability CSV into a set; nil plus the reply when over the bounds.
local function parse_capability_csv(csv, side)
  local set = {}
  if csv == nil or csv == "" then
    return set
  end
  if #csv > CAPS_MAX_BYTES then
    return nil, fail("invalid_capabilities", side .. ":too_many_bytes")
  end
  local count = 0
  for token in string.gmatch(csv, "([^,]+)") do
    count = count + 1
    if count > CAPS_MAX_TOKENS then
      return nil, fail("invalid_capabilities", side .. ":too_many_tokens")
    end
    set[token] = true
  end
  return set
end

-- Check a worker's capabilities against the execution's requirements.
-- Stamps last_capability_mismatch_at and returns capability_mismatch with the
-- sorted missing tokens when they fall short; nil when the worker qualifies.
local function check_capabilities(core_key, core, worker_csv, now)
  local required, bad = parse_capability_csv(core.required_capabilities or "", "required")
  if not required then
    return bad
  end
  local offered, bad_worker = parse_capability_csv(worker_csv, "worker")
  if not offered then
    return bad_worker
  end
  local missing = {}
  for token in pairs(required) do
    if not offered[token] then
      missing[#missing + 1] = token
    end
  end
  if #missing == 0 then
    return nil
  end
  table.sort(missing)
  redis.call("HSET", core_key, "last_capability_mismatch_at", tostring(now))
  return fail("capability_mismatch", table.concat(missing, ","))
end

-- Write a claim or reclaim grant hash.
local function write_grant(grant_key, A, lane, route_snapshot_json, admission_summary, now, expires_at)
  redis.call("HSET", grant_key,
    "worker_id", A.worker_id,
    "worker_instance_id", A.worker_instance_id,
    "lane_id", lane,
    "capability_hash", A.capability_hash,
    "route_snapshot_json", route_snapshot_json,
    "admission_summary", admission_summary,
    "created_at", tostring(now),
    "grant_expires_at", tostring(expires_at))
end

---------------------------------------------------------------------------
-- Policy
---------------------------------------------------------------------------

-- Flatten a JSON object's top-level keys into HSET pairs (nested values as JSON).
local function flatten_policy(json)
  local flat = {}
  for k, v in pairs(cjson.decode(json)) do
    flat[#flat + 1] = k
    flat[#flat + 1] = type(v) == "table" and cjson.encode(v) or tostring(v)
  end
  return flat
end

-- The execution's stored policy object, or nil.
local function stored_policy(core_key)
  local raw = redis.call("GET", (string.gsub(core_key, ":core$", ":policy")))
  if not raw then
    return nil
  end
  local decoded, policy = pcall(cjson.decode, raw)
  if decoded and type(policy) == "table" then
    return policy
  end
  return nil
end
