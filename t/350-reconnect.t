#!/bin/sh
exec "${BUILD:-build}/t/350-reconnect"
