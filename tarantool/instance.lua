-- A master of a Shoal store: the cluster state store (schema `store`,
-- lua/shoal_store.lua) or a cluster's instance of the cross-cluster
-- verdict store (schema `verdict`, lua/shoal_verdict.lua). Configured from
-- the environment by tarantool/scripts/instance.sh (which pair.sh uses):
--   SHOAL_TT_SCHEMA         `store` (default) or `verdict`
--   SHOAL_TT_CLUSTER        this instance's cluster id, 1..2^32-1
--                           (required for `verdict`)
--   SHOAL_TT_XQ_RETAIN_S    `verdict`: seconds this cluster's own queue
--                           messages are kept (by at_us; default 3600)
--   SHOAL_TT_LISTEN         host:port to listen on (required)
--   SHOAL_TT_PEERS          comma-separated host:port of every master
--   SHOAL_TT_PASSWORD       password of the `shoal` user (required)
--   SHOAL_TT_REPL_PASSWORD  password of the `replicator` user (required)
--   SHOAL_TT_MEMTX_MB       memtx arena in MiB (default 1024)
--   SHOAL_TT_CONNECT_S      seconds to wait for the other master at start
--                           before going on alone (default 0.5)
--   SHOAL_TT_EXPIRER        Lua module name of the expiry worker to load
--                           (e.g. shoal_expirer), found on LUA_CPATH; it
--                           runs on shoal_log (`store`) or verdict
--                           (`verdict`; without it a Lua fiber expires);
--                           `store` also registers its native save
--                           procedure, <module>.shoal_save
--   SHOAL_TT_EXPIRER_BATCH  deletes per expiry transaction (default 300)
--   SHOAL_TT_EXPIRER_IDLE_MS  expiry worker's sleep when nothing more has
--                           expired, in ms (default 100)
--   SHOAL_TT_CONSOLE        path of a Unix socket for the admin console
--                           (local root only: mode 0600 directory advised)
--   SHOAL_TT_BACKGROUND     `1` (default): daemonize, log to tarantool.log;
--                           `0`: stay in the foreground and log to stderr
--                           (systemd, containers)
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

local schema = env('SHOAL_TT_SCHEMA', 'store')
if schema ~= 'store' and schema ~= 'verdict' then
    error('SHOAL_TT_SCHEMA must be store or verdict, not ' .. schema)
end
-- Checked before box.cfg: a bad setting must not leave a data directory.
local cluster, retain_s
if schema == 'verdict' then
    retain_s = tonumber(env('SHOAL_TT_XQ_RETAIN_S', '3600'))
    if retain_s == nil or retain_s < 0 then
        error('SHOAL_TT_XQ_RETAIN_S must be a number of seconds >= 0')
    end
    cluster = tonumber(env('SHOAL_TT_CLUSTER'))
    if cluster == nil or cluster < 1 or cluster > 4294967295
        or cluster ~= math.floor(cluster) then
        error('SHOAL_TT_CLUSTER must be an integer in 1..4294967295, not '
            .. os.getenv('SHOAL_TT_CLUSTER'))
    end
end
local background = env('SHOAL_TT_BACKGROUND', '1')
if background ~= '0' and background ~= '1' then
    error('SHOAL_TT_BACKGROUND must be 0 or 1, not ' .. background)
end
background = background == '1'
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
    -- No key is written by two masters (store: keys begin with the
    -- node's name; verdict: each instance writes only its own cluster's
    -- keys), so a conflict is only ever a replayed change: skip it rather
    -- than stop replication.
    replication_skip_conflict = true,
    memtx_memory = tonumber(env('SHOAL_TT_MEMTX_MB', '1024')) * 1024 * 1024,
    read_only = false,
    log = background and 'tarantool.log' or nil,
    pid_file = 'tarantool.pid',
    background = background,
})

local expirer = os.getenv('SHOAL_TT_EXPIRER')
if expirer == '' then expirer = nil end
local opts = {
    password = env('SHOAL_TT_PASSWORD'),
    repl_password = repl_password,
    expirer = expirer,
    expirer_batch = tonumber(env('SHOAL_TT_EXPIRER_BATCH', '300')),
    expirer_idle_ms = tonumber(env('SHOAL_TT_EXPIRER_IDLE_MS', '100')),
}
if schema == 'store' then
    require('shoal_store').start(opts)
else
    opts.cluster = cluster
    opts.retain_s = retain_s
    require('shoal_verdict').start(opts)
end

local console = os.getenv('SHOAL_TT_CONSOLE')
if console ~= nil and console ~= '' then
    require('console').listen(console)
end

local f = io.open('ready', 'w')
f:write(box.info.uuid, '\n')
f:close()
