-- wrk script of the REST figures (bench/wrk.py runs it):
--   wrk ... -s rest.lua URL -- METHOD PATHS_FILE TOKENS_FILE BODY
-- PATHS_FILE has one request path a line, TOKENS_FILE one bearer token a line ("-" for none), BODY is sent
-- with every request ("" for none). Requests go round robin over paths and tokens, so each token's user sends
-- an even share. done() prints one line "BENCH-RESULT {json}" with the rate, latency percentiles and the
-- count of each HTTP status.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local function lines(file)
  local out = {}
  if file == "-" then
    return out
  end
  for line in io.lines(file) do
    if line ~= "" then
      table.insert(out, line)
    end
  end
  return out
end

local requests = {}
local next_request = 1
statuses = {}

function init(args)
  local method, paths, tokens, body = args[1], lines(args[2]), lines(args[3]), args[4]
  if body == "" then
    body = nil
  end
  local count = math.max(#paths, #tokens)
  -- Requests are built once, here: request() below only hands them out, so the script costs wrk little.
  for i = 1, count do
    local headers = {}
    if #tokens > 0 then
      headers["Authorization"] = "Bearer " .. tokens[(i - 1) % #tokens + 1]
    end
    if body then
      headers["Content-Type"] = "application/json"
    end
    table.insert(requests, wrk.format(method, paths[(i - 1) % #paths + 1], headers, body))
  end
  -- Threads start at different points of the rotation, so no two send the same user's request at once.
  next_request = (id * 997) % count + 1
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      merged[tostring(status)] = (merged[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout))
end
