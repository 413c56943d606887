-- resume_condition.lua: when a suspended attempt may resume. Suspension
-- (suspension.lua) writes the condition; signal delivery (signal.lua)
-- evaluates it.

---------------------------------------------------------------------------
-- Resume conditions. A matcher list (named or wildcard matchers, any/all or
-- a minimum count) is evaluated in the condition hash; a composite tree
-- (AllOf / Count / Single nodes) through satisfier tokens in a set.
---------------------------------------------------------------------------

local resume_condition = {}

local function list_of(value)
  return type(value) == "table" and value or {}
end

-- The reply for a resume_condition_json that cannot be evaluated, or nil.
function resume_condition.problem(json)
  local decoded, spec = pcall(cjson.decode, json or "")
  if not decoded or type(spec) ~= "table" then
    return fail("invalid_input", "resume_condition_json must be a JSON object")
  end
  if spec.composite then
    return nil
  end
  if spec.required_signal_names ~= nil and type(spec.required_signal_names) ~= "table" then
    return fail("invalid_input", "required_signal_names must be an array")
  end
  if spec.minimum_signal_count ~= nil and finite_number(spec.minimum_signal_count) == nil then
    return fail("invalid_input", "minimum_signal_count must be a number")
  end
  return nil
end

-- The evaluation state of a validated condition JSON.
function resume_condition.parse(json)
  local spec = cjson.decode(json)
  if spec.composite then
    local tree = spec.tree
    if spec.v and tonumber(spec.v) ~= 1 then
      tree = nil -- an unknown version: never satisfied by a signal
    end
    return {composite = true, tree = tree, matchers = {}, satisfied_count = 0, closed = false}
  end
  local names = list_of(spec.required_signal_names)
  local matchers = {}
  for i, name in ipairs(names) do
    matchers[i] = {name = name, satisfied = false, signal_id = ""}
  end
  if #matchers == 0 then
    matchers[1] = {name = "", satisfied = false, signal_id = ""} -- any signal
  end
  return {
    condition_type = spec.condition_type or "signal_set",
    match_mode = spec.signal_match_mode or "any",
    minimum_signal_count = tonumber(spec.minimum_signal_count or "1"),
    matchers = matchers,
    satisfied_count = 0,
    closed = false,
  }
end

