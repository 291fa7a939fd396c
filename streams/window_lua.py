"""The window store's Lua scripts (:class:`streams.window_store.WindowStore` loads them once, then EVALSHA).

``STORE_LUA`` applies a batch of bars under the rules of :mod:`streams.window_store`'s docstring, keeps
each ticker's readiness up to date and moves the applied record; ``ANNOUNCE_LUA`` records the window
announced per ticker; ``MARK_LUA`` moves the applied record alone (never down).

The value layout (one string per ticker, v4) is :mod:`streams.window_store`'s; this file only follows it:
a 40-byte header (``'MCW4'``, row count n as uint32, the announced minute and its 16-hex-digit checksum,
the newest row's ``published_at``), then n rows of ``minute open high low close volume`` (48 bytes), then n
slot counters (8 bytes), every number a little-endian float64, rows ascending by minute.
The slot counter of a row is the number of policy slots (:mod:`minutecast.window`) from the first stored
row to it, plus a base that does not matter (trimming the oldest row leaves the others as they are):
so readiness and the window's first slot are O(1) and O(log n) lookups, never a walk over the window.
Only the newest row's ``published_at`` is kept (the one the script returns): an older row's was never read.
"""

from __future__ import annotations

from minutecast.window import MAX_FILL, WINDOW

