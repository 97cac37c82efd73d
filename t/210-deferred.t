#!/bin/sh
exec "${BUILD:-build}/t/210-deferred"
