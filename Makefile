# demux - multiplexed MessagePack-RPC transactions over one connection.
#
#   make deps       install the Debian packages the build and tests need
#   make            build demuxd, libmux (.so/.a), the example plugins, tests
#   make run        deps, build, and run demuxd in the foreground on
#                   conf/demux.yaml
#   make test       deps, build, and run the TAP suite under prove
#   make asan       the suite under AddressSanitizer + UBSan (build-asan/)
#   make tsan       the suite under ThreadSanitizer (build-tsan/)
#   make valgrind   the end-to-end tests under valgrind's leak checker
#
# `make deps` is the one step that installs anything: on Debian, missing
# build/test packages with apt-get (as root); elsewhere it names them. run,
# test and the other suites run it first, then build in a second make, so
# pkg-config is asked only once the packages are there. A plain `make` on a
# machine without them stops naming the missing library.

SHELL	:= /bin/bash
BUILD	?= build
CC	?= cc
CFLAGS	?= -O2 -g
SAN	?=
PROVE	?= prove
PROVE_FLAGS ?= --timer

# ---- flags: warnings, then libraries, then what every compile gets ----
WARN	= -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes \
	  -Wshadow -Wformat=2 -Wno-format-nonliteral

# Every library through pkg-config, asked once per make and only when a rule
# first needs it (after `make deps` has run); a missing one stops the build
# with its name. VAR = $(eval VAR := ...)$(VAR) computes VAR on first use.
pkg_need = $(if $(shell command -v pkg-config),,$(error pkg-config is not \
	   installed: run `make deps` (as root on Debian), or install it))$(foreach p,$(1),$(if $(shell pkg-config --exists $(p) 2>/dev/null \
	   && echo y),,$(error pkg-config cannot find the library '$(p)': run \
	   `make deps` (as root on Debian it installs the missing packages), \
	   or install it yourself)))
pkg	= $(call pkg_need,$(2))$(shell pkg-config $(1) $(2))
DEP_CFLAGS = $(eval DEP_CFLAGS := $(call pkg,--cflags,msgpack yaml-0.1 openssl))$(DEP_CFLAGS)
MSGPACK_LIBS = $(eval MSGPACK_LIBS := $(call pkg,--libs,msgpack))$(MSGPACK_LIBS)
YAML_LIBS = $(eval YAML_LIBS := $(call pkg,--libs,yaml-0.1))$(YAML_LIBS)
HTTPD_LIBS = $(eval HTTPD_LIBS := $(call pkg,--libs,libmicrohttpd))$(HTTPD_LIBS)
SSL_LIBS = $(eval SSL_LIBS := $(call pkg,--libs,openssl))$(SSL_LIBS)
JANSSON_LIBS = $(eval JANSSON_LIBS := $(call pkg,--libs,jansson))$(JANSSON_LIBS)

ALL_CFLAGS = -std=gnu11 $(WARN) $(CFLAGS) $(SAN) -Iinclude -pthread \
	     -MMD -MP $(DEP_CFLAGS)
ALL_LDFLAGS = $(LDFLAGS) $(SAN) -pthread

# plugins: only the entry point is exported, nothing is left undefined
PLUGIN_CFLAGS = -fPIC -fvisibility=hidden
PLUGIN_LDFLAGS = -shared -Wl,--no-undefined -Wl,-z,defs

LIBMUX_SOVERSION = 0
LIBMUX_VERSION = 0.1.0

COMMON_SRC = src/common/units.c src/common/buf.c src/common/wire.c src/common/uri.c \
	     src/common/text.c src/common/msg.c src/common/xport.c \
	     src/common/tls_xport.c
SERVER_SRC = src/server/main.c src/server/config.c src/server/config_access.c \
	     src/server/config_plugins.c \
	     src/server/access.c src/server/log.c \
	     src/server/plugin_host.c src/server/plugin_deps.c \
	     src/server/plugin_util.c \
	     src/server/router.c src/server/pool.c src/server/inline.c \
	     src/server/job.c src/server/gen.c src/server/timer.c \
	     src/server/loop.c src/server/budget.c src/server/conn.c src/server/conn_in.c \
	     src/server/conn_out.c src/server/conn_peer.c src/server/defer.c \
	     src/server/server.c src/server/listen.c \
	     src/server/proc.c \
	     src/server/proc_link.c \
	     src/server/host.c src/server/tls.c src/server/fatal.c \
	     src/server/status.c \
	     src/server/stats.c src/server/builtins.c src/server/metrics.c
