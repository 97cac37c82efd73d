#!/bin/sh
exec "${BUILD:-build}/t/197-abandoned"
