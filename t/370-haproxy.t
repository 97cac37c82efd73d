#!/bin/sh
exec "${BUILD:-build}/t/370-haproxy"
