#!/usr/bin/env bash
# Two shoal clusters on one host, joined by a delayed point-to-point link
# between their store namespaces (issue #4). Built on scripts/netns.sh. Root.
#
#   scripts/twoclusters.sh up [N]            clusters A and B, N namespaces each (default 3)
#   scripts/twoclusters.sh down              delete everything up made (no error if absent)
#   scripts/twoclusters.sh partition | heal  inter-cluster link down / up (delay kept)
#   scripts/twoclusters.sh delay MS          set the one-way delay of the link
#   scripts/twoclusters.sh exec a|b K CMD…   run CMD in namespace xaK / xbK
#   scripts/twoclusters.sh addr a|b K        print the bridge address of xaK / xbK
#   scripts/twoclusters.sh link-addr a|b     print the link address of xaN / xbN
#   scripts/twoclusters.sh status            namespaces, link state, delay
#
# Layout (see docs/testing-topology.md):
#   cluster A: netns.sh up xa N with subnet 81: bridge xabr 10.213.81.254/24,
#              namespaces xa1..xaN, veth0 = 10.213.81.k/24;
#   cluster B: netns.sh up xb N with subnet 82: bridge xbbr 10.213.82.254/24,
#              namespaces xb1..xbN, veth0 = 10.213.82.k/24;
#   link:      xlink-a (in xaN, 10.213.80.1/30) <-> xlink-b (in xbN,
#              10.213.80.2/30).
# Each end of the link delays what it sends by $SHOAL_XC_DELAY_MS (default 20)
# ms, so the one-way delay is that figure and a ping across takes twice it.
# The link is made one of two ways ($SHOAL_XC_LINK, default auto = netem if
# the kernel has it, else relay):
#   netem  a veth pair, a netem qdisc on the egress of each end;
#   relay  two tun devices and a relay process (python3, started by `up`,
#          stopped by `down`) that copies packets between them, holding each
#          for the delay: for kernels built without sch_netem.
# Namespace N of each cluster is, by convention, that cluster's store; it is
# the only one with a route to the other side (the /30 itself: there is no
# forwarding and no default route, so xa1 cannot reach anything of B and xaN
# reaches B only at 10.213.80.2). `up` refuses to run over an existing setup
# (`down` first). `addr` and `link-addr` only compute: no root, no setup.
# State (link kind, delay, relay pid and log) lives in /run/shoal-twoclusters.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
NETNS="$HERE/netns.sh"
SUBNET_A=81
SUBNET_B=82
LINK_NET=10.213.80
LINK_A=xlink-a
LINK_B=xlink-b
DELAY_MS="${SHOAL_XC_DELAY_MS:-20}"
LINK_KIND="${SHOAL_XC_LINK:-auto}"
STATE=/run/shoal-twoclusters
# Packets held at once per direction: netem's default (1000) would drop above
# 1000 packets per delay period, i.e. 50k packets/s at 20 ms.
QUEUE_LIMIT=100000

die() { echo "twoclusters.sh: $*" >&2; exit 1; }
warn() { echo "twoclusters.sh: warning: $*" >&2; }
usage() {
    sed -n '5,12s/^# \{0,1\}//p' "$0" >&2
    exit 2
}
need_root() { ((EUID == 0)) || die "must run as root"; }

ns_exists() { [[ -e /run/netns/$1 ]]; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

check_delay() {
    [[ $1 =~ ^[0-9]{1,6}(\.[0-9]{1,3})?$ ]] ||
        die "delay must be a number of milliseconds, e.g. 20 or 0.5 (got '$1')"
}
check_index() {
    if ! [[ $1 =~ ^[1-9][0-9]{0,2}$ ]] || (($1 > 253)); then
        die "K (or N) must be 1..253 (got '$1')"
    fi
}
# prefix a|b: the namespace prefix of a cluster.
prefix() {
    case $1 in
    a | A) echo xa ;;
    b | B) echo xb ;;
    *) die "cluster must be a or b (got '$1')" ;;
    esac
}

