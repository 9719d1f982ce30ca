# ngx_session_cache: make build | test | unit | demo | bench | clean
#                    | bench-revocation | bench-revocation-pg | bench-fleet
#                    | test-asan | fuzz | test-valgrind | test-rules
#                    | deb | test-deb
# Every target installs the Debian packages it needs (through build.sh).

PROVE ?= prove
MODULE = build/ngx_http_session_cache_module.so

# The sanitizer build: the module with ASan + UBSan, loaded into Debian's
# uninstrumented nginx with the runtimes preloaded. Leak detection is off:
# nginx's own allocations are still live at exit (valgrind covers leaks).
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer
ASAN_DIR = $(CURDIR)/build/asan
ASAN_ENV = SESSION_CACHE_MODULE=$(ASAN_DIR)/ngx_http_session_cache_module.so \
    NGINX_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0 \
    UBSAN_OPTIONS=print_stacktrace=1

FUZZ_TIME ?= 30

.PHONY: all build deps test unit integration demo bench clean \
        bench-revocation bench-revocation-pg bench-fleet \
        build-asan test-asan fuzz test-valgrind test-rules deb test-deb

all: build

deps:
	./build.sh deps

build:
	./build.sh

unit: deps
	$(MAKE) -C t/unit

integration: build
	$(PROVE) -I t/lib t/

# Everything: the unit tests, the alert rules' tests, the fuzz corpus
# replay and the integration tests, then the same again with the sanitizer
# build. .ci/run is this.
test: build
	$(MAKE) -C t/unit
	$(MAKE) test-rules
	$(MAKE) -C t/fuzz replay
	$(PROVE) -I t/lib t/
	$(MAKE) test-asan
	$(MAKE) test-deb

build-asan: deps
	BUILD_DIR=$(ASAN_DIR) SESSION_CACHE_CFLAGS="$(SAN_FLAGS)" \
	    SESSION_CACHE_LDFLAGS="-fsanitize=address,undefined" ./build.sh

test-asan: build-asan
	$(MAKE) -C t/unit BUILD=build/asan CXXFLAGS_EXTRA="$(SAN_FLAGS)"
	$(ASAN_ENV) $(PROVE) -I t/lib t/

# The Prometheus alert rules (contrib/prometheus/): valid, and their
# promtool unit tests pass. A second or two.
test-rules: deps
	promtool check rules contrib/prometheus/session-cache.rules.yml
	cd contrib/prometheus && promtool test rules session-cache.rules.test.yml

fuzz: deps
	$(MAKE) -C t/fuzz fuzz FUZZ_TIME=$(FUZZ_TIME)

test-valgrind: build
	perl t/valgrind/run.pl

# The Debian package libnginx-mod-http-session-cache (debian/, built with
# dh-sequence-nginx) into build/deb/: the .deb, its -dbgsym, the native
# source package and the .changes. dpkg-buildpackage writes next to the
# sources (obj-*/, debian/<package>/), so it runs in a copy of the tree.
DEB_DIR = build/deb

deb: deps
	rm -rf $(DEB_DIR)
	set -e; \
	src=$(DEB_DIR)/libnginx-mod-http-session-cache-$$(dpkg-parsechangelog -S Version); \
	mkdir -p $$src; \
	tar -cf - --exclude=./build --exclude=./.git --exclude='./t/*/build' . \
	    | tar -xf - -C $$src; \
	cd $$src && dpkg-buildpackage -us -uc -jauto
	@ls -1 $(DEB_DIR)/*.deb

# lintian, dpkg -i, nginx -t, the autopkgtest script, dpkg -r and --purge
# (debian/test-deb.sh); the machine is left as it was.
test-deb: deb
	debian/test-deb.sh

demo: build
	perl demo/demo.pl

# Performance, side by side with the ceiling and auth_request (bench/),
# then L1's revocation lag and the fleet simulation (issue 12).
bench: build
	./bench/setup.sh
	perl bench/bench.pl
	perl bench/revocation.pl
	perl bench/revocation-pg.pl
	perl bench/fleet.pl
	perl bench/cluster.pl

bench-revocation: build
	./bench/setup.sh
	perl bench/revocation.pl

bench-revocation-pg: build
	./bench/setup.sh
	perl bench/revocation-pg.pl

bench-fleet: build
	./bench/setup.sh
	perl bench/fleet.pl
	perl bench/cluster.pl

clean:
	rm -rf build
	$(MAKE) -C t/unit clean
	$(MAKE) -C t/fuzz clean
