#!/bin/sh
exec "${BUILD:-build}/t/200-reload"
