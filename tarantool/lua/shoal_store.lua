-- Shoal's cluster state store: schema, users and stored procedures.
--
-- One store per cluster: two masters in asynchronous master-master
-- replication. Every node appends its saved records to `shoal_log` under
-- keys that begin with its own name, so the two masters never write the
-- same key (no "Duplicate key" stop, no divergent replace).
--
-- Primary key: {node, expires_us, id}. Within a node's range tuples are
-- ordered by expiry time, so the front of each range is always the next
-- tuple to expire whatever mix of TTLs the node wrote: expiry walks each
-- range from the front and stops at the first live tuple, and replay reads
-- each range from {node, now} on, never touching dead tuples. `id` is a
-- per-node strictly increasing number (unique across restarts) that keeps
-- keys unique; `timing_us` is when the filter made the record.
local common = require('shoal_common')
local fiber = require('fiber')

local M = {}

local LOG_FORMAT = {
    {name = 'node', type = 'string'},
    {name = 'expires_us', type = 'unsigned'},
    {name = 'id', type = 'unsigned'},
    {name = 'timing_us', type = 'unsigned'},
    {name = 'code', type = 'unsigned'},
    {name = 'op', type = 'unsigned'},
    {name = 'origin', type = 'unsigned'},
    {name = 'f0', type = 'unsigned'},
    {name = 'f1', type = 'unsigned'},
    {name = 'f2', type = 'unsigned'},
    {name = 'f3', type = 'unsigned'},
}

local check_node = common.check_node

-- Runs once per replica set (box.once is replicated through _schema: the
-- second master joins the first and finds the key already set).
local function bootstrap(password, repl_password)
    local log = box.schema.space.create('shoal_log', {
        format = LOG_FORMAT, if_not_exists = true,
    })
    log:create_index('primary', {
        parts = {{1, 'string'}, {2, 'unsigned'}, {3, 'unsigned'}},
        if_not_exists = true,
    })

    common.create_users(password, repl_password)
    box.schema.user.grant('shoal', 'read,write', 'space', 'shoal_log',
        {if_not_exists = true})
    common.grant_funcs({'shoal_save', 'shoal_health', 'shoal_stats'})
end

-- Saves one batch from one node in one transaction (one WAL write).
-- `rows` is an array of {expires_us, id, timing_us, code, op, origin,
-- f0, f1, f2, f3}. Replace, not insert: a batch retried after a timeout
-- or on the other master writes the same values under the same keys,
-- which is harmless; insert would fail and, replicated, stop replication.
function shoal_save(node, rows)
    check_node(node)
    local log = box.space.shoal_log
    box.begin()
    for i = 1, #rows do
        -- The row's own table becomes the tuple: no new table per row,
        -- so the batch leaves less garbage than a Lua insert loop.
        local r = rows[i]
        table.insert(r, 1, node)
        log:replace(r)
    end
    box.commit()
    return #rows
end

-- The `replicated` acknowledgement level: called by a node right after a
-- save on the same master, it waits until every peer has acknowledged
-- this master's own rows up to its current LSN (which covers the batch
-- just committed: it was committed before its answer left), reading the
-- peer's acknowledged vclock, box.info.replication[peer].downstream.vclock
-- (a replica acknowledges after its own WAL write). Returns
--   'confirmed'  every peer has the batch;
--   'peer_down'  a peer is not replicating from us (no downstream, or not
--                'follow'): the batch is on this master only;
--   'timeout'    a peer follows but did not get there within `timeout_s`.
-- The node decides what a non-confirmation means (docs/store.md).
function shoal_save_sync(timeout_s)
    if type(timeout_s) ~= 'number' or timeout_s < 0 or timeout_s > 60 then
        error('shoal_save_sync: timeout_s must be a number of seconds in 0..60', 2)
    end
    local id = box.info.id
    local lsn = box.info.vclock[id] or 0
    local deadline = fiber.clock() + timeout_s
    while true do
        local peers, behind = 0, false
        for _, r in pairs(box.info.replication) do
            if r.id ~= id then
                peers = peers + 1
                local d = r.downstream
                if d == nil or d.status ~= 'follow' then
                    return 'peer_down'
                end
                local got = d.vclock and d.vclock[id] or 0
                if got < lsn then
                    behind = true
                end
            end
        end
        if peers == 0 then
            return 'peer_down'
        end
        if not behind then
            return 'confirmed'
        end
        if fiber.clock() >= deadline then
            return 'timeout'
        end
        fiber.sleep(0.001)
    end
end

-- Replication as a node or a test wants to see it: per peer, the
-- upstream and downstream status.
function shoal_health()
    return common.health({log_len = box.space.shoal_log:len()})
end

-- Counters for the node's /metrics: the store's size and, when loaded,
-- the expiry worker's counters.
function shoal_stats()
    local s = {
        log_len = box.space.shoal_log:len(),
        log_bytes = box.space.shoal_log:bsize(),
        lua_memory = collectgarbage('count') * 1024,
    }
    if M.expirer ~= nil then
        s.expirer = M.expirer.stats()
    end
    return s
end

-- The native shoal_save of the expiry module (`<module>.shoal_save`, a C
-- stored procedure taking the same arguments and returning the count, as
-- [n] over IPROTO in 2.6): registered once per replica set, like the schema, the first
-- time a master starts with the module configured. A node uses it with
-- `[store] save_function = "shoal_expirer.shoal_save"`.
local function register_native_save(module)
    common.grant_funcs({module .. '.shoal_save'}, {language = 'C'})
end

-- Called by instance.lua after box.cfg.
function M.start(opts)
    common.check_start_opts(opts)
    box.once('shoal-schema-v1', bootstrap, opts.password, opts.repl_password)
    -- Its own key: stores made before the `replicated` level get it too.
    box.once('shoal-save-sync-v1', common.grant_funcs, {'shoal_save_sync'})
    if opts.expirer then
        -- Its own key: a pair first started without the module gets the
        -- function when it is restarted with it. Both masters restarted
        -- at once may both create it; the second _func/_priv write of the
        -- same row is a conflict replication skips
        -- (replication_skip_conflict).
        box.once('shoal-native-save-' .. opts.expirer, register_native_save,
            opts.expirer)
        M.expirer = require(opts.expirer)
        M.expirer.start({
            space = 'shoal_log',
            batch = opts.expirer_batch or 300,
            idle_ms = opts.expirer_idle_ms or 100,
        })
    end
end

M.check_node = check_node
return M
