"""The window store's Lua scripts (:class:`streams.window_store.WindowStore` loads them once, then EVALSHA).

``STORE_LUA`` applies a batch of bars under the rules of :mod:`streams.window_store`'s docstring and moves
the applied record; ``MARK_LUA`` moves the applied record alone (never down).
"""

from __future__ import annotations

# KEYS: [stats, applied, win(T1), meta(T1), win(T2), meta(T2), ...]
# ARGV: [ttl_s, retain (bars), view (bars), roundtrips, messages, counter prefix, offsets, bars(T1), ...]
#   offsets = "partition first last\n..." of the Kafka records the call covers ('' = no check, no record):
#   when the applied record of a partition is missing or below first - 1 (Redis lost acknowledged writes,
#   e.g. the un-fsynced second of its AOF), nothing is written and {'gap', {partition, applied or '',
#   first}, ...} is returned; otherwise the record moves up to last with the bars, in the same call.
#   bars(T) = "minute\nvalue\nminute\nvalue..." (one string per ticker: far cheaper to encode and send
#   than two arguments per bar)
# Returns per ticker: {newest, ready, sum, late-indexes, conflict-indexes, "minute\nvalue\n..." rows}
# (indexes are 0-based positions among that ticker's bars in the call; rows: the newest `view` minutes).
#
# Per ticker the retained minutes live in a sorted Lua array arr[h..e] (ascending): in-order bars append
# at e, trimming the oldest moves h, so a backfill costs O(1) per bar; an out-of-order bar shifts the
# minutes above it. Only the final set is written back (one HSET, at most one HDEL).
STORE_LUA = r"""
local ttl = tonumber(ARGV[1])
local retain = tonumber(ARGV[2])
local view = tonumber(ARGV[3])
local pfx = ARGV[6]
local out = {}
local nt = (#KEYS - 2) / 2
local marks, gaps = {}, {}
for p, first, last in string.gmatch(ARGV[7], '(%d+) (%d+) (%d+)') do
  local cur = redis.call('HGET', KEYS[2], p)
  if (not cur) or tonumber(cur) + 1 < tonumber(first) then
    gaps[#gaps + 1] = {p, cur or '', first}
  elseif tonumber(last) > tonumber(cur) then
    marks[#marks + 1] = p
    marks[#marks + 1] = last
  end
end
if #gaps > 0 then return {'gap', gaps} end
local c_in, c_new, c_dup, c_late, c_conf = 0, 0, 0, 0, 0
for i = 1, nt do
  local win = KEYS[2 * i + 1]
  local meta = KEYS[2 * i + 2]
  -- split on newlines with a plain find (memchr), several times faster than a pattern match
  local a, s, pos = {}, ARGV[7 + i], 1
  while true do
    local nl = string.find(s, '\n', pos, true)
    if not nl then
      if pos <= #s then a[#a + 1] = string.sub(s, pos) end
      break
    end
    a[#a + 1] = string.sub(s, pos, nl - 1)
    pos = nl + 1
  end
  local n = #a / 2
  local m = redis.call('HMGET', meta, 'max', 'ready', 'sum')
  local old_max = tonumber(m[1])
  -- stored: minute -> value; fname: minute -> field string; arr: the retained minutes, ascending
  local val, fname, fresh, arr = {}, {}, {}, {}
  local all = redis.call('HGETALL', win)
  for k = 1, #all, 2 do
    local t = tonumber(all[k])
    val[t] = all[k + 1]
    fname[t] = all[k]
    arr[#arr + 1] = t
  end
  -- a small hash keeps insertion order, which is minute order for in-order delivery: sort only if needed
  for k = 2, #arr do
    if arr[k] < arr[k - 1] then
      table.sort(arr)
      break
    end
  end
  local stored_min = arr[1]
  local h, e = 1, #arr
  local late, conf = {}, {}
  for j = 0, n - 1 do
    local f = a[1 + 2 * j]
    local v = a[2 + 2 * j]
    local t = tonumber(f)
    if e - h + 1 >= retain and t < arr[h] then
      -- older than the oldest retained minute of a full store: never among the newest `retain`
      late[#late + 1] = j
    elseif val[t] then
      -- stored (or written earlier in this call): the first value stays; published_at may differ
      local cur = val[t]
      if cur == v or string.match(cur, '^(.*) ') == string.match(v, '^(.*) ') then
        c_dup = c_dup + 1
      else
        conf[#conf + 1] = j
      end
    else
      val[t] = v
      fname[t] = f
      fresh[t] = true
      c_new = c_new + 1
      if e < h or t > arr[e] then
        e = e + 1
        arr[e] = t
      else
        local p = e
        while p >= h and arr[p] > t do
          arr[p + 1] = arr[p]
          p = p - 1
        end
        arr[p + 1] = t
        e = e + 1
      end
      if e - h + 1 > retain then h = h + 1 end
    end
  end
  c_in = c_in + n
  c_late = c_late + #late
  c_conf = c_conf + #conf
  -- write back: new minutes that survived, and stored minutes below the final oldest are trimmed
  local put = {}
  for k = h, e do
    local t = arr[k]
    if fresh[t] then
      put[#put + 1] = fname[t]
      put[#put + 1] = val[t]
    end
  end
  for k = 1, #put, 1000 do
    redis.call('HSET', win, unpack(put, k, math.min(k + 999, #put)))
  end
  if stored_min ~= nil and e >= h and stored_min < arr[h] then
    local del = {}
    for k = 1, #all, 2 do
      if tonumber(all[k]) < arr[h] then del[#del + 1] = all[k] end
    end
    for k = 1, #del, 1000 do
      redis.call('HDEL', win, unpack(del, k, math.min(k + 999, #del)))
    end
  end
  local newest = old_max or -1
  if e >= h and arr[e] > newest then newest = arr[e] end
  if old_max == nil or newest > old_max then redis.call('HSET', meta, 'max', newest) end
  redis.call('EXPIRE', win, ttl)
  redis.call('EXPIRE', meta, ttl)
  local rows = {}
  for k = math.max(h, e - view + 1), e do
    local t = arr[k]
    rows[#rows + 1] = fname[t]
    rows[#rows + 1] = val[t]
  end
  out[i] = {newest, m[2] or '', m[3] or '', late, conf, table.concat(rows, '\n')}
end
redis.call('HINCRBY', KEYS[1], pfx .. 'bars', c_in)
redis.call('HINCRBY', KEYS[1], pfx .. 'new', c_new)
redis.call('HINCRBY', KEYS[1], pfx .. 'dup', c_dup)
redis.call('HINCRBY', KEYS[1], pfx .. 'late', c_late)
redis.call('HINCRBY', KEYS[1], pfx .. 'conflict', c_conf)
redis.call('HINCRBY', KEYS[1], pfx .. 'roundtrips', tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[1], pfx .. 'messages', tonumber(ARGV[5]))
-- last: a script error above leaves the record where it was
if #marks > 0 then redis.call('HSET', KEYS[2], unpack(marks)) end
return out
"""


# KEYS: [applied]; ARGV: [partition, offset, ...]: each partition's record moves up to offset, never down.
MARK_LUA = r"""
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (not cur) or tonumber(ARGV[i + 1]) > tonumber(cur) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""
