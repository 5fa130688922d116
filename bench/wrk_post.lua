-- wrk's script for the wrk section: POST /agent, a new conversation per request, one JSON line of results.
-- Environment: BENCH_AUTH, the Authorization header's value (empty: none); BENCH_MESSAGE, the message prefix.
-- Run: wrk -t1 -c32 -d10s --latency -s bench/wrk_post.lua http://127.0.0.1:PORT/agent
local auth = os.getenv("BENCH_AUTH") or ""
local message = os.getenv("BENCH_MESSAGE") or "wrk says hello"
local counter = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if auth ~= "" then
  wrk.headers["Authorization"] = auth
end

request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format('{"message":"%s #%d"}', message, counter))
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
