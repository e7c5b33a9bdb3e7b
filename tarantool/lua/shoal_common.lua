-- What both Shoal schemas share (the cluster state store, shoal_store.lua,
-- and the cross-cluster verdict store, shoal_verdict.lua): the users,
-- the node-name rule, argument checks and the replication health proc.
local ffi = require('ffi')

local M = {}

-- Names a node may have: short, printable, no separators that could be
-- confused in logs.
function M.node_ok(node)
    return type(node) == 'string' and #node > 0 and #node <= 64
        and not node:find('[^%w%._%-]')
end

function M.check_node(node)
    if not M.node_ok(node) then
        error('bad node name: ' .. tostring(node), 2)
    end
end

-- Whether `v` is an unsigned integer as msgpack hands it to Lua: a
-- number with no fraction, or a 64-bit integer cdata (values past 2^53).
function M.is_uint(v)
    if type(v) == 'number' then
        return v >= 0 and v == math.floor(v) and v < 2^64
    end
    if type(v) == 'cdata' then
        return ffi.istype('uint64_t', v)
            or (ffi.istype('int64_t', v) and v >= 0)
    end
    return false
end

-- The users of every store: `shoal` (the nodes; password `password`) and
-- `replicator` (the masters among themselves). Never guest. Call inside
-- the schema's box.once.
function M.create_users(password, repl_password)
    box.schema.user.create('shoal', {password = password, if_not_exists = true})
    box.schema.user.create('replicator', {password = repl_password,
        if_not_exists = true})
    box.schema.user.grant('replicator', 'replication', nil, nil,
        {if_not_exists = true})
end

-- Registers stored functions and lets `shoal` execute them. `opts` go to
-- box.schema.func.create (e.g. {setuid = true}: the function runs with
-- its creator's rights, so `shoal` needs no write grant on the spaces).
function M.grant_funcs(names, opts)
    for _, f in ipairs(names) do
        local o = {if_not_exists = true}
        for k, v in pairs(opts or {}) do o[k] = v end
        box.schema.func.create(f, o)
        box.schema.user.grant('shoal', 'execute', 'function', f,
            {if_not_exists = true})
    end
end

-- The opts both schemas' start() require.
function M.check_start_opts(opts)
    assert(opts.password and #opts.password > 0, 'shoal password must be set')
    assert(opts.repl_password and #opts.repl_password > 0,
        'replicator password must be set')
end

-- Replication as a node or a test wants to see it: per peer, the
-- upstream and downstream status; `extra` fields are added (sizes).
function M.health(extra)
    local peers = {}
    for _, r in pairs(box.info.replication) do
        if r.uuid ~= box.info.uuid then
            table.insert(peers, {
                id = r.id,
                uuid = r.uuid,
                upstream = r.upstream and r.upstream.status or 'none',
                downstream = r.downstream and r.downstream.status or 'none',
                lag = r.upstream and r.upstream.lag or 0,
            })
        end
    end
    local h = {
        id = box.info.id,
        uuid = box.info.uuid,
        status = box.info.status,
        ro = box.info.ro,
        peers = peers,
    }
    for k, v in pairs(extra or {}) do h[k] = v end
    return h
end

return M
