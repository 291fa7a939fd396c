"""The forecast store's record layout and Lua scripts (layout v3; :mod:`minutecast.forecast_store` is the
store itself and its codec, :mod:`minutecast.forecast_migrate` converts older layouts).

Record (little endian, :data:`RECORD`, :data:`R` = 85 bytes): as_of u32; one byte whose top bit
(:data:`HAS_SUM`) says the forecast has a window checksum and whose low 7 bits are the string-set id (0: the
record is *raw*, its JSON in the meta hash); window_ready_at f64; window checksum 8 bytes; published_at
(:data:`NO_PUB`: none) and forecast_at as i32 counts of :data:`TICK` after window_ready_at; last_close, q05,
q10, q50 (= predicted_close), q90, q95 as f64; log_s80, log_s90 as f32 (the online calibration keeps them
float32-exact). sigma is not stored: it is a function of q10 and q90 (:func:`minutecast.intervals.implied_sigma`).
v2's record was 102 bytes (flags apart, sigma and the scales as f64): 120 records of 85 bytes take Redis's
10 kB allocation class instead of 12 kB. The scripts read as_of (offset 1), the id byte (5),
window_ready_at (6) and the checksum (14..21) only.
"""

from __future__ import annotations

import hashlib
import struct

RECORD = struct.Struct("<IBd8sii6d2f")
R = RECORD.size  # 85 bytes
HAS_SUM = 0x80  # the id byte's top bit: the forecast has a window checksum
NO_PUB = -2**31  # published_at offset meaning "none"
TICK = 2.0 ** -22  # unit of the i32 timestamp offsets (s): the spacing of float64 epoch seconds in 2004..2038

# --- Lua: shared helpers (R and the offsets above) -------------------------------------------------------
_LUA_HEAD = f"local R = {R}\n" + r"""
local function check(blob, key)
  if #blob % R ~= 0 then error('forecast store: ' .. key .. ' is not a fc3 record string') end
  return #blob / R
end
local function asof(blob, i) return (struct.unpack('<I4', blob, (i - 1) * R + 1)) end
-- the meta fields a record needs to be decoded: its strings (once per reply) and, if raw, its JSON
local seen = {}
local function sid_of(b) return b % 128 end  -- the id byte's low 7 bits (0: raw)
local function aux(meta, rec, out)
  local sid = sid_of(string.byte(rec, 5))
  if sid > 0 and not seen[meta .. sid] then
    seen[meta .. sid] = true
    out[#out + 1] = 's:' .. sid; out[#out + 1] = redis.call('HGET', meta, 's:' .. sid) or ''
  end
  if sid == 0 then
    local f = 'j:' .. struct.unpack('<I4', rec)
    out[#out + 1] = f; out[#out + 1] = redis.call('HGET', meta, f) or ''
  end
  return out
end
"""

