"""The Redis limiter's Lua scripts: a line-for-line mirror of policies/ratelimit.py, run atomically by
Redis with Redis's own clock (``TIME``), so any number of gateway replicas enforce one limit.

admit:  KEYS = limit keys..., ledger key
        ARGV = m, then per request: lease_id, lease_ttl_us, prompt, completion, clamp(0/1),
               min_completion; then kind, capacity, window_us per limit key
        -> per request, in order: {admitted, now_us, completion, retry_us (-1: never fits),
            refused_index (-1), seq, req_limit, req_remaining, req_reset_us, tok_limit, tok_remaining,
            tok_reset_us} (-1: none), 12 numbers each. The m requests (of one key's limits) are decided
            in order at one instant, as m calls in a row at that instant would decide them; each limit
            is read once and written once.
settle: KEYS = limit keys (tokens, quota, concurrency)..., ledger key (the same for every lease)
        ARGV = m, then lease_id, delta_tokens, admitted_us per lease, then kind, capacity, window_us
        per limit key -> {now_us, seq of the last}: m settlements in their order, at one instant, with
        the same result as m calls in a row at that instant (each limit read once, written once)
refresh: KEYS = concurrency keys; ARGV = lease_ttl_us, one lease id per key -> count refreshed

Numbers are written with '%.0f' (Lua's default tostring keeps only 14 digits) and every value stays
below 2**53, so doubles are exact. Bucket hash: l (scaled level), t (updated_us), w (window_us);
quota hash: u (used), p (period); concurrency: sorted set of lease ids scored by expiry (us);
ledger hash: charged (net tokens), open (leases not yet settled), seq (operation counter).
"""

from __future__ import annotations

_COMMON = """
local function fdiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function cdiv(a, b) return -fdiv(-a, b) end
local function num(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function refill(level, updated, c, w)
  local full = c * w
  if level >= full then return full end
  local elapsed = now - updated
  if elapsed <= 0 then return level end
  if elapsed >= cdiv(full - level, c) then return full end
  return level + elapsed * c
end

local function load_bucket(key, c, w)
  local v = redis.call('HMGET', key, 'l', 't', 'w')
  if not v[1] then return nil end
  local level = tonumber(v[1])
  local old_w = tonumber(v[3])
  if old_w ~= w then level = fdiv(level, old_w) * w end
  return refill(level, tonumber(v[2]), c, w)
end

local function save_bucket(key, level, c, w)
  redis.call('HSET', key, 'l', num(level), 't', num(now), 'w', num(w))
  local reset = cdiv(c * w - level, c)
  redis.call('PEXPIRE', key, num(cdiv(reset, 1000) + 1000))
end
"""

