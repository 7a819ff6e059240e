-- wrk: completes the tasks listed in $TASKS (one id a line), each thread its own share.
local ids = {}
local next_thread = 0
local nthreads = tonumber(os.getenv("THREADS") or "2")

function setup(thread)
  thread:set("offset", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  for line in io.lines(os.getenv("TASKS")) do
    ids[#ids + 1] = line
  end
  counter = offset or 0
end

function request()
  local id = ids[counter % #ids + 1]
  counter = counter + nthreads
  return wrk.format("POST", "/api/tasks/" .. id .. "/complete",
    { ["Authorization"] = "Bearer agent-wang-demo", ["Content-Type"] = "application/json" }, "{}")
end
