#!/bin/sh
exec "${BUILD:-build}/t/160-pools"
