#!/usr/bin/env bash
# A throwaway multicast LAN of network namespaces on one host, to run several
# shoal sidecars side by side. Must run as root.
#
#   scripts/netns.sh up PREFIX N          create bridge PREFIXbr and namespaces PREFIX1..PREFIXN
#   scripts/netns.sh down PREFIX N        delete them (no error if absent)
#   scripts/netns.sh exec PREFIX K CMD…   run CMD in namespace PREFIXK
#
# Layout (X = $SHOAL_NETNS_SUBNET, default 77):
#   bridge PREFIXbr on the host, 10.213.X.254/24, multicast snooping off so
#   that multicast floods to every port;
#   namespace PREFIXk: lo up, veth0 = 10.213.X.k/24 (host side PREFIXkh,
#   enslaved to the bridge), route 224.0.0.0/4 dev veth0.
# Only these objects are created or deleted; the host's other interfaces and
# routes are left alone. Interface names are at most 15 characters, so
# PREFIX is short: [a-z][a-z0-9]*, and N is 1..253.
set -euo pipefail

SUBNET="${SHOAL_NETNS_SUBNET:-77}"
INNER=veth0

die() { echo "netns.sh: $*" >&2; exit 1; }
usage() {
    sed -n '5,7s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

# check_args PREFIX N: validates the prefix, a count or index, and the names
# they make.
check_args() {
    local prefix=$1 n=$2
    if ! [[ $prefix =~ ^[a-z][a-z0-9]*$ ]]; then
        die "PREFIX must match [a-z][a-z0-9]* (got '$prefix')"
    fi
    if ! [[ $n =~ ^[1-9][0-9]{0,2}$ ]] || ((n > 253)); then
        die "N (or K) must be 1..253 (got '$n')"
    fi
    # Longest names: "${prefix}${n}h" and "${prefix}br".
    if ((${#prefix} + ${#n} + 1 > 15 || ${#prefix} + 2 > 15)); then
        die "PREFIX '$prefix' too long: interface names are at most 15 characters"
    fi
    if ! [[ $SUBNET =~ ^(0|[1-9][0-9]{0,2})$ ]] || ((SUBNET > 255)); then
        die "SHOAL_NETNS_SUBNET must be 0..255 (got '$SUBNET')"
    fi
}

need_root() {
    ((EUID == 0)) || die "must run as root"
}

ns_exists() { [[ -e /run/netns/$1 ]]; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

cmd_down() {
    local prefix=$1 n=$2 k
    for ((k = 1; k <= n; k++)); do
        # Deleting the namespace destroys veth0 and with it the host side.
        if ns_exists "$prefix$k"; then
            ip netns del "$prefix$k"
        fi
        # ...in the background: the host side may vanish between the check
        # and the delete, which is fine.
        if link_exists "$prefix${k}h"; then
            ip link del "$prefix${k}h" 2>/dev/null || ! link_exists "$prefix${k}h"
        fi
    done
    if link_exists "${prefix}br"; then
        ip link del "${prefix}br"
    fi
}

cmd_up() {
    local prefix=$1 n=$2 k
    local br="${prefix}br" net="10.213.$SUBNET"
    if link_exists "$br"; then
        die "$br already exists (run: $0 down $prefix $n)"
    fi
    for ((k = 1; k <= n; k++)); do
        if ns_exists "$prefix$k" || link_exists "$prefix${k}h"; then
            die "$prefix$k or $prefix${k}h already exists (run: $0 down $prefix $n)"
        fi
    done
    if [[ -n $(ip -4 route show to match "$net.1/32" table main | grep -v '^default ' || true) ]]; then
        die "$net.0/24 is already routed on this host (set SHOAL_NETNS_SUBNET)"
    fi

    # Undo a half-built setup on any failure.
    trap 'echo "netns.sh: up failed, cleaning up" >&2; cmd_down "$prefix" "$n"' ERR

    ip link add "$br" type bridge
    echo 0 >"/sys/class/net/$br/bridge/multicast_snooping"
    ip addr add "$net.254/24" dev "$br"
    ip link set "$br" up

    for ((k = 1; k <= n; k++)); do
        local ns="$prefix$k" host="$prefix${k}h"
        ip netns add "$ns"
        ip link add "$host" type veth peer name "$INNER" netns "$ns"
        ip link set "$host" master "$br"
        ip link set "$host" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$net.$k/24" dev "$INNER"
        ip -n "$ns" link set "$INNER" up
        ip -n "$ns" route add 224.0.0.0/4 dev "$INNER"
    done
    trap - ERR

    echo "bridge $br $net.254/24"
    for ((k = 1; k <= n; k++)); do
        echo "$prefix$k $net.$k/24 dev $INNER"
    done
}

cmd_exec() {
    local prefix=$1 k=$2
    shift 2
    (($# > 0)) || usage
    ns_exists "$prefix$k" || die "no namespace $prefix$k (run: $0 up $prefix N)"
    exec ip netns exec "$prefix$k" "$@"
}

(($# >= 3)) || usage
action=$1 prefix=$2 num=$3
shift 3
case $action in
up | down)
    (($# == 0)) || usage
    check_args "$prefix" "$num"
    need_root
    "cmd_$action" "$prefix" "$num"
    ;;
exec)
    check_args "$prefix" "$num"
    need_root
    cmd_exec "$prefix" "$num" "$@"
    ;;
*) usage ;;
esac
