-- stream.lua: attempt output streams. ff_append_frame writes durable,
-- summary (JSON merge patch onto a rolling document) and best-effort frames
-- with their retention; ff_read_attempt_stream and ff_read_summary read back.

-- RFC 7396 merge of the decoded `patch` into `target`, in place: null deletes,
-- a non-empty object recurses, anything else (arrays included) replaces.
-- Answers "patch_depth_exceeded" past 16 nested objects, else nil.
-- A table whose first slot is nil or false counts as an object, as in FlowFabric.
local function merge_patch(target, patch, depth)
  if depth > 16 then
    return "patch_depth_exceeded"
  end
  for k, v in pairs(patch) do
    if v == cjson.null then
      target[k] = nil
    elseif type(v) == "table" and not v[1] and next(v) ~= nil then
      if type(target[k]) ~= "table" or target[k][1] ~= nil then
        target[k] = {}
      end
      local too_deep = merge_patch(target[k], v, depth + 1)
      if too_deep then
        return too_deep
      end
    else
      target[k] = v
    end
  end
end

-- Turn every "__ff_null__" string leaf into JSON null (how a patch sets a
-- value to null rather than deleting it). Stops 32 levels down.
local function null_sentinels(doc, depth)
  if depth > 32 or type(doc) ~= "table" then
    return
  end
  for k, v in pairs(doc) do
    if v == "__ff_null__" then
      doc[k] = cjson.null
    elseif type(v) == "table" then
      null_sentinels(v, depth + 1)
    end
  end
end

-- Merge a summary frame's patch into the attempt's summary document.
-- Answers the new version as a string, or nil plus the error reply.
local function apply_summary_patch(summary_key, A, now)
  if summary_key == "" then
    return nil, fail("invalid_input", "summary mode requires stream_summary key")
  end
  if A.patch_kind ~= "json-merge-patch" and A.patch_kind ~= "" then
    return nil, fail("invalid_input", "unsupported patch_kind")
  end
  local decoded, patch = pcall(cjson.decode, A.payload)
  if not decoded then
    return nil, fail("invalid_input", "patch payload is not valid JSON")
  end
  if type(patch) ~= "table" or patch[1] ~= nil then
    return nil, fail("invalid_input", "patch must be a JSON object")
  end
  local doc = {}
  local stored = redis.call("HGET", summary_key, "document")
  if present(stored) then
    local readable, parsed = pcall(cjson.decode, stored)
    -- a stored scalar can only take an empty patch (FlowFabric fails part-way otherwise)
    if not readable or (type(parsed) ~= "table" and next(patch) ~= nil) then
      return nil, fail("corruption", "stored summary document not decodeable")
    end
    doc = parsed
  end
  local too_deep = merge_patch(doc, patch, 0)
  if too_deep then
    return nil, fail("invalid_input", too_deep)
  end
  null_sentinels(doc, 0)

  local document = cjson.encode(doc)
  local version = redis.call("HINCRBY", summary_key, "version", 1)
  redis.call("HSET", summary_key,
    "document", document,
    "patch_kind", "json-merge-patch",
    "last_updated_ms", tostring(now))
  if version == 1 then
    redis.call("HSET", summary_key, "first_applied_ms", tostring(now))
  end
  return tostring(version)
end

-- Best-effort retention: the append-rate estimate (Hz, an EMA over the gaps
-- between appends) and the MAXLEN it implies, clamp(ceil(rate * ttl_s * 2),
-- floor, ceiling). The first best-effort frame seeds the rate so MAXLEN = floor.
local function best_effort_maxlen(meta_key, A, now)
  local prev = redis.call("HMGET", meta_key, "ema_rate_hz", "last_append_ts_ms")
  local prev_rate, prev_at = tonumber(prev[1] or ""), tonumber(prev[2] or "")
  local ttl_s = math.max(A.ttl_ms, 1) / 1000.0
  local rate
  if prev_rate == nil or prev_at == nil then
    rate = A.maxlen_floor / (ttl_s * 2.0)
  else
    local gap_ms = now - prev_at
    if gap_ms <= 0 then
      gap_ms = 1
    end
    rate = A.ema_alpha * (1000.0 / gap_ms) + (1.0 - A.ema_alpha) * prev_rate
  end
  local maxlen = math.ceil(rate * ttl_s * 2.0)
  if maxlen < A.maxlen_floor then
    maxlen = A.maxlen_floor
  end
  if maxlen > A.maxlen_ceiling then
    maxlen = A.maxlen_ceiling
  end
  return rate, maxlen
