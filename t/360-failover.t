#!/bin/sh
exec "${BUILD:-build}/t/360-failover"
