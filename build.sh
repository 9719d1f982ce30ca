#!/usr/bin/env bash
# Build ngx_http_session_cache_module.so against an nginx source tree:
# Debian's nginx-dev (/usr/share/nginx/src, configured with its own
# conf_flags, --with-compat) or any tree named by NGINX_SRC.
# Installs the Debian packages it needs when they are missing.
#
#   ./build.sh            build build/ngx_http_session_cache_module.so
#   ./build.sh deps       only install packages (build + test + demo)
#
# Environment: NGINX_SRC, SESSION_CACHE_CFLAGS (extra compiler flags, e.g.
# sanitizers), SESSION_CACHE_LDFLAGS, BUILD_DIR (default ./build).
set -euo pipefail

root=$(cd "$(dirname "$0")" && pwd)
build=${BUILD_DIR:-$root/build}

packages=(build-essential nginx nginx-dev libhiredis-dev libpq-dev
          libcmocka-dev libssl-dev libpcre2-dev zlib1g-dev
          redis-server postgresql perl procps openssl prometheus jq
          clang libclang-rt-14-dev valgrind   # make fuzz, make test-valgrind
          debhelper dpkg-dev lintian curl)    # make deb, make test-deb

install_missing() {
    local missing=() p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
            | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "build.sh: installing ${missing[*]}"
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    # Debian's packages try to start their services; we start our own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_missing
[ "${1:-}" = deps ] && exit 0

src=${NGINX_SRC:-/usr/share/nginx/src}
[ -x "$src/configure" ] || { echo "build.sh: no nginx tree at $src" >&2; exit 1; }

# Configure a private copy, so the tree stays untouched. Reconfigure only
# when the tree, the flags or our config script change.
tree=$build/nginx
flags=(--with-compat)
if [ -f "$src/conf_flags" ]; then
    # shellcheck disable=SC1091
    . "$src/conf_flags"
    flags=("${NGX_CONF_FLAGS[@]}")
fi
cflags="-O2 -g ${SESSION_CACHE_CFLAGS:-}"
ldflags="${SESSION_CACHE_LDFLAGS:-}"
# The module is given to configure as ../module, a link beside the tree:
# nginx's auto/make turns every ".c", ".cc", ".cpp" and ".S" in a source's
# path into an object name, so an absolute path such as /tmp/ci.S1x/src/...
# would not build.
module=../module
stamp=$(printf '%s\n' "$src" "${flags[*]}" "$cflags" "$ldflags" "$module" \
        "$(cat "$root/config")" "$(cd "$root/src" && find . -type f | sort)" | md5sum | cut -d' ' -f1)

mkdir -p "$build"
ln -sfn "$root" "$build/module"
if [ ! -f "$tree/.stamp" ] || [ "$(cat "$tree/.stamp")" != "$stamp" ]; then
    rm -rf "$tree"
    mkdir -p "$tree"
    cp -a "$src"/. "$tree"/
    (cd "$tree" && ./configure "${flags[@]}" \
        --with-cc-opt="$cflags" --with-ld-opt="$ldflags" \
        --add-dynamic-module="$module" >"$build/configure.log" 2>&1) || {
        tail -30 "$build/configure.log" >&2
        echo "build.sh: configure failed, see $build/configure.log" >&2
        exit 1
    }
    echo "$stamp" > "$tree/.stamp"
fi

make -s -C "$tree" -f objs/Makefile modules -j"$(nproc)"
# Replace, never overwrite in place: a running nginx has the old file
# mapped, and rewriting it under the process crashes its workers.
cp "$tree/objs/ngx_http_session_cache_module.so" "$build/.module.so.new"
mv -f "$build/.module.so.new" "$build/ngx_http_session_cache_module.so"
echo "build.sh: built $build/ngx_http_session_cache_module.so"
