-- One run of the expiry comparison (driven by expiry-compare.rs): a fresh
-- standalone Tarantool, the store's shoal_log space, a preload of PRELOAD tuples
-- over 16 nodes of which EXPIRED are already expired, a steady insert
-- load of RATE tuples/s (TTL STEADY_TTL_S, so they stay live during the
-- run), a probe fiber that sleeps 1 ms and records its lateness (the tx
-- thread's stalls), and the expirer under test:
--   MODE=native       require('shoal_expirer').start{batch = BATCH}
--   MODE=expirationd  expirationd (EXPIRATIOND_PATH) with a Lua check
--   MODE=none         no expirer: the stall floor of the load itself
-- Prints one line: RESULT key=value ...
local fiber = require('fiber')
local clock = require('clock')
local ffi = require('ffi')

local function env(k, d) local v = os.getenv(k) if v == nil or v == '' then return d end return v end
local mode = env('MODE', 'native')
local batch = tonumber(env('BATCH', '100'))
local preload = tonumber(env('PRELOAD', '1000000'))
local expired = tonumber(env('EXPIRED', '500000'))
local rate = tonumber(env('RATE', '10000'))
local steady_ttl = tonumber(env('STEADY_TTL_S', '600'))
local timeout = tonumber(env('TIMEOUT_S', '300'))
local nodes = 16

box.cfg({
    memtx_memory = 2 * 1024 * 1024 * 1024,
    log = 'tarantool.log',
    checkpoint_interval = 0,
})

-- The store's own schema and procedures (tarantool/lua/shoal_store.lua
-- and shoal_common.lua, written next to this script by
-- expiry-compare.rs), not a copy of them.
require('shoal_store').start({password = 'bench-only', repl_password = 'bench-only'})
local s = box.space.shoal_log

local function now_us() return math.floor(fiber.time() * 1e6) end

-- Preload: per node, its share of expired tuples (1..600 s ago) in front
-- of its live ones (in an hour).
local now = now_us()
local per_node = math.floor(preload / nodes)
local expired_per_node = math.floor(expired / nodes)
expired = expired_per_node * nodes
preload = per_node * nodes
local id = 0
box.begin()
for n = 1, nodes do
    local node = 'node' .. n
    for i = 1, per_node do
        id = id + 1
        local exp
        if i <= expired_per_node then
            exp = now - 600e6 + i * 1000
        else
            exp = now + 3600e6 + i
        end
        s:replace({node, exp, id, now, 1, 1, 0, 0, 0, 0, 0})
        -- Yield between transactions: 3.x stops a fiber that runs over
        -- its slice (1 s by default) without yielding.
        if id % 10000 == 0 then box.commit() fiber.yield() box.begin() end
    end
end
box.commit()
-- The stall probe's samples: lateness of a 1 ms sleep, in a C array
-- allocated before the baseline (no Lua garbage of its own).
local MAXS = 1000000
local lateness = ffi.new('double[?]', MAXS)
local busy = ffi.new('double[?]', MAXS)
collectgarbage()
collectgarbage()
local lua_base = collectgarbage('count')

local nsamples = 0
local running = true
fiber.create(function()
    while running do
        local t, c = clock.monotonic(), clock.thread()
        fiber.sleep(0.001)
        if nsamples < MAXS then
            local late = clock.monotonic() - t - 0.001
            lateness[nsamples] = late
            -- The part of the lateness the tx thread spent running (not
            -- preempted by other processes on the machine).
            busy[nsamples] = math.min(late, clock.thread() - c)
            nsamples = nsamples + 1
        end
    end
end)

-- Lua memory, sampled every 10 ms.
local lua_peak = lua_base
fiber.create(function()
    while running do
        local c = collectgarbage('count')
        if c > lua_peak then lua_peak = c end
        fiber.sleep(0.01)
    end
end)

-- The steady load: every 10 ms, rate/100 tuples in one transaction.
local steady = 0
fiber.create(function()
    local per_tick = math.max(1, math.floor(rate / 100))
    local sid = 1e12
    while running do
        local t = now_us()
        box.begin()
        for _ = 1, per_tick do
            sid = sid + 1
            s:replace({'steady', t + steady_ttl * 1e6, sid, t, 1, 1, 0, 0, 0, 0, 0})
        end
        box.commit()
        steady = steady + per_tick
        fiber.sleep(0.01)
    end
end)

local t0 = clock.monotonic()
local first_sample = nsamples
if mode == 'native' then
    require('shoal_expirer').start({space = 'shoal_log', batch = batch, idle_ms = 100})
elseif mode == 'expirationd' then
    package.path = env('EXPIRATIOND_PATH', '.') .. '/?.lua;' .. package.path
    local expirationd = require('expirationd')
    expirationd.start('bench', s.id, function(_, tuple)
        return tuple[2] < fiber.time() * 1e6
    end, {
        tuples_per_iteration = tonumber(env('EXD_TUPLES', '10000')),
        full_scan_time = tonumber(env('EXD_SCAN_S', '1')),
        iteration_delay = tonumber(env('EXD_DELAY_S', '0')),
        force = true,
    })
elseif mode == 'none' then
    -- The floor: the same load and probe with no expirer, for 2 s.
    timeout = 2
else
    error('MODE must be native, expirationd or none')
end

-- Done when only the live tuples are left.
local live = preload - expired
local left = expired
while clock.monotonic() - t0 < timeout do
    left = s:len() - steady - live
    if left <= 0 then break end
    fiber.sleep(0.005)
end
local elapsed = clock.monotonic() - t0
local last_sample = nsamples
running = false

local deleted = mode == 'none' and 0 or expired - math.max(left, 0)
local function sorted(a)
    local v = {}
    for i = first_sample, last_sample - 1 do v[#v + 1] = a[i] end
    table.sort(v)
    return v
end
local v, vb = sorted(lateness), sorted(busy)
local function pct(p, t)
    t = t or v
    if #t == 0 then return 0 end
    return t[math.max(1, math.ceil(#t * p))] * 1000
end
local region = 0
for _, f in pairs(fiber.info()) do
    if f.name == 'shoal_expirer' then region = f.memory.used end
end
print(string.format(
    'RESULT mode=%s batch=%d deleted=%d elapsed_s=%.3f deletes_per_s=%.0f ' ..
    'p50_ms=%.3f p99_ms=%.3f max_ms=%.3f cpu_p99_ms=%.3f cpu_max_ms=%.3f ' ..
    'samples=%d lua_base_kb=%.0f ' ..
    'lua_peak_kb=%.0f lua_growth_kb=%.0f steady=%d fiber_region_bytes=%d',
    mode, batch, deleted, elapsed, deleted / elapsed, pct(0.5), pct(0.99),
    pct(1.0), pct(0.99, vb), pct(1.0, vb), #v, lua_base, lua_peak,
    lua_peak - lua_base, steady, region))
os.exit(0)