# highest PREFIX: the highest K such that namespace PREFIXK or host link
# PREFIXKh exists, 0 if none.
highest() {
    local prefix=$1 max=0 f k
    shopt -s nullglob
    for f in /run/netns/"$prefix"* /sys/class/net/"$prefix"*h; do
        f=${f##*/}
        f=${f%h}
        k=${f#"$prefix"}
        if [[ $k =~ ^[1-9][0-9]{0,2}$ ]] && ((k > max)); then
            max=$k
        fi
    done
    shopt -u nullglob
    echo "$max"
}

# link_ns a|b: the namespace holding that end of the link (dies if none).
link_ns() {
    local prefix dev n k
    prefix=$(prefix "$1")
    if [[ $prefix == xa ]]; then dev=$LINK_A; else dev=$LINK_B; fi
    n=$(highest "$prefix")
    # The store is namespace N; look there first, then anywhere in the cluster.
    for k in "$n" $(seq 1 "$n"); do
        if ((k > 0)) && ns_exists "$prefix$k" &&
            ip -n "$prefix$k" link show dev "$dev" >/dev/null 2>&1; then
            echo "$prefix$k"
            return
        fi
    done
    die "no $dev in any $prefix namespace (run: $0 up)"
}

kind() { cat "$STATE/kind" 2>/dev/null || echo netem; }

# ---- netem link ------------------------------------------------------------

set_netem() {
    local ns=$1 dev=$2 ms=$3
    tc -n "$ns" qdisc replace dev "$dev" root netem delay "${ms}ms" limit "$QUEUE_LIMIT"
}

# have_netem NS: whether the kernel has sch_netem (tried on NS's loopback).
have_netem() {
    local ns=$1
    if tc -n "$ns" qdisc add dev lo root netem delay 0ms 2>/dev/null; then
        tc -n "$ns" qdisc del dev lo root
        return 0
    fi
    return 1
}

# ---- relay link --------------------------------------------------------------
# The relay: one python3 process that opens the tun device xlink-a inside xaN
# and xlink-b inside xbN (a tun is bound to the namespace it is opened in, so
# it enters each in turn, then returns to its own), then copies every packet
# read from one to the other once it has been held for the delay. The delay is
# read from $STATE/delay_ms at start and on SIGHUP. A write to a tun whose
# link is down fails (EIO): that packet is dropped, as a down link would.
RELAY_PY='
import collections, ctypes, fcntl, os, select, signal, struct, sys, time

tag, ns_a, dev_a, ns_b, dev_b, state, limit = sys.argv[1:8]
limit = int(limit)
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def attach(ns, dev):
    nsfd = os.open("/run/netns/" + ns, os.O_RDONLY)
    setns(nsfd)
    os.close(nsfd)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


home = os.open("/proc/self/ns/net", os.O_RDONLY)
fa = attach(ns_a, dev_a)
fb = attach(ns_b, dev_b)
setns(home)
os.close(home)

delay = 0.0


def reload(*_):
    global delay
    try:
        with open(state + "/delay_ms") as f:
            delay = float(f.read()) / 1000.0
        print("delay %g ms" % (delay * 1000.0), flush=True)
    except (OSError, ValueError) as e:
        print("delay unchanged (%g ms): %s" % (delay * 1000.0, e), flush=True)


reload()
signal.signal(signal.SIGHUP, reload)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
peer = {fa: fb, fb: fa}
held = {fa: collections.deque(), fb: collections.deque()}
with open(state + "/relay.pid.tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(state + "/relay.pid.tmp", state + "/relay.pid")
print("relay %d: %s/%s <-> %s/%s" % (os.getpid(), ns_a, dev_a, ns_b, dev_b), flush=True)

while True:
    now = time.monotonic()
    due = None
    for src, q in held.items():
        while q and q[0][0] <= now:
            try:
                os.write(peer[src], q.popleft()[1])
            except OSError:
                pass
        if q and (due is None or q[0][0] < due):
            due = q[0][0]
    timeout = None if due is None else max(0.0, due - time.monotonic())
    ready, _, _ = select.select([fa, fb], [], [], timeout)
    for src in ready:
        q = held[src]
        while True:
            try:
                pkt = os.read(src, 65536)
            except (BlockingIOError, OSError):
                break
            if len(q) < limit:
                q.append((time.monotonic() + delay, pkt))
'

relay_pid() {
    local pid
    pid=$(cat "$STATE/relay.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    # Only our own relay, not whatever process got the pid since.
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q shoal-xc-relay || return 1
    echo "$pid"
}

relay_start() {
    local sa=$1 sb=$2 i
    rm -f "$STATE/relay.pid"
    setsid python3 -c "$RELAY_PY" shoal-xc-relay "$sa" "$LINK_A" "$sb" "$LINK_B" \
        "$STATE" "$QUEUE_LIMIT" </dev/null >>"$STATE/relay.log" 2>&1 &
    for ((i = 0; i < 100; i++)); do
        relay_pid >/dev/null && return 0
        sleep 0.05
    done
    tail -n 5 "$STATE/relay.log" >&2 || true
    die "the relay did not start (log: $STATE/relay.log)"
}

relay_stop() {
    local pid i
    pid=$(relay_pid) || return 0
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        [[ -e /proc/$pid ]] || return 0
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# ---- commands ----------------------------------------------------------------

cmd_down() {
    local prefix k pids try
    relay_stop
    for prefix in xa xb; do
        # A process left inside keeps a deleted namespace (and its links)
        # alive, unnamed; say so rather than kill what we did not start.
        for ((k = 1; k <= $(highest "$prefix"); k++)); do
            if ns_exists "$prefix$k"; then
                pids=$(ip netns pids "$prefix$k" | tr '\n' ' ')
                [[ -z $pids ]] || warn "processes still in $prefix$k: $pids"
            fi
        done
        # Deleting xaN / xbN also deletes the link. A namespace goes away
        # asynchronously, and with it the host end of its veth, so netns.sh can
        # find a link gone between its check and its delete: try again.
        for try in 1 2 3 4 5; do
            k=$(highest "$prefix")
            if bash "$NETNS" down "$prefix" "$((k > 0 ? k : 1))" 2>/dev/null; then
                break
            fi
            ((try < 5)) || bash "$NETNS" down "$prefix" "$((k > 0 ? k : 1))"
            sleep 0.2
        done
    done
    rm -rf "$STATE"
}

# Whatever stops `up` half-way (a failed command, die, ^C) undoes it.
up_failed() {
    trap - EXIT
    echo "twoclusters.sh: up failed, cleaning up" >&2
    cmd_down || true
    exit 1
}

cmd_up() {
    local n=$1 prefix
    check_index "$n"
    check_delay "$DELAY_MS"
    case $LINK_KIND in auto | netem | relay) ;; *) die "SHOAL_XC_LINK must be auto, netem or relay (got '$LINK_KIND')" ;; esac
    for prefix in xa xb; do
        if link_exists "${prefix}br" || (($(highest "$prefix") > 0)); then
            die "${prefix}br or namespaces $prefix* already exist (run: $0 down)"
        fi
    done
    if [[ -e $STATE/relay.pid ]] && relay_pid >/dev/null; then
        die "a relay is still running (run: $0 down)"
    fi

    trap up_failed EXIT
    rm -rf "$STATE"
    mkdir -p "$STATE"
    echo "$DELAY_MS" >"$STATE/delay_ms"

    SHOAL_NETNS_SUBNET=$SUBNET_A bash "$NETNS" up xa "$n"
    SHOAL_NETNS_SUBNET=$SUBNET_B bash "$NETNS" up xb "$n"

    local sa="xa$n" sb="xb$n" kind=$LINK_KIND
    if [[ $kind == auto ]]; then
        if have_netem "$sa"; then kind=netem; else kind=relay; fi
    elif [[ $kind == netem ]] && ! have_netem "$sa"; then
        die "this kernel has no netem qdisc (sch_netem); use SHOAL_XC_LINK=relay or auto"
    fi
    [[ $kind == relay ]] && ! command -v python3 >/dev/null &&
        die "the kernel has no netem and python3 (for the relay) is missing"
    echo "$kind" >"$STATE/kind"

    # Both ends are made inside their namespaces: nothing of the link ever
    # appears in the host namespace.
    if [[ $kind == netem ]]; then
        ip link add name "$LINK_A" netns "$sa" type veth peer name "$LINK_B" netns "$sb"
        set_netem "$sa" "$LINK_A" "$DELAY_MS"
        set_netem "$sb" "$LINK_B" "$DELAY_MS"
    else
        ip -n "$sa" tuntap add dev "$LINK_A" mode tun
        ip -n "$sb" tuntap add dev "$LINK_B" mode tun
    fi
    ip -n "$sa" addr add "$LINK_NET.1/30" dev "$LINK_A"
    ip -n "$sb" addr add "$LINK_NET.2/30" dev "$LINK_B"
    ip -n "$sa" link set "$LINK_A" up
    ip -n "$sb" link set "$LINK_B" up
    [[ $kind == netem ]] || relay_start "$sa" "$sb"
    trap - EXIT

    echo "link ($kind) $sa $LINK_A $LINK_NET.1/30 <-> $sb $LINK_B $LINK_NET.2/30, one-way delay ${DELAY_MS} ms"
}

cmd_partition() {
    local sa sb
    sa=$(link_ns a)
    sb=$(link_ns b)
    ip -n "$sa" link set "$LINK_A" down
    ip -n "$sb" link set "$LINK_B" down
    echo "partitioned: $LINK_A ($sa) and $LINK_B ($sb) down"
}

# ensure_addr NS DEV ADDR: the /30 address and its connected route on DEV.
ensure_addr() {
    local ns=$1 dev=$2 addr=$3
    if ! ip -n "$ns" -4 addr show dev "$dev" | grep -q "inet $addr/30 "; then
        ip -n "$ns" addr add "$addr/30" dev "$dev"
    fi
    if [[ -z $(ip -n "$ns" -4 route show "$LINK_NET.0/30" dev "$dev") ]]; then
        ip -n "$ns" route add "$LINK_NET.0/30" dev "$dev" proto kernel scope link src "$addr"
    fi
}

cmd_heal() {
    local sa sb ms
    sa=$(link_ns a)
    sb=$(link_ns b)
    ms=$(cat "$STATE/delay_ms" 2>/dev/null || echo "$DELAY_MS")
    ip -n "$sa" link set "$LINK_A" up
    ip -n "$sb" link set "$LINK_B" up
    # The kernel drops an IPv4 connected route when its link goes down and
    # puts it back when it comes up; re-add whatever is missing anyway.
    ensure_addr "$sa" "$LINK_A" "$LINK_NET.1"
    ensure_addr "$sb" "$LINK_B" "$LINK_NET.2"
    if [[ $(kind) == netem ]]; then
        if ! tc -n "$sa" qdisc show dev "$LINK_A" | grep -q netem ||
            ! tc -n "$sb" qdisc show dev "$LINK_B" | grep -q netem; then
            warn "netem missing, set back to $ms ms"
            set_netem "$sa" "$LINK_A" "$ms"
            set_netem "$sb" "$LINK_B" "$ms"
        fi
    elif ! relay_pid >/dev/null; then
        warn "the relay was not running, restarted"
        mkdir -p "$STATE"
        echo "$ms" >"$STATE/delay_ms.tmp"
        mv "$STATE/delay_ms.tmp" "$STATE/delay_ms"
        relay_start "$sa" "$sb"
    fi
    echo "healed: $LINK_A ($sa) and $LINK_B ($sb) up"
}

cmd_delay() {
    local ms=$1 sa sb pid
    check_delay "$ms"
    sa=$(link_ns a)
    sb=$(link_ns b)
    if [[ $(kind) == relay ]]; then
        pid=$(relay_pid) || die "the relay is not running (run: $0 heal)"
    else
        set_netem "$sa" "$LINK_A" "$ms"
        set_netem "$sb" "$LINK_B" "$ms"
    fi
    # Replaced, never rewritten in place: the relay may be reading it.
    mkdir -p "$STATE"
    echo "$ms" >"$STATE/delay_ms.tmp"
    mv "$STATE/delay_ms.tmp" "$STATE/delay_ms"
    [[ -z ${pid:-} ]] || kill -HUP "$pid"
    echo "one-way delay $ms ms (round trip $(awk -v m="$ms" 'BEGIN { print 2 * m }') ms)"
}

cmd_status() {
    local prefix k ns any=0 sa sb pid
    for prefix in xa xb; do
        if link_exists "${prefix}br"; then
            ip -br -4 addr show dev "${prefix}br"
            any=1
        fi
        for ((k = 1; k <= $(highest "$prefix"); k++)); do
            ns=$prefix$k
            if ns_exists "$ns"; then
                any=1
                printf '%-6s ' "$ns"
                ip -n "$ns" -br -4 addr show | grep -v '^lo ' |
                    awk '{ printf "%s %s %s  ", $1, $2, $3 }'
                echo
            fi
        done
    done
    ((any)) || { echo "down (nothing set up)"; return; }
    if sa=$(link_ns a 2>/dev/null) && sb=$(link_ns b 2>/dev/null); then
        echo "link ($(kind)), one-way delay $(cat "$STATE/delay_ms" 2>/dev/null || echo '?') ms:"
        echo "  $sa: $(ip -n "$sa" -br link show dev "$LINK_A")"
        echo "  $sb: $(ip -n "$sb" -br link show dev "$LINK_B")"
        if [[ $(kind) == netem ]]; then
            echo "qdisc:"
            echo "  $sa $LINK_A: $(tc -n "$sa" qdisc show dev "$LINK_A")"
            echo "  $sb $LINK_B: $(tc -n "$sb" qdisc show dev "$LINK_B")"
        elif pid=$(relay_pid); then
            echo "relay: pid $pid (log $STATE/relay.log)"
        else
            echo "relay: NOT RUNNING (run: $0 heal)"
        fi
    else
        echo "link: absent"
    fi
}

(($# >= 1)) || usage
action=$1
shift
case $action in
up)
    (($# <= 1)) || usage
    need_root
    cmd_up "${1:-3}"
    ;;
down | partition | heal | status)
    (($# == 0)) || usage
    need_root
    "cmd_$action"
    ;;
delay)
    (($# == 1)) || usage
    need_root
    cmd_delay "$1"
    ;;
exec)
    (($# >= 3)) || usage
    p=$(prefix "$1")
    check_index "$2"
    need_root
    ns_exists "$p$2" || die "no namespace $p$2 (run: $0 up)"
    exec bash "$NETNS" exec "$p" "$2" "${@:3}"
    ;;
addr)
    (($# == 2)) || usage
    p=$(prefix "$1")
    check_index "$2"
    case $p in
    xa) echo "10.213.$SUBNET_A.$2" ;;
    xb) echo "10.213.$SUBNET_B.$2" ;;
    esac
    ;;
link-addr)
    (($# == 1)) || usage
    p=$(prefix "$1")
    case $p in
    xa) echo "$LINK_NET.1" ;;
    xb) echo "$LINK_NET.2" ;;
    esac
    ;;
-h | --help | help) usage ;;
*)
    echo "twoclusters.sh: unknown command '$action'" >&2
    usage
    ;;
esac
