-- wrk script: POST distinct jfk-length uploads to /transcribe (one changed sample each, so the
-- result cache cannot answer them), and check that every response is a 200 with a transcript
-- or an intended 503 with Retry-After. Prints one JSON line with the counts in done().
local counter = 0
thread_id = 0 -- set per thread by setup()
local threads = {}
local boundary = "whisperdloadtestboundary"

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

local f = assert(io.open(os.getenv("LOADTEST_AUDIO"), "rb"))
local audio = f:read("*a")
f:close()
local head = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
local tail = "\r\n--" .. boundary .. "--\r\n"
ok, busy, bad = 0, 0, 0

function request()
  counter = counter + 1
  local n = thread_id * 100000 + counter
  local stamp = string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, 0)
  local body = head .. audio:sub(1, #audio - 4) .. stamp .. tail
  return wrk.format("POST", "/transcribe", { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }, body)
end

function response(status, headers, body)
  if status == 200 and body:find('"text":', 1, true) and body:find('"segments":', 1, true) then
    ok = ok + 1
  elseif status == 503 and headers["Retry-After"] ~= nil then
    busy = busy + 1
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local o, b, x = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); b = b + t:get("busy"); x = x + t:get("bad")
  end
  io.write(string.format('{"requests": %d, "seconds": %.2f, "ok": %d, "busy_503": %d, "bad": %d, "socket_errors": %d, "p50_ms": %.1f, "p99_ms": %.1f}\n',
    summary.requests, summary.duration / 1e6, o, b, x,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
