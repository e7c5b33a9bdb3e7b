-- The Lua face of shoal_expirer: checks arguments and raises errors here,
-- in Lua, so the native functions never raise (no longjmp through Rust).
local raw_start, raw_stop, raw_stats = ...
-- Read when start() checks the engine; a load outside Tarantool fails here
-- (luaopen_shoal_expirer raises this error from require).
local box = assert(rawget(_G, 'box'), 'shoal_expirer must be loaded inside Tarantool (no box)')

local M = {}

local function fail(msg)
    error('shoal_expirer.start: ' .. msg, 3)
end

-- opts: {space = 'shoal_log', batch = 300, idle_ms = 100}
function M.start(opts)
    if opts == nil then opts = {} end
    if type(opts) ~= 'table' then fail('opts must be a table') end
    local space = opts.space or 'shoal_log'
    local batch = opts.batch or 300
    local idle_ms = opts.idle_ms or 100
    if type(space) ~= 'string' or #space == 0 then
        fail('space must be a space name')
    end
    if type(batch) ~= 'number' or batch ~= math.floor(batch)
        or batch < 1 or batch > 1000000 then
        fail('batch must be an integer in 1..1000000')
    end
    if type(idle_ms) ~= 'number' or idle_ms ~= idle_ms
        or idle_ms < 0 or idle_ms > 86400000 then
        fail('idle_ms must be a number of milliseconds in 0..86400000')
    end
    -- The walk reads with box iterators between yields and assumes they
    -- never yield themselves: true of memtx only (a vinyl read may yield).
    local sp = box.space[space]
    if sp ~= nil and sp.engine ~= 'memtx' then
        fail(('space %s is a %s space: only memtx is supported'):format(
            space, tostring(sp.engine)))
    end
    local ok, err = raw_start(space, batch, idle_ms)
    if not ok then error(err, 2) end
    return true
end

-- Stops the worker and waits for its fiber to end; false if none ran.
function M.stop()
    return raw_stop()
end

-- {deleted, scanned, batches, lag_ms, running, errors}
function M.stats()
    local deleted, scanned, batches, lag_ms, running, errors = raw_stats()
    return {
        deleted = deleted,
        scanned = scanned,
        batches = batches,
        lag_ms = lag_ms,
        running = running,
        errors = errors,
    }
end

return M
