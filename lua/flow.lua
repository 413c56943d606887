-- flow.lua: flows and dependency edges. ff_replay_execution lives here
-- because replaying a skipped flow member re-arms its dependency edges.

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
