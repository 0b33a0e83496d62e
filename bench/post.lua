-- wrk script for the benchmark: JSON POSTs of one fixed body, and a machine-readable summary.
-- The body comes from the BENCH_BODY environment variable, the path from BENCH_PATH and extra headers from
-- BENCH_HEADERS ("Name: value" lines, e.g. a caller's key) (all set by bench/load.py).
-- Each thread counts the requests it wrote, so the runner can check them against what the stub upstream served.
-- The request is formatted once per thread (not per request) so wrk's Lua cost stays negligible.

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"aya_expanse_multilingual","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
   wrk.headers[name] = value
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   sent = 0
   prepared = wrk.format()
end

function request()
   sent = sent + 1
   return prepared
end

function done(summary, latency, requests)
   local total_sent = 0
   for _, thread in ipairs(threads) do
      total_sent = total_sent + thread:get("sent")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"sent":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"stdev":%.1f,"min":%d,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.duration, summary.requests, total_sent, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.stdev, latency.min, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
