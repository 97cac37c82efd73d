#!/bin/sh
exec "${BUILD:-build}/t/301-e2e-load"
