#!/bin/sh
exec "${BUILD:-build}/t/000-wire"
