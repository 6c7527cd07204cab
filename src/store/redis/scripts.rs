//! The Lua scripts that make each store operation one atomic round trip.
//!
//! Every script takes `KEYS[1]` = the stream's metadata hash and `KEYS[2]` = its Redis Stream, and
//! answers an array of strings whose first element says how it went: `ok`, `nf` (no such stream),
//! `fin <outcome>` (finished), `conflict <expected>`. Numbers travel as decimal strings, since Lua
//! prints large numbers in exponent form.

/// Helpers prepended to every script.
const PRELUDE: &str = r#"
local meta, log = KEYS[1], KEYS[2]
local function s(n) return string.format('%.0f', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(field) return tonumber(redis.call('HGET', meta, field) or '0') end
-- Drops the oldest entries while more than max bytes are held or the first is below before,
-- keeping the newest keep.
local function drop(first, last, bytes, max, keep, before)
  local function more() return first + keep <= last and (bytes > max or first < before) end
  while more() do
    local es = redis.call('XRANGE', log, s(first) .. '-0', '+', 'COUNT', 64)
    if #es == 0 then break end
    for _, e in ipairs(es) do
      if not more() then break end
      bytes = bytes - string.len(e[2][2])
      first = first + 1
    end
  end
  redis.call('XTRIM', log, 'MINID', s(first) .. '-0')
  redis.call('HSET', meta, 'first', s(first), 'bytes', s(bytes))
  return first
end
-- Appends ARGV[i..] as frames from seq ARGV[1]; nil if appended, else the refusal.
local function append(from, max)
  local state = redis.call('HGET', meta, 'state')
  if state ~= 'running' then return {'fin', state} end
  local last = num('last')
  if tonumber(ARGV[1]) ~= last + 1 then return {'conflict', s(last + 1)} end
  local bytes = num('bytes')
  for i = from, #ARGV do
    last = last + 1
    redis.call('XADD', log, s(last) .. '-0', 'f', ARGV[i])
    bytes = bytes + string.len(ARGV[i])
  end
  redis.call('HSET', meta, 'last', s(last), 'bytes', s(bytes))
  drop(num('first'), last, bytes, max, 1, 0)
  return nil
end
-- The log expires with its metadata.
local function expire_log()
  local ttl = redis.call('PTTL', meta)
  if ttl > 0 then redis.call('PEXPIRE', log, ttl) end
end
if redis.call('EXISTS', meta) == 0 then return {'nf'} end
"#;

/// `ARGV`: owner (or ``), route, model, replica, lease ms, ttl ms. Runs without the prelude's
/// existence check.
pub(super) const CREATE: &str = r#"
local meta, log = KEYS[1], KEYS[2]
if redis.call('EXISTS', meta) == 1 then return {'exists'} end
redis.call('DEL', log)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', meta, 'owner', ARGV[1], 'route', ARGV[2], 'model', ARGV[3], 'replica', ARGV[4],
  'state', 'running', 'first', '1', 'last', '0', 'bytes', '0',
  'lease', string.format('%.0f', now + tonumber(ARGV[5])))
redis.call('PEXPIRE', meta, ARGV[6])
return {'ok'}
"#;

/// `ARGV`: first seq, max stream bytes, frames...
const APPEND: &str = r#"
local refused = append(3, tonumber(ARGV[2]))
if refused then return refused end
expire_log()
return {'ok', redis.call('HGET', meta, 'last')}
"#;

/// `ARGV`: first seq, max stream bytes, retention ms, outcome, frames...
const FINISH: &str = r#"
local state = redis.call('HGET', meta, 'state')
if state ~= 'running' then return {'ok', state} end
if ARGV[4] == 'lost' and num('lease') > now_ms() then return {'held'} end
local refused = append(5, tonumber(ARGV[2]))
if refused then return refused end
local tail = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
local terminal = ''
if #tail > 0 and num('first') <= num('last') then terminal = tail[1][2][2] end
redis.call('HSET', meta, 'state', ARGV[4], 'terminal', terminal)
redis.call('HDEL', meta, 'lease')
redis.call('PEXPIRE', meta, ARGV[3])
expire_log()
return {'ok', ARGV[4]}
"#;

/// `ARGV`: after, max bytes.
const READ: &str = r#"
local after = tonumber(ARGV[1])
local first, last = num('first'), num('last')
if after >= last + 1 or after + 1 < first then return {'gone'} end
if after == last then
  if redis.call('HGET', meta, 'state') == 'running' then return {'pending'} end
  return {'end'}
end
local max = tonumber(ARGV[2])
local es = redis.call('XRANGE', log, s(after + 1) .. '-0', '+', 'COUNT', 256)
local parts, total = {}, 0
for _, e in ipairs(es) do
  local f = e[2][2]
  if #parts > 0 and total + string.len(f) > max then break end
  parts[#parts + 1] = f
  total = total + string.len(f)
end
return {'data', table.concat(parts), s(after + #parts)}
"#;

/// `ARGV`: after. Whether a read after it would be pending.
const PENDING: &str = r#"
if redis.call('HGET', meta, 'state') == 'running' and tonumber(ARGV[1]) == num('last') then
  return {'pending'}
end
return {'ready'}
"#;

/// `ARGV`: `before` seq or `max` bytes, the value.
const TRIM: &str = r#"
local v = tonumber(ARGV[2])
local max, before = math.huge, 0
if ARGV[1] == 'max' then max = v else before = v end
local first = drop(num('first'), num('last'), num('bytes'), max, 0, before)
return {'ok', s(first)}
"#;

/// The metadata, and whether the lease has lapsed.
const META: &str = r#"
local h = redis.call('HMGET', meta, 'owner', 'route', 'model', 'replica', 'state', 'first', 'last',
  'bytes', 'terminal', 'lease')
local expired = '0'
if h[5] == 'running' and now_ms() >= tonumber(h[10] or '0') then expired = '1' end
return {'ok', h[1] or '', h[2] or '', h[3] or '', h[4] or '', h[5] or '', h[6] or '1', h[7] or '0',
  h[8] or '0', h[9] or '', expired}
"#;

/// `ARGV`: lease ms, ttl ms.
const REFRESH: &str = r#"
local state = redis.call('HGET', meta, 'state')
if state ~= 'running' then return {'fin', state} end
redis.call('HSET', meta, 'lease', s(now_ms() + tonumber(ARGV[1])))
redis.call('PEXPIRE', meta, ARGV[2])
expire_log()
return {'ok'}
"#;

/// The source of a script: the prelude, then `body`.
fn with_prelude(body: &str) -> String {
    format!("{PRELUDE}{body}")
}

/// The compiled scripts (their SHA1s computed once).
pub(super) struct Scripts {
    pub create: redis::Script,
    pub append: redis::Script,
    pub finish: redis::Script,
    pub read: redis::Script,
    pub pending: redis::Script,
    pub trim: redis::Script,
    pub meta: redis::Script,
    pub refresh: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let s = |body: &str| redis::Script::new(&with_prelude(body));
        Scripts {
            create: redis::Script::new(CREATE),
            append: s(APPEND),
            finish: s(FINISH),
            read: s(READ),
            pending: s(PENDING),
            trim: s(TRIM),
            meta: s(META),
            refresh: s(REFRESH),
        }
    }
}
