# ngx_session_cache: make build | test | unit | demo | clean
# Every target installs the Debian packages it needs (through build.sh).

PROVE ?= prove
MODULE = build/ngx_http_session_cache_module.so

.PHONY: all build deps test unit integration demo clean

all: build

deps:
	./build.sh deps

build:
	./build.sh

unit: deps
	$(MAKE) -C t/unit

integration: build
	$(PROVE) -I t/lib t/

test: build
	$(MAKE) -C t/unit
	$(PROVE) -I t/lib t/

demo: build
	perl demo/demo.pl

clean:
	rm -rf build
	$(MAKE) -C t/unit clean
