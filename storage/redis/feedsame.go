package redis

// sameLua defines the Lua function __same(a, b) used by the feed scripts to
// decide whether a write is an effective change: true only when the stored
// JSON texts a and b (nil: missing) certainly hold values that
// storage.Equal reports equal, as the krules App decides whether to emit
// subject-property-changed. Comparing the texts alone is wrong for text that
// another writer produced (Python KRules' json.dumps: "1.0" for 1, spaces
// after ':' and ',', keys in insertion order, "\u00e9" for "é"): a write of
// an equal value would leave a change record that no local event matches.
//
// The rules follow the value model of storage.Unmarshal:
//
//   - Equal texts are equal; a missing side is equal only to a missing one.
//     JSON whitespace around the value is ignored.
//   - Numbers (strict JSON number syntax, checked here, as Lua's tonumber
//     also reads "0x10" and "1."): different doubles are different values;
//     equal doubles are equal values when neither text is an integer
//     literal; two integer literals compare exactly as decimal text ("-0"
//     is "0"); an integer literal against another form compares with the
//     exact decimal expansion of the double (string.format %.0f), since the
//     other side is an integral double then.
//   - Strings without a backslash on either side differ when their texts
//     differ; with escapes both are decoded (cjson) and compared.
//   - Objects and lists are decoded with cjson and compared deeply (key
//     order and whitespace do not matter), unless a number has 16 or more
//     digits (cjson reads numbers as doubles, which are exact only up to 15
//     digits), the text holds an empty object or list (cjson decodes both
//     as the same empty table), the two texts exceed 64 KiB together (to
//     keep the script short), or cjson fails: then the values count as
//     different.
//   - Everything else counts as different.
//
// So a write is never recorded when the App sees no change for it except
// in the conservative cases (which record a change the App may not emit;
// never the reverse: a real change is always recorded). The hot path, two
// different canonical integers, costs two pattern matches.
const sameLua = `
local function __same(a, b)
  if a == b then return true end
  if not a or not b or a == '' or b == '' then return false end
  if string.find(a, '^%-?[1-9]%d*$') and string.find(b, '^%-?[1-9]%d*$') then return false end
  -- the slow path: its helpers are made only when it runs
  local function __norm(s) if s == '-0' then return '0' end return s end
  local function __jnum(s)
    local i = 1
    if string.byte(s, 1) == 45 then i = 2 end
    local _, e = string.find(s, '^0', i)
    if not e then _, e = string.find(s, '^[1-9]%d*', i) end
    if not e then return false end
    i = e + 1
    local _, f = string.find(s, '^%.%d+', i)
    if f then i = f + 1 end
    local _, g = string.find(s, '^[eE][%+%-]?%d+', i)
    if g then i = g + 1 end
    return i == #s + 1
  end
  local function __deq(x, y)
    if type(x) ~= type(y) then return false end
    if type(x) ~= 'table' then return x == y end
    local n = 0
    for k, v in pairs(x) do
      local w = y[k]
      if w == nil or not __deq(v, w) then return false end
      n = n + 1
    end
    for _ in pairs(y) do n = n - 1 end
    return n == 0
  end
  a = string.match(a, '^[ \t\n\r]*(.-)[ \t\n\r]*$')
  b = string.match(b, '^[ \t\n\r]*(.-)[ \t\n\r]*$')
  if a == b then return true end
  if a == '' or b == '' then return false end
  local ca, cb = string.byte(a, 1), string.byte(b, 1)
  local na = ca == 45 or (ca >= 48 and ca <= 57)
  local nb = cb == 45 or (cb >= 48 and cb <= 57)
  if na or nb then
    if not (na and nb and __jnum(a) and __jnum(b)) then return false end
    local x, y = tonumber(a), tonumber(b)
    if not x or x ~= y or x == math.huge or x == -math.huge then return false end
    local ia, ib = string.find(a, '^%-?%d+$') ~= nil, string.find(b, '^%-?%d+$') ~= nil
    if ia and ib then return __norm(a) == __norm(b) end
    if not ia and not ib then return true end
    local i = b
    if ia then i = a end
    return __norm(string.format('%.0f', x)) == __norm(i)
  end
  if ca ~= cb then return false end
  if ca == 34 then
    if not string.find(a, '\\', 1, true) and not string.find(b, '\\', 1, true) then return false end
  elseif ca == 91 or ca == 123 then
    if #a + #b > 65536 then return false end
    for _, s in ipairs({a, b}) do
      if string.find(s, '[%[{]%s*[%]}]') then return false end
      if string.find((string.gsub(s, '%.', '')), '%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d') then return false end
    end
  else
    return false
  end
  local ok, x = pcall(cjson.decode, a)
  if not ok then return false end
  local ok2, y = pcall(cjson.decode, b)
  if not ok2 then return false end
  return __deq(x, y)
end
`
