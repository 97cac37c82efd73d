#!/bin/sh
# the 64-thread, 100-handler and megabyte tests of 301 over tls:
T_TLS=1 exec "${BUILD:-build}/t/301-e2e-load"