CLIENT_SRC = src/client/mux.c src/client/endpoint.c src/client/async.c \
	     src/client/tls.c \
	     src/client/supervise.c src/client/conn.c src/client/conn_read.c \
	     src/client/pack.c src/client/result.c
TOOL_SRC = src/tools/muxcall.c src/tools/json.c src/tools/top.c src/tools/watch.c

PLUGINS	= echo sleep kv timer pubsub python
TEST_PLUGINS = badabi badmagic nosym initfail faulty crashy
TPLUGIN_VER = $(BUILD)/t/plugins/v1.so $(BUILD)/t/plugins/v2.so
C_TESTS	= $(patsubst t/%.c,%,$(wildcard t/[0-9]*.c t/recipe.c))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
pic = $(patsubst %.c,$(BUILD)/pic/%.o,$(1))

DEMUXD	= $(BUILD)/demuxd
MUXCALL	= $(BUILD)/muxcall
LIBMUX_SO = $(BUILD)/libmux.so.$(LIBMUX_VERSION)
LIBMUX_A = $(BUILD)/libmux.a
PLUGIN_SO = $(patsubst %,$(BUILD)/plugins/%.so,$(PLUGINS))
TPLUGIN_SO = $(patsubst %,$(BUILD)/t/plugins/%.so,$(TEST_PLUGINS))
TEST_BIN = $(patsubst %,$(BUILD)/t/%,$(C_TESTS))

all: $(DEMUXD) $(MUXCALL) $(LIBMUX_SO) $(LIBMUX_A) $(PLUGIN_SO) $(TPLUGIN_SO) \
     $(TPLUGIN_VER) $(TEST_BIN)

# ---- dependencies (Debian) ----
DEB_PKGS = pkg-config libyaml-dev libmsgpack-dev libjansson-dev libmicrohttpd-dev \
	   libssl-dev openssl libpython3.11-dev \
	   python3-msgpack perl curl haproxy iproute2

