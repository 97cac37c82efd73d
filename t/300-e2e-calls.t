#!/bin/sh
exec "${BUILD:-build}/t/300-e2e-calls"
