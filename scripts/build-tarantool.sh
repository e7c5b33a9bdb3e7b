#!/usr/bin/env bash
# Build Tarantool 2.11.5 and/or 3.3.0 from local bare git mirrors into PREFIX/<version>.
#
# The recipe (submodule commits, cmake flags, why these tags) is in
# docs/store.md "Modern Tarantool" and was worked out in TARANTOOL-BUILD.md.
# No source is fetched from the network and nothing is written inside the repo:
# every mirror is a bare git directory given by path.
#
# Usage:
#   scripts/build-tarantool.sh --mirrors DIR [--prefix DIR] [--work DIR] [--jobs N] [VERSION...]
#     --mirrors DIR  holds one bare mirror per repository, as DIR/<owner>+<name>/repo
#                    (the layout of the session's mirror store) or DIR/<owner>/<name>.git
#     --mirror OWNER/NAME=PATH  overrides one mirror's path (repeatable)
#     --prefix DIR   install root, default /work/tt; VERSION goes to DIR/VERSION
#     --work DIR     scratch for sources and build trees, default PREFIX/.build
#     --jobs N       make -jN (default 2); --nice N: its niceness (default 10)
#     VERSION        2.11.5 and/or 3.3.0 (default: both)
#
# After a build, PREFIX/VERSION/bin/tarantool runs, PREFIX/VERSION/include/tarantool/module.h
# is the module API, and PREFIX/VERSION/lib/libmsgpuck.a + include/msgpuck.h let C modules link.
set -euo pipefail

PREFIX=/work/tt
WORK=
JOBS=2
NICE=10
MIRRORS=
declare -A OVERRIDE=()
VERSIONS=()

die() { echo "build-tarantool: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --mirrors) MIRRORS=$2; shift 2 ;;
    --mirror) OVERRIDE[${2%%=*}]=${2#*=}; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --nice) NICE=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    2.11.5|3.3.0) VERSIONS+=("$1"); shift ;;
    *) die "unknown argument '$1' (versions: 2.11.5 3.3.0)" ;;
  esac
done
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(2.11.5 3.3.0)
[ -n "$WORK" ] || WORK=$PREFIX/.build

# Debian packages the build needs (TARANTOOL-BUILD.md); say which are missing
# rather than fail deep inside cmake.
missing=()
for p in build-essential cmake libreadline-dev libssl-dev libicu-dev libyaml-dev \
  libzstd-dev zlib1g-dev autoconf automake libtool; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] || die "missing packages: apt-get install -y ${missing[*]}"

mirror() { # owner/name -> bare git dir
  local r=$1 p
  if [ -n "${OVERRIDE[$r]:-}" ]; then p=${OVERRIDE[$r]}
  elif [ -n "$MIRRORS" ] && [ -d "$MIRRORS/${r/\//+}/repo" ]; then p=$MIRRORS/${r/\//+}/repo
  elif [ -n "$MIRRORS" ] && [ -d "$MIRRORS/$r.git" ]; then p=$MIRRORS/$r.git
  else die "no mirror for $r (give --mirrors DIR or --mirror $r=PATH)"; fi
  git --git-dir="$p" rev-parse --git-dir >/dev/null 2>&1 || die "$p is not a git directory ($r)"
  echo "$p"
}

# submodule path -> mirror; the commit is read from the tag's tree (never a nearby tag).
# xxHash: no tarantool/xxHash mirror; Cyan4973/xxHash holds the same commit.
SUBMODULES=(
  third_party/luajit=tarantool/luajit
  src/lib/msgpuck=tarantool/msgpuck
  src/lib/small=tarantool/small
  third_party/c-dt=tarantool/c-dt
  third_party/decNumber=tarantool/decNumber
  third_party/libyaml=tarantool/libyaml
  third_party/xxHash=Cyan4973/xxHash
  third_party/luafun=luafun/luafun
  third_party/tz=tarantool/tz
  third_party/checks=tarantool/checks
  third_party/metrics=tarantool/metrics
  third_party/lua-zlib=tarantool/lua-zlib
  third_party/luazip=tarantool/luazip
  third_party/curl=tarantool/curl
  third_party/arrow/nanoarrow=apache/arrow-nanoarrow
)

build_one() {
  local T=$1 TT S B P c line path repo m
  TT=$(mirror tarantool/tarantool)
  git --git-dir="$TT" rev-parse -q --verify "refs/tags/$T" >/dev/null || die "tag $T not in $TT"
  S=$WORK/src-$T; B=$WORK/build-$T; P=$PREFIX/$T
  echo "== $T: sources into $S"
  rm -rf "$S"; mkdir -p "$S"
  git --git-dir="$TT" archive "$T" | tar -x -C "$S"
  for line in "${SUBMODULES[@]}"; do
    path=${line%%=*}; repo=${line#*=}
    c=$(git --git-dir="$TT" ls-tree "$T" "$path" | awk '$2=="commit"{print $3}')
    [ -n "$c" ] || continue # not a submodule of this tag (nanoarrow on 2.11)
    m=$(mirror "$repo")
    git --git-dir="$m" cat-file -e "$c^{commit}" 2>/dev/null || die "$repo lacks $c for $T:$path"
    mkdir -p "$S/$path"
    git --git-dir="$m" archive "$c" | tar -x -C "$S/$path"
    echo "   $path <- $repo @ ${c:0:12}"
  done
  # an archive has no .git: CMake takes the version from VERSION (git describe --long format)
  echo "$T-0-g$(git --git-dir="$TT" rev-parse --short=9 "$T^{commit}")" > "$S/VERSION"
  mkdir -p "$B"
  ( cd "$B"
    cmake "$S" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DENABLE_BUNDLED_ZSTD=OFF \
      -DENABLE_BACKTRACE=OFF -DENABLE_DIST=OFF \
      -DBUNDLED_LIBCURL_USE_ARES=OFF -DBUNDLED_LIBCURL_USE_NGHTTP2=OFF \
      -DCMAKE_INSTALL_PREFIX="$P" > cmake.log 2>&1 || { tail -30 cmake.log; die "cmake failed for $T"; }
    nice -n "$NICE" make -j"$JOBS" tarantool > make.log 2>&1 || { tail -30 make.log; die "make failed for $T"; }
    make api > api.log 2>&1 || { tail -30 api.log; die "make api failed for $T"; }
    # install stops at the luarocks (2.11) or man page (3.3) step: no luarocks mirror is
    # available and it is not needed; bin/ and include/ are installed before that step.
    cmake --install . > install.log 2>&1 || true
  )
  [ -x "$P/bin/tarantool" ] || die "$P/bin/tarantool missing after install"
  [ -f "$P/include/tarantool/module.h" ] || die "$P/include/tarantool/module.h missing after install"
  # msgpuck is not installed by tarantool; C modules linking it need both.
  mkdir -p "$P/lib" "$P/include"
  cp "$B/src/lib/msgpuck/libmsgpuck.a" "$P/lib/"
  cp "$S/src/lib/msgpuck/msgpuck.h" "$P/include/"
  echo "== $T: $("$P/bin/tarantool" --version | head -1) in $P"
}

for v in "${VERSIONS[@]}"; do build_one "$v"; done
