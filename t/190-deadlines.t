#!/bin/sh
exec "${BUILD:-build}/t/190-deadlines"