deps:
	@if command -v dpkg-query >/dev/null 2>&1; then \
	  missing=""; \
	  for p in $(DEB_PKGS) $(EXTRA_DEB_PKGS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	      grep -q 'ok installed' || missing="$$missing $$p"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	      echo "installing:$$missing"; \
	      policy=0; \
	      if [ ! -e /usr/sbin/policy-rc.d ]; then \
	        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	        chmod +x /usr/sbin/policy-rc.d; policy=1; \
	      fi; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq --no-install-recommends $$missing \
	        >/dev/null; rc=$$?; \
	      [ $$policy = 1 ] && rm -f /usr/sbin/policy-rc.d; \
	      [ $$rc = 0 ] || exit 1; \
	    else \
	      echo "missing Debian packages:$$missing"; \
	      echo "install them with: sudo apt-get install$$missing"; exit 1; \
	    fi; \
	  fi; \
	fi


# ---- objects ----
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

# the status page, built into demuxd as one C string
$(BUILD)/gen/status_html.h: src/server/status.html
	@mkdir -p $(dir $@)
	{ echo '/* generated from src/server/status.html */'; \
	  echo '#define STATUS_HTML \'; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n" \\/' $<; \
	  echo '""'; } > $@
$(BUILD)/obj/src/server/status.o: $(BUILD)/gen/status_html.h
$(BUILD)/obj/src/server/status.o: ALL_CFLAGS += -I$(BUILD)/gen

$(BUILD)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -fvisibility=hidden -c -o $@ $<

# ---- demuxd ----
$(DEMUXD): $(call obj,$(SERVER_SRC) $(COMMON_SRC))
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(YAML_LIBS) $(MSGPACK_LIBS) $(HTTPD_LIBS) \
	  $(SSL_LIBS) -ldl

# ---- muxcall (jansson: a small, well-kept JSON library in Debian) ----
$(MUXCALL): $(call obj,$(TOOL_SRC)) $(LIBMUX_A)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(JANSSON_LIBS) $(MSGPACK_LIBS) $(SSL_LIBS)

# ---- libmux ----
$(LIBMUX_SO): $(call pic,$(CLIENT_SRC) $(COMMON_SRC))
	$(CC) $(ALL_LDFLAGS) -shared -Wl,--no-undefined \
	  -Wl,-soname,libmux.so.$(LIBMUX_SOVERSION) -o $@ $^ $(MSGPACK_LIBS) \
	  $(SSL_LIBS)
	ln -sf libmux.so.$(LIBMUX_VERSION) $(BUILD)/libmux.so.$(LIBMUX_SOVERSION)
	ln -sf libmux.so.$(LIBMUX_VERSION) $(BUILD)/libmux.so

$(LIBMUX_A): $(call pic,$(CLIENT_SRC) $(COMMON_SRC))
	rm -f $@
	$(AR) rcs $@ $^

# ---- plugins ----
$(BUILD)/plugins/%.so: plugins/%/*.c include/demux/plugin.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(PLUGIN_CFLAGS) $(PLUGIN_LDFLAGS) -o $@ \
	  $(filter %.c,$^) $(MSGPACK_LIBS)

# the python plugin embeds CPython 3.11 (Debian libpython3.11-dev): its
# headers as system headers, so that our warnings stay errors for our code
PY_CFLAGS = $(patsubst -I%,-isystem %,$(shell pkg-config --cflags python-3.11-embed 2>/dev/null))
PY_LIBS = $(shell pkg-config --libs python-3.11-embed 2>/dev/null)
$(BUILD)/plugins/python.so: plugins/python/*.c plugins/python/*.h include/demux/plugin.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(PLUGIN_CFLAGS) $(PY_CFLAGS) $(PLUGIN_LDFLAGS) -o $@ \
	  $(filter %.c,$^) $(MSGPACK_LIBS) $(PY_LIBS)

$(BUILD)/t/plugins/%.so: t/plugins/%.c include/demux/plugin.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(PLUGIN_CFLAGS) $(PLUGIN_LDFLAGS) -o $@ \
	  $(filter %.c,$^) $(MSGPACK_LIBS)

# the same test plugin built twice: a reload must really swap the code
$(BUILD)/t/plugins/v%.so: t/plugins/versioned.c include/demux/plugin.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(PLUGIN_CFLAGS) $(PLUGIN_LDFLAGS) \
	  -DVERSION='"v$*"' -o $@ $(filter %.c,$^) $(MSGPACK_LIBS)

# ---- tests ----
# Unit tests link the sources they test directly; the rest use libmux.a.
$(BUILD)/t/000-wire: $(call obj,t/000-wire.c $(COMMON_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(SSL_LIBS)

$(BUILD)/t/010-stats: $(call obj,t/010-stats.c src/server/stats.c)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^

$(BUILD)/t/%: $(BUILD)/obj/t/%.o $(BUILD)/obj/t/helper.o $(LIBMUX_A)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(MSGPACK_LIBS) $(SSL_LIBS)

# ---- benchmarks (see bench/README.md) ----
BENCH_BIN = $(BUILD)/bench/mux_load $(BUILD)/bench/mux_pipe $(BUILD)/bench/mux_mem \
	    $(BUILD)/bench/mux_crash $(BUILD)/bench/tls_handshake $(BUILD)/bench/fanout \
	    $(BUILD)/bench/mux_deferred

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIBMUX_A)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(MSGPACK_LIBS) $(SSL_LIBS)

bench-bin: $(DEMUXD) $(PLUGIN_SO) $(TPLUGIN_SO) $(BENCH_BIN)

# what is installed, without the tests (debian/rules builds this)
programs: $(DEMUXD) $(MUXCALL) $(LIBMUX_SO) $(LIBMUX_A) $(PLUGIN_SO)

# Debian packages (debian/): demux, libmux0, libmux-dev, into $(BUILD)/deb/.
# Installs debhelper and fakeroot first where they are missing (as root).
DEB_TOOLS = debhelper fakeroot dpkg-dev
deb:
	@$(SUBMAKE) deps
	@missing=""; for p in $(DEB_TOOLS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "make deb needs:$$missing (apt-get install$$missing)"; exit 1; fi; \
	fi
	DEB_BUILD_OPTIONS="noautodbgsym $${DEB_BUILD_OPTIONS:-}" dpkg-buildpackage -us -uc -b
	@mkdir -p $(BUILD)/deb
	mv ../demux_$(LIBMUX_VERSION)-1_*.deb ../libmux0_$(LIBMUX_VERSION)-1_*.deb \
	  ../libmux-dev_$(LIBMUX_VERSION)-1_*.deb $(BUILD)/deb/
	rm -f ../demux_$(LIBMUX_VERSION)-1_*.buildinfo ../demux_$(LIBMUX_VERSION)-1_*.changes
	fakeroot debian/rules clean >/dev/null
	@ls $(BUILD)/deb/

# The entry points: `deps` first, then the build in a second make (which
# evaluates pkg-config only now), then what they are for.
SUBMAKE	= $(MAKE) --no-print-directory

bench:
	@$(SUBMAKE) deps
	@$(SUBMAKE) bench-bin
	bench/run.sh

test:
	@$(SUBMAKE) deps
	@$(SUBMAKE) all
	BUILD=$(BUILD) SAN_FLAGS="$(SAN)" $(PROVE) $(PROVE_FLAGS) t/

run:
	@$(SUBMAKE) deps
	@$(SUBMAKE) $(DEMUXD) $(MUXCALL) $(PLUGIN_SO)
	$(DEMUXD) -c conf/demux.yaml

# CPython's own allocations and races are suppressed (t/lsan.supp,
# t/tsan.supp: libpython only); demux's code has none
asan: export LSAN_OPTIONS = suppressions=$(CURDIR)/t/lsan.supp
asan:
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" test

tsan: export TSAN_OPTIONS = suppressions=$(CURDIR)/t/tsan.supp
tsan:
	$(MAKE) BUILD=build-tsan CFLAGS="-O1 -g" \
	  SAN="-fsanitize=thread -fno-omit-frame-pointer" test

# demuxd under valgrind in the end-to-end tests, then libmux itself: the
# client tests run under valgrind against a plain demuxd (not t/302-e2e:
# valgrind runs posix_spawn as a fork, so a failed exec cannot be reported)
VALGRIND_CLIENT = 340-async 344-in-place 350-reconnect 355-health 360-failover
valgrind:
	@$(SUBMAKE) deps
	@$(SUBMAKE) all
	BUILD=$(BUILD) DEMUX_VALGRIND=1 $(PROVE) $(PROVE_FLAGS) t/3*.t t/200-reload.t \
	  t/185-isolation.t t/186-isolation-reload.t t/196-deadline-cancel.t \
	  t/197-abandoned.t t/198-inline.t t/210-deferred.t t/400-python.t t/recipe-python.t
	@for t in $(VALGRIND_CLIENT); do \
	  echo "valgrind: libmux in t/$$t"; \
	  valgrind -q --leak-check=full --show-leak-kinds=definite,indirect \
	    --errors-for-leak-kinds=definite,indirect --error-exitcode=99 \
	    $(BUILD)/t/$$t > $(BUILD)/t/$$t.valgrind.log 2>&1 || \
	    { tail -40 $(BUILD)/t/$$t.valgrind.log; exit 1; }; \
	done

# ---- fuzzing (clang's libFuzzer: Debian clang + libclang-rt-14-dev) ----
FUZZ_SECONDS ?= 60
FUZZ_CC	?= clang
FUZZ_FLAGS = -std=gnu11 -g -O1 -Iinclude -fsanitize=fuzzer,address,undefined \
	     -fno-sanitize-recover=all $(DEP_CFLAGS)
FUZZ_OUT = build-fuzz

$(FUZZ_OUT)/fuzz_wire: t/fuzz/fuzz_wire.c src/common/wire.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^ $(MSGPACK_LIBS)

$(FUZZ_OUT)/fuzz_config: t/fuzz/fuzz_config.c src/server/config.c \
	    src/server/config_access.c src/server/config_plugins.c \
	    src/common/buf.c src/common/units.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^ $(YAML_LIBS) $(MSGPACK_LIBS)

# Each target runs FUZZ_SECONDS from the seed corpus in t/fuzz/corpus (new
# inputs go to a scratch copy, not into the tree); a crash fails the target
# and leaves the input in $(FUZZ_OUT)/.
fuzz:
	@$(SUBMAKE) deps
	@$(SUBMAKE) $(FUZZ_OUT)/fuzz_wire $(FUZZ_OUT)/fuzz_config
	@for t in wire config; do \
	  rm -rf $(FUZZ_OUT)/corpus-$$t; mkdir -p $(FUZZ_OUT)/corpus-$$t; \
	  cp t/fuzz/corpus/$$t/* $(FUZZ_OUT)/corpus-$$t/; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  $(FUZZ_OUT)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    -artifact_prefix=$(FUZZ_OUT)/crash-$$t- -print_final_stats=1 \
	    $(FUZZ_OUT)/corpus-$$t 2>&1 | grep -E 'stat::number_of_executed_units|Done|ERROR|SUMMARY' ; \
	  test $${PIPESTATUS[0]:-0} = 0 || exit 1; \
	done

# ---- install ----
PREFIX	?= /usr/local
DESTDIR	?=
VERSION	= $(LIBMUX_VERSION)
D	= $(DESTDIR)$(PREFIX)

# Everything that names the prefix is written at install time, from its
# template, for the PREFIX of this install: a file cached in $(BUILD) would
# keep the prefix of an earlier one.
SUBST	= sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g'

install: $(DEMUXD) $(MUXCALL) $(LIBMUX_SO) $(LIBMUX_A) $(PLUGIN_SO)
	install -d $(D)/bin $(D)/lib/pkgconfig $(D)/include/demux \
	  $(D)/lib/demux/plugins $(D)/share/man/man1 $(D)/share/man/man3 \
	  $(D)/share/man/man5 $(D)/share/man/man8 $(D)/share/demux
	install -m 755 $(DEMUXD) $(MUXCALL) $(D)/bin/
	install -m 755 $(LIBMUX_SO) $(D)/lib/
	ln -sf libmux.so.$(LIBMUX_VERSION) $(D)/lib/libmux.so.$(LIBMUX_SOVERSION)
	ln -sf libmux.so.$(LIBMUX_SOVERSION) $(D)/lib/libmux.so
	install -m 644 $(LIBMUX_A) $(D)/lib/
	install -m 644 include/demux/plugin.h include/demux/mux.h \
	  include/demux/protocol.h $(D)/include/demux/
	$(SUBST) conf/libmux.pc.in > $(D)/lib/pkgconfig/libmux.pc
	$(SUBST) conf/demux-plugin.pc.in > $(D)/lib/pkgconfig/demux-plugin.pc
	install -m 755 $(PLUGIN_SO) $(D)/lib/demux/plugins/
	install -m 644 docs/man/muxcall.1 $(D)/share/man/man1/
	install -m 644 docs/man/libmux.3 $(D)/share/man/man3/
	install -m 644 docs/man/demux.yaml.5 $(D)/share/man/man5/
	install -m 644 docs/man/demuxd.8 $(D)/share/man/man8/
	$(SUBST) conf/systemd/demuxd.service > $(D)/share/demux/demuxd.service
	$(SUBST) "conf/systemd/demuxd@.service" > "$(D)/share/demux/demuxd@.service"
	sed -e 's|\.\./build/plugins/|$(PREFIX)/lib/demux/plugins/|' \
	  -e 's|^# Relative paths.*|# Installed copy: plugins from $(PREFIX)/lib/demux/plugins/; relative paths are relative to this file.|' \
	  conf/demux.yaml > $(D)/share/demux/demux.yaml

uninstall:
	rm -f $(D)/bin/demuxd $(D)/bin/muxcall $(D)/lib/libmux.* \
	  $(D)/lib/pkgconfig/libmux.pc $(D)/lib/pkgconfig/demux-plugin.pc \
	  $(D)/share/man/man1/muxcall.1 $(D)/share/man/man3/libmux.3 \
	  $(D)/share/man/man5/demux.yaml.5 $(D)/share/man/man8/demuxd.8
	rm -rf $(D)/include/demux $(D)/lib/demux $(D)/share/demux

clean:
	rm -rf build build-asan build-tsan build-fuzz

.PHONY: all deps test run asan tsan valgrind clean bench bench-bin install uninstall fuzz \
	programs deb
.SECONDARY:

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