# KEYS[1] records, KEYS[2] meta. ARGV[1] the new record ('' = calibration only), ARGV[2] its strings ('' for
# a raw record), ARGV[3] its JSON if raw, ARGV[4] history length, ARGV[5] the state's through, ARGV[6]
# log_s80, ARGV[7] log_s90 (repr: exact), ARGV[8] TTL (s). Returns {1 written / 2 corrected}, or {0, the
# stored record, its aux fields} (a replay, an older event, a re-announcement of the same window).
WRITE_LUA = _LUA_HEAD + r"""
local rec, strs, raw, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {1}
if rec ~= '' then
  local blob = redis.call('GET', KEYS[1]) or ''
  local n = check(blob, KEYS[1])
  local t = struct.unpack('<I4', rec)
  local pos, found = n + 1, nil
  for i = n, 1, -1 do
    local a = asof(blob, i)
    if a == t then found = i; break end
    if a < t then break end
    pos = i
  end
  if found then
    local old = string.sub(blob, (found - 1) * R + 1, found * R)
    local was, ready = struct.unpack('<d', old, 6), struct.unpack('<d', rec, 6)
    if string.byte(rec, 5) >= 128 and ready > was
        and (string.byte(old, 5) < 128 or string.sub(old, 14, 21) ~= string.sub(rec, 14, 21)) then
      out[1] = 2
    else
      out = {0, old, aux(KEYS[2], old, {})}
    end
  end
  if out[1] > 0 then
    if strs ~= '' then
      local id = redis.call('HGET', KEYS[2], 'i:' .. strs)
      if not id then  -- a new string set: drop those no record uses, take the smallest free id
        local used = {}
        for i = 1, n do used[sid_of(string.byte(blob, (i - 1) * R + 5))] = true end
        local m = redis.call('HGETALL', KEYS[2])
        local taken = {}
        for i = 1, #m, 2 do
          local s = string.match(m[i], '^s:(%d+)$')
          if s then
            if used[tonumber(s)] then taken[tonumber(s)] = true
            else redis.call('HDEL', KEYS[2], m[i], 'i:' .. m[i + 1]) end
          end
        end
        id = 1
        while taken[id] do id = id + 1 end
        if id > 127 then error('forecast store: over 127 string sets in ' .. KEYS[2]) end
        redis.call('HSET', KEYS[2], 's:' .. id, strs, 'i:' .. strs, id)
      end
      local sum = string.byte(rec, 5) - sid_of(string.byte(rec, 5))  -- HAS_SUM or 0
      rec = string.sub(rec, 1, 4) .. string.char(sum + tonumber(id)) .. string.sub(rec, 6)
    end
    if found then
      if sid_of(string.byte(blob, (found - 1) * R + 5)) == 0 then redis.call('HDEL', KEYS[2], 'j:' .. t) end
      blob = string.sub(blob, 1, (found - 1) * R) .. rec .. string.sub(blob, found * R + 1)
    else
      blob = string.sub(blob, 1, (pos - 1) * R) .. rec .. string.sub(blob, (pos - 1) * R + 1)
      n = n + 1
    end
    if raw ~= '' then redis.call('HSET', KEYS[2], 'j:' .. t, raw) end
    if n > keep then
      for i = 1, n - keep do
        if sid_of(string.byte(blob, (i - 1) * R + 5)) == 0 then redis.call('HDEL', KEYS[2], 'j:' .. asof(blob, i)) end
      end
      blob = string.sub(blob, (n - keep) * R + 1)
    end
    redis.call('SET', KEYS[1], blob)
  end
end
if tonumber(ARGV[5]) > tonumber(redis.call('HGET', KEYS[2], 'through') or '0') then
  redis.call('HSET', KEYS[2], 'log_s80', ARGV[6], 'log_s90', ARGV[7], 'through', ARGV[5])
end
local ttl = tonumber(ARGV[8])
for i = 1, 2 do redis.call('EXPIRE', KEYS[i], ttl) end
return out
"""

# KEYS[1] records, KEYS[2] meta; ARGV[1] as-of minute t, ARGV[2] horizon (s). Returns {through, log_s80,
# log_s90 ('' when absent), the records whose target (as-of + horizon) is in (through, t], their aux fields}:
# only the outcomes not yet applied travel, not the whole history.
READ_LUA = _LUA_HEAD + r"""
local m = redis.call('HMGET', KEYS[2], 'through', 'log_s80', 'log_s90')
local through, t, h = tonumber(m[1] or '0'), tonumber(ARGV[1]), tonumber(ARGV[2])
local blob = redis.call('GET', KEYS[1]) or ''
local due, out = {}, {}
for i = check(blob, KEYS[1]), 1, -1 do
  local a = asof(blob, i)
  if a + h <= through then break end
  if a + h <= t then
    local rec = string.sub(blob, (i - 1) * R + 1, i * R)
    table.insert(due, 1, rec)
    aux(KEYS[2], rec, out)
  end
end
return {m[1] or '', m[2] or '', m[3] or '', table.concat(due), out}
"""

# KEYS: records, meta of each ticker (pairs); ARGV[1] how many of the newest records (1: the latest).
# Returns {records, aux fields} per ticker ('' and {} for a ticker without forecasts).
NEWEST_LUA = _LUA_HEAD + r"""
local out = {}
for k = 1, #KEYS, 2 do
  local blob = redis.call('GETRANGE', KEYS[k], -R * tonumber(ARGV[1]), -1)
  check(blob, KEYS[k])
  local fields = {}
  for i = 1, #blob / R do aux(KEYS[k + 1], string.sub(blob, (i - 1) * R + 1, i * R), fields) end
  out[#out + 1] = blob; out[#out + 1] = fields
end
return out
"""

SCRIPTS = (WRITE_LUA, READ_LUA, NEWEST_LUA)
SHA = {src: hashlib.sha1(src.encode()).hexdigest() for src in SCRIPTS}  # what SCRIPT LOAD answers  # noqa: S324