function resume_condition.write(key, condition, now)
  if condition.composite then
    redis.call("HSET", key,
      "condition_type", "composite",
      "composite", "1",
      "match_mode", "composite",
      "minimum_signal_count", "1",
      "total_matchers", "0",
      "satisfied_count", "0",
      "closed", condition.closed and "1" or "0",
      "updated_at", tostring(now),
      "tree_json", condition.tree and cjson.encode(condition.tree) or "")
    return
  end
  local fields = {
    "condition_type", condition.condition_type,
    "match_mode", condition.match_mode,
    "minimum_signal_count", tostring(condition.minimum_signal_count),
    "total_matchers", tostring(#condition.matchers),
    "satisfied_count", tostring(condition.satisfied_count),
    "closed", condition.closed and "1" or "0",
    "updated_at", tostring(now),
  }
  for i, matcher in ipairs(condition.matchers) do
    local prefix = "matcher:" .. (i - 1) .. ":"
    put(fields,
      prefix .. "name", matcher.name,
      prefix .. "satisfied", matcher.satisfied and "1" or "0",
      prefix .. "signal_id", matcher.signal_id)
  end
  hset(key, fields)
end

-- Mark the first open matcher the signal fits; true when one did.
function resume_condition.match(condition, signal_name, signal_id)
  for _, matcher in ipairs(condition.matchers) do
    if not matcher.satisfied and (matcher.name == "" or matcher.name == signal_name) then
      matcher.satisfied, matcher.signal_id = true, signal_id or ""
      condition.satisfied_count = condition.satisfied_count + 1
      return true
    end
  end
  return false
end

-- Whether `count` satisfied matchers out of `total` meet the mode.
function resume_condition.met(mode, count, minimum, total)
  if mode == "all" then
    return count >= total
  end
  return count >= (minimum or 1)
end

-- Composite tree nodes a signal on `waitpoint_key` can count towards, in DFS order.
function resume_condition.candidates(tree, waitpoint_key)
  local found = {}
  local function visit(node)
    if type(node) ~= "table" then
      return
    end
    if node.kind == "Single" then
      if node.waitpoint_key == waitpoint_key then
        found[#found + 1] = node
      end
    elseif node.kind == "Count" then
      for _, key in ipairs(list_of(node.waitpoints)) do
        if key == waitpoint_key then
          found[#found + 1] = node
          break
        end
      end
    elseif node.kind == "AllOf" then
      for _, child in ipairs(list_of(node.members)) do
        visit(child)
      end
    end
  end
  visit(tree)
  return found
end

-- Diagnostics written once at suspend: wp:<waitpoint_key>:<node path> -> path.
function resume_condition.seed_member_map(member_map_key, tree, waitpoint_keys)
  local fields = {}
  for _, waitpoint_key in ipairs(waitpoint_keys) do
    for _, node in ipairs(resume_condition.candidates(tree, waitpoint_key)) do
      put(fields, "wp:" .. waitpoint_key .. ":" .. (node.path or ""), node.path or "")
    end
  end
  if #fields > 0 then
    hset(member_map_key, fields)
  end
end

local function accepts(matcher, signal_name)
  if type(matcher) ~= "table" or matcher.kind == nil or matcher.kind == "Wildcard" then
    return true
  end
  return matcher.kind == "ByName" and matcher.name == signal_name
end

-- The token a signal adds for a candidate node.
local function satisfier_token(node, signal, waitpoint_id)
  if node.kind == "Single" then
    return "leaf:" .. (node.path or "")
  elseif node.count_kind == "DistinctSignals" then
    return "sig:" .. signal.signal_id
  elseif node.count_kind == "DistinctSources" then
    return "src:" .. signal.source_type .. ":" .. signal.source_identity
  end
  return "wp:" .. waitpoint_id
end

-- Whether a node is satisfied by the tokens in the set (a table of token -> true).
-- Count nodes count every token of their kind's prefix in the whole set.
local function node_satisfied(node, tokens)
  if type(node) ~= "table" then
    return false
  end
  if node.kind == "Single" then
    return tokens["leaf:" .. (node.path or "")] == true
  elseif node.kind == "AllOf" then
    for _, child in ipairs(list_of(node.members)) do
      local prefix = child.kind == "Single" and "leaf:" or "node:"
      if not tokens[prefix .. (child.path or "")] then
        return false
      end
    end
    return true
  elseif node.kind == "Count" then
    if tokens["timeout:*"] then
      return true
    end
    local prefix = "src:"
    if node.count_kind == nil or node.count_kind == "DistinctWaitpoints" then
      prefix = "wp:"
    elseif node.count_kind == "DistinctSignals" then
      prefix = "sig:"
    end
    local count = 0
    for token in pairs(tokens) do
      if string.sub(token, 1, #prefix) == prefix then
        count = count + 1
      end
    end
    return count >= (tonumber(node.n) or 1)
  end
  return false
end

local function token_set(set_key)
  local tokens = {}
  for _, token in ipairs(redis.call("SMEMBERS", set_key)) do
    tokens[token] = true
  end
  return tokens
end

-- Count a delivered signal towards a composite condition. Returns the effect,
-- and when the whole tree is now satisfied, the JSON array of satisfier signals.
function resume_condition.deliver_composite(tree, suspension_key, waitpoint_id, waitpoint_key, signal)
  local set_key = suspension_key .. ":satisfied_set"
  local candidates = resume_condition.candidates(tree, waitpoint_key)
  if #candidates == 0 then
    return "signal_ignored_not_in_condition"
  end
  local accepted, added = false, false
  for _, node in ipairs(candidates) do
    if accepts(node.matcher, signal.signal_name) then
      accepted = true
      if redis.call("SADD", set_key, satisfier_token(node, signal, waitpoint_id)) == 1 then
        added = true
        redis.call("SADD", set_key .. ":signals", signal.signal_id)
      end
    end
  end
  if not accepted then
    return "signal_ignored_matcher_failed"
  end
  if not added then
    return "appended_to_waitpoint_duplicate"
  end

  local tokens = token_set(set_key)
  -- Record newly satisfied inner nodes of AllOf nodes as node:<path> tokens.
  local function propagate(node)
    if type(node) ~= "table" or node.kind ~= "AllOf" then
      return
    end
    for _, child in ipairs(list_of(node.members)) do
      if child.kind ~= "Single" and node_satisfied(child, tokens) then
        local token = "node:" .. (child.path or "")
        if redis.call("SADD", set_key, token) == 1 then
          tokens[token] = true
        end
        propagate(child)
      end
    end
  end
  propagate(tree)
  if node_satisfied(tree, tokens) then
    return "resume_condition_satisfied", cjson.encode(redis.call("SMEMBERS", set_key .. ":signals"))
  end
  return "appended_to_waitpoint"
end
