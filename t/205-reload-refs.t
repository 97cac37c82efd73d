#!/bin/sh
exec "${BUILD:-build}/t/205-reload-refs"
