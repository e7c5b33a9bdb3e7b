-- Shoal's cross-cluster verdict store (issue #4): verdicts, the
-- cross-cluster message queue, its consumer cursors and the forwarder
-- lease. Spec for the nodes: docs/verdict-store.md.
--
-- One instance per cluster (SHOAL_TT_CLUSTER); the instances of all
-- clusters replicate master-master, asynchronously. Every key is written
-- by one instance only, so two instances never write the same key
-- concurrently (a concurrent insert stops replication, a concurrent
-- replace leaves them different):
--   verdict  {node, expires_us, id}  the writing node's range; every row
--            carries this store's cluster and a node name is refused
--            while it has live rows of another cluster
--   xmsg     {cluster, seq}          cluster == this store's cluster
--   xcursor  {consumer, origin}      consumer == this store's cluster
--   lease    {cluster}               cluster == this store's cluster
-- The procs check it and refuse other clusters' keys. Deletes come from
-- everywhere (verdict expiry runs on every instance, each instance trims
-- its own queue); a key deleted twice is harmless.
local fiber = require('fiber')
local log = require('log')
local common = require('shoal_common')

local M = {}

local VERDICT_FORMAT = {
    {name = 'node', type = 'string'},
    {name = 'expires_us', type = 'unsigned'},
    {name = 'id', type = 'unsigned'},
    {name = 'subject', type = 'unsigned'},
    {name = 'verdict', type = 'unsigned'},
    {name = 'score', type = 'unsigned'},
    {name = 'at_us', type = 'unsigned'},
    {name = 'cluster', type = 'unsigned'},
    {name = 'source', type = 'string'},
}

local XMSG_FORMAT = {
    {name = 'cluster', type = 'unsigned'},
    {name = 'seq', type = 'unsigned'},
    {name = 'node', type = 'unsigned'},
    {name = 'oseq', type = 'unsigned'},
    {name = 'code', type = 'unsigned'},
    {name = 'ttl_ms', type = 'unsigned'},
    {name = 'at_us', type = 'unsigned'},
    {name = 'f0', type = 'unsigned'},
    {name = 'f1', type = 'unsigned'},
    {name = 'f2', type = 'unsigned'},
    {name = 'f3', type = 'unsigned'},
}

local XCURSOR_FORMAT = {
    {name = 'consumer', type = 'unsigned'},
    {name = 'origin', type = 'unsigned'},
    {name = 'seq', type = 'unsigned'},
    {name = 'epoch', type = 'unsigned'},
}

local LEASE_FORMAT = {
    {name = 'cluster', type = 'unsigned'},
    {name = 'holder', type = 'string'},
    {name = 'epoch', type = 'unsigned'},
    {name = 'expires_us', type = 'unsigned'},
}

local FUNCS = {
    'shoal_verdict_put', 'shoal_verdict_get', 'shoal_lease',
    'shoal_lease_release', 'shoal_xq_publish', 'shoal_xq_fetch',
    'shoal_xq_ack', 'shoal_verdict_stats', 'shoal_health',
}

-- Rows per put or messages per publish, messages per fetch.
local MAX_BATCH = 10000
local MAX_SOURCE = 256
local MAX_TTL_MS = 86400 * 1000
local MAX_CLUSTER = 4294967295

-- This instance's cluster, set by start().
local CLUSTER

