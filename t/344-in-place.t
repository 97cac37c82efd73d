#!/bin/sh
exec "${BUILD:-build}/t/344-in-place"
