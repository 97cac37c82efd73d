#!/bin/sh
exec "${BUILD:-build}/t/355-health"