-- Runs once per replica set (box.once is replicated through _schema: an
-- instance that joins finds the key already set).
local function bootstrap(password, repl_password)
    local v = box.schema.space.create('verdict', {
        format = VERDICT_FORMAT, if_not_exists = true,
    })
    -- Same shape as shoal_log's: the front of each node's range is the
    -- next tuple to expire (the native expirer works on it unchanged).
    v:create_index('primary', {
        parts = {{1, 'string'}, {2, 'unsigned'}, {3, 'unsigned'}},
        if_not_exists = true,
    })
    v:create_index('subject', {
        parts = {{4, 'unsigned'}, {7, 'unsigned'}, {1, 'string'}},
        unique = false, if_not_exists = true,
    })

    local x = box.schema.space.create('xmsg', {
        format = XMSG_FORMAT, if_not_exists = true,
    })
    x:create_index('primary', {
        parts = {{1, 'unsigned'}, {2, 'unsigned'}}, if_not_exists = true,
    })
    x:create_index('origin', {
        parts = {{1, 'unsigned'}, {3, 'unsigned'}, {4, 'unsigned'}},
        if_not_exists = true,
    })

    local c = box.schema.space.create('xcursor', {
        format = XCURSOR_FORMAT, if_not_exists = true,
    })
    c:create_index('primary', {
        parts = {{1, 'unsigned'}, {2, 'unsigned'}}, if_not_exists = true,
    })

    local l = box.schema.space.create('lease', {
        format = LEASE_FORMAT, if_not_exists = true,
    })
    l:create_index('primary', {
        parts = {{1, 'unsigned'}}, if_not_exists = true,
    })

    common.create_users(password, repl_password)
    -- Read only: every write goes through the procs, which check whose
    -- keys they touch. The procs run with their creator's (admin) rights.
    for _, s in ipairs({'verdict', 'xmsg', 'xcursor', 'lease'}) do
        box.schema.user.grant('shoal', 'read', 'space', s,
            {if_not_exists = true})
    end
    common.grant_funcs(FUNCS, {setuid = true})
end

-- The instance's clock in µs (the event loop's wall time), as a plain
-- number: exact up to 2^53 µs (year 2255).
local function now_us()
    return tonumber(fiber.time64())
end

-- Errors for the caller: the message as given, no position prefix, so
-- `fenced:` stays at the front.
local function fail(fmt, ...)
    error(string.format(fmt, ...), 0)
end

local function want_uint(v, what, max)
    if not common.is_uint(v) or (max ~= nil and v > max) then
        fail('%s must be an unsigned integer%s, got %s', what,
            max and (' up to ' .. tostring(max)) or '', tostring(v))
    end
end

local function want_node(fn, node)
    if not common.node_ok(node) then
        fail('%s: bad node name: %s', fn, tostring(node))
    end
end

local function want_array(v, what, max)
    if type(v) ~= 'table' then
        fail('%s must be an array, got %s', what, type(v))
    end
    local n = #v
    for k in pairs(v) do
        if type(k) ~= 'number' or k < 1 or k > n or k ~= math.floor(k) then
            fail('%s must be an array, not a map', what)
        end
    end
    if max ~= nil and n > max then
        fail('%s has %d elements, at most %d', what, n, max)
    end
    return n
end

-- Only this store's cluster writes keys of its cluster.
local function want_own(fn, what, cluster)
    want_uint(cluster, fn .. ': ' .. what)
    if cluster ~= CLUSTER then
        fail('%s: %s %s is not this store\'s cluster (%d)', fn, what,
            tostring(cluster), CLUSTER)
    end
end

-- The lease of this store's cluster as fencing wants it: held by `node`
-- at `epoch` and not expired.
local function want_lease(fn, node, epoch)
    want_uint(epoch, fn .. ': epoch')
    local l = box.space.lease:get({CLUSTER})
    local now = now_us()
    if l == nil then
        fail('fenced: %s: cluster %d has no lease', fn, CLUSTER)
    end
    if l[2] ~= node or l[3] ~= epoch then
        fail('fenced: %s: lease of cluster %d is held by %s at epoch %s, not %s at %s',
            fn, CLUSTER, l[2], tostring(l[3]), node, tostring(epoch))
    end
    if l[4] <= now then
        fail('fenced: %s: lease of %s at epoch %s expired %d ms ago', fn, node,
            tostring(epoch), math.floor(tonumber(now - l[4]) / 1000))
    end
end

