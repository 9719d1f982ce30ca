-- wrk script for bench/bench.pl: a session cookie on every request.
--   BENCH_MODE=rotate  tokens 1..N in turn, each thread from its own offset
--   BENCH_MODE=once    each thread walks tokens 1..N in the same order and
--                      stops after N responses (so the threads' misses for a
--                      token come close together: what single flight is for)
--   BENCH_MODE=random  a fresh random token on every request (unknown)
-- BENCH_PATH (the URL path), BENCH_TOKENS (N), BENCH_PREFIX (the tokens'
-- prefix, "bench"). BENCH_RATE (requests/s per wrk thread, 0: as fast as
-- the connections go) paces the thread's requests on a fixed schedule
-- (wrk's delay(); a thread that falls behind does not catch up), for
-- bench/fleet.pl. done() prints one line that the bench scripts parse.
local mode = os.getenv("BENCH_MODE") or "rotate"
local n = tonumber(os.getenv("BENCH_TOKENS") or "10000")
local path = os.getenv("BENCH_PATH") or "/"
local prefix = os.getenv("BENCH_PREFIX") or "bench"
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local threads = {}
local i, answered = 0, 0
-- wrk's own duration is the -d time even when threads stop early: in
-- "once" mode each thread times itself (microseconds)
started, elapsed = 0, 0

local function now_us()
   local p = io.popen("date +%s%6N")
   local t = tonumber(p:read("*l"))
   p:close()
   return t
end

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   if mode == "rotate" then
      i = (id * 7919) % n
   end
   math.randomseed(os.time() * 1000 + id)
   if mode == "once" then
      started = now_us()
   end
end

local function token()
   if mode == "random" then
      return string.format("unknown%08x%08x%08x%02x", math.random(0, 0x7fffffff),
                           math.random(0, 0x7fffffff),
                           math.random(0, 0x7fffffff), id)
   end
   i = i + 1
   return string.format("%s%0" .. (32 - #prefix) .. "d", prefix,
                        (i - 1) % n + 1)
end

function request()
   return wrk.format("GET", path, { ["Cookie"] = "session=" .. token() })
end

if rate > 0 then
   local ffi = require("ffi")
   ffi.cdef[[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clock, bench_timespec *ts);
   ]]
   local ts = ffi.new("bench_timespec")
   local gap = 1000 / rate     -- milliseconds between two requests
   local next_slot

   local function now_ms()
      ffi.C.clock_gettime(1, ts)    -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
   end

   -- called before each request of any of the thread's connections: the
   -- next free slot of the schedule, in whole milliseconds from now
   function delay()
      local now = now_ms()
      local slot = math.max(next_slot or now, now)
      next_slot = slot + gap
      return math.floor(slot - now + 0.5)
   end
end

if mode == "once" then
   function response(status, headers, body)
      answered = answered + 1
      if answered == n then
         elapsed = now_us() - started
         wrk.thread:stop()
      end
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   local duration = summary.duration
   if mode == "once" then
      duration = 0
      for _, t in ipairs(threads) do
         local e = tonumber(t:get("elapsed")) or 0
         -- a thread that did not finish its walk ran the whole -d time
         duration = math.max(duration, e > 0 and e or summary.duration)
      end
   end
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
      "connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, duration, latency:percentile(50),
      latency:percentile(99), latency.max, e.connect, e.read, e.write,
      e.status, e.timeout))
end
