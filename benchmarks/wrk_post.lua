-- wrk script of the serving benchmark (benchmarks/wrk_load.py runs it): POSTs the JSON bodies of a file, one
-- body a line, in file order from a given index (wrapping around), each with Content-Type: application/json.
--
--   wrk -t1 -c32 -d8s --latency -s benchmarks/wrk_post.lua URL -- BODIES_FILE START_INDEX
--
-- done() prints one machine-readable line (latencies in ms, START_INDEX and next_body 0-based):
--   WRK_RESULT requests=N seconds=S rps=R p50_ms=A p99_ms=B non_2xx=E socket_errors=F next_body=I
-- requests counts every completed response (non-2xx ones too); socket_errors = connect + read + write + timeout.
-- With more than one thread each would send the same sequence: wrk_load.py runs one (-t1).

-- Globals, not locals: done() runs in wrk's main Lua state and reads them from each thread with thread:get.
bodies = {}
index = 1        -- the next body to send (1-based)
non_2xx = 0
checked = false  -- wrk calls request() once before the run (thread 0) to count pipelined requests: not sent
local json_headers = { ["Content-Type"] = "application/json" }
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  index = (tonumber(args[2]) or 0) % #bodies + 1
end

function request()
  local body = bodies[index]
  if checked then
    index = index % #bodies + 1
  else
    checked = true
  end
  return wrk.format("POST", nil, json_headers, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency, requests)
  local failed, next_body = 0, 0
  for _, thread in ipairs(threads) do
    failed = failed + thread:get("non_2xx")
    next_body = thread:get("index") - 1
  end
  local errors = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "WRK_RESULT requests=%d seconds=%.6f rps=%.3f p50_ms=%.4f p99_ms=%.4f non_2xx=%d socket_errors=%d next_body=%d\n",
    summary.requests, seconds, summary.requests / seconds, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, failed, errors.connect + errors.read + errors.write + errors.timeout, next_body))
end