-- shoal_verdict_put(node, rows) -> number of rows
-- rows: array of {expires_us, id, subject, verdict, score, at_us, cluster,
-- source}. All checked first, then one transaction of replaces: nothing
-- is written unless every row is good. Replace, so a retried batch is
-- harmless.
function shoal_verdict_put(node, rows)
    local fn = 'shoal_verdict_put'
    want_node(fn, node)
    local n = want_array(rows, fn .. ': rows', MAX_BATCH)
    for i = 1, n do
        local r = rows[i]
        local at = string.format('%s: row %d', fn, i)
        if type(r) ~= 'table' or want_array(r, at) ~= 8 then
            fail('%s must be {expires_us, id, subject, verdict, score, at_us, cluster, source}', at)
        end
        want_uint(r[1], at .. ': expires_us')
        want_uint(r[2], at .. ': id')
        want_uint(r[3], at .. ': subject')
        if r[4] ~= 1 and r[4] ~= 2 then
            fail('%s: verdict must be 1 (human) or 2 (bot), got %s', at, tostring(r[4]))
        end
        want_uint(r[5], at .. ': score')
        want_uint(r[6], at .. ': at_us')
        want_uint(r[7], at .. ': cluster')
        if r[7] ~= CLUSTER then
            fail('%s: cluster %s is not this store\'s cluster (%d)', at,
                tostring(r[7]), CLUSTER)
        end
        if type(r[8]) ~= 'string' or #r[8] > MAX_SOURCE then
            fail('%s: source must be a string of at most %d bytes', at, MAX_SOURCE)
        end
    end
    -- A node name belongs to one cluster while it has rows: another
    -- cluster writing the same range could write the same key.
    local first = box.space.verdict.index.primary:select({node}, {limit = 1})[1]
    if first ~= nil and first[8] ~= CLUSTER then
        fail('%s: node name %s is in use by cluster %s', fn, node, tostring(first[8]))
    end
    local v = box.space.verdict
    box.atomic(function()
        for i = 1, n do
            local r = rows[i]
            v:replace({node, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]})
        end
    end)
    return n
end

-- shoal_verdict_get(subject) -> the live verdict tuple with the highest
-- {at_us, node}, or nil.
function shoal_verdict_get(subject)
    want_uint(subject, 'shoal_verdict_get: subject')
    local now = now_us()
    for _, t in box.space.verdict.index.subject:pairs({subject}, {iterator = 'REQ'}) do
        if t[2] > now then
            return t
        end
    end
    return nil
end

-- shoal_lease(cluster, node, ttl_ms) -> {holder, epoch, expires_us, now_us}
function shoal_lease(cluster, node, ttl_ms)
    local fn = 'shoal_lease'
    want_own(fn, 'cluster', cluster)
    want_node(fn, node)
    want_uint(ttl_ms, fn .. ': ttl_ms', MAX_TTL_MS)
    if ttl_ms == 0 then fail('%s: ttl_ms must be at least 1', fn) end
    local now = now_us()
    local l = box.space.lease:get({CLUSTER})
    if l == nil or l[4] <= now or l[2] == node then
        local epoch = 1
        if l ~= nil then
            epoch = l[2] == node and l[3] or l[3] + 1
        end
        l = box.space.lease:replace({CLUSTER, node, epoch, now + ttl_ms * 1000})
    end
    return {l[2], l[3], l[4], now}
end

-- shoal_lease_release(cluster, node) -> true if `node` held it
function shoal_lease_release(cluster, node)
    local fn = 'shoal_lease_release'
    want_own(fn, 'cluster', cluster)
    want_node(fn, node)
    local l = box.space.lease:get({CLUSTER})
    if l == nil or l[2] ~= node then
        return false
    end
    box.space.lease:update({CLUSTER}, {{'=', 4, 0}})
    return true
end

-- shoal_xq_publish(cluster, node, epoch, msgs) -> inserted, skipped
-- msgs: array of {node_id, oseq, code, ttl_ms, at_us, f0, f1, f2, f3}.
function shoal_xq_publish(cluster, node, epoch, msgs)
    local fn = 'shoal_xq_publish'
    want_own(fn, 'cluster', cluster)
    want_node(fn, node)
    local n = want_array(msgs, fn .. ': msgs', MAX_BATCH)
    local names = {'node_id', 'oseq', 'code', 'ttl_ms', 'at_us', 'f0', 'f1', 'f2', 'f3'}
    local MSG_MAX = {0xffffffff, nil, 0xffff, 0xffffffff}
    for i = 1, n do
        local m = msgs[i]
        local at = string.format('%s: msg %d', fn, i)
        if type(m) ~= 'table' or want_array(m, at) ~= 9 then
            fail('%s must be {node_id, oseq, code, ttl_ms, at_us, f0, f1, f2, f3}', at)
        end
        for k = 1, 9 do
            -- node_id and ttl_ms are u32 and code u16 on the wire.
            want_uint(m[k], at .. ': ' .. names[k], MSG_MAX[k])
        end
    end
    want_lease(fn, node, epoch)
    local x = box.space.xmsg
    local inserted, skipped = 0, 0
    -- at_us never ahead of this store's clock: retention trims in at_us
    -- order and would stop at a message from the future.
    local now = now_us()
    box.atomic(function()
        local last = x.index.primary:max({CLUSTER})
        local seq = last ~= nil and last[2] or 0
        for i = 1, n do
            local m = msgs[i]
            if x.index.origin:get({CLUSTER, m[1], m[2]}) ~= nil then
                skipped = skipped + 1
            else
                seq = seq + 1
                local at = m[5]
                if at > now then at = now end
                x:insert({CLUSTER, seq, m[1], m[2], m[3], m[4], at,
                    m[6], m[7], m[8], m[9]})
                inserted = inserted + 1
            end
        end
    end)
    return inserted, skipped
