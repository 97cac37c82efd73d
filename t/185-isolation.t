#!/bin/sh
exec "${BUILD:-build}/t/185-isolation"
