#!/bin/sh
exec "${BUILD:-build}/t/342-leader"
