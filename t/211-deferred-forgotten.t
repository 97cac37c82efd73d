#!/bin/sh
exec "${BUILD:-build}/t/211-deferred-forgotten"
