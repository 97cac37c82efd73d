#!/bin/sh
exec "${BUILD:-build}/t/020-unpack"
