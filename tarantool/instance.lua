-- A master of a Shoal cluster state store. Configured from the
-- environment by tarantool/scripts/pair.sh (and by hand the same way):
--   SHOAL_TT_LISTEN         host:port to listen on (required)
--   SHOAL_TT_PEERS          comma-separated host:port of every master
--   SHOAL_TT_PASSWORD       password of the `shoal` user (required)
--   SHOAL_TT_REPL_PASSWORD  password of the `replicator` user (required)
--   SHOAL_TT_MEMTX_MB       memtx arena in MiB (default 1024)
--   SHOAL_TT_CONNECT_S      seconds to wait for the other master at start
--                           before going on alone (default 0.5)
--   SHOAL_TT_EXPIRER        Lua module name of the expiry worker to load
--                           (e.g. shoal_expirer), found on LUA_CPATH
--   SHOAL_TT_EXPIRER_BATCH  deletes per expiry transaction (default 300)
--   SHOAL_TT_EXPIRER_IDLE_MS  expiry worker's sleep when nothing more has
--                           expired, in ms (default 100)
--   SHOAL_TT_CONSOLE        path of a Unix socket for the admin console
--                           (local root only: mode 0600 directory advised)
-- Data, WAL, snapshots, log and pid file live in the current directory.
local here = debug.getinfo(1, 'S').source:sub(2):match('(.*/)') or './'
package.path = here .. 'lua/?.lua;' .. package.path

local function env(name, default)
    local v = os.getenv(name)
    if v == nil or v == '' then
        if default == nil then error(name .. ' is not set') end
        return default
    end
    return v
end

local listen = env('SHOAL_TT_LISTEN')
local repl_password = env('SHOAL_TT_REPL_PASSWORD')
local replication = {}
for peer in env('SHOAL_TT_PEERS', listen):gmatch('[^,%s]+') do
    table.insert(replication, 'replicator:' .. repl_password .. '@' .. peer)
end

box.cfg({
    listen = listen,
    replication = replication,
    -- Start with whatever peers answer: a master must come up (and take
    -- writes) while the other is down.
    replication_connect_quorum = 1,
    replication_connect_timeout = tonumber(env('SHOAL_TT_CONNECT_S', '0.5')),
    replication_timeout = 0.5,
    -- Leases and cursors (later) are written by both masters under the
    -- same key; the log never is.
    replication_skip_conflict = true,
    memtx_memory = tonumber(env('SHOAL_TT_MEMTX_MB', '1024')) * 1024 * 1024,
    read_only = false,
    log = 'tarantool.log',
    pid_file = 'tarantool.pid',
    background = true,
})

require('shoal_store').start({
    password = env('SHOAL_TT_PASSWORD'),
    repl_password = repl_password,
    expirer = os.getenv('SHOAL_TT_EXPIRER') ~= '' and os.getenv('SHOAL_TT_EXPIRER') or nil,
    expirer_batch = tonumber(env('SHOAL_TT_EXPIRER_BATCH', '300')),
    expirer_idle_ms = tonumber(env('SHOAL_TT_EXPIRER_IDLE_MS', '100')),
})

local console = os.getenv('SHOAL_TT_CONSOLE')
if console ~= nil and console ~= '' then
    require('console').listen(console)
end

local f = io.open('ready', 'w')
f:write(box.info.uuid, '\n')
f:close()
