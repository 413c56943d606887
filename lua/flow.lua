-- flow.lua: flows and their dependency edges. A flow and all its members live
-- on one {fp:N} partition, so every key of every call here shares one slot.
-- Edges are staged on the flow, applied to the child (its dep record and
-- blocking), and resolved when the upstream ends; edge groups (all_of, any_of,
-- quorum) decide when a child runs or is skipped. Nothing here cancels members:
-- the scanners do, from pending_cancels and pending_cancel_groups.
-- ff_replay_execution lives here because replaying a skipped member re-arms
-- its inbound edges.

local CYCLE_SEARCH_LIMIT = 1000
local CANCEL_GRACE_DEFAULT_MS = 30000
local SADD_CHUNK = 1000
local MAX_SAFE_INTEGER = 9007199254740991
local TAG_KEY_PATTERN = "^[a-z][a-z0-9_]*%.[^.]"

local function flow_ended(flow)
  local state = flow.public_flow_state or ""
  return state == "cancelled" or state == "completed" or state == "failed"
end

-- Would an edge upstream -> downstream close a loop? Breadth-first from the
-- downstream over the outgoing edges; a graph too large to search counts as one.
local function closes_cycle(flow_prefix, downstream, upstream)
  local seen, frontier, visited = {}, {downstream}, 0
  while #frontier > 0 do
    local next_frontier = {}
    for _, eid in ipairs(frontier) do
      if eid == upstream then
        return true
      end
      if not seen[eid] then
        seen[eid] = true
        visited = visited + 1
        if visited > CYCLE_SEARCH_LIMIT then
          return true
        end
        for _, edge_id in ipairs(redis.call("SMEMBERS", flow_prefix .. ":out:" .. eid)) do
          local child = redis.call("HGET", flow_prefix .. ":edge:" .. edge_id, "downstream_execution_id")
          if present(child) and not seen[child] then
            next_frontier[#next_frontier + 1] = child
          end
        end
      end
    end
    frontier = next_frontier
  end
  return false
end

-- The state tuple of a runnable child (kept runnable, unowned, not terminal)
-- with the given eligibility, plus the transition stamps.
local function runnable_child_fields(core, eligibility, blocking, detail, attempt_state, public, now)
  return put(state_fields(core.lifecycle_phase, core.ownership_state or "unowned", eligibility,
    blocking, detail, "none", attempt_state, public),
    "last_transition_at", now, "last_mutation_at", now)
end

-- Make a dependency-blocked child eligible.
local function promote_child(core_key, core, blocked_key, eligible_key, now)
  local attempt_state = core.attempt_state
  if not present(attempt_state) or attempt_state == "none" then
    attempt_state = "pending_first_attempt"
  end
  hset(core_key, runnable_child_fields(core, "eligible_now", "waiting_for_worker", "", attempt_state,
    "waiting", now))
  local eid = core.execution_id or ""
  redis.call("ZREM", blocked_key, eid)
  redis.call("ZADD", eligible_key,
    eligible_score(tonumber(core.priority or "0"), tonumber(core.created_at or "0")), eid)
end

local function promotable(core)
  return core.lifecycle_phase == "runnable" and core.ownership_state == "unowned"
    and core.terminal_outcome == "none" and core.eligibility_state == "blocked_by_dependencies"
end

-- COPY the upstream's result over the child's payload: "data_injected" when copied.
local function pass_data(K)
  if redis.call("COPY", K.upstream_result, K.child_payload, "REPLACE") == 1 then
    return "data_injected"
  end
  return ""
end

-- End a child whose dependencies can no longer be met: terminal "skipped"
-- (its running attempt, if any, ended as cancelled). True when it was skipped.
local function skip_child(K, core, now)
  if core.terminal_outcome ~= "none" then
    return false
  end
  local attempt_state = core.attempt_state or "none"
  if attempt_state == "running_attempt" or attempt_state == "attempt_interrupted" then
    attempt_state = "attempt_terminal"
    redis.call("HSET", K.attempt, "attempt_state", "ended_cancelled", "ended_at", now,
      "failure_reason", "dependency_impossible")
    close_stream_meta(K.stream_meta, now, "dependency_impossible")
  elseif present(attempt_state) and attempt_state ~= "none" then
    attempt_state = "none"
  end
  local eid = core.execution_id or ""
  enter_terminal(K.core, core, eid, now, {
    outcome = "skipped", attempt_state = attempt_state, public_state = "skipped",
    cleared = {},
    unindex = function() redis.call("ZREM", K.blocked, eid) end,
    terminal_key = K.terminal, notify = present(core.execution_id),
  })
  return true
end


---------------------------------------------------------------------------
-- Flow container and membership
---------------------------------------------------------------------------

redis.register_function('ff_create_flow', function(keys, args)
  local core_key, flow_index = keys[1], keys[3]
  local flow_id, flow_kind, namespace = args[1], args[2], args[3]
  local bad = argv_shortfall(args, 3)
  if bad then return bad end

  local now = server_now_ms()
  redis.call("SADD", flow_index, flow_id)
  if redis.call("EXISTS", core_key) == 1 then
    return reply("ALREADY_SATISFIED", flow_id)
  end
  redis.call("HSET", core_key,
    "flow_id", flow_id,
    "flow_kind", flow_kind,
    "namespace", namespace,
    "graph_revision", "0",
    "node_count", "0",
    "edge_count", "0",
    "public_flow_state", "open",
    "created_at", tostring(now),
    "last_mutation_at", tostring(now))
  return ok(flow_id)
end)

redis.register_function('ff_add_execution_to_flow', function(keys, args)
  local core_key, members_key, flow_index, exec_core_key = keys[1], keys[2], keys[3], keys[4]
  local flow_id, eid = args[1], args[2]
  local bad = argv_shortfall(args, 2)
  if bad then return bad end

  local now = server_now_ms()
  local flow = read_hash(core_key)
  if not flow then return fail("flow_not_found") end
  if flow_ended(flow) then return fail("flow_already_terminal") end
  if redis.call("EXISTS", exec_core_key) == 0 then return fail("execution_not_found") end

  redis.call("SADD", flow_index, flow_id)
  local current = redis.call("HGET", exec_core_key, "flow_id")
  if present(current) and current ~= flow_id then
    return fail("already_member_of_different_flow:" .. current)
  end
  redis.call("HSET", exec_core_key, "flow_id", flow_id)
  if redis.call("SISMEMBER", members_key, eid) == 1 then
    return reply("ALREADY_SATISFIED", eid, redis.call("HGET", core_key, "node_count") or "0")
  end
  redis.call("SADD", members_key, eid)
  local node_count = redis.call("HINCRBY", core_key, "node_count", 1)
  redis.call("HINCRBY", core_key, "graph_revision", 1)
  redis.call("HSET", core_key, "last_mutation_at", tostring(now))
  return ok(eid, tostring(node_count))
end)

redis.register_function('ff_set_flow_tags', function(keys, args)
  local core_key, tags_key = keys[1], keys[2]
  if #args == 0 or #args % 2 ~= 0 then
    return fail("invalid_input", "tags must be non-empty even-length key/value pairs")
  end
  if redis.call("EXISTS", core_key) == 0 then return fail("flow_not_found") end
  for i = 1, #args, 2 do
    if not string.find(args[i], TAG_KEY_PATTERN) then
      return fail("invalid_tag_key", args[i])
    end
  end

  -- Tags once written into flow_core itself move to the tags hash, once.
  if redis.call("HGET", core_key, "tags_migrated") ~= "1" then
    local moved, names = {}, {}
    local flat = redis.call("HGETALL", core_key)
    for i = 1, #flat, 2 do
      if string.find(flat[i], TAG_KEY_PATTERN) then
        put(moved, flat[i], flat[i + 1])
        names[#names + 1] = flat[i]
      end
    end
    if #names > 0 then
      hset(tags_key, moved)
      redis.call("HDEL", core_key, unpack(names))
    end
    redis.call("HSET", core_key, "tags_migrated", "1")
  end
  hset(tags_key, args)
  redis.call("HSET", core_key, "last_mutation_at", tostring(server_now_ms()))
  return ok(tostring(#args / 2))
end)

---------------------------------------------------------------------------
-- Cancellation (the scanners cancel the members)
---------------------------------------------------------------------------

redis.register_function('ff_cancel_flow', function(keys, args)
  local core_key, members_key, pending_key, backlog_key = keys[1], keys[2], keys[4], keys[5]
  local flow_id, reason, policy = args[1], args[2], args[3]
  local bad = argv_shortfall(args, 3)
  if bad then return bad end

  local grace_ms = CANCEL_GRACE_DEFAULT_MS
  if present(args[5]) then
    grace_ms = tonumber(args[5])
    if not grace_ms or grace_ms ~= grace_ms or grace_ms < 0 or grace_ms > MAX_SAFE_INTEGER
        or grace_ms ~= math.floor(grace_ms) then
      return fail("invalid_grace_ms")
    end
  end

  local now = server_now_ms()
  local flow = read_hash(core_key)
  if not flow then return fail("flow_not_found") end
  if flow_ended(flow) then return fail("flow_already_terminal") end

  local members = redis.call("SMEMBERS", members_key)
  redis.call("HSET", core_key,
    "public_flow_state", "cancelled",
    "cancelled_at", tostring(now),
    "cancel_reason", reason,
    "cancellation_policy", policy,
    "last_mutation_at", tostring(now))
  if policy == "cancel_all" and #members > 0 then
    for first = 1, #members, SADD_CHUNK do
      redis.call("SADD", pending_key, unpack(members, first, math.min(first + SADD_CHUNK - 1, #members)))
    end
    redis.call("ZADD", backlog_key, now + grace_ms, flow_id)
  end
  local result = ok(policy)
  for _, eid in ipairs(members) do
    result[#result + 1] = eid
  end
  return result
end)

redis.register_function('ff_ack_cancel_member', function(keys, args)
  local pending_key, backlog_key = keys[1], keys[2]
  redis.call("SREM", pending_key, args[1])
  if redis.call("EXISTS", pending_key) == 0 then
    redis.call("ZREM", backlog_key, args[2])
  end
  return ok()
end)

---------------------------------------------------------------------------
-- Edges: stage on the flow, apply to the child
---------------------------------------------------------------------------

redis.register_function('ff_stage_dependency_edge', function(keys, args)
  local core_key, members_key, edge_key, out_key, in_key = keys[1], keys[2], keys[3], keys[4], keys[5]
  local bad = argv_shortfall(args, 8)
  if bad then return bad end
  local flow_id, edge_id, upstream, downstream = args[1], args[2], args[3], args[4]
  local kind, data_ref, expected_revision, now = args[5], args[6], args[7], args[8]

  if upstream == downstream then return fail("self_referencing_edge") end
  local flow = read_hash(core_key)
  if not flow then return fail("flow_not_found") end
  if flow_ended(flow) then return fail("flow_already_terminal") end
  if (flow.graph_revision or "0") ~= expected_revision then return fail("stale_graph_revision") end
  if redis.call("SISMEMBER", members_key, upstream) == 0
      or redis.call("SISMEMBER", members_key, downstream) == 0 then
    return fail("execution_not_in_flow")
  end
  if closes_cycle(string.sub(core_key, 1, -6), downstream, upstream) then
    return fail("cycle_detected")
  end
  if redis.call("EXISTS", edge_key) == 1 then return fail("dependency_already_exists") end

  redis.call("HSET", edge_key,
    "edge_id", edge_id,
    "flow_id", flow_id,
    "upstream_execution_id", upstream,
    "downstream_execution_id", downstream,
    "dependency_kind", kind,
    "satisfaction_condition", "all_required",
    "data_passing_ref", data_ref,
    "edge_state", "pending",
    "created_at", now,
    "created_by", "engine")
  redis.call("SADD", out_key, edge_id)
  redis.call("SADD", in_key, edge_id)
  local revision = redis.call("HINCRBY", core_key, "graph_revision", 1)
  redis.call("HINCRBY", core_key, "edge_count", 1)
  redis.call("HSET", core_key, "last_mutation_at", now)
  return ok(edge_id, tostring(revision))
end)

redis.register_function('ff_set_edge_group_policy', function(keys, args)
  local core_key, group_key = keys[1], keys[2]
  local variant, on_satisfied, now = args[1], args[2] or "", args[4]
  local k = tonumber(args[3] or "0") or 0

  if redis.call("EXISTS", core_key) == 0 then return fail("flow_not_found") end
  if variant ~= "all_of" and variant ~= "any_of" and variant ~= "quorum" then
    return fail("invalid_input", "unsupported_policy_variant: " .. tostring(variant))
  end
  if variant == "quorum" and k < 1 then
    return fail("invalid_input", "quorum k must be >= 1")
  end
  if variant ~= "all_of" and on_satisfied ~= "cancel_remaining" and on_satisfied ~= "let_run" then
    return fail("invalid_input", "on_satisfied required for any_of/quorum: cancel_remaining | let_run")
  end
  if tonumber(redis.call("HGET", group_key, "n") or "0") > 0 then
    return fail("invalid_input", "edge_group_policy_already_fixed: dependencies already staged")
  end
  if redis.call("HGET", group_key, "policy_variant") == variant then
    return ok("already_set")
  end
  if now == nil then
    return fail("invalid_input", "now_ms is required")
  end
  redis.call("HSET", group_key,
    "policy_variant", variant,
    "on_satisfied", on_satisfied,
    "k", tostring(k),
    "n", "0",
    "succeeded", "0",
    "failed", "0",
    "skipped", "0",
    "group_state", "pending",
    "created_at", now)
  return ok("set")
end)

redis.register_function('ff_apply_dependency_to_child', function(keys, args)
  local core_key, meta_key, unresolved_key, dep_key = keys[1], keys[2], keys[3], keys[4]
  local eligible_key, blocked_key, all_edges_key, group_key = keys[5], keys[6], keys[7], keys[8]
  local bad = argv_shortfall(args, 7)
  if bad then return bad end
  local flow_id, edge_id, upstream, revision = args[1], args[2], args[3], args[4]
  local kind, data_ref, now = args[5], args[6], args[7]

  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  if present(core.flow_id) and core.flow_id ~= flow_id then return fail("execution_already_in_flow") end
  if redis.call("EXISTS", dep_key) == 1 then return ok("already_applied") end

  local eid = core.execution_id or ""
  redis.call("HSET", dep_key,
    "edge_id", edge_id,
    "flow_id", flow_id,
    "upstream_execution_id", upstream,
    "downstream_execution_id", eid,
    "dependency_kind", kind,
    "state", "unsatisfied",
    "data_passing_ref", data_ref,
    "last_resolved_at", "")
  redis.call("SADD", unresolved_key, edge_id)
  redis.call("SADD", all_edges_key, edge_id)
  local unresolved = redis.call("HINCRBY", meta_key, "unsatisfied_required_count", 1)
  redis.call("HSET", meta_key, "flow_id", flow_id, "last_flow_graph_revision", revision,
    "last_dependency_update_at", now)

  if present(group_key) then
    if redis.call("HGET", group_key, "policy_variant") then
      redis.call("HINCRBY", group_key, "n", 1)
    else
      redis.call("HSET", group_key, "policy_variant", "all_of", "n", "1", "succeeded", "0",
        "group_state", "pending")
    end
  end

  if core.lifecycle_phase == "runnable" and core.terminal_outcome == "none" then
    hset(core_key, runnable_child_fields(core, "blocked_by_dependencies", "waiting_for_children",
      unresolved .. " dep(s) unresolved incl " .. edge_id, core.attempt_state or "pending_first_attempt",
      "waiting_children", now))
    redis.call("ZREM", eligible_key, eid)
    redis.call("ZADD", blocked_key, tonumber(core.created_at or "0"), eid)
  end
  return ok(tostring(unresolved))
end)

---------------------------------------------------------------------------
-- Resolution: an upstream ended
---------------------------------------------------------------------------

-- An edge into an any_of / quorum group: count the outcome in the group and
-- fire the group once, when k succeeded or k can no longer succeed.
local function resolve_in_group(K, A, dep, variant)
  local bucket = "failed"
  if A.outcome == "success" then
    bucket = "succeeded"
  elseif A.outcome == "skipped" then
    bucket = "skipped"
  end
  redis.call("HSET", K.dep, "state", bucket == "succeeded" and "satisfied" or "impossible",
    "last_resolved_at", A.now)
  redis.call("SREM", K.unresolved, A.edge_id)
  redis.call("HINCRBY", K.group, bucket, 1)

  local group = read_hash(K.group)
  local n = tonumber(group.n or "0")
  local succeeded = tonumber(group.succeeded or "0")
  local not_succeeded = tonumber(group.failed or "0") + tonumber(group.skipped or "0")
  if succeeded + not_succeeded > n then
    return fail("invariant_violation",
      "edgegroup counters exceed n: " .. tostring(succeeded + not_succeeded) .. "/" .. tostring(n))
  end
  local prior = group.group_state or "pending"
  if prior == "satisfied" or prior == "impossible" or prior == "cancelled" then
    return ok("already_fired", "")
  end
  local k = 1
  if variant == "quorum" then
    k = math.max(tonumber(group.k or "1"), 1)
  end
  local fired
  if succeeded >= k then
    fired = "satisfied"
    redis.call("HSET", K.group, "group_state", fired, "satisfied_at", A.now)
  elseif not_succeeded > n - k then
    fired = "impossible"
    redis.call("HSET", K.group, "group_state", fired)
  else
    return ok("pending", "")
  end

  if group.on_satisfied == "cancel_remaining" then
    -- Name the inbound siblings still running; the edge-cancel scanner cancels them.
    local tag = hash_tag(K.group) or ""
    local running = {}
    if present(K.inbound) and present(A.flow_id) then
      local edge_prefix = "ff:flow:" .. tag .. ":" .. A.flow_id .. ":edge:"
      for _, edge_id in ipairs(redis.call("SMEMBERS", K.inbound)) do
        local sibling = redis.call("HGET", edge_prefix .. edge_id, "upstream_execution_id")
        if present(sibling) then
          local phase = redis.call("HGET", "ff:exec:" .. tag .. ":" .. sibling .. ":core", "lifecycle_phase")
          if present(phase) and phase ~= "terminal" then
            running[#running + 1] = sibling
          end
        end
      end
    end
    redis.call("HSET", K.group,
      "cancel_siblings_pending_flag", "true",
      "cancel_siblings_reason", fired == "satisfied" and "sibling_quorum_satisfied" or "sibling_quorum_impossible",
      "cancel_siblings_pending_members", table.concat(running, "|"))
    if present(K.pending_groups) and present(A.flow_id) and present(A.child) then
      redis.call("SADD", K.pending_groups, A.flow_id .. "|" .. A.child)
    end
  end

  local core = read_hash(K.core)
  if not core then return ok(fired, "") end
  if fired == "satisfied" then
    local injected = ""
    if present(dep.data_passing_ref) and bucket == "succeeded" and core.terminal_outcome == "none" then
      injected = pass_data(K)
    end
    if promotable(core) then
      promote_child(K.core, core, K.blocked, K.eligible, A.now)
    end
    return ok("satisfied", injected)
  end
  return ok("impossible", skip_child(K, core, A.now) and "child_skipped" or "")
end

redis.register_function('ff_resolve_dependency', function(keys, args)
  local K = {
    core = keys[1], meta = keys[2], unresolved = keys[3], dep = keys[4],
    eligible = keys[5], terminal = keys[6], blocked = keys[7],
    attempt = keys[8], stream_meta = keys[9], child_payload = keys[10], upstream_result = keys[11],
    group = keys[12], inbound = keys[13] or "", pending_groups = keys[14] or "",
  }
  local A = {edge_id = args[1], outcome = args[2], now = args[3], flow_id = args[4] or "", child = args[5] or ""}
  if finite_number(A.now) == nil then
    return fail("invalid_input", "now_ms must be a number, got: " .. tostring(A.now))
  end

  local dep = read_hash(K.dep)
  if not dep then return fail("invalid_dependency") end
  if dep.state == "satisfied" or dep.state == "impossible" then return ok("already_resolved") end

  local has_group = present(K.group) and redis.call("EXISTS", K.group) == 1
  if has_group then
    local variant = redis.call("HGET", K.group, "policy_variant")
    if variant == "any_of" or variant == "quorum" then
      return resolve_in_group(K, A, dep, variant)
    end
  end

  redis.call("SREM", K.unresolved, A.edge_id)
  if A.outcome == "success" then
    redis.call("HSET", K.dep, "state", "satisfied", "last_resolved_at", A.now)
    local remaining = redis.call("HINCRBY", K.meta, "unsatisfied_required_count", -1)
    redis.call("HSET", K.meta, "last_dependency_update_at", A.now)
    if has_group then
      redis.call("HINCRBY", K.group, "succeeded", 1)
      if remaining == 0 then
        redis.call("HSET", K.group, "group_state", "satisfied")
      end
    end
    local core = read_hash(K.core)
    if not core then return ok("satisfied", "") end
    local injected = ""
    if present(dep.data_passing_ref) and core.terminal_outcome == "none" then
      injected = pass_data(K)
    end
    if remaining == 0 and promotable(core) then
      promote_child(K.core, core, K.blocked, K.eligible, A.now)
    end
    return ok("satisfied", injected)
  end

  redis.call("HSET", K.dep, "state", "impossible", "last_resolved_at", A.now)
  redis.call("HINCRBY", K.meta, "unsatisfied_required_count", -1)
  redis.call("HINCRBY", K.meta, "impossible_required_count", 1)
  redis.call("HSET", K.meta, "last_dependency_update_at", A.now)
  if has_group then
    redis.call("HINCRBY", K.group, "failed", 1)
    redis.call("HSET", K.group, "group_state", "impossible")
  end
  local core = read_hash(K.core)
  if not core then return ok("impossible", "") end
  return ok("impossible", skip_child(K, core, A.now) and "child_skipped" or "")
end)

redis.register_function('ff_evaluate_flow_eligibility', function(keys, args)
  local core = read_hash(keys[1])
  if not core then return ok("not_found") end
  if core.lifecycle_phase ~= "runnable" then return ok("not_runnable") end
  if core.ownership_state ~= "unowned" then return ok("owned") end
  if core.terminal_outcome ~= "none" then return ok("terminal") end
  local meta = read_hash(keys[2])
  if not meta then return ok("eligible") end
  if tonumber(meta.impossible_required_count or "0") > 0 then return ok("impossible") end
  if tonumber(meta.unsatisfied_required_count or "0") > 0 then return ok("blocked_by_dependencies") end
  return ok("eligible")
end)

redis.register_function('ff_promote_blocked_to_eligible', function(keys, args)
  local core_key, blocked_key, eligible_key, meta_key, unresolved_key = keys[1], keys[2], keys[3], keys[4], keys[5]
  local now = args[2]
  local bad = argv_shortfall(args, 2)
  if bad then return bad end

  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "runnable" then return fail("not_runnable") end
  if core.eligibility_state ~= "blocked_by_dependencies" then return fail("not_blocked_by_deps") end
  if core.terminal_outcome ~= "none" then return fail("terminal") end
  local unsatisfied = tonumber(redis.call("HGET", meta_key, "unsatisfied_required_count") or "0")
  local unresolved = redis.call("SCARD", unresolved_key)
  if unsatisfied > 0 or unresolved > 0 then
    return fail("deps_not_satisfied", tostring(unsatisfied), tostring(unresolved))
  end
  core.execution_id = args[1]
  promote_child(core_key, core, blocked_key, eligible_key, now)
  return ok()
end)

---------------------------------------------------------------------------
-- Sibling cancellation of any_of / quorum groups (edge-cancel scanners)
---------------------------------------------------------------------------

local function sibling_group_args(args)
  local flow_id, child = args[1] or "", args[2] or ""
  if not present(flow_id) or not present(child) then
    return nil, fail("invalid_args", "flow_id and downstream_eid required")
  end
  return flow_id .. "|" .. child
end

redis.register_function('ff_drain_sibling_cancel_group', function(keys, args)
  local pending_key, group_key = keys[1], keys[2]
  local entry, bad = sibling_group_args(args)
  if not entry then return bad end
  local removed = redis.call("SREM", pending_key, entry)
  local group_exists = redis.call("EXISTS", group_key) == 1
  if group_exists then
    redis.call("HDEL", group_key, "cancel_siblings_pending_flag", "cancel_siblings_pending_members")
  end
  if removed == 0 then return ok("already_drained", "") end
  if not group_exists then return ok("drained_sans_group", "") end
  return ok("drained", "")
end)

redis.register_function('ff_reconcile_sibling_cancel_group', function(keys, args)
  local pending_key, group_key = keys[1], keys[2]
  local entry, bad = sibling_group_args(args)
  if not entry then return bad end
  if redis.call("SISMEMBER", pending_key, entry) == 0 then return ok("no_op", "not_in_set") end
  if redis.call("EXISTS", group_key) == 0 then
    redis.call("SREM", pending_key, entry)
    return ok("sremmed_stale", "missing_edgegroup")
  end
  if redis.call("HGET", group_key, "cancel_siblings_pending_flag") ~= "true" then
    redis.call("SREM", pending_key, entry)
    return ok("sremmed_stale", "flag_cleared")
  end
  local tag = hash_tag(group_key)
  local siblings = redis.call("HGET", group_key, "cancel_siblings_pending_members")
  if present(siblings) and tag then
    for sibling in string.gmatch(siblings, "([^|]+)") do
      local phase = redis.call("HGET", "ff:exec:" .. tag .. ":" .. sibling .. ":core", "lifecycle_phase")
      if present(phase) and phase ~= "terminal" then
        return ok("no_op", "siblings_running")
      end
    end
  end
  redis.call("HDEL", group_key, "cancel_siblings_pending_flag", "cancel_siblings_pending_members")
  redis.call("SREM", pending_key, entry)
  return ok("completed_drain", "")
end)

---------------------------------------------------------------------------
-- Replay
---------------------------------------------------------------------------

redis.register_function('ff_replay_execution', function(keys, args)
  local core_key, terminal_key, eligible_key, history_key = keys[1], keys[2], keys[3], keys[4]
  local eid = args[1]

  local now = server_now_ms()
  local core = read_hash(core_key)
  if not core then return fail("execution_not_found") end
  if core.lifecycle_phase ~= "terminal" then return fail("execution_not_terminal") end
  local replay_count = tonumber(core.replay_count or "0")
  local policy = stored_policy(core_key)
  local max_replays = policy and tonumber(policy.max_replay_count) or 10
  if replay_count >= max_replays then return fail("max_replays_exhausted") end

  local replay = {"pending_replay_attempt", "1",
    "replay_count", tostring(replay_count + 1),
    "completed_at", "",
    "last_transition_at", tostring(now),
    "last_mutation_at", tostring(now)}
  local replay_type, reply_count

  if core.terminal_outcome == "skipped" and present(core.flow_id) then
    -- Re-arm the impossible inbound edges (KEYS[8..], ids in ARGV[3..]).
    local blocked_key, deps_meta_key, unresolved_key = keys[5], keys[6], keys[7]
    local unsatisfied = 0
    for i = 1, #args - 2 do
      local edge_key = keys[7 + i]
      local edge_state = redis.call("HGET", edge_key, "state")
      if edge_state == "impossible" then
        redis.call("HSET", edge_key, "state", "unsatisfied", "last_resolved_at", "")
        redis.call("SADD", unresolved_key, args[2 + i])
        unsatisfied = unsatisfied + 1
      elseif edge_state == "unsatisfied" then
        unsatisfied = unsatisfied + 1
      end
    end
    redis.call("HSET", deps_meta_key,
      "unsatisfied_required_count", tostring(unsatisfied),
      "impossible_required_count", "0",
      "last_dependency_update_at", tostring(now))
    hset(core_key, put(state_fields("runnable", "unowned", "blocked_by_dependencies",
      "waiting_for_children", tostring(unsatisfied) .. " dep(s) unsatisfied after replay", "none",
      "pending_replay_attempt", "waiting_children"), unpack(replay)))
    redis.call("ZREM", terminal_key, eid)
    redis.call("ZADD", blocked_key, tonumber(core.created_at or "0"), eid)
    replay_type, reply_count = "skipped_flow_member", tostring(unsatisfied)
  else
    hset(core_key, put(state_fields("runnable", "unowned", "eligible_now", "waiting_for_worker",
      "", "none", "pending_replay_attempt", "waiting"), unpack(replay)))
    redis.call("ZREM", terminal_key, eid)
    redis.call("ZADD", eligible_key,
      eligible_score(tonumber(core.priority or "0"), tonumber(core.created_at or "0")), eid)
    replay_type, reply_count = "normal", "0"
  end

  add_history(history_key, "event", "replay_initiated",
    "replay_count", tostring(replay_count + 1),
    "replay_type", replay_type,
    "ts", tostring(now))
  return ok(reply_count)
end)
