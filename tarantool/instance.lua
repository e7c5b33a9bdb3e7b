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
--   SHOAL_TT_BOOTSTRAP_LEADER  Tarantool 3.x: host:port of the master that
--                           creates the replica set (default: the first of
--                           SHOAL_TT_PEERS); see `bootstrap` below
-- The same file runs on Tarantool 2.6, 2.11 and 3.x; what differs by version
-- is chosen below from _TARANTOOL (docs/store.md, "Tarantool versions").
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

-- The running version, e.g. 2.6, 2.11, 3.3 (_TARANTOOL is '2.11.5-0-g...').
local major, minor = _TARANTOOL:match('^(%d+)%.(%d+)')
major, minor = tonumber(major), tonumber(minor)
if major == nil then error('cannot parse the Tarantool version ' .. _TARANTOOL) end

-- How a master starts with its peer down. A master must come up (and take
-- writes) while the other is down, and the first master of a new replica
-- set must create it alone (instance.sh: start one, then the others).
local bootstrap
if major >= 3 then
    -- 3.x deprecates replication_connect_quorum (it logs a warning and
    -- means bootstrap_strategy = 'legacy'). 'config' names the master that
    -- creates the replica set: it bootstraps alone, the others join it (an
    -- empty instance that cannot reach it fails instead of making a replica
    -- set of its own); a master recovering from its own files needs no
    -- peer at all (connect quorum 0 outside bootstrap and join).
    local leader = os.getenv('SHOAL_TT_BOOTSTRAP_LEADER')
    if leader == nil or leader == '' then
        leader = env('SHOAL_TT_PEERS', listen):match('[^,%s]+')
    end
    bootstrap = {bootstrap_strategy = 'config', bootstrap_leader = leader}
elseif major == 2 and minor >= 11 then
    -- 2.11 has 'auto' and 'legacy' only. 'auto' refuses to bootstrap with
    -- fewer than half the peers + 1 (both of a pair), so the first master
    -- could not start alone: 'legacy' with a quorum of 1 keeps 2.6's
    -- behaviour (2.11 logs that replication_connect_quorum is deprecated).
    bootstrap = {bootstrap_strategy = 'legacy', replication_connect_quorum = 1}
else
    -- 2.6 (2.10 and older): start with whatever peers answer.
    bootstrap = {replication_connect_quorum = 1}
end

local cfg = {
    listen = listen,
    replication = replication,
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
}
for k, v in pairs(bootstrap) do cfg[k] = v end
box.cfg(cfg)

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