ADMIT = _COMMON + """
local m = tonumber(ARGV[1])
local n = #KEYS - 1
local ledger = KEYS[n + 1]
local limits = 1 + 6 * m
local kind, cap, win, state, changed = {}, {}, {}, {}, {}
for i = 1, n do
  local base = limits + (i - 1) * 3
  kind[i] = tonumber(ARGV[base + 1])
  cap[i] = tonumber(ARGV[base + 2])
  win[i] = tonumber(ARGV[base + 3])
  if kind[i] <= 2 then
    state[i] = load_bucket(KEYS[i], cap[i], win[i]) or cap[i] * win[i]
  elseif kind[i] == 3 then
    local v = redis.call('HMGET', KEYS[i], 'u', 'p')
    if v[1] and tonumber(v[2]) == fdiv(now, win[i]) then state[i] = tonumber(v[1]) else state[i] = 0 end
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', num(now))
    state[i] = redis.call('ZCARD', KEYS[i])
  end
end

local function report(k)
  local best_limit, best_remaining, best_reset = -1, -1, -1
  for i = 1, n do
    if kind[i] == k then
      local remaining = math.max(0, fdiv(state[i], win[i]))
      local reset = math.max(0, cdiv(cap[i] * win[i] - state[i], cap[i]))
      if best_limit < 0 or remaining < best_remaining
          or (remaining == best_remaining and cap[i] < best_limit) then
        best_limit, best_remaining, best_reset = cap[i], remaining, reset
      end
    end
  end
  return best_limit, best_remaining, best_reset
end

local out, seq_at, members, charged, last_ttl = {}, {}, {}, 0, 0
for j = 1, m do
  local a = 1 + 6 * (j - 1)
  local lease_id = ARGV[a + 1]
  local ttl = tonumber(ARGV[a + 2])
  local prompt = tonumber(ARGV[a + 3])
  local completion = tonumber(ARGV[a + 4])
  local clamp = ARGV[a + 5] == '1'
  local min_completion = tonumber(ARGV[a + 6])

  if clamp then
    local room = nil
    for i = 1, n do
      local left = nil
      if kind[i] == 2 then left = fdiv(state[i], win[i]) - prompt
      elseif kind[i] == 3 then left = cap[i] - state[i] - prompt end
      if left ~= nil and (room == nil or left < room) then room = left end
    end
    if room ~= nil and room < completion then completion = math.max(room, min_completion) end
  end
  local cost = prompt + completion

  local refused, wait, impossible = -1, 0, false
  for i = 1, n do
    local ok, need
    if kind[i] == 1 then
      ok = state[i] >= win[i]
      if 1 > cap[i] then need = nil else need = math.max(0, cdiv(win[i] - state[i], cap[i])) end
    elseif kind[i] == 2 then
      ok = cost <= cap[i] and state[i] >= cost * win[i]
      if cost > cap[i] then need = nil else need = math.max(0, cdiv(cost * win[i] - state[i], cap[i])) end
    elseif kind[i] == 3 then
      ok = state[i] + cost <= cap[i]
      if cost > cap[i] then need = nil else need = (fdiv(now, win[i]) + 1) * win[i] - now end
    else
      ok = state[i] < cap[i]
      need = 1000000
    end
    if not ok then
      if refused < 0 then refused = i - 1 end
      if need == nil then impossible = true else wait = math.max(wait, need) end
    end
  end

  if refused < 0 then
    for i = 1, n do
      if kind[i] == 1 then state[i] = state[i] - win[i]
      elseif kind[i] == 2 then state[i] = state[i] - cost * win[i]
      elseif kind[i] == 3 then state[i] = state[i] + cost
      else state[i] = state[i] + 1 end
      changed[i] = true
    end
    members[#members + 1] = num(now + ttl)
    members[#members + 1] = lease_id
    last_ttl = ttl
    charged = charged + cost
    seq_at[#seq_at + 1] = #out + 6
    wait = 0
  elseif impossible then
    wait = -1
  end
  local rl, rr, rt = report(1)
  local tl, tr, tt = report(2)
  local reply = {refused < 0 and 1 or 0, now, completion, wait, refused, 0, rl, rr, rt, tl, tr, tt}
  for x = 1, 12 do out[#out + 1] = reply[x] end
end

for i = 1, n do
  if changed[i] then
    if kind[i] <= 2 then
      save_bucket(KEYS[i], state[i], cap[i], win[i])
    elseif kind[i] == 3 then
      redis.call('HSET', KEYS[i], 'u', num(state[i]), 'p', num(fdiv(now, win[i])))
      local reset = (fdiv(now, win[i]) + 1) * win[i] - now
      redis.call('PEXPIRE', KEYS[i], num(cdiv(reset, 1000) + 3600000))
    else
      redis.call('ZADD', KEYS[i], unpack(members))
      redis.call('PEXPIRE', KEYS[i], num(cdiv(2 * last_ttl, 1000)))
    end
  end
end
if #seq_at > 0 then
  redis.call('HINCRBY', ledger, 'charged', num(charged))
  redis.call('HINCRBY', ledger, 'open', #seq_at)
  local last = redis.call('HINCRBY', ledger, 'seq', #seq_at)
  for k = 1, #seq_at do out[seq_at[k]] = last - #seq_at + k end
end
return out
"""

SETTLE = _COMMON + """
local m = tonumber(ARGV[1])
local n = #KEYS - 1
local limits = 1 + 3 * m
local total = 0
for j = 1, m do total = total + tonumber(ARGV[3 * j]) end
for i = 1, n do
  local base = limits + (i - 1) * 3
  local k = tonumber(ARGV[base + 1])
  local c = tonumber(ARGV[base + 2])
  local w = tonumber(ARGV[base + 3])
  if k == 2 then
    local level, changed = load_bucket(KEYS[i], c, w), false
    local full = c * w
    for j = 1, m do
      local delta = tonumber(ARGV[3 * j])
      if delta ~= 0 and (level ~= nil or delta > 0) then
        level = math.max(-full, math.min(full, (level or full) - delta * w))
        changed = true
      end
    end
    if changed then save_bucket(KEYS[i], level, c, w) end
  elseif k == 3 then
    local v = redis.call('HMGET', KEYS[i], 'u', 'p')
    if v[1] then
      local used, changed = tonumber(v[1]), false
      for j = 1, m do
        local delta = tonumber(ARGV[3 * j])
        if delta ~= 0 and tonumber(v[2]) == fdiv(tonumber(ARGV[3 * j + 1]), w) then
          used = math.max(0, used + delta)
          changed = true
        end
      end
      if changed then redis.call('HSET', KEYS[i], 'u', num(used)) end
    end
  elseif k == 4 then
    local ids = {}
    for j = 1, m do ids[j] = ARGV[3 * j - 1] end
    redis.call('ZREM', KEYS[i], unpack(ids))
  end
end
local ledger = KEYS[n + 1]
redis.call('HINCRBY', ledger, 'charged', num(total))
redis.call('HINCRBY', ledger, 'open', -m)
local seq = redis.call('HINCRBY', ledger, 'seq', m)
return {now, seq}
"""

REFRESH = _COMMON + """
local ttl = tonumber(ARGV[1])
local refreshed = 0
for i = 1, #KEYS do
  refreshed = refreshed + redis.call('ZADD', KEYS[i], 'XX', 'CH', num(now + ttl), ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], num(cdiv(2 * ttl, 1000)))
end
return refreshed
"""