end

-- shoal_xq_fetch(consumer, limit) -> array of xmsg tuples of the other
-- clusters past the consumer's cursors, in {cluster, seq} order.
function shoal_xq_fetch(consumer, limit)
    local fn = 'shoal_xq_fetch'
    want_uint(consumer, fn .. ': consumer')
    want_uint(limit, fn .. ': limit', MAX_BATCH)
    local out = setmetatable({}, {__serialize = 'array'})
    local pk = box.space.xmsg.index.primary
    local cursors = box.space.xcursor
    -- Jump from cluster to cluster: GT {c} is the front of the next one.
    local t = pk:min()
    while t ~= nil and #out < limit do
        local c = t[1]
        if c ~= consumer then
            local cur = cursors:get({consumer, c})
            local from = cur ~= nil and cur[3] or 0
            for _, m in pk:pairs({c, from}, {iterator = 'GT'}) do
                if m[1] ~= c or #out >= limit then break end
                table.insert(out, m)
            end
        end
        t = pk:select({c}, {iterator = 'GT', limit = 1})[1]
    end
    return out
end

-- shoal_xq_ack(consumer, node, epoch, origin, seq) -> the new cursor
function shoal_xq_ack(consumer, node, epoch, origin, seq)
    local fn = 'shoal_xq_ack'
    want_own(fn, 'consumer', consumer)
    want_node(fn, node)
    want_uint(origin, fn .. ': origin', MAX_CLUSTER)
    want_uint(seq, fn .. ': seq')
    if origin == CLUSTER then
        fail('%s: origin %s is the consumer itself', fn, tostring(origin))
    end
    local last = box.space.xmsg.index.primary:max({origin})
    local top = last ~= nil and last[2] or 0
    if seq > top then
        fail('%s: seq %s is past the last message of cluster %s here (%s)',
            fn, tostring(seq), tostring(origin), tostring(top))
    end
    want_lease(fn, node, epoch)
    local cur = box.space.xcursor:get({CLUSTER, origin})
    local new = seq
    if cur ~= nil and cur[3] > new then new = cur[3] end
    box.space.xcursor:replace({CLUSTER, origin, new, epoch})
    return new
end

-- shoal_verdict_stats() -> sizes, this cluster's lease, every cursor and
-- the background workers' counters.
function shoal_verdict_stats()
    local l = box.space.lease:get({CLUSTER})
    local cursors = setmetatable({}, {__serialize = 'array'})
    for _, c in box.space.xcursor:pairs() do
        table.insert(cursors, {consumer = c[1], origin = c[2], seq = c[3], epoch = c[4]})
    end
    local own = box.space.xmsg.index.primary:max({CLUSTER})
    local s = {
        cluster = CLUSTER,
        verdicts = box.space.verdict:len(),
        verdict_bytes = box.space.verdict:bsize(),
        xmsg = box.space.xmsg:len(),
        xmsg_last_seq = own ~= nil and own[2] or 0,
        lease_holder = l ~= nil and l[2] or box.NULL,
        lease_epoch = l ~= nil and l[3] or 0,
        lease_expires_us = l ~= nil and l[4] or 0,
        now_us = now_us(),
        cursors = cursors,
        retention = {trimmed = M.trimmed, errors = M.trim_errors},
        lua_memory = collectgarbage('count') * 1024,
    }
    if M.expirer ~= nil then
        s.expirer = M.expirer.stats()
    else
        s.expiry = {deleted = M.expired, errors = M.expiry_errors}
    end
    return s
