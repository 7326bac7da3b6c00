-- wrk at a fixed rate: every connection waits so that all of them together send RATE
-- requests a second (wrk's latency figures leave the wait out).
local rate = tonumber(os.getenv("RATE") or "1000")
local conns = tonumber(os.getenv("CONNS") or "10")
function delay()
  return 1000 * conns / rate
end
