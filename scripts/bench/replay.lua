-- wrk script: replay pre-signed webhook requests from a file ("signature<TAB>body" per line).
-- Each wrk thread takes its own stripe of lines, so in a file of unique events no two connections ever
-- send the same event. A thread that runs out of lines starts its stripe again (its events then arrive
-- as duplicates). done() prints how many requests each thread started and how many answered non-200.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local path, count = args[1], tonumber(args[2])
  requests = {}
  local line_no = 0
  for line in io.lines(path) do
    if line_no % count == id then
      local signature, body = line:match("^(%x+)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", "/api/webhooks/events",
        {["Content-Type"] = "application/json", ["X-Webhook-Signature"] = signature}, body)
    end
    line_no = line_no + 1
  end
  sent = 0
  failed = 0
  lines = #requests
end

function request()
  sent = sent + 1
  return requests[(sent - 1) % #requests + 1]
end

function response(status, headers, body)
  if status ~= 200 then failed = failed + 1 end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    io.write(string.format("thread %d sent %d non200 %d lines %d\n",
      thread:get("id"), thread:get("sent"), thread:get("failed"), thread:get("lines")))
  end
end
