#!/bin/bash
# make test-deb: the package built by make deb (build/deb/), checked as an
# operator would use it, then removed. autopkgtest and its qemu/lxc
# testbeds are not available on CI, so this does by hand what they would:
#
#   1. lintian on the build (.changes: the package, its -dbgsym and the
#      .buildinfo): no error and no warning that is not overridden in
#      debian/*.lintian-overrides;
#   2. dpkg -i; the modules-enabled link exists, and nginx -t passes on
#      the system's own configuration (/etc/nginx/nginx.conf), which now
#      loads the module;
#   3. the autopkgtest, debian/tests/session-check (its own Redis,
#      Postgres and nginx on loopback);
#   4. dpkg -r: the link is gone (kept as <link>.removed, as dh_nginx's
#      scripts do, so that a reinstall enables the module again) and
#      nginx -t still passes; dpkg --purge: nothing of it is left.
#
# The machine is left as it was found: the package must not be installed
# before (the test refuses to run then), it is purged at the end, also on
# failure, the temporary directories nginx -t creates are removed, and the
# system's nginx service is never started or reloaded (policy-rc.d, as
# build.sh does, for the nginx-reload trigger).
set -euo pipefail

cd "$(dirname "$0")/.."
pkg=libnginx-mod-http-session-cache
link=/etc/nginx/modules-enabled/50-mod-http-session-cache.conf
module=/usr/lib/nginx/modules/ngx_http_session_cache_module.so
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

say()  { printf 'test-deb: %s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }

installed() {
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null \
        | grep -q 'install ok installed'
}
known() { dpkg-query -W "$pkg" >/dev/null 2>&1; }
absent() { [ ! -e "$1" ] && [ ! -L "$1" ]; }

found=(build/deb/"${pkg}"_*.changes)
changes=${found[0]}
found=(build/deb/"${pkg}"_*.deb)
deb=${found[0]}
if [ ! -f "$changes" ] || [ ! -f "$deb" ]; then
    fail "no build/deb/${pkg}_*.changes and .deb: run make deb"
fi

# --- 1. lintian -------------------------------------------------------------

say "lintian $changes"
lintian --fail-on error,warning --display-info "$changes" \
    || fail "lintian reports errors or warnings (see above)"
say "ok: lintian: no error, no warning"

# --- 2. install ---------------------------------------------------------------

if known; then
    fail "$pkg is already known to dpkg on this machine; this test" \
         "installs and purges it, so it will not run here"
fi
for f in "$link" "$link.removed"; do
    absent "$f" || fail "$f exists before the install"
done

# nginx -t creates the temporary directories the system's configuration
# names (/var/lib/nginx/body, proxy, ...) when they are missing, as they
# are until the service first starts: remove those it made (empty; rmdir
# leaves alone any that is not).
temp_root=/var/lib/nginx
temp_before=$(printf '%s\n' "$temp_root"/*)

policy_created=
cleanup() {
    local rc=$?
    set +e
    if known; then
        say "purging $pkg"
        $sudo dpkg --purge "$pkg" >/dev/null
    fi
    [ -z "$policy_created" ] || $sudo rm -f /usr/sbin/policy-rc.d
    local d
    for d in "$temp_root"/*; do
        [ -d "$d" ] || continue
        grep -qxF "$d" <<<"$temp_before" || $sudo rmdir "$d"
    done
    [ "$rc" -eq 0 ] && say PASS
    exit "$rc"
}
trap cleanup EXIT

# The install triggers nginx-reload: nginx's postinst asks invoke-rc.d,
# which policy-rc.d (exit 101) tells to leave the service alone.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    policy_created=1
fi

say "dpkg -i $deb"
$sudo dpkg -i "$deb"
installed || fail "$pkg is not installed after dpkg -i"
[ -f "$module" ] || fail "$module is missing"
examples=/usr/share/doc/$pkg/examples
for f in revocation.sql session-cache.rules.yml session-cache.json; do
    [ -f "$examples/$f" ] || fail "$examples/$f is missing"
done
say "ok: the trigger, the alert rules and the dashboard are in $examples"
[ -L "$link" ] || fail "$link is missing after the install"
say "ok: $link -> $(readlink "$link")"

say "nginx -t (the system's configuration, with the module enabled)"
$sudo nginx -t
# read all of nginx -T first: grep -q stops at the line, and nginx, still
# writing, would die of SIGPIPE and fail the pipeline (pipefail)
shown=$($sudo nginx -T 2>/dev/null)
grep -qx 'load_module modules/ngx_http_session_cache_module.so;' <<<"$shown" \
    || fail "nginx -T does not show the module's load_module line"
say "ok: nginx -t loads the module through modules-enabled"

# --- 3. the autopkgtest ---------------------------------------------------------

say "debian/tests/session-check"
debian/tests/session-check

# --- 4. remove, purge -----------------------------------------------------------

say "dpkg -r $pkg"
$sudo dpkg -r "$pkg"
absent "$link" || fail "$link is still there"
[ ! -e "$module" ] || fail "$module is still there"
$sudo nginx -t -q || fail "nginx -t fails after the removal"
say "ok: the link is gone, nginx -t passes without the module"

say "dpkg --purge $pkg"
$sudo dpkg --purge "$pkg"
! known || fail "dpkg still knows $pkg after the purge"
for f in "$link" "$link.removed"; do
    absent "$f" || fail "$f is still there after the purge"
done
say "ok: purged, nothing left in /etc/nginx/modules-enabled"
