-- signal.lua: signal delivery and the resume path. ff_claim_resumed_execution
-- claims an execution whose attempt was interrupted (self-delayed, resumed by
-- a signal, or requeued after a reclaim) and continues that same attempt.

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
