--[[
merge.lua: a Redis Functions library (Redis 7.0+) whose one function writes
one source partition's partial into a region entry and recomputes the
entry's public fields from all partials, atomically.

It is one long file because Redis loads a library as one body: helpers
cannot come from other files.

The file is the library's body. `src/redis/function.rs` prepends the
`#!lua name=...` line and `local FUNCTION_NAME = '...'`, both named after a
hash of this text, so that two regionflow versions in one cluster never
replace each other's function. The body runs once, at FUNCTION LOAD: the
helpers and tables below are built once per server, not once per write as
they would be for EVALSHA, and aggregate specs are parsed once and cached.

An entry is a Redis hash holding one window's aggregate for one group key.
Each writer (one per Kafka source partition) owns a partial in the field
`_p:<topic>:<partition>`, stored as JSON {"e":<epoch>,"o":<offset>,"a":[...]}
with one element per aggregate, exactly as `Accumulator::to_partial`
(src/window/aggregate.rs) encodes it:
  count           integer
  sum             number
  min, max        number or null
  avg             [sum, count]
  distinct_count  1024 one-byte HyperLogLog registers as 2048 lower-case hex
                  characters, or "" when empty
  first, last     [event_time_ms, "value"] or null
A number that overflowed (sum, avg's sum) is the string "inf", "-inf" or
"NaN" wherever a number may stand; the public field renders it the same way.
The public fields (`window_start`, `window_end` and one per aggregate name)
are the merge of all partials.

Called as `FCALL <FUNCTION_NAME> 1 <key> <ARGV[1]> <ARGV[2]> ...`:

KEYS[1]   entry key
ARGV[1]   partial field name (`_p:<topic>:<partition>`)
ARGV[2]   epoch (integer)
ARGV[3]   offset (integer): the source position this write was produced at
ARGV[4]   mode: `r` replace the partial with ARGV[5]; `m` merge ARGV[5] into
          the stored partial (amend one late record; like `r` when there is
          none); `d` delete the partial (retract)
ARGV[5]   partial JSON {"e":..,"o":..,"a":[...]}: stored verbatim by `r`;
          for `m` its "a" is merged elementwise into the stored "a" and the
          result is stored with e/o from ARGV[2]/ARGV[3]; ignored by `d`
ARGV[6]   window_start (integer ms)
ARGV[7]   window_end (integer ms)
ARGV[8]   ttl mode: `n` none, `r` relative (PEXPIRE ARGV[9]), `a` absolute
          (PEXPIREAT ARGV[9])
ARGV[9]   ttl milliseconds (integer)
ARGV[10]  aggregate spec: comma-separated `function:name` in the order of the
          "a" array; function is one of count, sum, min, max, avg,
          distinct_count, first, last
ARGV[11]  change capture (optional): absent or `` none; `v` keep the entry's
          version; `c` keep it and return the change (see Replies)
ARGV[12]  for mode `m` (optional): the replication ids (`master_replid`),
          comma-separated, of the primaries whose data the merge may build
          on; a node whose own is not among them refuses it (see Replies)
ARGV[12]  the sole writer's fields (optional, mode `r` only): one character
          per aggregate of the spec, `1` when this partial alone renders a
          value for it, `0` when it renders none; ARGV[13], ... are those
          values, in spec order, rendered as rule 5 renders them

Rules, in this order:
1. The field holds a partial with "e" > ARGV[2], or holds none and its fence
   (see Fences) is > ARGV[2]: change nothing, return -1 (fenced: a newer
   owner of that source partition wrote).
2. Else it holds a partial with "o" > ARGV[3] (or, for `m`, >= ARGV[3]: an
   amendment at a position already applied is a retried or replayed one):
   return 0 (stale replay) without changing values; a newer epoch is still
   recorded, which fences the previous owner. An equal offset is applied
   for `r` and `d`.
3. Apply the mode. Merging: count/sum add; min/max keep the min/max (null is
   absent); avg adds both; distinct_count takes the register-wise max;
   first keeps the smaller (time, value) pair, last the larger, comparing
   time first, then the value's bytes (not Lua's `<`, which collates by
   the server's locale).
4. Recompute the public fields by merging all `_p:*` partials, in bytewise
   order of their field names so that the floating-point result does not
   depend on the hash's iteration order; HSET window_start, window_end and
   each aggregate's rendered value, HDEL an aggregate whose merged value is
   absent (min of nothing, avg of count 0, first/last null). When no partial
   remains (after `d`), DEL the key and return 2.
5. Rendering equals `Accumulator::render` byte for byte: count as an integer;
   sum/min/max/avg (= sum / count) as Rust's `render_number`: integral with
   abs < 1e15 as an integer, otherwise Rust's `{}` form of an f64 (shortest
   round-trip digits, the closer of two candidates and the larger on a tie,
   never in exponent notation: 1e-7 is "0.0000001", 1e21 is
   "1000000000000000000000"; see shortest_digits); distinct_count as
   `HyperLogLog::estimate` (src/window/hll.rs); first/last as the value.
6. Apply the TTL, return 1.

The sole writer's short cut: a replace (`r`) that carries ARGV[12], into an
entry that holds no other source partition's partial, stores the partial
as it is and sets the public fields to the values ARGV[13..] (the merge of
one partial is that partial, so they are what rules 4 and 5 would compute;
`tests/integration/merge_script.rs` holds the two paths to the same entries).
Rules 1 and 2 apply as before. Nothing is decoded, merged or rendered, which
is most of the function's time for an entry written by one partition. Into
a new entry (no hash at all: the common write of `emit = final`) it goes
straight from the argument checks to the HSET.

Fences: a retraction (`d`) leaves the epoch it was made under in the hidden
field `_f:<topic>:<partition>` (the partial's field with `_f` for `_p`), and
rule 1 also refuses a write whose epoch is older than the fence of its
field when no partial is stored. A retraction that deletes the entry leaves
its fences (and, under capture, its version) as a tombstone for a day. So a
zombie (an owner that froze, lost its partition, and woke up) cannot bring
back an entry its successor retracted, nor create one the successor
retracted before it existed: the session ledger retracts, from nothing,
the sessions a predecessor recorded but may not have written yet. A write
that stores the partial again removes the fence (the partial's epoch fences
from then on). Readers skip hashes without `window_start`.

Versions (ARGV[11] `v` or `c`): the hidden field `_v` counts the changes
applied to the entry. Every write that returns 1 or 2 raises it by one,
atomically with the change; a deletion's version is the one after the last
(the public fields and partials are gone; `_v` stays as a tombstone for a
day, so a re-created entry continues the count and a retraction replayed on
the tombstone republishes the deletion under the next version). A
retraction from nothing (no entry, no version) returns 2 and is no change
(it leaves only a fence).

A merge builds on the stored partial, so it must not build on a partial
that lost writes: a merge that carries replication ids (ARGV[12]) is
refused with -2, before anything is read or written, by a node whose
replication history is not among them (a replica promoted, or a primary
restarted, since the writer last made sure replicas held its writes).
Without this, a replace acknowledged by a primary that then failed over
unreplicated, and a merge applied on the promoted replica, would leave a
partial holding the merge alone under the merge's offset, which the
writer's replay (at lower offsets) could never correct.

Replies: -2 as above; -1, 0, 1 or 2 as above. With `c`, a write that returns 1 or 2, and
a stale replay (0, so that a change whose publication was lost is published
again by whoever replays it), reply with an array instead:
{status, version, field, value, ...}: the public fields as the entry now
holds them (window_start, window_end, then the aggregates present, in spec
order), none after a deletion. A fenced write (-1), and a retraction from
nothing (2), are always integers.

Malformed arguments or stored partials are refused with an error reply
starting `ERR merge script:`, before anything is written. The script only
uses cjson to decode: its encoder loses precision beyond 14 digits, so a
partial written by `m` is built as text here.
]]

local PARTIAL_PREFIX = '_p:'
local FENCE_PREFIX = '_f:'
local HLL_REGISTERS = 1024

local function fail(message)
  error(message, 0)
end

-- HSET of `key` with the (field, value) pairs listed, a thousand values
-- per call: Lua's `unpack` refuses more than about 8,000 values, and a
-- tombstone keeps a fence for every source partition that wrote the entry.
local function hset_pairs(key, list)
  for i = 1, #list, 1000 do
    redis.call('HSET', key, unpack(list, i, math.min(i + 999, #list)))
  end
end

-- Comparisons --------------------------------------------------------------

-- Lua compares strings with strcoll, which depends on the server's locale;
-- Rust compares bytes.
local function bytes_less(a, b)
  if a == b then
    return false
  end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- (time, value) pairs of first/last, as Rust's tuple ordering.
local function pair_less(a, b)
  if a.t ~= b.t then
    return a.t < b.t
  end
  return bytes_less(a.v, b.v)
end

-- Numbers ------------------------------------------------------------------

local function is_integral(v)
  return v == math.floor(v) and math.abs(v) < 1e15
end

-- A decimal digit string plus one in its last place ('199' -> '200',
-- '99' -> '100').
local function increment(digits)
  local i = #digits
  while i > 0 and string.sub(digits, i, i) == '9' do
    i = i - 1
  end
  if i == 0 then
    return '1' .. string.rep('0', #digits)
  end
  return string.sub(digits, 1, i - 1) .. string.char(string.byte(digits, i) + 1) .. string.rep('0', #digits - i)
end

-- The digits Rust prints for a finite, positive v: the fewest significant
-- digits that read back as v; of two such candidates the closer one, and
-- on an exact tie the larger one (Rust's shortest formatting rounds half
-- up, where printf's %.17g rounds half to even: 1501199875790043.25 is
-- "1501199875790043.3" in Rust but 1501199875790043.2 with %.17g).
-- Returns a digit string D and a scale s with v = D * 10^s.
local function shortest_digits(v)
  -- The exact expansion (glibc prints exact digits), enough for the
  -- rounding decision at any of the first 17 digits.
  local first, rest, exponent = string.match(string.format('%.99e', v), '^(%d)%.(%d+)e([-+]%d+)$')
  local exact = first .. rest
  exponent = tonumber(exponent)
  for n = 1, 17 do
    local scale = exponent - n + 1
    local truncated = string.sub(exact, 1, n)
    local closer, farther = truncated, increment(truncated)
    if string.byte(exact, n + 1) >= string.byte('5') then -- ties too
      closer, farther = farther, closer
    end
    -- The farther one can read back when the closer does not: at a power
    -- of two the next double below is twice as close as the next above.
    for _, digits in ipairs({ closer, farther }) do
      if tonumber(digits .. 'e' .. scale) == v then
        return digits, scale
      end
    end
  end
  error('no round-trip digits for ' .. string.format('%.17g', v))
end

-- Rust's `render_number`: integers without a fraction, everything else as
-- f64's Display (plain decimal notation, never an exponent).
local function render_number(v)
  if is_integral(v) then
    return string.format('%d', v)
  elseif v ~= v then
    return 'NaN'
  elseif v == math.huge then
    return 'inf'
  elseif v == -math.huge then
    return '-inf'
  end
  -- Fast path: a decimal of at most 15 significant digits round-trips
  -- through a double, so when %.15g round-trips (and is not in exponent
  -- form) it is already the shortest form, the one Rust prints.
  local quick = string.format('%.15g', v)
  if not string.find(quick, 'e', 1, true) and tonumber(quick) == v then
    return quick
  end
  local sign = ''
  if v < 0 then
    sign = '-'
  end
  local digits, scale = shortest_digits(math.abs(v))
  local trailing = #string.match(digits, '0*$')
  digits, scale = string.sub(digits, 1, #digits - trailing), scale + trailing
  local point = #digits + scale -- digits before the decimal point
  if point <= 0 then
    return sign .. '0.' .. string.rep('0', -point) .. digits
  elseif point >= #digits then
    return sign .. digits .. string.rep('0', point - #digits)
  end
  return sign .. string.sub(digits, 1, point) .. '.' .. string.sub(digits, point + 1)
end

-- JSON text of a number: integers exactly, others in the shortest of
-- %.15g/%.16g/%.17g that reads back as the same double. Non-finite numbers
-- (a sum past the largest double) are the strings "inf", "-inf" and "NaN",
-- as `Accumulator::write_partial` writes them.
local function json_number(v)
  if v ~= v then
    return '"NaN"'
  elseif v == math.huge then
    return '"inf"'
  elseif v == -math.huge then
    return '"-inf"'
  elseif is_integral(v) then
    return string.format('%d', v)
  end
  local text
  for precision = 15, 17 do
    text = string.format('%.' .. precision .. 'g', v)
    if tonumber(text) == v then
      break
    end
  end
  return text
end

-- JSON text of an integer that may exceed 1e15 (counts, event times).
local function json_integer(v)
  return string.format('%d', v)
end

-- Rust's f64::round for the non-negative estimates: half away from zero.
local function round_half_up(v)
  local floor = math.floor(v)
  if v - floor >= 0.5 then
    return floor + 1
  end
  return floor
end

-- HyperLogLog --------------------------------------------------------------

local function hll_decode(hex)
  if hex == '' then
    return nil
  end
  if #hex ~= 2 * HLL_REGISTERS or not string.find(hex, '^%x+$') then
    return false
  end
  local registers = {}
  for i = 1, HLL_REGISTERS do
    registers[i] = tonumber(string.sub(hex, 2 * i - 1, 2 * i), 16)
  end
  return registers
end

local function hll_encode(registers)
  if registers == nil then
    return ''
  end
  local out = {}
  for i = 1, HLL_REGISTERS do
    out[i] = string.format('%02x', registers[i])
  end
  return table.concat(out)
end

-- Exactly `HyperLogLog::estimate`, summing in register order.
local function hll_estimate(registers)
  if registers == nil then
    return 0
  end
  local m = HLL_REGISTERS
  local alpha = 0.7213 / (1 + 1.079 / m)
  local sum, zeros = 0, 0
  for i = 1, m do
    local r = registers[i]
    sum = sum + 2 ^ (-r)
    if r == 0 then
      zeros = zeros + 1
    end
  end
  local raw = alpha * m * m / sum
  local estimate = raw
  if raw <= 2.5 * m and zeros > 0 then
    estimate = m * math.log(m / zeros)
  end
  return round_half_up(estimate)
end

-- Aggregate functions --------------------------------------------------------
-- A merged value is: count/sum a number; min/max a number or nil; avg
-- {sum, count}; distinct_count a register table or nil; first/last {t=, v=}
-- or nil. `decode` returns false for a malformed partial element.

-- A number element: a JSON number, or the name of a non-finite one. (The
-- library's body cannot read `math` at FUNCTION LOAD, so no table of them.)
local function decode_number(p)
  if type(p) == 'number' then
    return p
  elseif p == 'inf' then
    return math.huge
  elseif p == '-inf' then
    return -math.huge
  elseif p == 'NaN' then
    return 0 / 0
  end
  return false
end

local function decode_optional_number(p)
  if p == cjson.null then
    return nil
  end
  return decode_number(p)
end

local function decode_pair(p)
  if p == cjson.null then
    return nil
  end
  if type(p) ~= 'table' or type(p[1]) ~= 'number' or type(p[2]) ~= 'string' then
    return false
  end
  return { t = p[1], v = p[2] }
end

local function add(a, b)
  return a + b
end

local function keep_min(a, b)
  if a == nil or (b ~= nil and b < a) then
    return b
  end
  return a
end

local function keep_max(a, b)
  if a == nil or (b ~= nil and b > a) then
    return b
  end
  return a
end

local function keep_first(a, b)
  if a == nil or (b ~= nil and pair_less(b, a)) then
    return b
  end
  return a
end

local function keep_last(a, b)
  if a == nil or (b ~= nil and pair_less(a, b)) then
    return b
  end
  return a
end

local function encode_optional_number(v)
  if v == nil then
    return 'null'
  end
  return json_number(v)
end

local function render_optional_number(v)
  return v and render_number(v)
end

local function encode_pair(p)
  if p == nil then
    return 'null'
  end
  return '[' .. json_integer(p.t) .. ',' .. cjson.encode(p.v) .. ']'
end

local function render_pair(p)
  return p and p.v
end

local function none()
  return nil
end

local function zero()
  return 0
end

-- Per function: the empty value, decode (partial element -> value, false
-- when malformed), merge, encode (value -> partial element JSON) and render
-- (value -> public field, nil when absent).
local FUNCTIONS = {
  count = { empty = zero, decode = decode_number, merge = add, encode = json_integer, render = json_integer },
  sum = { empty = zero, decode = decode_number, merge = add, encode = json_number, render = render_number },
  min = {
    empty = none,
    decode = decode_optional_number,
    merge = keep_min,
    encode = encode_optional_number,
    render = render_optional_number,
  },
  max = {
    empty = none,
    decode = decode_optional_number,
    merge = keep_max,
    encode = encode_optional_number,
    render = render_optional_number,
  },
  avg = {
    empty = function() return { 0, 0 } end,
    decode = function(p)
      if type(p) ~= 'table' or type(p[2]) ~= 'number' then
        return false
      end
      local sum = decode_number(p[1])
      if sum == false then
        return false
      end
      return { sum, p[2] }
    end,
    merge = function(a, b) return { a[1] + b[1], a[2] + b[2] } end,
    encode = function(v) return '[' .. json_number(v[1]) .. ',' .. json_integer(v[2]) .. ']' end,
    render = function(v)
      if v[2] > 0 then
        return render_number(v[1] / v[2])
      end
    end,
  },
  distinct_count = {
    empty = none,
    decode = function(p)
      if type(p) ~= 'string' then
        return false
      end
      return hll_decode(p)
    end,
    merge = function(a, b)
      if a == nil then
        return b
      elseif b == nil then
        return a
      end
      local max = {}
      for i = 1, HLL_REGISTERS do
        max[i] = math.max(a[i], b[i])
      end
      return max
    end,
    encode = function(v) return '"' .. hll_encode(v) .. '"' end,
    render = function(v) return json_integer(hll_estimate(v)) end,
  },
  first = { empty = none, decode = decode_pair, merge = keep_first, encode = encode_pair, render = render_pair },
  last = { empty = none, decode = decode_pair, merge = keep_last, encode = encode_pair, render = render_pair },
}

-- Arguments ------------------------------------------------------------------

-- An integer without leading zeros ('0', '-0', '12', '-12'; not '012').
local function integer_arg(argv, index, what)
  local text = argv[index]
  if type(text) ~= 'string' or not (string.find(text, '^-?[1-9]%d*$') or text == '0' or text == '-0') then
    fail(what .. ' (ARGV[' .. index .. ']) must be an integer, got ' .. tostring(text))
  end
  return tonumber(text)
end

local function choice_arg(argv, index, what, allowed)
  local text = argv[index]
  if not allowed[text] then
    fail('unknown ' .. what .. ' (ARGV[' .. index .. ']) ' .. tostring(text))
  end
  return text
end

-- `function:name,...` into a list of {fn = FUNCTIONS entry, name = ...}.
local function parse_spec_text(text)
  local spec = {}
  if text == nil or text == '' then
    return spec
  end
  for item in string.gmatch(text, '[^,]+') do
    local function_name, name = string.match(item, '^([%a_]+):(.+)$')
    local fn = function_name and FUNCTIONS[function_name]
    if not fn then
      fail('bad aggregate "' .. item .. '" in spec (ARGV[10]); expected function:name')
    end
    if name == 'window_start' or name == 'window_end' or string.sub(name, 1, 1) == '_' then
      fail('aggregate name "' .. name .. '" clashes with the entry layout')
    end
    spec[#spec + 1] = { fn = fn, name = name }
  end
  return spec
end

-- Parsed specs by their text. A connector sends one spec per region, so a
-- few entries; the cache starts over should it ever reach SPEC_CACHE_SIZE.
local SPEC_CACHE_SIZE = 64
local specs, cached_specs = {}, 0

local function parse_spec(text)
  local spec = text and specs[text]
  if spec == nil then
    spec = parse_spec_text(text) -- fails before anything is cached
    if text then
      if cached_specs >= SPEC_CACHE_SIZE then
        specs, cached_specs = {}, 0
      end
      specs[text], cached_specs = spec, cached_specs + 1
    end
  end
  return spec
end

-- Partials -------------------------------------------------------------------

-- {e =, o =, values = {one merged value per aggregate}}
local function decode_partial(spec, field, text)
  local ok, json = pcall(cjson.decode, text)
  if not ok or type(json) ~= 'table' or type(json.e) ~= 'number' or type(json.o) ~= 'number'
      or type(json.a) ~= 'table' then
    fail('malformed partial in field ' .. field .. ': ' .. string.sub(tostring(text), 1, 200))
  end
  local values = {}
  for i, aggregate in ipairs(spec) do
    local element = json.a[i]
    if element == nil then
      values[i] = aggregate.fn.empty()
    else
      local value = aggregate.fn.decode(element)
      if value == false then
        fail('malformed ' .. aggregate.name .. ' (element ' .. i .. ') in the partial of field ' .. field)
      end
      values[i] = value
    end
  end
  return { e = json.e, o = json.o, values = values }
end

local function merge_values(spec, a, b)
  local merged = {}
  for i, aggregate in ipairs(spec) do
    merged[i] = aggregate.fn.merge(a[i], b[i])
  end
  return merged
end

-- The JSON text of a partial; epoch and offset are the (validated) integer
-- arguments, copied as text so that no digit is lost.
local function encode_partial(spec, epoch_text, offset_text, values)
  local parts = {}
  for i, aggregate in ipairs(spec) do
    parts[i] = aggregate.fn.encode(values[i])
  end
  return '{"e":' .. epoch_text .. ',"o":' .. offset_text .. ',"a":[' .. table.concat(parts, ',') .. ']}'
end

-- The script ---------------------------------------------------------------------

local MODES = { r = true, m = true, d = true }
local TTL_MODES = { n = true, r = true, a = true }
local CAPTURES = { [''] = true, v = true, c = true }
local VERSION_FIELD = '_v'
-- How long a deleted entry's version outlives it (one day).
local TOMBSTONE_MS = 86400000

-- The reply for a change under capture `c`: status, version, then the
-- public fields of `set` (HSET arguments after the key) or of the stored
-- hash, leaving out the hidden ones (partials, fences, the version).
local function change_reply(status, version, fields, from)
  local reply = { status, version }
  for i = from, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 1) ~= '_' then
      reply[#reply + 1], reply[#reply + 2] = name, fields[i + 1]
    end
  end
  return reply
end

-- The sole writer's values (ARGV[12..], see the header): one per aggregate
-- of `spec`, false where the flag says it has none.
local function sole_values(spec, argv)
  local flags = argv[12]
  if #flags ~= #spec then
    fail('the sole writer\'s fields (ARGV[12]) need one flag per aggregate, got ' .. flags)
  end
  local values, index = {}, 13
  for i, aggregate in ipairs(spec) do
    local flag = string.sub(flags, i, i)
    if flag == '1' then
      values[i] = argv[index]
      if values[i] == nil then
        fail('the sole writer\'s value of ' .. aggregate.name .. ' (ARGV[' .. index .. ']) is missing')
      end
      index = index + 1
    elseif flag == '0' then
      values[i] = false
    else
      fail('the sole writer\'s fields (ARGV[12]) are 0 and 1 flags, got ' .. flags)
    end
  end
  return values
end

-- Whether `field` is the only partial among `texts` (or there is none).
local function only_partial(texts, field)
  for name in pairs(texts) do
    if name ~= field then
      return false
    end
  end
  return true
end

-- 6: expiry, then the reply of a write that set the fields `set` (HSET
-- arguments after the key). An entry re-created over a tombstone (the hash
-- held only a version and fences) loses the tombstone's expiry.
local function finish(key, tombstone, ttl_mode, ttl, capture, version, set)
  if ttl_mode == 'r' then
    redis.call('PEXPIRE', key, ttl)
  elseif ttl_mode == 'a' then
    redis.call('PEXPIREAT', key, ttl)
  elseif tombstone then
    redis.call('PERSIST', key)
  end
  if capture == 'c' then
    return change_reply(1, version, set, 2)
  end
  return 1
end

-- A partial the short cut stores undecoded: at least its frame and its
-- epoch and offset, which later writes are fenced and skipped by, must be
-- the arguments'.
local function check_sole_frame(text, argv)
  local tail = '],"e":' .. argv[2] .. ',"o":' .. argv[3] .. '}'
  if string.sub(text, 1, 6) ~= '{"a":[' or string.sub(text, -#tail) ~= tail then
    fail('the partial (ARGV[5]) is not {"a":[...],"e":' .. argv[2] .. ',"o":' .. argv[3] .. '}: '
      .. string.sub(text, 1, 200))
  end
end

-- The sole writer's short cut into a new entry (no hash at all: no
-- partial, fence, version or tombstone, so rules 1 and 2 have nothing to
-- compare with): the entry is the partial and the fields it renders, as the
-- short cut in `main` stores them, field for field and reply for reply.
local function new_sole_entry(key, field, text, argv, spec, ttl_mode, ttl, capture)
  check_sole_frame(text, argv)
  local values = sole_values(spec, argv)
  local set = { key, 'window_start', argv[6], 'window_end', argv[7], field, text }
  local version = 0
  if capture ~= '' then
    version = 1
    set[#set + 1], set[#set + 2] = VERSION_FIELD, '1'
  end
  for i, aggregate in ipairs(spec) do
    if values[i] then
      set[#set + 1], set[#set + 2] = aggregate.name, values[i]
    end
  end
  redis.call('HSET', unpack(set))
  return finish(key, false, ttl_mode, ttl, capture, version, set)
end

local function main(KEYS, ARGV)
  local key = KEYS[1]
  local field = ARGV[1]
  if type(field) ~= 'string' or string.sub(field, 1, #PARTIAL_PREFIX) ~= PARTIAL_PREFIX then
    fail('partial field (ARGV[1]) must start with ' .. PARTIAL_PREFIX .. ', got ' .. tostring(field))
  end
  local epoch = integer_arg(ARGV, 2, 'epoch')
  local offset = integer_arg(ARGV, 3, 'offset')
  local mode = choice_arg(ARGV, 4, 'mode', MODES)
  local text = ARGV[5]
  integer_arg(ARGV, 6, 'window_start')
  integer_arg(ARGV, 7, 'window_end')
  local ttl_mode = choice_arg(ARGV, 8, 'ttl mode', TTL_MODES)
  local ttl = integer_arg(ARGV, 9, 'ttl')
  local spec = parse_spec(ARGV[10])
  local capture = ARGV[11] or ''
  if not CAPTURES[capture] then
    fail('unknown change capture (ARGV[11]) ' .. tostring(capture))
  end
  if mode == 'm' and ARGV[12] ~= nil then
    local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
    if replid == nil or string.find(',' .. ARGV[12] .. ',', ',' .. replid .. ',', 1, true) == nil then
      return -2
    end
  end

  local hash = redis.call('HGETALL', key)
  if #hash == 0 and ARGV[12] ~= nil and mode == 'r' and type(text) == 'string' then
    return new_sole_entry(key, field, text, ARGV, spec, ttl_mode, ttl, capture)
  end

  -- Every partial of the entry, as text and (lazily) decoded; its fences;
  -- whether it is an entry or a version (`existed`), or a tombstone (no
  -- partial, no public field).
  local texts, decoded, fences = {}, {}, {}
  local version = 0
  local existed = false
  for i = 1, #hash, 2 do
    local name = hash[i]
    if string.sub(name, 1, #PARTIAL_PREFIX) == PARTIAL_PREFIX then
      texts[name] = hash[i + 1]
    elseif string.sub(name, 1, #FENCE_PREFIX) == FENCE_PREFIX then
      fences[name] = tonumber(hash[i + 1]) or 0
    elseif name == VERSION_FIELD then
      version = tonumber(hash[i + 1]) or 0
    end
    existed = existed or string.sub(name, 1, #FENCE_PREFIX) ~= FENCE_PREFIX
  end
  local tombstone = #hash > 0 and next(texts) == nil
  local fence = FENCE_PREFIX .. string.sub(field, #PARTIAL_PREFIX + 1)
  local function partial(name)
    if decoded[name] == nil then
      decoded[name] = decode_partial(spec, name, texts[name])
    end
    return decoded[name]
  end

  -- 1, 2: fencing and stale replays.
  if texts[field] == nil and fences[fence] ~= nil and fences[fence] > epoch then
    return -1
  elseif texts[field] ~= nil then
    local current = partial(field)
    if current.e > epoch then
      return -1
    elseif current.o > offset or (mode == 'm' and current.o == offset) then
      if epoch > current.e then
        -- Take the new owner's epoch even though its replay changes
        -- nothing, so the previous owner is fenced from here on.
        redis.call('HSET', KEYS[1], field,
          encode_partial(spec, ARGV[2], string.format('%d', current.o), current.values))
      end
      if capture == 'c' then
        return change_reply(0, version, hash, 1)
      end
      return 0
    end
  end

  -- The sole writer's short cut (see the header): the public values come
  -- from ARGV[13..] instead of merging and rendering.
  local sole = ARGV[12] ~= nil and mode == 'r' and type(text) == 'string' and only_partial(texts, field)

  -- 3: the new partial of this field.
  if mode == 'd' then
    texts[field], decoded[field] = nil, nil
  elseif mode == 'm' and texts[field] ~= nil then
    local amend = decode_partial(spec, 'ARGV[5]', text)
    local values = merge_values(spec, partial(field).values, amend.values)
    texts[field] = encode_partial(spec, ARGV[2], ARGV[3], values)
    decoded[field] = { e = epoch, o = offset, values = values }
  else
    if type(text) ~= 'string' then
      fail('mode ' .. mode .. ' needs the partial (ARGV[5])')
    end
    texts[field], decoded[field] = text, nil
    if sole then
      check_sole_frame(text, ARGV)
    else
      partial(field) -- validates it before anything is written
    end
  end

  -- 4: the public fields, merging in a fixed order.
  local names = {}
  for name in pairs(texts) do
    names[#names + 1] = name
  end
  if #names == 0 then
    -- A deleted entry leaves a tombstone for TOMBSTONE_MS: its fences (see
    -- Fences) and, under capture, its version, so that a re-created entry
    -- continues its versions and a replayed retraction republishes the
    -- deletion (whose first publication may have been lost) under a newer
    -- version. Retracting from nothing (no entry, no version) leaves the
    -- fence only and is no change.
    redis.call('DEL', key)
    local kept = { fence, ARGV[2] }
    for name, value in pairs(fences) do
      if name ~= fence then
        kept[#kept + 1], kept[#kept + 2] = name, string.format('%d', value)
      end
    end
    local reply = 2
    if capture ~= '' and existed then
      version = version + 1
      kept[#kept + 1], kept[#kept + 2] = VERSION_FIELD, string.format('%d', version)
      if capture == 'c' then
        reply = { 2, version }
      end
    end
    hset_pairs(key, kept)
    redis.call('PEXPIRE', key, TOMBSTONE_MS)
    return reply
  end
  -- Each aggregate's public value, or false when it has none (5: rendering).
  local rendered = {}
  if sole then
    rendered = sole_values(spec, ARGV)
  else
    table.sort(names, bytes_less)
    -- From the first partial rather than from empty values: the same result
    -- except that 0 + -0.0 is 0.0, and both render as "0".
    local merged = partial(names[1]).values
    for n = 2, #names do
      merged = merge_values(spec, merged, partial(names[n]).values)
    end
    for i, aggregate in ipairs(spec) do
      rendered[i] = aggregate.fn.render(merged[i]) or false
    end
  end

  local set = { key, 'window_start', ARGV[6], 'window_end', ARGV[7] }
  local absent = { key }
  if mode ~= 'd' then
    set[#set + 1], set[#set + 2] = field, texts[field]
    if fences[fence] ~= nil then
      absent[#absent + 1] = fence
    end
  else
    set[#set + 1], set[#set + 2] = fence, ARGV[2]
  end
  if capture ~= '' then
    version = version + 1
    set[#set + 1], set[#set + 2] = VERSION_FIELD, string.format('%d', version)
  end
  for i, aggregate in ipairs(spec) do
    if rendered[i] then
      set[#set + 1], set[#set + 2] = aggregate.name, rendered[i]
    else
      absent[#absent + 1] = aggregate.name
    end
  end

  if mode == 'd' then
    redis.call('HDEL', key, field)
  end
  redis.call('HSET', unpack(set))
  if #absent > 1 and #hash > 0 then
    redis.call('HDEL', unpack(absent))
  end

  return finish(key, tombstone, ttl_mode, ttl, capture, version, set)
end

redis.register_function(FUNCTION_NAME, function(keys, args)
  local ok, result = pcall(main, keys, args)
  if ok then
    return result
  elseif type(result) == 'table' then
    return result -- an error reply raised by redis.call
  end
  return redis.error_reply('ERR merge script: ' .. tostring(result))
end)
