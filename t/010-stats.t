#!/bin/sh
exec "${BUILD:-build}/t/010-stats"
