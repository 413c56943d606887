-- hot_path.lua: ff_celery's own functions (library "ffcelery", loaded beside
-- "flowfabric"): each runs, in one call, the contract functions ff_celery would otherwise
-- send one after the other, with the reads and notices that travel with them. The
-- contract functions called here are this library's copy of the flowfabric modules
-- (`contract`, captured instead of registered), so each step is the contract's own code;
-- tests/contract/test_hot_path.py compares both ways, step by step, on two servers.

local function slice(list, first, count)
  local out = {}
  for i = 1, count do
    out[i] = list[first + i - 1]
  end
  return out
end

-- The first `n` ARGV as whole numbers (the sizes of the calls packed after them).
local function sizes(args, n)
  local out = {}
  for i = 1, n do
    local size = tonumber(args[i])
    if size == nil or size < 0 or size ~= math.floor(size) then
      return nil, fail("invalid_input", "size " .. i .. " must be a whole number, got: " .. tostring(args[i]))
    end
    out[i] = size
  end
  return out
end

-- ffc_claim: what a claimer sends for one candidate. HMGET of exec_core's `fields` (as the
-- claim finds them), ff_issue_claim_grant, ff_claim_execution (whatever the grant
-- answered, as in a pipeline), GET of the payload, HGETALL of the tags.
-- KEYS: the grant's (G), the claim's (C), payload, tags.
-- ARGV: G, C, the grant's ARGV count, the claim's ARGV count, the grant's ARGV, the
-- claim's ARGV, the exec_core fields to read.
-- Reply: {field values, grant reply, claim reply, payload, flat tags}.
redis.register_function('ffc_claim', function(keys, args)
  local n, bad = sizes(args, 4)
  if bad then return bad end
  local grant_keys, claim_keys, grant_argc, claim_argc = n[1], n[2], n[3], n[4]
  local first_field = 5 + grant_argc + claim_argc
  if #keys ~= grant_keys + claim_keys + 2 or #args < first_field - 1 or claim_keys == 0 then
    return fail("invalid_input", "KEYS and ARGV do not match the sizes given")
  end
  local fields = slice(args, first_field, #args - first_field + 1)
  local before = {}
  if #fields > 0 then
    before = redis.call("HMGET", keys[grant_keys + 1], unpack(fields))
  end
  local grant = contract.ff_issue_claim_grant(slice(keys, 1, grant_keys), slice(args, 5, grant_argc))
  local claim = contract.ff_claim_execution(slice(keys, grant_keys + 1, claim_keys),
    slice(args, 5 + grant_argc, claim_argc))
  local payload = redis.call("GET", keys[grant_keys + claim_keys + 1])
  local tags = redis.call("HGETALL", keys[grant_keys + claim_keys + 2])
  return {before, grant, claim, payload, tags}
end)

-- The outgoing edges of the flow member `eid`, which completed, resolved as ff_celery's
-- cascade does: in edge id order, ff_resolve_dependency ("success") into each child whose
-- dependency is still unsatisfied (a success never skips a child); a child it made eligible
-- gets a wake-up on `wake_prefix` .. its lane (naming it unless it has budgets or a quota),
-- published here when `publish` is set and else listed for the caller. Answers the
-- wake-ups not published, each as {lane, data}.
local function resolve_outgoing(tag, eid, flow_id, wake_prefix, wake_any, publish)
  local flow = "ff:flow:" .. tag .. ":" .. flow_id .. ":"
  local exec = "ff:exec:" .. tag .. ":"
  local edges = redis.call("SMEMBERS", flow .. "out:" .. eid)
  table.sort(edges)
  local wakes = {}
  for _, edge_id in ipairs(edges) do
    local child = redis.call("HGET", flow .. "edge:" .. edge_id, "downstream_execution_id")
    if present(child) then
      local child_exec = exec .. child .. ":"
      local found = redis.call("HMGET", child_exec .. "core", "lane_id", "current_attempt_index")
      local lane = present(found[1]) and found[1] or "default"
      local attempt_index = present(found[2]) and found[2] or "0"
      if redis.call("HGET", child_exec .. "dep:" .. edge_id, "state") == "unsatisfied" then
        local resolved = contract.ff_resolve_dependency({
          child_exec .. "core", child_exec .. "deps:meta", child_exec .. "deps:unresolved",
          child_exec .. "dep:" .. edge_id, lane_index_key(tag, lane, "eligible"),
          lane_index_key(tag, lane, "terminal"), lane_index_key(tag, lane, "blocked:dependencies"),
          attempt_key(tag, child, attempt_index), stream_meta_key(tag, child, attempt_index),
          child_exec .. "payload", exec .. eid .. ":result", flow .. "edgegroup:" .. child,
          flow .. "in:" .. child, "ff:idx:" .. tag .. ":pending_cancel_groups",
        }, {edge_id, "success", tostring(server_now_ms()), flow_id, child})
        if resolved[1] == 1 and resolved[3] == "satisfied" then
          local state = redis.call("HMGET", child_exec .. "core", "eligibility_state", "budget_ids",
            "quota_policy_id")
          if state[1] == "eligible_now" then
            local data = (present(state[2]) or present(state[3])) and wake_any or child
            if publish then
              redis.call("PUBLISH", wake_prefix .. lane, data)
            else
              wakes[#wakes + 1] = {lane, data}
            end
          end
        end
      end
    end
  end
  return wakes
end

-- ffc_complete: what a lease holder sends to end its attempt successfully.
-- ff_complete_execution, then the completion notice (when a channel is given), then, when
-- the completion succeeded and the execution is a flow member, its outgoing edges
-- resolved (resolve_outgoing). Notices are published here only on a standalone server
-- (`publish` = "1"); on a cluster they are sharded, so the caller sends them.
-- KEYS: ff_complete_execution's. ARGV: its ARGV count, its ARGV, notice channel, notice
-- data, wake-up channel prefix, the wake-up data naming no execution, publish.
-- Reply: {complete reply, unsent wake-ups}.
redis.register_function('ffc_complete', function(keys, args)
  local n, bad = sizes(args, 1)
  if bad then return bad end
  local argc = n[1]
  if #args ~= argc + 6 then
    return fail("invalid_input", "expected " .. (argc + 6) .. " arguments, got: " .. #args)
  end
  local A = {channel = args[argc + 2], notice = args[argc + 3], wake_prefix = args[argc + 4],
    wake_any = args[argc + 5], publish = args[argc + 6] == "1"}
  local completed = contract.ff_complete_execution(keys, slice(args, 2, argc))
  if A.channel ~= "" and A.publish then
    redis.call("PUBLISH", A.channel, A.notice)
  end
  local flow_id = completed[1] == 1 and redis.call("HGET", keys[1], "flow_id")
  if not present(flow_id) then
    return {completed, {}}
  end
  return {completed, resolve_outgoing(hash_tag(keys[1]), args[2], flow_id, A.wake_prefix, A.wake_any, A.publish)}
end)

-- The revision of this library (the loader replaces an older one); bump it whenever a
-- function here changes.
redis.register_function('ffc_version', function(keys, args)
  return 'ffcelery-2'
end)