end

redis.register_function('ff_append_frame', function(keys, args)
  local K = {core = keys[1], stream = keys[2], meta = keys[3], summary = keys[4] or ""}
  local max_payload_bytes, bad = need_number(args[13] or "65536", "max_payload_bytes")
  if bad then return bad end
  local A = {
    execution_id = args[1], attempt_index = args[2], lease_id = args[3], lease_epoch = args[4],
    frame_type = args[5], ts = args[6] or "", payload = args[7] or "", encoding = args[8] or "utf8",
    correlation_id = args[9] or "", source = args[10] or "worker",
    retention_maxlen = tonumber(args[11] or "0"), attempt_id = args[12] or "",
    mode = args[14] or "", patch_kind = args[15] or "", ttl_ms = tonumber(args[16] or "0"),
    maxlen_floor = tonumber(args[17] or "0"), maxlen_ceiling = tonumber(args[18] or "0"),
    ema_alpha = tonumber(args[19] or "0"),
  }
  if A.maxlen_floor == nil or A.maxlen_floor <= 0 then A.maxlen_floor = 64 end
  if A.maxlen_ceiling == nil or A.maxlen_ceiling <= 0 then A.maxlen_ceiling = 16384 end
  if A.ema_alpha == nil or A.ema_alpha <= 0 or A.ema_alpha > 1.0 then A.ema_alpha = 0.2 end
  if A.maxlen_ceiling < A.maxlen_floor then A.maxlen_ceiling = A.maxlen_floor end
  if A.mode == "" then A.mode = "durable" end
  local durable = A.mode == "durable" or A.mode == "summary"
  local best_effort = A.mode == "best_effort"

  if #A.payload > max_payload_bytes then
    return fail("retention_limit_exceeded")
  end

  local core = redis.call("HMGET", K.core, "current_attempt_index", "current_lease_id",
    "current_lease_epoch", "lease_expires_at", "lifecycle_phase", "ownership_state")
  if core[5] ~= "active" then
    return fail("stream_closed")
  end
  if core[6] == "lease_expired_reclaimable" or core[6] == "lease_revoked" then
    return fail("stale_owner_cannot_append")
  end
  local now = server_now_ms()
  if (tonumber(core[4] or "0") or 0) <= now or tostring(core[1]) ~= A.attempt_index
      or core[2] ~= A.lease_id or tostring(core[3]) ~= A.lease_epoch then
    return fail("stale_owner_cannot_append")
  end

  -- Arguments FlowFabric would only trip over after writing; checked before anything is.
  if A.frame_type == nil then
    return fail("invalid_input", "frame_type must be given")
  end
  local ema_rate, effort_maxlen
  if best_effort then
    local _, bad_ttl = need_number(args[16] or "0", "ttl_ms")
    if bad_ttl then return bad_ttl end
    if A.ttl_ms > 0 and (A.ttl_ms * 2) % 1 ~= 0
        and redis.call("HGET", K.meta, "has_durable_frame") ~= "1" then
      return fail("invalid_input", "ttl_ms must be a whole number of milliseconds, got: " .. args[16])
    end
    ema_rate, effort_maxlen = best_effort_maxlen(K.meta, A, now)
    if effort_maxlen % 1 ~= 0 then
      return fail("invalid_input", "best-effort MAXLEN must be a whole number, got: " .. tostring(effort_maxlen))
    end
  elseif A.mode ~= "summary" then
    local _, bad_maxlen = need_number(args[11] or "0", "retention_maxlen")
    if bad_maxlen then return bad_maxlen end
    if A.retention_maxlen < 0 or A.retention_maxlen % 1 ~= 0 then
      return fail("invalid_input", "retention_maxlen must be a whole number >= 0, got: " .. args[11])
    end
  end

  if redis.call("EXISTS", K.meta) == 0 then
    redis.call("HSET", K.meta,
      "stream_id", A.execution_id .. ":" .. A.attempt_index,
      "execution_id", A.execution_id,
      "attempt_id", A.attempt_id,
      "attempt_index", A.attempt_index,
      "created_at", tostring(now),
      "closed_at", "",
      "closed_reason", "",
      "durability_mode", "durable_full",
      "retention_maxlen", tostring(A.retention_maxlen),
      "last_sequence", "",
      "frame_count", "0",
      "total_bytes", "0",
      "last_frame_at", "",
      "has_durable_frame", "0")
  end
  if present(redis.call("HGET", K.meta, "closed_at")) then
    return fail("stream_closed")
  end

  local summary_version = ""
  if A.mode == "summary" then
    local version, bad_patch = apply_summary_patch(K.summary, A, now)
    if not version then return bad_patch end
    summary_version = version
  end

  local entry = {"frame_type", A.frame_type,
    "ts", A.ts ~= "" and A.ts or tostring(now),
    "payload", A.payload,
    "encoding", A.encoding,
    "source", A.source,
    "mode", A.mode}
  if A.correlation_id ~= "" then
    put(entry, "correlation_id", A.correlation_id)
  end
  if summary_version ~= "" then
    put(entry, "summary_version", summary_version)
  end
  if best_effort and A.ttl_ms > 0 then
    put(entry, "ttl_ms", tostring(A.ttl_ms))
  end
  local entry_id = redis.call("XADD", K.stream, "*", unpack(entry))

  local frame_count = redis.call("HINCRBY", K.meta, "frame_count", 1)
  redis.call("HINCRBY", K.meta, "total_bytes", #A.payload)
  redis.call("HSET", K.meta, "last_sequence", entry_id, "last_frame_at", tostring(now))
  if durable and redis.call("HGET", K.meta, "has_durable_frame") ~= "1" then
    redis.call("HSET", K.meta, "has_durable_frame", "1")
    redis.call("PERSIST", K.stream)
  end

  if A.mode == "summary" then
    redis.call("XTRIM", K.stream, "MAXLEN", "~", 64)
  elseif best_effort then
    redis.call("XTRIM", K.stream, "MAXLEN", "~", effort_maxlen)
    redis.call("HSET", K.meta,
      "ema_rate_hz", tostring(ema_rate),
      "last_append_ts_ms", tostring(now),
      "maxlen_applied_last", tostring(effort_maxlen))
    if A.ttl_ms > 0 and redis.call("HGET", K.meta, "has_durable_frame") ~= "1" then
      redis.call("PEXPIRE", K.stream, A.ttl_ms * 2)
    end
  elseif A.retention_maxlen == 0 then
    redis.call("XTRIM", K.stream, "MAXLEN", "~", 10000)
  else
    redis.call("XTRIM", K.stream, "MAXLEN", "=", A.retention_maxlen)
  end
  return ok(entry_id, tostring(frame_count), summary_version)
end)

redis.register_function('ff_read_attempt_stream', function(keys, args)
  local stream_key, meta_key = keys[1], keys[2]
  local count = tonumber(args[3] or "0")
  if count == nil or count < 1 then
    return fail("invalid_input", "count_limit must be >= 1")
  end
  if count > 10000 then
    return fail("invalid_input", "count_limit_exceeds_hard_cap")
  end
  if count % 1 ~= 0 then
    return fail("invalid_input", "count_limit must be a whole number, got: " .. args[3])
  end
  local from_id, to_id = args[1] or "-", args[2] or "+"
  local entries = redis.pcall("XRANGE", stream_key, from_id, to_id, "COUNT", count)
  if entries.err then
    return fail("invalid_input", "invalid stream range " .. from_id .. " .. " .. to_id .. ": " .. entries.err)
  end

  if args[4] == "exclude_best_effort" then
    local kept = {}
    for _, entry in ipairs(entries) do
      local fields, mode = entry[2], "durable"
      for i = 1, #fields - 1, 2 do
        if fields[i] == "mode" then
          mode = fields[i + 1]
          break
        end
      end
      if mode ~= "best_effort" then
        kept[#kept + 1] = entry
      end
    end
    entries = kept
  end

  local closed = redis.call("HMGET", meta_key, "closed_at", "closed_reason")
  return ok(entries, closed[1] or "", closed[2] or "")
end)

redis.register_function('ff_read_summary', function(keys, args)
  local summary_key = keys[1]
  if redis.call("EXISTS", summary_key) == 0 then
    return ok("", "0", "", "0", "0")
  end
  local h = redis.call("HMGET", summary_key,
    "document", "version", "patch_kind", "last_updated_ms", "first_applied_ms")
  return ok(h[1] or "", h[2] or "0", h[3] or "", h[4] or "0", h[5] or "0")
end)