end

function shoal_health()
    return common.health({verdicts = box.space.verdict:len(),
        xmsg = box.space.xmsg:len()})
end

-- The Lua expiry worker, when the native one is not loaded: the same walk
-- (the expired front of each node's range, then GT {node} to the next
-- range), at most `batch` deletes per transaction, a yield between
-- transactions, never an iterator across a yield.
local function expire_pass(batch)
    local v = box.space.verdict
    local pk = v.index.primary
    local t = pk:min()
    while t ~= nil do
        local node = t[1]
        local now = now_us()
        local keys = {}
        for _, r in pk:pairs({node}) do
            if r[2] > now or #keys >= batch then break end
            table.insert(keys, {node, r[2], r[3]})
        end
        if #keys > 0 then
            box.atomic(function()
                for _, k in ipairs(keys) do v:delete(k) end
            end)
            M.expired = M.expired + #keys
            fiber.sleep(0)
        end
        if #keys < batch then
            t = pk:select({node}, {iterator = 'GT', limit = 1})[1]
        else
            t = pk:select({node}, {limit = 1})[1]
        end
    end
end

-- Deletes this cluster's own queue messages older than `retain_s` (by
-- at_us), oldest seq first, stopping at the first younger one; never the
-- newest, which keeps the next seq.
local function trim_pass(retain_s, batch)
    local x = box.space.xmsg
    local pk = x.index.primary
    while true do
        local cutoff = now_us() - retain_s * 1000000
        local last = pk:max({CLUSTER})
        if cutoff <= 0 or last == nil then return end
        local keys = {}
        for _, m in pk:pairs({CLUSTER}) do
            if m[2] >= last[2] or m[7] >= cutoff or #keys >= batch then break end
            table.insert(keys, m[2])
        end
        if #keys == 0 then return end
        box.atomic(function()
            for _, seq in ipairs(keys) do x:delete({CLUSTER, seq}) end
        end)
        M.trimmed = M.trimmed + #keys
        fiber.sleep(0)
        if #keys < batch then return end
    end
end

-- Runs `pass` every `idle_s` in its own fiber; errors are logged (the
-- first few, then one in a thousand) and counted in M[counter].
local function worker(name, counter, idle_s, pass, ...)
    local args = {...}
    local f = fiber.create(function()
        fiber.name(name)
        while true do
            local ok, err = pcall(pass, unpack(args))
            if not ok then
                M[counter] = M[counter] + 1
                if M[counter] <= 10 or M[counter] % 1000 == 0 then
                    log.error('%s: %s (errors so far: %d)', name, tostring(err), M[counter])
                end
            end
            fiber.sleep(idle_s)
        end
    end)
    return f
end

-- Called by instance.lua after box.cfg. opts: password, repl_password,
-- cluster (this store's cluster id), expirer (module name or nil),
-- expirer_batch, expirer_idle_ms, retain_s.
function M.start(opts)
    common.check_start_opts(opts)
    local cluster = tonumber(opts.cluster)
    assert(cluster ~= nil and cluster >= 1 and cluster <= MAX_CLUSTER
        and cluster == math.floor(cluster),
        'cluster must be an integer in 1..' .. MAX_CLUSTER)
    CLUSTER = cluster
    local batch = opts.expirer_batch or 300
    local idle_ms = opts.expirer_idle_ms or 100
    local retain_s = opts.retain_s or 3600
    assert(type(retain_s) == 'number' and retain_s >= 0, 'retain_s must be >= 0')
    box.once('shoal-verdict-schema-v1', bootstrap, opts.password, opts.repl_password)
    M.expired, M.expiry_errors, M.trimmed, M.trim_errors = 0, 0, 0, 0
    if opts.expirer then
        M.expirer = require(opts.expirer)
        M.expirer.start({space = 'verdict', batch = batch, idle_ms = idle_ms})
    else
        M.expiry_fiber = worker('shoal_verdict_expiry', 'expiry_errors',
            idle_ms / 1000, expire_pass, batch)
    end
    M.trim_fiber = worker('shoal_xq_retention', 'trim_errors', 1, trim_pass,
        retain_s, batch)
end

return M