# KEYS: [stats, applied, win(T1), win(T2), ...]
# ARGV: [ttl_s, retain (bars), roundtrips, messages, counter prefix, offsets, bars(T1), bars(T2), ...]
#   offsets = "partition first last\n..." of the Kafka records the call covers ('' = no check, no record):
#   when the applied record of a partition is missing or below first - 1 (Redis lost acknowledged writes,
#   e.g. the un-fsynced second of its AOF), nothing is written and {'gap', {partition, applied or '',
#   first}, ...} is returned; otherwise the record moves up to last with the bars, in the same call.
#   bars(T) = the ticker's bars in delivery order, 56 bytes each: minute open high low close volume
#   published_at (float64 LE; published_at NaN when unknown).
# Returns per ticker: {newest minute (-1: none stored), ready (1/0: the window at the newest bar exists),
# its checksum ('' when not ready), published_at bytes of the newest bar (8), announced minute (-1: none),
# announced checksum ('' none), late indexes, conflict indexes} (indexes: 0-based among that ticker's bars).
#
# Cost per ticker: one GET and one SET of the value (~5.1 kB at RETAIN bars), however many bars it gets; an
# in-order bar is an append to a list (and a trim of the oldest row: a moved index), O(1) Lua steps; only an
# out-of-order bar folds the lists into the strings, shifts rows and recounts the slot counters above it.
STORE_LUA = r"""
local HDR, ROW, WINDOW, MAX_FILL = 40, 48, __WINDOW__, __MAX_FILL__
local ttl = tonumber(ARGV[1])
local retain = tonumber(ARGV[2])
local pfx = ARGV[5]
local marks, gaps = {}, {}
for p, first, last in string.gmatch(ARGV[6], '(%d+) (%d+) (%d+)') do
  local cur = redis.call('HGET', KEYS[2], p)
  if (not cur) or tonumber(cur) + 1 < tonumber(first) then
    gaps[#gaps + 1] = {p, cur or '', first}
  elseif tonumber(last) > tonumber(cur) then
    marks[#marks + 1] = p
    marks[#marks + 1] = last
  end
end
if #gaps > 0 then return {'gap', gaps} end

local pack, unpack_ = struct.pack, struct.unpack
local function f64(s, pos) return (unpack_('<d', s, pos)) end
local c_in, c_new, c_dup, c_late, c_conf = 0, 0, 0, 0, 0
local out = {}
for i = 1, #KEYS - 2 do
  local key = KEYS[i + 2]
  local blob = redis.call('GET', key)
  local n, ann_t, ann_sum, pubn = 0, -1, '', ''
  local rows, cums = '', ''
  if blob then
    if string.sub(blob, 1, 4) ~= 'MCW4' then return redis.error_reply('window layout: ' .. key .. ' is not MCW4') end
    n = unpack_('<I4', blob, 5)
    ann_t = f64(blob, 9)
    ann_sum = string.sub(blob, 17, 32)
    if string.byte(ann_sum, 1) == 0 then ann_sum = '' end
    pubn = string.sub(blob, 33, 40)
    rows = string.sub(blob, HDR + 1, HDR + ROW * n)
    cums = string.sub(blob, HDR + ROW * n + 1, HDR + ROW * n + 8 * n)
  end
  -- In-order bars append to lists and trim by moving `drop` (or `a0`), so a batch of many bars costs one copy
  -- of the value at the end; an out-of-order bar first folds the lists into the strings (`fold`).
  local nb, drop, a0 = n, 0, 1  -- rows in the strings, of which the first `drop` are trimmed; lists from a0
  local A_rows, A_cums = {}, {}
  local function minute_at(k)
    if k <= nb - drop then return f64(rows, ROW * (k + drop - 1) + 1) end
    return f64(A_rows[a0 + k - (nb - drop) - 1], 1)
  end
  local function close_at(k)
    if k <= nb - drop then return f64(rows, ROW * (k + drop - 1) + 33) end
    return f64(A_rows[a0 + k - (nb - drop) - 1], 33)
  end
  local function cum_at(k)
    if k <= nb - drop then return f64(cums, 8 * (k + drop - 1) + 1) end
    return f64(A_cums[a0 + k - (nb - drop) - 1], 1)
  end
  local function row_at(k)  -- the 48 bytes of row k
    if k <= nb - drop then return string.sub(rows, ROW * (k + drop - 1) + 1, ROW * (k + drop)) end
    return A_rows[a0 + k - (nb - drop) - 1]
  end
  local function fold()
    if drop == 0 and a0 > #A_rows then return end
    rows = string.sub(rows, ROW * drop + 1) .. table.concat(A_rows, '', a0)
    cums = string.sub(cums, 8 * drop + 1) .. table.concat(A_cums, '', a0)
    nb, drop, a0, A_rows, A_cums = n, 0, 1, {}, {}
  end
  local function slots_before(k)  -- slots the policy gives row k (k > 1): itself plus fills, none after a gap
    local miss = (minute_at(k) - minute_at(k - 1)) / 60 - 1
    if miss > MAX_FILL then return 1 end
    return 1 + miss
  end
  local function recount(k)  -- slot counters of rows k..n after an insertion at k (strings folded)
    local parts = {string.sub(cums, 1, 8 * (k - 1))}
    local c = 0
    if k > 1 then c = cum_at(k - 1) end
    for j = k, n do
      if j == 1 then c = 0 else c = c + slots_before(j) end
      parts[#parts + 1] = pack('<d', c)
    end
    cums = table.concat(parts)
  end
  local arg = ARGV[6 + i]
  local nbars = #arg / 56
  local late, conf = {}, {}
  local changed = false
  for j = 0, nbars - 1 do
    local p = 56 * j + 1
    local t = f64(arg, p)
    local row, pub = string.sub(arg, p, p + 47), string.sub(arg, p + 48, p + 55)
    if n == 0 or t > minute_at(n) then  -- in order: append
      local c = 0
      if n > 0 then
        local miss = (t - minute_at(n)) / 60 - 1
        c = cum_at(n) + 1
        if miss <= MAX_FILL then c = c + miss end
      end
      A_rows[#A_rows + 1], A_cums[#A_cums + 1] = row, pack('<d', c)
      pubn = pub  -- the newest row's, the only one kept
      n = n + 1
      c_new, changed = c_new + 1, true
    else
      local lo, hi = 1, n  -- the first row at or after t
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if minute_at(mid) < t then lo = mid + 1 else hi = mid end
      end
      if minute_at(lo) == t then
        -- stored (or written earlier in this call): the first value stays; published_at may differ
        if string.sub(row_at(lo), 9) == string.sub(row, 9, 48) then
          c_dup = c_dup + 1
        else
          conf[#conf + 1] = j
        end
      elseif n >= retain and lo == 1 then
        late[#late + 1] = j  -- older than the oldest row of a full store: never among the newest `retain`
      else
        fold()
        local a = lo - 1
        rows = string.sub(rows, 1, ROW * a) .. row .. string.sub(rows, ROW * a + 1)
        cums = string.sub(cums, 1, 8 * a) .. pack('<d', 0) .. string.sub(cums, 8 * a + 1)
        n = n + 1
        nb = n
        recount(lo)
        c_new, changed = c_new + 1, true
      end
    end
    if n > retain then  -- trim the oldest row; the others keep their counters (the base does not matter)
      if drop < nb then drop = drop + 1 else a0 = a0 + 1 end
      n = n - 1
    end
  end
  fold()
  c_in = c_in + nbars
  c_late = c_late + #late
  c_conf = c_conf + #conf
  if changed then
    local pad = ann_sum
    if pad == '' then pad = string.rep('\0', 16) end
    redis.call('SET', key, 'MCW4' .. pack('<I4', n) .. pack('<d', ann_t) .. pad .. pubn .. rows .. cums, 'EX', ttl)
  elseif n > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  -- readiness of the window at the newest bar (policy v2): WINDOW slots from the first row up to it
  local newest, ready, sum = -1, 0, ''
  if n > 0 then
    newest = minute_at(n)
    local base = cum_at(1)
    local rel = cum_at(n) - base
    if rel >= WINDOW - 1 then
      ready = 1
      local f = rel - (WINDOW - 1)  -- the window's first slot
      local lo, hi = 1, n  -- the first row at or after slot f
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if cum_at(mid) - base < f then lo = mid + 1 else hi = mid end
      end
      local head
      if cum_at(lo) - base == f then  -- a real bar opens the window
        local gap, prev = 1, close_at(lo)
        if lo > 1 then
          prev = close_at(lo - 1)
          if (minute_at(lo) - minute_at(lo - 1)) / 60 - 1 <= MAX_FILL then gap = 0 end
        end
        head = pack('<dddd', minute_at(lo), 0, gap, prev)
      else  -- a fill of the row before opens it
        local k = lo - 1
        head = pack('<dddd', minute_at(k) + 60 * (f - (cum_at(k) - base)), 1, 0, close_at(k))
      end
      sum = string.sub(redis.sha1hex(head .. string.sub(rows, ROW * (lo - 1) + 1, ROW * n)), 1, 16)
    end
  end
  out[i] = {newest, ready, sum, pubn, ann_t, ann_sum, late, conf}
end
redis.call('HINCRBY', KEYS[1], pfx .. 'bars', c_in)
redis.call('HINCRBY', KEYS[1], pfx .. 'new', c_new)
redis.call('HINCRBY', KEYS[1], pfx .. 'dup', c_dup)
redis.call('HINCRBY', KEYS[1], pfx .. 'late', c_late)
redis.call('HINCRBY', KEYS[1], pfx .. 'conflict', c_conf)
redis.call('HINCRBY', KEYS[1], pfx .. 'roundtrips', tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[1], pfx .. 'messages', tonumber(ARGV[4]))
-- last: a script error above leaves the record where it was
if #marks > 0 then redis.call('HSET', KEYS[2], unpack(marks)) end
return out
""".replace("__WINDOW__", str(WINDOW)).replace("__MAX_FILL__", str(MAX_FILL))

# KEYS: [win(T1), ...]; ARGV: [minute(T1), checksum(T1), ...]: the announced window goes into each header
# (bytes 9..32); a key that expired meanwhile is not recreated.
ANNOUNCE_LUA = r"""
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('SETRANGE', KEYS[i], 8, struct.pack('<d', tonumber(ARGV[2 * i - 1])) .. ARGV[2 * i])
  end
end
return 0
"""

# KEYS: [applied]; ARGV: [partition, offset, ...]: each partition's record moves up to offset, never down.
MARK_LUA = r"""
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (not cur) or tonumber(ARGV[i + 1]) > tonumber(cur) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""
