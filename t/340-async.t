#!/bin/sh
exec "${BUILD:-build}/t/340-async"
