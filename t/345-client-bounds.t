#!/bin/sh
exec "${BUILD:-build}/t/345-client-bounds"
